"""Zone links: one tenant network joined across two zones over VXLAN. Each zone's host is a
test-driver host of its own; its `ip` commands reach a stand-in host (tests/support)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import (
    ApplyError,
    SpecError,
)
from ansible_collections.vce.kvm.plugins.module_utils.core.plan import UNKNOWN
from ansible_collections.vce.kvm.plugins.module_utils.core.quota import QuotaExceeded
from ansible_collections.vce.kvm.plugins.module_utils.core.spec import (
    EnvironmentSpec,
    parse_network,
    parse_zone_links,
)
from ansible_collections.vce.kvm.plugins.module_utils.core.zones import parse_zone_link
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.zone_link import (
    plan_environment_links,
    run_zone_link,
    zone_link_planner,
)
from ansible_collections.vce.kvm.plugins.module_utils.host.firewall import NftTable
from ansible_collections.vce.kvm.plugins.module_utils.host.shell import HostShell
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import events, zone_links
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.support.kvm_hosts import host_file
from tests.support.ledger import register
from tests.support.standin_host import StandInHost

LAN = {"name": "lan", "cidr": "10.30.0.0/24"}
ZONE_A = {**LAN, "gateway": "10.30.0.1", "dhcp_start": "10.30.0.10", "dhcp_end": "10.30.0.99"}
ZONE_B = {**LAN, "gateway": "10.30.0.2", "dhcp_start": "10.30.0.100", "dhcp_end": "10.30.0.199"}
# The filter's rule at each end, as nft lists it (the VNI 10000 in hex).
ACCEPT_FROM_B = (
    'iifname "ul0" ip saddr 192.0.2.2 ip daddr 192.0.2.1 @th,96,24 0x2710 accept '
    'comment "acme/stretch"'
)
ACCEPT_FROM_A = (
    'iifname "ul0" ip saddr 192.0.2.1 ip daddr 192.0.2.2 @th,96,24 0x2710 accept '
    'comment "acme/stretch"'
)


class Zones:
    def __init__(self, tmp_path, ledger_url, a=..., b=..., underlay_mtu=1600, lab="lab"):
        """`a`, `b`: the tenant network on each host (None: none; omitted: ZONE_A, ZONE_B)."""
        a = ZONE_A if a is ... else a
        b = ZONE_B if b is ... else b
        tmp_path = tmp_path / lab
        tmp_path.mkdir()
        self.ledger_url = ledger_url
        self.uri_a = host_file(tmp_path / "kvm-a.xml", "acme", [a] if a else [])
        self.uri_b = host_file(tmp_path / "kvm-b.xml", "acme", [b] if b else [], "virbr5")
        self.a = StandInHost(tmp_path / "shell-a", {"ul0": underlay_mtu})
        self.b = StandInHost(tmp_path / "shell-b", {"ul0": underlay_mtu})

    def ends(self, **changes):
        return [
            {"zone": "zone-a", "uri": self.uri_a, "underlay_ip": "192.0.2.1",
             "underlay_dev": "ul0", "host_command": self.a.prefix},
            {"zone": "zone-b", "uri": self.uri_b, "underlay_ip": "192.0.2.2",
             "underlay_dev": "ul0", "host_command": self.b.prefix, **changes},
        ]  # fmt: skip

    def params(self, name="stretch", **extra):
        return {
            "tenant": "acme",
            "ledger_url": self.ledger_url,
            "name": name,
            "network": "lan",
            "ends": self.ends(),
            **extra,
        }

    def filter_rules(self, host):
        """The rules of the host's VXLAN filter, as `nft list` shows them; None without it."""
        shell = HostShell(host.prefix)
        listing = NftTable(shell, "inet", "vce_vxlan").observed()
        if listing is None:
            return None
        chain = listing.split("chain vxlan_in {", 1)[1].split("}", 1)[0]
        return [line.strip() for line in chain.splitlines() if line.strip()]

    def rows(self):
        with Ledger.open(self.ledger_url).store.read() as connection:
            return [r._asdict() for r in connection.execute(sa.select(zone_links))]

    def event_kinds(self):
        with Ledger.open(self.ledger_url).store.read() as connection:
            query = sa.select(events.c.kind).where(events.c.kind.like("zone_link%"))
            return sorted(r.kind for r in connection.execute(query))


