"""Tenant networks on libvirt's test driver: created, re-run unchanged, DHCP range and static
leases changed live, replacement only when allowed, removal refused while a VM uses them."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import (
    OwnershipError,
    SpecError,
)
from ansible_collections.vce.kvm.plugins.module_utils.core.plan import UNKNOWN
from ansible_collections.vce.kvm.plugins.module_utils.core.spec import parse_network
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade
from ansible_collections.vce.kvm.plugins.module_utils.engine.environment import EnvironmentPlanner
from ansible_collections.vce.kvm.plugins.module_utils.engine.module_support import kind_spec
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.network import (
    NetworkPlanner,
    sub_range,
)
from ansible_collections.vce.kvm.plugins.module_utils.host.connection import Host
from ansible_collections.vce.kvm.plugins.module_utils.host.shell import HostShell

from tests.support.standin_host import StandInHost

from .conftest import URI

ZONE = {
    "uplink": "up0",
    "public_pools": [{"name": "pub", "cidr": "203.0.113.0/28", "gateway": "203.0.113.1"}],
}

LAN = {"name": "lan", "cidr": "10.20.0.0/24"}
MAC = "52:54:00:aa:00:01"


def plan_of(test_host, raw, tenant="acme", **options):
    engine = NetworkPlanner(test_host, tenant)
    return engine.plan_present(parse_network(raw, ""), test_host.inventory(tenant), **options)


def summary(plan):
    return [(c["kind"], c["name"], c["action"], c.get("field")) for c in plan.to_list()]


def test_a_new_network_is_planned_with_its_addresses_then_made_once(test_host):
    plan = plan_of(test_host, {**LAN, "static_leases": [{"mac": MAC, "ip": "10.20.0.5"}]})
    [change] = plan.to_list()
    assert (change["action"], change["class"], change["before"]) == ("create", "live", None)
    assert change["after"] == {
        "bridge": UNKNOWN,
        "cidr": "10.20.0.0/24",
        "gateway": "10.20.0.1",
        "dhcp_range": "10.20.0.127-10.20.0.254",
        "mode": "nat",
        "mtu": None,
        "static_leases": {MAC: "10.20.0.5"},
    }
    plan.apply()
    state = test_host.inventory("acme").networks["acme_lan"]
    assert (state.active, state.autostart, str(state.gateway)) == (True, True, "10.20.0.1")
    assert not plan_of(
        test_host, {**LAN, "static_leases": [{"mac": MAC, "ip": "10.20.0.5"}]}
    ).changed


def test_dhcp_range_and_leases_change_live_and_settle(test_host):
    plan_of(test_host, {**LAN, "static_leases": [{"mac": MAC, "ip": "10.20.0.5"}]}).apply()
    other = "52:54:00:aa:00:02"
    changed = {
        **LAN,
        "dhcp_start": "10.20.0.100",
        "dhcp_end": "10.20.0.200",
        "static_leases": [{"mac": MAC, "ip": "10.20.0.6"}, {"mac": other, "ip": "10.20.0.7"}],
    }
    plan = plan_of(test_host, changed)
    assert {c.change_class.value for c in plan.changes} == {"live"}
    assert [(c["field"], c["before"], c["after"]) for c in plan.to_list()][:3] == [
        ("dhcp_range", "10.20.0.127-10.20.0.254", "10.20.0.100-10.20.0.200"),
        (f"lease {MAC} on lan", "10.20.0.5", "10.20.0.6"),
        (f"lease {other} on lan", None, "10.20.0.7"),
    ]
    assert plan.changes[-1].field == "metadata"
    plan.apply()
    state = test_host.inventory("acme").networks["acme_lan"]
    assert (str(state.dhcp_start), str(state.dhcp_end)) == ("10.20.0.100", "10.20.0.200")
    assert {mac: str(lease.ip) for mac, lease in state.hosts.items()} == {
        MAC: "10.20.0.6",
        other: "10.20.0.7",
    }
    # The test driver shows a running network's live definition only, where the ownership
    # metadata (written to the saved one) does not change: only that refresh is left.
    assert [c.field for c in plan_of(test_host, changed).changes] == ["metadata"]
    # A managed lease no longer declared is removed.
    fewer = {**changed, "static_leases": [{"mac": other, "ip": "10.20.0.7"}]}
    plan = plan_of(test_host, fewer)
    assert next((c["field"], c["before"], c["after"]) for c in plan.to_list()) == (
        f"lease {MAC} on lan",
        "10.20.0.6",
        None,
    )
    plan.apply()
    assert set(test_host.inventory("acme").networks["acme_lan"].hosts) == {other}


def test_changes_to_a_stopped_network_are_saved_and_it_is_started(test_host):
    plan_of(test_host, LAN).apply()
    test_host.conn.networkLookupByName("acme_lan").destroy()
    changed = {
        **LAN,
        "dhcp_start": "10.20.0.100",
        "static_leases": [{"mac": MAC, "ip": "10.20.0.5"}],
    }
    plan = plan_of(test_host, changed)
    assert [c.field for c in plan.changes] == [
        "dhcp_range",
        f"lease {MAC} on lan",
        "metadata",
        "active",
    ]
    plan.apply()
    state = test_host.inventory("acme").networks["acme_lan"]
    assert state.active and str(state.hosts[MAC].ip) == "10.20.0.5"
    assert not plan_of(test_host, changed).changed


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"cidr": "10.21.0.0/24"}, "cidr"),
        ({"gateway": "10.20.0.2"}, "gateway"),
        ({"mtu": 1400}, "mtu"),
        ({"mode": "isolated"}, "mode"),
    ],
)
def test_fields_needing_a_new_network_are_refused_without_allow_replace(test_host, change, field):
    plan_of(test_host, LAN).apply()
    with pytest.raises(SpecError, match="set allow_replace: true") as caught:
        plan_of(test_host, {**LAN, **change})
    assert caught.value.field == field


def test_replacing_keeps_leases_the_network_does_not_manage(test_host):
    plan_of(test_host, {**LAN, "static_leases": [{"mac": MAC, "ip": "10.20.0.5"}]}).apply()
    vm_mac = "52:54:00:bb:00:01"
    # A lease of a VM NIC: on the network, not in its own declaration.
    NetworkPlanner(test_host, "acme").set_lease(
        "acme_lan", vm_mac, parse_network(
            {**LAN, "static_leases": [{"mac": vm_mac, "ip": "10.20.0.9"}]}, ""
        ).static_leases[0],
    )  # fmt: skip
    plan = plan_of(test_host, {**LAN, "mtu": 1400}, allow_replace=True)
    [change] = plan.to_list()
    assert (change["action"], change["class"]) == ("replace", "replace")
    assert (change["before"]["mtu"], change["after"]["mtu"]) == (None, 1400)
    plan.apply()
    state = test_host.inventory("acme").networks["acme_lan"]
    assert state.mtu == 1400
    assert set(state.hosts) == {vm_mac}


def test_a_stopped_network_is_started_and_autostarted(test_host):
    plan_of(test_host, LAN).apply()
    net = test_host.conn.networkLookupByName("acme_lan")
    net.destroy()
    net.setAutostart(0)
    plan = plan_of(test_host, LAN)
    assert [(c.action, c.field, c.before, c.after) for c in plan.changes] == [
        ("start", "active", False, True),
        ("autostart", "autostart", False, True),
    ]
    plan.apply()
    assert not plan_of(test_host, LAN).changed


def test_overlaps_and_foreign_networks_are_refused(test_host):
    plan_of(test_host, LAN).apply()
    with pytest.raises(SpecError, match=r"10.20.0.0/25 overlaps network 'lan' \(10.20.0.0/24\)"):
        plan_of(test_host, {"name": "dmz", "cidr": "10.20.0.0/25"})
    test_host.conn.networkDefineXML("<network><name>acme_stray</name></network>")
    with pytest.raises(OwnershipError, match=r"not created by vce\.kvm"):
        plan_of(test_host, {"name": "stray", "cidr": "10.30.0.0/24"})


@pytest.mark.parametrize(
    "cidr",
    [
        "10.20.0.0/24",  # acme's lan, exactly
        "10.20.0.128/25",  # inside it
        "10.20.0.0/16",  # around it
        "192.168.122.0/24",  # libvirt's own `default` network
        "192.168.0.0/24",  # the host's interface eth1 (192.168.0.5/24)
    ],
)
def test_a_cidr_in_use_on_the_host_is_refused_without_naming_its_holder(test_host, cidr):
    plan_of(test_host, LAN).apply()
    with pytest.raises(SpecError, match="overlaps a network already in use on this host") as caught:
        plan_of(test_host, {"name": "lan", "cidr": cidr}, tenant="other", field="networks[0].cidr")
    assert caught.value.field == "networks[0].cidr"
    assert "acme" not in str(caught.value) and "'lan'" not in str(caught.value)
    assert "default" not in str(caught.value) and "eth1" not in str(caught.value)
    assert "other_lan" not in test_host.inventory("other").networks


def test_a_network_keeps_its_own_range_through_a_replace(test_host):
    plan_of(test_host, LAN).apply()
    plan = plan_of(test_host, {**LAN, "mtu": 1400}, allow_replace=True)
    assert [c.action for c in plan.changes] == ["replace"]
    engine = NetworkPlanner(test_host, "acme")
    test_host.conn.networkDefineXML(
        "<network><name>zeta_lan</name><ip address='10.21.0.1' prefix='24'/></network>"
    )
    moved = parse_network({**LAN, "cidr": "10.21.0.0/24"}, "")
    with pytest.raises(SpecError, match="overlaps a network already in use"):
        engine.plan_present(moved, test_host.inventory("acme"), allow_replace=True)


def test_the_hosts_addresses_and_routes_through_the_host_command_are_refused(test_host, tmp_path):
    standin = StandInHost(tmp_path / "kvm", {"eth0": 1500, "up0": 1500})

    def addresses(state):
        state["links"]["eth0"]["addrs"] = ["10.99.0.7/24"]
        state["links"]["up0"]["addrs"] = ["172.16.9.1/32"]
        state["routes"] = [{"dst": "172.20.0.0/16", "gateway": "10.99.0.1", "dev": "eth0"}]

    standin.change(addresses)
    engine = NetworkPlanner(test_host, "acme", HostShell(standin.prefix))
    inventory = test_host.inventory("acme")
    for cidr in ("10.99.0.0/24", "172.16.9.0/24", "172.20.3.0/24"):
        with pytest.raises(SpecError, match="overlaps a network already in use"):
            engine.plan_present(parse_network({"name": "lan", "cidr": cidr}, ""), inventory)
    assert engine.plan_present(parse_network(LAN, ""), inventory).changed


def test_an_existing_network_is_not_refused_for_what_came_after_it(test_host):
    plan_of(test_host, LAN).apply()
    test_host.conn.networkDefineXML(
        "<network><name>zeta_lan</name><ip address='10.20.0.1' prefix='24'/></network>"
    )
    assert not plan_of(test_host, LAN).changed


def test_removal_is_planned_with_what_goes_and_refused_while_a_vm_uses_it(test_host):
    engine = NetworkPlanner(test_host, "acme")
    assert not engine.plan_absent("lan", test_host.inventory("acme")).changed
    plan_of(test_host, LAN).apply()
    plan = engine.plan_absent("lan", test_host.inventory("acme"))
    [change] = plan.to_list()
    assert (change["action"], change["before"]["cidr"], change["after"]) == (
        "delete",
        "10.20.0.0/24",
        None,
    )
    test_host.conn.defineXML(
        "<domain type='test'><name>acme_web1</name><memory>131072</memory>"
        "<os><type>hvm</type></os><devices><interface type='network'>"
        "<source network='acme_lan'/></interface></devices></domain>"
    )
    with pytest.raises(SpecError, match=r"still used by VM\(s\) acme_web1") as caught:
        engine.plan_absent("lan", test_host.inventory("acme"))
    assert caught.value.field == "state"
    test_host.conn.lookupByName("acme_web1").undefine()
    engine.plan_absent("lan", test_host.inventory("acme")).apply()
    assert "acme_lan" not in test_host.inventory("acme").networks


def test_the_network_module_checks_applies_and_removes(acme):
    params = {
        "uri": URI,
        "tenant": "acme",
        **LAN,
        "static_leases": [{"mac": MAC, "ip": "10.20.0.5"}],
    }
    checked = facade.run_network(params, check_mode=True)
    assert checked.changed and [c["action"] for c in checked.plan] == ["create"]
    assert not facade.run_network({**params, "state": "absent"}, check_mode=True).changed
    made = facade.run_network(params)
    assert made.changed and made.facts["network"]["cidr"] == "10.20.0.0/24"
    assert not facade.run_network(params).changed
    removed = facade.run_network({**params, "state": "absent"})
    assert [c["action"] for c in removed.plan] == ["delete"]
    assert not facade.run_network({**params, "state": "absent"}).changed


def test_a_dhcp_range_element_names_both_ends():
    assert sub_range("10.0.0.2", "10.0.0.9") == '<range start="10.0.0.2" end="10.0.0.9" />'


def test_a_copy_of_a_networks_tag_is_never_planned_and_the_network_removed_once(test_host):
    plan_of(test_host, LAN).apply()
    root = ET.fromstring(test_host.conn.networkLookupByName("acme_lan").XMLDesc(0))
    root.find("name").text = "acme_copy"
    for element in (root.find("uuid"), root.find("bridge"), root.find("mac")):
        if element is not None:
            root.remove(element)
    ip = root.find("ip")
    ip.set("address", "10.29.0.1")
    ip.remove(ip.find("dhcp"))
    test_host.conn.networkDefineXML(ET.tostring(root, encoding="unicode"))
    assert not plan_of(test_host, LAN).changed
    removal = EnvironmentPlanner(test_host, "acme").plan_absent(test_host.inventory("acme"))
    assert summary(removal) == [("network", "lan", "delete", None)]
    removal.apply()
    inventory = test_host.inventory("acme")
    assert inventory.networks == {}
    assert [(i.libvirt_name, i.problem) for i in inventory.intruders] == [("acme_copy", "unowned")]


def test_the_network_module_refuses_what_a_tenant_must_not_reach_and_changes_nothing(acme):
    made = facade.run_network({"uri": URI, "tenant": "acme", "ledger_url": acme, **LAN})
    assert made.changed
    params = {"uri": URI, "tenant": "other", "ledger_url": acme, "name": "lan"}
    refusals = [
        ({"cidr": "10.20.0.0/24"}, "cidr", "overlaps a network already in use"),
        ({"cidr": "192.168.122.0/24"}, "cidr", "overlaps a network already in use"),
        ({"cidr": "0.0.0.0/0"}, "cidr", "the whole IPv4 address space"),
        ({"cidr": "10.30.0.0/24", "mode": "routed"}, "mode", "needs the zone's uplink"),
    ]
    for extra, field, reason in refusals:
        for check_mode in (True, False):
            with pytest.raises(SpecError, match=reason) as caught:
                facade.run_network({**params, **extra}, check_mode=check_mode)
            assert caught.value.field == field and "acme" not in str(caught.value)
    assert "other_lan" not in [n.name() for n in Host(URI).conn.listAllNetworks(0)]
    # The module has no uplink option: Ansible refuses one as an unsupported parameter.
    assert "uplink" not in kind_spec("network")


def routed(acme: str, uplink: str = "up0") -> dict:
    return {
        "uri": URI,
        "tenant": "acme",
        "ledger_url": acme,
        "name": "dmz",
        "cidr": "10.40.0.0/24",
        "mode": "routed",
        "zone_config": {**ZONE, "uplink": uplink},
    }


def forward_of(name: str) -> ET.Element:
    return ET.fromstring(Host(URI).conn.networkLookupByName(name).XMLDesc(0)).find("forward")


def test_a_routed_network_is_tied_to_no_interface_and_a_new_zone_uplink_changes_nothing(acme):
    facade.run_network(routed(acme))
    assert forward_of("acme_dmz").attrib == {"mode": "route"}
    # The zone's uplink is the guard's and the public IPs', not the network's: another one only
    # refreshes the declaration's digest, live (it replaced the network before).
    moved = facade.run_network(routed(acme, "up1"))
    assert [(c["action"], c["field"], c["class"]) for c in moved.plan] == [
        ("update", "metadata", "live")
    ]


def test_a_routed_network_of_an_earlier_version_is_untied_from_its_uplink_live(acme):
    facade.run_network(routed(acme))
    conn = Host(URI).conn
    made = conn.networkLookupByName("acme_dmz")
    root = ET.fromstring(made.XMLDesc(0))
    made.destroy()
    made.undefine()
    root.find("forward").set("dev", "up0")  # what versions before the guard defined
    net = conn.networkDefineXML(ET.tostring(root, encoding="unicode"))
    net.create()
    net.setAutostart(1)
    assert forward_of("acme_dmz").get("dev") == "up0" and net.isActive()
    untied = facade.run_network(routed(acme))
    assert [
        (c["action"], c["field"], c["class"], c["before"], c["after"]) for c in untied.plan
    ] == [("update", "forward dev", "live", "up0", None)]
    assert forward_of("acme_dmz").attrib == {"mode": "route"}
    assert net.isActive()  # never stopped: its VMs' taps stay on the bridge
    assert facade.run_network(routed(acme)).changed is False
