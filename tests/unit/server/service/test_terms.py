"""The terms as the API serves them, on SQLite and PostgreSQL: quotas, requests and their
clocks (a quota increase granted at once or queued), outage reports counted once confirmed,
the trial once per customer, usage, invoices (JSON and HTML), the SLA statement, and the audit
trail; a tenant never sees another's rows."""

from __future__ import annotations

import datetime as dt
import json
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.core.periods import Month
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.host import (
    HostRecords,
    HostValues,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.tenant import run_tenant
from ansible_collections.vce.kvm.plugins.module_utils.finance.requests import RequestLog
from ansible_collections.vce.kvm.plugins.module_utils.ledger.metering import (
    Meter,
    Metering,
    UsageChange,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import (
    audit,
    placements,
    quota_requests,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from vce_server.errors import ApiError
from vce_server.principal import Principal
from vce_server.service.operator import Operator
from vce_server.service.terms import Terms

from tests.support.ledger import plan_catalog, register

UTC = dt.UTC
URI = "qemu+ssh://root@kvm1.internal/system"
# A fixed moment in the past for the clocks (the ledger refuses nothing before it).
T0 = dt.datetime(2026, 11, 10, 9, 0, tzinfo=UTC)
NOVEMBER = "2026-11"
WEB = Meter("running", "web", vcpus=2, ram_mib=4096, disk_mib=10240)


def customer(tenant: str, actor: str = "") -> Principal:
    return Principal(
        f"vce_{tenant[:8]:0<8}", actor or f"{tenant}-user", "customer", tenant,
        frozenset({"read", "write"}),
    )  # fmt: skip


OPERATOR = Principal("vce_00000000", "ops", "operator", None, frozenset({"read", "write"}))


def at(moment: dt.datetime):
    return lambda: moment


def add_host(url: str, name: str = "kvm1", zone: str = "a", uri: str = URI, cpus: int = 64,
             memory_mib: int = 131072) -> None:  # fmt: skip
    ledger = Ledger.open(url)
    values = HostValues(zone, uri, None, (), None, {}, cpus, memory_mib, "10.0.0", "7.2.0")
    with ledger.store.write() as connection:
        HostRecords(ledger).put(connection, name, values)


def place(url: str, tenant: str, host: str = "kvm1", zone: str = "a") -> None:
    with Ledger.open(url).store.write() as connection:
        connection.execute(
            placements.insert().values(tenant=tenant, zone=zone, host=host, placed_at=T0)
        )


def use(url: str, tenant: str, uri: str = URI, **usage: int) -> None:
    """What the engine last saw the tenant use on a host (base units: counts, MiB)."""
    ledger = Ledger.open(url)
    with ledger.store.write() as connection:
        ledger.record_host_usage(connection, tenant, uri, usage, 1)


def meter(url: str, tenant: str, moment: dt.datetime, name: str = "web") -> None:
    change = UsageChange(tenant, URI, "vm", name, "changed", moment, WEB)
    Metering(Ledger.open(url, now=moment, actor="test")).record([change])


def register_small(url: str, tenant: str, **overrides: int) -> None:
    """On plan `small` (16 vCPUs, 32 GiB RAM at most), with overrides below it."""
    run_tenant({
        "ledger_url": url, "name": tenant, "customer": f"c-{tenant}", "plan": "small",
        "plans": plan_catalog("small", vcpus=16, ram_gib=32), "quotas": overrides,
    })  # fmt: skip


def limit_of(url: str, tenant: str, kind: str) -> int:
    return Terms(url).quotas(customer(tenant))[kind]["limit"]


# -- quotas -----------------------------------------------------------------------------------


def test_quotas_show_every_kind_with_limit_used_and_reserved_in_the_engines_units(
    any_ledger_url,
):
    register_small(any_ledger_url, "acme", vcpus=4)
    use(any_ledger_url, "acme", vcpus=2, ram_gib=3072)
    ledger = Ledger.open(any_ledger_url)
    with ledger.store.write() as connection:
        ledger.reserve(connection, "run-1", "acme", URI, {"vcpus": 1, "ram_gib": 512})
    shown = Terms(any_ledger_url).quotas(customer("acme"))
    assert set(shown) == {
        "vms", "vcpus", "ram_gib", "disk_gib", "public_ips", "networks", "zone_links",
        "backup_schedules", "backup_storage_gib",
    }  # fmt: skip
    assert shown["vcpus"] == {"limit": 4, "used": 2, "reserved": 1, "unit": ""}
    assert shown["ram_gib"] == {"limit": 32, "used": "3", "reserved": "0.5", "unit": "GiB"}


def test_a_tenants_quota_view_is_kept_a_second_and_dropped_when_this_server_grants_more(
    ledger_url, monkeypatch
):
    from vce_server.service import terms as terms_module

    moment = [1000.0]
    monkeypatch.setattr(terms_module.time, "monotonic", lambda: moment[0])
    register_small(ledger_url, "acme", vcpus=4)
    add_host(ledger_url)
    terms = Terms(ledger_url)
    assert terms.quotas(customer("acme"))["vcpus"]["limit"] == 4
    register_small(ledger_url, "acme", vcpus=6)  # an operator's change, elsewhere
    moment[0] += 0.5
    assert terms.quotas(customer("acme"))["vcpus"]["limit"] == 4
    moment[0] += 0.6
    assert terms.quotas(customer("acme"))["vcpus"]["limit"] == 6
    terms.file_request(customer("acme"), {"kind": "quota_increase", "quotas": {"vcpus": 8}})
    assert terms.quotas(customer("acme"))["vcpus"]["limit"] == 8


# -- requests (5.1) ---------------------------------------------------------------------------


def test_a_quota_increase_within_the_ceiling_and_the_capacity_is_granted_at_once(
    any_ledger_url,
):
    register_small(any_ledger_url, "acme", vcpus=4, ram_gib=8)
    add_host(any_ledger_url)
    filed = Terms(any_ledger_url).file_request(
        customer("acme"), {"kind": "quota_increase", "quotas": {"vcpus": 8, "ram_gib": 16}}
    )
    assert filed["queued_because"] == []
    assert filed["status"] == "met"
    assert filed["fulfilled_at"] is not None
    assert filed["quotas"] == {"vcpus": 8, "ram_gib": 16}
    assert limit_of(any_ledger_url, "acme", "vcpus") == 8
    assert limit_of(any_ledger_url, "acme", "ram_gib") == 16
    # Recorded as vce.kvm.quota records it, with who asked and when.
    with Ledger.open(any_ledger_url).store.read() as connection:
        row = connection.execute(sa.select(quota_requests)).one()
    assert (row.tenant, row.requested_by, row.result) == ("acme", "acme-user", "applied")
    assert json.loads(row.quotas) == {"vcpus": 8, "ram_gib": 16}
    # One request in the clocks' report (vce ledger requests), not the logged one and its record.
    month = Month.of(row.requested_at, ZoneInfo("UTC"))
    reported = list(RequestLog(Ledger.open(any_ledger_url)).report(month, "acme"))
    assert [item["kind"] for item in reported] == ["quota_increase"]


def test_a_quota_increase_above_the_plans_ceiling_is_queued_for_an_operator(any_ledger_url):
    register_small(any_ledger_url, "acme", vcpus=4)
    add_host(any_ledger_url)
    terms = Terms(any_ledger_url)
    filed = terms.file_request(
        customer("acme"), {"kind": "quota_increase", "quotas": {"vcpus": 20}, "note": "big job"}
    )
    assert filed["queued_because"] == ["quotas.vcpus: 20 is above the plan's ceiling of 16"]
    assert (filed["status"], filed["fulfilled_at"], filed["note"]) == ("open", None, "big job")
    assert limit_of(any_ledger_url, "acme", "vcpus") == 4
    # The operator decides: granted as asked, through the same path; the clock stops then.
    done = Operator(any_ledger_url).fulfil(OPERATOR, filed["id"], {})
    assert done["fulfilled_at"] is not None
    assert done["status"] == "met"
    assert limit_of(any_ledger_url, "acme", "vcpus") == 20


def test_a_quota_increase_the_zone_cannot_hold_is_queued(any_ledger_url):
    register_small(any_ledger_url, "acme", vcpus=4, vms=5)
    register_small(any_ledger_url, "other")
    add_host(any_ledger_url, cpus=8)
    place(any_ledger_url, "acme")
    use(any_ledger_url, "acme", vcpus=2)
    use(any_ledger_url, "other", vcpus=4)
    terms = Terms(any_ledger_url)
    # 8 cpus, 6 in use: acme may grow by 2 (to 4 it has), not to 12.
    filed = terms.file_request(
        customer("acme"), {"kind": "quota_increase", "quotas": {"vcpus": 12}}
    )
    assert filed["queued_because"] == ["the zone's free capacity does not allow it now"]
    assert limit_of(any_ledger_url, "acme", "vcpus") == 4
    # A kind no host's size bounds is granted.
    filed = terms.file_request(customer("acme"), {"kind": "quota_increase", "quotas": {"vms": 9}})
    assert filed["queued_because"] == []
    assert limit_of(any_ledger_url, "acme", "vms") == 9


def test_a_quota_increase_with_no_host_registered_is_queued(any_ledger_url):
    register_small(any_ledger_url, "acme", vcpus=4)
    filed = Terms(any_ledger_url).file_request(
        customer("acme"), {"kind": "quota_increase", "quotas": {"vcpus": 6}}
    )
    assert filed["queued_because"] == ["the zone's free capacity does not allow it now"]


def test_each_request_runs_on_the_clock_of_its_kind_and_shows_when_it_is_overdue(
    any_ledger_url,
):
    register(any_ledger_url, "acme")
    filed = Terms(any_ledger_url, clock=at(T0)).file_request(
        customer("acme"), {"kind": "reboot", "vm": "web", "note": "frozen"}
    )
    assert filed["kind"] == "reboot"
    assert filed["vm"] == "web"
    assert filed["logged_at"] == T0.isoformat()
    assert filed["due_at"] == (T0 + dt.timedelta(minutes=10)).isoformat()
    assert (filed["target_minutes"], filed["overdue"], filed["status"]) == (10, False, "open")
    later = Terms(any_ledger_url, clock=at(T0 + dt.timedelta(minutes=11)))
    seen = later.request(customer("acme"), filed["id"])
    assert (seen["overdue"], seen["status"], seen["elapsed_minutes"]) == (
        True, "missed (open)", "11.0",
    )  # fmt: skip
    targets = {}
    for kind in ("password", "zone_link", "critical_fault", "minor_fault", "unblock"):
        body = {"kind": kind, "vm": "web"} if kind == "unblock" else {"kind": kind}
        targets[kind] = later.file_request(customer("acme"), body)["target_minutes"]
    assert targets == {
        "password": 20, "zone_link": 30, "critical_fault": 60, "minor_fault": 240, "unblock": 10,
    }  # fmt: skip
    listed = later.requests(customer("acme"))
    assert [item["kind"] for item in listed][-1] == "reboot"  # newest first
    assert len(listed) == 6


def test_a_request_fulfilled_by_the_operator_stops_its_clock(any_ledger_url):
    register(any_ledger_url, "acme")
    filed = Terms(any_ledger_url, clock=at(T0)).file_request(customer("acme"), {"kind": "password"})
    operator = Operator(any_ledger_url, clock=at(T0 + dt.timedelta(minutes=15)))
    assert [item["id"] for item in operator.requests(OPERATOR, open_only=True)] == [filed["id"]]
    done = operator.fulfil(OPERATOR, filed["id"], None)
    assert (done["status"], done["overdue"]) == ("met", False)
    assert done["fulfilled_at"] == (T0 + dt.timedelta(minutes=15)).isoformat()
    assert operator.requests(OPERATOR, open_only=True) == []


BAD_REQUESTS = [
    (["password"], "body"),
    ({"kind": "coffee"}, "kind"),
    ({}, "kind"),
    ({"kind": "password", "tenant": "other"}, "tenant"),
    ({"kind": "password", "vm": "web"}, "vm"),
    ({"kind": "reboot"}, "vm"),
    ({"kind": "reboot", "vm": "Bad Name"}, "vm"),
    ({"kind": "quota_increase"}, "quotas"),
    ({"kind": "quota_increase", "quotas": {"cpus": 4}}, "quotas.cpus"),
    ({"kind": "quota_increase", "quotas": {"vcpus": -1}}, "quotas.vcpus"),
    ({"kind": "quota_increase", "quotas": {"vcpus": 2}}, "quotas.vcpus"),  # not more than 4
    ({"kind": "password", "note": "a\x1b[2Jb"}, "note"),
]


@pytest.mark.parametrize(("body", "field"), BAD_REQUESTS)
def test_bad_requests_are_refused_naming_the_field_and_nothing_is_logged(ledger_url, body, field):
    register_small(ledger_url, "acme", vcpus=4)
    terms = Terms(ledger_url)
    with pytest.raises(SpecError) as error:
        terms.file_request(customer("acme"), body)
    assert error.value.field == field
    assert terms.requests(customer("acme")) == []


# -- outages (5.11) ---------------------------------------------------------------------------


def test_an_outage_report_counts_only_once_support_confirms_it(any_ledger_url):
    register(any_ledger_url, "acme")
    add_host(any_ledger_url)
    start = dt.datetime(2026, 11, 1, 0, 0, tzinfo=UTC)
    meter(any_ledger_url, "acme", start)
    reported = T0
    terms = Terms(any_ledger_url, clock=at(reported))
    found = terms.report_incident(
        customer("acme"),
        {"vm": "web", "started_at": "2026-11-10T08:30:00+00:00", "note": "no ping"},
    )
    assert (found["source"], found["started_at"], found["counts"]) == (
        "report", reported.isoformat(), False,
    )  # fmt: skip
    assert found["note"] == "the customer reports it began at 2026-11-10T08:30:00+00:00\nno ping"
    hour_later = Terms(any_ledger_url, clock=at(reported + dt.timedelta(hours=1)))
    before = hour_later.sla(customer("acme"), NOVEMBER)
    assert before["vms"][0]["downtime_seconds"] == 0
    assert before["vms"][0]["host"] == "zone a"
    operator = Operator(any_ledger_url, clock=at(reported + dt.timedelta(minutes=5)))
    confirmed = operator.confirm_incident(OPERATOR, found["id"], {})
    assert confirmed["counts"] is True
    restored = reported + dt.timedelta(minutes=30)
    Operator(any_ledger_url, clock=at(restored)).restore_incident(OPERATOR, found["id"], {})
    after = hour_later.sla(customer("acme"), NOVEMBER)
    assert after["vms"][0]["downtime_seconds"] == 30 * 60
    assert [item["id"] for item in after["incidents"]] == [found["id"]]
    assert hour_later.incidents(customer("acme"))[0]["counts"] is True


BAD_INCIDENTS = [
    ({"vm": "web", "host": URI}, "host"),
    ({"vm": "Bad Name"}, "vm"),
    ({"started_at": "yesterday"}, "started_at"),
    ({"started_at": "2026-11-10T08:30:00"}, "started_at"),
    ({"started_at": "2026-11-10T09:30:00+00:00"}, "started_at"),  # after now
    ({"note": 5}, "note"),
]


@pytest.mark.parametrize(("body", "field"), BAD_INCIDENTS)
def test_bad_outage_reports_are_refused_naming_the_field(ledger_url, body, field):
    register(ledger_url, "acme")
    terms = Terms(ledger_url, clock=at(T0))
    with pytest.raises(SpecError) as error:
        terms.report_incident(customer("acme"), body)
    assert error.value.field == field
    assert terms.incidents(customer("acme")) == []


# -- trial (3.12) -----------------------------------------------------------------------------


def test_a_trial_is_granted_once_per_customer_and_only_before_any_use(any_ledger_url):
    for tenant in ("acme", "acme2", "used"):
        customer_id = "c-used" if tenant == "used" else "c-acme"
        register(any_ledger_url, tenant, customer=customer_id)
    terms = Terms(any_ledger_url)
    shown = terms.trial(customer("acme"))
    assert (shown["available"], shown["refusal"]) == (False, "the plan lab has no trial")
    # The operator moves them to a plan with a trial.
    trial_plan = plan_catalog("trial72", trial_hours=72, vms=5)
    for tenant in ("acme", "acme2", "used"):
        run_tenant(
            {"ledger_url": any_ledger_url, "name": tenant, "plan": "trial72", "plans": trial_plan}
        )
    assert terms.trial(customer("acme"))["available"] is True
    granted = terms.ask_trial(customer("acme"))
    assert (granted["state"], granted["granted"], granted["hours"]) == ("trial", True, 72)
    assert terms.ask_trial(customer("acme")) == granted  # asked again: the same trial
    assert limit_of(any_ledger_url, "acme", "vms") == 5  # the trial's quotas
    with pytest.raises(ApiError) as error:
        terms.ask_trial(customer("acme2"))  # another tenant of the same customer
    assert (error.value.status, error.value.code) == (409, "conflict")
    assert "once per customer" in error.value.message
    meter(any_ledger_url, "used", T0)
    with pytest.raises(ApiError, match="not used the service"):
        terms.ask_trial(customer("used"))
    assert terms.trial(customer("acme2"))["state"] == "active"


# -- usage, invoices, SLA ---------------------------------------------------------------------


def priced(url: str, tenant: str) -> None:
    catalog = plan_catalog("std")
    catalog["std"]["prices"] = {
        "currency": "KZT", "vcpu_hour": "10", "ram_gib_hour": "5", "disk_gib_hour": "0.1",
        "public_ip_hour": "2", "zone_link_hour": "3", "backup_gib_hour": "0.05",
    }  # fmt: skip
    run_tenant(
        {"ledger_url": url, "name": tenant, "customer": f"c-{tenant}", "plan": "std",
         "plans": catalog}
    )  # fmt: skip


def test_usage_and_invoices_in_json_and_html_show_zones_not_hosts(any_ledger_url):
    priced(any_ledger_url, "acme")
    add_host(any_ledger_url)
    meter(any_ledger_url, "acme", dt.datetime(2026, 11, 2, tzinfo=UTC))
    terms = Terms(any_ledger_url, clock=at(dt.datetime(2026, 12, 5, tzinfo=UTC)))
    usage = terms.usage(customer("acme"), NOVEMBER)
    assert usage["month"] == NOVEMBER
    assert [(row["name"], row["host"], row["vcpus"]) for row in usage["intervals"]] == [
        ("web", "zone a", 2)
    ]
    document = terms.invoice(customer("acme"), NOVEMBER)
    assert (document["tenant"], document["month"], document["currency"]) == (
        "acme", NOVEMBER, "KZT",
    )  # fmt: skip
    assert isinstance(document["total"], str) and document["total"] != "0.00"
    assert URI not in json.dumps(document)
    assert {line["host"] for line in document["lines"]} == {"zone a"}
    page = terms.invoice_html(customer("acme"), NOVEMBER)
    assert page.lstrip().lower().startswith("<!doctype html")
    assert "zone a" in page and URI not in page
    listed = terms.invoices(customer("acme"))
    assert [item["month"] for item in listed] == ["2026-12"]  # the open month; nothing closed
    for month in ("2026-13", "2027-01", "next"):
        with pytest.raises(SpecError) as error:
            terms.invoice(customer("acme"), month)
        assert error.value.field == "month"


# -- one tenant, its own rows -----------------------------------------------------------------


def test_a_tenant_never_sees_another_tenants_rows(any_ledger_url):
    priced(any_ledger_url, "acme")
    priced(any_ledger_url, "beta")
    meter(any_ledger_url, "acme", dt.datetime(2026, 11, 2, tzinfo=UTC))
    terms = Terms(any_ledger_url, clock=at(T0))
    mine = terms.file_request(customer("acme"), {"kind": "password"})
    terms.report_incident(customer("acme"), {"vm": "web"})
    with Ledger.open(any_ledger_url).store.write() as connection:
        for tenant in ("acme", "beta"):
            connection.execute(
                audit.insert().values(
                    at=T0, request_id=f"r-{tenant}", token="vce_x", actor=tenant, tenant=tenant,
                    method="POST", path="/v1/requests", source="127.0.0.1", status=201,
                    outcome="accepted",
                )
            )  # fmt: skip
    beta = customer("beta")
    assert terms.requests(beta) == []
    with pytest.raises(ApiError) as error:
        terms.request(beta, mine["id"])
    assert error.value.status == 404
    assert terms.incidents(beta) == []
    assert [row["tenant"] for row in terms.audit(beta)] == ["beta"]
    with pytest.raises(SpecError) as refused:
        terms.audit(beta, tenant="acme")
    assert refused.value.field == "tenant"
    assert terms.usage(beta, NOVEMBER)["intervals"] == []
    assert terms.invoice(beta, NOVEMBER)["tenant"] == "beta"
    assert terms.invoice(beta, NOVEMBER)["lines"] == []
    # Operators read every tenant's trail, or one tenant's.
    assert {row["tenant"] for row in terms.audit(OPERATOR)} == {"acme", "beta"}
    assert [row["request_id"] for row in terms.audit(OPERATOR, tenant="acme")] == ["r-acme"]
