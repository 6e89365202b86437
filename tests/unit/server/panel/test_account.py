"""The second factor (TOTP) and the reset of a forgotten password, as a browser meets them:
codes computed with pyotp for the ledger's clock, which the tests move; the reset's request and
its clock read back from the ledger."""

from __future__ import annotations

import datetime as dt
import re

import pyotp
import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import (
    password_resets,
    requests,
    users,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from vce_server.identity import Identity
from vce_server.limits import RateLimiter

from tests.support.cabinet import PASSWORD, Cabinet, Visitor, hidden_fields

SECRET_SHOWN = re.compile(r'name="secret" value="([A-Z2-7]{32})"')
NEW = "a brand new passphrase"


class Clock:
    """The ledger's clock (sessions, codes, resets) and the terms' (a request's logged_at),
    fixed, moved by the test."""

    def __init__(self, cabinet: Cabinet) -> None:
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        # 5 s into a 30-second step: a step's code and the next are far enough apart.
        self.now = now - dt.timedelta(seconds=now.timestamp() % 30) + dt.timedelta(seconds=5)
        self.cabinet = cabinet
        cabinet.context.ledger.fixed_now = self.now
        cabinet.context.terms.clock = lambda: self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)
        self.cabinet.context.ledger.fixed_now = self.now

    def code(self, secret: str, seconds: float = 0) -> str:
        return pyotp.TOTP(secret).at(self.now + dt.timedelta(seconds=seconds))


@pytest.fixture
def clock(cabinet: Cabinet) -> Clock:
    # Not the rate limit's tests: as many logins as a test needs.
    cabinet.context.logins = RateLimiter(1000, 1000)
    return Clock(cabinet)


def turn_on(visitor: Visitor, clock: Clock) -> str:
    page = visitor.get("/panel/account").text
    secret = SECRET_SHOWN.search(page).group(1)
    assert f"otpauth://totp/vce.kvm:acme-user?secret={secret}" in page
    answer = visitor.submit("/panel/account/totp", {"secret": secret, "code": clock.code(secret)})
    assert answer.status_code == 200, answer.text
    assert "The second factor is on" in answer.text
    return secret


def password_step(cabinet: Cabinet, login: str = "acme-user") -> Visitor:
    visitor = Visitor(cabinet.app)
    answer = visitor.log_in(login)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/panel/login/code?next=/panel/"
    return visitor


def give_code(visitor: Visitor, code: str):
    page = visitor.get("/panel/login/code")
    assert page.status_code == 200
    token = hidden_fields(page.text)["csrf"]
    return visitor.client.post(
        "/panel/login/code", data={"csrf": token, "code": code, "next": "/panel/"}
    )


def stored_secret(cabinet: Cabinet, login: str = "acme-user") -> str | None:
    with Ledger.open(cabinet.ledger_url).store.read() as connection:
        return connection.execute(
            sa.select(users.c.totp_secret).where(users.c.login == login)
        ).scalar_one()


# -- the second factor -----------------------------------------------------------------------


def test_turning_it_on_needs_a_current_code_of_the_secret_shown(cabinet, clock):
    visitor = cabinet.customer("acme")
    page = visitor.get("/panel/account").text
    secret = SECRET_SHOWN.search(page).group(1)
    wrong = visitor.submit("/panel/account/totp", {"secret": secret, "code": "000000"})
    stale = visitor.submit(
        "/panel/account/totp", {"secret": secret, "code": clock.code(secret, -60)}
    )
    assert (wrong.status_code, stale.status_code) == (422, 422)
    assert "Code: is not the current code" in wrong.text
    assert stored_secret(cabinet) is None
    other = cabinet.logged_in("acme-user")
    assert turn_on(visitor, clock) == stored_secret(cabinet)
    # On: a session opened with the password alone ends; this browser keeps a new one.
    assert other.get("/panel/").status_code == 303
    assert visitor.get("/panel/").status_code == 200


def test_a_login_asks_for_the_code_and_the_half_way_state_opens_nothing(cabinet, clock):
    secret = turn_on(cabinet.customer("acme"), clock)
    clock.advance(30)
    visitor = password_step(cabinet)
    assert "vce_session" not in visitor.client.cookies
    for path in ("/panel/", "/panel/account"):
        assert visitor.get(path).status_code == 303
    wrong = give_code(visitor, "123456" if clock.code(secret) != "123456" else "654321")
    assert wrong.status_code == 401 and "Wrong or used code" in wrong.text
    right = give_code(visitor, clock.code(secret))
    assert right.status_code == 303 and right.headers["location"] == "/panel/"
    assert visitor.get("/panel/").status_code == 200


