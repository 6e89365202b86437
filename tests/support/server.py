"""The control plane as a customer meets it: a real `vce serve` process on loopback, tokens,
an HTTP client, and digests of everything the server could change (the ledger's rows and
libvirt's objects) to prove that a refused call changed nothing."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import libvirt
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.host import run_host
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import api_tokens, audit
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.support.backups import runner_script

ROOT = Path(__file__).resolve().parents[2]
START_SECONDS = 60
STOP_SECONDS = 20
ACTION_SECONDS = 180
# Every call adds to the audit trail, and a token's use is stamped on it (at most once a
# minute): neither is evidence that a call changed something.
AUDIT_TABLE = "audit"
BOOKKEEPING_COLUMNS = frozenset({"last_used_at"})


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(ledger_url: str) -> dict[str, str]:
    """The environment of a server process: this checkout's packages first, and its ledger."""
    path = [str(ROOT / "server"), str(ROOT / "collections"), str(ROOT)]
    previous = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*path, *([previous] if previous else [])]),
        "VCE_LEDGER_URL": ledger_url,
    }


class Server:
    """One `vce serve` process: started, waited for (GET /healthz), stopped or killed."""

    def __init__(
        self, ledger_url: str, log: Path, args: Sequence[str] = (), port: int | None = None
    ) -> None:
        """`port`: the one a killed server had, for a restart its clients find at the same
        address; a free one when None."""
        self.ledger_url = ledger_url
        self.log = log
        self.args = list(args)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> Server:
        argv = [
            sys.executable, "-m", "ansible_collections.vce.kvm.cli.command", "serve",
            "--host", "127.0.0.1", "--port", str(self.port), "--ledger-url", self.ledger_url,
            *self.args,
        ]  # fmt: skip
        with self.log.open("a") as out:
            self.process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=server_env(self.ledger_url),
                cwd=ROOT,
                start_new_session=True,
            )
        self.wait_healthy()
        return self

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vce serve exited {self.process.returncode}: {self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"vce serve did not answer /healthz in {START_SECONDS} s: {self.tail()}")

    def tail(self, size: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-size:]
        return ""

    def stop(self) -> None:
        """SIGTERM (uvicorn's graceful stop), then SIGKILL if it does not end in time."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL to the server and anything it started (its own process group)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_SECONDS)

    def client(self, token: str | None = None, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60, **kwargs)


@contextlib.contextmanager
def running_server(
    ledger_url: str, log: Path, args: Sequence[str] = (), port: int | None = None
) -> Iterator[Server]:
    server = Server(ledger_url, log, args, port)
    try:
        yield server.start()
    finally:
        server.stop()


# -- the operator's set-up ----------------------------------------------------------------------


def register_host(
    ledger_url: str, name: str, zone: str, uri: str, settings: Mapping[str, str] | None = None
) -> None:
    """The host's record, as the kvm_host role registers it (with `settings`: where its backup
    schedules and backups live)."""
    run_host({"ledger_url": ledger_url, "name": name, "zone": zone, "uri": uri, **(settings or {})})


def backup_settings(directory: Path) -> dict[str, str]:
    """A host's backup root, unit and config directories under `directory`, and a runner
    that runs this checkout's code (as the installed `vce-backup` would)."""
    runner = directory / "bin" / "vce-backup"
    runner.parent.mkdir(parents=True, exist_ok=True)
    runner.write_text(runner_script(ROOT))
    runner.chmod(0o755)
    return {
        "backup_root": str(directory / "backups"),
        "unit_dir": str(directory / "units"),
        "config_dir": str(directory / "config"),
        "runner": str(runner),
    }


def admin(ledger_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "ansible_collections.vce.kvm.cli.command", "admin", *args]
    return subprocess.run(
        [*argv, "--ledger-url", ledger_url],
        capture_output=True,
        text=True,
        env=server_env(ledger_url),
        cwd=ROOT,
        timeout=120,
        check=False,
    )


