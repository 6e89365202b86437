# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The request-handling targets of the terms (5.1): each logged request, its clock, met or not.

A request's clock runs from the moment support logged it to the run that fulfilled it. Quota
increases applied with vce.kvm.quota and VM unblocks done with vce.kvm.vm carry their own
clocks in the ledger; every other request is logged here and fulfilled by a run (or a time).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

from ..core.errors import SpecError
from ..core.periods import Month
from ..core.validation import MAX_REFERENCE, MAX_RUN_ID, check_line, check_name, check_note
from ..ledger.tenants import Ledger, iso, key_of

try:
    import sqlalchemy as sa

    from ..ledger.schema import events, quota_requests, requests, runs
except ImportError:  # reported by Store()
    sa = None

TARGETS = {
    "quota_increase": dt.timedelta(minutes=20),
    "password": dt.timedelta(minutes=20),
    "vm_reboot_unblock": dt.timedelta(minutes=10),
    "zone_link": dt.timedelta(minutes=30),
    "critical_fault": dt.timedelta(minutes=60),
    "minor_fault": dt.timedelta(hours=4),
}
COLUMNS = (
    "month", "tenant", "kind", "reference", "logged_at", "fulfilled_at", "fulfilled_by",
    "target_minutes", "elapsed_minutes", "status",
)  # fmt: skip


class RequestLog:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def log(
        self, tenant: str, kind: str, reference: str, logged_at: dt.datetime, note: str = ""
    ) -> dict[str, Any]:
        """Record a request once per (tenant, reference)."""
        check_name(tenant, "tenant")
        if kind not in TARGETS:
            raise SpecError("kind", f"must be one of {', '.join(TARGETS)}, got {kind!r}")
        if not reference:
            raise SpecError("reference", "the CRM's reference of the request is required")
        check_line(reference, "reference", MAX_REFERENCE)
        check_note(note, "note")
        key = key_of("request", tenant, reference)
        with self.ledger.store.locked(tenant) as connection:
            self.ledger.require_tenant(connection, tenant)
            row = self.row(connection, key)
            if row is not None:
                if row.kind != kind or row.logged_at != logged_at:
                    raise SpecError(
                        "reference",
                        f"{reference!r} is already logged as {row.kind} at {iso(row.logged_at)}",
                    )
                return facts(row, self.ledger.now())
            connection.execute(
                requests.insert().values(
                    key=key, tenant=tenant, kind=kind, reference=reference, logged_at=logged_at,
                    note=note, actor=self.ledger.actor,
                )
            )  # fmt: skip
            return facts(self.row(connection, key), self.ledger.now())

    def fulfil(
        self, tenant: str, reference: str, at: dt.datetime | None = None, run: str | None = None
    ) -> dict[str, Any]:
        """The request was fulfilled at `at`, or when run `run` ended."""
        if (at is None) == (run is None):
            raise SpecError("fulfilled", "give either the fulfilling run or the moment, not both")
        check_name(tenant, "tenant")
        check_line(reference, "reference", MAX_REFERENCE)
        if run is not None:
            check_line(run, "run", MAX_RUN_ID)
        key = key_of("request", tenant, reference)
        with self.ledger.store.locked(tenant) as connection:
            row = self.row(connection, key)
            if row is None:
                raise SpecError("reference", f"no request {reference!r} of tenant {tenant}")
            if run is not None:
                at = self.run_end(connection, run)
            if at < row.logged_at:
                raise SpecError(
                    "fulfilled_at",
                    f"{iso(at)} is before the request was logged ({iso(row.logged_at)})",
                )
            if row.fulfilled_at is not None and (row.fulfilled_at, row.fulfilled_by) != (at, run):
                raise SpecError(
                    "reference", f"{reference!r} was already fulfilled at {iso(row.fulfilled_at)}"
                )
            connection.execute(
                requests.update()
                .where(requests.c.key == key)
                .values(fulfilled_at=at, fulfilled_by=run)
            )
            return facts(self.row(connection, key), self.ledger.now())

    @staticmethod
    def row(connection: Any, key: str) -> Any:
        return connection.execute(sa.select(requests).where(requests.c.key == key)).first()

    @staticmethod
    def run_end(connection: Any, run: str) -> dt.datetime:
        row = connection.execute(sa.select(runs).where(runs.c.id == run)).first()
        if row is None:
            raise SpecError("run", f"unknown run {run!r}")
        if row.ended_at is None:
            raise SpecError("run", f"run {run} has not ended (result {row.result})")
        return row.ended_at

    def report(self, month: Month, tenant: str | None = None) -> Iterator[dict[str, Any]]:
        """Every request logged in the month, from the three sources, oldest first."""
        now = self.ledger.now()
        start, end = month.start, month.end
        with self.ledger.store.read() as connection:
            if tenant is not None:
                self.ledger.require_tenant(connection, tenant)
            found = []
            query = sa.select(requests).where(
                requests.c.logged_at >= start, requests.c.logged_at < end
            )
            if tenant is not None:
                query = query.where(requests.c.tenant == tenant)
            logged = list(connection.execute(query))
            found.extend(facts(row, now) for row in logged)
            # A logged quota increase applied under its reference (as the control plane does)
            # is one request: its quota_requests row is the logged one's fulfilment.
            fulfilments = {
                key_of("quota-request", row.tenant, row.reference)
                for row in logged
                if row.kind == "quota_increase"
            }
            query = sa.select(quota_requests).where(
                quota_requests.c.requested_at >= start, quota_requests.c.requested_at < end
            )
            if tenant is not None:
                query = query.where(quota_requests.c.tenant == tenant)
            for row in connection.execute(query):
                if row.key in fulfilments:
                    continue
                found.append(clock(
                    row.tenant, "quota_increase", row.key[:16], row.requested_at, row.applied_at,
                    row.run_id, now,
                ))  # fmt: skip
            query = sa.select(events).where(
                events.c.kind == "vm_unblocked", events.c.requested_at >= start,
                events.c.requested_at < end,
            )  # fmt: skip
            if tenant is not None:
                query = query.where(events.c.tenant == tenant)
            for row in connection.execute(query):
                found.append(clock(
                    row.tenant, "vm_reboot_unblock", row.key[:16], row.requested_at, row.at,
                    row.run_id, now,
                ))  # fmt: skip
        for item in sorted(found, key=lambda r: (r["logged_at"], r["tenant"], r["reference"])):
            item["month"] = month.label
            yield item


