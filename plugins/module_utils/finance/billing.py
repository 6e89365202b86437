# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Invoices and SLA statements per tenant and month, computed from the ledger's records.

One pass over the month's records, tenant after tenant: every table is read in tenant order
through a streaming cursor and only one tenant's rows are held at a time, so thousands of
tenants cost time, not memory.

Rules (DESIGN.md; written out in docs/billing.md):
- each line is a resource's meter over the month: base-unit microseconds (exact integers)
  times the plan's price per unit-hour; its amount is rounded once, half up, to 0.01;
- compute (vCPU, RAM) is billed while the VM runs or is paused; disks, public IPs, zone
  links and kept backups while they exist;
- the trial (from its start to its end, and on after it while the tenant stays suspended
  because everything was off) is free;
- SLA credit per VM: the tier's percentage of that VM's compute cost (vCPU, RAM and its
  disks) at list prices, rounded per VM; all credits together are one discount line capped at
  the month's charges (which binds when the month was mostly free: a trial);
- data lost by the provider's fault: 50% of the month's charges, within what is left;
- no invoice goes below zero; a closed month's invoice never changes (credit notes do).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ..core.errors import SpecError
from ..core.periods import Interval, Month, clip, micros, overlap_micros, union
from ..ledger.metering import HOLDING_COMPUTE
from ..ledger.prices import FREE, METERS, MeterDef, PriceList
from ..ledger.tenants import Ledger, iso, key_of, price_list_of
from .sla import DATA_LOSS_PERCENT, VmAvailability, availability_of, counts, shown_percent

try:
    import sqlalchemy as sa

    from ..ledger.schema import (
        backups,
        credit_notes,
        events,
        exclusions,
        incidents,
        invoices,
        price_lists,
        tenants,
        usage_intervals,
    )
except ImportError:  # reported by Store()
    sa = None

CENT = Decimal("0.01")
QUANTITY_PLACES = Decimal("0.000001")
HOUR_US = 3600 * 10**6
STREAM_BATCH = 5000
METER_BY_NAME = {m.name: m for m in METERS}
COMPUTE_METERS = tuple(m for m in METERS if m.compute)


