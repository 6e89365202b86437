# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Metering: what each of a tenant's resources holds over time.

A run reports *usage changes*: the state a resource has from a moment on (its power state
and quantities), not a delta, so a lost or repeated record never skews the sum. The ledger
keeps them as intervals (a state lasts until the next state of the same resource) under an
idempotency key per change. Reconciliation compares libvirt and the ledger's own tables with
the latest states and records what changed outside runs, so billing follows reality.

Backup storage is metered from the backups table itself (each kept backup from its end to
its pruning).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..core.errors import SpecError
from ..core.quota import mib_of_bytes
from ..core.spec import MAX_DISK_GIB, MAX_MEMORY_MIB, MAX_VCPUS
from ..core.validation import check_name
from ..host.connection import TenantInventory
from ..host.ownership import EXTENSIONS, tenant_prefix
from .tenants import Ledger, key_of, parse_moment

try:
    import sqlalchemy as sa

    from .schema import public_ips, runs, usage_intervals, zone_links
except ImportError:  # reported by Store()
    sa = None

KINDS = ("vm", "disk", "volume", "public_ip", "zone_link")
STATES = ("running", "paused", "stopped", "present", "absent")
# Compute (vCPU, RAM) is billed while a VM holds it on the host: running, or paused.
HOLDING_COMPUTE = ("running", "paused")
DISK_EXTENSIONS = frozenset(EXTENSIONS.values())
RUN_SOURCES = ("ansible", "pulumi", "reconcile", "probe", "cli", "api")
RUN_RESULTS = ("running", "ok", "failed", "interrupted")


@dataclass(frozen=True)
class Meter:
    """A resource's state and what it holds: counts, and sizes in MiB."""

    state: str
    vm: str = ""
    vcpus: int = 0
    ram_mib: int = 0
    disk_mib: int = 0
    public_ips: int = 0
    zone_links: int = 0

    @property
    def exists(self) -> bool:
        return self.state != "absent"


ABSENT = Meter("absent")
ResourceKey = tuple[str, str]  # (kind, name)
QUANTITIES = ("vcpus", "ram_mib", "disk_mib", "public_ips", "zone_links")
# The most one resource can hold, by the engine's own limits (a VM's vCPUs and RAM, a disk's
# size; a public IP or a zone link is one): a reported change beyond them is no run's doing.
QUANTITY_LIMITS = {
    "vcpus": MAX_VCPUS,
    "ram_mib": MAX_MEMORY_MIB,
    "disk_mib": MAX_DISK_GIB * 1024,
    "public_ips": 1,
    "zone_links": 1,
}


@dataclass(frozen=True)
class UsageChange:
    """From `at` on, resource (kind, name) of `tenant` on `host` is as `meter` says."""

    tenant: str
    host: str
    kind: str
    name: str
    action: str
    at: dt.datetime
    meter: Meter

    @property
    def key(self) -> str:
        return key_of(
            "usage", self.host, self.tenant, self.kind, self.name, self.at.isoformat(),
            asdict(self.meter),
        )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "tenant": self.tenant,
            "host": self.host,
            "kind": self.kind,
            "name": self.name,
            "action": self.action,
            "at": self.at.isoformat(),
            **asdict(self.meter),
        }

    @classmethod
    def from_dict(cls, raw: Any, path: str = "usage_change") -> UsageChange:
        """A change as a module reported it (or a spool file holds it), checked field by field."""
        if not isinstance(raw, Mapping):
            raise SpecError(path, "must be a mapping")
        tenant = check_name(raw.get("tenant"), f"{path}.tenant")
        host = raw.get("host")
        if not isinstance(host, str) or not host:
            raise SpecError(f"{path}.host", "must be the host's libvirt URI")
        kind = one_of(raw.get("kind"), KINDS, f"{path}.kind")
        name = raw.get("name")
        if not isinstance(name, str) or not name or len(name) > 160:
            raise SpecError(f"{path}.name", "must be the resource's name (1 to 160 characters)")
        at = parse_moment(raw.get("at"), f"{path}.at")
        if at is None:
            raise SpecError(f"{path}.at", "is required: the moment of the change")
        state = one_of(raw.get("state"), STATES, f"{path}.state")
        amounts = {}
        for quantity in QUANTITIES:
            amounts[quantity] = quantity_of(raw.get(quantity, 0), quantity, f"{path}.{quantity}")
        vm = raw.get("vm") or ""
        if not isinstance(vm, str):
            raise SpecError(f"{path}.vm", "must be a VM name")
        action = str(raw.get("action") or "changed")
        return cls(tenant, host, kind, name, action, at, Meter(state, vm, **amounts))


