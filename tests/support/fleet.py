"""A fleet of lab KVM hosts reached over SSH only (tools/multihost.py), for tests and benches:
its inventory as `python -m tools.multihost up --inventory` writes it, one tenant per host in
its host_vars, a ledger the modules (over SSH, on the hosts) and the controller's callback
share, and the commands an operator runs over the fleet: playbooks/tenant.yml, `vce drift`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import yaml
from ansible_collections.vce.kvm.plugins.module_utils.engine.facade import run_firewall
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.support.ansible_runner import ANSIBLE_PLAYBOOK, ROOT, ansible_env
from tests.support.images import TINY_GUEST, catalogued_guest
from tests.support.ledger import plan_catalog
from tools.multihost import FLEET_ZONES, MultiHostLab, fleet_hosts, new_lab_dir

PLAYBOOK_TIMEOUT = 600
# Known hosts pinned by the lab: Ansible must not add StrictHostKeyChecking=no.
FLEET_ENV = {"ANSIBLE_STDOUT_CALLBACK": "default", "ANSIBLE_HOST_KEY_CHECKING": "True"}


@dataclass(frozen=True)
class Fleet:
    """A started lab, its inventory (a directory: hosts.yml, group_vars, host_vars) and ledger."""

    lab: MultiHostLab
    inventory: Path
    ledger_url: str

    def tenant_of(self, host: str) -> str:
        return f"t{list(self.lab.hosts).index(host) + 1}"

    def declare(self, host: str, tenant: dict[str, Any]) -> None:
        """Declare the host's tenant (host_vars/<host>.yml), as an operator edits an inventory."""
        path = self.inventory / "host_vars" / f"{host}.yml"
        path.write_text(yaml.safe_dump({"vce_tenants": {self.tenant_of(host): tenant}}))


def declaration(index: int, vms: int, running: int = 0) -> dict[str, Any]:
    """A tenant of `vms` tiny VMs on an isolated network 10.71.<index>.0/24, the first
    `running` of them running, the others stopped (96 MiB each, the tiny guest's overlay)."""
    boot = {"image": TINY_GUEST, "size_gib": 1}
    return {
        "customer": f"fleet-customer-{index}",
        "plan": "lab",
        "networks": [{"name": "lan", "cidr": f"10.71.{index}.0/24", "mode": "isolated"}],
        "vms": [
            {
                "name": f"vm{n}",
                "vcpus": 1,
                "memory_mib": 96,
                "boot_disk": boot,
                "nics": [{"network": "lan", "ip": f"10.71.{index}.{10 + n}"}],
                "state": "running" if n <= running else "stopped",
            }
            for n in range(1, vms + 1)
        ],
    }


def start_fleet(count: int) -> MultiHostLab:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    lab = MultiHostLab(new_lab_dir("vce-fleet-"), fleet_hosts(count))
    try:
        guard(lab.start())
    except BaseException:
        lab.stop()
        shutil.rmtree(lab.base_dir, ignore_errors=True)
        raise
    return lab


def stop_fleet(lab: MultiHostLab) -> None:
    lab.stop()
    shutil.rmtree(lab.base_dir, ignore_errors=True)


def guard(lab: MultiHostLab) -> None:
    """Each host's guard table, as the kvm_host role installs it, over SSH."""
    for host in lab.hosts.values():
        run_firewall({"uri": host.ssh_uri, "host_command": host.ssh_command, "uplink": host.uplink})


def make_fleet(lab: MultiHostLab) -> Fleet:
    """The lab's inventory with the provider's plan and ledger in group_vars/all; the ledger
    exists before any run, with the tiny guest in every zone's catalogue."""
    inventory = lab.base_dir / "inventory"
    (inventory / "group_vars").mkdir(parents=True)
    (inventory / "host_vars").mkdir()
    lab.write_inventory(inventory / "hosts.yml", sys.executable)
    url = f"sqlite:///{lab.base_dir / 'ledger.sqlite3'}"
    Ledger.open(url, create=True)
    catalogued_guest(url, *FLEET_ZONES)
    shared = {"vce_ledger_url": url, "vce_plans": plan_catalog("lab")}
    (inventory / "group_vars" / "all.yml").write_text(yaml.safe_dump(shared))
    return Fleet(lab, inventory, url)


def tenant_playbook(fleet: Fleet, *args: str) -> subprocess.Popen[str]:
    """playbooks/tenant.yml over the whole fleet, started (Ansible's forks from ansible.cfg)."""
    env = ansible_env({**FLEET_ENV, "VCE_LEDGER_URL": fleet.ledger_url})
    return subprocess.Popen(
        [str(ANSIBLE_PLAYBOOK), "-i", str(fleet.inventory), "playbooks/tenant.yml", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
    )  # fmt: skip


def apply(fleet: Fleet, *args: str) -> tuple[int, str]:
    """Run playbooks/tenant.yml over the fleet to its end: (exit status, output)."""
    proc = tenant_playbook(fleet, *args)
    out, _err = proc.communicate(timeout=PLAYBOOK_TIMEOUT)
    return proc.returncode, out


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP of a playbook's output: host -> {ok, changed, unreachable, failed, ...}."""
    lines = output.split("PLAY RECAP", 1)[-1].splitlines()[1:]
    counts = {}
    for line in lines:
        host, sep, rest = line.partition(":")
        if not sep or not rest.strip():
            continue
        counts[host.strip()] = {
            key: int(value) for key, value in (word.split("=") for word in rest.split())
        }
    return counts


def vce_drift(fleet: Fleet, report: Path) -> tuple[int, dict[str, Any], str]:
    """`vce drift` over the fleet's inventory: (exit status, JSON report, output)."""
    proc = subprocess.run(
        [sys.executable, "-m", "ansible_collections.vce.kvm.cli.vce", "drift",
         "-i", str(fleet.inventory), "--json", str(report)],
        capture_output=True, text=True, timeout=PLAYBOOK_TIMEOUT, check=False,
        env={**ansible_env(), "PYTHONPATH": str(ROOT / "collections")},
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return proc.returncode, json.loads(report.read_text()), proc.stdout
