# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Availability (terms 5.5-5.13): incidents, exclusions, the probe, and the credit tiers.

Downtime of a VM is the union of its counted incidents (opened by the probe, or reported by
the customer and confirmed, counted from the report) until restoration, minus the intervals
excluded for announced maintenance, force majeure and the customer's own doing, within the
seconds the VM existed in the period. The rules where the terms are silent are DESIGN.md's.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from functools import cached_property
from typing import Any

from ..core.errors import SpecError, VceError, libvirt_action, vanished
from ..core.periods import Interval, clip, intersect, subtract, total_micros, union
from ..core.validation import MAX_REFERENCE, check_line, check_name, check_note
from ..host.connection import DOMAIN_STATES, connect
from ..host.ownership import SEPARATOR
from ..ledger.tenants import Ledger, iso, key_of

try:
    import sqlalchemy as sa

    from ..ledger.schema import (
        blocks,
        exclusions,
        incidents,
        probe_status,
        tenants,
        usage_intervals,
    )
except ImportError:  # reported by Store()
    sa = None

CAUSES = ("provider", "maintenance", "force_majeure", "customer")
EXCLUDED_CAUSES = CAUSES[1:]
INCIDENT_KINDS = ("downtime", "data_loss")
# (lowest availability of the tier, compensation in percent), from the top (DESIGN.md).
TIERS = (
    (Fraction(999, 1000), Decimal(0)),
    (Fraction(99, 100), Decimal(5)),
    (Fraction(95, 100), Decimal(10)),
    (Fraction(0), Decimal(15)),
)
DATA_LOSS_PERCENT = Decimal(50)
# libvirt's shutoff reasons that are the guest's own doing (the customer shut it down).
GUEST_SHUTDOWN_REASONS = ("shutdown",)


def credit_percent(availability: Fraction) -> Decimal:
    for lowest, percent in TIERS:
        if availability >= lowest:
            return percent
    return TIERS[-1][1]


@dataclass
class VmAvailability:
    """One VM in one period: how long it existed, was down, and what is excluded. The
    figures are read (and kept) once it is complete."""

    host: str
    vm: str
    existed: list[Interval] = field(default_factory=list)
    downtime: list[Interval] = field(default_factory=list)  # the provider's, counted
    uncompensated: list[Interval] = field(default_factory=list)  # down, not the provider's
    excluded: list[Interval] = field(default_factory=list)  # maintenance, force majeure, ...
    incidents: list[int] = field(default_factory=list)

    @cached_property
    def existed_us(self) -> int:
        return total_micros(self.existed)

    @cached_property
    def counted(self) -> list[Interval]:
        """Downtime that counts: within the VM's existence, outside every exclusion."""
        return subtract(intersect(self.downtime, self.existed), self.excluded)

    @cached_property
    def downtime_us(self) -> int:
        return total_micros(self.counted)

    @cached_property
    def excluded_us(self) -> int:
        """Down, but not compensated: excluded intervals and incidents of other causes."""
        down = intersect(union([*self.downtime, *self.uncompensated]), self.existed)
        return total_micros(down) - self.downtime_us

    @cached_property
    def excluded_windows(self) -> list[Interval]:
        """The time that cannot count while the VM existed: exclusions (whether or not the VM
        was down in them) and downtime of other causes; what the statement's chart marks."""
        windows = intersect(union([*self.excluded, *self.uncompensated]), self.existed)
        return subtract(windows, self.counted)

    @cached_property
    def availability(self) -> Fraction:
        existed = self.existed_us
        if existed == 0:
            return Fraction(1)
        return Fraction(existed - self.downtime_us, existed)

    @cached_property
    def percent(self) -> Decimal:
        return credit_percent(self.availability)