def quantity_of(value: Any, quantity: str, path: str) -> int:
    limit = QUANTITY_LIMITS[quantity]
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise SpecError(path, f"must be a whole number from 0 to {limit}, got {value!r}")
    return value


def one_of(value: Any, allowed: Iterable[str], path: str) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise SpecError(path, f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


# -- what a host holds now -----------------------------------------------------------------


def boot_volume(tenant: str, vm: str) -> str:
    """The name of a VM's boot volume: part of the VM's meter while the VM exists."""
    return f"{tenant_prefix(tenant)}{vm}.boot.qcow2"


def host_meters(inventory: TenantInventory) -> dict[ResourceKey, Meter]:
    """The tenant's VMs and volumes on the host as libvirt shows them. A VM carries its boot
    disk; a volume carries the VM it is attached to, so a VM's credit covers its disks."""
    prefix = tenant_prefix(inventory.tenant)
    volumes = {name: volume for (_pool, name), volume in inventory.volumes.items()}
    attached: dict[str, str] = {}
    meters: dict[ResourceKey, Meter] = {}
    for domain in inventory.domains.values():
        if not domain.owner or domain.owner.tenant != inventory.tenant:
            continue
        vm = domain.owner.name
        for disk in domain.disks:
            attached[disk.path] = vm
        boot = volumes.pop(boot_volume(inventory.tenant, vm), None)
        state = domain.state if domain.state in HOLDING_COMPUTE else "stopped"
        meters[("vm", vm)] = Meter(
            state,
            vm,
            vcpus=max(domain.vcpus, domain.live_vcpus or 0),
            ram_mib=domain.memory_mib,
            disk_mib=mib_of_bytes(boot.capacity) if boot else 0,
        )
    for name, volume in volumes.items():
        stem, _dot, ext = name[len(prefix) :].rpartition(".")
        if ext == "iso":  # cloud-init seeds: a few KiB of the VM's own configuration
            continue
        kind = "disk" if "." not in stem and ext in DISK_EXTENSIONS else "volume"
        meters[(kind, stem if kind == "disk" else name)] = Meter(
            "present", attached.get(volume.path, ""), disk_mib=mib_of_bytes(volume.capacity)
        )
    return meters


def ledger_meters(connection: Any, tenant: str, host: str) -> dict[ResourceKey, Meter]:
    """Public IPs bound on the host and zone links whose first end is the host: the ledger
    itself is their truth."""
    meters: dict[ResourceKey, Meter] = {}
    rows = connection.execute(
        sa.select(public_ips).where(public_ips.c.tenant == tenant, public_ips.c.host == host)
    )
    for row in rows:
        meters[("public_ip", f"{row.zone}:{row.name}")] = Meter("present", row.vm, public_ips=1)
    for row in connection.execute(sa.select(zone_links).where(zone_links.c.tenant == tenant)):
        ends = json.loads(row.ends)
        if ends and ends[0].get("uri") == host:
            meters[("zone_link", row.name)] = Meter("present", zone_links=1)
    return meters


def action_of(before: Meter, after: Meter) -> str:
    if not before.exists:
        return "created"
    if not after.exists:
        return "deleted"
    if before.state != after.state:
        return {"running": "started", "paused": "paused", "stopped": "stopped"}.get(
            after.state, "changed"
        )
    if any(getattr(before, q) != getattr(after, q) for q in QUANTITIES):
        return "resized"
    return "changed"


def changes_between(
    tenant: str,
    host: str,
    before: Mapping[ResourceKey, Meter],
    after: Mapping[ResourceKey, Meter],
    at: dt.datetime,
) -> list[UsageChange]:
    """What differs between two observations, as changes at `at`."""
    changes = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key, ABSENT), after.get(key, ABSENT)
        if old != new:
            changes.append(UsageChange(tenant, host, *key, action_of(old, new), at, new))
    return changes


