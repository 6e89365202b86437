# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write-ahead usage: no usage record lost when a run is killed between libvirt and the ledger.

libvirt and the ledger cannot commit together. So a run writes its *intents* - one row per
planned change of a metered object (a VM, a disk), keyed by run, host, tenant, object and
change - in the transaction of its reservation, before libvirt is touched. After its changes
(or its failure) it *confirms* them: each object's state as libvirt shows it goes into the
usage timeline where it differs from the latest recorded state, dated at the apply, and the
intents are resolved. A run killed in between leaves its intents pending; the next run of the
tenant on that host, or `vce ledger reconcile`, confirms them from what libvirt shows, dated at
the moment they were written (within the killed run) and under the killed run's id. An intent
whose object libvirt does not show, and whose state the ledger already has, is dropped.

Confirming compares with the ledger, never with an earlier reading, so whoever confirms first
writes a state and the others find it there: no state is recorded twice, and the callback's
later record of the same change has the same idempotency key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .metering import (
    ABSENT,
    Meter,
    Metering,
    ResourceKey,
    UsageChange,
    action_of,
    boot_volume,
    meter_of,
)
from .tenants import Ledger, key_of

try:
    import sqlalchemy as sa

    from .schema import usage_intents, usage_intervals
except ImportError:  # reported by Store()
    sa = None

# The plan's change kinds whose objects libvirt meters (a VM carries its boot disk).
INTENT_KINDS = ("vm", "disk")


@dataclass(frozen=True)
class Intent:
    """A change a run is about to make to a metered object."""

    kind: str
    name: str
    action: str


@dataclass
class Confirmation:
    """What confirming wrote, and every object it compared (the callback's reports of those
    add nothing the ledger does not hold)."""

    changes: list[UsageChange] = field(default_factory=list)
    objects: set[ResourceKey] = field(default_factory=set)


def intents_of(changes: Iterable[Any]) -> list[Intent]:
    """The intents of a plan's changes: those of metered kinds, once each."""
    found = {Intent(c.kind, c.name, c.action) for c in changes if c.kind in INTENT_KINDS}
    return sorted(found, key=lambda i: (i.kind, i.name, i.action))


def write(
    connection: Any, ledger: Ledger, tenant: str, host: str, intents: list[Intent]
) -> list[str]:
    """Record the intents as pending (again, when the run writes the same one twice); their keys."""
    now = ledger.now()
    keys = []
    for intent in intents:
        key = key_of("intent", ledger.run_id, host, tenant, intent.kind, intent.name, intent.action)
        connection.execute(usage_intents.delete().where(usage_intents.c.key == key))
        connection.execute(
            usage_intents.insert().values(
                key=key, tenant=tenant, host=host, kind=intent.kind, name=intent.name,
                action=intent.action, run_id=ledger.run_id, planned_at=now,
            )
        )  # fmt: skip
        keys.append(key)
    return keys


def has_pending(connection: Any, tenant: str, host: str) -> bool:
    return (
        connection.execute(
            sa.select(usage_intents.c.key).where(*pending_on(tenant, host)).limit(1)
        ).first()
        is not None
    )


def pending_on(tenant: str | None, host: str) -> list[Any]:
    conditions = [usage_intents.c.host == host, usage_intents.c.resolved_at.is_(None)]
    if tenant is not None:
        conditions.append(usage_intents.c.tenant == tenant)
    return conditions


def recorded_states(connection: Any, tenant: str, host: str) -> dict[ResourceKey, Any]:
    """The latest recorded row of each of the tenant's resources on the host."""
    table = usage_intervals
    rows = connection.execute(
        sa.select(table).where(
            table.c.tenant == tenant, table.c.host == host, table.c.ended_at.is_(None)
        )
    )
    return {(row.kind, row.name): row for row in rows}


def in_scope(
    tenant: str,
    objects: Iterable[ResourceKey],
    observed: Mapping[ResourceKey, Meter],
    recorded: Mapping[ResourceKey, Meter],
) -> set[ResourceKey]:
    """The objects and, for a VM, every volume attached to it (its meter names the VM) and
    its boot volume on its own (what a VM create killed before its domain was defined left)."""
    scope = set(objects)
    vms = {name for kind, name in scope if kind == "vm"}
    scope.update(("volume", boot_volume(tenant, vm)) for vm in vms)
    for states in (observed, recorded):
        scope.update(key for key, meter in states.items() if meter.vm in vms and key[0] != "vm")
    return scope