def facts(row: Any, now: dt.datetime) -> dict[str, Any]:
    item = clock(
        row.tenant, row.kind, row.reference, row.logged_at, row.fulfilled_at, row.fulfilled_by, now
    )
    item["note"] = row.note
    return item


def clock(
    tenant: str, kind: str, reference: str, logged_at: dt.datetime,
    fulfilled_at: dt.datetime | None, fulfilled_by: str | None, now: dt.datetime,
) -> dict[str, Any]:  # fmt: skip
    target = TARGETS[kind]
    elapsed = (fulfilled_at or now) - logged_at
    if fulfilled_at is not None:
        status = "met" if elapsed <= target else "missed"
    else:
        status = "open" if elapsed <= target else "missed (open)"
    return {
        "tenant": tenant,
        "kind": kind,
        "reference": reference,
        "logged_at": iso(logged_at),
        "fulfilled_at": iso(fulfilled_at),
        "fulfilled_by": fulfilled_by,
        "target_minutes": int(target.total_seconds() // 60),
        "elapsed_minutes": str(
            (Decimal(int(elapsed.total_seconds())) / 60).quantize(Decimal("0.1"))
        ),
        "status": status,
    }


def summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per kind: how many requests, met, missed, still open."""
    result: dict[str, dict[str, int]] = {}
    for row in rows:
        counts = result.setdefault(row["kind"], {"requests": 0, "met": 0, "missed": 0, "open": 0})
        counts["requests"] += 1
        counts[{"met": "met", "open": "open"}.get(row["status"], "missed")] += 1
    return result
