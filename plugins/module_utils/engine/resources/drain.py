# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A host drained for maintenance: every tenant VM moved to another host of its zone.

Each VM (tenants and names in order) goes to the least-loaded other host of the zone that can
take it (the memory of the domains defined there, counting the VMs this drain sends): the
first whose move plans (its networks and storage pools exist there, nothing of the VM is there
already, ...). A VM that no host can take stays, and its tenant gets the announced maintenance
window for it in the ledger (an SLA exclusion, terms 5.8), naming why it stays; its downtime
during the window is then not counted. The moves and the windows are planned before anything
is done; a move that fails stops the drain (the VM runs on where it was, see migration.py).
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
from ...core.validation import check_name, check_note
from ...finance.sla import Incidents
from ...host.connection import DEFAULT_URI, Host, TenantInventory
from ...host.ownership import object_name
from ...host.xml import KIB_PER_MIB
from ...ledger.tenants import Ledger, parse_moment
from ..run import Run, conclude
from .migration import MigrationPlanner, check_uri

DEFAULT_NOTE = "host drained for maintenance; the VM could not be moved"


@dataclass(frozen=True)
class Window:
    """The announced maintenance of the drained host."""

    announced_at: dt.datetime
    starts_at: dt.datetime
    ends_at: dt.datetime
    note: str


@dataclass(frozen=True)
class DrainSpec:
    uri: str
    zone: str
    peers: tuple[str, ...]  # the other hosts of the zone, by libvirt URI
    window: Window


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
    peers = []
    for index, raw in enumerate(params.get("peers") or []):
        path = f"peers[{index}]"
        if not isinstance(raw, Mapping):
            raise SpecError(path, "must be a mapping: a host's uri and zone")
        peer = check_uri(raw.get("uri"), f"{path}.uri")
        if check_name(raw.get("zone"), f"{path}.zone") == zone and peer != uri:
            peers.append(peer)
    return DrainSpec(
        uri, zone, tuple(dict.fromkeys(peers)), parse_window(params.get("maintenance"), now)
    )


def defined_memory_mib(host: Host) -> int:
    """The memory of every domain defined on the host: its load, for placing a VM."""
    with libvirt_action("list", f"domains on {host.uri}"):
        return sum(dom.maxMemory() for dom in host.conn.listAllDomains(0)) // KIB_PER_MIB


@dataclass
class Drain:
    """The plan of one drain: where each VM goes, and what stays."""

    source: Host
    ledger: Ledger
    window: Window
    peers: dict[str, Host]
    load: dict[str, int]
    moved: list[dict[str, Any]] = field(default_factory=list)
    stayed: list[dict[str, Any]] = field(default_factory=list)
    usage_changes: list[dict[str, Any]] = field(default_factory=list)

    def plan_vm(self, plan: Plan, tenant: str, name: str, here: TenantInventory) -> None:
        reasons = []
        memory = here.domains[object_name(tenant, name)].max_memory_mib
        for uri in sorted(self.peers, key=lambda u: (self.load[u], list(self.peers).index(u))):
            engine = MigrationPlanner(self.source, self.peers[uri], tenant, self.ledger)
            try:
                found = engine.plan(name, here, self.peers[uri].inventory(tenant))
            except SpecError as error:
                reasons.append(f"{uri}: {error.reason}")
                continue
            self.load[uri] += memory
            for change in found.changes:
                change.name = f"{tenant}/{name}"
                change.run = partial(self.move, change.run, engine, tenant, name)
                plan.add(change)
            return
        why = "; ".join(reasons) or "no other host in the zone"
        entry = {"tenant": tenant, "vm": name, "reason": why}
        plan.add(
            Change(
                "maintenance",
                f"{tenant}/{name}",
                "record",
                field="window",
                after={"starts_at": self.window.starts_at.isoformat(),
                       "ends_at": self.window.ends_at.isoformat(), "reason": why},
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
        window = self.window
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
    peers = {uri: Host(uri) for uri in spec.peers}
    drain = Drain(
        source, ledger, spec.window, peers, {u: defined_memory_mib(h) for u, h in peers.items()}
    )
    plan = Plan()
    for tenant, inventory in sorted(source.inventories().items()):
        for domain in sorted(inventory.domains.values(), key=lambda d: d.name):
            drain.plan_vm(plan, tenant, domain.owner.name, inventory)

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
