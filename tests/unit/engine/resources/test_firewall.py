"""The host's guard table: its text rendered from a model, and the planner keeping it on
libvirt's test driver with the real nft in a scratch network namespace standing in for the
host (its `host_command`)."""

from __future__ import annotations

import ipaddress
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError, VceError
from ansible_collections.vce.kvm.plugins.module_utils.core.plan import UNKNOWN
from ansible_collections.vce.kvm.plugins.module_utils.core.spec import parse_network
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade
from ansible_collections.vce.kvm.plugins.module_utils.engine.drift import DeclaredHost, DriftCheck
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.firewall import (
    INTERNAL_RANGES,
    GuardModel,
    GuardPlanner,
    TenantBridge,
    render_guard,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.host import run_host
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.network import NetworkPlanner
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.tenant import run_tenant
from ansible_collections.vce.kvm.plugins.module_utils.host.firewall import NftTable
from ansible_collections.vce.kvm.plugins.module_utils.host.shell import HostShell

from tests.support.ledger import plan_catalog
from tests.support.netns import needs_netns, scratch_netns

from .conftest import URI

ZONE = {
    "uplink": "up0",
    "public_pools": [{"name": "pub", "cidr": "203.0.113.0/28", "gateway": "203.0.113.1"}],
}


def bridge(name: str, mode: str, third: int) -> TenantBridge:
    return TenantBridge(
        name,
        mode,
        ipaddress.IPv4Address(f"10.{third}.0.1"),
        ipaddress.IPv4Network(f"10.{third}.0.0/24"),
    )


MODEL = GuardModel(
    (bridge("virbr3", "isolated", 3), bridge("virbr1", "nat", 1), bridge("virbr2", "routed", 2)),
    "up0",
)


# -- the text ---------------------------------------------------------------------------------


def test_every_set_holds_its_bridges_and_each_bridge_its_own_gateway():
    body = render_guard(MODEL)
    assert 'elements = { "virbr1", "virbr2", "virbr3" }' in body  # sorted: stable text
    assert 'set nat_bridges {\n    type ifname\n    elements = { "virbr1" }' in body
    assert 'set routed_bridges {\n    type ifname\n    elements = { "virbr2" }' in body
    assert 'set isolated_bridges {\n    type ifname\n    elements = { "virbr3" }' in body
    assert '"virbr1" . 10.1.0.1, "virbr2" . 10.2.0.1, "virbr3" . 10.3.0.1' in body
    assert '"virbr1" . "virbr1", "virbr2" . "virbr2", "virbr3" . "virbr3"' in body
    assert "elements = { 10.1.0.0/24, 10.2.0.0/24, 10.3.0.0/24 }" in body


def test_the_host_accepts_only_dhcp_and_dns_on_the_own_gateway():
    body = render_guard(MODEL)
    tenant_in = body.split("chain tenant_in {")[1].split("}")[0].split("\n")
    assert [line.strip() for line in tenant_in if line.strip()] == [
        "ct state established,related accept",
        "udp sport 68 udp dport 67 ip daddr 255.255.255.255 accept",
        "udp sport 68 udp dport 67 iifname . ip daddr @gateways accept",
        "udp dport 53 iifname . ip daddr @gateways accept",
        "tcp dport 53 iifname . ip daddr @gateways accept",
        "counter drop",
    ]


def test_with_an_uplink_tenants_leave_only_through_it_and_never_with_a_private_address():
    body = render_guard(MODEL)
    assert 'oifname != "up0" counter drop' in body
    assert "type filter hook postrouting priority srcnat + 10; policy accept;" in body
    assert 'oifname "up0" iifname @bridges ip saddr @cidrs counter drop' in body
    assert "ct status dnat iifname @bridges oifname @bridges masquerade" in body


def test_without_an_uplink_the_rules_naming_it_go_and_routed_networks_forward_nowhere():
    with_uplink = render_guard(MODEL)
    without = render_guard(GuardModel(MODEL.networks, None))
    assert "oifname !=" not in without and "chain postrouting" not in without
    assert "iifname @isolated_bridges counter drop" in without
    dropped = set(with_uplink.splitlines()) - set(without.splitlines())
    assert {line.strip() for line in dropped} == {
        'oifname != "up0" counter drop',
        "chain postrouting {",
        "type filter hook postrouting priority srcnat + 10; policy accept;",
        'oifname "up0" iifname @bridges ip saddr @cidrs counter drop',
    }
    # libvirt ties a routed network to no interface: without the uplink it stays closed. A NAT
    # network leaves where libvirt's NAT lets it, never to the internal ranges (a management
    # network directly connected to the host is in them).
    added = set(without.splitlines()) - set(with_uplink.splitlines())
    assert {line.strip() for line in added} == {
        "iifname @routed_bridges counter drop",
        "ip daddr @internal counter drop",
        "set internal {",
        f"elements = {{ {', '.join(INTERNAL_RANGES)} }}",
    }


def test_the_internal_ranges_hold_every_non_public_range_and_no_public_address():
    ranges = [ipaddress.ip_network(cidr) for cidr in INTERNAL_RANGES]
    for private in ("10.1.2.3", "172.31.250.10", "192.168.122.1", "100.64.0.1", "169.254.169.254"):
        assert any(ipaddress.ip_address(private) in r for r in ranges), private
    for public in ("203.0.113.1", "198.51.100.7", "192.0.2.1", "8.8.8.8", "1.1.1.1"):
        assert not any(ipaddress.ip_address(public) in r for r in ranges), public
    assert not any(a.overlaps(b) for i, a in enumerate(ranges) for b in ranges[i + 1 :])


def test_a_host_without_tenant_networks_has_empty_sets():
    body = render_guard(GuardModel((), None))
    # nft refuses an empty element list; the only one left is the internal ranges' own.
    [listed] = [line for line in body.splitlines() if "elements" in line]
    assert listed.strip().startswith(f"elements = {{ {INTERNAL_RANGES[0]},")
    assert "chain tenant_in {" in body


# -- the planner, against the real nft --------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[list[str]]:
    """The host's namespace, with the zone's uplink (a bridge without ports)."""
    with scratch_netns("vce-guard") as prefix:
        subprocess.run(
            [*prefix, "ip", "link", "add", "up0", "type", "bridge"], check=True, timeout=10
        )
        yield prefix


def named_bridges(test_host, tenant: str = "acme") -> dict[str, str]:
    """Give the tenant's networks the bridge names libvirt gives them on a real host (the test
    driver names none): virbr1, virbr2, ... in name order; declared name -> bridge."""
    named = {}
    conn = test_host.conn
    for number, net in enumerate(sorted(conn.listAllNetworks(0), key=lambda n: n.name()), 1):
        if not net.name().startswith(f"{tenant}_"):
            continue
        root = ET.fromstring(net.XMLDesc(0))
        root.find("bridge").set("name", f"virbr{number}")
        if net.isActive():
            net.destroy()
        conn.networkDefineXML(ET.tostring(root, encoding="unicode")).create()
        named[net.name().split("_", 1)[1]] = f"virbr{number}"
    return named


def table_in(prefix: list[str]) -> NftTable:
    return NftTable(HostShell(prefix), "inet", "vce_guard")


def firewall(prefix: list[str], ledger_url: str, **extra) -> dict:
    return {"uri": URI, "host_command": prefix, "ledger_url": ledger_url, **extra}


def network(prefix: list[str], ledger_url: str, name: str, cidr: str, mode: str) -> dict:
    return {
        "uri": URI,
        "tenant": "acme",
        "ledger_url": ledger_url,
        "host_command": prefix,
        "zone_config": ZONE,
        "name": name,
        "cidr": cidr,
        "mode": mode,
    }


@needs_netns
def test_a_network_run_installs_the_guard_for_its_new_bridge(acme, netns, test_host):
    params = network(netns, acme, "lan", "10.20.0.0/24", "nat")
    made = facade.run_network(params)
    assert [(c["kind"], c["action"]) for c in made.plan] == [
        ("network", "create"),
        ("firewall", "create"),
    ]
    assert made.plan[1]["after"] == UNKNOWN  # libvirt names the bridge when it defines it
    assert 'oifname != "up0" counter drop' in table_in(netns).observed()  # the zone's uplink
    bridge_name = named_bridges(test_host)["lan"]
    renamed = facade.run_network(params)  # the bridge libvirt holds now, whatever it is
    assert [(c["kind"], c["action"]) for c in renamed.plan] == [("firewall", "update")]
    assert any(f'"{bridge_name}" . 10.20.0.1' in line for line in renamed.plan[0]["after"])
    assert f'"{bridge_name}" . 10.20.0.1' in table_in(netns).observed()
    assert facade.run_network(params).changed is False


@needs_netns
def test_the_module_run_is_idempotent_and_repairs_a_rule_removed_by_hand(acme, netns, test_host):
    facade.run_network(network(netns, acme, "lan", "10.20.0.0/24", "routed"))
    named_bridges(test_host)
    params = firewall(netns, acme, zone_config=ZONE)
    assert facade.run_firewall(params).changed is True  # the bridge libvirt named
    assert facade.run_firewall(params).changed is False
    table = table_in(netns)
    installed = table.observed()
    handles = subprocess.run(
        [*netns, "nft", "-a", "list", "chain", "inet", "vce_guard", "tenant_in"],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout  # fmt: skip
    dns = next(line for line in handles.splitlines() if "udp dport 53" in line)
    handle = dns.rsplit("handle", 1)[1].strip()
    subprocess.run(
        [*netns, "nft", "delete", "rule", "inet", "vce_guard", "tenant_in", "handle", handle],
        check=True, timeout=10,
    )  # fmt: skip

    checked = facade.run_firewall(params, check_mode=True)
    assert checked.changed is True
    assert checked.plan[0]["action"] == "update"
    assert checked.plan[0]["before"] == []
    assert checked.plan[0]["after"] == ["udp dport 53 iifname . ip daddr @gateways accept"]
    assert "udp dport 53" in checked.diff["after"] and "udp dport 53" not in checked.diff["before"]
    assert "udp dport 53" not in table.observed()  # check mode changed nothing

    repaired = facade.run_firewall(params)
    assert repaired.changed is True
    assert table.observed() == installed
    assert facade.run_firewall(params).changed is False


@needs_netns
def test_the_uplink_comes_from_the_option_the_zone_or_the_hosts_ledger_record(
    acme, netns, test_host
):
    facade.run_network(network(netns, acme, "lan", "10.20.0.0/24", "isolated"))
    facade.run_firewall(firewall(netns, acme, uplink="eth9"))
    assert 'oifname != "eth9"' in table_in(netns).observed()
    record = {"name": "kvm1", "zone": "zone-a", "uri": URI, "uplink": "br-up", "ledger_url": acme}
    run_host(record)
    relisted = facade.run_firewall(firewall(netns, acme))
    assert relisted.facts["firewall"]["uplink"] == "br-up"
    assert 'oifname != "br-up"' in table_in(netns).observed()


@needs_netns
def test_check_mode_and_absent(acme, netns, test_host):
    params = firewall(netns, acme, uplink="up0")
    checked = facade.run_firewall(params, check_mode=True)
    assert [c["action"] for c in checked.plan] == ["create"]
    assert table_in(netns).observed() is None
    facade.run_firewall(params)
    assert facade.run_firewall({**params, "state": "absent"}, check_mode=True).changed
    assert table_in(netns).observed() is not None
    removed = facade.run_firewall({**params, "state": "absent"})
    assert [c["action"] for c in removed.plan] == ["delete"]
    assert table_in(netns).observed() is None
    assert facade.run_firewall({**params, "state": "absent"}).changed is False


@needs_netns
def test_an_environment_keeps_the_guard_for_every_mode_and_drops_a_deleted_network(
    acme, netns, test_host
):
    declared = {
        "uri": URI,
        "tenant": "acme",
        "ledger_url": acme,
        "host_command": netns,
        "zone": "zone-a",
        "zone_config": ZONE,
        "networks": [
            {"name": "nat", "cidr": "10.31.0.0/24", "mode": "nat"},
            {"name": "routed", "cidr": "10.32.0.0/24", "mode": "routed"},
            {"name": "iso", "cidr": "10.33.0.0/24", "mode": "isolated"},
        ],
    }
    made = facade.run_environment(declared)
    assert [c["kind"] for c in made.plan] == ["network"] * 3 + ["firewall"]
    named_bridges(test_host)
    facts = facade.run_firewall(firewall(netns, acme, zone_config=ZONE)).facts["firewall"]
    assert sorted((n["mode"], n["cidr"]) for n in facts["networks"]) == [
        ("isolated", "10.33.0.0/24"), ("nat", "10.31.0.0/24"), ("routed", "10.32.0.0/24"),
    ]  # fmt: skip
    assert facade.run_environment(declared).changed is False
    pruned = facade.run_environment(
        {**declared, "networks": declared["networks"][:2], "prune": True}
    )
    assert [(c["kind"], c["action"]) for c in pruned.plan] == [
        ("network", "delete"),
        ("firewall", "update"),
    ]
    assert "10.33.0.1" not in table_in(netns).observed()
    assert (
        facade.run_environment({**declared, "networks": declared["networks"][:2]}).changed is False
    )


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"uplink": "not an interface"}, "uplink"),
        ({"state": "gone"}, "state"),
        ({"zone_config": {"uplink": ""}}, "zone_config.uplink"),
    ],
)
def test_bad_input_names_the_field(acme, test_host, extra, field):
    with pytest.raises(SpecError) as caught:
        facade.run_firewall({"uri": URI, "host_command": ["true"], "ledger_url": acme, **extra})
    assert caught.value.field == field


