"""Logging in and out, the environment page, VM power through a form, an action's page, the
password change: as a browser sends them, read back from the ledger and the pages."""

from __future__ import annotations

import time

from tests.support.cabinet import PASSWORD, Cabinet, Visitor, hidden_fields

NETWORK = {"cidr": "10.9.0.0/24"}
VM = {
    "vcpus": 1,
    "memory_mib": 256,
    "boot_disk": {"image": "base", "size_gib": 1},
    "nics": [{"network": "lan", "ip": "10.9.0.10"}],
}


def declare(cabinet: Cabinet, tenant: str) -> None:
    """A network and a running VM, declared through the service layer as the API does."""
    ctx = cabinet.context
    identity = ctx.identity.verify_password(f"{tenant}-user", PASSWORD)
    for plural, name, body in (("networks", "lan", NETWORK), ("vms", "web", VM)):
        payload = ctx.resources.validate(tenant, plural, name, body)
        view, _created = ctx.actions.submit(identity, "put", f"{plural}/{name}", payload)
        assert wait_ended(cabinet, view["id"], tenant)["status"] == "succeeded"


def wait_ended(cabinet: Cabinet, action_id: str, tenant: str, seconds: float = 30) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = cabinet.context.actions.get(action_id, tenant)
        if found["status"] in {"succeeded", "failed", "interrupted"}:
            return found
        time.sleep(0.05)
    raise AssertionError(f"action {action_id} did not end in {seconds} s")


def test_a_page_without_a_session_sends_to_the_login_page(cabinet: Cabinet) -> None:
    answer = Visitor(cabinet.app).get("/panel/")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/panel/login?next=/panel/"


def test_a_wrong_password_is_refused_and_opens_no_session(cabinet: Cabinet) -> None:
    cabinet.customer("acme")
    visitor = Visitor(cabinet.app)
    answer = visitor.log_in("acme-user", "not the password at all")
    assert answer.status_code == 401
    assert "Wrong login or password" in answer.text
    assert visitor.get("/panel/").status_code == 303


def test_a_login_form_without_its_token_is_refused(cabinet: Cabinet) -> None:
    cabinet.customer("acme")
    visitor = Visitor(cabinet.app)
    answer = visitor.client.post("/panel/login", data={"login": "acme-user", "password": PASSWORD})
    assert answer.status_code == 403
    assert visitor.get("/panel/").status_code == 303


def test_the_environment_shows_the_vms_and_stops_one_through_its_form(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    declare(cabinet, "acme")
    page = visitor.get("/panel/")
    assert page.status_code == 200
    assert "web" in page.text and "10.9.0.10" in page.text and "running" in page.text
    fields = hidden_fields(page.text)
    answer = visitor.client.post(
        "/panel/vms/web/stop", data={"csrf": fields["csrf"], "key": f"{fields['key']}-web-stop"}
    )
    assert answer.status_code == 303
    action_id = answer.headers["location"].rsplit("/", 1)[1]
    assert wait_ended(cabinet, action_id, "acme")["status"] == "succeeded"
    shown = visitor.get(f"/panel/actions/{action_id}")
    assert "succeeded" in shown.text and "stop vm web" in shown.text
    assert cabinet.context.resources.read("acme", "vms", "web")["state"] == "shutoff"


def test_a_form_sent_twice_makes_one_action(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    declare(cabinet, "acme")
    fields = hidden_fields(visitor.get("/panel/").text)
    data = {"csrf": fields["csrf"], "key": f"{fields['key']}-web-reboot"}
    first = visitor.client.post("/panel/vms/web/reboot", data=data)
    second = visitor.client.post("/panel/vms/web/reboot", data=data)
    assert first.headers["location"] == second.headers["location"]


def test_a_change_without_the_csrf_token_changes_nothing(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    declare(cabinet, "acme")
    before = cabinet.context.actions.list("acme", limit=50)
    answer = visitor.client.post("/panel/vms/web/stop", data={"csrf": "x" * 43})
    assert answer.status_code == 403
    assert cabinet.context.actions.list("acme", limit=50) == before


def test_logging_out_ends_the_session(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    cookie = visitor.client.cookies["vce_session"]
    assert visitor.submit("/panel/logout").status_code == 303
    again = Visitor(cabinet.app)
    again.client.cookies.set("vce_session", cookie, path="/panel")
    assert again.get("/panel/").status_code == 303


def test_a_new_password_ends_the_other_sessions_and_keeps_this_one(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    other = cabinet.logged_in("acme-user")
    new = "another long passphrase"
    answer = visitor.submit(
        "/panel/account/password", {"current": PASSWORD, "new": new, "again": new}
    )
    assert answer.status_code == 200 and "The password is changed" in answer.text
    assert visitor.get("/panel/").status_code == 200
    assert other.get("/panel/").status_code == 303
    assert cabinet.context.identity.verify_password("acme-user", new) is not None


def test_a_short_new_password_is_refused_naming_the_reason(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    answer = visitor.submit(
        "/panel/account/password", {"current": PASSWORD, "new": "short", "again": "short"}
    )
    assert answer.status_code == 422 and "at least 12 characters" in answer.text
    assert cabinet.context.identity.verify_password("acme-user", PASSWORD) is not None


def test_pages_are_sent_with_a_strict_policy(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    headers = visitor.get("/panel/").headers
    assert "default-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"
    assert headers["cache-control"] == "no-store"
    cookie = visitor.client.cookies.jar
    assert any(c.name == "vce_session" and c.has_nonstandard_attr("HttpOnly") for c in cookie)
