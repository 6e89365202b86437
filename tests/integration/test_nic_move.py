"""A VM's NIC moved to another network of the tenant (same MAC, `nics[].network` changed): one
planned change that leaves one NIC on the new network (in place: same device, its tap on the
new bridge) and its fixed-IP lease moved with it; a second NIC with the same MAC is refused."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from tests.integration.conftest import wait_for
from tests.integration.helpers import domain, network_hosts
from tests.support.ansible_runner import run_module
from tools.tinyguest import console_ip

pytestmark = pytest.mark.integration
MAC = "52:54:00:4e:11:01"
BOOT_TIMEOUT = 90  # seconds, as tests/integration/test_guest_boot.py


@pytest.fixture
def two_networks(uri, tenant, subnet):
    """Isolated networks lan and dmz of the tenant; their /24 prefixes."""
    lan, dmz = subnet, subnet.replace("10.213.", "10.214.")
    for name, prefix in (("lan", lan), ("dmz", dmz)):
        args = {"uri": uri, "tenant": tenant, "name": name, "cidr": f"{prefix}.0/24"}
        assert run_module("network", {**args, "mode": "isolated"})["changed"]
    return lan, dmz


def vm_args(uri, tenant, image, nics, state="running", **extra):
    return {
        "uri": uri,
        "tenant": tenant,
        "name": "web1",
        "vcpus": 1,
        "memory_mib": 96,
        "boot_disk": {"image": image, "size_gib": 1},
        "nics": nics,
        "state": state,
        "shutdown_timeout": 2,
        **extra,
    }


def interfaces(conn, name, flags):
    """Each interface of the domain's XML (`flags`: 0 live, else the saved definition):
    (MAC, network, PCI slot, tap device)."""
    root = ET.fromstring(conn.lookupByName(name).XMLDesc(flags))
    found = []
    for element in root.findall("devices/interface"):
        address, target = element.find("address"), element.find("target")
        found.append(
            (
                element.find("mac").get("address"),
                element.find("source").get("network"),
                address.get("slot") if address is not None else None,
                target.get("dev") if target is not None else None,
            )
        )
    return found


def bridge_of(tap: str) -> str:
    return os.path.basename(os.readlink(f"/sys/class/net/{tap}/master"))


@pytest.mark.parametrize("state", ["stopped", "running"])
def test_a_nic_moves_to_another_network_with_its_lease(
    uri, conn, tenant, two_networks, blank_image, state
):
    lan, dmz = two_networks
    name = f"{tenant}_web1"
    on_lan = vm_args(uri, tenant, blank_image, [{"network": "lan", "mac": MAC, "ip": f"{lan}.10"}])
    assert run_module("vm", {**on_lan, "state": state})["changed"]
    (mac, network, slot, tap) = interfaces(conn, name, libvirt.VIR_DOMAIN_XML_INACTIVE)[0]
    assert (mac, network) == (MAC, f"{tenant}_lan")
    moved = {
        **on_lan,
        "state": state,
        "nics": [{"network": "dmz", "mac": MAC, "ip": f"{dmz}.10"}],
    }

    checked = run_module("vm", moved, check=True, diff=True)
    nic_changes = [c for c in checked["plan"] if c.get("field", "").endswith(MAC)]
    assert [(c["action"], c["before"], c["after"]) for c in nic_changes] == [
        ("move", {"network": "lan", "ip": f"{lan}.10"}, {"network": "dmz", "ip": f"{dmz}.10"})
    ]
    assert checked["diff"]["after"]["vm/web1"][f"nic {MAC}"]["network"] == "dmz"
    assert checked["diff"]["before"]["vm/web1"][f"nic {MAC}"]["network"] == "lan"
    assert interfaces(conn, name, libvirt.VIR_DOMAIN_XML_INACTIVE)[0][:2] == (MAC, f"{tenant}_lan")
    assert MAC in network_hosts(conn, f"{tenant}_lan")
    assert MAC not in network_hosts(conn, f"{tenant}_dmz")

    result = run_module("vm", moved)
    assert not result["failed"], result["msg"]
    saved = interfaces(conn, name, libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert saved == [(MAC, f"{tenant}_dmz", slot, None)]  # the same device, its source changed
    assert MAC not in network_hosts(conn, f"{tenant}_lan")
    assert str(network_hosts(conn, f"{tenant}_dmz")[MAC].ip) == f"{dmz}.10"
    assert domain(conn, name).state == ("running" if state == "running" else "shutoff")
    if state == "running":
        [(_mac, live_network, live_slot, tap)] = interfaces(conn, name, 0)
        assert (live_network, live_slot) == (f"{tenant}_dmz", slot)
        assert bridge_of(tap) == conn.networkLookupByName(f"{tenant}_dmz").bridgeName()
        [move] = [c for c in result["plan"] if c["action"] == "move"]
        assert move["class"] == "restart" and move["pending_restart"]
        assert any("nics take effect at the next restart" in w for w in result["pending_restart"])
    else:
        assert [c["class"] for c in result["plan"] if c["action"] == "move"] == ["live"]

    assert run_module("vm", moved)["changed"] is False


def test_a_second_nic_with_the_same_mac_is_refused(uri, conn, tenant, two_networks, blank_image):
    lan, dmz = two_networks
    name = f"{tenant}_web1"
    nic = {"network": "lan", "mac": MAC, "ip": f"{lan}.10"}
    assert run_module("vm", vm_args(uri, tenant, blank_image, [nic], "stopped"))["changed"]
    twice = [nic, {"network": "dmz", "mac": MAC, "ip": f"{dmz}.10"}]

    refused = run_module("vm", vm_args(uri, tenant, blank_image, twice, "stopped"))
    assert refused["failed"] and refused["field"] == "nics[1].mac", refused
    assert "nics[0]" in refused["msg"]
    assert [i[:2] for i in interfaces(conn, name, libvirt.VIR_DOMAIN_XML_INACTIVE)] == [
        (MAC, f"{tenant}_lan")
    ]
    assert MAC not in network_hosts(conn, f"{tenant}_dmz")


def test_a_vm_left_with_two_nics_of_one_mac_is_repaired(
    uri, conn, tenant, two_networks, blank_image
):
    """What the attach-then-detach of earlier versions left behind: the NIC attached a second
    time on the new network, the old one still there. A run detaches the old one by its own
    XML (libvirt cannot tell the two apart by their MAC) and moves the lease."""
    lan, dmz = two_networks
    name = f"{tenant}_web1"
    nic = {"network": "lan", "mac": MAC, "ip": f"{lan}.10"}
    assert run_module("vm", vm_args(uri, tenant, blank_image, [nic], "stopped"))["changed"]
    second = f"<interface type='network'><mac address='{MAC}'/><source network='{tenant}_dmz'/></interface>"
    conn.lookupByName(name).attachDeviceFlags(second, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    moved = vm_args(
        uri, tenant, blank_image, [{**nic, "network": "dmz", "ip": f"{dmz}.10"}], "stopped"
    )

    result = run_module("vm", moved)
    assert not result["failed"], result["msg"]
    assert [(c["action"], c["field"]) for c in result["plan"] if c["field"].startswith("nic")] == [
        ("detach", f"nic {MAC}")
    ]
    saved = interfaces(conn, name, libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert [i[:2] for i in saved] == [(MAC, f"{tenant}_dmz")]
    assert MAC not in network_hosts(conn, f"{tenant}_lan")
    assert str(network_hosts(conn, f"{tenant}_dmz")[MAC].ip) == f"{dmz}.10"
    assert run_module("vm", moved)["changed"] is False


def test_an_environment_moves_a_nic_to_a_network_it_makes(uri, conn, tenant, subnet, blank_image):
    """The NIC's MAC derived from its position (no `mac`): the same NIC, moved; the new
    network is made with the lease in its definition, the old one keeps none."""
    lan, dmz = subnet, subnet.replace("10.213.", "10.214.")
    vm = {"name": "web1", "memory_mib": 96, "state": "stopped",
          "boot_disk": {"image": blank_image, "size_gib": 1},
          "nics": [{"network": "lan", "ip": f"{lan}.10"}]}  # fmt: skip
    env = {"uri": uri, "tenant": tenant, "vms": [vm],
           "networks": [{"name": "lan", "cidr": f"{lan}.0/24", "mode": "isolated"}]}  # fmt: skip
    assert run_module("environment", env)["changed"]
    [(mac, _network, slot, _tap)] = interfaces(conn, f"{tenant}_web1", 0)
    env["networks"].append({"name": "dmz", "cidr": f"{dmz}.0/24", "mode": "isolated"})
    vm["nics"] = [{"network": "dmz", "ip": f"{dmz}.10"}]

    moved = run_module("environment", env)
    assert not moved["failed"], moved["msg"]
    # The host's guard takes the new network's bridge too (engine/resources/firewall.py).
    assert [(c["kind"], c["action"]) for c in moved["plan"] if c["kind"] != "firewall"] == [
        ("network", "create"),
        ("vm", "move"),
        ("vm", "update"),
    ]
    assert interfaces(conn, f"{tenant}_web1", 0) == [(mac, f"{tenant}_dmz", slot, None)]
    assert mac not in network_hosts(conn, f"{tenant}_lan")
    assert str(network_hosts(conn, f"{tenant}_dmz")[mac].ip) == f"{dmz}.10"
    assert run_module("environment", env)["changed"] is False


@pytest.mark.guest
def test_a_moved_guest_gets_its_address_on_the_new_network(
    uri, conn, tenant, subnet, libvirtd, base_image
):
    """Through vce.kvm.environment, with allow_restart: the tiny guest, restarted after the
    move, takes its reserved address from the new network's DHCP server."""
    lan, dmz = subnet, subnet.replace("10.213.", "10.214.")
    env = {
        "uri": uri,
        "tenant": tenant,
        "shutdown_timeout": 10,
        "networks": [
            {"name": "lan", "cidr": f"{lan}.0/24", "mode": "isolated"},
            {"name": "dmz", "cidr": f"{dmz}.0/24", "mode": "isolated"},
        ],
        "vms": [
            {
                "name": "guest",
                "memory_mib": 160,
                "boot_disk": {"image": base_image, "size_gib": 1},
                "nics": [{"network": "lan", "mac": MAC, "ip": f"{lan}.10"}],
            }
        ],
    }
    console = Path(libvirtd.log_dir) / "qemu" / f"{tenant}_guest.console.log"

    def address() -> str | None:
        return console_ip(console.read_text(errors="replace")) if console.exists() else None

    assert run_module("environment", env)["changed"]
    assert wait_for(address, BOOT_TIMEOUT) == f"{lan}.10", console.read_text(errors="replace")

    env["vms"][0]["nics"] = [{"network": "dmz", "mac": MAC, "ip": f"{dmz}.10"}]
    moved = run_module("environment", {**env, "allow_restart": True})
    assert not moved["failed"], moved["msg"]
    assert [c["action"] for c in moved["plan"] if c["kind"] == "vm"] == [
        "move",
        "update",
        "restart",
    ]
    assert wait_for(lambda: address() == f"{dmz}.10", BOOT_TIMEOUT), console.read_text(
        errors="replace"
    )[-2000:]
    assert MAC not in network_hosts(conn, f"{tenant}_lan")
    assert str(network_hosts(conn, f"{tenant}_dmz")[MAC].ip) == f"{dmz}.10"
    assert run_module("environment", env)["changed"] is False


