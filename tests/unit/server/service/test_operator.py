"""The operator's side on SQLite and PostgreSQL: tenants changed through vce.kvm.tenant's path
(same refusals), requests found and fulfilled, incidents confirmed, hosts and images listed."""

from __future__ import annotations

import datetime as dt

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.image import (
    ImageRecords,
    ImageValues,
)
from ansible_collections.vce.kvm.plugins.module_utils.finance.requests import RequestLog
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import probe_status
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from vce_server.errors import ApiError
from vce_server.identity import Identity
from vce_server.service.operator import Operator
from vce_server.service.terms import Terms

from tests.support.ledger import register
from tests.support.testdriver import URI as TEST_URI
from tests.unit.server.service.test_terms import (
    OPERATOR,
    T0,
    URI,
    add_host,
    at,
    customer,
    limit_of,
    place,
    register_small,
    use,
)


def test_tenants_are_listed_and_an_unknown_one_is_not_found(any_ledger_url):
    register(any_ledger_url, "acme")
    register(any_ledger_url, "beta")
    operator = Operator(any_ledger_url)
    listed = operator.tenants(OPERATOR)
    assert [item["name"] for item in listed] == ["acme", "beta"]
    assert listed[0]["state"] == "active"
    assert operator.tenant(OPERATOR, "beta")["customer"] == "customer-of-beta"
    with pytest.raises(ApiError) as error:
        operator.tenant(OPERATOR, "nobody")
    assert error.value.status == 404


def test_a_tenant_changes_through_the_tenant_modules_rules(any_ledger_url):
    register_small(any_ledger_url, "acme", vcpus=4)
    use(any_ledger_url, "acme", vcpus=3)
    operator = Operator(any_ledger_url)
    changed = operator.put_tenant(OPERATOR, "acme", {"quotas": {"vcpus": 6}})
    assert changed["changed"] is True
    assert [step["field"] for step in changed["plan"]] == ["quota_overrides"]
    assert limit_of(any_ledger_url, "acme", "vcpus") == 6
    with pytest.raises(SpecError) as error:
        operator.put_tenant(OPERATOR, "acme", {"quotas": {"vcpus": 2}})
    assert error.value.field == "quotas"
    assert "below what tenant acme uses" in error.value.reason
    with pytest.raises(SpecError) as error:
        operator.put_tenant(OPERATOR, "acme", {"state": "suspended", "uri": URI})
    assert error.value.field == "uri"
    assert limit_of(any_ledger_url, "acme", "vcpus") == 6


def test_suspension_and_resumption_reach_the_host_the_tenant_is_placed_on(any_ledger_url):
    register(any_ledger_url, "acme")
    add_host(any_ledger_url, uri="test:///default")
    place(any_ledger_url, "acme")
    operator = Operator(any_ledger_url)
    suspended = operator.put_tenant(OPERATOR, "acme", {"state": "suspended", "reason": "unpaid"})
    assert suspended["tenant"]["state"] == "suspended"
    assert operator.put_tenant(OPERATOR, "acme", {"state": "suspended"})["changed"] is False
    resumed = operator.put_tenant(OPERATOR, "acme", {"state": "active"})
    assert resumed["tenant"]["state"] == "active"


def test_a_new_tenant_is_registered_on_a_known_plan(any_ledger_url):
    register(any_ledger_url, "acme")
    operator = Operator(any_ledger_url)
    made = operator.put_tenant(OPERATOR, "newco", {"customer": "c-newco", "plan": "lab"})
    assert made["tenant"]["plan"] == "lab"
    with pytest.raises(SpecError) as error:
        operator.put_tenant(OPERATOR, "other", {"customer": "c-other", "plan": "gold"})
    assert error.value.field == "plan"
    assert [plan["name"] for plan in operator.plans(OPERATOR)] == ["lab"]


