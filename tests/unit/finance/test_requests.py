"""Request clocks of the terms (5.1) on a SQLite ledger: log, fulfil by a moment or by a run,
the month's report from the three sources, and the summary per kind."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError, VceError
from ansible_collections.vce.kvm.plugins.module_utils.core.periods import Month
from ansible_collections.vce.kvm.plugins.module_utils.finance.requests import (
    TARGETS,
    RequestLog,
    clock,
    summary,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.metering import Metering
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.support.ledger import register

UTC = dt.UTC
T0 = dt.datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
NOVEMBER = Month(2026, 11, ZoneInfo("UTC"))


@pytest.fixture
def log(ledger_url):
    register(ledger_url, "acme")
    return RequestLog(Ledger.open(ledger_url, now=T0 + dt.timedelta(hours=6), actor="support"))


def test_a_logged_request_is_open_then_met_when_fulfilled_within_target(log):
    logged = log.log("acme", "zone_link", "CRM-1", T0, note="link zone b")
    assert logged["status"] == "missed (open)"  # six hours later, nothing done: late already
    assert logged["note"] == "link zone b"
    assert logged["target_minutes"] == 30
    done = log.fulfil("acme", "CRM-1", at=T0 + dt.timedelta(minutes=25))
    assert done["status"] == "met"
    assert done["elapsed_minutes"] == "25.0"
    assert done["fulfilled_at"].startswith("2026-11-10T09:25")


def test_fulfilled_late_is_missed(log):
    log.log("acme", "password", "CRM-2", T0)
    done = log.fulfil("acme", "CRM-2", at=T0 + dt.timedelta(minutes=20, seconds=30))
    assert (done["status"], done["elapsed_minutes"]) == ("missed", "20.5")


def test_logging_again_is_idempotent_but_a_different_request_under_the_reference_is_refused(log):
    first = log.log("acme", "minor_fault", "CRM-3", T0)
    assert log.log("acme", "minor_fault", "CRM-3", T0) == first
    with pytest.raises(SpecError) as error:
        log.log("acme", "critical_fault", "CRM-3", T0)
    assert error.value.field == "reference"
    assert "already logged as minor_fault" in error.value.reason


BAD = [
    (("acme", "coffee", "CRM-4"), "kind"),
    (("acme", "password", ""), "reference"),
    (("acme", "password", "x" * 129), "reference"),
    (("Bad Name", "password", "CRM-4"), "tenant"),
]


def test_bad_requests_are_refused_naming_the_field(log):
    for (tenant, kind, reference), field in BAD:
        with pytest.raises(SpecError) as error:
            log.log(tenant, kind, reference, T0)
        assert error.value.field == field


def test_a_request_of_an_unknown_tenant_is_refused(log):
    with pytest.raises(VceError, match="'nobody' is not in the ledger"):
        log.log("nobody", "password", "CRM-5", T0)


def test_fulfil_refuses_what_cannot_be_true(log):
    log.log("acme", "password", "CRM-6", T0)
    with pytest.raises(SpecError) as error:
        log.fulfil("acme", "CRM-6")
    assert error.value.field == "fulfilled"
    with pytest.raises(SpecError) as error:
        log.fulfil("acme", "CRM-6", at=T0, run="r1")
    assert error.value.field == "fulfilled"
    with pytest.raises(SpecError) as error:
        log.fulfil("acme", "CRM-404", at=T0)
    assert error.value.field == "reference"
    with pytest.raises(SpecError) as error:
        log.fulfil("acme", "CRM-6", at=T0 - dt.timedelta(minutes=1))
    assert error.value.field == "fulfilled_at"
    assert "before the request was logged" in error.value.reason
    log.fulfil("acme", "CRM-6", at=T0 + dt.timedelta(minutes=5))
    # The same fulfilment again is accepted; another moment is refused.
    assert log.fulfil("acme", "CRM-6", at=T0 + dt.timedelta(minutes=5))["status"] == "met"
    with pytest.raises(SpecError, match="already fulfilled"):
        log.fulfil("acme", "CRM-6", at=T0 + dt.timedelta(minutes=9))


def test_fulfilled_by_a_run_takes_the_moment_the_run_ended(log):
    metering = Metering(log.ledger)
    metering.start_run("run-1", "ansible", T0, {})
    log.log("acme", "zone_link", "CRM-7", T0)
    with pytest.raises(SpecError, match="run run-1 has not ended"):
        log.fulfil("acme", "CRM-7", run="run-1")
    with pytest.raises(SpecError, match="unknown run 'run-9'"):
        log.fulfil("acme", "CRM-7", run="run-9")
    metering.finish_run("run-1", "ok", T0 + dt.timedelta(minutes=12), {})
    done = log.fulfil("acme", "CRM-7", run="run-1")
    assert (done["fulfilled_by"], done["elapsed_minutes"], done["status"]) == (
        "run-1",
        "12.0",
        "met",
    )


def test_the_month_report_joins_logged_requests_quota_increases_and_unblocks(log):
    ledger = log.ledger
    register(ledger.store.url, "other")
    log.log("acme", "zone_link", "CRM-8", T0 + dt.timedelta(days=1))
    log.log("other", "password", "CRM-9", T0)
    log.log("acme", "password", "CRM-10", dt.datetime(2026, 10, 31, 23, 0, tzinfo=UTC))
    with ledger.store.locked("acme") as connection:
        ledger.record_quota_request(
            connection, "q" * 20, "acme", {"vcpus": 8}, {"vcpus": 4}, "crm",
            T0 + dt.timedelta(hours=5, minutes=50),
        )  # fmt: skip
        ledger.event(
            connection, "acme", "vm_unblocked", {"vm": "web1"},
            at=T0 + dt.timedelta(hours=2, minutes=30), requested_at=T0 + dt.timedelta(hours=2),
        )  # fmt: skip
    rows = list(log.report(NOVEMBER))
    assert [(r["tenant"], r["kind"], r["status"]) for r in rows] == [
        ("other", "password", "missed (open)"),
        ("acme", "vm_reboot_unblock", "missed"),
        ("acme", "quota_increase", "met"),
        ("acme", "zone_link", "open"),
    ]
    assert {r["month"] for r in rows} == {"2026-11"}
    assert rows[2]["reference"] == "q" * 16
    assert [r["kind"] for r in log.report(NOVEMBER, "other")] == ["password"]
    assert len(list(log.report(NOVEMBER, "acme"))) == 3
    with pytest.raises(VceError, match="'nobody' is not in the ledger"):
        list(log.report(NOVEMBER, "nobody"))
    assert summary(rows) == {
        "password": {"requests": 1, "met": 0, "missed": 1, "open": 0},
        "vm_reboot_unblock": {"requests": 1, "met": 0, "missed": 1, "open": 0},
        "quota_increase": {"requests": 1, "met": 1, "missed": 0, "open": 0},
        "zone_link": {"requests": 1, "met": 0, "missed": 0, "open": 1},
    }


@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_the_clock_is_met_exactly_at_the_target(kind):
    target = TARGETS[kind]
    met = clock("acme", kind, "r", T0, T0 + target, None, T0)
    late = clock("acme", kind, "r", T0, T0 + target + dt.timedelta(seconds=6), None, T0)
    open_ = clock("acme", kind, "r", T0, None, None, T0 + target)
    assert (met["status"], late["status"], open_["status"]) == ("met", "missed", "open")
    assert met["target_minutes"] * 60 == target.total_seconds()
