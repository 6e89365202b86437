"""`vce admin` as an operator bootstraps the control plane, and `vce serve`'s refusals: the real
command in a subprocess, on a SQLite ledger whose tenants were registered first. Read back
through the ledger (what a server would authenticate), never through the command's own words."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import api_tokens, users
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from vce_server.identity import Identity

from tests.support.ledger import register

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    register(url, "acme")
    return url


def vce_env() -> dict[str, str]:
    """The checkout's packages; the ledger only from --ledger-url."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(str(ROOT / part) for part in ("server", "collections", "")),
        "VCE_ACTOR": "ops",
    }
    env.pop("VCE_LEDGER_URL", None)
    return env


def vce(*args: str, stdin: str = "", umask: int | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ansible_collections.vce.kvm.cli.command", *args]
    return subprocess.run(
        cmd,
        input=stdin,
        capture_output=True,
        text=True,
        env=vce_env(),
        timeout=120,
        check=False,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )


def admin(url: str, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return vce("admin", *args, "--ledger-url", url, stdin=stdin)


def table(url, which):
    with Ledger.open(url).store.read() as connection:
        return [row._asdict() for row in connection.execute(sa.select(which))]


def test_users_are_added_given_a_password_and_disabled(url):
    done = admin(url, "user", "add", "Ann", "--role", "customer", "--tenant", "acme",
                 "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["login"] == "ann"
    done = admin(url, "user", "add", "root", "--role", "operator", "--password-stdin",
                 stdin=PASSWORD)  # fmt: skip
    assert done.returncode == 0, done.stderr
    identity = Identity(Ledger.open(url))
    assert identity.verify_password("ann", PASSWORD).tenant == "acme"
    assert identity.verify_password("root", PASSWORD).is_operator

    done = admin(url, "user", "passwd", "ann", "--password-stdin", stdin="a new long password")
    assert done.returncode == 0, done.stderr
    assert identity.verify_password("ann", PASSWORD) is None
    assert identity.verify_password("ann", "a new long password") is not None
    done = admin(url, "user", "disable", "ann")
    assert done.returncode == 0 and json.loads(done.stdout)["disabled_at"]
    assert identity.verify_password("ann", "a new long password") is None
    assert all(PASSWORD not in str(row) for row in table(url, users))


def test_a_token_is_printed_once_alone_and_works(url):
    done = admin(url, "token", "create", "--role", "customer", "--tenant", "acme",
                 "--scope", "write", "--name", "ci", "--expires-in", "30")  # fmt: skip
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert done.stdout == token + "\n" and token.startswith("vce_")
    identity = Identity(Ledger.open(url))
    principal = identity.authenticate(token)
    assert (principal.tenant, principal.scopes, principal.actor) == (
        "acme", frozenset({"read", "write"}), "token:ci",
    )  # fmt: skip
    [row] = table(url, api_tokens)
    assert row["created_by"] == "ops" and row["expires_at"] is not None

    done = admin(url, "token", "create", "--role", "operator", "--json")
    shown = json.loads(done.stdout)
    assert identity.authenticate(shown["token"]).is_operator
    assert shown["prefix"] == shown["token"][:12] and shown["scopes"] == ["read"]

    for listing in (admin(url, "token", "list"), admin(url, "token", "list", "--json")):
        assert listing.returncode == 0, listing.stderr
        assert token not in listing.stdout and shown["token"] not in listing.stdout
        assert token[:12] in listing.stdout and shown["prefix"] in listing.stdout
    listed = json.loads(admin(url, "token", "list", "--tenant", "acme", "--json").stdout)
    assert [item["name"] for item in listed] == ["ci"]

    done = admin(url, "token", "revoke", token[:12])
    assert done.returncode == 0 and json.loads(done.stdout)["revoked_at"]
    assert Identity(Ledger.open(url)).authenticate(token) is None


TOKEN = ("token", "create", "--role", "customer", "--tenant", "acme")
ROOT_USER = ("user", "add", "root", "--role", "operator", "--password-stdin")
ADD = ("user", "add", "ann", "--role", "customer", "--tenant", "acme", "--password-stdin")


@pytest.mark.parametrize(
    ("args", "stdin", "named"),
    [
        (("token", "create", "--tenant", "acme"), "", "--role"),
        (("token", "create", "--role", "customer"), "", "tenant: a customer needs a tenant"),
        (("token", "create", "--role", "customer", "--tenant", "ghost"), "", "tenant: no tenant"),
        (("token", "create", "--role", "operator", "--tenant", "acme"), "", "tenant: an operator"),
        ((*TOKEN, "--scope", "admin"), "", "--scope"),
        ((*TOKEN, "--expires-in", "0"), "", "expires_in: must be positive"),
        ((*TOKEN, "--expires-in", "ten"), "", "expires_in: must be a whole number"),
        ((*TOKEN, "--expires-in", "99999"), "", "expires_in: must be at most"),
        ((*TOKEN, "--name", "a\x1bb"), "", "name: cannot hold control"),
        (("token", "list", "--tenant", "acme\n"), "", "tenant: invalid name"),
        (("token", "revoke", "abc"), "", "prefix: a token's prefix is"),
        (("token", "revoke", "vce_00000000"), "", "prefix: no token vce_00000000"),
        ((*ADD[:-1],), "", "password: standard input is not a terminal"),
        (ADD, "short\n", "password: must be at least 12"),
        (("user", "add", "ann smith", *ADD[3:]), PASSWORD, "login: cannot hold spaces"),
        ((*ROOT_USER, "--tenant", "acme"), PASSWORD, "tenant: an operator has no tenant"),
        (("user", "passwd", "nobody", "--password-stdin"), PASSWORD, "login: no user 'nobody'"),
        (("user", "disable", "nobody"), "", "login: no user 'nobody'"),
    ],
)
def test_bad_input_exits_2_naming_the_field_and_changes_nothing(url, args, stdin, named):
    done = admin(url, *args, stdin=stdin)
    assert done.returncode == 2, done.stdout
    assert named in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""
    assert table(url, users) == [] and table(url, api_tokens) == []


def test_a_missing_ledger_is_named_and_not_created(tmp_path):
    missing = tmp_path / "nowhere" / "ledger.sqlite3"
    for args in (("token", "list"), ("token", "create", "--role", "operator")):
        done = admin(f"sqlite:///{missing}", *args)
        assert done.returncode == 2 and str(missing) in done.stderr
        assert "Traceback" not in done.stderr
    assert not missing.parent.exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--port", "http"), "port: must be a whole number"),
        (("--port", "70000"), "port: must be at most 65535"),
        (("--workers", "0"), "workers: must be positive"),
        (("--rate", "-1"), "rate: "),
        (("--burst", "lots"), "burst: must be a whole number"),
        (("--stale-after", "1"), "stale_after: "),
        (("--log-level", "trace"), "--log-level"),
        (("--ledger-url", "mysql://ledger"), "ledger_url: unsupported database"),
    ],
)
def test_serve_refuses_bad_input_before_it_starts(args, named):
    done = vce("serve", *args)
    assert done.returncode == 2
    assert named in done.stderr and "Traceback" not in done.stderr


def test_nothing_is_written_readable_by_others_even_with_umask_0(url, tmp_path):
    directory = tmp_path
    token = vce("admin", "token", "create", "--role", "operator", "--ledger-url", url,
                umask=0).stdout.strip()  # fmt: skip
    done = vce("admin", "user", "add", "root", "--role", "operator", "--password-stdin",
               "--ledger-url", url, stdin=PASSWORD, umask=0)  # fmt: skip
    assert done.returncode == 0, done.stderr
    secret = token.split("_", 2)[2].encode()
    for path in directory.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o077 == 0, f"{path} is {oct(mode)}"
        if path.is_file():
            data = path.read_bytes()
            assert secret not in data and PASSWORD.encode() not in data, path


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_answers_tokens_and_logs_none_of_them(url, tmp_path):
    """`vce serve` as the operator starts it, at its most talkative log level: a token works, a
    wrong one answers 401, and neither appears in what the server logged."""
    # The app (app.py) includes every router; before they are all in, it cannot start.
    pytest.importorskip("vce_server.app", exc_type=ImportError)
    token = admin(url, "token", "create", "--role", "customer", "--tenant", "acme").stdout.strip()
    wrong = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "ansible_collections.vce.kvm.cli.command", "serve",
             "--port", str(port), "--ledger-url", url, "--log-level", "debug"],
            stdout=out, stderr=subprocess.STDOUT, env=vce_env(), start_new_session=True,
        )  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            wait_healthy(client, server)
            good = client.get("/v1/actions", headers={"Authorization": f"Bearer {token}"})
            bad = client.get("/v1/actions", headers={"Authorization": f"Bearer {wrong}"})
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=20)
    assert (good.status_code, bad.status_code) == (200, 401), log.read_text()
    logged = log.read_text()
    assert "GET /v1/actions" in logged  # the access log is on
    secrets = (token, wrong, token.split("_", 2)[2], wrong.split("_", 2)[2])
    assert not any(secret in logged for secret in secrets)


def wait_healthy(client: httpx.Client, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and server.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if client.get("/healthz").status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"vce serve did not start (exit status {server.poll()})")