@pytest.mark.guest
def test_a_running_guest_left_with_two_nics_of_one_mac_loses_the_old_one(
    uri, conn, tenant, two_networks, libvirtd, base_image
):
    """The running VM's copy of the old NIC is hot-unplugged by its own live XML (alias and
    address): the guest acknowledges, and one NIC is left in the VM and in its definition."""
    lan, dmz = two_networks
    name = f"{tenant}_web1"
    nic = {"network": "lan", "mac": MAC, "ip": f"{lan}.10"}
    args = vm_args(uri, tenant, base_image, [nic], memory_mib=160)
    assert run_module("vm", args)["changed"]
    console = Path(libvirtd.log_dir) / "qemu" / f"{name}.console.log"

    def address() -> str | None:
        return console_ip(console.read_text(errors="replace")) if console.exists() else None

    assert wait_for(address, BOOT_TIMEOUT) == f"{lan}.10", console.read_text(errors="replace")
    second = (
        f"<interface type='network'><mac address='{MAC}'/>"
        f"<source network='{tenant}_dmz'/><model type='virtio'/></interface>"
    )
    both = libvirt.VIR_DOMAIN_AFFECT_LIVE | libvirt.VIR_DOMAIN_AFFECT_CONFIG
    conn.lookupByName(name).attachDeviceFlags(second, both)
    assert len(interfaces(conn, name, 0)) == 2

    moved = {**args, "nics": [{**nic, "network": "dmz", "ip": f"{dmz}.10"}]}
    result = run_module("vm", moved)
    assert not result["failed"], result["msg"]
    assert [i[:2] for i in interfaces(conn, name, libvirt.VIR_DOMAIN_XML_INACTIVE)] == [
        (MAC, f"{tenant}_dmz")
    ]
    live = wait_for(lambda: len(interfaces(conn, name, 0)) == 1, 30)
    assert live, interfaces(conn, name, 0)
    assert [i[:2] for i in interfaces(conn, name, 0)] == [(MAC, f"{tenant}_dmz")]
    assert run_module("vm", moved)["changed"] is False