def test_the_test_driver_without_a_host_command_is_refused(acme, test_host):
    with pytest.raises(SpecError) as caught:
        facade.run_firewall({"uri": URI, "ledger_url": acme, "uplink": "up0"})
    assert caught.value.field == "host_command"


@needs_netns
def test_a_routed_network_of_an_earlier_version_is_guarded_before_it_is_untied(
    acme, netns, test_host
):
    """A host upgraded without the role's firewall task: the run installs the guard first,
    then unties the network, so it is never free to leave through any interface."""
    facade.run_network(network(netns, acme, "dmz", "10.40.0.0/24", "routed"))
    named_bridges(test_host)
    made = test_host.conn.networkLookupByName("acme_dmz")
    root = ET.fromstring(made.XMLDesc(0))
    made.destroy()
    root.find("forward").set("dev", "up0")  # what versions before the guard defined
    test_host.conn.networkDefineXML(ET.tostring(root, encoding="unicode")).create()
    table_in(netns).remove()
    untied = facade.run_network(network(netns, acme, "dmz", "10.40.0.0/24", "routed"))
    assert [(c["kind"], c["action"], c["field"]) for c in untied.plan] == [
        ("firewall", "create", "rules"),
        ("network", "update", "forward dev"),
    ]
    assert '"virbr1"' in table_in(netns).observed()


