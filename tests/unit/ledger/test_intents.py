"""Write-ahead usage intents on SQLite and PostgreSQL: written pending, confirmed into usage
rows dated at the apply (or, after a killed run, within it and under its id), dropped when
libvirt does not show their object; each state once, whoever records it."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.ledger import intents
from ansible_collections.vce.kvm.plugins.module_utils.ledger.intents import Intent
from ansible_collections.vce.kvm.plugins.module_utils.ledger.metering import (
    Meter,
    Metering,
    UsageChange,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import (
    usage_intents,
    usage_intervals,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

HOST = "qemu+ssh://kvm1/system"
PLANNED = dt.datetime(2026, 12, 4, 3, 0, tzinfo=dt.UTC)
APPLIED = PLANNED + dt.timedelta(seconds=40)
LATER = PLANNED + dt.timedelta(hours=2)
WEB1 = Meter("running", "web1", vcpus=2, ram_mib=1024, disk_mib=10240)
DATA1 = Meter("present", "web1", disk_mib=2048)


def ledger_of(url: str, run_id: str, now: dt.datetime) -> Ledger:
    return Ledger.open(url, create=True, actor="tester", run_id=run_id, now=now)


def plan(
    url: str, run_id: str, tenant: str, *planned: Intent, at: dt.datetime = PLANNED
) -> list[str]:
    """A run's reservation step: its intents written, pending."""
    ledger = ledger_of(url, run_id, at)
    with ledger.store.locked(tenant) as connection:
        return intents.write(connection, ledger, tenant, HOST, list(planned))


def apply_confirmed(url: str, keys: list[str], observed: dict) -> intents.Confirmation:
    """The run's own confirmation after its changes."""
    ledger = ledger_of(url, "run-a", APPLIED)
    with ledger.store.locked("acme") as connection:
        done = intents.confirm(
            connection, Metering(ledger), ("acme", HOST, [("vm", "web1")]), observed, APPLIED,
            "run-a",
        )  # fmt: skip
        intents.resolve(connection, keys, observed, done, ("run-a", APPLIED))
    return done


def recovered(url: str, observed: dict, tenant: str = "acme") -> list[UsageChange]:
    """The next run of the tenant, two hours later, finding what a killed run left."""
    ledger = ledger_of(url, "run-b", LATER)
    with ledger.store.locked(tenant) as connection:
        return intents.recover(connection, Metering(ledger), tenant, HOST, observed)


def usage_rows(url: str) -> list[tuple]:
    with Ledger.open(url).store.read() as connection:
        query = sa.select(
            usage_intervals.c.kind, usage_intervals.c.name, usage_intervals.c.state,
            usage_intervals.c.started_at, usage_intervals.c.run_id, usage_intervals.c.source,
        ).order_by(usage_intervals.c.kind, usage_intervals.c.name, usage_intervals.c.started_at)  # fmt: skip
        return [tuple(row) for row in connection.execute(query)]


def intent_rows(url: str) -> list[tuple]:
    with Ledger.open(url).store.read() as connection:
        query = sa.select(
            usage_intents.c.kind, usage_intents.c.name, usage_intents.c.run_id,
            usage_intents.c.resolution, usage_intents.c.resolved_by,
        ).order_by(usage_intents.c.kind, usage_intents.c.name, usage_intents.c.run_id)  # fmt: skip
        return [tuple(row) for row in connection.execute(query)]


def pending(url: str, tenant: str = "acme") -> bool:
    with Ledger.open(url).store.read() as connection:
        return intents.has_pending(connection, tenant, HOST)


CREATE_WEB1 = Intent("vm", "web1", "create")


