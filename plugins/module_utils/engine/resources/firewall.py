# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's guard for tenant traffic: nft table `inet vce_guard`, rendered from the tenant
networks on the host and the zone's uplink, replaced whole in one batch.

A restriction layer beside libvirt's own chains: its base chains run before libvirt's (priority
`filter - 10`) and only ever drop, so nothing libvirt refuses is let through. From a tenant
bridge the host accepts DHCP and DNS on that network's own gateway and replies to what the host
started; into a tenant network only replies and what a public IP's DNAT admits; out of one only
through the uplink (NAT and routed) or nowhere (isolated); a VM without a public IP never leaves
through the uplink with its private address. A VM reaches another VM's public IP on the same
host through the hairpin chain (masquerade, so the replies come back through the host).

Traffic between two ports of one bridge passes the inet forward hook too when br_netfilter is
loaded (`bridge-nf-call-iptables`, the default in every network namespace): such a packet has
the bridge as input and output interface, so `same_bridge` lets it through, as libvirt's own
chains do.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from ...core.errors import SpecError, VceError, libvirt_action
from ...core.plan import UNKNOWN, Change, Plan
from ...core.validation import check_choice, is_interface
from ...core.zones import zone_uplink
from ...host.addresses import reads_commands
from ...host.connection import Host
from ...host.firewall import NftTable
from ...host.shell import HostShell
from ...ledger.tenants import Ledger
from .network import FORWARD_DEV

try:
    import sqlalchemy as sa

    from ...ledger.schema import hosts
except ImportError:  # reported by the ledger's Store()
    sa = None

KIND = "firewall"
FAMILY = "inet"
TABLE = "vce_guard"
STATES = ("present", "absent")
# The rule that names the uplink, as nft lists it.
UPLINK_RULE = re.compile(r'oifname != "([^"]+)" counter drop')
# Where a NAT network's traffic never goes on a host without an uplink, on which libvirt's NAT
# lets it leave through any interface: these ranges are the provider's own networks there
# (management, storage, the other hosts, a metadata service), never the internet: "this
# network", private (RFC 1918), shared (RFC 6598), loopback, link-local, IETF protocol
# assignments, benchmarking, multicast and reserved.
INTERNAL_RANGES = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/3",
)
# Network changes that add, remove or rename a tenant bridge: the table follows them.
BRIDGE_ACTIONS = ("create", "delete", "replace")


@dataclass(frozen=True)
class TenantBridge:
    """One tenant network as the guard sees it: its bridge, mode and addresses."""

    bridge: str
    mode: str  # nat | routed | isolated
    gateway: ipaddress.IPv4Address
    cidr: ipaddress.IPv4Network


@dataclass(frozen=True)
class GuardModel:
    """Everything the table is rendered from."""

    networks: tuple[TenantBridge, ...]
    uplink: str | None


def elements(values: Sequence[str]) -> str:
    """A set's `elements` line; an empty set has none (nft refuses `elements = { }`)."""
    return f"    elements = {{ {', '.join(values)} }}\n" if values else ""


def named_set(name: str, kind: str, values: Sequence[str], flags: str = "") -> str:
    flag_line = f"    flags {flags}\n" if flags else ""
    return f"  set {name} {{\n    type {kind}\n{flag_line}{elements(values)}  }}\n"


def quoted(name: str) -> str:
    return f'"{name}"'


def render_guard(model: GuardModel) -> str:
    """The table's body (sets and chains) for `model`: a pure function of it."""
    nets = sorted(model.networks, key=lambda n: n.bridge)

    def bridges(mode: str | None = None) -> list[str]:
        return [quoted(n.bridge) for n in nets if mode is None or n.mode == mode]

    body = [
        named_set("bridges", "ifname", bridges()),
        named_set("nat_bridges", "ifname", bridges("nat")),
        named_set("routed_bridges", "ifname", bridges("routed")),
        named_set("isolated_bridges", "ifname", bridges("isolated")),
        named_set("same_bridge", "ifname . ifname", [f"{b} . {b}" for b in bridges()]),
        named_set(
            "gateways", "ifname . ipv4_addr", [f"{quoted(n.bridge)} . {n.gateway}" for n in nets]
        ),
        named_set("cidrs", "ipv4_addr", sorted({str(n.cidr) for n in nets}), "interval"),
        "" if model.uplink else named_set("internal", "ipv4_addr", INTERNAL_RANGES, "interval"),
        """  chain input {
    type filter hook input priority filter - 10; policy accept;
    iifname @bridges jump tenant_in
  }
  chain tenant_in {
    ct state established,related accept
    udp sport 68 udp dport 67 ip daddr 255.255.255.255 accept
    udp sport 68 udp dport 67 iifname . ip daddr @gateways accept
    udp dport 53 iifname . ip daddr @gateways accept
    tcp dport 53 iifname . ip daddr @gateways accept
    counter drop
  }
  chain forward {
    type filter hook forward priority filter - 10; policy accept;
    iifname . oifname @same_bridge accept
    oifname @bridges jump tenant_to
    iifname @bridges jump tenant_from
  }
  chain tenant_to {
    ct state established,related accept
    ct status dnat accept
    counter drop
  }
""",
        tenant_from(model.uplink),
        """  chain hairpin {
    type nat hook postrouting priority srcnat - 5; policy accept;
    ct status dnat iifname @bridges oifname @bridges masquerade
  }
""",
    ]
    if model.uplink:
        body.append(
            f"""  chain postrouting {{
    type filter hook postrouting priority srcnat + 10; policy accept;
    oifname {quoted(model.uplink)} iifname @bridges ip saddr @cidrs counter drop
  }}
"""
        )
    return "".join(body)


