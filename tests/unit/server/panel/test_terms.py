"""The pages about the terms: quotas and "ask for more", requests and their clocks, outage
reports, usage, invoices and SLA statements, the trial and switching off: sent as a browser
sends them, read back from the ledger through the service layer and from the pages."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import re
from decimal import Decimal

import httpx
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.periods import Month, time_zone
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.tenant import (
    run_quota,
    run_tenant,
)
from ansible_collections.vce.kvm.plugins.module_utils.finance.billing import Books
from ansible_collections.vce.kvm.plugins.module_utils.finance.sla import Incidents
from ansible_collections.vce.kvm.plugins.module_utils.finance.statement import (
    COLOUR_DOWN,
    MIN_MARK,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.metering import ABSENT
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from vce_server.panel.terms import kind_usage, usage_rows
from vce_server.principal import Principal

from tests.support.billing import Scenario
from tests.support.cabinet import PASSWORD, Cabinet, Visitor, hidden_fields
from tests.support.ledger import plan_catalog
from tests.unit.server.panel.test_routes import declare, wait_ended

EVIL = '<script>alert("x")</script>'


def principal(cabinet: Cabinet, tenant: str) -> Principal:
    found = cabinet.context.identity.verify_password(f"{tenant}-user", PASSWORD)
    assert found is not None
    return found


def billed_customer(cabinet: Cabinet, tenant: str = "acme") -> tuple[Visitor, Scenario]:
    """A tenant on a priced plan (tests.support.billing) and its logged-in user."""
    scenario = Scenario(cabinet.ledger_url, tenant)
    cabinet.context.identity.create_user(f"{tenant}-user", PASSWORD, "customer", tenant)
    cabinet.logins[f"{tenant}-user"] = tenant
    return cabinet.logged_in(f"{tenant}-user"), scenario


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def assert_refused_beside(answer: httpx.Response, error_id: str, reason: str) -> None:
    """The page again (422) with the reason in the error paragraph of its field."""
    assert answer.status_code == 422
    shown = re.search(rf'<p class="error" id="{error_id}">([^<]*)</p>', answer.text)
    assert shown is not None and reason in shown.group(1), answer.text


def requests_of(cabinet: Cabinet, tenant: str) -> list[dict]:
    return cabinet.context.terms.requests(principal(cabinet, tenant))


# -- quotas ------------------------------------------------------------------------------------


def test_the_quotas_page_shows_each_kind_with_its_figures(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    declare(cabinet, "acme")
    page = visitor.get("/panel/quotas")
    assert page.status_code == 200
    assert '<meter id="quota-vms"' in page.text
    vms = re.search(r'<h2 id="quota-vms-heading">VMs</h2>(.*?)</dl>', page.text, re.DOTALL)
    figures = re.findall(r"<dd>([^<]*)</dd>", vms.group(1))
    assert figures == ["1000", "1", "0", "999"]  # limit, used, reserved, left
    assert "Ask for more vCPUs" in page.text and "Ask for more memory" in page.text


def test_an_increase_within_the_plan_is_granted_at_once(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    run_quota({"ledger_url": cabinet.ledger_url, "tenant": "acme", "quotas": {"networks": 2}})
    answer = visitor.submit(
        "/panel/quotas", {"kind": "networks", "limit": "5", "note": "a lab"}, page="/panel/quotas"
    )
    assert answer.status_code == 200
    assert "Granted at once" in answer.text
    assert cabinet.context.terms.quotas(principal(cabinet, "acme"))["networks"]["limit"] == 5
    (filed,) = requests_of(cabinet, "acme")
    assert filed["status"] == "met" and filed["quotas"] == {"networks": 5}
    assert filed["id"] in answer.text


def test_an_increase_above_the_plan_waits_as_a_request_with_its_clock(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    answer = visitor.submit(
        "/panel/quotas", {"kind": "vcpus", "limit": "2000", "note": EVIL}, page="/panel/quotas"
    )
    assert answer.status_code == 200
    assert "Waiting for support" in answer.text and "min left" in answer.text
    assert "above the plan&#39;s ceiling of 1000" in answer.text
    (filed,) = requests_of(cabinet, "acme")
    assert filed["status"] == "open" and filed["fulfilled_at"] is None
    assert cabinet.context.terms.quotas(principal(cabinet, "acme"))["vcpus"]["limit"] == 1000
    listing = visitor.get("/panel/requests")
    assert filed["id"] in listing.text and "clock-open" in listing.text
    assert EVIL not in listing.text and "&lt;script&gt;" in listing.text


@pytest.mark.parametrize(
    ("fields", "field_id", "reason"),
    [
        ({"kind": "vcpus", "limit": ""}, "limit-vcpus-error", "write the new limit"),
        ({"kind": "vcpus", "limit": "many"}, "limit-vcpus-error", "whole number"),
        ({"kind": "vcpus", "limit": "1000"}, "limit-vcpus-error", "already"),
        ({"kind": "vcpus", "limit": "1200", "note": "x" * 5000}, "note-vcpus-error", "at most"),
    ],
)
def test_a_bad_ask_comes_back_with_the_reason_beside_its_field(
    cabinet: Cabinet, fields: dict, field_id: str, reason: str
) -> None:
    visitor = cabinet.customer("acme")
    answer = visitor.submit("/panel/quotas", fields, page="/panel/quotas")
    assert_refused_beside(answer, field_id, reason)
    assert requests_of(cabinet, "acme") == []
    assert cabinet.context.terms.quotas(principal(cabinet, "acme"))["vcpus"]["limit"] == 1000


def test_an_ask_without_the_csrf_token_changes_nothing(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    answer = visitor.client.post("/panel/quotas", data={"kind": "vcpus", "limit": "2000"})
    assert answer.status_code == 403
    assert requests_of(cabinet, "acme") == []


# -- requests and outages ------------------------------------------------------------------


def test_an_outage_report_is_recorded_for_the_vm_chosen(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    declare(cabinet, "acme")
    page = visitor.get("/panel/requests")
    assert '<option value="web">web</option>' in page.text
    began = (now() - dt.timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M")
    answer = visitor.submit(
        "/panel/incidents", {"vm": "web", "note": f"no answer {EVIL}", "started_at": began},
        page="/panel/requests",
    )  # fmt: skip
    assert answer.status_code == 303
    (recorded,) = Incidents(Ledger.open(cabinet.ledger_url)).listing("acme")
    assert recorded["vm"] == "web" and recorded["source"] == "report"
    assert f"it began at {began}:00+00:00" in recorded["note"]
    shown = visitor.get(answer.headers["location"])
    assert f"Outage #{recorded['id']} is reported" in shown.text
    assert EVIL not in shown.text and "no answer &lt;script&gt;" in shown.text


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"vm": "elsewhere"}, "vm", "choose one of your VMs"),
        ({"started_at": "yesterday"}, "started_at", "a date and time"),
        ({"started_at": "2999-01-01T00:00"}, "started_at", "in the future"),
        ({"note": "bell \x07"}, "note", "control"),
    ],
)
def test_a_bad_outage_report_comes_back_with_the_reason_beside_its_field(
    cabinet: Cabinet, fields: dict, field: str, reason: str
) -> None:
    visitor = cabinet.customer("acme")
    answer = visitor.submit("/panel/incidents", fields, page="/panel/requests")
    assert_refused_beside(answer, f"{field}-error", reason)
    assert Incidents(Ledger.open(cabinet.ledger_url)).listing("acme") == []


def test_another_tenants_vm_cannot_be_reported_nor_its_outages_seen(cabinet: Cabinet) -> None:
    other = cabinet.customer("other")
    declare(cabinet, "other")
    other.submit("/panel/incidents", {"vm": "web", "note": "other's secret"}, "/panel/requests")
    visitor = cabinet.customer("acme")
    page = visitor.get("/panel/requests")
    assert "other&#39;s secret" not in page.text and '<option value="web">' not in page.text
    answer = visitor.submit("/panel/incidents", {"vm": "web"}, page="/panel/requests")
    assert answer.status_code == 422
    assert Incidents(Ledger.open(cabinet.ledger_url)).listing("acme") == []


def test_an_outage_report_without_the_csrf_token_changes_nothing(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    answer = visitor.client.post("/panel/incidents", data={"note": "down"})
    assert answer.status_code == 403
    assert Incidents(Ledger.open(cabinet.ledger_url)).listing("acme") == []


# -- usage, invoices, SLA ------------------------------------------------------------------


def test_usage_so_far_and_the_invoices_list(cabinet: Cabinet) -> None:
    visitor, scenario = billed_customer(cabinet)
    scenario.usage(now() - dt.timedelta(hours=2))
    page = visitor.get("/panel/billing")
    assert page.status_code == 200
    row = re.search(r'<th scope="row">VMs</th>(.*?)</tr>', page.text, re.DOTALL).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row, re.DOTALL)
    assert cells[0] == "1"  # one VM
    hours = float(cells[1])
    assert 0 < hours <= 2.01
    assert "vCPU-hours" in cells[2] and "RAM GiB-hours" in cells[2]
    assert float(cells[3]) > 0  # billed at the plan's prices
    month = cabinet.context.terms.usage(principal(cabinet, "acme"))["month"]
    assert f'href="/panel/billing/{month}/invoice"' in page.text
    assert f'href="/panel/billing/{month}/sla"' in page.text


def test_the_invoice_is_the_statement_with_its_style_allowed_by_hash(cabinet: Cabinet) -> None:
    visitor, scenario = billed_customer(cabinet)
    scenario.usage(now() - dt.timedelta(hours=2))
    month = cabinet.context.terms.usage(principal(cabinet, "acme"))["month"]
    page = visitor.get(f"/panel/billing/{month}/invoice")
    assert page.status_code == 200
    assert page.text.startswith("<!DOCTYPE html>") and "Invoice and SLA statement" in page.text
    style = re.search(r"<style>(.*?)</style>", page.text, re.DOTALL).group(1)
    allowed = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    policy = page.headers["content-security-policy"]
    assert f"style-src 'self' 'sha256-{allowed}'" in policy and "script" not in policy
    assert "'unsafe-inline'" not in policy
    assert page.headers["x-frame-options"] == "DENY"


def test_the_sla_page_shows_a_five_minute_outage(cabinet: Cabinet) -> None:
    visitor, scenario = billed_customer(cabinet)
    begun = Month.of(now(), time_zone()).start
    start = max(now() - dt.timedelta(hours=3), begun)
    if now() - start < dt.timedelta(minutes=10):
        pytest.skip("the month began minutes ago: no room for an outage in it yet")
    scenario.usage(start)
    scenario.down(start + dt.timedelta(minutes=2), start + dt.timedelta(minutes=7))
    month = cabinet.context.terms.usage(principal(cabinet, "acme"))["month"]
    page = visitor.get(f"/panel/billing/{month}/sla")
    assert page.status_code == 200
    marks = re.findall(
        rf'<rect x="[^"]+" y="-?\d+" width="([^"]+)" [^>]*fill="{COLOUR_DOWN}"', page.text
    )
    assert marks and float(marks[0]) >= MIN_MARK
    assert "Downtime" in page.text and "5 min" in page.text
    credit = cabinet.context.terms.sla(principal(cabinet, "acme"), month)["sla_credit"]
    assert f"SLA credit this month: <strong>{credit} KZT</strong>" in page.text
    assert "<style" not in page.text  # the cabinet's own stylesheet, under its strict policy


def test_a_closed_month_shows_its_credit_notes(cabinet: Cabinet) -> None:
    visitor, scenario = billed_customer(cabinet)
    last = Month.of(Month.of(now(), time_zone()).start - dt.timedelta(days=1), time_zone())
    scenario.usage(last.start + dt.timedelta(hours=1))
    assert [row["action"] for row in Books(scenario.ledger(now()), last).close()] == ["closed"]
    # A record that arrives after the close: the VM was gone an hour after it started.
    scenario.usage(last.start + dt.timedelta(hours=2), meter=ABSENT)
    closing = list(Books(scenario.ledger(now()), last).close())
    assert closing[0]["action"] == "credit note"
    page = visitor.get(f"/panel/billing?month={last.label}")
    assert page.status_code == 200
    assert f"Credit notes for {last.label}" in page.text
    assert "records received after the month was closed" in page.text
    assert f"{closing[0]['amount']} KZT" in page.text


def test_usage_hours_count_within_the_month_so_far_and_not_while_absent() -> None:
    start = dt.datetime(2026, 11, 30, 19, tzinfo=dt.UTC)
    at = start + dt.timedelta(hours=10)
    vm = {"kind": "vm", "name": "web", "vcpus": 2, "ram_mib": 4096, "disk_mib": 0}
    intervals = [
        {**vm, "state": "running", "started_at": "2026-11-20T00:00:00+00:00",
         "ended_at": (start + dt.timedelta(hours=4)).isoformat()},
        {**vm, "state": "absent", "started_at": (start + dt.timedelta(hours=4)).isoformat(),
         "ended_at": None, "vcpus": 0, "ram_mib": 0},
    ]  # fmt: skip
    rows = usage_rows(intervals, start, at)
    assert [row.hours for row in rows] == [Decimal("4.00")]  # from the month's start, not absent
    (kind,) = kind_usage(rows, {"vm": Decimal("12.50")})
    assert (kind.objects, kind.hours, kind.amount) == (1, Decimal("4.00"), Decimal("12.50"))
    assert dict(kind.quantities) == {
        "vCPU-hours": Decimal("8.00"),
        "RAM GiB-hours": Decimal("16.00"),
    }


@pytest.mark.parametrize("month", ["2026-13", "last", "2999-01"])
def test_a_bad_month_comes_back_with_the_reason_beside_the_field(
    cabinet: Cabinet, month: str
) -> None:
    visitor, _scenario = billed_customer(cabinet)
    for path in (f"/panel/billing?month={month}", f"/panel/billing/{month}/invoice",
                 f"/panel/billing/{month}/sla"):  # fmt: skip
        answer = visitor.get(path)
        assert answer.status_code == 422, path
        assert re.search(r'<p class="error" id="month-error">[^<]+</p>', answer.text)
        assert f'value="{month}"' in answer.text


def test_another_tenants_invoice_is_not_reachable(cabinet: Cabinet) -> None:
    _acme, scenario = billed_customer(cabinet, "acme")
    scenario.usage(now() - dt.timedelta(hours=2))
    visitor = cabinet.customer("other")
    month = cabinet.context.terms.usage(principal(cabinet, "acme"))["month"]
    page = visitor.get(f"/panel/billing/{month}/invoice")
    assert page.status_code == 200 and "acme" not in page.text
    assert "No charges this month." in page.text


# -- the trial -----------------------------------------------------------------------------


def offer_trials(cabinet: Cabinet, tenant: str) -> None:
    """The tenant's plan now has a trial (it had none when the tenant was registered)."""
    run_tenant(
        {"ledger_url": cabinet.ledger_url, "name": tenant, "customer": f"customer-of-{tenant}",
         "plan": "lab", "plans": plan_catalog("lab", trial_hours=72)}
    )  # fmt: skip