def test_an_intent_is_pending_until_its_run_confirms_it_at_the_apply(any_ledger_url):
    keys = plan(any_ledger_url, "run-a", "acme", CREATE_WEB1)
    assert pending(any_ledger_url)
    assert intent_rows(any_ledger_url) == [("vm", "web1", "run-a", None, None)]
    done = apply_confirmed(any_ledger_url, keys, {("vm", "web1"): WEB1, ("disk", "data1"): DATA1})
    # The VM's attached disk is in its scope: its state changed with the VM's.
    assert [(c.kind, c.name, c.action) for c in done.changes] == [
        ("disk", "data1", "created"),
        ("vm", "web1", "created"),
    ]
    assert usage_rows(any_ledger_url) == [
        ("disk", "data1", "present", APPLIED, "run-a", "run"),
        ("vm", "web1", "running", APPLIED, "run-a", "run"),
    ]
    assert intent_rows(any_ledger_url) == [("vm", "web1", "run-a", "confirmed", "run-a")]
    assert not pending(any_ledger_url)


def test_the_same_state_is_recorded_once_whoever_records_it(any_ledger_url):
    # The same intent written twice by its run is one row.
    keys = plan(any_ledger_url, "run-a", "acme", CREATE_WEB1)
    assert plan(any_ledger_url, "run-a", "acme", CREATE_WEB1) == keys
    assert len(intent_rows(any_ledger_url)) == 1
    observed = {("vm", "web1"): WEB1}
    done = apply_confirmed(any_ledger_url, keys, observed)
    # Confirmed again (a second task of the run), recovered by the next run, and recorded by
    # the callback from the module's report: nothing more.
    assert apply_confirmed(any_ledger_url, keys, observed).changes == []
    assert recovered(any_ledger_url, observed) == []
    callback = Metering(ledger_of(any_ledger_url, "run-a", APPLIED))
    reported = [UsageChange.from_dict(change.as_dict()) for change in done.changes]
    assert callback.record(reported) == 0
    assert usage_rows(any_ledger_url) == [("vm", "web1", "running", APPLIED, "run-a", "run")]


def test_a_killed_runs_intents_are_confirmed_within_it_by_the_next_run(any_ledger_url):
    plan(any_ledger_url, "run-a", "acme", CREATE_WEB1, Intent("disk", "data2", "create"))
    # run-a died after libvirt defined web1, before data2 was made and before it confirmed.
    changes = recovered(any_ledger_url, {("vm", "web1"): WEB1})
    assert [(c.kind, c.name, c.at) for c in changes] == [("vm", "web1", PLANNED)]
    # Dated when run-a wrote its intents, under run-a's id: the state is run-a's doing.
    assert usage_rows(any_ledger_url) == [("vm", "web1", "running", PLANNED, "run-a", "run")]
    assert intent_rows(any_ledger_url) == [
        ("disk", "data2", "run-a", "dropped", "run-b"),
        ("vm", "web1", "run-a", "confirmed", "run-b"),
    ]
    assert not pending(any_ledger_url)


def test_a_killed_removal_is_recorded_as_absent_within_it(any_ledger_url):
    keys = plan(any_ledger_url, "run-a", "acme", CREATE_WEB1)
    apply_confirmed(any_ledger_url, keys, {("vm", "web1"): WEB1})
    removing = APPLIED + dt.timedelta(minutes=5)
    plan(any_ledger_url, "run-k", "acme", Intent("vm", "web1", "delete"), at=removing)
    recovered(any_ledger_url, {})
    assert [row[2:5] for row in usage_rows(any_ledger_url)] == [
        ("running", APPLIED, "run-a"),
        ("absent", removing, "run-k"),
    ]
    # Its object is gone as intended, and its state was written: confirmed.
    assert intent_rows(any_ledger_url)[-1][2:] == ("run-k", "confirmed", "run-b")