def test_a_request_id_shared_by_two_tenants_needs_the_tenant(any_ledger_url):
    register(any_ledger_url, "acme")
    register(any_ledger_url, "beta")
    log = RequestLog(Ledger.open(any_ledger_url, actor="support"))
    for tenant in ("acme", "beta"):
        log.log(tenant, "password", "CRM-1", T0)
    operator = Operator(any_ledger_url, clock=at(T0 + dt.timedelta(minutes=5)))
    with pytest.raises(SpecError) as error:
        operator.fulfil(OPERATOR, "CRM-1", {})
    assert error.value.field == "tenant"
    done = operator.fulfil(OPERATOR, "CRM-1", {"tenant": "beta"})
    assert (done["tenant"], done["status"]) == ("beta", "met")
    assert [item["tenant"] for item in operator.requests(OPERATOR, open_only=True)] == ["acme"]
    with pytest.raises(SpecError) as error:
        operator.fulfil(OPERATOR, "CRM-1", {"tenant": "acme", "quotas": {"vcpus": 8}})
    assert error.value.field == "quotas"
    with pytest.raises(ApiError) as missing:
        operator.fulfil(OPERATOR, "CRM-2", {})
    assert missing.value.status == 404
    with pytest.raises(SpecError) as error:
        operator.fulfil(OPERATOR, "CRM-1", {"tenant": "acme", "when": "now"})
    assert error.value.field == "when"


def test_a_queued_quota_increase_may_be_granted_with_other_limits(any_ledger_url):
    register_small(any_ledger_url, "acme", vcpus=4)
    filed = Terms(any_ledger_url).file_request(
        customer("acme"), {"kind": "quota_increase", "quotas": {"vcpus": 40}}
    )
    done = Operator(any_ledger_url).fulfil(OPERATOR, filed["id"], {"quotas": {"vcpus": 24}})
    assert done["fulfilled_at"] is not None
    assert limit_of(any_ledger_url, "acme", "vcpus") == 24


def test_granting_a_queued_increase_never_lowers_a_limit_raised_meanwhile(any_ledger_url):
    register_small(any_ledger_url, "acme", vcpus=4, ram_gib=4)
    filed = Terms(any_ledger_url).file_request(
        customer("acme"), {"kind": "quota_increase", "quotas": {"vcpus": 20, "ram_gib": 40}}
    )
    operator = Operator(any_ledger_url)
    operator.put_tenant(OPERATOR, "acme", {"quotas": {"vcpus": 30, "ram_gib": 4}})
    done = operator.fulfil(OPERATOR, filed["id"], {})
    assert done["status"] == "met"
    assert limit_of(any_ledger_url, "acme", "vcpus") == 30
    assert limit_of(any_ledger_url, "acme", "ram_gib") == 40


def test_confirming_an_unknown_incident_is_not_found(any_ledger_url):
    register(any_ledger_url, "acme")
    operator = Operator(any_ledger_url)
    with pytest.raises(ApiError) as error:
        operator.confirm_incident(OPERATOR, 99, {})
    assert error.value.status == 404
    with pytest.raises(SpecError) as bad:
        operator.confirm_incident(OPERATOR, 0, {})
    assert bad.value.field == "id"


def test_hosts_show_their_uri_and_load_and_images_their_path(any_ledger_url):
    register(any_ledger_url, "acme")
    add_host(any_ledger_url)
    add_host(any_ledger_url, name="kvm2", zone="b", uri="qemu+ssh://root@kvm2.internal/system")
    place(any_ledger_url, "acme")
    ledger = Ledger.open(any_ledger_url)
    with ledger.store.write() as connection:
        values = ImageValues("/srv/images/debian.qcow2", "qcow2", 2**31, "ab" * 32)
        ImageRecords(ledger).put(connection, "a", "debian", values)
    operator = Operator(any_ledger_url)
    shown = operator.hosts(OPERATOR)
    assert [(h["name"], h["zone"], h["uri"], h["tenants"]) for h in shown] == [
        ("kvm1", "a", URI, 1), ("kvm2", "b", "qemu+ssh://root@kvm2.internal/system", 0),
    ]  # fmt: skip
    assert shown[0]["remote"] is False
    assert [(i["zone"], i["name"], i["path"]) for i in operator.images(OPERATOR)] == [
        ("a", "debian", "/srv/images/debian.qcow2")
    ]