def test_asking_for_the_trial_grants_it(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    offer_trials(cabinet, "acme")
    page = visitor.get("/panel/trial")
    assert "Ask for the trial" in page.text
    answer = visitor.submit("/panel/trial", page="/panel/trial")
    assert answer.status_code == 303
    assert cabinet.context.terms.trial(principal(cabinet, "acme"))["state"] == "trial"
    shown = visitor.get("/panel/trial")
    assert "the clock starts when your first VM starts" in shown.text


def test_no_trial_without_one_in_the_plan(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    page = visitor.get("/panel/trial")
    assert "No trial is available: the plan lab has no trial" in page.text
    answer = visitor.submit("/panel/trial", page="/panel/trial")
    assert answer.status_code == 409 and "no trial" in answer.text
    assert cabinet.context.terms.trial(principal(cabinet, "acme"))["granted"] is False


def test_switching_off_stops_every_vm_after_a_confirmation(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    offer_trials(cabinet, "acme")
    visitor.submit("/panel/trial", page="/panel/trial")
    declare(cabinet, "acme")
    trial = visitor.get("/panel/trial")
    assert "left" in trial.text and 'href="/panel/trial/switch-off"' in trial.text
    confirm = visitor.get("/panel/trial/switch-off")
    assert "These VMs will be stopped: web" in confirm.text
    assert cabinet.context.resources.read("acme", "vms", "web")["state"] == "running"
    fields = hidden_fields(confirm.text)
    answer = visitor.client.post("/panel/trial/switch-off", data=fields)
    assert answer.status_code == 200
    (action,) = re.findall(r'href="/panel/actions/([^"]+)">Stopping web', answer.text)
    assert wait_ended(cabinet, action, "acme")["status"] == "succeeded"
    assert cabinet.context.resources.read("acme", "vms", "web")["state"] == "shutoff"
    again = visitor.client.post("/panel/trial/switch-off", data=fields)
    assert "Stopping" not in again.text  # nothing runs any more: nothing more is queued


def test_switching_off_without_the_csrf_token_stops_nothing(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    declare(cabinet, "acme")
    before = cabinet.context.actions.list("acme", limit=50)
    answer = visitor.client.post("/panel/trial/switch-off", data={"csrf": "x" * 43})
    assert answer.status_code == 403
    assert cabinet.context.actions.list("acme", limit=50) == before
    assert cabinet.context.resources.read("acme", "vms", "web")["state"] == "running"


@pytest.mark.parametrize(
    "path", ["/panel/quotas", "/panel/requests", "/panel/billing", "/panel/trial",
             "/panel/trial/switch-off"],
)  # fmt: skip
def test_every_page_has_one_heading_and_the_strict_policy(cabinet: Cabinet, path: str) -> None:
    visitor = cabinet.customer("acme")
    page = visitor.get(path)
    assert page.status_code == 200
    assert page.text.count("<h1>") == 1
    assert "style-src" not in page.headers["content-security-policy"]
    assert Visitor(cabinet.app).get(path).status_code == 303  # without a session: log in


def test_an_operators_session_has_none_of_these_pages(cabinet: Cabinet) -> None:
    operator = cabinet.operator()
    for path in ("/panel/quotas", "/panel/requests", "/panel/billing", "/panel/trial"):
        assert operator.get(path).status_code == 404, path
