"""Users, passwords and API tokens of the control plane, on a real ledger (SQLite and
PostgreSQL): what a caller gets back, and what the ledger holds afterwards."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import time

import pyotp
import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import (
    api_tokens,
    password_resets,
    sessions,
    users,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger, iso
from argon2 import PasswordHasher
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vce_server.identity import (
    RESET_LIFE,
    Identity,
    ResetNotFound,
    TokenNotFound,
    check_code,
    matching_step,
    new_totp_secret,
)
from vce_server.panel.sessions import Sessions
from vce_server.principal import Principal

from tests.support.ledger import register

PASSWORD = "correct horse battery"
# Weak parameters keep the tests quick; the rehash test checks the move to the defaults.
QUICK = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
TOKEN = re.compile(r"vce_[0-9a-f]{8}_[A-Za-z0-9_-]{43}")
NOW = dt.datetime(2026, 12, 4, 12, 0, tzinfo=dt.UTC)


@pytest.fixture
def url(any_ledger_url):
    register(any_ledger_url, "acme")
    register(any_ledger_url, "globex")
    return any_ledger_url


@pytest.fixture
def identity(url):
    return Identity(Ledger.open(url), hasher=QUICK)


def rows(url, table):
    with Ledger.open(url).store.read() as connection:
        return [row._asdict() for row in connection.execute(sa.select(table))]


# -- users ---------------------------------------------------------------------------------


def test_a_password_verifies_and_a_wrong_one_is_refused(identity):
    identity.create_user("Ann", PASSWORD, "customer", "acme")
    identity.create_user("root", PASSWORD, "operator", None)

    assert identity.verify_password("ann", PASSWORD) == Principal(
        "session:ann", "ann", "customer", "acme", frozenset({"read", "write"})
    )
    # Logins compare NFKC and case-folded: the full-width form is the same user.
    assert identity.verify_password("\uff21NN", PASSWORD).actor == "ann"
    assert identity.verify_password("root", PASSWORD).tenant is None
    assert identity.verify_password("ann", PASSWORD + "!") is None
    assert identity.verify_password("nobody", PASSWORD) is None
    assert identity.verify_password("bad login", PASSWORD) is None
    assert identity.verify_password("ann", None) is None


def test_a_new_password_replaces_the_old_and_a_disabled_user_cannot_log_in(identity):
    identity.create_user("ann", PASSWORD, "customer", "acme")
    identity.set_password("ann", "another long password")
    assert identity.verify_password("ann", PASSWORD) is None
    assert identity.verify_password("ann", "another long password") is not None

    first = identity.disable_user("ann")
    assert identity.disable_user("ann").disabled_at == first.disabled_at
    assert identity.verify_password("ann", "another long password") is None


def test_users_are_listed_per_tenant_without_their_hashes(identity):
    identity.create_user("bob", PASSWORD, "customer", "globex")
    identity.create_user("ann", PASSWORD, "customer", "acme")
    identity.create_user("root", PASSWORD, "operator", None)
    assert [user.login for user in identity.list_users()] == ["ann", "bob", "root"]
    [ann] = identity.list_users("acme")
    assert ann.as_dict().keys() == {"login", "role", "tenant", "created_at", "disabled_at"}


def test_the_password_is_stored_only_as_an_argon2id_hash(identity, url):
    identity.create_user("ann", PASSWORD, "customer", "acme")
    [row] = rows(url, users)
    assert row["password_hash"].startswith("$argon2id$")
    assert PASSWORD not in str(row)


def test_a_hash_with_old_parameters_is_replaced_at_the_next_login(identity, url):
    identity.create_user("ann", PASSWORD, "customer", "acme")
    [before] = rows(url, users)
    stronger = Identity(Ledger.open(url), hasher=PasswordHasher(time_cost=2, memory_cost=2048))
    assert stronger.verify_password("ann", PASSWORD) is not None
    [after] = rows(url, users)
    assert after["password_hash"] != before["password_hash"]
    assert "m=2048,t=2" in after["password_hash"]
    assert stronger.verify_password("ann", PASSWORD) is not None


@pytest.mark.parametrize(
    ("login", "password", "role", "tenant", "field"),
    [
        ("", PASSWORD, "customer", "acme", "login"),
        ("ann smith", PASSWORD, "customer", "acme", "login"),
        ("ann\x00", PASSWORD, "customer", "acme", "login"),
        ("a" * 129, PASSWORD, "customer", "acme", "login"),
        ("ann", "short", "customer", "acme", "password"),
        ("ann", "x" * 1025, "customer", "acme", "password"),
        ("ann", PASSWORD + "\n", "customer", "acme", "password"),
        ("ann", PASSWORD, "admin", None, "role"),
        ("ann", PASSWORD, "customer", None, "tenant"),
        ("ann", PASSWORD, "customer", "nosuch", "tenant"),
        ("ann", PASSWORD, "customer", "Bad Name", "tenant"),
        ("ann", PASSWORD, "operator", "acme", "tenant"),
    ],
)
def test_bad_user_input_names_the_field_and_changes_nothing(
    identity, url, login, password, role, tenant, field
):
    with pytest.raises(SpecError) as refused:
        identity.create_user(login, password, role, tenant)
    assert refused.value.field == field
    assert rows(url, users) == []


def test_a_login_is_taken_once_whatever_its_case(identity, url):
    identity.create_user("ann", PASSWORD, "customer", "acme")
    with pytest.raises(SpecError, match="taken") as refused:
        identity.create_user("ANN", PASSWORD, "operator", None)
    assert refused.value.field == "login"
    with pytest.raises(SpecError, match="no user"):
        identity.set_password("bob", PASSWORD)
    assert [row["login"] for row in rows(url, users)] == ["ann"]


# -- tokens --------------------------------------------------------------------------------


def test_a_token_authenticates_as_its_tenant_and_scopes(identity):
    text, view = identity.create_token("customer", "acme", {"write"}, "ci", "ann")
    assert TOKEN.fullmatch(text) and text.startswith(view.prefix + "_")
    assert (view.role, view.tenant, view.scopes, view.name) == (
        "customer",
        "acme",
        ("read", "write"),
        "ci",
    )
    assert identity.authenticate(text) == Principal(
        view.prefix, "token:ci", "customer", "acme", frozenset({"read", "write"})
    )
    reader, read_view = identity.create_token("operator", None, "read", None, "root")
    principal = identity.authenticate(reader)
    assert principal.scopes == frozenset({"read"}) and principal.is_operator
    assert principal.tenant is None and read_view.name == read_view.prefix


def test_an_expired_token_is_refused(identity):
    text, view = identity.create_token("customer", "acme", "read", "ci", "ann", NOW.replace(2027))
    assert identity.authenticate(text, NOW) is not None
    assert identity.authenticate(text, view.expires_at) is None
    assert identity.authenticate(text, NOW.replace(2028)) is None


def test_a_revoked_token_is_refused_at_once_by_the_instance_that_revoked_it(identity, url):
    text, view = identity.create_token("customer", "acme", "write", "ci", "ann")
    assert identity.authenticate(text) is not None  # now in the cache
    revoked = identity.revoke_token(view.prefix)
    assert revoked.revoked_at is not None
    assert identity.authenticate(text) is None
    assert identity.revoke_token(view.prefix).revoked_at == revoked.revoked_at
    assert Identity(Ledger.open(url)).authenticate(text) is None


def test_another_instance_sees_a_revocation_within_its_cache_window(identity, url):
    other = Identity(Ledger.open(url), cache_seconds=0.3)
    text, view = identity.create_token("customer", "acme", "write", "ci", "ann")
    assert other.authenticate(text) is not None
    identity.revoke_token(view.prefix)
    deadline = time.monotonic() + 5
    while other.authenticate(text) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert other.authenticate(text) is None


def test_malformed_wrong_secret_and_other_prefix_are_refused(identity):
    first, one = identity.create_token("customer", "acme", "write", "a", "ann")
    second, _second_view = identity.create_token("customer", "globex", "write", "b", "ann")
    secret_of_second = second.split("_", 2)[2]
    for text in (
        "",
        "vce_",
        first[:-1],
        first + "A",
        first.upper(),
        f" {first}",
        first.replace("vce_", "VCE_"),
        f"{one.prefix}_{secret_of_second}",  # the right prefix, another token's secret
        f"{one.prefix}_{'A' * 43}",
        f"vce_00000000_{first.split('_', 2)[2]}",  # an unknown prefix
        first.encode(),
        None,
    ):
        assert identity.authenticate(text) is None, text
    assert identity.authenticate(first).tenant == "acme"
    assert identity.authenticate(second).tenant == "globex"


def test_the_secret_is_never_stored_nor_listed(identity, url):
    text, view = identity.create_token("customer", "acme", "write", "ci", "ann")
    secret = text.split("_", 2)[2]
    [row] = rows(url, api_tokens)
    assert row["secret_hash"] == hashlib.sha256(text.encode()).hexdigest()
    assert all(secret not in str(value) for value in row.values())
    [listed] = identity.list_tokens()
    assert listed == view
    shown = str(listed.as_dict())
    assert secret not in shown and row["secret_hash"] not in shown
    assert "secret" not in str(sorted(listed.as_dict()))


def test_tokens_are_listed_per_tenant(identity):
    identity.create_token("customer", "acme", "read", "a", "ann")
    identity.create_token("customer", "globex", "read", "g", "ann")
    identity.create_token("operator", None, "write", "o", "root")
    assert [view.name for view in identity.list_tokens("acme")] == ["a"]
    assert sorted(view.name for view in identity.list_tokens()) == ["a", "g", "o"]


def test_last_use_is_written_at_most_once_a_minute(identity, url):
    text, view = identity.create_token("customer", "acme", "read", "ci", "ann")

    def last_used():
        [row] = rows(url, api_tokens)
        return row["last_used_at"]

    assert last_used() is None
    identity.authenticate(text, NOW)
    assert last_used() == NOW
    identity.authenticate(text, NOW + dt.timedelta(seconds=30))
    assert last_used() == NOW
    # Another instance, with nothing cached, respects the minute too.
    Identity(Ledger.open(url)).touch(view.prefix, NOW + dt.timedelta(seconds=59))
    assert last_used() == NOW
    identity.authenticate(text, NOW + dt.timedelta(seconds=61))
    assert last_used() == NOW + dt.timedelta(seconds=61)
    assert identity.list_tokens()[0].last_used_at == NOW + dt.timedelta(seconds=61)


def test_a_customer_cannot_revoke_another_tenants_token(identity):
    text, view = identity.create_token("customer", "globex", "write", "g", "ann")
    with pytest.raises(TokenNotFound) as refused:
        identity.revoke_token(view.prefix, tenant="acme")
    with pytest.raises(TokenNotFound) as unknown:
        identity.revoke_token("vce_00000000", tenant="acme")
    # The same answer as for no token at all: nothing tells the customer it exists.
    assert refused.value.field == unknown.value.field == "prefix"
    assert str(refused.value).replace(view.prefix, "") == str(unknown.value).replace(
        "vce_00000000", ""
    )
    assert identity.authenticate(text) is not None
    assert identity.revoke_token(view.prefix, tenant="globex").revoked_at is not None


@pytest.mark.parametrize(
    ("role", "tenant", "scopes", "name", "created_by", "expires_at", "field"),
    [
        ("admin", None, "read", "x", "ann", None, "role"),
        ("customer", None, "read", "x", "ann", None, "tenant"),
        ("customer", "nosuch", "read", "x", "ann", None, "tenant"),
        ("operator", "acme", "read", "x", "ann", None, "tenant"),
        ("customer", "acme", "admin", "x", "ann", None, "scopes"),
        ("customer", "acme", (), "x", "ann", None, "scopes"),
        ("customer", "acme", "read", "x" * 65, "ann", None, "name"),
        ("customer", "acme", "read", "a\nb", "ann", None, "name"),
        ("customer", "acme", "read", "x", "", None, "created_by"),
        ("customer", "acme", "read", "x", "ann", NOW, "expires_at"),
        ("customer", "acme", "read", "x", "ann", dt.datetime(2099, 1, 1), "expires_at"),
    ],
)
def test_bad_token_input_names_the_field_and_changes_nothing(
    identity, url, role, tenant, scopes, name, created_by, expires_at, field
):
    identity.ledger.fixed_now = NOW
    with pytest.raises(SpecError) as refused:
        identity.create_token(role, tenant, scopes, name, created_by, expires_at)
    assert refused.value.field == field
    assert rows(url, api_tokens) == []


def test_a_bad_prefix_to_revoke_names_the_field(identity):
    for prefix in ("", "vce_ABCDEF12", "abcdef12", "vce_abcdef12_x"):
        with pytest.raises(SpecError) as refused:
            identity.revoke_token(prefix)
        assert refused.value.field == "prefix"


@pytest.fixture(scope="module")
def issued(tmp_path_factory):
    """One SQLite ledger with a token, for the property test (many examples, one ledger)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('identity') / 'ledger.sqlite3'}"
    register(url, "acme")
    identity = Identity(Ledger.open(url), hasher=QUICK)
    text, _view = identity.create_token("customer", "acme", "write", "ci", "ann")
    return identity, text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(max_size=80),
        st.from_regex(r"vce_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", fullmatch=True),
        st.binary(max_size=60),
        st.integers(),
    )
)
def test_authenticate_never_raises_and_accepts_only_what_was_issued(issued, text):
    identity, token = issued
    assert identity.authenticate(text) is None or text == token
    assert identity.authenticate(token) is not None


