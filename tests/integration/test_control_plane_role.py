"""The control_plane role run for real into a temporary root directory (control_plane_root):
check mode writes nothing, a run writes the unit, the root-only environment file and the SSH
key, a second run changes nothing. No systemd is started: nothing is, with a root set."""

from __future__ import annotations

import getpass
import grp
import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support.ansible_runner import ANSIBLE_PLAYBOOK, ansible_env, task_results

pytestmark = pytest.mark.integration

SECRET = 's3cr%t$pa"ss'
POSTGRES_URL = f"postgresql+psycopg://vce:{SECRET}@127.0.0.1/ledger"
UNIT = "etc/systemd/system/vce-serve.service"
ENV_FILE = "etc/vce-kvm/serve.env"
KEY = "var/lib/vce-serve/.ssh/id_ed25519"


def run_role(tmp_path: Path, root: Path, check: bool = False, **variables: str) -> list[dict]:
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
        + "".join(f"        {name}: {value!r}\n" for name, value in settings.items())
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


def test_the_role_installs_the_service_into_a_root(tmp_path):
    root = tmp_path / "root"
    ledger = "sqlite:////var/lib/vce-serve/ledger.sqlite3"

    run_role(tmp_path, root, check=True, control_plane_ledger_url=ledger)
    assert not root.exists() or not any(root.rglob("*")), list(root.rglob("*"))

    results = run_role(tmp_path, root, control_plane_ledger_url=ledger)
    unit = (root / UNIT).read_text()
    assert (
        "ExecStart=" in unit
        and "-m ansible_collections.vce.kvm.cli.command serve --host 127.0.0.1 --port 8080\n"
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
    public = (root / f"{KEY}.pub").read_text().strip()
    assert public.startswith("ssh-ed25519 ")
    facts = [r["ansible_facts"] for r in results if "control_plane_ssh_public_key" in str(r)]
    assert facts == [{"control_plane_ssh_public_key": public}]
    # With a root, systemd is never asked to do anything.
    systemd = [r for r in results if r["_task"].endswith(("Start vce-serve", "Reload systemd"))]
    assert systemd and all(r["_status"] == "skipped" for r in systemd)

    again = run_role(tmp_path, root, control_plane_ledger_url=ledger)
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
