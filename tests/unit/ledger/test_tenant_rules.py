"""Golden tests of the ledger's rules: plans and quotas, trial, quota requests, enforcement in
runs, blocks. Runs go through the real engine on libvirt's test driver; the ledger is real,
on SQLite and on PostgreSQL."""

from __future__ import annotations

import copy
import datetime as dt

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError, VceError
from ansible_collections.vce.kvm.plugins.module_utils.core.plan import Change, Plan
from ansible_collections.vce.kvm.plugins.module_utils.core.quota import KINDS, QuotaExceeded
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine
from ansible_collections.vce.kvm.plugins.module_utils.engine.gate import Declaration, Gate
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.tenant import (
    run_quota,
    run_tenant,
)
from ansible_collections.vce.kvm.plugins.module_utils.host import connection as host
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import trial_grants
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.conftest import fresh_database_url
from tests.support.images import make_image
from tests.support.ledger import ROOMY, forget_stores

URI = "test:///default"
T0 = dt.datetime(2026, 11, 24, 9, 0, tzinfo=dt.UTC)
SMALL = {**ROOMY, "vms": 2, "vcpus": 3, "ram_gib": 1, "disk_gib": 10, "networks": 1}
TRIAL = {**SMALL, "vms": 1}
PLANS = {
    "small": {"quotas": SMALL, "trial_quotas": TRIAL, "trial_hours": 72},
    "nontrial": {"quotas": SMALL, "trial_hours": 0},
}


@pytest.fixture
def testdriver(monkeypatch, tmp_path):
    """A base image path, and test-driver state from the driver's defaults: the driver keeps
    its objects while any connection to it is open, so every one is closed afterwards."""
    connections = {}
    monkeypatch.setattr(host, "_connections", connections)
    image = tmp_path / "base.qcow2"
    make_image(image)
    yield str(image)
    for conn in connections.values():
        conn.close()


@pytest.fixture
def clock(monkeypatch):
    """The ledger's clock, set by the test."""
    now = {"value": T0}
    monkeypatch.setattr(
        "ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants.utcnow",
        lambda: now["value"],
    )
    return now


def tenant(name="acme", customer="BIN-1", plan="small", **extra):
    return run_tenant({"name": name, "customer": customer, "plan": plan, "plans": PLANS, **extra})


def vm(name, image, vcpus=1, memory_mib=256, state="running"):
    return {
        "name": name,
        "vcpus": vcpus,
        "memory_mib": memory_mib,
        "boot_disk": {"image": image, "size_gib": 2},
        "state": state,
    }


def environment(image, *vms, tenant_name="acme", **extra):
    return {
        "uri": URI,
        "tenant": tenant_name,
        "default_pool": "default-pool",
        "vms": list(vms),
        **extra,
    }


def acme_domains():
    conn = host.connect(URI)
    return sorted(d.name() for d in conn.listAllDomains(0) if d.name().startswith("acme_"))


# -- plans and tenants ------------------------------------------------------------------------


def test_a_new_tenant_gets_its_plans_quotas_and_a_trial(any_ledger_url):
    facts = tenant().facts["tenant"]
    assert facts["state"] == "trial"
    assert facts["quotas"] == TRIAL  # trial quotas while the trial lasts
    assert facts["trial"] == {
        "granted": True,
        "started_at": None,
        "ends_at": None,
        "ended_at": None,
    }
    again = tenant()
    assert not again.changed and again.plan == []


def test_a_second_tenant_of_the_same_customer_gets_no_trial(any_ledger_url):
    tenant("acme")
    second = tenant("acme-two").facts["tenant"]
    assert second["state"] == "active"
    assert second["quotas"] == SMALL
    assert second["trial"]["granted"] is False