# -- the second factor (TOTP) ----------------------------------------------------------------


@pytest.fixture
def at_noon(url):
    """An identity whose ledger's clock stands at NOW (a step's start: codes are exact)."""
    return Identity(Ledger.open(url, now=NOW), hasher=QUICK)


def code_at(secret: str, seconds: float = 0) -> str:
    return pyotp.TOTP(secret).at(NOW + dt.timedelta(seconds=seconds))


def test_a_code_counts_for_its_step_or_the_one_before_never_a_later_one():
    secret = new_totp_secret()
    step = int(NOW.timestamp()) // 30
    assert matching_step(secret, code_at(secret), NOW) == step
    assert matching_step(secret, code_at(secret, -30), NOW) == step - 1
    assert matching_step(secret, code_at(secret, -60), NOW) in (None, step, step - 1)
    later = code_at(secret, 30)
    assert matching_step(secret, later, NOW) in (None, step, step - 1)
    assert matching_step(secret, later, NOW) != step + 1


def test_turning_totp_on_needs_a_current_code_and_ends_every_session(at_noon, url):
    at_noon.create_user("ann", PASSWORD, "customer", "acme")
    Sessions(at_noon.ledger).open(at_noon.verify_password("ann", PASSWORD), "192.0.2.1")
    secret = new_totp_secret()
    with pytest.raises(SpecError) as wrong:
        at_noon.enable_totp("ann", secret, code_at(secret, -90))
    assert wrong.value.field == "code"
    assert not at_noon.has_second_factor("ann")
    at_noon.enable_totp("ann", secret, code_at(secret))
    assert at_noon.has_second_factor("ann")
    assert [row["closed_at"] for row in rows(url, sessions)] == [NOW]


