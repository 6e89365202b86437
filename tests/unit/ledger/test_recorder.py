"""The run recorder every front end writes through: a run's start, its usage changes and its
end reach the ledger; what the ledger refuses waits in the run's spool file and arrives once."""

from __future__ import annotations

import datetime as dt
import json

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.engine.facade import run_disk
from ansible_collections.vce.kvm.plugins.module_utils.ledger.metering import Metering, UsageChange
from ansible_collections.vce.kvm.plugins.module_utils.ledger.recorder import Recorder, reason
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import runs, usage_intervals
from ansible_collections.vce.kvm.plugins.module_utils.ledger.spool import RunRecord
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.support.ledger import register, unrecorded
from tests.support.testdriver import fresh_driver

URI = "test:///default"
STARTED = dt.datetime(2026, 12, 4, 1, 0, tzinfo=dt.UTC)


@pytest.fixture
def changes(monkeypatch, ledger_url):
    """The usage change of a disk the engine made on the test driver, not yet recorded."""
    driver = fresh_driver(monkeypatch)  # its connections closed after the test
    next(driver, None)
    register(ledger_url, "acme")
    params = {"uri": URI, "tenant": "acme", "name": "data1", "size_gib": 1, "pool": "default-pool"}
    result = run_disk(params)
    yield [UsageChange.from_dict(item) for item in unrecorded(ledger_url, result.usage_changes)]
    next(driver, None)


@pytest.fixture
def said():
    return {"warn": [], "note": []}


def recorder_for(url, spool_dir, said, run_id="run-1"):
    run = RunRecord(run_id, "tester", "ansible", STARTED, {"playbook": "site.yml"})
    return Recorder(run, url, str(spool_dir), said["warn"].append, said["note"].append)


def run_row(url, run_id="run-1"):
    with Ledger.open(url).store.read() as connection:
        return connection.execute(sa.select(runs).where(runs.c.id == run_id)).one_or_none()


def usage_names(url):
    with Ledger.open(url).store.read() as connection:
        query = sa.select(usage_intervals.c.name).where(usage_intervals.c.tenant == "acme")
        return sorted(row.name for row in connection.execute(query))


def refuse(*_args, **_kwargs):
    raise sa.exc.OperationalError("INSERT", {}, Exception("database is locked"))


def test_a_run_is_recorded_from_start_to_end(ledger_url, tmp_path, changes, said):
    recorder = recorder_for(ledger_url, tmp_path / "spool", said)
    recorder.start()
    assert run_row(ledger_url).result == "running"
    recorder.record(ledger_url, changes)
    recorder.record(ledger_url, changes)  # a change seen twice is written once
    recorder.finish("ok", {"hosts": {}})
    row = run_row(ledger_url)
    assert (row.source, row.actor, row.result) == ("ansible", "tester", "ok")
    assert json.loads(row.detail)["usage_changes"] == {"recorded": 1, "spooled": 0, "invalid": 0}
    assert usage_names(ledger_url) == ["data1"]
    assert not (tmp_path / "spool").exists()
    assert said["warn"] == []


def test_what_the_ledger_refuses_is_spooled_then_replayed_once(
    ledger_url, tmp_path, changes, said, monkeypatch
):
    recorder = recorder_for(ledger_url, tmp_path / "spool", said)
    recorder.start()
    with monkeypatch.context() as patch:
        patch.setattr(Metering, "record", refuse)
        recorder.record(ledger_url, changes)
    assert usage_names(ledger_url) == []
    assert recorder.spool_file.exists() and (recorder.spool_file.stat().st_mode & 0o777) == 0o600
    assert len(said["warn"]) == 1 and str(recorder.spool_file) in said["warn"][0]
    recorder.finish("ok", {})  # the end replays the spool first
    assert usage_names(ledger_url) == ["data1"]
    assert not recorder.spool_file.exists()
    assert run_row(ledger_url).result == "ok"


def test_a_spool_left_at_the_end_is_reported_with_the_command_that_writes_it(
    ledger_url, tmp_path, changes, said, monkeypatch
):
    recorder = recorder_for(ledger_url, tmp_path / "spool", said)
    monkeypatch.setattr(Metering, "record", refuse)
    recorder.start()
    recorder.record(ledger_url, changes)
    recorder.finish("ok", {})
    assert f"vce ledger record --spool {recorder.spool_file}" in said["warn"][-1]
    assert "1 record(s)" in said["warn"][-1]


def test_when_neither_ledger_nor_disk_take_the_records_the_user_is_told(
    ledger_url, tmp_path, changes, said, monkeypatch
):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    recorder = recorder_for(ledger_url, blocker / "spool", said)
    monkeypatch.setattr(Metering, "record", refuse)
    recorder.record(ledger_url, changes)
    assert "nor to the spool" in said["warn"][0]
    assert "1 usage change(s) of run run-1 are not recorded" in said["warn"][0]


def test_an_interrupted_run_says_so_and_is_ended_once(ledger_url, tmp_path, said):
    recorder = recorder_for(ledger_url, tmp_path / "spool", said)
    recorder.start()
    recorder.interrupted()
    recorder.interrupted()
    row = run_row(ledger_url)
    assert row.result == "interrupted"
    assert json.loads(row.detail)["interrupted"] is True


def test_end_marks_the_run_as_it_stands_and_can_be_repeated(ledger_url, tmp_path, changes, said):
    """The Pulumi provider has no last event: it ends the run after each change."""
    recorder = recorder_for(ledger_url, tmp_path / "spool", said, run_id="pulumi-1")
    recorder.record(ledger_url, changes)
    recorder.end("ok", {})
    first = run_row(ledger_url, "pulumi-1").ended_at
    recorder.end("ok", {})
    assert run_row(ledger_url, "pulumi-1").result == "ok"
    assert run_row(ledger_url, "pulumi-1").ended_at >= first


def test_errors_are_told_in_one_line():
    assert reason(sa.exc.OperationalError("x", {}, Exception("locked\nSQL: ..."))).count("\n") == 0
    assert reason(RuntimeError()) == "RuntimeError"


def test_a_run_recorded_into_a_missing_ledger_creates_it_and_warns(tmp_path, said):
    path = tmp_path / "new" / "ledger.sqlite3"
    recorder = recorder_for(f"sqlite:///{path}", tmp_path / "spool", said)
    recorder.start()
    assert said["warn"] == [f"created a new, empty ledger at {path}"]
    assert run_row(f"sqlite:///{path}").result == "running"