@pytest.mark.parametrize(
    "again", ["BIN-1\n", " bin-1 ", "\uff22\uff29\uff2e-1", "BIN-1\u00a0", "\tBin-1"]
)
def test_the_same_customer_written_differently_gets_no_second_trial(any_ledger_url, again):
    tenant("acme")
    second = tenant("acme-two", customer=again).facts["tenant"]
    assert second["state"] == "active"
    assert second["trial"]["granted"] is False


@pytest.mark.parametrize("customer", ["BIN\x00-1", "BIN-\u200b1", "BIN\n-1", "", "  ", 7])
def test_a_customer_with_control_characters_or_nothing_is_refused(any_ledger_url, customer):
    with pytest.raises(SpecError) as caught:
        tenant(customer=customer)
    assert caught.value.field == "customer"


def test_a_trial_granted_before_normalising_counts_for_the_normalised_customer(any_ledger_url):
    tenant("acme", customer="nobody")
    ledger = Ledger.open()
    with ledger.store.locked("acme") as connection:  # a grant as it was stored before: as given
        connection.execute(
            trial_grants.insert().values(customer="Cust-1\n", tenant="old", granted_at=T0)
        )
    second = tenant("acme-two", customer="cust-1").facts["tenant"]
    assert second["state"] == "active"
    assert second["trial"]["granted"] is False


def test_a_tenant_declared_again_with_its_customer_written_differently_is_unchanged(
    any_ledger_url,
):
    tenant("acme")
    again = tenant("acme", customer=" bin-1\n")
    assert not again.changed
    assert again.facts["tenant"]["customer"] == "BIN-1"


def test_a_plan_without_trial_hours_starts_active(any_ledger_url):
    assert tenant(plan="nontrial").facts["tenant"]["state"] == "active"


def test_check_mode_registers_nothing(any_ledger_url):
    result = run_tenant(
        {"name": "acme", "customer": "c", "plan": "small", "plans": PLANS}, check_mode=True
    )
    assert result.changed
    assert [c["kind"] for c in result.plan] == ["plan", "plan", "tenant"]
    assert result.facts["tenant"] == {}
    assert tenant().changed  # nothing was written: the real run still creates it


def test_overrides_apply_over_the_plan(any_ledger_url):
    tenant(plan="nontrial")
    result = tenant(plan="nontrial", quotas={"vcpus": 16})
    assert result.changed
    assert result.diff["after"]["tenant/acme"]["quota_overrides"] == {"vcpus": 16}
    assert result.facts["tenant"]["quotas"]["vcpus"] == 16


@pytest.mark.parametrize(
    ("params", "field", "reason"),
    [
        ({"plan": "gold"}, "plan", "unknown plan 'gold'"),
        ({"customer": None}, "customer", "needs its customer identity"),
        ({"quotas": {"vcpus": -1}}, "quotas.vcpus", "must be zero or more"),
        ({"quotas": {"gpus": 1}}, "quotas.gpus", "unknown quota kind"),
        ({"quotas": {"vcpus": "many"}}, "quotas.vcpus", "must be a whole number"),
        ({"plans": {"bad": {"quotas": {"vms": 1}}}}, "plans.bad.quotas", "missing: vcpus"),
        ({"state": "frozen"}, "state", "must be one of"),
        ({"name": "Bad Name"}, "name", "invalid name"),
    ],
)
def test_bad_tenant_input_names_the_field_and_changes_nothing(
    any_ledger_url, params, field, reason
):
    base = {"name": "acme", "customer": "c", "plan": "small", "plans": PLANS}
    with pytest.raises(SpecError) as error:
        run_tenant({**base, **params})
    assert error.value.field == field
    assert reason in error.value.reason
    assert run_tenant(base, check_mode=True).facts["tenant"] == {}


def test_a_tenant_cannot_change_customer_or_reopen_after_closing(any_ledger_url):
    tenant()
    with pytest.raises(SpecError, match="belongs to customer 'BIN-1'"):
        tenant(customer="BIN-2")
    assert tenant(state="closed").facts["tenant"]["state"] == "closed"
    with pytest.raises(SpecError, match="not reopened"):
        tenant()


