"""The console's page, its tickets and its websocket's admission, on the unit tier's app (the
test driver has no consoles: an admitted socket is told the console could not be opened).
Tickets are read back from the ledger; refused sockets close with the policy code and leave a
refused audit row."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import audit, console_tickets
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from starlette.websockets import WebSocketDisconnect
from vce_server.panel import console
from vce_server.panel.console import FAILED, POLICY, console_policy
from vce_server.service.console import TICKET_LIFETIME, Ticket, Tickets, ticket_id

from tests.support.cabinet import Cabinet, Visitor, hidden_fields
from tests.unit.server.panel.test_routes import declare

ORIGIN = {"origin": "http://testserver"}


def ticket_url(visitor: Visitor, vm: str = "web") -> str:
    page = visitor.get(f"/panel/vms/{vm}/console")
    answer = visitor.client.post(
        f"/panel/vms/{vm}/console/ticket", data={"csrf": hidden_fields(page.text)["csrf"]}
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["url"]


def closed_with(visitor: Visitor, url: str, headers: dict[str, str] | None = None) -> tuple:
    """What the socket said before it closed, and its close code."""
    said = []
    with visitor.client.websocket_connect(
        url, headers=ORIGIN if headers is None else headers
    ) as socket:
        try:
            while True:
                said.append(socket.receive_text())
        except WebSocketDisconnect as closed:
            return said, closed.code
    raise AssertionError("the socket did not close")


def rows(cabinet: Cabinet, table: sa.Table) -> list:
    with cabinet.context.ledger.store.read() as connection:
        return connection.execute(sa.select(table)).all()


def socket_audit(cabinet: Cabinet) -> list[tuple[str, int, str]]:
    return [(r.path, r.status, r.outcome) for r in rows(cabinet, audit) if r.method == "WS"]


@pytest.fixture
def acme(cabinet: Cabinet) -> Visitor:
    visitor = cabinet.customer("acme")
    declare(cabinet, "acme")
    return visitor


def test_the_page_needs_a_session_and_shows_the_button_for_a_running_vm(
    cabinet: Cabinet, acme: Visitor
) -> None:
    assert Visitor(cabinet.app).get("/panel/vms/web/console").status_code == 303
    page = acme.get("/panel/vms/web/console")
    assert page.status_code == 200
    assert "<h1>Console of web</h1>" in page.text and "Open the console" in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "connect-src 'self' ws://testserver" in policy
    assert "script-src" not in policy  # scripts stay this origin's files only
    assert acme.get("/panel/static/xterm.js").status_code == 200
    assert 'href="/panel/vms/web/console"' in acme.get("/panel/vms/web").text


def test_the_policy_names_no_host_it_does_not_trust() -> None:
    assert "ws:" not in console_policy("evil.example; script-src *")


def test_another_tenants_vm_has_no_console_page_nor_ticket(cabinet: Cabinet, acme: Visitor) -> None:
    other = cabinet.customer("globex")
    assert other.get("/panel/vms/web/console").status_code == 404
    token = hidden_fields(other.get("/panel/account").text)["csrf"]
    answer = other.client.post("/panel/vms/web/console/ticket", data={"csrf": token})
    assert answer.status_code == 404
    assert rows(cabinet, console_tickets) == []


def test_a_ticket_needs_the_forms_token(cabinet: Cabinet, acme: Visitor) -> None:
    answer = acme.client.post("/panel/vms/web/console/ticket", data={"csrf": "x" * 43})
    assert answer.status_code == 403
    assert rows(cabinet, console_tickets) == []


def test_a_ticket_is_kept_hashed_for_30_seconds(cabinet: Cabinet, acme: Visitor) -> None:
    url = ticket_url(acme)
    secret = url.split("ticket=", 1)[1]
    (row,) = rows(cabinet, console_tickets)
    assert row.id == ticket_id(secret) and secret not in row.id
    assert (row.tenant, row.vm, row.zone, row.login) == ("acme", "web", "zone-a", "acme-user")
    assert row.expires_at - row.created_at == TICKET_LIFETIME and row.used_at is None


def test_a_ticket_is_redeemed_once_within_30_seconds_by_its_tenant_only(
    any_ledger_url: str,
) -> None:
    tickets = Tickets(Ledger.open(any_ledger_url, create=True))
    now = dt.datetime.now(dt.UTC)
    ticket = Ticket("acme", "web", "zone-a", "acme-user")
    secret = tickets.issue(ticket, now)
    assert tickets.redeem(secret, "globex", now) is None
    assert tickets.redeem(secret, "acme", now + dt.timedelta(seconds=30)) is None
    assert tickets.redeem(secret, "acme", now + dt.timedelta(seconds=29)) == ticket
    assert tickets.redeem(secret, "acme", now + dt.timedelta(seconds=29)) is None
    assert tickets.redeem("not a ticket", "acme", now) is None
    assert tickets.redeem(None, "acme", now) is None


def test_an_admitted_socket_is_audited_and_told_why_the_console_did_not_open(
    cabinet: Cabinet, acme: Visitor
) -> None:
    said, code = closed_with(acme, ticket_url(acme))
    assert code == FAILED
    assert said and said[0].startswith("The console of vm web could not be opened: ")
    assert "kvm1" not in said[0] and "test://" not in said[0]
    assert socket_audit(cabinet) == [("/panel/vms/web/console/open", FAILED, "failed")]
    (row,) = rows(cabinet, console_tickets)
    assert row.used_at is not None


def test_a_used_ticket_is_refused(cabinet: Cabinet, acme: Visitor) -> None:
    url = ticket_url(acme)
    closed_with(acme, url)
    assert closed_with(acme, url) == ([], POLICY)
    assert socket_audit(cabinet)[-1] == ("/panel/console/ws", POLICY, "refused")


def test_an_expired_ticket_is_refused(cabinet: Cabinet, acme: Visitor) -> None:
    url = ticket_url(acme)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    with cabinet.context.ledger.store.write() as connection:
        connection.execute(console_tickets.update().values(expires_at=past))
    assert closed_with(acme, url) == ([], POLICY)
    assert rows(cabinet, console_tickets)[0].used_at is None


def test_another_tenants_session_cannot_use_a_ticket(cabinet: Cabinet, acme: Visitor) -> None:
    url = ticket_url(acme)
    other = cabinet.customer("globex")
    assert closed_with(other, url) == ([], POLICY)
    (refused,) = [r for r in rows(cabinet, audit) if r.method == "WS"]
    assert (refused.tenant, refused.actor, refused.outcome) == ("globex", "globex-user", "refused")
    # Not used up: its own tenant still opens it.
    assert closed_with(acme, url)[1] == FAILED


def test_a_socket_without_a_session_or_from_another_origin_is_refused(
    cabinet: Cabinet, acme: Visitor
) -> None:
    url = ticket_url(acme)
    assert closed_with(Visitor(cabinet.app), url) == ([], POLICY)
    assert closed_with(acme, url, {"origin": "http://evil.example"}) == ([], POLICY)
    assert closed_with(acme, url, {}) == ([], POLICY)
    assert rows(cabinet, console_tickets)[0].used_at is None
    assert [a[2] for a in socket_audit(cabinet)] == ["refused"] * 3


def test_sockets_racing_for_one_ticket_get_it_once(any_ledger_url: str) -> None:
    tickets = Tickets(Ledger.open(any_ledger_url, create=True))
    secret = tickets.issue(Ticket("acme", "web", "zone-a", "acme-user"))
    racers = 8
    start = threading.Barrier(racers)

    def redeem(_number: int) -> Ticket | None:
        start.wait(timeout=10)
        return tickets.redeem(secret, "acme")

    with ThreadPoolExecutor(racers) as pool:
        won = [found for found in pool.map(redeem, range(racers)) if found is not None]
    assert len(won) == 1


def test_an_open_console_ends_with_its_session(
    cabinet: Cabinet, acme: Visitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "SESSION_CHECK_S", 0.01)
    cookie = acme.client.cookies["vce_session"]
    ctx = cabinet.context

    async def watched(seconds: float) -> int | None:
        try:
            return await asyncio.wait_for(console.session_watch(ctx, cookie), seconds)
        except TimeoutError:
            return None

    assert asyncio.run(watched(0.2)) is None  # a live session: the console stays
    acme.submit("/panel/logout")
    assert asyncio.run(watched(5)) == POLICY
