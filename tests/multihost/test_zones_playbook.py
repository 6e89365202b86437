"""playbooks/zones.yml on inventories/lab's zone hosts, pointed at a lab of the test's own: the
inventory's zones, pools and hosts work as written (over SSH: Ansible's connection, qemu+ssh,
ssh host commands, the lab's pinned host keys), the play proves the public IP and the zone
link with packets, and a second run changes nothing."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.support.ansible_runner import ANSIBLE_PLAYBOOK, ROOT, ansible_env
from tools.labhost import DEFAULT_IMAGE, install_image
from tools.multihost import MultiHostLab, new_lab_dir

pytestmark = [pytest.mark.multihost, pytest.mark.guest]


@pytest.fixture
def zone_lab() -> Iterator[MultiHostLab]:
    base = new_lab_dir()
    lab = MultiHostLab(base, prefix=f"zl{secrets.token_hex(2)}")
    try:
        yield lab.start()
    finally:
        lab.stop()
        shutil.rmtree(base, ignore_errors=True)


def play(lab: MultiHostLab, ledger: str) -> subprocess.CompletedProcess[str]:
    extra = [
        "-e", f"vce_multihost_dir={lab.base_dir}",
        "-e", f"vce_multihost_prefix={lab.prefix}",
    ]  # fmt: skip
    # As lab.sh zones runs it.
    env = ansible_env({"ANSIBLE_STDOUT_CALLBACK": "default", "VCE_LEDGER_URL": ledger})
    return subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "inventories/lab", "--limit", "zone_hosts", "playbooks/zones.yml", *extra],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600, check=False,
    )  # fmt: skip


def test_zones_playbook_applies_proves_and_is_idempotent(zone_lab, tmp_path):
    install_image(DEFAULT_IMAGE)  # where the inventory's vce_images has it, as lab.sh zones does
    ledger = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    first = play(zone_lab, ledger)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-2000:]
    assert "zonedemo in zone-a:" in first.stdout and "203.0.113.65" in first.stdout
    second = play(zone_lab, ledger)
    assert second.returncode == 0, second.stdout[-3000:]
    recap = [line for line in second.stdout.splitlines() if line.startswith("lab-kvm-")]
    assert recap and all("changed=0" in line for line in recap), recap