def confirm(
    connection: Any,
    metering: Metering,
    scope: tuple[str, str, Iterable[ResourceKey]],
    observed: Mapping[ResourceKey, Meter],
    at: dt.datetime,
    run_id: str,
    seen_before: Mapping[ResourceKey, Meter] | None = None,
) -> Confirmation:
    """Record, at `at` and under `run_id`, each object of `scope` (tenant, host, objects)
    whose state in libvirt (`observed`) the ledger does not hold as a run's latest record.
    For the run itself (`seen_before`: what it saw before its changes), a state it made is
    recorded even where a reconciliation recorded it already: the probe expects up what the
    runs left running."""
    tenant, host, objects = scope
    rows = recorded_states(connection, tenant, host)
    recorded = {key: meter_of(row) for key, row in rows.items()}
    done = Confirmation(objects=in_scope(tenant, objects, observed, recorded))
    for key in sorted(done.objects):
        after, latest = observed.get(key, ABSENT), recorded.get(key, ABSENT)
        seen = latest if seen_before is None else seen_before.get(key, ABSENT)
        by_run = key not in rows or rows[key].source == "run"
        if latest == after and (by_run or seen == after):
            continue  # the ledger holds it already
        change = UsageChange(tenant, host, *key, action_of(seen, after), at, after)
        if metering.insert(connection, change, "run", run_id):
            done.changes.append(change)
    return done


def resolve(
    connection: Any,
    keys: Iterable[str],
    observed: Mapping[ResourceKey, Meter],
    done: Confirmation,
    by: tuple[str, dt.datetime],
) -> None:
    """Mark intents resolved: confirmed when libvirt shows their object or its state was
    written now, dropped otherwise."""
    run_id, at = by
    written = {(c.kind, c.name) for c in done.changes}
    for key in keys:
        row = connection.execute(sa.select(usage_intents).where(usage_intents.c.key == key)).first()
        if row is None or row.resolved_at is not None:
            continue
        shown = (row.kind, row.name) in observed or (row.kind, row.name) in written
        connection.execute(
            usage_intents.update()
            .where(usage_intents.c.key == key)
            .values(
                resolved_at=at, resolved_by=run_id,
                resolution="confirmed" if shown else "dropped",
            )
        )  # fmt: skip


def recover(
    connection: Any,
    metering: Metering,
    tenant: str,
    host: str,
    observed: Mapping[ResourceKey, Meter],
) -> list[UsageChange]:
    """Confirm the pending intents of other runs on the host from what libvirt shows, each
    run's dated when it wrote them; the changes written. Runs are taken in the order they
    planned, so a later one finds what an earlier one recorded."""
    rows = connection.execute(
        sa.select(usage_intents)
        .where(*pending_on(tenant, host))
        .order_by(usage_intents.c.planned_at, usage_intents.c.key)
    ).fetchall()
    batches: dict[tuple[dt.datetime, str], list[Any]] = {}
    for row in rows:
        batches.setdefault((row.planned_at, row.run_id), []).append(row)
    written: list[UsageChange] = []
    now = metering.ledger.now()
    for (planned_at, run_id), batch in sorted(batches.items()):
        objects = [(row.kind, row.name) for row in batch]
        done = confirm(connection, metering, (tenant, host, objects), observed, planned_at, run_id)
        resolve(
            connection, [row.key for row in batch], observed, done, (metering.ledger.run_id, now)
        )
        written.extend(done.changes)
    return written


def recover_host(
    metering: Metering, host: str, observed: Mapping[str, Mapping[ResourceKey, Meter]]
) -> list[UsageChange]:
    """`vce ledger reconcile`: every tenant's pending intents on the host, before the drift
    is recorded (which is dated at the reconcile)."""
    store = metering.ledger.store
    with store.read() as connection:
        tenants = sorted(
            {
                row.tenant
                for row in connection.execute(
                    sa.select(usage_intents.c.tenant).where(*pending_on(None, host))
                )
            }
        )
    written = []
    for tenant in tenants:
        with store.locked(tenant) as connection:
            written += recover(connection, metering, tenant, host, observed.get(tenant, {}))
    return written