def shown_percent(value: Fraction) -> str:
    """An availability as people read it: a percentage with four decimals, rounded down so
    99.8999...% never shows as 99.9000%."""
    scaled = value * 100 * 10_000
    return str(
        (Decimal(scaled.numerator // scaled.denominator) / 10_000).quantize(Decimal("0.0001"))
    )


def incident_window(row: Any) -> tuple[dt.datetime, dt.datetime | None] | None:
    """The interval an incident counts for, or None when it does not count (an unconfirmed
    report, or downtime that is not the provider's fault)."""
    if row.kind != "downtime" or row.cause != "provider":
        return None
    if row.source == "report":
        if row.confirmed_at is None:
            return None
        return (row.reported_at or row.started_at, row.ended_at)
    return (row.started_at, row.ended_at)


def counts(row: Any) -> bool:
    """Whether an incident counts at all: provider downtime within its window, or a data loss
    by the provider's fault (5.13); a customer's report only once support confirmed it."""
    if row.kind == "data_loss":
        return row.cause == "provider" and (row.source != "report" or row.confirmed_at is not None)
    return incident_window(row) is not None


def matches(row: Any, host: str, vm: str) -> bool:
    return row.host in ("", host) and row.vm in ("", vm)


def availability_of(
    host: str,
    vm: str,
    existed: Iterable[Interval],
    incident_rows: Iterable[Any],
    exclusion_rows: Iterable[Any],
    low: dt.datetime,
    high: dt.datetime,
) -> VmAvailability:
    """A VM's availability in [low, high) from its existence and its tenant's records."""
    result = VmAvailability(host, vm, union(existed))
    for row in incident_rows:
        if not matches(row, host, vm):
            continue
        window = incident_window(row)
        clipped = clip(window[0], window[1], low, high) if window else None
        if clipped:
            result.downtime.append(clipped)
            result.incidents.append(row.id)
        elif row.kind == "downtime" and row.cause != "provider":
            other = clip(row.started_at, row.ended_at, low, high)
            if other:
                result.uncompensated.append(other)
                result.incidents.append(row.id)
    for row in exclusion_rows:  # the tenant's and everyone's
        if matches(row, host, vm):
            clipped = clip(row.started_at, row.ended_at, low, high)
            if clipped:
                result.excluded.append(clipped)
    result.downtime = union(result.downtime)
    result.uncompensated = union(result.uncompensated)
    result.excluded = union(result.excluded)
    return result


def incident_facts(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "tenant": row.tenant,
        "host": row.host,
        "vm": row.vm,
        "kind": row.kind,
        "source": row.source,
        "cause": row.cause,
        "started_at": iso(row.started_at),
        "reported_at": iso(row.reported_at),
        "confirmed_at": iso(row.confirmed_at),
        "ended_at": iso(row.ended_at),
        "note": row.note,
        "counts": counts(row),
    }


class Incidents:
    """Recording incidents and exclusions, with the checks support needs."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    # -- reading ---------------------------------------------------------------------------

    def get(self, connection: Any, number: int) -> Any:
        row = connection.execute(sa.select(incidents).where(incidents.c.id == number)).first()
        if row is None:
            raise SpecError("incident", f"no incident #{number}")
        return row

    def listing(self, tenant: str | None = None, open_only: bool = False) -> list[dict[str, Any]]:
        query = sa.select(incidents).order_by(incidents.c.started_at, incidents.c.id)
        if tenant:
            check_name(tenant, "tenant")
            query = query.where(incidents.c.tenant == tenant)
        if open_only:
            query = query.where(incidents.c.ended_at.is_(None))
        with self.ledger.store.read() as connection:
            return [incident_facts(row) for row in connection.execute(query)]

    def overlapping(
        self, connection: Any, tenant: str, host: str, vm: str, start: dt.datetime,
        end: dt.datetime | None, except_id: int | None = None,
    ) -> Any:  # fmt: skip
        """A downtime incident of the same VM (or scope) whose interval meets [start, end)."""
        query = sa.select(incidents).where(
            incidents.c.tenant == tenant,
            incidents.c.kind == "downtime",
            sa.or_(incidents.c.ended_at.is_(None), incidents.c.ended_at > start),
        )
        if end is not None:
            query = query.where(incidents.c.started_at < end)
        if except_id is not None:
            query = query.where(incidents.c.id != except_id)
        for row in connection.execute(query.order_by(incidents.c.id)):
            same_host = "" in (row.host, host) or row.host == host
            same_vm = "" in (row.vm, vm) or row.vm == vm
            if same_host and same_vm:
                return row
        return None

    # -- writing ---------------------------------------------------------------------------

    def open(
        self,
        tenant: str,
        vm: str,
        host: str,
        started_at: dt.datetime,
        *,
        kind: str = "downtime",
        source: str = "report",
        cause: str = "provider",
        reported_at: dt.datetime | None = None,
        confirmed_at: dt.datetime | None = None,
        ended_at: dt.datetime | None = None,
        note: str = "",
        reference: str = "",
    ) -> dict[str, Any]:
        """Record an incident once (its reference, or its content, is its key)."""
        check_name(tenant, "tenant")
        if vm:
            check_name(vm, "vm")
        check_line(host, "host")
        check_line(reference, "reference", MAX_REFERENCE)
        check_note(note, "note")
        if kind not in INCIDENT_KINDS:
            raise SpecError("kind", f"must be one of {', '.join(INCIDENT_KINDS)}, got {kind!r}")
        if cause not in CAUSES:
            raise SpecError("cause", f"must be one of {', '.join(CAUSES)}, got {cause!r}")
        check_order(started_at, ended_at, "started_at", "ended_at")
        if confirmed_at is not None and reported_at is not None:
            check_order(reported_at, confirmed_at, "reported_at", "confirmed_at", strict=False)
        key = (
            key_of("incident", tenant, reference)
            if reference
            else key_of("incident", tenant, host, vm, kind, source, started_at.isoformat())
        )
        with self.ledger.store.locked(tenant) as connection:
            self.ledger.require_tenant(connection, tenant)
            found = connection.execute(sa.select(incidents).where(incidents.c.key == key)).first()
            if found is not None:
                return incident_facts(found)
            if kind == "downtime":
                clash = self.overlapping(connection, tenant, host, vm, started_at, ended_at)
                if clash is not None:
                    raise SpecError(
                        "started_at",
                        f"overlaps incident #{clash.id} of {clash.vm or 'every VM'} "
                        f"({iso(clash.started_at)} to {iso(clash.ended_at) or 'now, still open'}); "
                        "confirm, restore or reclassify that one instead",
                    )
            connection.execute(
                incidents.insert().values(
                    key=key, tenant=tenant, host=host, vm=vm, kind=kind, source=source,
                    cause=cause, started_at=started_at, reported_at=reported_at,
                    confirmed_at=confirmed_at, ended_at=ended_at, note=note,
                    actor=self.ledger.actor, run_id=self.ledger.run_id,
                    created_at=self.ledger.now(),
                )
            )  # fmt: skip
            row = connection.execute(sa.select(incidents).where(incidents.c.key == key)).first()
            return incident_facts(row)

    def report(
        self, tenant: str, vm: str, host: str, reported_at: dt.datetime,
        confirmed_at: dt.datetime | None = None, note: str = "", reference: str = "",
        restored_at: dt.datetime | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """A customer's report (5.11): it counts from the report once support confirms it,
        until restoration."""
        return self.open(
            tenant, vm, host, reported_at, source="report", reported_at=reported_at,
            confirmed_at=confirmed_at, ended_at=restored_at, note=note, reference=reference,
        )  # fmt: skip

    def outage(
        self, tenant: str, vm: str, host: str, started_at: dt.datetime,
        ended_at: dt.datetime | None = None, note: str = "", reference: str = "",
    ) -> dict[str, Any]:  # fmt: skip
        """A provider outage learned of outside the probe (a host failure the network
        operations centre saw, a storage fault): the provider's internal data of 5.11, so it
        counts from its start, without a report or a confirmation, until restoration."""
        now = self.ledger.now()
        for name, moment in (("started_at", started_at), ("ended_at", ended_at)):
            if moment is not None and moment > now:
                raise SpecError(name, f"{iso(moment)} is in the future (now {iso(now)})")
        return self.open(
            tenant, vm, host, started_at, source="operator", ended_at=ended_at, note=note,
            reference=reference,
        )  # fmt: skip

    def update(self, number: int, **values: Any) -> dict[str, Any]:
        with self.ledger.store.read() as connection:
            tenant = self.get(connection, number).tenant
        with self.ledger.store.locked(tenant) as connection:
            row = self.get(connection, number)
            merged = {**row._mapping, **values}
            check_order(merged["started_at"], merged["ended_at"], "started_at", "ended_at")
            if values.get("cause") is not None and values["cause"] not in CAUSES:
                raise SpecError(
                    "cause", f"must be one of {', '.join(CAUSES)}, got {values['cause']!r}"
                )
            if row.kind == "downtime" and "ended_at" in values:
                clash = self.overlapping(
                    connection, row.tenant, row.host, row.vm, row.started_at, values["ended_at"],
                    except_id=number,
                )  # fmt: skip
                if clash is not None:
                    raise SpecError(
                        "ended_at", f"would overlap incident #{clash.id} ({iso(clash.started_at)})"
                    )
            connection.execute(incidents.update().where(incidents.c.id == number).values(**values))
            return incident_facts(self.get(connection, number))

    def confirm(self, number: int, at: dt.datetime) -> dict[str, Any]:
        with self.ledger.store.read() as connection:
            row = self.get(connection, number)
        if row.confirmed_at is not None:
            return incident_facts(row)
        check_order(row.reported_at or row.started_at, at, "reported_at", "confirmed_at", False)
        return self.update(number, confirmed_at=at)

    def restore(self, number: int, at: dt.datetime) -> dict[str, Any]:
        """Service is back (5.11): the incident ends."""
        with self.ledger.store.read() as connection:
            row = self.get(connection, number)
        if row.ended_at == at:
            return incident_facts(row)
        if row.ended_at is not None:
            raise SpecError("incident", f"incident #{number} already ended at {iso(row.ended_at)}")
        return self.update(number, ended_at=at)

    def classify(self, number: int, cause: str, note: str = "") -> dict[str, Any]:
        values: dict[str, Any] = {"cause": cause}
        if note:
            values["note"] = check_note(note, "note")
        return self.update(number, **values)

    def exclude(
        self,
        cause: str,
        started_at: dt.datetime,
        ended_at: dt.datetime,
        *,
        tenant: str = "",
        host: str = "",
        vm: str = "",
        announced_at: dt.datetime | None = None,
        note: str = "",
    ) -> dict[str, Any]:
        """An interval whose downtime is not compensated (5.8-5.10). Maintenance counts only
        when it was announced before it began."""
        if cause not in EXCLUDED_CAUSES:
            raise SpecError("cause", f"must be one of {', '.join(EXCLUDED_CAUSES)}, got {cause!r}")
        check_order(started_at, ended_at, "started_at", "ended_at")
        if cause == "maintenance":
            if announced_at is None:
                raise SpecError("announced_at", "planned maintenance needs its announcement time")
            if announced_at > started_at:
                raise SpecError(
                    "announced_at",
                    f"{iso(announced_at)} is after the window starts ({iso(started_at)}): "
                    "unannounced work is downtime, not planned maintenance",
                )
        if tenant:
            check_name(tenant, "tenant")
        check_line(host, "host")
        check_note(note, "note")
        if vm:
            check_name(vm, "vm")
            if not tenant:
                raise SpecError("vm", "a VM exclusion needs its tenant")
        key = key_of(
            "exclusion", cause, tenant, host, vm, started_at.isoformat(), ended_at.isoformat()
        )
        with self.ledger.store.locked(tenant or "(exclusions)") as connection:
            if tenant:
                self.ledger.require_tenant(connection, tenant)
            found = connection.execute(sa.select(exclusions).where(exclusions.c.key == key)).first()
            if found is None:
                connection.execute(
                    exclusions.insert().values(
                        key=key, tenant=tenant, host=host, vm=vm, cause=cause,
                        started_at=started_at, ended_at=ended_at, announced_at=announced_at,
                        note=note, actor=self.ledger.actor, created_at=self.ledger.now(),
                    )
                )  # fmt: skip
                found = connection.execute(
                    sa.select(exclusions).where(exclusions.c.key == key)
                ).first()
        return {
            "id": found.id, "cause": found.cause, "tenant": found.tenant, "host": found.host,
            "vm": found.vm, "started_at": iso(found.started_at), "ended_at": iso(found.ended_at),
            "announced_at": iso(found.announced_at), "note": found.note,
        }  # fmt: skip


def check_order(
    start: dt.datetime,
    end: dt.datetime | None,
    start_field: str,
    end_field: str,
    strict: bool = True,
) -> None:
    if end is None:
        return
    if end < start or (strict and end == start):
        raise SpecError(end_field, f"{iso(end)} is before {start_field} ({iso(start)})")


# -- the probe ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    tenant: str
    vm: str
    state: str  # running | paused | stopped | unreachable
    reason: str = ""


def expected_running(connection: Any, host: str) -> dict[tuple[str, str], str]:
    """VMs the runs left running on `host` (the latest state recorded by a run, not by a
    reconciliation): {(tenant, vm): state}. A VM the customer stopped is not expected up."""
    table = usage_intervals
    latest = (
        sa.select(table.c.tenant, table.c.name, sa.func.max(table.c.started_at).label("at"))
        .where(table.c.host == host, table.c.kind == "vm", table.c.source == "run")
        .group_by(table.c.tenant, table.c.name)
        .subquery()
    )
    query = sa.select(table.c.tenant, table.c.name, table.c.state).join(
        latest,
        (table.c.tenant == latest.c.tenant) & (table.c.name == latest.c.name)
        & (table.c.started_at == latest.c.at),
    ).where(table.c.host == host, table.c.kind == "vm", table.c.source == "run")  # fmt: skip
    return {(r.tenant, r.name): r.state for r in connection.execute(query)}


def judge(observation: Observation, expected: str | None, blocked: bool) -> tuple[bool, str]:
    """Is the VM up, and if not whose doing is it: (up, cause). Only a VM its runs left
    running is promised to be up."""
    if observation.state == "running" or expected != "running":
        return True, ""
    if blocked:
        return False, "customer"  # paused by the operator: blocked or suspended tenant
    if observation.state == "stopped" and observation.reason in GUEST_SHUTDOWN_REASONS:
        return False, "customer"
    return False, "provider"


class Probe:
    """One pass over a host's VMs: record each VM's state, open and end incidents."""

    def __init__(self, ledger: Ledger, host: str) -> None:
        self.ledger = ledger
        self.host = host
        self.incidents = Incidents(ledger)

    def record(
        self, observations: Iterable[Observation], blocked: Mapping[str, set[str]]
    ) -> dict[str, Any]:
        """`observations` of every VM seen (or, host unreachable, of every VM expected);
        `blocked` names each tenant's VMs held by the operator ("*": the whole tenant)."""
        now = self.ledger.now()
        opened, ended, seen = [], [], 0
        with self.ledger.store.read() as connection:
            expected = expected_running(connection, self.host)
            previous = {
                (r.tenant, r.vm): r
                for r in connection.execute(
                    sa.select(probe_status).where(probe_status.c.host == self.host)
                )
            }
        for observation in observations:
            seen += 1
            key = (observation.tenant, observation.vm)
            held = blocked.get(observation.tenant, set())
            up, cause = judge(observation, expected.get(key), bool({observation.vm, "*"} & held))
            before = previous.get(key)
            changed = before is None or before.up != up
            self.save_status(observation, up, now, before if not changed else None)
            if not up and (before is None or before.up):
                opened.append(self.open_incident(observation, cause, now))
            elif up and before is not None and not before.up:
                ended.extend(self.end_incidents(observation, now))
        return {
            "host": self.host,
            "at": now.isoformat(),
            "vms": seen,
            "opened": opened,
            "ended": ended,
        }

    def save_status(
        self, observation: Observation, up: bool, now: dt.datetime, unchanged: Any
    ) -> None:
        values = {
            "state": observation.state,
            "reason": observation.reason[:64],
            "up": up,
            "since": unchanged.since if unchanged is not None else now,
            "checked_at": now,
        }
        where = (
            (probe_status.c.host == self.host) & (probe_status.c.tenant == observation.tenant)
            & (probe_status.c.vm == observation.vm)
        )  # fmt: skip
        with self.ledger.store.write() as connection:
            if not connection.execute(probe_status.update().where(where).values(**values)).rowcount:
                connection.execute(
                    probe_status.insert().values(
                        host=self.host, tenant=observation.tenant, vm=observation.vm, **values
                    )
                )

    def open_incident(
        self, observation: Observation, cause: str, now: dt.datetime
    ) -> dict[str, Any]:
        with self.ledger.store.read() as connection:
            open_one = self.incidents.overlapping(
                connection, observation.tenant, self.host, observation.vm, now, None
            )
        if open_one is not None:  # already reported by the customer, or still open
            return incident_facts(open_one)
        try:
            return self.incidents.open(
                observation.tenant, observation.vm, self.host, now, source="probe", cause=cause,
                note=f"probe saw {observation.state}"
                + (f" ({observation.reason})" if observation.reason else ""),
            )  # fmt: skip
        except VceError as error:  # a VM of a tenant the ledger does not know
            return {"tenant": observation.tenant, "vm": observation.vm, "error": str(error)}

    def end_incidents(self, observation: Observation, now: dt.datetime) -> list[dict[str, Any]]:
        with self.ledger.store.read() as connection:
            rows = connection.execute(
                sa.select(incidents.c.id).where(
                    incidents.c.tenant == observation.tenant, incidents.c.kind == "downtime",
                    incidents.c.ended_at.is_(None), incidents.c.host.in_(("", self.host)),
                    incidents.c.vm == observation.vm, incidents.c.source == "probe",
                )
            ).all()  # fmt: skip
        return [self.incidents.restore(row.id, now) for row in rows]


SHUTOFF_REASONS = {
    0: "unknown", 1: "shutdown", 2: "destroyed", 3: "crashed", 4: "migrated", 5: "saved",
    6: "failed", 7: "from snapshot", 8: "daemon",
}  # fmt: skip
PAUSED_REASONS = {
    0: "unknown", 1: "user", 2: "migration", 3: "save", 4: "dump", 5: "ioerror", 6: "watchdog",
    7: "from snapshot", 8: "shutting down", 9: "snapshot", 10: "crashed", 11: "starting up",
    12: "postcopy", 13: "postcopy failed",
}  # fmt: skip


def observe_domains(conn: Any, known_tenants: set[str]) -> list[Observation]:
    """Each VM of a known tenant on the host, by its libvirt state and reason (no XML read:
    the probe runs every minute on hosts with many VMs)."""
    found = []
    for dom in conn.listAllDomains(0):
        tenant, separator, vm = dom.name().partition(SEPARATOR)
        if not separator or tenant not in known_tenants:
            continue
        try:
            code, reason_code = dom.state()
        except Exception as error:  # the domain vanished between listing and reading
            if vanished(error):
                continue
            raise
        state = DOMAIN_STATES.get(code, "unknown")
        if state == "running":
            found.append(Observation(tenant, vm, "running"))
        elif state == "paused":
            found.append(Observation(tenant, vm, "paused", PAUSED_REASONS.get(reason_code, "")))
        else:
            reason = SHUTOFF_REASONS.get(reason_code, "") if state == "shutoff" else state
            found.append(Observation(tenant, vm, "stopped", reason))
    return found


def probe_host(ledger: Ledger, uri: str) -> dict[str, Any]:
    """One probe pass over the host at `uri`. An unreachable host is downtime of every VM the
    runs left running there."""
    with ledger.store.read() as connection:
        known = {row.name for row in connection.execute(sa.select(tenants.c.name))}
        blocked: dict[str, set[str]] = {}
        for row in connection.execute(sa.select(blocks.c.tenant, blocks.c.vm)):
            blocked.setdefault(row.tenant, set()).add(row.vm or "*")
        for row in connection.execute(
            sa.select(tenants.c.name).where(tenants.c.state.in_(("suspended", "closed")))
        ):
            blocked.setdefault(row.name, set()).add("*")
        expected = expected_running(connection, uri)
    try:
        with libvirt_action("list", f"domains on {uri}"):
            observations = observe_domains(connect(uri), known)
        unreachable = ""
    except VceError as error:
        unreachable = str(error)
        observations = [
            Observation(tenant, vm, "unreachable", "host unreachable")
            for (tenant, vm), state in sorted(expected.items())
            if state == "running"
        ]
    result = Probe(ledger, uri).record(observations, blocked)
    if unreachable:
        result["unreachable"] = unreachable
    return result