# -- enforcement in runs --------------------------------------------------------------------


def test_unknown_tenant_is_refused_before_anything(any_ledger_url, testdriver):
    tenant("globex")  # a ledger that exists: a missing SQLite file is refused for itself
    with pytest.raises(VceError, match="'acme' is not in the ledger"):
        engine.run_environment(environment(testdriver, vm("web1", testdriver)))
    # Check mode shows the plan and says so (tests/unit/engine/test_unregistered_preview.py).
    preview = engine.run_environment(environment(testdriver, vm("web1", testdriver)), True)
    assert "'acme' is not registered" in preview.warnings[0]


def test_check_mode_fails_early_with_limit_used_requested_and_how_to_ask(
    any_ledger_url, testdriver
):
    tenant(plan="nontrial")
    engine.run_environment(environment(testdriver, vm("web1", testdriver, vcpus=2)))
    wanted = environment(
        testdriver, vm("web1", testdriver, vcpus=2), vm("web2", testdriver, vcpus=2)
    )
    with pytest.raises(QuotaExceeded) as error:
        engine.run_environment(wanted, check_mode=True)
    assert str(error.value) == (
        "Quota exceeded for tenant acme: vcpus (vCPUs): limit 3, used 2, requested 2 (would be 4). "
        "Nothing was changed. To ask for more, file a quota increase request (the operator "
        "applies it with vce.kvm.quota, tenant=acme, quotas={vcpus: 4}) or declare less."
    )
    with pytest.raises(QuotaExceeded):
        engine.run_environment(wanted)
    assert acme_domains() == ["acme_web1"]


def test_every_breached_quota_is_named_in_gib_where_it_counts_gib(any_ledger_url, testdriver):
    tenant(plan="nontrial")
    big = environment(testdriver, vm("web1", testdriver, vcpus=4, memory_mib=1536))
    with pytest.raises(QuotaExceeded) as error:
        engine.run_environment(big, check_mode=True)
    assert [b.kind for b in error.value.breaches] == ["vcpus", "ram_gib"]
    assert "ram_gib (RAM): limit 1 GiB, used 0 GiB, requested 1.5 GiB (would be 1.5 GiB)" in str(
        error.value
    )


def test_shrinking_or_staying_is_allowed_above_a_lowered_limit(any_ledger_url, testdriver):
    tenant(plan="nontrial")
    web1 = {**vm("web1", testdriver, vcpus=2), "max_vcpus": 2}
    two = environment(testdriver, web1, vm("web2", testdriver))
    engine.run_environment(two)
    # An override lowering vms below usage is refused...
    with pytest.raises(SpecError, match="vms: limit 1 is below current usage 2"):
        tenant(plan="nontrial", quotas={"vms": 1})
    # ...but the operator may redefine the plan itself lower than what tenants use.
    lowered = {**PLANS, "nontrial": {"quotas": {**SMALL, "vms": 1, "vcpus": 1}, "trial_hours": 0}}
    run_tenant({"name": "other", "customer": "c2", "plan": "nontrial", "plans": lowered})
    # The same run again, or a smaller one, passes; growing does not.
    assert not engine.run_environment(two).changed
    smaller = environment(testdriver, {**web1, "vcpus": 1}, vm("web2", testdriver))
    assert engine.run_environment(smaller).changed
    with pytest.raises(QuotaExceeded, match="vms \\(VMs\\): limit 1, used 2, requested 1"):
        engine.run_environment(
            environment(testdriver, web1, vm("web2", testdriver), vm("web3", testdriver))
        )