def test_an_incident_is_not_confirmed_or_restored_in_the_future(any_ledger_url):
    register(any_ledger_url, "acme")
    found = Terms(any_ledger_url, clock=at(T0)).report_incident(customer("acme"), {"vm": "web"})
    operator = Operator(any_ledger_url, clock=at(T0 + dt.timedelta(minutes=5)))
    for step in (operator.confirm_incident, operator.restore_incident):
        with pytest.raises(SpecError) as error:
            step(OPERATOR, found["id"], {"at": (T0 + dt.timedelta(hours=1)).isoformat()})
        assert error.value.field == "at"
    assert operator.incidents(OPERATOR, "acme")[0]["confirmed_at"] is None


def test_a_blocks_body_holds_its_reason_and_nothing_else():
    assert Operator.block_reason({"reason": "abuse report 4711"}) == "abuse report 4711"
    assert Operator.block_reason(None) == ""
    with pytest.raises(SpecError) as bad:
        Operator.block_reason({"reason": "x", "uri": TEST_URI})
    assert bad.value.field == "uri"


def test_a_token_made_for_a_tenant_works_until_it_is_revoked(any_ledger_url):
    register(any_ledger_url, "acme")
    identity = Identity(Ledger.open(any_ledger_url))
    made = Operator.create_token(
        identity, OPERATOR, {"tenant": "acme", "scopes": "read write", "name": "ci"}
    )
    assert made["prefix"] in made["token"]
    assert (made["tenant"], made["role"], made["scopes"]) == ("acme", "customer", ["read", "write"])
    assert made["created_by"] == "ops"
    principal = identity.authenticate(made["token"])
    assert (principal.tenant, principal.role) == ("acme", "customer")
    listed = Operator.tokens(identity, "acme")
    assert [item["prefix"] for item in listed] == [made["prefix"]]
    assert "token" not in listed[0] and "secret_hash" not in listed[0]
    revoked = Operator.revoke_token(identity, made["prefix"])
    assert revoked["revoked_at"] is not None
    assert identity.authenticate(made["token"]) is None
    with pytest.raises(ApiError) as error:
        Operator.revoke_token(identity, "vce_0badc0de")
    assert error.value.status == 404


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tenant": "nobody"}, "tenant"),
        ({}, "tenant"),
        ({"tenant": "acme", "scopes": "admin"}, "scopes"),
        ({"tenant": "acme", "expires_at": "2001-01-01T00:00:00+00:00"}, "expires_at"),
        ({"tenant": "acme", "role": "operator"}, "role"),
    ],
)
def test_bad_token_requests_are_refused_naming_the_field(ledger_url, body, field):
    register(ledger_url, "acme")
    identity = Identity(Ledger.open(ledger_url))
    with pytest.raises(SpecError) as error:
        Operator.create_token(identity, OPERATOR, body)
    assert error.value.field == field
    assert Operator.tokens(identity) == []


def test_a_customers_user_is_made_reset_and_disabled(any_ledger_url):
    register(any_ledger_url, "acme")
    identity = Identity(Ledger.open(any_ledger_url))
    made = Operator.create_user(
        identity, {"login": "aigerim", "password": "correct horse battery", "tenant": "acme"}
    )
    assert (made["login"], made["role"], made["tenant"]) == ("aigerim", "customer", "acme")
    assert identity.verify_password("aigerim", "correct horse battery").tenant == "acme"
    Operator.set_password(identity, "aigerim", {"password": "another long phrase"})
    assert identity.verify_password("aigerim", "correct horse battery") is None
    assert identity.verify_password("aigerim", "another long phrase") is not None
    assert Operator.disable_user(identity, "aigerim")["disabled_at"] is not None
    assert identity.verify_password("aigerim", "another long phrase") is None
    assert [user["login"] for user in Operator.users(identity, "acme")] == ["aigerim"]
    assert "password_hash" not in Operator.users(identity)[0]
    with pytest.raises(ApiError) as error:
        Operator.set_password(identity, "nobody", {"password": "another long phrase"})
    assert error.value.status == 404
    with pytest.raises(SpecError) as bad:
        Operator.create_user(
            identity, {"login": "x1", "password": "long enough pass", "tenant": "acme",
                       "role": "operator"},
        )  # fmt: skip
    assert bad.value.field == "role"


