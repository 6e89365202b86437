"""The control_plane role run for real into a temporary root directory (control_plane_root):
check mode writes nothing, a run writes the unit, the root-only environment file and the SSH
key, a second run changes nothing. No systemd is started: nothing is, with a root set."""

from __future__ import annotations

import contextlib
import getpass
import grp
import json
import os
import shlex
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.ansible_runner import ANSIBLE_PLAYBOOK, ansible_env, task_results

pytestmark = pytest.mark.integration

SECRET = 's3cr%t$pa"ss'
POSTGRES_URL = f"postgresql+psycopg://vce:{SECRET}@127.0.0.1/ledger"
UNIT = "etc/systemd/system/vce-serve.service"
ENV_FILE = "etc/vce-kvm/serve.env"
KEY = "var/lib/vce-serve/.ssh/id_ed25519"
HOST_KEYS = [
    "kvm-01 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA",
    "kvm-02 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB",
]
KNOWN = {"control_plane_ssh_known_hosts": HOST_KEYS}


def run_role(tmp_path: Path, root: Path, check: bool = False, **variables: object) -> list[dict]:
    """One ansible-playbook run of the role on localhost; its task results."""
    user = getpass.getuser()
    settings = {
        "control_plane_root": str(root),
        "control_plane_create_user": False,
        "control_plane_user": user,
        "control_plane_group": grp.getgrgid(os.getgid()).gr_name,
        **variables,
    }
    playbook = tmp_path / "control_plane.yml"
    playbook.write_text(
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n  roles:\n"
        "    - role: vce.kvm.control_plane\n      vars:\n"
        + "".join(f"        {name}: {json.dumps(value)}\n" for name, value in settings.items())
    )
    command = [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(playbook)]
    proc = subprocess.run(
        command + (["--check"] if check else []),
        capture_output=True,
        text=True,
        env=ansible_env(),
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return task_results(proc.stdout)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unit_settings(unit: str) -> dict[str, str]:
    """The unit's Key=value lines ([Service] keys are unique in it), quotes of a whole
    Environment= value removed as systemd does."""
    settings = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings[key] = value.strip('"') if key == "Environment" else value
    return settings


def serve_as_the_unit_says(root: Path, unit: str) -> tuple[int, str]:
    """Start ExecStart= with the unit's environment (the file read as systemd and sh read it)
    in its working directory; the status of an unauthenticated GET /v1/actions, and the log."""
    settings = unit_settings(unit)
    variables = subprocess.run(
        ["sh", "-c", f'set -a; . "{root}{settings["EnvironmentFile"]}"; env -0'],
        capture_output=True, check=True, env={}, timeout=30,
    ).stdout.decode()  # fmt: skip
    env = dict(item.split("=", 1) for item in variables.split("\0") if "=" in item)
    name, value = settings["Environment"].split("=", 1)
    home = f"{root}{settings['WorkingDirectory']}"
    # What systemd adds for a service with User=.
    env.update({name: value, "HOME": home, "PATH": "/usr/local/bin:/usr/bin:/bin"})
    command = shlex.split(settings["ExecStart"])
    port = int(command[command.index("--port") + 1])
    log = root / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            command, cwd=home, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and server.poll() is None:
                with contextlib.suppress(httpx.HTTPError):
                    return client.get("/v1/actions").status_code, log.read_text()
                time.sleep(0.2)
            return 0, log.read_text()
    finally:
        stop(server)


def stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group; SIGKILL when it outlives 20 s."""
    for sent in (signal.SIGTERM, signal.SIGKILL):
        os.killpg(server.pid, sent)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=20)
            return


def test_the_role_installs_the_service_into_a_root(tmp_path):
    root = tmp_path / "root"
    ledger = "sqlite:////var/lib/vce-serve/ledger.sqlite3"

    run_role(tmp_path, root, check=True, control_plane_ledger_url=ledger)
    assert not root.exists() or not any(root.rglob("*")), list(root.rglob("*"))

    results = run_role(tmp_path, root, control_plane_ledger_url=ledger, **KNOWN)
    unit = (root / UNIT).read_text()
    assert (
        "ExecStart=" in unit
        and "-m ansible_collections.vce.kvm.cli.command serve --host 127.0.0.1 --port 8080 "
        "--workers 4 --forwarded-allow-ips 127.0.0.1\n"
        in unit
    )
    assert "ReadWritePaths=/var/lib/vce-serve\n" in unit
    assert "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n" in unit
    assert "EnvironmentFile=/etc/vce-kvm/serve.env\n" in unit and "VCE_LEDGER_URL" not in unit
    assert os.readlink(root / "etc/systemd/system/multi-user.target.wants/vce-serve.service") == (
        "/etc/systemd/system/vce-serve.service"
    )
    assert mode(root / ENV_FILE) == 0o600
    assert f'VCE_LEDGER_URL="{ledger}"' in (root / ENV_FILE).read_text()

    assert mode(root / KEY) == 0o600 and mode(root / KEY.rsplit("/", 1)[0]) == 0o700
    known_hosts = root / "var/lib/vce-serve/.ssh/known_hosts"
    assert known_hosts.read_text() == "".join(f"{line}\n" for line in HOST_KEYS)
    public = (root / f"{KEY}.pub").read_text().strip()
    assert public.startswith("ssh-ed25519 ")
    facts = [r["ansible_facts"] for r in results if "control_plane_ssh_public_key" in str(r)]
    assert facts == [{"control_plane_ssh_public_key": public}]
    # With a root, systemd is never asked to do anything.
    systemd = [r for r in results if r["_task"].endswith(("Start vce-serve", "Reload systemd"))]
    assert systemd and all(r["_status"] == "skipped" for r in systemd)

    again = run_role(tmp_path, root, control_plane_ledger_url=ledger, **KNOWN)
    assert [r["_task"] for r in again if r.get("changed")] == []
    assert (root / f"{KEY}.pub").read_text().strip() == public


def test_a_postgresql_ledger_leaves_the_whole_system_read_only(tmp_path):
    root = tmp_path / "root"
    run_role(tmp_path, root, control_plane_ledger_url=POSTGRES_URL)
    unit = (root / UNIT).read_text()
    assert "ReadWritePaths" not in unit and SECRET not in unit
    # systemd and sh read the double-quoted value back as written.
    line = (root / ENV_FILE).read_text().splitlines()[-1]
    assert line == 'VCE_LEDGER_URL="postgresql+psycopg://vce:s3cr%t\\$pa\\"ss@127.0.0.1/ledger"'
    read_back = subprocess.run(
        ["sh", "-c", f'. "{root / ENV_FILE}"; printf %s "$VCE_LEDGER_URL"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert read_back.stdout == POSTGRES_URL


def test_the_unit_starts_a_server_that_asks_for_a_token(tmp_path):
    """What systemd would run, run: ExecStart with the unit's environment and the ledger URL
    from the environment file, on a SQLite ledger the server creates."""
    pytest.importorskip("vce_server.app", exc_type=ImportError)
    root = tmp_path / "root"
    ledger_dir = tmp_path / "ledger"
    ledger_dir.mkdir()
    port = free_port()
    run_role(
        tmp_path,
        root,
        control_plane_ledger_url=f"sqlite:///{ledger_dir}/ledger.sqlite3",
        control_plane_port=port,
        control_plane_home=str(tmp_path / "home"),
    )
    unit = (root / UNIT).read_text()
    assert f"ReadWritePaths={ledger_dir}\n" in unit
    status, log = serve_as_the_unit_says(root, unit)
    assert status == 401, log
    assert (ledger_dir / "ledger.sqlite3").exists()