def test_rerunning_the_same_declaration_never_reserves_twice(any_ledger_url, testdriver):
    tenant(plan="nontrial")
    ledger = Ledger.open()
    h = host.Host(URI)
    declaration = Declaration({("vm", "web1"): {"vms": 1, "vcpus": 1}})
    plan = Plan([Change("vm", "web1", "create")])
    claims = []
    for _run in range(2):
        gate = Gate(ledger, h, "acme", declaration)
        with gate.reservation(plan), ledger.store.read() as connection:
            claims.append(ledger.reserved(connection, "acme")["vms"])
    assert claims == [1, 1]
    with ledger.store.read() as connection:
        assert ledger.reserved(connection, "acme")["vms"] == 1  # a crashed run's claim stays...
    other = Gate(ledger, h, "acme", Declaration({("vm", "web2"): {"vms": 1}}))
    assert other.others["vms"] == 1  # ...and counts for other runs until it expires


def test_a_failed_apply_releases_its_reservation(any_ledger_url, testdriver):
    tenant(plan="nontrial")
    ledger = Ledger.open()
    gate = Gate(ledger, host.Host(URI), "acme", Declaration({("vm", "web1"): {"vms": 1}}))
    with pytest.raises(RuntimeError), gate.reservation(Plan([Change("vm", "web1", "create")])):
        raise RuntimeError("libvirt failed half-way")
    with ledger.store.read() as connection:
        assert ledger.reserved(connection, "acme")["vms"] == 0


def test_a_run_finishing_during_the_locked_reading_still_counts(
    request, tmp_path, monkeypatch, testdriver
):
    """PostgreSQL lets another run release its claim while this one holds the tenant's lock
    and reads libvirt: that run's VM, defined after the reading, must still count through its
    claim. (SQLite's one write lock keeps the release out until this run's check ends.)"""
    url = fresh_database_url("postgresql", tmp_path, request)
    monkeypatch.setenv("VCE_LEDGER_URL", url)
    tenant(plan="nontrial")
    run_quota({"tenant": "acme", "quotas": {"vms": 1}})
    ledger = Ledger.open()
    with ledger.store.read() as connection:
        ledger.reserve(connection, "run-a", "acme", URI, {"vms": 1})
    h = host.Host(URI)
    read_libvirt = h.inventory

    def reading_while_run_a_finishes(name):
        found = read_libvirt(name)
        with ledger.store.read() as connection:
            ledger.release(connection, "run-a")
        return found

    gate = Gate(ledger, h, "acme", Declaration({("vm", "web2"): {"vms": 1}}))
    monkeypatch.setattr(h, "inventory", reading_while_run_a_finishes)
    with pytest.raises(QuotaExceeded), gate.reservation(Plan([Change("vm", "web2", "create")])):
        pass
    forget_stores()


def test_other_hosts_usage_counts(any_ledger_url, testdriver):
    tenant(plan="nontrial")
    ledger = Ledger.open()
    with ledger.store.read() as connection:
        ledger.record_host_usage(connection, "acme", "qemu+ssh://kvm2/system", {"vms": 2}, 2)
    with pytest.raises(QuotaExceeded, match="vms \\(VMs\\): limit 2, used 2, requested 1"):
        engine.run_environment(environment(testdriver, vm("web1", testdriver)), check_mode=True)


# -- trial ----------------------------------------------------------------------------------


def test_trial_starts_at_the_first_vm_start_and_ends_in_paid_service(
    any_ledger_url, testdriver, clock
):
    tenant()
    stopped = environment(testdriver, vm("web1", testdriver, state="stopped"))
    engine.run_environment(stopped)
    assert tenant().facts["tenant"]["trial"]["started_at"] is None  # defined, never started
    clock["value"] = T0 + dt.timedelta(hours=1)
    engine.run_environment(environment(testdriver, vm("web1", testdriver)))
    trial = tenant().facts["tenant"]["trial"]
    assert trial["started_at"] == "2026-11-24T10:00:00+00:00"
    assert trial["ends_at"] == "2026-11-27T10:00:00+00:00"
    with pytest.raises(QuotaExceeded, match="vms"):  # trial quota: one VM
        engine.run_environment(
            environment(testdriver, vm("web1", testdriver), vm("web2", testdriver)), check_mode=True
        )
    clock["value"] = T0 + dt.timedelta(hours=73, minutes=1)
    facts = tenant().facts["tenant"]
    assert facts["state"] == "active"
    assert facts["trial"]["ended_at"] == "2026-11-27T10:00:00+00:00"
    assert facts["quotas"] == SMALL
    kinds = [(e["kind"], e["at"]) for e in Ledger.open().history("acme")]
    assert ("trial_started", "2026-11-24T10:00:00+00:00") in kinds
    assert ("trial_ended", "2026-11-27T10:00:00+00:00") in kinds