@pytest.fixture
def zones(tmp_path, acme):
    return Zones(tmp_path, acme)


def actions(result):
    return [(c["action"], c.get("field")) for c in result.plan]


def test_check_mode_plans_the_vni_both_filters_and_both_ends_and_records_nothing(zones):
    result = run_zone_link(zones.params(), check_mode=True)
    assert actions(result) == [
        ("allocate", "vni"),
        ("create", zones.uri_a),
        ("create", zones.uri_b),
        ("connect", "ends[0]"),
        ("connect", "ends[1]"),
    ]
    assert result.plan[0]["after"] == UNKNOWN
    assert [(c["kind"], c["name"], c["before"], c["after"]) for c in result.plan[1:3]] == [
        ("firewall", "vce_vxlan", None, UNKNOWN)
    ] * 2
    assert result.plan[3]["after"] == f"vx{UNKNOWN} 192.0.2.1 -> 192.0.2.2 on virbr1"
    assert result.plan[4]["after"] == f"vx{UNKNOWN} 192.0.2.2 -> 192.0.2.1 on virbr5"
    assert result.facts == {"zone_link": {}}
    assert zones.rows() == []
    assert zones.filter_rules(zones.a) is None and zones.filter_rules(zones.b) is None


def test_a_link_is_recorded_connected_and_then_unchanged(zones):
    result = run_zone_link(zones.params())
    assert result.changed
    facts = result.facts["zone_link"]
    assert (facts["vni"], facts["device"], facts["cidr"], facts["network"]) == (
        10000,
        "vx10000",
        "10.30.0.0/24",
        "lan",
    )
    assert [(e["zone"], e["underlay_ip"]) for e in facts["ends"]] == [
        ("zone-a", "192.0.2.1"),
        ("zone-b", "192.0.2.2"),
    ]
    [row] = zones.rows()
    assert (row["tenant"], row["name"], row["vni"]) == ("acme", "stretch", 10000)
    assert zones.event_kinds() == ["zone_link_created"]
    assert zones.filter_rules(zones.a) == [ACCEPT_FROM_B, "counter drop"]
    assert zones.filter_rules(zones.b) == [ACCEPT_FROM_A, "counter drop"]
    again = run_zone_link(zones.params())
    assert (again.changed, again.plan) == (False, [])


def test_an_end_that_lost_its_device_is_connected_again(zones):
    run_zone_link(zones.params())
    zones.b.change(lambda state: state["links"].pop("vx10000"))
    plan = run_zone_link(zones.params(), check_mode=True).plan
    assert [(c["action"], c["field"], c["before"]) for c in plan] == [("connect", "ends[1]", None)]
    assert plan[0]["after"] == "vx10000 192.0.2.2 -> 192.0.2.1 on virbr5"
    run_zone_link(zones.params())
    assert not run_zone_link(zones.params()).changed


def test_a_device_pointing_elsewhere_is_replaced(zones):
    run_zone_link(zones.params())

    def elsewhere(state):
        state["links"]["vx10000"]["vxlan"]["remote"] = "192.0.2.99"

    zones.a.change(elsewhere)
    plan = run_zone_link(zones.params()).plan
    assert [(c["action"], c["field"], c["before"]) for c in plan] == [
        ("connect", "ends[0]", "vx10000")
    ]
    assert not run_zone_link(zones.params()).changed