@pytest.mark.parametrize(("mode", "refused"), [("routed", True), ("nat", False)])
def test_a_routed_network_is_refused_where_the_guard_cannot_be_kept(
    test_host, monkeypatch, mode, refused
):
    """A remote host without a host command: its guard is out of reach, and a routed network,
    tied to no interface, would leave through any of the host's."""
    monkeypatch.setattr(test_host, "uri", "qemu+ssh://kvm1/system")
    monkeypatch.setattr(test_host, "is_local", False)
    guard = GuardPlanner(test_host, HostShell(), "up0")
    made = NetworkPlanner(test_host, "acme").plan_present(
        parse_network({"name": "dmz", "cidr": "10.40.0.0/24", "mode": mode}, "", "up0"),
        test_host.inventory("acme"),
    )
    if not refused:
        assert not guard.plan_after(made).changed
        return
    with pytest.raises(SpecError, match=r"routed network\(s\) dmz leave only through") as caught:
        guard.plan_after(made)
    assert caught.value.field == "host_command"


@needs_netns
def test_drift_reports_a_missing_and_an_altered_guard_and_a_run_restores_it(acme, netns, test_host):
    facade.run_network(network(netns, acme, "lan", "10.20.0.0/24", "nat"))
    named_bridges(test_host)
    shared = {"host_command": netns, "zone": "zone-a", "zone_config": ZONE}
    declared = DeclaredHost.from_options("kvm1", URI, acme, {}, shared)

    def guard_case():
        (case,) = [c for c in DriftCheck(declared).cases() if c.kind == "firewall"]
        return case

    table_in(netns).remove()
    assert (guard_case().tenant, guard_case().name, guard_case().status) == (
        "",
        "vce_guard",
        "missing",
    )
    facade.run_firewall(firewall(netns, acme, zone_config=ZONE))
    assert guard_case().status == "in_sync"
    subprocess.run(
        [*netns, "nft", "flush", "chain", "inet", "vce_guard", "tenant_from"],
        check=True,
        timeout=10,
    )
    altered = guard_case()
    assert altered.status == "drifted"
    assert [d.declared for d in altered.differences] == [
        ["iifname @isolated_bridges counter drop", 'oifname != "up0" counter drop']
    ]
    assert facade.run_firewall(firewall(netns, acme, zone_config=ZONE)).changed
    assert guard_case().status == "in_sync"
    only_a_tenant = DriftCheck(declared, only=["acme"]).cases()
    assert [c for c in only_a_tenant if c.kind == "firewall"] == []


