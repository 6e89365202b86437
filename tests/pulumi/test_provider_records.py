"""The provider's run records go through the ledger's one recorder, the Ansible callback's: a
create whose record the ledger cannot take keeps it in the spool, and the record reaches the
ledger at the next write, once."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.engine.facade import run_disk
from ansible_collections.vce.kvm.plugins.module_utils.host import connection as host
from ansible_collections.vce.kvm.plugins.module_utils.ledger.metering import Metering
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import runs, usage_intervals
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from pulumi_resource_vce.config import ProviderConfig
from pulumi_resource_vce.records import RunRecords

from tests.support.ledger import register, unrecorded

URI = "test:///default"


@pytest.fixture
def created(monkeypatch, tmp_path, ledger_url):
    """A disk made by the engine on the test driver, with the usage change its run reports,
    not yet recorded (the engine writes its own ahead; this test is of the provider's)."""
    monkeypatch.setattr(host, "_connections", {})
    monkeypatch.setenv("VCE_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("VCE_RUN_ID", "pulumi-records-test")
    register(ledger_url, "acme")
    params = {"uri": URI, "tenant": "acme", "name": "data1", "size_gib": 1, "pool": "default-pool"}
    result = run_disk(params)
    assert result.changed and result.usage_changes
    config = ProviderConfig(tenant="acme", ledger_url=ledger_url, zones={})
    return config, unrecorded(ledger_url, result.usage_changes)


def usage_rows(url: str) -> list[tuple[str, str, str]]:
    with Ledger.open(url).store.read() as connection:
        query = sa.select(usage_intervals.c.kind, usage_intervals.c.name, usage_intervals.c.state)
        return sorted(
            tuple(row)
            for row in connection.execute(query.where(usage_intervals.c.tenant == "acme"))
        )


def test_a_record_the_ledger_refuses_waits_in_the_spool_then_reaches_it_once(
    created, ledger_url, tmp_path, monkeypatch
):
    config, changes = created
    records = RunRecords()

    def refuse(*_args, **_kwargs):
        raise sa.exc.OperationalError(
            "INSERT INTO usage_intervals", {}, Exception("disk I/O error")
        )

    with monkeypatch.context() as patch:
        patch.setattr(Metering, "record", refuse)
        records.record(config, changes)  # the create goes on: its record is kept, not lost
    spooled = list((tmp_path / "spool").glob("*.jsonl"))
    assert [p.name for p in spooled] == ["pulumi-records-test.jsonl"]
    assert usage_rows(ledger_url) == []

    records.record(config, [])  # the next write replays the spool first
    assert not spooled[0].exists()
    assert usage_rows(ledger_url) == [("disk", "data1", "present")]
    records.record(config, changes)  # the same change again: idempotent, nothing twice
    assert usage_rows(ledger_url) == [("disk", "data1", "present")]
    with Ledger.open(ledger_url).store.read() as connection:
        run = connection.execute(sa.select(runs).where(runs.c.id == "pulumi-records-test")).one()
    assert (run.source, run.result) == ("pulumi", "ok")
    assert json.loads(run.detail)["usage_changes"]["recorded"] == 1
