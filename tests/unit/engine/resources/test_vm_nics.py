"""A VM's NIC moved to another network on libvirt's test driver: planned as one change that
carries the fixed-IP lease (check mode changes nothing), restart-class while the VM runs; a
second NIC with the same MAC is refused naming the field."""

from __future__ import annotations

import libvirt
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade
from ansible_collections.vce.kvm.plugins.module_utils.host.xml import read_domain, read_network

from tests.support.images import make_image

from .conftest import URI

MAC = "52:54:00:4e:22:01"


@pytest.fixture
def image(tmp_path):
    return str(make_image(tmp_path / "base.qcow2"))


def declaration(image, nics, state="running", **options):
    return {
        "uri": URI,
        "tenant": "acme",
        "default_pool": "default-pool",
        "networks": [
            {"name": "lan", "cidr": "10.30.0.0/24", "mode": "isolated"},
            {"name": "dmz", "cidr": "10.31.0.0/24", "mode": "isolated"},
        ],
        "vms": [
            {"name": "web1", "vcpus": 1, "memory_mib": 128, "state": state,
             "boot_disk": {"image": image, "size_gib": 1}, "nics": nics},
        ],
        **options,
    }  # fmt: skip


ON_LAN = [{"network": "lan", "mac": MAC, "ip": "10.30.0.10"}]
ON_DMZ = [{"network": "dmz", "mac": MAC, "ip": "10.31.0.10"}]


def nics(test_host):
    dom = test_host.conn.lookupByName("acme_web1")
    return [
        (n.mac, n.network)
        for n in read_domain(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), "", False).nics
    ]


def leases(test_host, network):
    net = test_host.conn.networkLookupByName(f"acme_{network}")
    return {
        mac: str(lease.ip) for mac, lease in read_network(net.XMLDesc(0), True, True).hosts.items()
    }


@pytest.mark.parametrize(("state", "change_class"), [("stopped", "live"), ("running", "restart")])
def test_a_moved_nic_is_one_change_carrying_its_lease(acme, test_host, image, state, change_class):
    facade.run_environment(declaration(image, ON_LAN, state, ledger_url=acme))

    checked = facade.run_environment(
        declaration(image, ON_DMZ, state, ledger_url=acme), check_mode=True
    )
    assert [(c["kind"], c["action"], c.get("field")) for c in checked.plan] == [
        ("vm", "move", f"nic {MAC}"),
        ("vm", "update", "metadata"),
    ]
    [move] = checked.plan[:1]
    assert move["class"] == change_class
    assert (move["before"], move["after"]) == (
        {"network": "lan", "ip": "10.30.0.10"},
        {"network": "dmz", "ip": "10.31.0.10"},
    )
    assert checked.diff["before"]["vm/web1"][f"nic {MAC}"]["network"] == "lan"
    assert checked.diff["after"]["vm/web1"][f"nic {MAC}"]["network"] == "dmz"
    assert nics(test_host) == [(MAC, "acme_lan")]
    assert leases(test_host, "lan") == {MAC: "10.30.0.10"}
    assert leases(test_host, "dmz") == {}


def test_a_running_vm_is_restarted_after_the_move_only_when_allowed(acme, test_host, image):
    facade.run_environment(declaration(image, ON_LAN, ledger_url=acme))
    moved = declaration(image, ON_DMZ, ledger_url=acme)

    waiting = facade.run_environment(moved, check_mode=True)
    assert waiting.pending_restart == [
        "vm web1: nics take effect at the next restart (set allow_restart: true to restart now)"
    ]
    restarting = facade.run_environment({**moved, "allow_restart": True}, check_mode=True)
    assert [c["action"] for c in restarting.plan] == ["move", "update", "restart"]


def test_a_nic_without_fixed_ip_moves_alone(acme, test_host, image):
    facade.run_environment(declaration(image, [{"network": "lan", "mac": MAC}], ledger_url=acme))
    moved = declaration(image, [{"network": "dmz", "mac": MAC}], ledger_url=acme)
    [move, _metadata] = facade.run_environment(moved, check_mode=True).plan
    assert (move["before"], move["after"]) == (
        {"network": "lan", "ip": None},
        {"network": "dmz", "ip": None},
    )


def test_a_second_nic_with_the_same_mac_is_refused(acme, test_host, image):
    facade.run_environment(declaration(image, ON_LAN, ledger_url=acme))
    twice = declaration(image, [*ON_LAN, *ON_DMZ], ledger_url=acme)
    with pytest.raises(SpecError, match="already the MAC of nics\\[0\\]") as caught:
        facade.run_environment(twice, check_mode=True)
    assert caught.value.field == "vms[0].nics[1].mac"
    vm = {**twice["vms"][0], "uri": URI, "tenant": "acme", "ledger_url": acme}
    with pytest.raises(SpecError) as caught:
        facade.run_vm({**vm, "default_pool": "default-pool"})
    assert caught.value.field == "nics[1].mac"
    assert nics(test_host) == [(MAC, "acme_lan")]
    assert leases(test_host, "dmz") == {}


def test_a_nic_moves_to_a_network_made_in_the_same_run(acme, test_host, image):
    first = declaration(image, ON_LAN, ledger_url=acme)
    first["networks"] = first["networks"][:1]
    facade.run_environment(first)
    plan = facade.run_environment(declaration(image, ON_DMZ, ledger_url=acme), check_mode=True).plan
    assert [(c["kind"], c["action"]) for c in plan] == [
        ("network", "create"),
        ("vm", "move"),
        ("vm", "update"),
    ]
    assert plan[1]["after"] == {"network": "dmz", "ip": "10.31.0.10"}