# -- the ledger's side ---------------------------------------------------------------------


def meter_of(row: Any) -> Meter:
    return Meter(row.state, row.vm, *(getattr(row, q) for q in QUANTITIES))


def meter_columns(meter: Meter) -> dict[str, Any]:
    return {f.name: getattr(meter, f.name) for f in fields(Meter)}


class Metering:
    """Run records and usage states in the ledger."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    # -- runs ----------------------------------------------------------------------------

    def start_run(
        self, run_id: str, source: str, started_at: dt.datetime, detail: Mapping[str, Any]
    ) -> None:
        """Record a run as running; recording the same run again changes nothing."""
        one_of(source, RUN_SOURCES, "source")
        with self.ledger.store.write() as connection:
            if connection.execute(sa.select(runs.c.id).where(runs.c.id == run_id)).first():
                return
            connection.execute(
                runs.insert().values(
                    id=run_id, source=source, actor=self.ledger.actor, started_at=started_at,
                    result="running", detail=json.dumps(dict(detail), sort_keys=True, default=str),
                )
            )  # fmt: skip

    def finish_run(
        self, run_id: str, result: str, ended_at: dt.datetime, detail: Mapping[str, Any]
    ) -> None:
        one_of(result, RUN_RESULTS[1:], "result")
        with self.ledger.store.write() as connection:
            row = connection.execute(sa.select(runs).where(runs.c.id == run_id)).first()
            if row is None:
                raise SpecError("run", f"unknown run {run_id!r}: start it first")
            merged = {**json.loads(row.detail), **detail}
            connection.execute(
                runs.update()
                .where(runs.c.id == run_id)
                .values(
                    result=result, ended_at=ended_at,
                    detail=json.dumps(merged, sort_keys=True, default=str),
                )
            )  # fmt: skip

    # -- usage ---------------------------------------------------------------------------

    def record(self, changes: Iterable[UsageChange], source: str = "run") -> int:
        """Write each change once, per tenant under its lock; returns how many were new.
        Each tenant's changes commit together, so an interruption keeps what was written."""
        by_tenant: dict[str, list[UsageChange]] = {}
        for change in changes:
            by_tenant.setdefault(change.tenant, []).append(change)
        written = 0
        for tenant, group in sorted(by_tenant.items()):
            with self.ledger.store.locked(tenant) as connection:
                for change in sorted(group, key=lambda c: c.at):
                    written += self.insert(connection, change, source)
        return written

    def insert(
        self, connection: Any, change: UsageChange, source: str, run_id: str | None = None
    ) -> bool:
        """Place the state in its resource's timeline, ordered by (moment, key): it ends the
        state before it and lasts until the one after it. Every state is kept, so states
        arriving in any order build the same timeline. `run_id`: the run that made the change,
        when another one records it (a killed run's intent); default this ledger's run."""
        table = usage_intervals
        if connection.execute(sa.select(table.c.key).where(table.c.key == change.key)).first():
            return False
        resource = (
            (table.c.host == change.host) & (table.c.tenant == change.tenant)
            & (table.c.kind == change.kind) & (table.c.name == change.name)
        )  # fmt: skip
        before = sa.or_(
            table.c.started_at < change.at,
            (table.c.started_at == change.at) & (table.c.key < change.key),
        )
        after = sa.or_(
            table.c.started_at > change.at,
            (table.c.started_at == change.at) & (table.c.key > change.key),
        )
        previous = connection.execute(
            sa.select(table.c.key)
            .where(resource, before)
            .order_by(table.c.started_at.desc(), table.c.key.desc())
            .limit(1)
        ).scalar()
        following = connection.execute(
            sa.select(table.c.started_at)
            .where(resource, after)
            .order_by(table.c.started_at, table.c.key)
            .limit(1)
        ).scalar()
        if previous is not None:
            connection.execute(
                table.update().where(table.c.key == previous).values(ended_at=change.at)
            )
        connection.execute(
            table.insert().values(
                key=change.key, tenant=change.tenant, host=change.host, kind=change.kind,
                name=change.name, started_at=change.at, ended_at=following, source=source,
                run_id=run_id or self.ledger.run_id, actor=self.ledger.actor,
                **meter_columns(change.meter),
            )
        )  # fmt: skip
        return True

    def latest(self, host: str, tenant: str | None = None) -> dict[tuple[str, str, str], Meter]:
        """The open state of each resource on `host`: {(tenant, kind, name): meter}."""
        table = usage_intervals
        query = sa.select(table).where(table.c.host == host, table.c.ended_at.is_(None))
        if tenant is not None:
            query = query.where(table.c.tenant == tenant)
        with self.ledger.store.read() as connection:
            return {(r.tenant, r.kind, r.name): meter_of(r) for r in connection.execute(query)}

    def intervals(
        self, tenant: str, start: dt.datetime, end: dt.datetime
    ) -> Iterator[dict[str, Any]]:
        """The tenant's usage intervals overlapping [start, end), for `vce ledger usage`."""
        table = usage_intervals
        query = (
            sa.select(table)
            .where(
                table.c.tenant == tenant, table.c.started_at < end,
                sa.or_(table.c.ended_at.is_(None), table.c.ended_at > start),
            )
            .order_by(table.c.host, table.c.kind, table.c.name, table.c.started_at)
        )  # fmt: skip
        with self.ledger.store.read() as connection:
            for row in connection.execute(query):
                yield {
                    "host": row.host, "kind": row.kind, "name": row.name,
                    "started_at": row.started_at.isoformat(),
                    "ended_at": row.ended_at.isoformat() if row.ended_at else None,
                    "source": row.source, "run_id": row.run_id, **asdict(meter_of(row)),
                }  # fmt: skip

    # -- reconciliation ------------------------------------------------------------------

    def reconcile(
        self, host: str, observed: Mapping[str, Mapping[ResourceKey, Meter]]
    ) -> list[UsageChange]:
        """Record what the host holds (`observed`, per tenant) where it differs from the latest
        recorded states: drift is billed from the moment it is seen."""
        at = self.ledger.now()
        recorded: dict[str, dict[ResourceKey, Meter]] = {}
        for (tenant, kind, name), meter in self.latest(host).items():
            recorded.setdefault(tenant, {})[(kind, name)] = meter
        changes = []
        for tenant in sorted(set(recorded) | set(observed)):
            before = {k: m for k, m in recorded.get(tenant, {}).items() if m.exists}
            changes.extend(changes_between(tenant, host, before, observed.get(tenant, {}), at))
        self.record(changes, source="reconcile")
        return changes