def test_an_incident_is_classified_and_an_unknown_one_is_not_found(any_ledger_url):
    register(any_ledger_url, "acme")
    found = Terms(any_ledger_url, clock=at(T0)).report_incident(customer("acme"), {"vm": "web"})
    operator = Operator(any_ledger_url)
    classified = operator.classify_incident(OPERATOR, found["id"], {"cause": "customer"})
    assert classified["cause"] == "customer"
    assert operator.incidents(OPERATOR, "acme")[0]["cause"] == "customer"
    with pytest.raises(SpecError) as error:
        operator.classify_incident(OPERATOR, found["id"], {"cause": "weather"})
    assert error.value.field == "cause"
    with pytest.raises(ApiError) as missing:
        operator.classify_incident(OPERATOR, 99, {"cause": "customer"})
    assert missing.value.status == 404


def test_a_maintenance_window_is_recorded_once_and_listed_latest_first(any_ledger_url):
    register(any_ledger_url, "acme")
    operator = Operator(any_ledger_url)
    window = {
        "cause": "maintenance", "started_at": (T0 + dt.timedelta(days=2)).isoformat(),
        "ended_at": (T0 + dt.timedelta(days=2, hours=1)).isoformat(),
        "announced_at": T0.isoformat(), "note": "kernel",
    }  # fmt: skip
    first = operator.exclude(OPERATOR, window)
    assert operator.exclude(OPERATOR, window)["id"] == first["id"]
    earlier = {**window, "started_at": T0.isoformat(), "tenant": "acme", "cause": "customer"}
    operator.exclude(OPERATOR, earlier)
    listed = operator.exclusions(OPERATOR)
    assert [(row["cause"], row["tenant"]) for row in listed] == [
        ("maintenance", ""), ("customer", "acme"),
    ]  # fmt: skip
    assert listed[0]["actor"] == "ops" and listed[0]["note"] == "kernel"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"announced_at": (T0 + dt.timedelta(days=3)).isoformat()}, "announced_at"),
        ({"ended_at": None}, "ended_at"),
        ({"started_at": "tomorrow"}, "started_at"),
        ({"cause": "provider"}, "cause"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_a_bad_window_is_refused_naming_the_field(ledger_url, change, field):
    register(ledger_url, "acme")
    operator = Operator(ledger_url)
    window = {
        "cause": "maintenance", "started_at": (T0 + dt.timedelta(days=2)).isoformat(),
        "ended_at": (T0 + dt.timedelta(days=2, hours=1)).isoformat(),
        "announced_at": T0.isoformat(), **change,
    }  # fmt: skip
    with pytest.raises(SpecError) as error:
        operator.exclude(OPERATOR, window)
    assert error.value.field == field
    assert operator.exclusions(OPERATOR) == []


def test_a_hosts_probe_state_counts_the_vms_it_watches_and_those_down(any_ledger_url):
    register(any_ledger_url, "acme")
    add_host(any_ledger_url)
    ledger = Ledger.open(any_ledger_url)
    with ledger.store.write() as connection:
        for vm, up in (("web", True), ("db", False)):
            connection.execute(
                probe_status.insert().values(
                    host=URI, tenant="acme", vm=vm, state="running" if up else "shutoff",
                    reason="", up=up, since=T0, checked_at=T0 + dt.timedelta(minutes=1 + up),
                )
            )  # fmt: skip
    (host,) = Operator(any_ledger_url).hosts(OPERATOR)
    assert host["probe"] == {
        "watched": 2, "down": 1, "checked_at": (T0 + dt.timedelta(minutes=2)).isoformat(),
    }  # fmt: skip