def test_a_trial_that_ends_with_everything_off_is_suspended_not_billed(
    any_ledger_url, testdriver, clock
):
    tenant()
    engine.run_environment(environment(testdriver, vm("web1", testdriver)))
    clock["value"] = T0 + dt.timedelta(hours=10)
    engine.run_environment(environment(testdriver, vm("web1", testdriver, state="stopped")))
    clock["value"] = T0 + dt.timedelta(hours=72)
    facts = tenant(state="suspended").facts["tenant"]
    assert facts["state"] == "suspended"
    ended = [e for e in Ledger.open().history("acme") if e["kind"] == "trial_ended"]
    assert ended[0]["detail"] == {"outcome": "suspended", "running_vms": 0}


# -- quota requests -------------------------------------------------------------------------


def test_a_quota_request_is_applied_with_its_clock(any_ledger_url, clock):
    tenant(plan="nontrial")
    clock["value"] = T0 + dt.timedelta(minutes=12)
    params = {
        "tenant": "acme",
        "quotas": {"vcpus": 8, "ram_gib": 4},
        "requested_by": "support/aigerim",
        "requested_at": "2026-11-24T14:00:00+05:00",
        "reference": "ticket-8812",
    }
    preview = run_quota(params, check_mode=True)
    assert preview.changed and preview.facts["request"] == {}
    result = run_quota(params)
    assert result.facts["tenant"]["quotas"]["vcpus"] == 8
    request = result.facts["request"]
    assert request["requested_at"] == "2026-11-24T09:00:00+00:00"
    assert request["applied_at"] == "2026-11-24T09:12:00+00:00"
    assert request["elapsed_seconds"] == 720.0 and request["met"] is True
    assert not run_quota(params).changed  # the same ticket is recorded once
    assert not run_quota({**params, "reference": None}).changed  # the limits already hold


def test_a_quota_decrease_below_usage_is_refused_with_the_usage(any_ledger_url, testdriver):
    tenant(plan="nontrial")
    engine.run_environment(environment(testdriver, vm("web1", testdriver, vcpus=2)))
    with pytest.raises(SpecError) as error:
        run_quota({"tenant": "acme", "quotas": {"vcpus": 1}})
    assert error.value.field == "quotas"
    assert "vcpus: limit 1 is below current usage 2" in error.value.reason
    assert tenant(plan="nontrial").facts["tenant"]["quotas"]["vcpus"] == 3


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"tenant": "nobody", "quotas": {"vms": 3}}, "'nobody' is not in the ledger"),
        ({"tenant": "acme", "quotas": {"vms": -3}}, "quotas.vms: must be zero or more"),
        ({"tenant": "acme", "quotas": {"cpu": 3}}, "quotas.cpu: unknown quota kind"),
        ({"tenant": "acme", "quotas": {}}, "quotas: name at least one"),
        (
            {"tenant": "acme", "quotas": {"vms": 3}, "requested_at": "yesterday"},
            "requested_at: not an ISO 8601",
        ),
        (
            {"tenant": "acme", "quotas": {"vms": 3}, "requested_at": "2026-11-24T09:00"},
            "needs a UTC offset",
        ),
    ],
)
def test_bad_quota_requests_change_nothing(any_ledger_url, params, message):
    tenant(plan="nontrial")
    with pytest.raises(VceError, match=message):
        run_quota(params)
    assert tenant(plan="nontrial").facts["tenant"]["quotas"] == SMALL