def test_a_code_works_once_even_through_another_instance(cabinet, clock):
    secret = turn_on(cabinet.customer("acme"), clock)
    clock.advance(30)
    code = clock.code(secret)
    first = password_step(cabinet)
    assert give_code(first, code).status_code == 303
    again = give_code(password_step(cabinet), code)
    assert again.status_code == 401
    # A second server on the same ledger knows the code is used: the sessions table says so.
    other = Identity(cabinet.context.ledger)
    pending = other.begin_second_step(
        cabinet.context.identity.verify_password("acme-user", PASSWORD)
    )
    assert other.second_step(pending, code) is None
    clock.advance(30)
    assert give_code(password_step(cabinet), clock.code(secret)).status_code == 303


def test_the_previous_steps_code_is_taken_a_later_one_is_not(cabinet, clock):
    secret = turn_on(cabinet.customer("acme"), clock)
    clock.advance(60)
    assert give_code(password_step(cabinet), clock.code(secret, 30)).status_code == 401
    assert give_code(password_step(cabinet), clock.code(secret, -30)).status_code == 303


def test_five_wrong_codes_start_the_login_again(cabinet, clock):
    secret = turn_on(cabinet.customer("acme"), clock)
    clock.advance(30)
    visitor = password_step(cabinet)
    token = hidden_fields(visitor.get("/panel/login/code").text)["csrf"]
    wrong = "111111" if clock.code(secret) != "111111" else "222222"
    for _attempt in range(5):
        answer = visitor.client.post("/panel/login/code", data={"csrf": token, "code": wrong})
    assert "log in again" in answer.text
    answer = visitor.client.post(
        "/panel/login/code", data={"csrf": token, "code": clock.code(secret)}
    )
    assert answer.status_code == 401
    assert visitor.get("/panel/login/code").headers["location"] == "/panel/login"


def test_a_wrong_code_counts_against_the_login_rate_limit(cabinet, clock):
    secret = turn_on(cabinet.customer("acme"), clock)
    clock.advance(30)
    # Two tries left for this address: the password, then one code.
    cabinet.context.logins = RateLimiter(0.2, 2, clock=lambda: 1000.0)
    visitor = password_step(cabinet)
    wrong = "111111" if clock.code(secret) != "111111" else "222222"
    assert give_code(visitor, wrong).status_code == 401
    assert give_code(visitor, clock.code(secret)).status_code == 429
    assert visitor.get("/panel/").status_code == 303


def test_the_pending_login_expires(cabinet, clock):
    secret = turn_on(cabinet.customer("acme"), clock)
    visitor = password_step(cabinet)
    token = hidden_fields(visitor.get("/panel/login/code").text)["csrf"]
    clock.advance(5 * 60 + 1)
    answer = visitor.client.post(
        "/panel/login/code", data={"csrf": token, "code": clock.code(secret)}
    )
    assert answer.status_code == 401 and "expired" in answer.text


def test_turning_it_off_needs_a_code_not_used_to_log_in(cabinet, clock):
    secret = turn_on(cabinet.customer("acme"), clock)
    clock.advance(30)
    visitor = password_step(cabinet)
    code = clock.code(secret)
    assert give_code(visitor, code).status_code == 303
    refused = visitor.submit("/panel/account/totp/off", {"code": code})
    assert refused.status_code == 422 and "used already" in refused.text
    assert stored_secret(cabinet) == secret
    clock.advance(30)
    done = visitor.submit("/panel/account/totp/off", {"code": clock.code(secret)})
    assert done.status_code == 200 and "The second factor is off" in done.text
    assert stored_secret(cabinet) is None
    assert Visitor(cabinet.app).log_in("acme-user").headers["location"] == "/panel/"


def test_a_disabled_user_cannot_finish_the_code_step(cabinet, clock):
    secret = turn_on(cabinet.customer("acme"), clock)
    clock.advance(30)
    visitor = password_step(cabinet)
    cabinet.context.identity.disable_user("acme-user")
    assert give_code(visitor, clock.code(secret)).status_code == 401
    assert visitor.get("/panel/").status_code == 303


# -- a forgotten password --------------------------------------------------------------------


def ask_reset(cabinet: Cabinet, login: str):
    visitor = Visitor(cabinet.app)
    token = hidden_fields(visitor.get("/panel/reset").text)["csrf"]
    return visitor.client.post("/panel/reset", data={"csrf": token, "login": login})


def request_rows(cabinet: Cabinet) -> list:
    with Ledger.open(cabinet.ledger_url).store.read() as connection:
        return list(connection.execute(sa.select(requests).order_by(requests.c.logged_at)))


def issue_link(cabinet: Cabinet, request_id: str) -> str:
    """As support does it: the operator API's password-link, with an operator's token."""
    text, _view = cabinet.context.identity.create_token("operator", None, "write", None, "t")
    visitor = Visitor(cabinet.app)
    answer = visitor.client.post(
        f"/v1/operator/requests/{request_id}/password-link",
        headers={"Authorization": f"Bearer {text}"},
    )
    assert answer.status_code == 200, answer.text
    reset = answer.json()["reset"]
    assert reset["login"] == "acme-user" and reset["request"] == request_id
    return reset["link"]