def cents(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def split(window: Interval, free: list[Interval]) -> tuple[int, int]:
    """The window's length and how much of it is free, in microseconds."""
    return micros(*window), overlap_micros(window[0], window[1], free) if free else 0


def hours(unit_us: int, meter: MeterDef) -> Decimal:
    return Decimal(unit_us) / (meter.per_unit * HOUR_US)


@dataclass
class Line:
    """One resource's meter over the month: billed and free (trial) base-unit microseconds."""

    host: str
    kind: str
    name: str
    vm: str
    meter: MeterDef
    billed_us: int = 0
    free_us: int = 0

    def add(self, amount: int, span_us: int, free_us: int) -> None:
        self.billed_us += amount * (span_us - free_us)
        self.free_us += amount * free_us

    def cost(self, unit_us: int, prices: PriceList) -> Decimal:
        """Before its one rounding: one division, after the product."""
        return Decimal(unit_us) * prices.rate(self.meter.price) / (self.meter.per_unit * HOUR_US)

    def exact(self, prices: PriceList) -> Decimal:
        """The line's amount before its one rounding."""
        return self.cost(self.billed_us, prices)

    def listed(self, prices: PriceList) -> Decimal:
        """What the line would cost at list prices, free (trial) time included."""
        return self.cost(self.billed_us + self.free_us, prices)

    def as_dict(self, prices: PriceList) -> dict[str, Any]:
        return {
            "host": self.host,
            "kind": self.kind,
            "name": self.name,
            "vm": self.vm,
            "meter": self.meter.name,
            "unit": self.meter.unit,
            "quantity": str(hours(self.billed_us, self.meter).quantize(QUANTITY_PLACES)),
            "free_quantity": str(hours(self.free_us, self.meter).quantize(QUANTITY_PLACES)),
            "unit_price": str(prices.rate(self.meter.price)),
            "amount": str(cents(self.exact(prices))),
        }


@dataclass
class TenantMonth:
    """What one tenant's month is made of, gathered from the streams."""

    tenant: Any
    usage: list[Any] = field(default_factory=list)
    backups: list[Any] = field(default_factory=list)
    incidents: list[Any] = field(default_factory=list)
    exclusions: list[Any] = field(default_factory=list)


class TenantStream:
    """Rows ordered by tenant, handed out one tenant at a time."""

    def __init__(self, rows: Iterator[Any]) -> None:
        self.rows = rows
        self.head = next(self.rows, None)
        self.unknown: set[str] = set()

    def take(self, tenant: str) -> list[Any]:
        while self.head is not None and self.head.tenant < tenant:
            self.unknown.add(self.head.tenant)
            self.head = next(self.rows, None)
        taken = []
        while self.head is not None and self.head.tenant == tenant:
            taken.append(self.head)
            self.head = next(self.rows, None)
        return taken

    def rest(self) -> None:
        while self.head is not None:
            self.unknown.add(self.head.tenant)
            self.head = next(self.rows, None)


class Biller:
    """A month's invoices and SLA statements, as of `now` (the month may still be running)."""

    def __init__(self, ledger: Ledger, month: Month) -> None:
        self.ledger = ledger
        self.month = month
        self.now = ledger.now()
        self.horizon = min(month.end, max(self.now, month.start))
        self.unknown_tenants: set[str] = set()

    # -- reading -------------------------------------------------------------------------

    def ordered(self, connection: Any, column: Any) -> Any:
        """Tenant order that is byte order on every back end (PostgreSQL's default collation
        may sort '-' differently from Python)."""
        collation = "C" if self.ledger.store.dialect == "postgresql" else "BINARY"
        return column.collate(collation)

    def stream(self, connection: Any, query: Any) -> Iterator[Any]:
        result = connection.execution_options(stream_results=True, yield_per=STREAM_BATCH)
        yield from result.execute(query)

    def tenant_months(self, connection: Any, only: str | None) -> Iterator[TenantMonth]:
        start, end = self.month.start, self.horizon
        tenant_query = sa.select(tenants).order_by(self.ordered(connection, tenants.c.name))
        usage_query = sa.select(usage_intervals).where(
            usage_intervals.c.started_at < end,
            sa.or_(usage_intervals.c.ended_at.is_(None), usage_intervals.c.ended_at > start),
        )
        backup_query = sa.select(
            backups.c.tenant, backups.c.host, backups.c.vm, backups.c.size_bytes,
            backups.c.finished_at, backups.c.pruned_at,
        ).where(
            backups.c.status == "ok", backups.c.finished_at < end,
            sa.or_(backups.c.pruned_at.is_(None), backups.c.pruned_at > start),
        )  # fmt: skip
        incident_query = sa.select(incidents).where(
            incidents.c.started_at < self.month.end,
            sa.or_(incidents.c.ended_at.is_(None), incidents.c.ended_at > start),
        )
        exclusion_query = sa.select(exclusions).where(
            exclusions.c.tenant != "", exclusions.c.started_at < end, exclusions.c.ended_at > start
        )
        queries = [usage_query, backup_query, incident_query, exclusion_query]
        tables = [usage_intervals, backups, incidents, exclusions]
        if only is not None:
            tenant_query = tenant_query.where(tenants.c.name == only)
            queries = [q.where(t.c.tenant == only) for q, t in zip(queries, tables, strict=True)]
        # Within a tenant, a stable order: the same month gives the same document (and digest)
        # on every back end.
        within = [
            (usage_intervals.c.started_at, usage_intervals.c.key),
            (backups.c.finished_at, backups.c.key),
            (incidents.c.started_at, incidents.c.id),
            (exclusions.c.started_at, exclusions.c.id),
        ]
        streams = [
            TenantStream(
                self.stream(connection, q.order_by(self.ordered(connection, t.c.tenant), *then))
            )
            for q, t, then in zip(queries, tables, within, strict=True)
        ]
        for row in self.stream(connection, tenant_query):
            usage, kept, found, excluded = (s.take(row.name) for s in streams)
            yield TenantMonth(row, usage, kept, found, excluded)
        for stream in streams:
            stream.rest()
            self.unknown_tenants |= stream.unknown

    def global_exclusions(self, connection: Any) -> list[Any]:
        query = sa.select(exclusions).where(
            exclusions.c.tenant == "",
            exclusions.c.started_at < self.horizon,
            exclusions.c.ended_at > self.month.start,
        )
        return list(connection.execute(query))

    def prices_by_plan(self, connection: Any) -> dict[str, PriceList]:
        """Each plan's prices for this month: the latest list in effect at its start (a plan
        whose only list starts later uses that one: its first prices hold for every month)."""
        found: dict[str, PriceList] = {}
        rows = connection.execute(sa.select(price_lists).order_by(price_lists.c.effective_from))
        for row in rows:
            if row.effective_from <= self.month.start or row.plan not in found:
                found[row.plan] = price_list_of(row)
        return found

    def free_windows(self, connection: Any) -> dict[str, list[Interval]]:
        """Per tenant, its trial and, when the trial ended with everything off, the
        suspension that followed until the tenant was resumed."""
        windows: dict[str, list[Interval]] = {}
        query = sa.select(
            tenants.c.name, tenants.c.trial_started_at, tenants.c.trial_ends_at
        ).where(tenants.c.trial_started_at.is_not(None))
        for row in connection.execute(query):
            windows[row.name] = [(row.trial_started_at, row.trial_ends_at)]
        kinds = ("trial_ended", "tenant_resumed", "tenant_closed")
        history = connection.execute(
            sa.select(events.c.tenant, events.c.kind, events.c.at, events.c.detail)
            .where(events.c.kind.in_(kinds))
            .order_by(events.c.tenant, events.c.at)
        )
        suspended_since: dict[str, dt.datetime] = {}
        for row in history:
            if row.kind == "trial_ended" and json.loads(row.detail).get("outcome") == "suspended":
                suspended_since[row.tenant] = row.at
            elif row.tenant in suspended_since:
                since = suspended_since.pop(row.tenant)
                windows.setdefault(row.tenant, []).append((since, row.at))
        for tenant, since in suspended_since.items():
            windows.setdefault(tenant, []).append((since, self.month.end))
        return {tenant: union(w) for tenant, w in windows.items()}

    # -- computing -----------------------------------------------------------------------

    def invoices(self, tenant: str | None = None) -> Iterator[dict[str, Any]]:
        """Each tenant's invoice with its SLA statement, in tenant order, one at a time."""
        with self.ledger.store.read() as connection:
            if tenant is not None:
                self.ledger.require_tenant(connection, tenant)
            prices = self.prices_by_plan(connection)
            free = self.free_windows(connection)
            shared = self.global_exclusions(connection)
            for part in self.tenant_months(connection, tenant):
                plan_prices = prices.get(part.tenant.plan)
                yield self.invoice(
                    part, plan_prices or FREE, free.get(part.tenant.name, []), shared,
                    priced=plan_prices is not None,
                )  # fmt: skip

    def invoice(
        self, part: TenantMonth, prices: PriceList, free: list[Interval], shared: list[Any],
        priced: bool = True,
    ) -> dict[str, Any]:  # fmt: skip
        lines: dict[tuple[str, str, str, str, str], Line] = {}
        existed: dict[tuple[str, str], list[Interval]] = {}
        low, high = self.month.start, self.horizon
        for row in part.usage:
            window = clip(row.started_at, row.ended_at, low, high)
            if window is None or row.state == "absent":
                continue
            if row.kind == "vm":
                existed.setdefault((row.host, row.name), []).append(window)
            span, free_us = split(window, free)
            holding = row.state in HOLDING_COMPUTE
            for meter in METERS[:-1]:
                amount = getattr(row, meter.column)
                if amount and (holding or not meter.while_holding):
                    line = self.line(lines, (row.host, row.kind, row.name, row.vm), meter)
                    line.add(amount, span, free_us)
        backup_meter = METER_BY_NAME["backup"]
        for row in part.backups:
            window = clip(row.finished_at, row.pruned_at, low, high)
            if window is not None and row.size_bytes:
                line = self.line(lines, (row.host, "backup", row.vm, row.vm), backup_meter)
                line.add(row.size_bytes, *split(window, free))
        availability = [
            availability_of(host, vm, spans, part.incidents, [*part.exclusions, *shared], low, high)
            for (host, vm), spans in sorted(existed.items())
        ]
        return self.document(part, prices, list(lines.values()), availability, priced)

    @staticmethod
    def line(lines: dict[Any, Line], resource: tuple[str, str, str, str], meter: MeterDef) -> Line:
        found = lines.get((*resource, meter.name))
        if found is None:
            found = lines[(*resource, meter.name)] = Line(*resource, meter)
        return found

    def document(
        self, part: TenantMonth, prices: PriceList, lines: list[Line],
        availability: list[VmAvailability], priced: bool,
    ) -> dict[str, Any]:  # fmt: skip
        tenant = part.tenant
        lines.sort(key=lambda x: (x.host, x.kind, x.name, x.meter.name))
        subtotal = sum((cents(line.exact(prices)) for line in lines), Decimal(0))
        compute_cost: dict[tuple[str, str], Decimal] = {}
        for line in lines:
            if line.meter.compute:
                key = (line.host, line.vm)
                compute_cost[key] = compute_cost.get(key, Decimal(0)) + line.listed(prices)
        vm_rows, credits = [], Decimal(0)
        for vm in availability:
            compute = compute_cost.get((vm.host, vm.vm), Decimal(0))
            credit = cents(compute * vm.percent / 100)
            credits += credit
            vm_rows.append(self.vm_row(vm, compute, credit))
        sla_credit = min(credits, subtotal)
        data_loss = [r for r in part.incidents if is_counted_loss(r, self.month)]
        loss_credit = (
            min(cents(subtotal * DATA_LOSS_PERCENT / 100), subtotal - sla_credit)
            if data_loss
            else Decimal(0)
        )
        discounts = []
        if sla_credit:
            discounts.append({
                "kind": "sla_credit",
                "description": "SLA credit (terms 5.6), capped at the month's charges (5.7)",
                "amount": str(sla_credit),
                "uncapped": str(credits),
            })  # fmt: skip
        if loss_credit:
            discounts.append({
                "kind": "data_loss",
                "description": "Data lost by the provider's fault: 50% of the month (5.13)",
                "amount": str(loss_credit),
                "incidents": [r.id for r in data_loss],
            })  # fmt: skip
        total = subtotal - sla_credit - loss_credit
        warnings = [] if priced else [f"plan {tenant.plan} has no prices: billed at 0"]
        return {
            "tenant": tenant.name,
            "customer": tenant.customer,
            "plan": tenant.plan,
            "month": self.month.label,
            "time_zone": self.month.zone.key,
            "period": {"start": iso(self.month.start), "end": iso(self.month.end)},
            "as_of": iso(self.horizon),
            "status": "open",
            "currency": prices.currency,
            "lines": [line.as_dict(prices) for line in lines],
            "subtotal": str(subtotal),
            "discounts": discounts,
            "total": str(total),
            "availability": vm_rows,
            "incidents": [incident_row(r) for r in part.incidents],
            "warnings": warnings,
        }

    def vm_row(self, vm: VmAvailability, compute: Decimal, credit: Decimal) -> dict[str, Any]:
        return {
            "host": vm.host,
            "vm": vm.vm,
            "existed_seconds": vm.existed_us // 10**6,
            "downtime_seconds": vm.downtime_us // 10**6,
            "excluded_seconds": vm.excluded_us // 10**6,
            "availability": shown_percent(vm.availability),
            "credit_percent": str(vm.percent),
            "compute_cost": str(cents(compute)),
            "credit": str(credit),
            "incidents": vm.incidents,
            "existed": [[iso(s), iso(e)] for s, e in union(vm.existed)],
            "downtime": [[iso(s), iso(e)] for s, e in vm.counted],
            "excluded": [[iso(s), iso(e)] for s, e in vm.excluded_windows],
        }


def is_counted_loss(row: Any, month: Month) -> bool:
    return row.kind == "data_loss" and counts(row) and month.contains(row.started_at)


def incident_row(row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "vm": row.vm, "host": row.host, "kind": row.kind, "source": row.source,
        "cause": row.cause, "started_at": iso(row.started_at), "reported_at": iso(row.reported_at),
        "confirmed_at": iso(row.confirmed_at), "ended_at": iso(row.ended_at), "note": row.note,
        "counts": counts(row),
    }  # fmt: skip


def digest(document: Mapping[str, Any]) -> str:
    stable = {k: v for k, v in document.items() if k not in ("as_of", "status", "credit_notes")}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()


# -- closed months -------------------------------------------------------------------------


class Books:
    """Invoices as customers receive them: live for open months, frozen for closed ones."""

    def __init__(self, ledger: Ledger, month: Month) -> None:
        self.ledger = ledger
        self.month = month

    def closed(self, connection: Any, tenant: str | None) -> dict[str, Any]:
        query = sa.select(invoices).where(invoices.c.month == self.month.label)
        if tenant is not None:
            query = query.where(invoices.c.tenant == tenant)
        return {row.tenant: row for row in connection.execute(query)}

    def notes(self, connection: Any, tenant: str) -> list[dict[str, Any]]:
        rows = connection.execute(
            sa.select(credit_notes)
            .where(credit_notes.c.tenant == tenant, credit_notes.c.month == self.month.label)
            .order_by(credit_notes.c.issued_at, credit_notes.c.key)
        )
        return [
            {"key": r.key, "amount": r.amount, "currency": r.currency, "reason": r.reason,
             "issued_at": iso(r.issued_at)}
            for r in rows
        ]  # fmt: skip

    def invoices(self, tenant: str | None = None) -> Iterator[dict[str, Any]]:
        """Each tenant's invoice: the frozen one if the month is closed for it."""
        with self.ledger.store.read() as connection:
            frozen = self.closed(connection, tenant)
        for document in Biller(self.ledger, self.month).invoices(tenant):
            row = frozen.get(document["tenant"])
            if row is None:
                yield document
                continue
            kept = json.loads(row.document)
            with self.ledger.store.read() as connection:
                kept["credit_notes"] = self.notes(connection, row.tenant)
            kept["status"] = "closed"
            yield kept

    def close(self) -> Iterator[dict[str, Any]]:
        """Freeze every tenant's invoice of a finished month; on a month already closed,
        issue a credit note where a late record lowered what the tenant owes."""
        if self.ledger.now() < self.month.end:
            raise SpecError(
                "month", f"{self.month.label} is not over yet (it ends {iso(self.month.end)})"
            )
        for document in Biller(self.ledger, self.month).invoices():
            yield self.freeze(document)

    def freeze(self, document: dict[str, Any]) -> dict[str, Any]:
        tenant = document["tenant"]
        document = {**document, "status": "closed"}
        stamp = digest(document)
        with self.ledger.store.locked(tenant) as connection:
            row = self.closed(connection, tenant).get(tenant)
            if row is None:
                connection.execute(
                    invoices.insert().values(
                        tenant=tenant, month=self.month.label, currency=document["currency"],
                        total=document["total"], document=json.dumps(document, sort_keys=True),
                        digest=stamp, closed_at=self.ledger.now(), run_id=self.ledger.run_id,
                    )
                )  # fmt: skip
                return {"tenant": tenant, "action": "closed", "total": document["total"]}
            if row.digest == stamp:
                return {"tenant": tenant, "action": "unchanged", "total": row.total}
            return self.correct(connection, row, document, stamp)

    def correct(
        self, connection: Any, row: Any, document: dict[str, Any], stamp: str
    ) -> dict[str, Any]:
        credited = sum(
            (Decimal(n["amount"]) for n in self.notes(connection, row.tenant)), Decimal(0)
        )
        owed_now = Decimal(document["total"])
        difference = Decimal(row.total) - credited - owed_now
        if difference == 0:
            return {"tenant": row.tenant, "action": "unchanged", "total": row.total}
        if difference < 0:
            return {
                "tenant": row.tenant, "action": "not billed", "total": row.total,
                "difference": str(-difference),
                "reason": "the month is closed: a late charge is not added to it",
            }  # fmt: skip
        key = key_of("credit-note", row.tenant, self.month.label, stamp)
        connection.execute(
            credit_notes.insert().values(
                key=key, tenant=row.tenant, month=self.month.label, currency=row.currency,
                amount=str(difference), reason="records received after the month was closed",
                document=json.dumps(document, sort_keys=True), issued_at=self.ledger.now(),
                run_id=self.ledger.run_id,
            )
        )  # fmt: skip
        return {"tenant": row.tenant, "action": "credit note", "amount": str(difference)}
