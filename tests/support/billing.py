"""Billing scenarios for tests: tenants on a priced plan, usage and incidents at given moments
(an injected clock, never sleeping), and the month's invoice read back."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from zoneinfo import ZoneInfo

from ansible_collections.vce.kvm.plugins.module_utils.core.periods import parse_month
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.tenant import run_tenant
from ansible_collections.vce.kvm.plugins.module_utils.finance.billing import Books
from ansible_collections.vce.kvm.plugins.module_utils.finance.sla import Incidents
from ansible_collections.vce.kvm.plugins.module_utils.ledger.metering import (
    Meter,
    Metering,
    UsageChange,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.support.ledger import plan_catalog

ALMATY = ZoneInfo("Asia/Almaty")
HOST = "qemu+ssh://kvm1.example/system"
# A VM of 2 vCPU, 4 GiB RAM and a 10 GiB disk costs 2*10 + 4*5 + 10*0.1 = 41 KZT an hour.
PRICES = {
    "currency": "KZT",
    "vcpu_hour": "10",
    "ram_gib_hour": "5",
    "disk_gib_hour": "0.1",
    "public_ip_hour": "2",
    "zone_link_hour": "3",
    "backup_gib_hour": "0.05",
}
WEB = Meter("running", "web", vcpus=2, ram_mib=4096, disk_mib=10240)
HOURLY = Decimal(41)


def local(*parts: int) -> dt.datetime:
    """A moment on the provider's wall clock."""
    return dt.datetime(*parts, tzinfo=ALMATY)


class Scenario:
    def __init__(self, url: str, tenant: str = "acme", trial_hours: int = 0) -> None:
        self.url = url
        self.tenant = tenant
        catalog = plan_catalog("std", trial_hours=trial_hours)
        catalog["std"]["prices"] = PRICES
        run_tenant(
            {"ledger_url": url, "name": tenant, "customer": f"c-{tenant}", "plan": "std",
             "plans": catalog}
        )  # fmt: skip

    def ledger(self, now: dt.datetime) -> Ledger:
        return Ledger.open(self.url, now=now, actor="test", run_id=f"run-{now.isoformat()}")

    def usage(self, at: dt.datetime, meter: Meter = WEB, name: str = "web", kind: str = "vm",
              host: str = HOST) -> int:  # fmt: skip
        change = UsageChange(self.tenant, host, kind, name, "changed", at, meter)
        return Metering(self.ledger(at)).record([change])

    def start_trial(self, at: dt.datetime) -> None:
        """The trial clock starts at `at` (the first VM start, as the engine does it)."""
        ledger = self.ledger(at)
        with ledger.store.locked(self.tenant) as connection:
            ledger.start_trial(connection, ledger.require_tenant(connection, self.tenant))

    def incidents(self, now: dt.datetime) -> Incidents:
        return Incidents(self.ledger(now))

    def down(self, start: dt.datetime, end: dt.datetime, vm: str = "web", **extra) -> dict:
        return self.incidents(end).open(
            self.tenant, vm, HOST, start, source="probe", ended_at=end, **extra
        )

    def invoice(self, month: str, now: dt.datetime | None = None) -> dict:
        ledger_now = now or dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
        month_def = parse_month(month, ALMATY)
        found = list(Books(self.ledger(ledger_now), month_def).invoices(self.tenant))
        assert len(found) == 1
        return found[0]


def total(document: dict) -> Decimal:
    return Decimal(document["total"])


def discount(document: dict, kind: str) -> Decimal:
    return sum(
        (Decimal(d["amount"]) for d in document["discounts"] if d["kind"] == kind), Decimal(0)
    )