def set_password(visitor: Visitor, link: str, new: str = NEW, again: str = NEW):
    page = visitor.get(link)
    assert page.status_code == 200, page.text
    fields = re.search(r'name="secret" value="([^"]+)"', page.text).group(1)
    return visitor.client.post(
        "/panel/reset/password",
        data={"csrf": hidden_fields(page.text)["csrf"], "secret": fields, "new": new,
              "again": again},
    )  # fmt: skip


def test_the_reset_form_answers_alike_for_any_login_and_files_a_request(cabinet, clock):
    cabinet.customer("acme")
    known = ask_reset(cabinet, "acme-user")
    unknown = ask_reset(cabinet, "nobody-here")
    malformed = ask_reset(cabinet, "no body\x00")
    assert known.status_code == unknown.status_code == malformed.status_code == 200
    assert known.text == unknown.text == malformed.text
    assert "nobody-here" not in unknown.text
    rows = request_rows(cabinet)
    assert [(row.tenant, row.kind, row.logged_at) for row in rows] == [
        ("acme", "password", clock.now)
    ]
    with Ledger.open(cabinet.ledger_url).store.read() as connection:
        reset = connection.execute(sa.select(password_resets)).one()
    assert (reset.login, reset.request, reset.expires_at - reset.created_at) == (
        "acme-user", rows[0].reference, dt.timedelta(minutes=20),
    )  # fmt: skip
    # A reset waiting already: a second form files nothing more.
    ask_reset(cabinet, "acme-user")
    assert len(request_rows(cabinet)) == 1


def test_the_link_sets_the_password_once_and_meets_the_clock(cabinet, clock):
    visitor = cabinet.customer("acme")
    ask_reset(cabinet, "acme-user")
    reference = request_rows(cabinet)[0].reference
    voided = issue_link(cabinet, reference)
    clock.advance(10 * 60)
    link = issue_link(cabinet, reference)
    assert Visitor(cabinet.app).get(voided).status_code == 404
    stranger = Visitor(cabinet.app)
    differ = set_password(stranger, link, NEW, NEW + "!")
    assert differ.status_code == 422 and "differ" in differ.text
    short = set_password(stranger, link, "short", "short")
    assert short.status_code == 422 and "at least 12 characters" in short.text
    done = set_password(stranger, link)
    assert done.status_code == 200 and "The password is set" in done.text
    assert visitor.get("/panel/").status_code == 303  # every session ended
    assert stranger.get(link).status_code == 404
    identity = cabinet.context.identity
    assert identity.verify_password("acme-user", NEW) is not None
    assert identity.verify_password("acme-user", PASSWORD) is None
    row = request_rows(cabinet)[0]
    assert row.fulfilled_at == clock.now
    shown = cabinet.context.terms.request(identity.verify_password("acme-user", NEW), reference)
    assert shown["status"] == "met"


def test_a_link_used_late_is_refused(cabinet, clock):
    cabinet.customer("acme")
    ask_reset(cabinet, "acme-user")
    link = issue_link(cabinet, request_rows(cabinet)[0].reference)
    clock.advance(20 * 60 + 1)
    assert Visitor(cabinet.app).get(link).status_code == 404
    assert cabinet.context.identity.verify_password("acme-user", PASSWORD) is not None


def test_support_cannot_issue_a_link_without_a_reset_request(cabinet, clock):
    text, _view = cabinet.context.identity.create_token("operator", None, "write", None, "t")
    answer = Visitor(cabinet.app).client.post(
        "/v1/operator/requests/req-none/password-link",
        headers={"Authorization": f"Bearer {text}"},
    )
    assert answer.status_code == 404


def test_support_issues_the_link_from_the_request_queue_page(cabinet, clock):
    cabinet.customer("acme")
    operator = cabinet.operator("support")
    ask_reset(cabinet, "acme-user")
    reference = request_rows(cabinet)[0].reference
    queue = operator.get("/panel/operator/requests")
    assert f"Issue the reset link for {reference}" in queue.text
    answer = operator.submit(
        f"/panel/operator/requests/{reference}/password-link", page="/panel/operator/requests"
    )
    assert answer.status_code == 200, answer.text
    link = re.search(r'value="http://testserver(/panel/reset/[^"]+)"', answer.text).group(1)
    assert set_password(Visitor(cabinet.app), link).status_code == 200
    assert request_rows(cabinet)[0].fulfilled_at == clock.now
    # Nothing waits on that request any more.
    again = operator.submit(
        f"/panel/operator/requests/{reference}/password-link", page="/panel/operator/requests"
    )
    assert again.status_code == 404