def test_removal_disconnects_both_ends_and_releases_the_vni(zones):
    run_zone_link(zones.params())
    result = run_zone_link(zones.params(state="absent"))
    assert [(c["action"], c["field"]) for c in result.plan] == [
        ("update", zones.uri_a),
        ("update", zones.uri_b),
        ("disconnect", "ends[0]"),
        ("disconnect", "ends[1]"),
        ("release", "vni"),
    ]
    assert [c["before"] for c in result.plan[2:]] == ["vx10000", "vx10000", 10000]
    assert result.facts == {"zone_link": {}}
    assert zones.rows() == []
    # Without links the filter stays and drops every VXLAN packet.
    assert zones.filter_rules(zones.a) == zones.filter_rules(zones.b) == ["counter drop"]
    assert zones.event_kinds() == ["zone_link_created", "zone_link_removed"]
    assert not run_zone_link(zones.params(state="absent")).changed
    # Connected again, the link is given a VNI again.
    assert run_zone_link(zones.params()).facts["zone_link"]["vni"] == 10000


def test_a_network_mtu_the_underlay_cannot_carry_is_refused(tmp_path, acme):
    zones = Zones(tmp_path, acme, underlay_mtu=1500)
    with pytest.raises(SpecError) as caught:
        run_zone_link(zones.params(), check_mode=True)
    assert caught.value.field == "ends[0].underlay_dev"
    assert caught.value.reason == (
        "MTU too small: network lan has MTU 1500, which needs an underlay MTU of 1550, but ul0 "
        "in zone zone-a has 1500; lower the network's mtu to 1450 or raise the underlay's"
    )
    lower = Zones(tmp_path, acme, {**ZONE_A, "mtu": 1450}, {**ZONE_B, "mtu": 1450}, 1500, "lower")
    assert run_zone_link(lower.params(), check_mode=True).changed


@pytest.mark.parametrize(
    ("b", "reason"),
    [
        ({**ZONE_B, "cidr": "10.31.0.0/24", "gateway": "10.31.0.2", "dhcp_start": "10.31.0.100",
          "dhcp_end": "10.31.0.199"}, "is 10.30.0.0/24 in zone zone-a but 10.31.0.0/24 in zone"),
        ({**ZONE_B, "gateway": "10.30.0.1"}, "both ends of lan use gateway 10.30.0.1"),
        ({**ZONE_B, "dhcp_start": "10.30.0.50"}, "the DHCP ranges of lan overlap"),
    ],
)  # fmt: skip
def test_ends_that_cannot_be_one_segment_are_refused(tmp_path, acme, b, reason):
    zones = Zones(tmp_path, acme, ZONE_A, b)
    with pytest.raises(SpecError, match=reason) as caught:
        run_zone_link(zones.params(), check_mode=True)
    assert caught.value.field == "network"


def test_both_ends_in_one_zone_or_a_missing_network_are_refused(tmp_path, acme):
    zones = Zones(tmp_path, acme)
    params = zones.params()
    params["ends"][1]["zone"] = "zone-a"
    with pytest.raises(SpecError, match="both ends are in zone zone-a") as caught:
        run_zone_link(params, check_mode=True)
    assert caught.value.field == "ends[1].zone"
    without = Zones(tmp_path, acme, ZONE_A, None, lab="without")
    with pytest.raises(
        SpecError, match="tenant acme has no network 'lan' in zone zone-b"
    ) as caught:
        run_zone_link(without.params(), check_mode=True)
    assert caught.value.field == "ends[1]"


def test_a_second_link_over_the_same_subnet_is_refused(zones):
    run_zone_link(zones.params())
    with pytest.raises(SpecError, match=r"overlaps 10\.30\.0\.0/24 of the tenant's link stretch"):
        run_zone_link(zones.params(name="again"), check_mode=True)


def test_the_zone_links_quota_is_enforced(tmp_path, ledger_url, connections):
    register(ledger_url, "acme", zone_links=0)
    zones = Zones(tmp_path, ledger_url)
    with pytest.raises(QuotaExceeded, match="zone links"):
        run_zone_link(zones.params(), check_mode=True)