def tenant_from(uplink: str | None) -> str:
    """What leaves a tenant network: never from an isolated one; NAT and routed ones only
    through the uplink. Without an uplink a routed network leaves nowhere (libvirt ties it to
    no interface, so only the uplink the guard names keeps it off the underlay), and a NAT
    network where libvirt's NAT rules let it, except to the internal ranges: a management
    network directly connected to the host is one of them."""
    rules = ["    iifname @isolated_bridges counter drop\n"]
    if uplink:
        rules.append(f"    oifname != {quoted(uplink)} counter drop\n")
    else:
        rules.append("    iifname @routed_bridges counter drop\n")
        rules.append("    ip daddr @internal counter drop\n")
    return "  chain tenant_from {\n" + "".join(rules) + "  }\n"


def tenant_networks(host: Host) -> tuple[TenantBridge, ...]:
    """Every tenant's network on the host (libvirt networks with vce ownership metadata)."""
    found = []
    with libvirt_action("list", f"networks on {host.uri}"):
        nets = host.conn.listAllNetworks(0)
    for net in nets:
        try:
            state = host.read_network(net)
        except VceError:
            continue  # gone between the listing and its read: not on the host any more
        if state.owner is None or not state.bridge or state.cidr is None or state.gateway is None:
            continue
        found.append(TenantBridge(state.bridge, state.mode, state.gateway, state.cidr))
    return tuple(found)


def recorded_uplink(ledger: Ledger, uri: str) -> str | None:
    """The uplink of the ledger's host record whose URI is `uri`, if there is one."""
    with ledger.store.read() as connection:
        row = connection.execute(
            sa.select(hosts.c.uplink).where(hosts.c.uri == uri).order_by(hosts.c.name)
        ).first()
    return row.uplink if row is not None else None


def run_uplink(params: Mapping[str, Any], ledger: Ledger | None, uri: str) -> str | None:
    """The uplink a run guards: `uplink`, else the zone's, else the host's ledger record."""
    uplink = params.get("uplink")
    if uplink is not None:
        if not is_interface(uplink):
            raise SpecError(
                "uplink", f"invalid interface name {uplink!r}: 1-15 of a-z, 0-9, '.', '_', '-'"
            )
        return str(uplink)
    from_zone = zone_uplink(params)
    if from_zone is not None or ledger is None:
        return from_zone
    return recorded_uplink(ledger, uri)


def logical_lines(listing: str) -> list[str]:
    """A listing's lines without indentation, a set's elements on one line (nft wraps them):
    what a plan, drift and a diff show of a table."""
    found: list[str] = []
    for line in (line.strip() for line in listing.splitlines()):
        if not line:
            continue
        if found and found[-1].startswith("elements = {") and not found[-1].endswith("}"):
            found[-1] = f"{found[-1]} {line}"
        else:
            found.append(line)
    return found


def lines(listing: str | None) -> list[str] | None:
    return logical_lines(listing) if listing else None


def differing_lines(observed: str, expected: str) -> tuple[list[str], list[str]]:
    """The lines only the host holds and those only the declaration has, from a unified diff
    of the two listings."""
    removed, added = [], []
    diff = difflib.unified_diff(logical_lines(observed), logical_lines(expected), lineterm="", n=0)
    for line in diff:
        if line.startswith(("---", "+++", "@@")):
            continue
        (removed if line.startswith("-") else added).append(line[1:])
    return removed, added


def named_uplink(listing: str | None) -> str | None:
    """The uplink a listed guard table names, if any."""
    found = UPLINK_RULE.search(listing or "")
    return found.group(1) if found else None