def create_token(
    ledger_url: str,
    tenant: str | None,
    scopes: str = "read write",
    expires_at: dt.datetime | None = None,
) -> str:
    """A new token's text, made as `vce admin` makes it (vce_server.identity, in this process:
    a subprocess per token would cost a second each): a customer's of `tenant`, or with
    tenant None an operator's."""
    from vce_server.identity import Identity

    role = "customer" if tenant else "operator"
    text, _view = Identity(Ledger.open(ledger_url)).create_token(
        role, tenant, scopes.split(), None, "tests", expires_at
    )
    return text


def admin_token(ledger_url: str, tenant: str, scope: str = "write") -> str:
    """A customer's token from `vce admin token create --json`, as an operator makes one."""
    role = ["--role", "customer", "--tenant", tenant]
    done = admin(ledger_url, "token", "create", *role, "--scope", scope, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["token"]


def revoke_token(ledger_url: str, token: str) -> None:
    done = admin(ledger_url, "token", "revoke", token_prefix(token))
    assert done.returncode == 0, done.stderr


def token_prefix(token: str) -> str:
    """`vce_<8 hex>` of `vce_<8 hex>_<secret>` (the secret's base64 may hold '_' too)."""
    return "_".join(token.split("_", 2)[:2])


def token_secret(token: str) -> str:
    return token.split("_", 2)[2]


def set_token_times(ledger_url: str, token: str, **times: dt.datetime) -> None:
    """Move a token's expiry (or revocation) in the ledger, as time passing would."""
    with Ledger.open(ledger_url).store.write() as connection:
        connection.execute(
            sa.update(api_tokens).where(api_tokens.c.prefix == token_prefix(token)).values(**times)
        )


# -- what a customer does -----------------------------------------------------------------------


def send(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    """One call, repeated after a 429 as the reply's Retry-After says (at most 30 times): the
    tests that sweep every endpoint must not measure the rate limit."""
    for _attempt in range(30):
        reply = client.request(method, path, **kwargs)
        if reply.status_code != 429:
            return reply
        time.sleep(float(reply.headers.get("Retry-After", "1")))
    return reply


def wait_action(client: httpx.Client, action_id: str, seconds: float = ACTION_SECONDS) -> dict:
    """The action once it has ended (long polls, bounded by `seconds`)."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        reply = client.get(f"/v1/actions/{action_id}", params={"wait": max(0, min(20, left))})
        assert reply.status_code == 200, reply.text
        action = reply.json()["action"]
        if action["status"] in ("succeeded", "failed", "interrupted") or left <= 0:
            return action
        time.sleep(0.05)


def apply(
    client: httpx.Client, path: str, body: Mapping[str, Any], seconds: float = ACTION_SECONDS
):
    """PUT a declaration and wait for its action to end; the ended action."""
    reply = client.put(path, json=dict(body))
    assert reply.status_code == 202, reply.text
    return wait_action(client, reply.json()["action"]["id"], seconds)


def succeeded(client: httpx.Client, path: str, body: Mapping[str, Any]) -> dict:
    action = apply(client, path, body)
    assert action["status"] == "succeeded", action
    return action


def vm_body(image: str, network: str | None = None, disk: str | None = None) -> dict[str, Any]:
    """A small stopped VM's declaration on a catalogue image: a define and an overlay, fast."""
    body: dict[str, Any] = {
        "vcpus": 1,
        "memory_mib": 64,
        "state": "stopped",
        "boot_disk": {"image": image, "size_gib": 1},
    }
    if network:
        body["nics"] = [{"network": network}]
    if disk:
        body["disks"] = [disk]
    return body


def action_error_code(action: Mapping[str, Any]) -> str | None:
    """The code of a failed action's error (stored in the API's error shape)."""
    error = action.get("error") or {}
    return error.get("error", error).get("code")


def error_of(reply: httpx.Response) -> dict:
    """The API's one error shape, checked: {"error": {code, message, fields, request_id}}."""
    body = reply.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"code", "message", "fields", "request_id"} <= set(error), error
    assert isinstance(error["fields"], list) and error["request_id"], error
    assert "Traceback" not in error["message"], error
    return error


def audit_rows(ledger_url: str, request_ids: Sequence[str], seconds: float = 10) -> dict:
    """The audit rows of these requests by request id, waited for until all are there or
    `seconds` have passed (a row is written once its reply has gone)."""
    deadline = time.monotonic() + seconds
    while True:
        with Ledger.open(ledger_url).store.read() as connection:
            rows = connection.execute(
                sa.select(audit).where(audit.c.request_id.in_(list(request_ids)))
            ).fetchall()
        found = {row.request_id: row for row in rows}
        if len(found) == len(set(request_ids)) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


# -- what could have changed --------------------------------------------------------------------


def reflected(ledger_url: str) -> dict[str, sa.Table]:
    metadata = sa.MetaData()
    metadata.reflect(bind=Ledger.open(ledger_url).store.engine)
    return dict(metadata.tables)


def ledger_digest(ledger_url: str, own_tenant: str | None = None) -> dict[str, list[str]]:
    """Every row of every ledger table as text, sorted, but the audit trail and the rows of
    `own_tenant` (the caller's own: its actions, tokens, runs), which its calls may add."""
    tables = reflected(ledger_url)
    digest: dict[str, list[str]] = {}
    with Ledger.open(ledger_url).store.read() as connection:
        for name, table in sorted(tables.items()):
            if name == AUDIT_TABLE:
                continue
            query = sa.select(*(c for c in table.c if c.name not in BOOKKEEPING_COLUMNS))
            if own_tenant is not None:
                query = query.where(*own_rows_excluded(name, table, own_tenant))
            digest[name] = sorted(repr(tuple(row)) for row in connection.execute(query))
    return digest


def own_rows_excluded(name: str, table: sa.Table, tenant: str) -> list:
    column = table.c.get("tenant")
    if name == "tenants":
        column = table.c.get("name")
    if column is None:
        return []
    return [sa.or_(column.is_(None), column != tenant)]


def libvirt_digest(conn: libvirt.virConnect) -> dict[str, str]:
    """Every domain, network and volume of the daemon with its XML (volume timestamps left
    out: reading a file moves its atime)."""
    objects = {}
    for domain in conn.listAllDomains(0):
        objects[f"domain/{domain.name()}"] = domain.XMLDesc(0)
    for network in conn.listAllNetworks(0):
        objects[f"network/{network.name()}"] = network.XMLDesc(0)
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        pool.refresh(0)
        for volume in pool.listAllVolumes(0):
            objects[f"volume/{pool.name()}/{volume.name()}"] = volume_xml(volume)
    return objects


def volume_xml(volume: libvirt.virStorageVol) -> str:
    root = ET.fromstring(volume.XMLDesc(0))
    for parent in root.iter():
        for child in list(parent):
            if child.tag == "timestamps":
                parent.remove(child)
    return ET.tostring(root, encoding="unicode")


def state_of(
    ledger_url: str,
    conn: libvirt.virConnect,
    own_tenant: str | None = None,
    host_dir: Path | None = None,
) -> dict:
    """The ledger's rows and libvirt's objects (and with `host_dir` the host's backup schedule
    units, configs and backups), to compare before and after calls."""
    state = {"ledger": ledger_digest(ledger_url, own_tenant), "libvirt": libvirt_digest(conn)}
    state["files"] = files_digest(host_dir) if host_dir else {}
    return state


def files_digest(directory: Path) -> dict[str, str]:
    """Every file under `directory` with a hash of its bytes."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def changes(before: dict, after: dict) -> dict[str, Any]:
    """What differs between two states, by table or libvirt object (for assertion messages)."""
    moved: dict[str, Any] = {}
    for part in ("ledger", "libvirt", "files"):
        for key in sorted(set(before[part]) | set(after[part])):
            if before[part].get(key) != after[part].get(key):
                moved[f"{part}:{key}"] = (before[part].get(key), after[part].get(key))
    return moved