def test_an_unreachable_underlay_is_an_apply_error(zones):
    params = zones.params()
    params["ends"][1]["underlay_dev"] = "eth9"
    with pytest.raises(ApplyError, match=r'Failed to read underlay eth9: Device "eth9" does not'):
        run_zone_link(params, check_mode=True)


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"ends": []}, "ends", "exactly two ends, got 0"),
        ({"ends": [{"zone": "a"}, {"zone": "b"}]}, "ends[0].uri", "libvirt URI"),
        ({"name": "Bad Name"}, "name", "invalid"),
    ],
)
def test_bad_declarations_name_the_field(zones, change, field, reason):
    with pytest.raises(SpecError, match=reason) as caught:
        run_zone_link({**zones.params(), **change}, check_mode=True)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("end", "field"),
    [
        ({"underlay_dev": "not a dev"}, "ends[1].underlay_dev"),
        ({"underlay_ip": "192.0.2"}, "ends[1].underlay_ip"),
        ({"colour": "red"}, "ends[1].colour"),
        ({"host_command": [""]}, "ends[1].host_command"),
    ],
)
def test_bad_ends_name_the_field(zones, end, field):
    params = zones.params()
    params["ends"][1].update(end)
    with pytest.raises(SpecError) as caught:
        zone_link_planner(Ledger.open(zones.ledger_url), "acme", parse_zone_link(params, ""))
    assert caught.value.field == field


def environment(params):
    """The environment declaring `params`' zone links, parsed as the environment module does."""
    return EnvironmentSpec("acme", zone_links=parse_zone_links(params))


def test_an_environment_links_from_its_own_host_and_prunes_only_when_asked(zones):
    ledger = Ledger.open(zones.ledger_url)
    declared = {
        "tenant": "acme",
        "zone_links": [{k: zones.params()[k] for k in ("name", "network", "ends")}],
    }
    plan = plan_environment_links(environment(declared), ledger, "acme", zones.uri_a, False)
    assert [(c.action, c.field) for c in plan.changes] == [
        ("allocate", "vni"),
        ("create", zones.uri_a),
        ("create", zones.uri_b),
        ("connect", "ends[0]"),
        ("connect", "ends[1]"),
    ]
    with pytest.raises(SpecError, match="the first end must be this host") as caught:
        plan_environment_links(environment(declared), ledger, "acme", zones.uri_b, False)
    assert caught.value.field == "zone_links[0].ends[0].uri"
    run_zone_link(zones.params())
    undeclared = {"tenant": "acme", "zone_links": []}
    kept = plan_environment_links(environment(undeclared), ledger, "acme", zones.uri_a, False)
    assert not kept.changed
    assert kept.warnings == [
        "tenant acme has zone links no declaration mentions: stretch (set prune: true to "
        "remove them)"
    ]
    pruned = plan_environment_links(environment(undeclared), ledger, "acme", zones.uri_a, True)
    assert [c.action for c in pruned.changes] == [
        "update", "update", "disconnect", "disconnect", "release"
    ]  # fmt: skip
    # Another host of the tenant is not touched by this host's environment.
    assert not plan_environment_links(
        environment(undeclared), ledger, "acme", "test:///elsewhere", True
    ).changed


def test_a_network_declared_in_the_same_run_is_planned_before_it_exists(tmp_path, acme):
    zones = Zones(tmp_path, acme, None, ZONE_B)
    declared = parse_network(ZONE_A, "")
    engine = zone_link_planner(Ledger.open(acme), "acme", parse_zone_link(zones.params(), ""))
    plan = engine.plan_present(declared)
    assert [(c.action, c.field) for c in plan.changes] == [
        ("allocate", "vni"),
        ("connect", "ends[0]"),
        ("connect", "ends[1]"),
    ]


def drop_rule(rule):
    """An edit of a stand-in host: `rule` deleted from its VXLAN filter by hand."""

    def edit(state):
        tables = state["whole_tables"]
        tables["inet vce_vxlan"] = tables["inet vce_vxlan"].replace(f"\t\t{rule}\n", "")

    return edit


