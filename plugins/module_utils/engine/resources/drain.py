# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A host drained for maintenance: every tenant VM moved to another host of its zone.

A tenant's VMs that share a network (directly or through each other) move together, to one
host: a network's copies on two hosts are not joined, so VMs split over two hosts would no
longer reach each other. Each such group (tenants and names in order) goes to the least-loaded
other host of the zone that can take all of it (the memory of the domains defined there,
counting the VMs this drain sends): the first where every move plans (its networks and
storage pools exist there, nothing of the VMs is there already, ...). Public IPs and zone links
follow their VMs when the run gives what they need (the zone's config, the hosts' commands
and underlays; see migration.py). A group that no host can take stays, and its tenant gets
the announced maintenance window for each of its VMs in the ledger (an SLA exclusion, terms
5.8), naming why it stays; its downtime during the window is then not counted. The moves and
the windows are planned before anything is done; a move that fails stops the drain (the VM
runs on where it was, see migration.py).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ...core.errors import SpecError, libvirt_action
from ...core.plan import Change, Plan
from ...core.result import Result
from ...core.validation import check_name, check_note, check_prefix
from ...core.zones import PublicZone, Underlay, parse_underlay, zone_of
from ...finance.sla import Incidents
from ...host.connection import DEFAULT_URI, Host, TenantInventory
from ...host.shell import HostShell
from ...host.xml import KIB_PER_MIB, DomainState
from ...ledger.tenants import Ledger, parse_moment
from ..run import Run, conclude
from .firewall import KIND as FIREWALL
from .migration import MigrationPlanner, MigrationSpec, check_uri

DEFAULT_NOTE = "host drained for maintenance; the VM could not be moved"


@dataclass(frozen=True)
class Window:
    """The announced maintenance of the drained host."""

    announced_at: dt.datetime
    starts_at: dt.datetime
    ends_at: dt.datetime
    note: str


@dataclass(frozen=True)
class Peer:
    """Another host of the zone: its libvirt URI, its host command and underlay."""

    uri: str
    host_command: tuple[str, ...] = ()
    underlay: Underlay | None = None


@dataclass(frozen=True)
class DrainSpec:
    uri: str
    zone: str
    peers: tuple[Peer, ...]
    window: Window
    public_zone: PublicZone | None = None  # where public IPs follow their VMs
    host_command: tuple[str, ...] = ()  # the drained host's


def parse_window(raw: Any, now: dt.datetime) -> Window:
    if not isinstance(raw, Mapping):
        raise SpecError("maintenance", "must be a mapping: announced_at, ends_at (starts_at, note)")
    announced = parse_moment(raw.get("announced_at"), "maintenance.announced_at")
    if announced is None:
        raise SpecError("maintenance.announced_at", "is required: when the work was announced")
    starts = parse_moment(raw.get("starts_at"), "maintenance.starts_at") or now
    ends = parse_moment(raw.get("ends_at"), "maintenance.ends_at")
    if ends is None or ends <= starts:
        raise SpecError("maintenance.ends_at", "is required, after the window starts")
    if announced > starts:
        raise SpecError(
            "maintenance.announced_at",
            "is after the window starts: unannounced work is downtime, not maintenance",
        )
    note = check_note(raw.get("note") or DEFAULT_NOTE, "maintenance.note")
    return Window(announced, starts, ends, note)


def parse_drain(params: Mapping[str, Any], now: dt.datetime) -> DrainSpec:
    uri = check_uri(params.get("uri") or DEFAULT_URI, "uri")
    zone = check_name(params.get("zone"), "zone")
    peers: dict[str, Peer] = {}
    for index, raw in enumerate(params.get("peers") or []):
        path = f"peers[{index}]"
        if not isinstance(raw, Mapping):
            raise SpecError(path, "must be a mapping: a host's uri and zone")
        peer = check_uri(raw.get("uri"), f"{path}.uri")
        command = check_prefix(raw.get("host_command"), f"{path}.host_command")
        underlay = parse_underlay(raw, f"{path}.")
        if check_name(raw.get("zone"), f"{path}.zone") == zone and peer != uri:
            peers.setdefault(peer, Peer(peer, command, underlay))
    return DrainSpec(
        uri,
        zone,
        tuple(peers.values()),
        parse_window(params.get("maintenance"), now),
        zone_of({"zone": zone, "zone_config": params.get("zone_config")}),
        check_prefix(params.get("host_command")),
    )


def network_groups(inventory: TenantInventory) -> list[list[DomainState]]:
    """The tenant's VMs in groups that share a network, directly or through each other (each
    group and the groups in order of name)."""
    groups: list[tuple[set[str], list[DomainState]]] = []
    for domain in sorted(inventory.domains.values(), key=lambda d: d.name):
        networks, members = {nic.network for nic in domain.nics}, [domain]
        for joined in [g for g in groups if g[0] & networks]:
            groups.remove(joined)
            networks |= joined[0]
            members += joined[1]
        groups.append((networks, members))
    ordered = [sorted(members, key=lambda d: d.name) for _networks, members in groups]
    return sorted(ordered, key=lambda members: members[0].name)


def defined_memory_mib(host: Host) -> int:
    """The memory of every domain defined on the host: its load, for placing a VM."""
    with libvirt_action("list", f"domains on {host.uri}"):
        return sum(dom.maxMemory() for dom in host.conn.listAllDomains(0)) // KIB_PER_MIB