class GuardPlanner:
    """Observe, plan and apply the guard table of one host: decided before anything is done.

    Without an uplink given, the one the table on the host names now is kept: a run that knows
    no zone (a network run without `zone_config` on a host the ledger has no record of) never
    loosens the guard another run installed with the zone's uplink."""

    def __init__(self, host: Host, shell: HostShell, uplink: str | None) -> None:
        self.host = host
        self.table = NftTable(shell, FAMILY, TABLE)
        self.uplink = uplink
        self.kept = reads_commands(host, shell)
        # The table before and after the planned change, for Ansible's text diff.
        self.listings: tuple[str | None, str | None] = (None, None)
        self.modelled: GuardModel | None = None

    def model(self, leaving: frozenset[str] = frozenset()) -> GuardModel:
        """The host's tenant networks now, less the bridges of networks being deleted."""
        nets = tuple(n for n in tenant_networks(self.host) if n.bridge not in leaving)
        return GuardModel(nets, self.uplink)

    def observe(self) -> str | None:
        observed = self.table.observed()
        self.uplink = self.uplink or named_uplink(observed)
        return observed

    def plan_present(self) -> Plan:
        """The table as it should be for the networks on the host now."""
        plan = Plan()
        observed = self.observe()
        self.modelled = self.model()
        body = render_guard(self.modelled)
        expected = self.table.expected(body)
        self.listings = (observed, expected)
        if observed == expected:
            return plan
        if observed is None:
            before, after = None, lines(expected)
        else:
            before, after = differing_lines(observed, expected)
        action = "create" if observed is None else "update"
        run = partial(self.table.replace, body)
        plan.add(Change(KIND, TABLE, action, field="rules", before=before, after=after, run=run))
        return plan

    def plan_absent(self) -> Plan:
        plan = Plan()
        observed = self.table.observed()
        self.listings = (observed, None)
        if observed is not None:
            remove = self.table.remove
            plan.add(
                Change(KIND, TABLE, "delete", field="rules", before=lines(observed), run=remove)
            )
        return plan

    def plan_after(self, network_changes: Plan) -> Plan:
        """The table after a run's network changes. A network made or remade gets a bridge
        libvirt names when it defines it, so then the table is rendered when the change runs;
        else it is compared now, and changed only when it differs."""
        if not self.kept:
            self.refuse_unguarded(network_changes)
            return Plan()
        moved = [
            c for c in network_changes.changes if c.kind == "network" and c.action in BRIDGE_ACTIONS
        ]
        if not moved:
            return self.plan_present()
        leaving = frozenset(
            c.before["bridge"] for c in moved if c.action == "delete" and isinstance(c.before, dict)
        )
        observed = self.observe()
        plan = Plan()
        plan.add(
            Change(
                KIND,
                TABLE,
                "create" if observed is None else "update",
                field="rules",
                before=lines(observed),
                after=UNKNOWN,
                run=lambda: self.converge(leaving),
            )
        )
        return plan

    def refuse_unguarded(self, network_changes: Plan) -> None:
        """A routed network is tied to no interface: only the guard keeps it to the uplink, so
        none is made or untied on a host whose guard this run cannot keep (the test driver,
        which forwards nothing, excepted)."""
        routed = routing_changes(network_changes)
        if routed and not self.host.uri.startswith("test:"):
            raise SpecError(
                "host_command",
                f"routed network(s) {', '.join(routed)} leave only through the uplink by the "
                f"host's guard (nft table {FAMILY} {TABLE}), which is kept with nft on "
                f"{self.host.uri}: give the command that reaches it (e.g. [ssh, root@kvm1])",
            )

    def converge(self, leaving: frozenset[str]) -> None:
        """Render from the networks as they are now (after the run's network changes)."""
        body = render_guard(self.model(leaving))
        if self.table.observed() != self.table.expected(body):
            self.table.replace(body)


def routing_changes(plan: Plan) -> list[str]:
    """The routed networks a plan makes, remakes or unties from an uplink."""
    return [
        change.name
        for change in plan.changes
        if change.kind == "network"
        and (
            change.field == FORWARD_DEV
            or (
                change.action in ("create", "replace")
                and isinstance(change.after, dict)
                and change.after.get("mode") == "routed"
            )
        )
    ]


def with_guard(plan: Plan, guard: Plan) -> Plan:
    """`plan` with the guard's change right after the last network made or remade (before the
    VMs that use it start); else before the first routed network untied from its uplink (the
    guard holds it to the uplink from then on), else at the end."""
    if not guard.changed:
        return plan
    made = [
        i
        for i, change in enumerate(plan.changes)
        if change.kind == "network" and change.action in ("create", "replace")
    ]
    untied = [i for i, change in enumerate(plan.changes) if change.field == FORWARD_DEV]
    at = made[-1] + 1 if made else (untied or [len(plan.changes)])[0]
    plan.changes[at:at] = guard.changes
    return plan


def guard_facts(engine: GuardPlanner, applied: bool) -> dict[str, Any]:
    """The table as the host holds it after the run, and what it was rendered from."""
    model = engine.modelled
    return {
        "table": f"{FAMILY} {TABLE}",
        "uplink": engine.uplink,
        "networks": [
            {"bridge": n.bridge, "mode": n.mode, "gateway": str(n.gateway), "cidr": str(n.cidr)}
            for n in (model.networks if model else ())
        ],
        "rules": lines(engine.table.observed() if applied else engine.listings[0]),
    }


def check_state(params: Mapping[str, Any]) -> str:
    return check_choice(params.get("state") or "present", "state", STATES)