def test_a_filter_rule_removed_by_hand_is_shown_as_a_rule_diff_and_restored(zones):
    run_zone_link(zones.params())
    zones.b.change(drop_rule(ACCEPT_FROM_A))
    checked = run_zone_link(zones.params(), check_mode=True)
    assert actions(checked) == [("update", zones.uri_b)]
    before = checked.diff["before"]["firewall/vce_vxlan"][zones.uri_b]
    after = checked.diff["after"]["firewall/vce_vxlan"][zones.uri_b]
    assert [line for line in after if line not in before] == [f"\t\t{ACCEPT_FROM_A}"]
    assert zones.filter_rules(zones.b) == ["counter drop"]  # check mode changed nothing
    run_zone_link(zones.params())
    assert zones.filter_rules(zones.b) == [ACCEPT_FROM_A, "counter drop"]
    assert not run_zone_link(zones.params()).changed


def test_the_filter_holds_the_links_of_every_tenant_on_the_host(zones):
    run_zone_link(zones.params())
    rival = [
        {"zone": "zone-a", "uri": zones.uri_a, "underlay_ip": "192.0.2.1", "underlay_dev": "ul0",
         "host_command": zones.a.prefix},
        {"zone": "zone-c", "uri": "test:///elsewhere", "underlay_ip": "192.0.2.3",
         "underlay_dev": "ul0", "host_command": []},
    ]  # fmt: skip
    with Ledger.open(zones.ledger_url).store.locked("other") as connection:
        connection.execute(
            zone_links.insert().values(
                tenant="other", name="far", vni=10001, network="lan", cidr="10.40.0.0/24",
                ends=json.dumps(rival), created_at=datetime.now(UTC),
            )
        )  # fmt: skip
    rival_rule = (
        'iifname "ul0" ip saddr 192.0.2.3 ip daddr 192.0.2.1 @th,96,24 0x2711 accept '
        'comment "other/far"'
    )
    # acme's run keeps the host's whole filter: the other tenant's link is let in too.
    assert actions(run_zone_link(zones.params())) == [("update", zones.uri_a)]
    assert zones.filter_rules(zones.a) == [ACCEPT_FROM_B, rival_rule, "counter drop"]
    run_zone_link(zones.params(state="absent"))
    assert zones.filter_rules(zones.a) == [rival_rule, "counter drop"]
    assert zones.filter_rules(zones.b) == ["counter drop"]


def test_moved_ends_are_recorded_before_the_filters_are_rendered(zones):
    run_zone_link(zones.params())
    params = zones.params()
    params["ends"][1]["underlay_ip"] = "192.0.2.9"
    moved = run_zone_link(params)
    assert actions(moved) == [
        ("record", "ends"),
        ("update", zones.uri_a),
        ("update", zones.uri_b),
        ("connect", "ends[0]"),
        ("connect", "ends[1]"),
    ]
    assert [e["underlay_ip"] for e in json.loads(zones.rows()[0]["ends"])] == [
        "192.0.2.1",
        "192.0.2.9",
    ]
    assert zones.filter_rules(zones.a)[0].startswith(
        'iifname "ul0" ip saddr 192.0.2.9 ip daddr 192.0.2.1 '
    )
    assert zones.filter_rules(zones.b)[0].startswith(
        'iifname "ul0" ip saddr 192.0.2.1 ip daddr 192.0.2.9 '
    )
    assert not run_zone_link(params).changed


def test_a_device_that_learns_remotes_is_made_again_without_learning(zones):
    run_zone_link(zones.params())

    def learning(state):
        state["links"]["vx10000"]["vxlan"]["learning"] = True

    zones.a.change(learning)
    assert actions(run_zone_link(zones.params())) == [("connect", "ends[0]")]
    assert not run_zone_link(zones.params()).changed