def test_a_code_opens_one_login_whichever_instance_is_asked(at_noon, url):
    at_noon.create_user("ann", PASSWORD, "customer", "acme")
    secret = new_totp_secret()
    at_noon.update_user("ann", totp_secret=secret)
    principal = at_noon.verify_password("ann", PASSWORD)
    pending = at_noon.begin_second_step(principal)
    wrong = "000000" if code_at(secret) != "000000" else "999999"
    assert at_noon.second_step(pending, wrong) is None
    # Another server process on the same ledger takes the code of the login begun here: the
    # waiting login is in the ledger, not in one process.
    other = Identity(Ledger.open(url, now=NOW), hasher=QUICK)
    assert other.second_step(pending, code_at(secret)) == principal
    # The key a browser held is spent once the code was taken.
    assert at_noon.second_step(pending, code_at(secret)) is None
    # The code is used up on every instance: a new login cannot take it again.
    assert at_noon.second_step(at_noon.begin_second_step(principal), code_at(secret)) is None
    assert other.second_step(other.begin_second_step(principal), code_at(secret)) is None


def test_wrong_codes_end_the_waiting_login(at_noon):
    at_noon.create_user("ann", PASSWORD, "customer", "acme")
    secret = new_totp_secret()
    at_noon.update_user("ann", totp_secret=secret)
    pending = at_noon.begin_second_step(at_noon.verify_password("ann", PASSWORD))
    wrong = "000000" if code_at(secret) != "000000" else "999999"
    for _attempt in range(5):
        assert at_noon.second_step(pending, wrong) is None
    assert at_noon.pending_login(pending) is None
    assert at_noon.second_step(pending, code_at(secret)) is None


