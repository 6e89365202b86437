"""The operator's pages: each shows what the ledger holds, each change goes through its
confirmation page's form and lands in the ledger as the API's would; a customer's session
finds none of them, and a form without its CSRF token changes nothing."""

from __future__ import annotations

import datetime as dt
import re

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.finance.requests import RequestLog
from ansible_collections.vce.kvm.plugins.module_utils.finance.sla import Incidents
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import exclusions
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from vce_server.panel import operator as operator_pages
from vce_server.principal import Principal

from tests.support.cabinet import PASSWORD, Cabinet, Visitor, hidden_fields
from tests.unit.server.panel.test_routes import declare, wait_ended

PAGES = (
    "/panel/operator/",
    "/panel/operator/tenants/acme",
    "/panel/operator/tenants/acme/suspend",
    "/panel/operator/tenants/acme/vms/web/block",
    "/panel/operator/requests",
    "/panel/operator/requests/acme/R-1/fulfil",
    "/panel/operator/incidents",
    "/panel/operator/incidents/1/confirm",
    "/panel/operator/maintenance",
    "/panel/operator/hosts",
    "/panel/operator/images",
    "/panel/operator/audit",
)
FORMS = (
    "/panel/operator/tenants/acme/suspend",
    "/panel/operator/tenants/acme/resume",
    "/panel/operator/tenants/acme/vms/web/block",
    "/panel/operator/tenants/acme/vms/web/unblock",
    "/panel/operator/requests/acme/R-1/fulfil",
    "/panel/operator/incidents/1/confirm",
    "/panel/operator/incidents/1/restore",
    "/panel/operator/incidents/1/classify",
    "/panel/operator/maintenance",
)
WINDOW = {
    "cause": "maintenance",
    "started_at": "2026-12-10T02:00",
    "ended_at": "2026-12-10T03:00",
    "announced_at": "2026-12-03T09:00",
    "note": "kernel update",
}


def support(cabinet: Cabinet) -> Ledger:
    return Ledger.open(cabinet.ledger_url, actor="support")


def with_objects(cabinet: Cabinet) -> tuple[Visitor, Visitor]:
    """Tenant acme with a running VM `web`, a request R-1 and a reported incident #1; an
    operator's and acme's sessions."""
    customer = cabinet.customer("acme")
    declare(cabinet, "acme")
    ledger = support(cabinet)
    now = ledger.now()
    RequestLog(ledger).log("acme", "password", "R-1", now - dt.timedelta(minutes=5))
    Incidents(ledger).report("acme", "web", "", now - dt.timedelta(minutes=10), note="down")
    return cabinet.operator(), customer


def operator_principal(cabinet: Cabinet) -> Principal:
    return cabinet.context.identity.verify_password("op", PASSWORD)


def tenant_facts(cabinet: Cabinet, name: str = "acme") -> dict:
    return cabinet.context.operator.tenant(operator_principal(cabinet), name)


def exclusion_count(cabinet: Cabinet) -> int:
    with support(cabinet).store.read() as connection:
        return connection.execute(sa.select(sa.func.count()).select_from(exclusions)).scalar()


def state_of(cabinet: Cabinet) -> tuple:
    """Everything an operator's form could change."""
    return (
        tenant_facts(cabinet),
        [
            # A clock's elapsed minutes and status move with time, not with a form.
            {key: item[key] for key in ("id", "kind", "note", "logged_at", "fulfilled_at")}
            for item in cabinet.context.operator.requests(operator_principal(cabinet), "acme")
        ],
        Incidents(support(cabinet)).listing("acme"),
        exclusion_count(cabinet),
        cabinet.context.actions.list(None, limit=50),
    )


def confirm(visitor: Visitor, path: str, **fields: str) -> object:
    """Open the change's confirmation page and send its form."""
    page = visitor.get(path)
    assert page.status_code == 200, page.text
    return visitor.client.post(path, data={**hidden_fields(page.text), **fields})


# -- pages show the ledger -------------------------------------------------------------------


def test_the_tenants_page_shows_each_tenant_with_its_plan_and_state(cabinet: Cabinet) -> None:
    cabinet.customer("acme")
    cabinet.customer("globex", plan="gold")
    page = cabinet.operator().get("/panel/operator/")
    assert page.status_code == 200
    assert "<h1>Tenants</h1>" in page.text
    assert "customer-of-acme" in page.text and "customer-of-globex" in page.text
    assert "gold" in page.text and "lab" in page.text
    assert "Suspend acme" in page.text
    assert '<p class="brand"><a href="/panel/operator/">' in page.text


