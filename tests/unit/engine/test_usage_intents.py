"""Runs write their usage ahead, on libvirt's test driver and both ledgers: a run killed
between libvirt and its record leaves intents that the tenant's next run confirms from what
libvirt shows, dated within the killed run; a failed run records what it made."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import ApplyError, libvirt
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine
from ansible_collections.vce.kvm.plugins.module_utils.engine.gate import Gate
from ansible_collections.vce.kvm.plugins.module_utils.host.connection import Host
from ansible_collections.vce.kvm.plugins.module_utils.ledger.metering import host_meters, meter_of
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import (
    usage_intents,
    usage_intervals,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger, utcnow

from tests.support.testdriver import URI, environment, image_on_fresh_driver


class Killed(BaseException):
    """SIGKILL as the run sees it: nothing of it runs after this point."""


def killed(*_args, **_kwargs):
    raise Killed


@pytest.fixture
def image(monkeypatch, tmp_path, any_ledger_url):
    yield from image_on_fresh_driver(monkeypatch, tmp_path, any_ledger_url)


def usage(url: str) -> list:
    with Ledger.open(url).store.read() as connection:
        query = sa.select(usage_intervals).where(usage_intervals.c.tenant == "acme")
        return connection.execute(query.order_by(usage_intervals.c.started_at)).fetchall()


def pending(url: str) -> list:
    with Ledger.open(url).store.read() as connection:
        query = sa.select(usage_intents).where(usage_intents.c.resolved_at.is_(None))
        return connection.execute(query).fetchall()


def open_states(url: str) -> dict:
    """The latest recorded state of each of acme's resources that exists."""
    return {
        (row.kind, row.name): meter_of(row)
        for row in usage(url)
        if row.ended_at is None and row.state != "absent"
    }


def libvirt_states() -> dict:
    return host_meters(Host(URI).inventory("acme"))


def test_a_run_killed_before_recording_is_recorded_within_it_by_the_next_run(
    image, any_ledger_url, monkeypatch
):
    monkeypatch.setenv("VCE_RUN_ID", "killed-run")
    started = utcnow()
    with monkeypatch.context() as patch:
        patch.setattr(Gate, "confirm", killed)
        with pytest.raises(Killed):
            engine.run_environment(environment(image))
    ended = utcnow()
    assert usage(any_ledger_url) == []  # libvirt changed, the ledger has only the intents
    assert {(row.kind, row.name, row.run_id) for row in pending(any_ledger_url)} == {
        ("disk", "data1", "killed-run"),
        ("vm", "web1", "killed-run"),
    }
    monkeypatch.setenv("VCE_RUN_ID", "next-run")
    again = engine.run_environment(environment(image))
    assert not again.changed  # nothing to change, yet the killed run's usage is recorded
    assert "recorded 2 usage change(s) that a run interrupted" in again.warnings[0]
    assert open_states(any_ledger_url) == libvirt_states()
    rows = usage(any_ledger_url)
    assert {row.run_id for row in rows} == {"killed-run"}
    assert all(started <= row.started_at <= ended for row in rows)
    assert pending(any_ledger_url) == []


def test_a_run_records_its_own_usage_and_reports_the_same_keys(image, any_ledger_url):
    made = engine.run_environment(environment(image))
    rows = usage(any_ledger_url)
    assert open_states(any_ledger_url) == libvirt_states()
    assert sorted(change["key"] for change in made.usage_changes) == sorted(r.key for r in rows)
    assert pending(any_ledger_url) == []


def test_a_failed_run_records_what_it_made(image, any_ledger_url, monkeypatch):
    vm = {
        "uri": URI, "tenant": "acme", "name": "web2", "vcpus": 1, "memory_mib": 128,
        "default_pool": "default-pool", "boot_disk": {"image": image, "size_gib": 1},
    }  # fmt: skip

    def refused(*_args, **_kwargs):
        raise libvirt.libvirtError("not enough memory")

    with monkeypatch.context() as patch:
        patch.setattr(libvirt.virDomain, "create", refused)
        with pytest.raises(ApplyError):
            engine.run_vm(vm)
    # The domain is defined and not running: billed as stopped, from the failed run.
    assert [(row.kind, row.name, row.state) for row in usage(any_ledger_url)] == [
        ("vm", "web2", "stopped")
    ]
    assert open_states(any_ledger_url) == libvirt_states()
    assert pending(any_ledger_url) == []