def test_reconcile_confirms_every_tenants_intents_on_the_host(any_ledger_url):
    plan(any_ledger_url, "run-a", "acme", CREATE_WEB1)
    plan(any_ledger_url, "run-c", "bolt", Intent("vm", "db1", "create"))
    plan(any_ledger_url, "run-d", "cato", Intent("vm", "gone", "create"))
    metering = Metering(ledger_of(any_ledger_url, "reconcile-1", LATER))
    observed = {
        "acme": {("vm", "web1"): WEB1},
        "bolt": {("vm", "db1"): Meter("stopped", "db1", vcpus=1, ram_mib=512)},
    }
    changes = intents.recover_host(metering, HOST, observed)
    assert sorted((c.tenant, c.name, c.at) for c in changes) == [
        ("acme", "web1", PLANNED),
        ("bolt", "db1", PLANNED),
    ]
    assert [row[3:] for row in intent_rows(any_ledger_url)] == [
        ("confirmed", "reconcile-1"),  # bolt's db1
        ("dropped", "reconcile-1"),  # cato's gone: libvirt does not show it
        ("confirmed", "reconcile-1"),  # acme's web1
    ]
    for tenant in ("acme", "bolt", "cato"):
        assert not pending(any_ledger_url, tenant)


def test_intents_of_a_plan_are_its_metered_objects_once():
    class Planned:
        def __init__(self, kind: str, name: str, action: str) -> None:
            self.kind, self.name, self.action = kind, name, action

    changes = [
        Planned("network", "lan", "create"),
        Planned("vm", "web1", "create"),
        Planned("vm", "web1", "create"),
        Planned("disk", "data1", "resize"),
        Planned("public_ip", "web", "allocate"),
    ]
    assert intents.intents_of(changes) == [
        Intent("disk", "data1", "resize"),
        Intent("vm", "web1", "create"),
    ]


def test_a_vm_create_killed_before_its_domain_leaves_its_boot_volume_recorded(any_ledger_url):
    plan(any_ledger_url, "run-a", "acme", CREATE_WEB1)
    left = Meter("present", "", disk_mib=1024)
    recovered(any_ledger_url, {("volume", "acme_web1.boot.qcow2"): left})
    assert usage_rows(any_ledger_url) == [
        ("volume", "acme_web1.boot.qcow2", "present", PLANNED, "run-a", "run")
    ]
    # libvirt does not show the VM: its intent is dropped, what its create left is recorded.
    assert intent_rows(any_ledger_url) == [("vm", "web1", "run-a", "dropped", "run-b")]


def confirmed_by_run_a(url: str, keys: list[str], seen_before: dict) -> intents.Confirmation:
    ledger = ledger_of(url, "run-a", APPLIED)
    observed = {("vm", "web1"): WEB1}
    with ledger.store.locked("acme") as connection:
        return intents.confirm(
            connection, Metering(ledger), ("acme", HOST, [("vm", "web1")]), observed, APPLIED,
            "run-a", seen_before,
        )  # fmt: skip


def test_a_state_the_run_made_is_its_record_even_where_a_reconciliation_has_it(any_ledger_url):
    # A reconciliation dated after the run recorded the state the run is making: the run's
    # record is still written, for the probe expects up what runs left running.
    reconciled = UsageChange("acme", HOST, "vm", "web1", "created", LATER, WEB1)
    Metering(ledger_of(any_ledger_url, "reconcile-1", LATER)).record([reconciled], "reconcile")
    keys = plan(any_ledger_url, "run-a", "acme", CREATE_WEB1)
    stopped = Meter("stopped", "web1", vcpus=2, ram_mib=1024, disk_mib=10240)
    done = confirmed_by_run_a(any_ledger_url, keys, {("vm", "web1"): stopped})
    assert [(c.action, c.at) for c in done.changes] == [("started", APPLIED)]


def test_a_live_runs_intents_recovered_by_another_run_are_not_recorded_again(any_ledger_url):
    keys = plan(any_ledger_url, "run-a", "acme", CREATE_WEB1)
    recovered(any_ledger_url, {("vm", "web1"): WEB1})  # run-b, while run-a still applies
    assert confirmed_by_run_a(any_ledger_url, keys, {}).changes == []
    assert usage_rows(any_ledger_url) == [("vm", "web1", "running", PLANNED, "run-a", "run")]
