# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an operator checks after the kvm_host and tenant_environment roles converged this host:
read back from libvirt, nftables, the uplink, the unit files and a ping to the guest."""

from __future__ import annotations

import ipaddress
import json
import re
import time
from typing import Any

import pytest

UNIT_DIR = "/etc/systemd/system"
PING_DEADLINE_S = 60.0
HOST_TIMERS = ("vce-sla-probe", "vce-ledger-reconcile")


@pytest.fixture(scope="module")
def inventory(host: Any) -> dict[str, Any]:
    return host.ansible.get_variables()


@pytest.fixture(scope="module")
def tenant(inventory: dict[str, Any]) -> dict[str, Any]:
    return inventory["vce_tenants"][inventory["vce_tenant"]]


def libvirt_name(inventory: dict[str, Any], name: str) -> str:
    return f"{inventory['vce_tenant']}_{name}"


def virsh(host: Any, inventory: dict[str, Any], *args: str) -> str:
    return host.check_output(
        "virsh -c %s " + " ".join(["%s"] * len(args)), inventory["vce_uri"], *args
    )


def fields(text: str) -> dict[str, str]:
    """`virsh *info` output as a mapping of field to value."""
    pairs = (line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def verify_units(host: Any, *units: str) -> None:
    paths = [f"{UNIT_DIR}/{unit}" for unit in units]
    for path in paths:
        assert host.file(path).is_file, path
    result = host.run("systemd-analyze verify " + " ".join(["%s"] * len(paths)), *paths)
    assert result.rc == 0, result.stderr


def test_qemu_account(host: Any) -> None:
    """Debian's libvirtd exits without the user libvirt-qemu and the group libvirt-qemu."""
    user = host.user("libvirt-qemu")
    assert user.exists
    assert user.group == "kvm"
    assert "libvirt-qemu" in user.groups
    assert host.group("libvirt-qemu").exists


def test_libvirtd_runs(host: Any, inventory: dict[str, Any]) -> None:
    pid = host.file("/run/libvirtd.pid").content_string.strip()
    assert host.file(f"/proc/{pid}/comm").content_string.strip() == "libvirtd"
    assert "libvirt" in virsh(host, inventory, "version")


def test_pools_active_and_autostarted(host: Any, inventory: dict[str, Any]) -> None:
    for pool in inventory["vce_storage_pools"]:
        info = fields(virsh(host, inventory, "pool-info", pool["name"]))
        assert info["State"] == "running", info
        assert info["Autostart"] == "yes", info


def test_tenant_network_active(
    host: Any, inventory: dict[str, Any], tenant: dict[str, Any]
) -> None:
    for network in tenant["networks"]:
        info = fields(virsh(host, inventory, "net-info", libvirt_name(inventory, network["name"])))
        assert info["Active"] == "yes", info


def test_vm_runs_with_declared_size(
    host: Any, inventory: dict[str, Any], tenant: dict[str, Any]
) -> None:
    for vm in tenant["vms"]:
        info = fields(virsh(host, inventory, "dominfo", libvirt_name(inventory, vm["name"])))
        assert info["State"] == "running", info
        assert int(info["CPU(s)"]) == vm["vcpus"], info
        assert info["Used memory"] == f"{vm['memory_mib'] * 1024} KiB", info


def test_public_ip_nat_rules_and_address(
    host: Any, inventory: dict[str, Any], tenant: dict[str, Any]
) -> None:
    rules = host.check_output("nft list table ip vce_nat")
    uplink = inventory["vce_zones"][inventory["vce_zone"]]["uplink"]
    addresses = json.loads(host.check_output("ip -j -4 addr show dev %s", uplink))
    on_uplink = {a["local"] for link in addresses for a in link.get("addr_info", [])}
    pools = [
        ipaddress.ip_network(p["cidr"])
        for p in inventory["vce_zones"][inventory["vce_zone"]]["public_pools"]
    ]
    nics = {vm["name"]: vm["nics"][0]["ip"] for vm in tenant["vms"]}
    for public_ip in tenant["public_ips"]:
        private = nics[public_ip["vm"]]
        tag = f"vce:{inventory['vce_tenant']}:{public_ip['name']}"
        found = re.search(rf'comment "{tag}:([0-9.]+):{re.escape(private)}"', rules)
        assert found, rules
        public = found.group(1)
        assert any(ipaddress.ip_address(public) in pool for pool in pools), public
        assert f"dnat to {private}" in rules
        assert f"snat to {public}" in rules
        assert public in on_uplink, addresses


def test_host_guard_loaded(host: Any, inventory: dict[str, Any]) -> None:
    rules = host.check_output("nft -s list table inet vce_guard")
    uplink = inventory["vce_zones"][inventory["vce_zone"]]["uplink"]
    # The egress filter runs after the public IPs' source NAT.
    assert "hook postrouting priority srcnat + 10" in rules
    assert f'oifname "{uplink}" iifname @bridges ip saddr @cidrs counter drop' in rules
    assert f'oifname != "{uplink}" counter drop' in rules  # tenants leave only through it
    assert host.run("nft list table ip vce_egress").rc != 0  # the old table is gone


def test_backup_units_valid(host: Any, inventory: dict[str, Any], tenant: dict[str, Any]) -> None:
    for schedule in tenant["backup_schedules"]:
        base = f"vce-backup-{inventory['vce_tenant']}_{schedule['vm']}_{schedule['name']}"
        verify_units(host, f"{base}.timer", f"{base}.service")
        assert host.file(f"{UNIT_DIR}/timers.target.wants/{base}.timer").is_symlink


def test_probe_and_reconcile_timers_valid(host: Any) -> None:
    for unit in HOST_TIMERS:
        verify_units(host, f"{unit}.timer", f"{unit}.service")
        wanted = host.file(f"{UNIT_DIR}/timers.target.wants/{unit}.timer")
        assert wanted.linked_to == f"{UNIT_DIR}/{unit}.timer"
    assert host.run("/usr/local/bin/vce --help").rc == 0
    assert host.run("/usr/local/bin/vce-backup --help").rc == 0


def test_the_ledger_url_is_in_a_root_only_file_not_in_the_units(
    host: Any, inventory: dict[str, Any]
) -> None:
    for unit in HOST_TIMERS:
        assert "VCE_LEDGER_URL" not in host.file(f"{UNIT_DIR}/{unit}.service").content_string
    environment = host.file("/etc/vce-kvm/ledger.env")
    if inventory.get("vce_ledger_url"):
        assert (environment.mode, environment.user) == (0o600, "root")
    else:
        assert not environment.exists


def test_guest_answers_ping(host: Any, tenant: dict[str, Any]) -> None:
    for vm in tenant["vms"]:
        address = vm["nics"][0]["ip"]
        deadline = time.monotonic() + PING_DEADLINE_S
        while True:
            result = host.run("ping -c 1 -W 1 %s", address)
            if result.rc == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert result.rc == 0, (
            f"{vm['name']} ({address}) did not answer within {PING_DEADLINE_S:.0f} s"
        )