def test_suspending_and_resuming_a_tenant_through_its_confirmation(cabinet: Cabinet) -> None:
    operator, _customer = with_objects(cabinet)
    answer = confirm(operator, "/panel/operator/tenants/acme/suspend", reason="invoice unpaid")
    assert answer.status_code == 303
    assert tenant_facts(cabinet)["state"] == "suspended"
    assert cabinet.context.resources.read("acme", "vms", "web")["state"] == "paused"
    assert "Resume acme" in operator.get("/panel/operator/tenants/acme").text
    assert confirm(operator, "/panel/operator/tenants/acme/resume").status_code == 303
    assert tenant_facts(cabinet)["state"] == "active"


def test_blocking_a_vm_queues_a_block_action_both_sides_may_read(cabinet: Cabinet) -> None:
    operator, customer = with_objects(cabinet)
    assert "Block web" in operator.get("/panel/operator/tenants/acme").text
    answer = confirm(operator, "/panel/operator/tenants/acme/vms/web/block", reason="abuse")
    assert answer.status_code == 303
    action_id = answer.headers["location"].rsplit("/", 1)[1]
    assert answer.headers["location"] == f"/panel/actions/{action_id}"
    action = wait_ended(cabinet, action_id, "acme")
    assert (action["kind"], action["status"]) == ("block", "succeeded")
    assert tenant_facts(cabinet)["blocked_vms"] == ["web"]
    assert "succeeded" in operator.get(f"/panel/actions/{action_id}").text
    assert customer.get(f"/panel/actions/{action_id}").status_code == 200
    stranger = cabinet.customer("globex")
    assert stranger.get(f"/panel/actions/{action_id}").status_code == 404
    assert "Unblock web" in operator.get("/panel/operator/tenants/acme").text
    answer = confirm(operator, "/panel/operator/tenants/acme/vms/web/unblock")
    action_id = answer.headers["location"].rsplit("/", 1)[1]
    assert wait_ended(cabinet, action_id, "acme")["status"] == "succeeded"
    assert tenant_facts(cabinet)["blocked_vms"] == []


def test_the_queue_is_sorted_by_time_left_and_a_request_is_fulfilled(cabinet: Cabinet) -> None:
    cabinet.customer("acme")
    ledger = support(cabinet)
    now = ledger.now()
    log = RequestLog(ledger)
    # Logged oldest first A, D... but due: D overdue by 60 min, B by 10, C in 15, A in 3 h.
    log.log("acme", "critical_fault", "D", now - dt.timedelta(minutes=120))
    log.log("acme", "minor_fault", "A", now - dt.timedelta(minutes=60))
    log.log("acme", "quota_increase", "B", now - dt.timedelta(minutes=30))
    log.log("acme", "password", "C", now - dt.timedelta(minutes=5))
    operator = cabinet.operator()
    page = operator.get("/panel/operator/requests").text
    shown = re.findall(r'<th scope="row">(\w)</th>', page)
    assert shown == ["D", "B", "C", "A"]
    assert "overdue by 1 h 0 min" in page and "overdue by 10 min" in page
    assert "2 h 59 min left" in page or "3 h 0 min left" in page
    assert confirm(operator, "/panel/operator/requests/acme/C/fulfil").status_code == 303
    page = operator.get("/panel/operator/requests").text
    assert re.findall(r'<th scope="row">(\w)</th>', page) == ["D", "B", "A"]
    fulfilled = cabinet.context.operator.request_view(ledger, "acme", "C")
    assert fulfilled["fulfilled_at"] is not None


def test_an_incident_is_confirmed_classified_and_restored(cabinet: Cabinet) -> None:
    operator, _customer = with_objects(cabinet)
    page = operator.get("/panel/operator/incidents").text
    assert "#1" in page and "Confirm #1" in page and "Restore #1" in page
    assert confirm(operator, "/panel/operator/incidents/1/confirm").status_code == 303
    answer = operator.submit(
        "/panel/operator/incidents/1/classify", {"cause": "maintenance"},
        page="/panel/operator/incidents",
    )  # fmt: skip
    assert answer.status_code == 303
    assert confirm(operator, "/panel/operator/incidents/1/restore").status_code == 303
    (incident,) = Incidents(support(cabinet)).listing("acme")
    assert incident["confirmed_at"] and incident["ended_at"]
    assert incident["cause"] == "maintenance"
    page = operator.get("/panel/operator/incidents").text
    assert "Confirm #1" not in page and "Restore #1" not in page