# -- operator locks -------------------------------------------------------------------------


def test_a_suspended_tenant_can_change_nothing(any_ledger_url, testdriver):
    tenant(plan="nontrial")
    declared = environment(testdriver, vm("web1", testdriver))
    engine.run_environment(declared)
    tenant(plan="nontrial", state="suspended", uri=URI, requested_at="2026-11-24T09:00:00+00:00")
    assert host.Host(URI).inventory("acme").domains["acme_web1"].state == "paused"
    assert not engine.run_environment(declared).changed  # paused stays paused, no error
    grown = copy.deepcopy(declared)
    grown["vms"][0]["vcpus"] = 2
    with pytest.raises(VceError, match="suspended by the operator"):
        engine.run_environment(grown)
    tenant(plan="nontrial", state="active", uri=URI)
    assert host.Host(URI).inventory("acme").domains["acme_web1"].state == "running"
    kinds = [e["kind"] for e in Ledger.open().history("acme")]
    assert kinds[-2:] == ["tenant_suspended", "tenant_resumed"]


def test_a_blocked_vm_stays_paused_and_locked_until_unblocked(any_ledger_url, testdriver):
    tenant(plan="nontrial")
    declared = environment(testdriver, vm("web1", testdriver))
    engine.run_environment(declared)
    block = {
        "uri": URI,
        "tenant": "acme",
        "name": "web1",
        "blocked": True,
        "requested_at": "2026-11-24T09:00:00+00:00",
    }
    assert engine.run_vm(block, check_mode=True).changed
    assert host.Host(URI).inventory("acme").domains["acme_web1"].state == "running"
    assert engine.run_vm(block).facts["vm"] == {"name": "web1", "blocked": True}
    assert not engine.run_vm(block).changed
    assert host.Host(URI).inventory("acme").domains["acme_web1"].state == "paused"
    result = engine.run_environment(declared)
    assert not result.changed and "stay paused: web1" in result.warnings[0]
    stopped = copy.deepcopy(declared)
    stopped["vms"][0]["state"] = "stopped"
    with pytest.raises(VceError, match="VM web1 of tenant acme is blocked by the operator"):
        engine.run_environment(stopped)
    engine.run_vm({**block, "blocked": False})
    assert host.Host(URI).inventory("acme").domains["acme_web1"].state == "running"
    events = [e for e in Ledger.open().history("acme") if e["kind"].startswith("vm_")]
    assert [e["kind"] for e in events] == ["vm_blocked", "vm_unblocked"]
    assert events[0]["requested_at"] == "2026-11-24T09:00:00+00:00"


def test_quota_kinds_are_the_nine_of_the_terms():
    assert list(KINDS) == [
        "vms", "vcpus", "ram_gib", "disk_gib", "public_ips", "networks", "zone_links",
        "backup_schedules", "backup_storage_gib",
    ]  # fmt: skip


def test_registering_into_a_missing_sqlite_ledger_creates_it_and_says_so(ledger_url):
    path = ledger_url.removeprefix("sqlite:///")
    first = run_tenant({"name": "acme", "customer": "BIN-1", "plan": "small", "plans": PLANS})
    assert first.warnings == [f"created a new, empty ledger at {path}"]
    assert tenant().warnings == []


def test_a_thread_acting_for_a_run_records_its_id_and_actor(tmp_path):
    import threading

    from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import acting_as

    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    Ledger.open(url, create=True)  # made first: the threads test whose run they record
    seen = {}

    def worker(name: str) -> None:
        with acting_as(f"run-{name}", f"api:{name}"):
            ledger = Ledger.open(url)
            seen[name] = (ledger.run_id, ledger.actor)

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen == {"a": ("run-a", "api:a"), "b": ("run-b", "api:b")}
    assert Ledger.open(url).run_id not in ("run-a", "run-b")  # outside, as before