@needs_netns
def test_a_run_that_knows_no_zone_keeps_the_uplink_the_guard_names(acme, netns, test_host):
    facade.run_firewall(firewall(netns, acme, zone_config=ZONE))
    isolated = {**network(netns, acme, "iso", "10.40.0.0/24", "isolated"), "zone_config": None}
    made = facade.run_network(isolated)
    assert [c["kind"] for c in made.plan] == ["network", "firewall"]
    listing = table_in(netns).observed()
    assert 'oifname != "up0" counter drop' in listing
    assert 'oifname "up0" iifname @bridges ip saddr @cidrs counter drop' in listing
    assert facade.run_firewall(firewall(netns, acme)).facts["firewall"]["uplink"] == "up0"


@needs_netns
def test_a_suspended_tenants_run_still_restores_the_hosts_guard(acme, netns, test_host):
    declared = {
        "uri": URI, "tenant": "acme", "ledger_url": acme, "host_command": netns,
        "networks": [{"name": "lan", "cidr": "10.50.0.0/24", "mode": "isolated"}],
    }  # fmt: skip
    facade.run_environment(declared)
    suspend = {"ledger_url": acme, "name": "acme", "customer": "customer-of-acme", "plan": "lab"}
    run_tenant({**suspend, "plans": plan_catalog("lab"), "state": "suspended", "uri": URI})
    table_in(netns).remove()
    restored = facade.run_environment(declared)  # the guard is the host's, not the tenant's
    assert [c["kind"] for c in restored.plan] == ["firewall"]
    assert table_in(netns).observed() is not None
    grown = {**declared, "networks": [*declared["networks"], {"name": "b", "cidr": "10.51.0.0/24"}]}
    with pytest.raises(VceError, match="suspended"):
        facade.run_environment(grown)