def test_a_maintenance_window_is_recorded_and_listed(cabinet: Cabinet) -> None:
    operator = cabinet.operator()
    answer = operator.submit(
        "/panel/operator/maintenance", WINDOW, page="/panel/operator/maintenance"
    )
    assert answer.status_code == 303
    page = operator.get("/panel/operator/maintenance").text
    assert "2026-12-10 02:00 UTC" in page and "kernel update" in page and "every tenant" in page
    assert exclusion_count(cabinet) == 1


def test_an_unannounced_window_is_refused_beside_its_field(cabinet: Cabinet) -> None:
    operator = cabinet.operator()
    late = {**WINDOW, "announced_at": "2026-12-10T02:30"}
    answer = operator.submit(
        "/panel/operator/maintenance", late, page="/panel/operator/maintenance"
    )
    assert answer.status_code == 422
    assert "announced at:" in answer.text and 'aria-invalid="true"' in answer.text
    assert 'value="kernel update"' in answer.text
    assert exclusion_count(cabinet) == 0


def test_hosts_images_and_the_audit_log_are_shown(cabinet: Cabinet) -> None:
    operator, _customer = with_objects(cabinet)
    hosts = operator.get("/panel/operator/hosts").text
    assert "kvm1" in hosts and "zone-a" in hosts and "not probed yet" in hosts
    images = operator.get("/panel/operator/images").text
    assert '<th scope="row">base</th>' in images
    confirm(operator, "/panel/operator/tenants/acme/suspend")
    audit = operator.get("/panel/operator/audit?tenant=acme&size=50").text
    assert "POST /panel/operator/tenants/acme/suspend" in audit
    assert "The newest 50 entries of acme" in audit
    other = operator.get("/panel/operator/audit?tenant=globex").text
    assert "/panel/operator/tenants/acme/suspend" not in other


def test_the_audit_page_size_is_bounded(cabinet: Cabinet) -> None:
    page = cabinet.operator().get("/panel/operator/audit?size=100000").text
    assert "The newest 100 entries" in page


# -- who may -----------------------------------------------------------------------------------


def test_the_matrix_below_covers_every_operator_route() -> None:
    """A new page or form of the operator's router must join PAGES or FORMS."""
    for route in operator_pages.router.routes:
        for method in route.methods:
            tried = PAGES if method == "GET" else FORMS
            assert any(route.path_regex.match(path) for path in tried), (method, route.path)


@pytest.mark.parametrize("path", PAGES)
def test_a_customer_finds_no_operator_page(cabinet: Cabinet, path: str) -> None:
    _operator, customer = with_objects(cabinet)
    assert customer.get(path).status_code == 404


def test_a_customer_finds_no_operator_form_and_changes_nothing(cabinet: Cabinet) -> None:
    _operator, customer = with_objects(cabinet)
    before = state_of(cabinet)
    token = customer.form_token("/panel/")
    for path in FORMS:
        answer = customer.client.post(path, data={"csrf": token, "cause": "customer", **WINDOW})
        assert answer.status_code == 404, path
    assert state_of(cabinet) == before


def test_an_operator_form_without_its_csrf_token_changes_nothing(cabinet: Cabinet) -> None:
    operator, _customer = with_objects(cabinet)
    before = state_of(cabinet)
    for path in FORMS:
        answer = operator.client.post(path, data={"cause": "customer", **WINDOW})
        assert answer.status_code == 403, path
        assert "security token" in answer.text
    assert state_of(cabinet) == before


def test_a_reference_with_a_slash_and_a_space_is_fulfilled_from_its_link(cabinet: Cabinet) -> None:
    cabinet.customer("acme")
    ledger = support(cabinet)
    RequestLog(ledger).log("acme", "password", "CRM 12/3", ledger.now())
    operator = cabinet.operator()
    page = operator.get("/panel/operator/requests").text
    (link,) = re.findall(r'href="(/panel/operator/requests/acme/[^"]+/fulfil)"', page)
    assert link == "/panel/operator/requests/acme/CRM%2012%2F3/fulfil"
    assert f'action="{link}"' in operator.get(link).text
    assert confirm(operator, link).status_code == 303
    fulfilled = cabinet.context.operator.request_view(ledger, "acme", "CRM 12/3")
    assert fulfilled["fulfilled_at"] is not None