@dataclass
class Drain:
    """The plan of one drain: where each VM goes, and what stays."""

    source: Host
    ledger: Ledger
    spec: DrainSpec
    peers: dict[str, Host]
    load: dict[str, int]
    moved: list[dict[str, Any]] = field(default_factory=list)
    stayed: list[dict[str, Any]] = field(default_factory=list)
    usage_changes: list[dict[str, Any]] = field(default_factory=list)
    tables: set[tuple[str, str | None]] = field(default_factory=set)  # filters planned so far

    def plan_group(
        self, plan: Plan, tenant: str, group: list[DomainState], here: TenantInventory
    ) -> None:
        """The group's VMs to the least-loaded peer that takes them all, or their windows."""
        names = [domain.owner.name for domain in group]
        reasons = []
        for peer in sorted(self.spec.peers, key=lambda p: (self.load[p.uri], self.order(p))):
            there = self.peers[peer.uri].inventory(tenant)
            try:
                found = [self.plan_vm(tenant, name, here, there, peer, names) for name in names]
            except SpecError as error:
                reasons.append(f"{peer.uri}: {error.reason}")
                continue
            self.load[peer.uri] += sum(domain.max_memory_mib for domain in group)
            for engine, name, moves in found:
                self.add(plan, tenant, name, engine, moves)
            return
        why = "; ".join(reasons) or "no other host in the zone"
        for name in names:
            others = [other for other in names if other != name]
            together = f" (it moves only with {', '.join(others)}: they share a network)"
            self.plan_window(plan, tenant, name, why + (together if others else ""))

    def order(self, peer: Peer) -> int:
        return self.spec.peers.index(peer)

    def plan_vm(
        self,
        tenant: str,
        name: str,
        here: TenantInventory,
        there: TenantInventory,
        peer: Peer,
        group: list[str],
    ) -> tuple[MigrationPlanner, str, Plan]:
        shells = (HostShell(self.spec.host_command), HostShell(peer.host_command))
        zone = self.spec.zone
        spec = MigrationSpec(
            tenant, name, self.spec.uri, zone, peer.uri, zone, self.spec.public_zone, shells,
            peer.underlay,
        )  # fmt: skip
        engine = MigrationPlanner(self.source, self.peers[peer.uri], tenant, self.ledger, spec)
        return engine, name, engine.plan(name, here, there, group if len(group) > 1 else ())

    def add(
        self, plan: Plan, tenant: str, name: str, engine: MigrationPlanner, moves: Plan
    ) -> None:
        plan.warnings.extend(moves.warnings)
        for change in moves.changes:
            if change.kind == FIREWALL:
                # A host's VXLAN filter is rendered from the ledger when it is kept: a later
                # group's keeps a table an earlier one made.
                key = (change.name, change.field)
                change.action = "update" if key in self.tables else change.action
                self.tables.add(key)
            else:
                change.name = f"{tenant}/{change.name}"
            if change.action == "migrate":
                change.run = partial(self.move, change.run, engine, tenant, name)
            plan.add(change)

    def plan_window(self, plan: Plan, tenant: str, name: str, why: str) -> None:
        window = self.spec.window
        entry = {"tenant": tenant, "vm": name, "reason": why}
        plan.add(
            Change(
                "maintenance",
                f"{tenant}/{name}",
                "record",
                field="window",
                after={"starts_at": window.starts_at.isoformat(),
                       "ends_at": window.ends_at.isoformat(), "reason": why},
                run=partial(self.record_window, entry),
            )
        )  # fmt: skip
        self.stayed.append(entry)

    def move(self, run: Any, engine: MigrationPlanner, tenant: str, name: str) -> None:
        run()
        self.moved.append(
            {"tenant": tenant, "vm": name, "destination": engine.destination.uri,
             "mode": engine.report.mode, "downtime_ms": engine.report.downtime_ms,
             "wall_seconds": engine.report.wall_seconds}
        )  # fmt: skip
        self.usage_changes += engine.report.usage_changes

    def record_window(self, entry: dict[str, Any]) -> None:
        window = self.spec.window
        recorded = Incidents(self.ledger).exclude(
            "maintenance",
            window.starts_at,
            window.ends_at,
            tenant=entry["tenant"],
            host=self.source.uri,
            vm=entry["vm"],
            announced_at=window.announced_at,
            note=f"{window.note}: {entry['reason']}",
        )
        entry["exclusion"] = recorded["id"]


def run_drain(params: Mapping[str, Any], check_mode: bool = False) -> Result:
    """Move every tenant VM off the host at `uri` to the other hosts of its zone (`peers`);
    record the maintenance window for each VM that cannot move."""
    ledger = Ledger.open(params.get("ledger_url") or None)
    spec = parse_drain(params, ledger.now())
    source = Host(spec.uri)
    peers = {peer.uri: Host(peer.uri) for peer in spec.peers}
    drain = Drain(source, ledger, spec, peers, {u: defined_memory_mib(h) for u, h in peers.items()})
    plan = Plan()
    for tenant, inventory in sorted(source.inventories().items()):
        for group in network_groups(inventory):
            drain.plan_group(plan, tenant, group, inventory)

    def facts(_after: object, applied: bool) -> dict[str, Any]:
        planned = [
            {"tenant": c.name.split("/")[0], "vm": c.name.split("/")[1], "destination": c.after}
            for c in plan.changes
            if c.action == "migrate"
        ]
        return {"drain": {"host": spec.uri, "moved": drain.moved if applied else planned,
                          "stayed": drain.stayed}}  # fmt: skip

    result = conclude(Run(plan, facts), check_mode)
    result.usage_changes = drain.usage_changes
    return result