# Five digits; six full-width digits (str.isdigit says yes: refused all the same); a letter.
@pytest.mark.parametrize("code", ["12345", "\uff11" * 6, "12a456", None])
def test_a_malformed_code_names_its_field(code):
    with pytest.raises(SpecError) as error:
        check_code(code)
    assert error.value.field == "code"
    assert check_code("123 456") == "123456"


def test_a_secret_not_drawn_by_the_page_is_refused(at_noon):
    at_noon.create_user("ann", PASSWORD, "customer", "acme")
    for secret in ("", "short", "a" * 32, "A" * 33):
        with pytest.raises(SpecError) as error:
            at_noon.enable_totp("ann", secret, "123456")
        assert error.value.field == "secret"


# -- password resets -------------------------------------------------------------------------


def test_a_reset_link_is_shown_once_voids_the_earlier_and_works_once(at_noon, url):
    at_noon.create_user("ann", PASSWORD, "customer", "acme")
    Sessions(at_noon.ledger).open(at_noon.verify_password("ann", PASSWORD), "192.0.2.1")
    assert at_noon.resettable("ann").login == "ann"
    at_noon.record_reset("ann", "req-1")
    assert at_noon.resettable("ann") is None  # one waits already
    first, facts = at_noon.issue_reset_link("req-1")
    second, _facts = at_noon.issue_reset_link("req-1")
    assert facts == {"login": "ann", "request": "req-1", "expires_at": iso(NOW + RESET_LIFE)}
    assert not at_noon.reset_waiting(first) and at_noon.reset_waiting(second)
    stored = rows(url, password_resets)
    assert [row["id"] for row in stored] == [hashlib.sha256(second.encode()).hexdigest()]
    with pytest.raises(SpecError) as short:
        at_noon.use_reset(second, "short")
    assert short.value.field == "password" and at_noon.reset_waiting(second)
    done = at_noon.use_reset(second, "a brand new passphrase")
    assert (done.login, done.tenant, done.request, done.at) == ("ann", "acme", "req-1", NOW)
    assert at_noon.verify_password("ann", "a brand new passphrase") is not None
    assert [row["closed_at"] for row in rows(url, sessions)] == [NOW]
    with pytest.raises(SpecError) as again:
        at_noon.use_reset(second, "yet another passphrase")
    assert again.value.field == "link"
    with pytest.raises(ResetNotFound):
        at_noon.issue_reset_link("req-1")


def test_no_reset_is_filed_for_an_operator_a_disabled_or_an_unknown_user(at_noon):
    at_noon.create_user("root", PASSWORD, "operator", None)
    at_noon.create_user("gone", PASSWORD, "customer", "acme")
    at_noon.disable_user("gone")
    for login in ("root", "gone", "nobody", "", "bad login", None):
        assert at_noon.resettable(login) is None
