"""Month-end invoices and SLA statements for 2,000 tenants, on SQLite and on PostgreSQL.

Issue 6: "A month's invoices and SLA statements for 2,000 tenants with 20,000 VMs and
200,000 usage and incident records: under 30 s on SQLite and on PostgreSQL on this 2-core
machine, with memory bounded (streamed, not all rows in memory); report the rows per second."

Set-up (not measured): per back end a fresh ledger (a SQLite file in a temp dir under /tmp;
a database on a private PostgreSQL server of tools.postgres, started and stopped here),
migrated by ``Ledger.open``, plans and price lists through ``Ledger.put_tariffs`` /
``put_prices``, everything else by SQLAlchemy Core executemany in chunks: 2,000 tenants on 4
plans (one without prices, a few trials, some suspended after their trial), 10 VMs each on
10 hosts, data disks, public IPs, zone links, downtime incidents (probe, customer reports
confirmed or not, other causes), data-loss incidents, maintenance and force-majeure
exclusions, weekly backups, and states and incidents before and after November 2026 (time
zone Asia/Almaty) that the month must skip. Exactly 200,000 usage_intervals + incidents rows;
the usage states of a resource chain (each ends where the next starts, the last is open).
Rows are inserted in time order, as runs write them, not tenant by tenant. Fixed seed.

Measured, each in a fresh Python process (so its peak RSS is its own), ledger clock at
2026-12-01 06:00 Almaty (the month is over, not closed):

1. FLOOR: the five queries Biller.tenant_months streams (tenants; usage, backups, incidents
   and exclusions of the month), in tenant order, same execution options, every row fetched
   through SQLAlchemy and counted; no computation.
2. PRODUCT: ``Books(ledger, month).invoices()`` for every tenant, written with
   ``statement.write_json_stream`` into a file while each document's SLA rows
   (``statement.sla_rows``) go into an SLA CSV file in the same pass; wall time end to end
   (first query to the last byte written), rows/s (rows the five queries return / s) and
   tenants/s. Checked while streaming: one invoice per tenant, in order, every total >= 0 and
   total = subtotal - discounts. Checked afterwards (untimed): the JSON parses and holds every
   tenant, the CSV has one row per VM statement, 3 tenants' invoices computed alone
   (``invoices(tenant)``) equal the streamed ones, and both back ends give the same invoices
   (compared with each invoice's incident lists sorted by id: the product lists them in the
   order the database returns a tenant's rows, which differs between back ends).
3. CLI: for context, what ``vce invoice --format json`` + ``vce sla --format csv`` do: two
   passes (Books -> write_json_stream, Biller -> write_sla_csv).
4. MEMORY: peak RSS growth of the product (VmHWM, reset through /proc/self/clear_refs after
   the imports and the ledger's opening, then read at the end), and RSS sampled every 10% of
   the tenants, on the data set and on one twice as large (4,000 tenants, 40,000 VMs,
   400,000 records). Not getrusage's ru_maxrss: a child's starts at its parent's RSS. For
   reference, the floor once more keeping every row in a list (what not streaming costs).

Prints a table and a JSON summary; writes bench/results/billing.json (not committed). Exit 1
when a target is missed: the product on the issue's data set takes 30 s or more; RSS grows
by more than 2 MiB from the first tenth of the tenants to the end of a run; the peak RSS
growth on twice the data is more than 1.5x the first one (proportional memory would give
2x; the first fetch of each of the five streams, up to 5,000 rows, fills more on a larger
data set, so a little growth is expected until those buffers are full). Exit 2 when the
set-up, a run or a check failed.

    .venv/bin/python bench/billing.py [--backends sqlite,postgresql] [--scale2 2] [--no-cli]
        [--cprofile] [--scale1 1] [--quick]    # about 4-10 minutes

``--quick`` (for CI): both back ends on 2% of the data set (40 tenants), no second data set,
no waiting for a quiet machine, nothing written; every check above still runs, the time and
memory targets are no error.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import csv
import datetime as dt
import hashlib
import io
import json
import os
import platform
import pstats
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The checkout's engine, not the copy installed in the venv (it may be an older layout).
sys.path.insert(0, str(ROOT / "collections"))

from ansible_collections.vce.kvm.plugins.module_utils.core.periods import Month, parse_month  # noqa: E402
from ansible_collections.vce.kvm.plugins.module_utils.finance import statement  # noqa: E402
from ansible_collections.vce.kvm.plugins.module_utils.finance.billing import (  # noqa: E402
    STREAM_BATCH,
    Biller,
    Books,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.prices import parse_prices  # noqa: E402
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import (  # noqa: E402
    backups,
    events,
    exclusions,
    incidents,
    tenants,
    usage_intervals,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger, parse_tariffs  # noqa: E402

from tests.support.ledger import ROOMY  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "billing.json"
MONTH = "2026-11"
ZONE = ZoneInfo("Asia/Almaty")
NOW = dt.datetime(2026, 12, 1, 6, 0, tzinfo=ZONE)  # the month is over, not closed
SEED = 20261124
TENANTS = 2000
VMS_PER_TENANT = 10
RECORDS = 200_000  # usage_intervals + incidents rows, the figure
QUICK_SCALE = 0.02  # a quick run: 40 tenants, 4,000 records
HOSTS = tuple(f"qemu+ssh://kvm{n:02d}.example/system" for n in range(1, 11))
CHUNK = 5000
TARGET_S = 30.0
MEMORY_RATIO_MAX = 1.5
FLAT_KIB = 2048
CHILD_TIMEOUT_S = 900
RSS_SAMPLES = 10
SANITY_SAMPLES = 3

PRICES = {
    "small": {
        "currency": "KZT",
        "vcpu_hour": "9.5",
        "ram_gib_hour": "4.75",
        "disk_gib_hour": "0.1",
        "public_ip_hour": "2",
        "zone_link_hour": "3",
        "backup_gib_hour": "0.05",
    },
    "standard": {
        "currency": "KZT",
        "vcpu_hour": "10",
        "ram_gib_hour": "5",
        "disk_gib_hour": "0.12",
        "public_ip_hour": "2.5",
        "zone_link_hour": "3",
        "backup_gib_hour": "0.045",
    },
    "large": {
        "currency": "KZT",
        "vcpu_hour": "8.333333",
        "ram_gib_hour": "4.1",
        "disk_gib_hour": "0.085",
        "public_ip_hour": "1.9",
        "zone_link_hour": "2.75",
        "backup_gib_hour": "0.04",
    },
}
# Later lists: "large" changes from the month's start (used), "standard" from December (not).
PRICE_CHANGES = {
    "large": (dt.datetime(2026, 11, 1, tzinfo=ZONE), {**PRICES["large"], "vcpu_hour": "8.25"}),
    "standard": (dt.datetime(2026, 12, 1, tzinfo=ZONE), {**PRICES["standard"], "vcpu_hour": "11"}),
}
PLAN_WEIGHTS = (("small", 45), ("standard", 40), ("large", 14), ("internal", 1))  # no prices
VCPUS = (1, 2, 2, 4, 4, 8)
RAM_MIB = (1024, 2048, 4096, 4096, 8192, 16384)


# --------------------------------------------------------------------------------------------
# the data set


@dataclass(frozen=True)
class Scale:
    label: str
    tenants: int
    records: int


class DataSet:
    """Rows of every table for one scale, from one seeded generator. Times are whole seconds
    from the month's start (UTC), turned into datetimes when the rows are written."""

    def __init__(self, scale: Scale, seed: int = SEED) -> None:
        self.scale = scale
        self.rng = random.Random(seed)
        self.month = parse_month(MONTH, ZONE)
        self.base = self.month.start
        # Month lost its `seconds` in a review; the month's length is all the data set needs.
        self.month_s = int((self.month.end - self.month.start).total_seconds())
        self.usage: list[tuple[Any, ...]] = []  # (start, tenant, host, kind, name, vm, state, ...)
        self.incidents: list[dict[str, Any]] = []
        self.exclusions: list[dict[str, Any]] = []
        self.backups: list[dict[str, Any]] = []
        self.tenants: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.facts: dict[str, int] = {}

    def at(self, seconds: int) -> dt.datetime:
        return self.base + dt.timedelta(seconds=seconds)

    def in_month(self, low: int = 0, high: int | None = None) -> int:
        return self.rng.randint(low, (self.month_s if high is None else high) - 1)

    # -- plan: how many rows each resource gets, fitted to exactly `records` --------------

    def build(self) -> DataSet:
        rng = self.rng
        plans = [name for name, _w in PLAN_WEIGHTS]
        weights = [w for _n, w in PLAN_WEIGHTS]
        trials = set(rng.sample(range(self.scale.tenants), max(1, self.scale.tenants // 100)))
        suspended = set(sorted(trials)[: max(1, len(trials) // 4)])
        resources: list[dict[str, Any]] = []

        def add(
            tenant: str, host: str, kind: str, name: str, vm: str, states: int, **more: Any
        ) -> None:
            item = {"tenant": tenant, "host": host, "kind": kind, "name": name, "vm": vm}
            resources.append({**item, "states": states, "gone": False, **more})

        for t in range(self.scale.tenants):
            name = f"tenant-{t:05d}"
            plan = rng.choices(plans, weights)[0]
            trial_start = self.in_month(0, self.month_s - 5 * 86400) if t in trials else None
            self.tenant_rows(t, name, plan, trial_start, t in suspended)
            since = {"not_before": trial_start}
            for v in range(VMS_PER_TENANT):
                host, vm = HOSTS[(t + v) % len(HOSTS)], f"vm{v:02d}"
                gone = rng.random() < 0.02  # deleted in October: every row outside the month
                add(name, host, "vm", vm, vm, rng.randint(3, 16), **since, gone=gone)
                if gone:
                    continue
                for d in range(rng.choices((0, 1, 2), (68, 27, 5))[0]):
                    add(name, host, "disk", f"{vm}-data{d}", vm, rng.randint(1, 3), **since)
                if rng.random() < 0.2:
                    add(name, host, "public_ip", f"zone-a:{vm}-ip", vm, rng.randint(1, 2), **since)
                self.vm_incidents(name, host, vm, trial_start)
                self.vm_backups(name, host, vm)
            if rng.random() < 0.05:
                add(
                    name,
                    HOSTS[t % len(HOSTS)],
                    "zone_link",
                    "link0",
                    "",
                    rng.randint(1, 2),
                    **since,
                )
        self.fit(resources, self.scale.records - len(self.incidents))
        for number, item in enumerate(resources):
            self.timeline(number, item)
        self.usage.sort(key=lambda row: (row[0], row[1]))
        self.incidents.sort(key=lambda row: (row["created_at"], row["key"]))
        for number, row in enumerate(self.incidents, start=1):
            row["id"] = number
        self.global_exclusions()
        self.facts.update(
            tenants=self.scale.tenants,
            vms=sum(r["kind"] == "vm" for r in resources),
            usage_intervals=len(self.usage),
            incidents=len(self.incidents),
            exclusions=len(self.exclusions),
            backups=len(self.backups),
            events=len(self.events),
            trials=len(trials),
            suspended_after_trial=len(suspended),
            disks=sum(r["kind"] == "disk" for r in resources),
            public_ips=sum(r["kind"] == "public_ip" for r in resources),
            zone_links=sum(r["kind"] == "zone_link" for r in resources),
            data_loss=sum(r["kind"] == "data_loss" for r in self.incidents),
        )
        return self

    def fit(self, resources: list[dict[str, Any]], budget: int) -> None:
        """Adjust the VMs' state counts (3 to 30 each) so the usage rows total `budget`."""
        vms = [r for r in resources if r["kind"] == "vm"]
        difference = budget - sum(r["states"] for r in resources)
        step = 1 if difference > 0 else -1
        for _ in range(abs(difference) * 4):
            if difference == 0:
                break
            item = self.rng.choice(vms)
            if 3 <= item["states"] + step <= 30:
                item["states"] += step
                difference -= step
        if difference:
            raise RuntimeError(f"could not fit the usage rows to {budget} (left {difference})")

    # -- rows ------------------------------------------------------------------------------

    def tenant_rows(
        self, t: int, name: str, plan: str, trial_start: int | None, suspended: bool
    ) -> None:
        created = self.at(-self.rng.randint(40, 400) * 86400)
        row = {
            "name": name,
            "customer": f"customer-{t:05d}",
            "plan": plan,
            "state": "active",
            "quotas": "{}",
            "trial_started_at": None,
            "trial_ends_at": None,
            "trial_ended_at": None,
            "created_at": created,
            "updated_at": created,
        }
        if trial_start is not None:
            start, end = self.at(trial_start), self.at(trial_start + 72 * 3600)
            row.update(
                trial_started_at=start,
                trial_ends_at=end,
                trial_ended_at=end,
                created_at=start,
                updated_at=end,
            )
            outcome = "suspended" if suspended else "active"
            self.event(name, "trial_ended", end, {"outcome": outcome})
            if suspended and t % 2 == 0:  # the others stay suspended to the month's end
                self.event(name, "tenant_resumed", end + dt.timedelta(days=2), {})
        self.tenants.append(row)

    def event(self, tenant: str, kind: str, at: dt.datetime, detail: Mapping[str, Any]) -> None:
        self.events.append(
            {
                "key": f"event-{len(self.events):07d}",
                "tenant": tenant,
                "kind": kind,
                "at": at,
                "requested_at": None,
                "detail": json.dumps(detail),
                "actor": "bench",
                "run_id": "setup",
            }
        )

    def moments(self, count: int, first: int, gone: bool) -> list[int]:
        """`count` strictly increasing moments from `first`: most in the month, some before
        it (when the resource is older) and some in December."""
        rng, result = self.rng, [first]
        for _ in range(count - 1):
            roll = rng.random()
            if gone:  # deleted before the month
                moment = rng.randint(first + 1, max(first + 2, -86400))
            elif roll < 0.05:  # a late change, after the month
                moment = self.month_s + rng.randint(0, 9 * 86400)
            elif roll < 0.15 and first < -1:  # before the month
                moment = rng.randint(first + 1, -1)
            else:
                moment = rng.randint(max(first + 1, 0), self.month_s - 1)
            result.append(moment)
        result[1:] = sorted(result[1:])
        for i in range(1, count):
            result[i] = max(result[i], result[i - 1] + 1)
        return result

    def timeline(self, number: int, item: Mapping[str, Any]) -> None:
        rng, count = self.rng, item["states"]
        if item["gone"]:
            first = -rng.randint(30, 60) * 86400
        elif item["not_before"] is not None:
            first = item["not_before"] + rng.randint(60, 6 * 3600)
        elif rng.random() < 0.75:
            first = -rng.randint(3600, 60 * 86400)
        else:
            first = self.in_month(0, self.month_s - 2 * 86400)
        times = self.moments(count, first, item["gone"])
        states = self.states(item["kind"], count, item["gone"])
        for i, (moment, quantities) in enumerate(zip(times, states, strict=True)):
            ended = times[i + 1] if i + 1 < count else None
            self.usage.append(
                (
                    moment,
                    item["tenant"],
                    item["host"],
                    item["kind"],
                    item["name"],
                    item["vm"] if quantities[0] != "absent" else "",
                    *quantities,
                    ended,
                    f"usage-{number:06d}-{i:02d}",
                )
            )

    def states(self, kind: str, count: int, gone: bool) -> list[tuple[Any, ...]]:
        """(state, vcpus, ram_mib, disk_mib, public_ips, zone_links) for each state."""
        rng = self.rng
        deleted = gone or rng.random() < 0.05
        result: list[tuple[Any, ...]] = []
        if kind == "vm":
            vcpus, ram, state = rng.choice(VCPUS), rng.choice(RAM_MIB), "running"
            disk = rng.choice((10240, 20480, 51200, 102400))
            for i in range(count):
                if i:
                    roll = rng.random()
                    if state == "running":
                        state = "stopped" if roll < 0.45 else "paused" if roll < 0.55 else state
                        if roll >= 0.55:
                            vcpus, ram = rng.choice(VCPUS), rng.choice(RAM_MIB)
                    elif state == "paused":
                        state = "running" if roll < 0.8 else "stopped"
                    else:
                        state = "running" if roll < 0.7 else state
                        if roll >= 0.7:
                            vcpus, ram, disk = rng.choice(VCPUS), rng.choice(RAM_MIB), disk * 2
                result.append((state, vcpus, ram, disk, 0, 0))
        elif kind == "disk":
            size = rng.choice((20480, 51200, 102400, 512000))
            for i in range(count):
                result.append(("present", 0, 0, size * (i + 1), 0, 0))
        else:
            ips, links = (1, 0) if kind == "public_ip" else (0, 1)
            result = [("present", 0, 0, 0, ips, links)] * count
        if deleted and count > 1:
            result[-1] = ("absent", 0, 0, 0, 0, 0)
        return result

    def incident(self, tenant: str, host: str, vm: str, start: int, **values: Any) -> None:
        row = {
            "key": f"incident-{tenant}-{vm}-{len(self.incidents):07d}",
            "tenant": tenant,
            "host": host,
            "vm": vm,
            "kind": "downtime",
            "source": "probe",
            "cause": "provider",
            "started_at": start,
            "reported_at": None,
            "confirmed_at": None,
            "ended_at": None,
            "note": "",
            "actor": "bench",
            "run_id": "setup",
            "created_at": start + 60,
            **values,
        }
        self.incidents.append(row)

    def vm_incidents(self, tenant: str, host: str, vm: str, not_before: int | None) -> None:
        rng, low = self.rng, max(0, not_before or 0) + 7 * 3600
        if rng.random() < 0.01:  # October's: skipped by the month
            start = -rng.randint(2, 20) * 86400
            self.incident(tenant, host, vm, start, ended_at=start + 1800)
        if rng.random() < 0.002:  # December's: skipped too
            start = self.month_s + rng.randint(1, 5) * 86400
            self.incident(tenant, host, vm, start, ended_at=start + 600)
        if rng.random() < 0.003:
            start = self.in_month(low, self.month_s - 86400)
            self.incident(
                tenant,
                host,
                vm,
                start,
                kind="data_loss",
                source="operator",
                reported_at=start + 600,
                confirmed_at=start + 3600,
                ended_at=start + 7200,
                note="volume lost",
            )
        if rng.random() >= 0.075:
            return
        for _ in range(rng.choices((1, 2, 3), (60, 30, 10))[0]):
            start = self.in_month(low, self.month_s - 86400)
            length = rng.choice(
                (rng.randint(60, 600), rng.randint(600, 7200), rng.randint(7200, 60000))
            )
            roll = rng.random()
            if roll < 0.6:
                self.incident(tenant, host, vm, start, ended_at=start + length)
            elif roll < 0.85:
                confirmed = start + rng.randint(600, 3600) if roll < 0.8 else None
                self.incident(
                    tenant,
                    host,
                    vm,
                    start,
                    source="report",
                    reported_at=start,
                    confirmed_at=confirmed,
                    ended_at=start + length,
                    note="customer report",
                )
            elif roll < 0.995:
                cause = "customer" if roll < 0.95 else "maintenance"
                self.incident(tenant, host, vm, start, cause=cause, ended_at=start + length)
            else:  # still open when the month ends
                self.incident(tenant, host, vm, start)
            if rng.random() < 0.1:
                self.exclusion(tenant, host, vm, "maintenance", start - 300, start + length // 2)

    def exclusion(self, tenant: str, host: str, vm: str, cause: str, start: int, end: int) -> None:
        announced = self.at(start - 3 * 86400) if cause == "maintenance" else None
        self.exclusions.append(
            {
                "key": f"exclusion-{len(self.exclusions):06d}",
                "tenant": tenant,
                "host": host,
                "vm": vm,
                "cause": cause,
                "started_at": self.at(start),
                "ended_at": self.at(end),
                "announced_at": announced,
                "note": "",
                "actor": "bench",
                "created_at": announced or self.at(end),
            }
        )

    def global_exclusions(self) -> None:
        for n, host in enumerate(HOSTS):  # one announced window per host, every tenant's
            start = (n * 3 + 2) * 86400 + 2 * 3600
            self.exclusion("", host, "", "maintenance", start, start + 2 * 3600)
        start = 17 * 86400 + 13 * 3600
        self.exclusion("", "", "", "force_majeure", start, start + 1800)
        self.exclusion("", HOSTS[0], "", "maintenance", -5 * 86400, -5 * 86400 + 3600)

    def vm_backups(self, tenant: str, host: str, vm: str) -> None:
        rng = self.rng
        if rng.random() >= 0.05:
            return
        size = rng.randint(1, 40) * 2**30
        for week in range(-1, 5):
            started = week * 7 * 86400 + rng.randint(0, 6 * 3600)
            finished = started + rng.randint(60, 3600)
            if finished >= self.month_s:
                break
            pruned = self.at(finished + 21 * 86400) if week < 1 else None
            ok = rng.random() >= 0.05
            self.backups.append(
                {
                    "key": f"backup-{tenant}-{vm}-{week}",
                    "tenant": tenant,
                    "host": host,
                    "vm": vm,
                    "schedule": "weekly",
                    "backup_id": f"b{week + 1}",
                    "kind": "full",
                    "status": "ok" if ok else "failed",
                    "started_at": self.at(started),
                    "finished_at": self.at(finished),
                    "duration_ms": (finished - started) * 1000,
                    "size_bytes": size if ok else 0,
                    "error": None if ok else "job failed",
                    "pruned_at": pruned,
                    "run_id": "setup",
                }
            )

    # -- writing -----------------------------------------------------------------------------

    def usage_rows(self) -> Iterator[dict[str, Any]]:
        names = (
            "tenant",
            "host",
            "kind",
            "name",
            "vm",
            "state",
            "vcpus",
            "ram_mib",
            "disk_mib",
            "public_ips",
            "zone_links",
        )
        for row in self.usage:
            values = dict(zip(names, row[1:12], strict=True))
            ended = row[12]
            values.update(
                key=row[13],
                started_at=self.at(row[0]),
                ended_at=None if ended is None else self.at(ended),
                source="reconcile" if row[0] % 20 == 0 else "run",
                run_id=f"run-{row[0] // 3600}",
                actor="bench",
            )
            yield values

    def incident_rows(self) -> Iterator[dict[str, Any]]:
        for row in self.incidents:
            yield {
                key: self.at(value) if key.endswith("_at") and value is not None else value
                for key, value in row.items()
            }


def insert_chunks(connection: Any, table: Any, rows: Iterable[dict[str, Any]]) -> int:
    written, chunk = 0, []
    for row in rows:
        chunk.append(row)
        if len(chunk) == CHUNK:
            connection.execute(table.insert(), chunk)
            written, chunk = written + len(chunk), []
    if chunk:
        connection.execute(table.insert(), chunk)
        written += len(chunk)
    return written


def populate(url: str, scale: Scale) -> dict[str, Any]:
    """A fresh ledger at `url` holding the data set of `scale`; returns its facts."""
    start = time.perf_counter()
    data = DataSet(scale).build()
    built = time.perf_counter() - start
    ledger = Ledger.open(url, create=True, now=NOW, actor="bench", run_id="setup")
    catalog = {
        name: {"quotas": ROOMY, "trial_hours": 72, "prices": prices}
        for name, prices in PRICES.items()
    }
    catalog["internal"] = {"quotas": ROOMY, "trial_hours": 0}
    with ledger.store.locked("(bench)") as connection:
        ledger.put_tariffs(connection, parse_tariffs(catalog))
        for plan, (effective, prices) in PRICE_CHANGES.items():
            ledger.put_prices(connection, plan, parse_prices(prices), effective)
        insert_chunks(connection, tenants, data.tenants)
        insert_chunks(connection, events, data.events)
    tables = (
        (usage_intervals, data.usage_rows()),
        (incidents, data.incident_rows()),
        (exclusions, data.exclusions),
        (backups, data.backups),
    )
    for table, rows in tables:
        with ledger.store.read() as connection:
            insert_chunks(connection, table, rows)
    with ledger.store.read() as connection:
        stored = {
            t.name: connection.execute(sa.select(sa.func.count()).select_from(t)).scalar()
            for t in (tenants, usage_intervals, incidents, exclusions, backups, events)
        }
    ledger.store.dispose()
    facts = dict(data.facts)
    facts["stored"] = stored
    facts["records"] = stored["usage_intervals"] + stored["incidents"]
    facts["generate_s"] = round(built, 2)
    facts["setup_s"] = round(time.perf_counter() - start, 2)
    if facts["records"] != scale.records or stored["tenants"] != scale.tenants:
        raise RuntimeError(f"data set of {scale} came out as {stored}")
    return facts


# --------------------------------------------------------------------------------------------
# measuring (each in a child process)


def status_kib(field: str) -> int:
    """A figure of /proc/self/status in KiB (VmRSS: now, VmHWM: peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_kib() -> int:
    return status_kib("VmRSS")


def reset_peak_kib() -> int:
    """Reset this process's peak RSS to its RSS now (Linux >= 4.0); returns that peak.
    Not getrusage's ru_maxrss: it starts from the RSS of the process that started us (the
    exec'ing parent's, which holds the data set) and cannot be reset."""
    Path("/proc/self/clear_refs").write_text("5")
    return status_kib("VmHWM")


def peak_kib() -> int:
    return status_kib("VmHWM")


def open_ledger(url: str) -> tuple[Ledger, Month]:
    ledger = Ledger.open(url, now=NOW, actor="bench", run_id="bench")
    return ledger, parse_month(MONTH, ZONE)


def floor_queries(biller: Biller, connection: Any) -> dict[str, Any]:
    """The five queries of Biller.tenant_months, as it builds them, in tenant order."""
    start, end = biller.month.start, biller.horizon

    def ordered(query: Any, column: Any) -> Any:
        return query.order_by(biller.ordered(connection, column))

    return {
        "tenants": ordered(sa.select(tenants), tenants.c.name),
        "usage_intervals": ordered(
            sa.select(usage_intervals).where(
                usage_intervals.c.started_at < end,
                sa.or_(usage_intervals.c.ended_at.is_(None), usage_intervals.c.ended_at > start),
            ),
            usage_intervals.c.tenant,
        ),
        "backups": ordered(
            sa.select(
                backups.c.tenant,
                backups.c.host,
                backups.c.vm,
                backups.c.size_bytes,
                backups.c.finished_at,
                backups.c.pruned_at,
            ).where(
                backups.c.status == "ok",
                backups.c.finished_at < end,
                sa.or_(backups.c.pruned_at.is_(None), backups.c.pruned_at > start),
            ),
            backups.c.tenant,
        ),
        "incidents": ordered(
            sa.select(incidents).where(
                incidents.c.started_at < biller.month.end,
                sa.or_(incidents.c.ended_at.is_(None), incidents.c.ended_at > start),
            ),
            incidents.c.tenant,
        ),
        "exclusions": ordered(
            sa.select(exclusions).where(
                exclusions.c.tenant != "",
                exclusions.c.started_at < end,
                exclusions.c.ended_at > start,
            ),
            exclusions.c.tenant,
        ),
    }


def child_floor(url: str, hold: bool = False) -> dict[str, Any]:
    """The floor; with `hold`, every row is also kept in a list (what memory would cost if
    the rows were not streamed: a reference for the product's peak)."""
    ledger, month = open_ledger(url)
    biller = Biller(ledger, month)
    rows: dict[str, int] = {}
    held: list[Any] = []
    rss0 = reset_peak_kib()
    t0, cpu0 = time.perf_counter(), time.process_time()
    with ledger.store.read() as connection:
        streaming = connection.execution_options(stream_results=True, yield_per=STREAM_BATCH)
        for name, query in floor_queries(biller, connection).items():
            count = 0
            for row in streaming.execute(query):
                count += 1
                if hold:
                    held.append(row)
            rows[name] = count
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "cpu_s": time.process_time() - cpu0,
        "rows": rows,
        "rows_total": sum(rows.values()),
        "peak_rss_growth_kib": peak_kib() - rss0,
    }


class Checked:
    """Passes invoice documents on, checking each and writing its SLA rows on the way."""

    def __init__(self, sla_out: Any, tenants_expected: int) -> None:
        self.sla = csv.writer(sla_out)
        self.sla.writerow(statement.SLA_COLUMNS)
        self.expected = tenants_expected
        self.every = max(1, tenants_expected // RSS_SAMPLES)
        self.count = self.sla_rows = self.lines = 0
        self.previous = ""
        self.errors: list[str] = []
        self.totals = Decimal(0)
        self.discounts = Decimal(0)
        self.warnings = 0
        self.rss: list[tuple[int, int]] = []

    def check(self, doc: Mapping[str, Any]) -> None:
        subtotal, total = Decimal(doc["subtotal"]), Decimal(doc["total"])
        discounts = sum((Decimal(d["amount"]) for d in doc["discounts"]), Decimal(0))
        if total < 0 or total != subtotal - discounts or discounts < 0:
            self.errors.append(f"{doc['tenant']}: {subtotal} - {discounts} -> {total}")
        if doc["tenant"] <= self.previous:
            self.errors.append(f"{doc['tenant']} after {self.previous}: out of order")
        self.previous = doc["tenant"]
        self.totals += total
        self.discounts += discounts
        self.lines += len(doc["lines"])
        self.warnings += len(doc["warnings"])

    def __call__(self, documents: Iterable[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        for doc in documents:
            self.check(doc)
            for row in statement.sla_rows(doc):
                self.sla.writerow([statement.cell_text(row.get(c)) for c in statement.SLA_COLUMNS])
                self.sla_rows += 1
            self.count += 1
            if self.count % self.every == 0:
                self.rss.append((self.count, rss_kib()))
            yield doc


def child_product(url: str, workdir: Path, tenants_expected: int) -> dict[str, Any]:
    ledger, month = open_ledger(url)
    json_path, sla_path = workdir / "invoices.json", workdir / "sla.csv"
    rss0 = reset_peak_kib()
    t0, cpu0 = time.perf_counter(), time.process_time()
    with (
        json_path.open("w", encoding="utf-8", newline="") as json_out,
        sla_path.open("w", encoding="utf-8", newline="") as sla_out,
    ):
        checked = Checked(sla_out, tenants_expected)
        written = statement.write_json_stream(checked(Books(ledger, month).invoices()), json_out)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    rss1 = peak_kib()
    errors = list(checked.errors[:10])
    if written != tenants_expected or checked.count != tenants_expected:
        errors.append(f"{written} invoices written, {tenants_expected} tenants")
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "invoices": written,
        "sla_rows": checked.sla_rows,
        "lines": checked.lines,
        "total_sum": str(checked.totals),
        "discount_sum": str(checked.discounts),
        "warnings": checked.warnings,
        "rss_before_kib": rss0,
        "peak_rss_kib": rss1,
        "peak_rss_growth_kib": rss1 - rss0,
        "rss_samples": checked.rss,
        "json_bytes": json_path.stat().st_size,
        "sla_bytes": sla_path.stat().st_size,
        "json_sha256": sha256_of(json_path),
        "errors": errors,
        "spot_checks": spot_check(ledger, month, json_path, sla_path),
    }


def canonical(document: Mapping[str, Any]) -> str:
    """A document as text with its incident lists sorted by id: the product lists a tenant's
    incidents in the order the database returns them (its queries order by tenant only)."""
    copy = json.loads(json.dumps(document, default=str))
    copy["incidents"].sort(key=lambda row: row["id"])
    for vm in copy["availability"]:
        vm["incidents"].sort()
    for discount in copy["discounts"]:
        discount.get("incidents", []).sort()
    return json.dumps(copy, sort_keys=True)


def spot_check(ledger: Ledger, month: Month, json_path: Path, sla_path: Path) -> dict[str, Any]:
    """Untimed, after the run: the files read back; a few tenants' invoices computed alone
    (Books.invoices(tenant)) compared with the streamed ones."""
    documents = json.loads(json_path.read_text(encoding="utf-8"))
    with sla_path.open(encoding="utf-8", newline="") as handle:
        sla_rows = sum(1 for _row in csv.reader(handle)) - 1
    digest = hashlib.sha256()
    in_db_order = 0
    for document in documents:
        text = canonical(document)
        digest.update(text.encode())
        in_db_order += text != json.dumps(document, sort_keys=True)
    rng = random.Random(SEED)
    picked = rng.sample(range(len(documents)), min(SANITY_SAMPLES, len(documents)))
    same = identical = 0
    for index in picked:
        alone = next(iter(Books(ledger, month).invoices(documents[index]["tenant"])))
        same += canonical(alone) == canonical(documents[index])
        identical += json.dumps(alone, sort_keys=True, default=str) == json.dumps(
            documents[index], sort_keys=True
        )
    return {
        "json_documents": len(documents),
        "sla_csv_rows": sla_rows,
        "vm_statements": sum(len(d["availability"]) for d in documents),
        "canonical_sha256": digest.hexdigest(),
        "incident_lists_not_in_id_order": in_db_order,
        "alone_checked": len(picked),
        "alone_equal": same,
        "alone_identical_text": identical,
    }


def child_cli(url: str, workdir: Path) -> dict[str, Any]:
    """What `vce invoice --format json` then `vce sla --format csv` do: two passes."""
    ledger, month = open_ledger(url)
    out: dict[str, Any] = {}
    rss0 = reset_peak_kib()
    t0 = time.perf_counter()
    with (workdir / "cli-invoices.json").open("w", encoding="utf-8", newline="") as handle:
        out["invoices"] = statement.write_json_stream(Books(ledger, month).invoices(), handle)
    t1 = time.perf_counter()
    with (workdir / "cli-sla.csv").open("w", encoding="utf-8", newline="") as handle:
        out["sla_rows"] = statement.write_sla_csv(Biller(ledger, month).invoices(), handle)
    t2 = time.perf_counter()
    out.update(
        invoice_json_s=t1 - t0,
        sla_csv_s=t2 - t1,
        wall_s=t2 - t0,
        peak_rss_growth_kib=peak_kib() - rss0,
        same_json=sha256_of(workdir / "cli-invoices.json") == sha256_of(workdir / "invoices.json")
        if (workdir / "invoices.json").exists()
        else None,
    )
    return out


def child_profile(url: str, workdir: Path) -> dict[str, Any]:
    ledger, month = open_ledger(url)
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    with (workdir / "profiled.json").open("w", encoding="utf-8", newline="") as handle:
        count = statement.write_json_stream(Books(ledger, month).invoices(), handle)
    profiler.disable()
    wall = time.perf_counter() - t0
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(35)
    stats.sort_stats("cumulative").print_stats(45)
    return {"invoices": count, "wall_s": wall, "report": text.getvalue()}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def child_main(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    if args.child in ("floor", "held"):
        result = child_floor(args.url, hold=args.child == "held")
    elif args.child == "product":
        result = child_product(args.url, workdir, args.tenants)
    elif args.child == "cli":
        result = child_cli(args.url, workdir)
    else:
        result = child_profile(args.url, workdir)
    print(json.dumps(result))
    return 0


# --------------------------------------------------------------------------------------------
# running


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def cpu_ticks() -> list[int]:
    return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]


def host_busy(seconds: float = 1.0) -> float:
    """Cores busy (any process) over the next `seconds`."""
    before = cpu_ticks()
    time.sleep(seconds)
    return cores_busy(before, cpu_ticks())


def cores_busy(before: list[int], after: list[int]) -> float:
    total = sum(after) - sum(before)
    idle = after[3] + after[4] - before[3] - before[4]
    return round((1.0 - idle / max(1, total)) * (os.cpu_count() or 1), 2)


def wait_quiet(limit_s: float = 20.0, cores: float = 0.3) -> float:
    """Wait (at most `limit_s`) until other processes use less than `cores`; the last figure."""
    busy = host_busy()
    for _ in range(int(limit_s)):
        if busy < cores:
            break
        busy = host_busy()
    return busy


def run_child(
    mode: str, url: str, workdir: Path, tenants_expected: int, quiet: bool = True
) -> dict[str, Any]:
    """One measurement in a fresh process; with quiet, first wait (bounded) for a quiet machine
    (not for `held`: it measures memory only)."""
    busy_before = wait_quiet() if quiet and mode != "held" else host_busy(0.5)
    stat0 = cpu_ticks()
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        mode,
        "--url",
        url,
        "--workdir",
        str(workdir),
        "--tenants",
        str(tenants_expected),
    ]
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False, cwd=ROOT
    )
    elapsed = time.perf_counter() - t0
    usage1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    child_cpu = usage1.ru_utime + usage1.ru_stime - usage0.ru_utime - usage0.ru_stime
    if proc.returncode != 0:
        raise RuntimeError(f"child {mode} failed ({proc.returncode}): {proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    stat1 = cpu_ticks()
    result["process_s"] = elapsed
    result["process_cpu_s"] = child_cpu
    result["machine_cores_busy"] = cores_busy(stat0, stat1)
    # Other processes (PostgreSQL's server among them) over the child's life.
    result["other_cores"] = round(max(0.0, result["machine_cores_busy"] - child_cpu / elapsed), 2)
    result["busy_before"] = busy_before
    return result


@contextlib.contextmanager
def backend(name: str, base: Path) -> Iterator[Any]:
    """Yields a function giving a fresh, empty database URL for a label."""
    if name == "sqlite":

        def sqlite_url(label: str) -> str:
            return f"sqlite:///{base / f'ledger-{label}.sqlite3'}"

        yield sqlite_url
        return
    from tools.postgres import PrivatePostgres

    # Its own temp dir: the server runs as the postgres user, who must be able to enter it.
    server_base = Path(tempfile.mkdtemp(prefix="vce-billing-pg-", dir="/tmp"))
    server = PrivatePostgres(server_base)
    try:
        server.start()

        def postgres_url(label: str) -> str:
            return server.create_database(f"billing_{label}")

        yield postgres_url
    finally:
        server.stop()
        shutil.rmtree(server_base, ignore_errors=True)


def server_version(url: str) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "sqlite":
                return "SQLite " + connection.exec_driver_sql("select sqlite_version()").scalar()
            return connection.exec_driver_sql("show server_version").scalar()
    finally:
        engine.dispose()


def measure_backend(
    name: str, base: Path, scales: list[Scale], cli: bool, profile: bool, quiet: bool = True
) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": {}}
    base.mkdir(parents=True, exist_ok=True)
    with backend(name, base) as fresh_url:
        for scale in scales:
            label = scale.label
            url = fresh_url(label)
            workdir = base / f"{name}-{label}"
            workdir.mkdir()
            log(f"{name} {label}: generating {scale.tenants} tenants, {scale.records} records")
            run: dict[str, Any] = {"scale": {"tenants": scale.tenants, "records": scale.records}}
            run["data"] = populate(url, scale)
            out.setdefault("version", server_version(url))
            log(f"{name} {label}: data set written in {run['data']['setup_s']} s; floor ...")
            run["floor"] = run_child("floor", url, workdir, scale.tenants, quiet)
            log(f"{name} {label}: floor {run['floor']['wall_s']:.2f} s; product ...")
            run["product"] = run_child("product", url, workdir, scale.tenants, quiet)
            run["held"] = run_child("held", url, workdir, scale.tenants, quiet)
            product = run["product"]
            product["rows_per_s"] = run["floor"]["rows_total"] / product["wall_s"]
            product["records_per_s"] = scale.records / product["wall_s"]
            product["tenants_per_s"] = scale.tenants / product["wall_s"]
            log(
                f"{name} {label}: product {product['wall_s']:.2f} s, "
                f"RSS growth {product['peak_rss_growth_kib'] / 1024:.1f} MiB"
            )
            if cli and label == "x1":
                run["cli"] = run_child("cli", url, workdir, scale.tenants, quiet)
                log(f"{name} {label}: CLI's two passes {run['cli']['wall_s']:.2f} s")
            if profile and label == "x1":
                run["profile"] = run_child("profile", url, workdir, scale.tenants, quiet)
            for path in workdir.glob("*"):
                path.unlink()
            out["runs"][label] = run
    return out


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
    import psycopg

    return {
        "nproc": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024**2, 1),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlalchemy": sa.__version__,
        "sqlite": sqlite3.sqlite_version,
        "psycopg": psycopg.__version__,
    }


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets: the time on the issue's data set; memory flat while the rows
    stream through (RSS from the first tenth of the tenants to the end) and not growing like
    the data set (peak growth on 2x data at most 1.5x the 1x figure; held rows: 2x)."""
    found = []
    for name, figures in results["backends"].items():
        runs = figures.get("runs", {})
        for label, run in runs.items():
            seconds = run["product"]["wall_s"]
            found.append(
                {
                    "backend": name,
                    "what": f"{label}: product < {TARGET_S:.0f} s",
                    "value": f"{seconds:.2f} s",
                    "pass": seconds < TARGET_S,
                    "binding": label == "x1",
                }
            )
            samples = run["product"]["rss_samples"]
            drift = samples[-1][1] - samples[0][1]
            found.append(
                {
                    "backend": name,
                    "what": f"{label}: RSS from tenant {samples[0][0]} to {samples[-1][0]}, "
                    f"<= {FLAT_KIB // 1024} MiB more",
                    "value": f"{drift / 1024:+.2f} MiB",
                    "pass": drift <= FLAT_KIB,
                    "binding": True,
                }
            )
        if len(runs) == 2:
            small, large = sorted(runs.values(), key=lambda r: r["scale"]["tenants"])
            low = small["product"]["peak_rss_growth_kib"]
            high = large["product"]["peak_rss_growth_kib"]
            ratio = high / max(low, 1)
            held = large["held"]["peak_rss_growth_kib"] / max(
                small["held"]["peak_rss_growth_kib"], 1
            )
            found.append(
                {
                    "backend": name,
                    "what": f"peak RSS growth on {large['scale']['tenants']} tenants / on "
                    f"{small['scale']['tenants']}, <= {MEMORY_RATIO_MAX}",
                    "value": f"{high / 1024:.1f} / {low / 1024:.1f} MiB = {ratio:.2f} "
                    f"(rows held in a list: {held:.2f})",
                    "pass": ratio <= MEMORY_RATIO_MAX,
                    "binding": True,
                }
            )
    return found


def table(results: dict[str, Any], labels: list[str]) -> list[str]:
    names = list(results["backends"])
    lines = ["| | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]

    def row(title: str, pick: Any) -> None:
        cells = []
        for name in names:
            try:
                cells.append(pick(results["backends"][name]["runs"]))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("")
        if any(cells):
            lines.append(f"| {title} | " + " | ".join(cells) + " |")

    for x in labels:
        row(
            f"{x}: tenants / records (usage + incidents)",
            lambda r, x=x: f"{r[x]['data']['tenants']:,} / {r[x]['data']['records']:,}",
        )
        row(
            f"{x}: rows the month's five queries return",
            lambda r, x=x: f"{r[x]['floor']['rows_total']:,}",
        )
        row(f"{x}: floor, streaming those rows, s", lambda r, x=x: f"{r[x]['floor']['wall_s']:.2f}")
        row(
            f"{x}: **product**, invoices JSON + SLA CSV, s",
            lambda r, x=x: f"**{r[x]['product']['wall_s']:.2f}**",
        )
        row(f"{x}: product CPU, s", lambda r, x=x: f"{r[x]['product']['cpu_s']:.2f}")
        row(
            f"{x}: product / floor",
            lambda r, x=x: f"{r[x]['product']['wall_s'] / r[x]['floor']['wall_s']:.1f}x",
        )
        row(f"{x}: rows/s (rows read / s)", lambda r, x=x: f"{r[x]['product']['rows_per_s']:,.0f}")
        row(f"{x}: records/s", lambda r, x=x: f"{r[x]['product']['records_per_s']:,.0f}")
        row(f"{x}: tenants/s", lambda r, x=x: f"{r[x]['product']['tenants_per_s']:,.1f}")
        row(
            f"{x}: peak RSS growth, MiB",
            lambda r, x=x: f"{r[x]['product']['peak_rss_growth_kib'] / 1024:.1f}",
        )
        row(
            f"{x}: for reference, the floor holding every row in a list: peak RSS growth, MiB",
            lambda r, x=x: f"{r[x]['held']['peak_rss_growth_kib'] / 1024:.1f}",
        )
        row(
            f"{x}: RSS before / after the first tenth of the tenants / at the end, MiB",
            lambda r, x=x: (
                f"{r[x]['product']['rss_before_kib'] / 1024:.1f} / "
                f"{r[x]['product']['rss_samples'][0][1] / 1024:.1f} / "
                f"{r[x]['product']['rss_samples'][-1][1] / 1024:.1f}"
            ),
        )
        row(
            f"{x}: CLI's two passes (invoice json, sla csv), s",
            lambda r, x=x: f"{r[x]['cli']['invoice_json_s']:.2f} + {r[x]['cli']['sla_csv_s']:.2f}",
        )
        row(
            f"{x}: JSON / SLA CSV written, MB",
            lambda r, x=x: (
                f"{r[x]['product']['json_bytes'] / 1e6:.1f} / "
                f"{r[x]['product']['sla_bytes'] / 1e6:.1f}"
            ),
        )
        row(
            f"{x}: other processes' cores during the product (PostgreSQL's server included)",
            lambda r, x=x: f"{r[x]['product']['other_cores']:.2f}",
        )
        row(
            f"{x}: data set generated + written (untimed), s",
            lambda r, x=x: f"{r[x]['data']['setup_s']:.1f}",
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--scale1", type=float, default=1.0, help="the data set (1: the issue's)")
    parser.add_argument("--scale2", type=float, default=2.0, help="second data set (0: none)")
    parser.add_argument("--no-cli", action="store_true", help="skip the CLI's two passes")
    parser.add_argument("--cprofile", action="store_true", help="also profile the product (x1)")
    parser.add_argument("--child", choices=("floor", "held", "product", "cli", "profile"))
    parser.add_argument("--url")
    parser.add_argument("--workdir")
    parser.add_argument("--tenants", type=int, default=TENANTS)
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke run: 2%% of the data, nothing written"
    )
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args)
    if args.quick:
        args.scale1, args.scale2 = QUICK_SCALE, 0.0

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    begin = time.perf_counter()
    scales = [Scale("x1", round(TENANTS * args.scale1), round(RECORDS * args.scale1))]
    if args.scale2:
        factor = args.scale1 * args.scale2
        scales.append(Scale(f"x{args.scale2:g}", round(TENANTS * factor), round(RECORDS * factor)))
    results: dict[str, Any] = {
        "benchmark": "billing",
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "month": MONTH,
        "time_zone": ZONE.key,
        "now": NOW.isoformat(),
        "seed": SEED,
        "machine": machine(),
        "code": code_version(),
        "backends": {},
    }
    errors: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="vce-billing-", dir="/tmp"))
    try:
        for name in args.backends.split(","):
            try:
                results["backends"][name] = measure_backend(
                    name, base / name, scales, not args.no_cli, args.cprofile, not args.quick
                )
            except Exception as error:
                errors.append(f"{name}: {type(error).__name__}: {error}")
                log(f"FAILED on {name}: {error}\n{traceback.format_exc()}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    results["total_s"] = time.perf_counter() - begin
    for name, figures in results["backends"].items():
        for label, run in figures.get("runs", {}).items():
            product = run["product"]
            errors += [f"{name} {label}: {e}" for e in product["errors"]]
            spot = product["spot_checks"]
            if spot["alone_equal"] != spot["alone_checked"]:
                errors.append(f"{name} {label}: invoices computed alone differ: {spot}")
            complete = (
                spot["json_documents"] == run["scale"]["tenants"]
                and spot["sla_csv_rows"] == product["sla_rows"] == spot["vm_statements"] > 0
            )
            if not complete:
                errors.append(f"{name} {label}: output files incomplete: {spot}")
    digests: dict[str, dict[str, str]] = {}
    for name, figures in results["backends"].items():
        for label, run in figures.get("runs", {}).items():
            digests.setdefault(label, {})[name] = run["product"]["spot_checks"]["canonical_sha256"]
    results["same_invoices_across_backends"] = {
        label: len(set(d.values())) == 1 for label, d in digests.items() if len(d) > 1
    }
    errors += [
        f"{label}: the invoices differ between back ends"
        for label, same in results["same_invoices_across_backends"].items()
        if not same
    ]
    results["verdicts"] = verdicts(results)
    results["errors"] = errors
    if not args.quick:  # a smoke run's figures are no results
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")

    summary = {k: v for k, v in results.items() if k != "backends"}
    summary["figures"] = {
        name: {
            label: {
                "records": run["data"]["records"],
                "rows_read": run["floor"]["rows_total"],
                "floor_s": round(run["floor"]["wall_s"], 3),
                "product_s": round(run["product"]["wall_s"], 3),
                "rows_per_s": round(run["product"]["rows_per_s"]),
                "tenants_per_s": round(run["product"]["tenants_per_s"], 1),
                "peak_rss_growth_mib": round(run["product"]["peak_rss_growth_kib"] / 1024, 1),
                "rss_from_first_tenth_to_end_mib": round(
                    (run["product"]["rss_samples"][-1][1] - run["product"]["rss_samples"][0][1])
                    / 1024,
                    2,
                ),
                "held_rows_peak_rss_growth_mib": round(
                    run["held"]["peak_rss_growth_kib"] / 1024, 1
                ),
                "cli_two_passes_s": round(run["cli"]["wall_s"], 3) if "cli" in run else None,
            }
            for label, run in f.get("runs", {}).items()
        }
        for name, f in results["backends"].items()
    }
    print(json.dumps(summary, indent=2, default=str))
    m = results["machine"]
    print(
        f"\nMachine: {m['nproc']} CPUs, {m['memory_gib']} GiB RAM, {m['cpu']}, kernel "
        f"{m['kernel']}, Python {m['python']}, SQLAlchemy {m['sqlalchemy']}, SQLite "
        f"{m['sqlite']}, psycopg {m['psycopg']}, PostgreSQL "
        f"{results['backends'].get('postgresql', {}).get('version', '-')}"
    )
    print("\n".join(table(results, [s.label for s in scales])))
    for verdict in results["verdicts"]:
        print(
            f"{verdict['backend']}: {verdict['what']}: {verdict['value']}: "
            f"{'PASS' if verdict['pass'] else 'MISS'}"
        )
    for name, figures in results["backends"].items():
        profile = figures.get("runs", {}).get("x1", {}).get("profile")
        if profile:
            print(f"\ncProfile, {name}, x1 ({profile['wall_s']:.1f} s under the profiler):")
            print(profile["report"])
    print(f"total {results['total_s']:.0f} s" + ("" if args.quick else f"; results: {RESULTS}"))
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    if errors:
        return 2
    met = all(v["pass"] for v in results["verdicts"] if v["binding"])
    return 0 if met or args.quick else 1


def code_version() -> str:
    def git(*argv: str) -> str:
        proc = subprocess.run(
            ["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False, timeout=30
        )
        return proc.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (
        " + uncommitted plugins/ changes" if git("status", "--porcelain", "plugins") else ""
    )


if __name__ == "__main__":
    sys.exit(main())