def observe_host(ledger: Ledger, host: Any, tenants: Iterable[str]) -> dict[str, Any]:
    """Every tenant's metered resources on `host` (libvirt and the ledger), read once."""
    inventories = host.inventories()
    names = set(inventories) | set(tenants)
    with ledger.store.read() as connection:
        return {
            tenant: {
                **host_meters(inventories.get(tenant) or TenantInventory(tenant)),
                **ledger_meters(connection, tenant, host.uri),
            }
            for tenant in sorted(names)
        }


class UsageWatch:
    """The usage changes of one run on one host: what is metered before, compared after."""

    def __init__(
        self, ledger: Ledger, host: str, tenant: str, inventory: TenantInventory | None
    ) -> None:
        self.ledger = ledger
        self.host = host
        self.tenant = tenant
        self.before = self.observe(inventory)

    def observe(self, inventory: TenantInventory | None) -> dict[ResourceKey, Meter]:
        """With no inventory only the ledger's own resources are watched (public IPs, links)."""
        with self.ledger.store.read() as connection:
            meters = ledger_meters(connection, self.tenant, self.host)
        return {**host_meters(inventory), **meters} if inventory is not None else meters

    def changes(self, inventory: TenantInventory | None) -> list[dict[str, Any]]:
        after = self.observe(inventory)
        found = changes_between(self.tenant, self.host, self.before, after, self.ledger.now())
        return [change.as_dict() for change in found]
