"""The vce.kvm.ledger callback's reading of task results, with ansible-core's own Task and
TaskResult objects: only a vce.kvm module's changes of its task's tenant and host, within the
engine's limits, reach the ledger, and only the ledger the playbook names."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from ansible.executor.task_result import CallbackTaskResult
from ansible.inventory.host import Host
from ansible.playbook.task import Task
from ansible_collections.vce.kvm.plugins.callback.ledger import CallbackModule
from ansible_collections.vce.kvm.plugins.module_utils.engine.facade import run_disk
from ansible_collections.vce.kvm.plugins.module_utils.ledger.recorder import Recorder
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import usage_intervals
from ansible_collections.vce.kvm.plugins.module_utils.ledger.spool import RunRecord
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.support.ledger import register, unrecorded
from tests.support.testdriver import fresh_driver

URI = "test:///default"
STARTED = dt.datetime(2026, 12, 4, 1, 0, tzinfo=dt.UTC)


@pytest.fixture
def reported(monkeypatch, ledger_url):
    """What vce.kvm.disk reports for acme's new disk on the test driver, not yet recorded."""
    driver = fresh_driver(monkeypatch)  # its connections closed after the test
    next(driver, None)
    register(ledger_url, "acme")
    params = {"uri": URI, "tenant": "acme", "name": "data1", "size_gib": 1, "pool": "default-pool"}
    yield unrecorded(ledger_url, run_disk(params).usage_changes)
    next(driver, None)


class Warnings:
    """What the callback tells the user, kept."""

    verbosity = 0

    def __init__(self) -> None:
        self.seen: list[str] = []

    def warning(self, message: str) -> None:
        self.seen.append(message)

    def vv(self, message: str) -> None:
        """Verbose notes are not what these tests look at."""


@pytest.fixture
def callback(ledger_url, tmp_path):
    plugin = CallbackModule(display=Warnings())
    run = RunRecord("run-1", "tester", "ansible", STARTED, {"playbook": "site.yml"})
    plugin.recorder = Recorder(run, ledger_url, str(tmp_path / "spool"), plugin.warn, plugin.note)
    return plugin


def result_of(task_data, data):
    task = Task.load(task_data)
    return CallbackTaskResult(Host("kvm1"), task, data, task.dump_attrs())


def disk_task(**args):
    return {"name": "disk", "vce.kvm.disk": {"uri": URI, "tenant": "acme", "name": "data1", **args}}


def recorded(url):
    with Ledger.open(url).store.read() as connection:
        return connection.execute(sa.select(usage_intervals.c.tenant, usage_intervals.c.name)).all()


def test_a_vce_module_result_of_its_tenant_and_host_is_recorded(callback, reported, ledger_url):
    callback.v2_runner_on_ok(result_of(disk_task(), {"changed": True, "usage_changes": reported}))
    assert recorded(ledger_url) == [("acme", "data1")]
    assert callback._display.seen == []


def test_a_debug_task_printing_usage_changes_writes_nothing(callback, reported, ledger_url):
    task = {"name": "print", "debug": "var=usage_changes"}  # the form the review used
    callback.v2_runner_on_ok(result_of(task, {"usage_changes": reported}))
    assert recorded(ledger_url) == []
    assert callback.recorder.counts == {"recorded": 0, "spooled": 0, "invalid": 0}
    assert callback._display.seen == []  # ignored, not refused: a debug task is no record


def test_a_templated_action_is_not_taken_for_a_vce_module(callback, reported, ledger_url):
    task = {"name": "any", "action": "{{ module }}", "args": {"tenant": "acme", "uri": URI}}
    callback.v2_runner_on_ok(result_of(task, {"usage_changes": reported}))
    assert recorded(ledger_url) == []


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ({"tenant": "other"}, "usage_changes[0].tenant: must be the task's tenant ('other')"),
        ({"tenant": "{{ who }}"}, "usage_changes[0].tenant: must be the task's tenant (a plain"),
        ({"uri": "qemu:///system"}, "usage_changes[0].host: must be the task's host"),
    ],
)
def test_a_change_of_another_tenant_or_host_writes_nothing(
    callback, reported, ledger_url, args, field
):
    callback.v2_runner_on_ok(result_of(disk_task(**args), {"usage_changes": reported}))
    assert recorded(ledger_url) == []
    (warning,) = callback._display.seen
    assert field in warning and "'disk' on kvm1" in warning, warning
    assert callback.recorder.counts["invalid"] == 1


def test_a_quantity_beyond_the_engines_limits_is_refused_naming_it(callback, reported, ledger_url):
    claimed = [{**reported[0], "disk_mib": 10**12}]
    callback.v2_runner_on_ok(result_of(disk_task(), {"usage_changes": claimed}))
    assert recorded(ledger_url) == []
    assert (
        "usage_changes[0].disk_mib: must be a whole number from 0 to" in callback._display.seen[0]
    )


def test_the_ledger_url_is_the_playbooks_never_the_results(
    callback, reported, ledger_url, tmp_path
):
    elsewhere = f"sqlite:///{tmp_path / 'elsewhere.sqlite3'}"
    data = {"usage_changes": reported, "invocation": {"module_args": {"ledger_url": elsewhere}}}
    callback.v2_runner_on_ok(result_of(disk_task(), data))
    assert recorded(ledger_url) == [("acme", "data1")]
    assert not (tmp_path / "elsewhere.sqlite3").exists()


def test_a_loops_items_are_recorded_one_by_one_with_their_own_arguments(
    callback, reported, ledger_url
):
    loop = {"name": "disk", "vce.kvm.disk": {"uri": URI, "tenant": "{{ item }}", "name": "data1"}}
    item = disk_task()  # as Ansible templates the task for the item
    callback.v2_runner_item_on_ok(result_of(item, {"usage_changes": reported, "item": "acme"}))
    assert recorded(ledger_url) == [("acme", "data1")]
    # The loop's own result repeats the items' results under its untemplated arguments.
    callback.v2_runner_on_ok(result_of(loop, {"results": [{"usage_changes": reported}]}))
    assert callback._display.seen == []
    assert callback.recorder.counts["recorded"] == 1
