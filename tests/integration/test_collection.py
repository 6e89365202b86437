"""The collection as users meet it: module_defaults through the action group, and the copy
`pip install .` puts in site-packages found by ansible-core without any collections path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ansible_runner import ANSIBLE_PLAYBOOK, ansible_env, task_results

pytestmark = pytest.mark.integration


def test_module_defaults_set_the_uri_once(tmp_path, uri, tenant, subnet):
    playbook = tmp_path / "defaults.yml"
    playbook.write_text(
        f"""
- hosts: localhost
  connection: local
  gather_facts: false
  module_defaults:
    group/vce.kvm.vce:
      uri: "{uri}"
  tasks:
    - vce.kvm.network:
        tenant: {tenant}
        name: lan
        cidr: {subnet}.0/24
        mode: isolated
    - vce.kvm.info:
        tenant: {tenant}
"""
    )
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(playbook)],
        capture_output=True,
        text=True,
        env=ansible_env(),
        timeout=300,
        check=False,
    )
    results = task_results(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert results[0]["changed"] is True
    assert results[1]["networks"]["lan"]["cidr"] == f"{subnet}.0/24"


def test_installed_collection_is_found_from_site_packages(tmp_path):
    ansible_doc = Path(sys.executable).with_name("ansible-doc")
    env = ansible_env({"ANSIBLE_COLLECTIONS_PATH": str(tmp_path / "empty")})
    env.pop("ANSIBLE_CONFIG")
    proc = subprocess.run(
        [str(ansible_doc), "-l", "vce.kvm"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert {
        "vce.kvm.vm",
        "vce.kvm.disk",
        "vce.kvm.network",
        "vce.kvm.environment",
        "vce.kvm.info",
    } <= listed
