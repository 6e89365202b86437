"""The action queue on a real ledger (SQLite and PostgreSQL): order, one running action per
tenant, idempotency, failures in the API's shape, recovery after a killed instance, and two
instances sharing one PostgreSQL ledger."""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import (
    HostUnreachable,
    SpecError,
    VceError,
    libvirt,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import actions
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from vce_server.actions import ActionQueue
from vce_server.errors import ApiError
from vce_server.principal import Principal
from vce_server.settings import Settings

from tests.conftest import fresh_database_url
from tests.support import action_worker
from tests.support.ledger import forget_stores

OPERATOR = Principal("vce_0000oper", "op", "operator", None, frozenset({"read", "write"}))


def customer(tenant: str) -> Principal:
    return Principal(
        "vce_0000cust", f"user-{tenant}", "customer", tenant, frozenset({"read", "write"})
    )


def until(check: Callable[[], Any], seconds: float = 10.0) -> Any:
    """check()'s first true answer, polled for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        answer = check()
        if answer:
            return answer
        time.sleep(0.05)
    raise AssertionError(f"not true within {seconds} s: {check}")


@pytest.fixture
def queues(any_ledger_url) -> Iterator[Callable[..., ActionQueue]]:
    """ActionQueues on the test's ledger, each stopped at the end."""
    made: list[ActionQueue] = []

    def make(scrub: Callable[[str], str] = str, **settings: Any) -> ActionQueue:
        settings.setdefault("workers", 4)
        ledger = Ledger.open(any_ledger_url, create=True)
        queue = ActionQueue(ledger, Settings(ledger_url=any_ledger_url, **settings), scrub)
        made.append(queue)
        return queue

    yield make
    for queue in made:
        queue.stop(5.0)


def rows(queue: ActionQueue) -> list[Any]:
    with queue.store.read() as connection:
        return connection.execute(sa.select(actions).order_by(actions.c.seq)).all()


def echo(payload: dict, report: Callable[[dict], None]) -> dict:
    return {"echo": payload}


def test_an_action_is_queued_run_and_read_back(queues):
    queue = queues()

    def handler(payload: dict, report: Callable[[dict], None]) -> dict:
        for step in range(1, 6):
            report({"step": step})
        return {"plan": [{"action": "create", "name": payload["name"]}], "created": True}

    queue.register("put", handler)
    action, created = queue.submit(customer("a"), "put", "vms/web", {"name": "web"})
    assert created
    assert uuid.UUID(action["id"]).version == 4
    assert action["status"] == "queued"
    assert action["started_at"] is None and action["attempts"] == 0
    assert dt.datetime.fromisoformat(action["created_at"]).utcoffset() == dt.timedelta(0)
    queue.start()
    done = queue.wait(action["id"], "a", 10)
    assert done["status"] == "succeeded"
    assert done["plan"] == [{"action": "create", "name": "web"}]
    assert done["result"]["created"] is True
    assert done["progress"] == {"step": 5}  # the last report, whatever the throttle held back
    assert done["error"] is None and done["attempts"] == 1
    started = dt.datetime.fromisoformat(done["started_at"])
    assert dt.datetime.fromisoformat(done["created_at"]) <= started
    assert started <= dt.datetime.fromisoformat(done["finished_at"])
    assert set(done) == {
        "id", "kind", "target", "status", "plan", "progress", "result", "error",
        "attempts", "created_at", "started_at", "finished_at",
    }  # fmt: skip


def test_reads_are_scoped_to_the_tenant(queues):
    queue = queues()
    queue.register("put", echo)
    first, _created = queue.submit(customer("a"), "put", "vms/one", {"n": 1})
    second, _created = queue.submit(customer("a"), "put", "vms/two", {"n": 2})
    theirs, _created = queue.submit(customer("b"), "put", "vms/one", {"n": 1})
    assert queue.get(first["id"], "b") is None  # another tenant's: as if missing
    assert queue.get(str(uuid.uuid4()), "a") is None
    assert queue.get(theirs["id"], None)["target"] == "vms/one"  # an operator sees every tenant's
    assert [a["id"] for a in queue.list("a")] == [second["id"], first["id"]]  # newest first
    assert [a["id"] for a in queue.list("a", limit=1)] == [second["id"]]
    assert len(queue.list(None)) == 3
    assert queue.list("a", status="running") == []
    with pytest.raises(ApiError) as refused:
        queue.list("a", status="finished")
    assert (refused.value.status, refused.value.fields[0][0]) == (422, "status")
    # An operator's change names the tenant it acts for.
    for_b, _created = queue.submit(OPERATOR, "put", "vms/three", {"n": 3}, tenant="b")
    assert queue.get(for_b["id"], "b") is not None
    with pytest.raises(ApiError) as nameless:
        queue.submit(OPERATOR, "put", "vms/three", {"n": 3})
    assert nameless.value.fields == [
        ("tenant", "an operator's change names the tenant it acts for")
    ]
    assert [row.seq for row in rows(queue)] == [1, 2, 3, 4]


def test_one_action_runs_per_tenant_in_order_and_tenants_in_parallel(queues):
    queue = queues(workers=4)
    runs: list[tuple[str, int, float, float]] = []

    def handler(payload: dict, report: Callable[[dict], None]) -> dict:
        began = time.monotonic()
        time.sleep(0.2)
        runs.append((payload["tenant"], payload["n"], began, time.monotonic()))
        return {}

    queue.register("put", handler)
    submitted = [
        queue.submit(customer(tenant), "put", f"vms/{n}", {"tenant": tenant, "n": n})[0]
        for n in range(3)
        for tenant in ("a", "b")
    ]
    queue.start()
    for action in submitted:
        assert queue.wait(action["id"], None, 10)["status"] == "succeeded"
    for tenant in ("a", "b"):
        theirs = [run for run in runs if run[0] == tenant]
        assert [run[1] for run in sorted(theirs, key=lambda run: run[2])] == [0, 1, 2]
        for earlier, later in itertools.pairwise(theirs):
            assert earlier[3] <= later[2]  # never two at once
    a_first, b_first = (next(run for run in runs if run[:2] == (t, 0)) for t in ("a", "b"))
    assert a_first[2] < b_first[3] and b_first[2] < a_first[3]  # the two tenants overlapped


def test_an_idempotency_key_returns_the_first_action(queues):
    queue = queues()
    queue.register("put", echo)
    first, created = queue.submit(customer("a"), "put", "vms/web", {"n": 1}, "key-1")
    again, created_again = queue.submit(customer("a"), "put", "vms/web", {"n": 1}, "key-1")
    assert (created, created_again, again["id"]) == (True, False, first["id"])
    with pytest.raises(ApiError) as mismatch:
        queue.submit(customer("a"), "put", "vms/web", {"n": 2}, "key-1")
    assert (mismatch.value.status, mismatch.value.code) == (422, "idempotency_mismatch")
    with pytest.raises(ApiError):
        queue.submit(customer("a"), "put", "vms/other", {"n": 1}, "key-1")
    theirs, created_theirs = queue.submit(customer("b"), "put", "vms/web", {"n": 1}, "key-1")
    assert created_theirs and theirs["id"] != first["id"]  # keys are per tenant
    assert len(rows(queue)) == 2


def test_ten_concurrent_submits_with_one_key_make_one_action(queues):
    queue = queues()
    queue.register("put", echo)
    barrier = threading.Barrier(10)
    answers: list[tuple[str, bool]] = []

    def submit() -> None:
        barrier.wait(timeout=10)
        action, created = queue.submit(customer("a"), "put", "vms/web", {"n": 1}, "retry")
        answers.append((action["id"], created))

    threads = [threading.Thread(target=submit) for _thread in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(answers) == 10
    assert len({action_id for action_id, _created in answers}) == 1
    assert sum(created for _id, created in answers) == 1
    assert len(rows(queue)) == 1


def test_concurrent_submits_from_two_processes_make_one_action(any_ledger_url):
    Ledger.open(any_ledger_url, create=True)  # migrated once, before the race
    at = str(time.time() + 1.5)  # both processes have imported by then
    children = [
        action_worker.start("submit", any_ledger_url, "a", "retry", "5", at, stdin=None)
        for _child in range(2)
    ]
    answers = []
    for child in children:
        out, _err = child.communicate(timeout=60)
        assert child.returncode == 0
        answers += [line.split() for line in out.splitlines()]
    assert len(answers) == 10
    assert len({action_id for action_id, _created in answers}) == 1
    assert [created for _id, created in answers].count("True") == 1
    with Ledger.open(any_ledger_url).store.read() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(actions)).scalar() == 1


def lost_connection(socket: Path) -> libvirt.libvirtError:
    """libvirt's own failure to reach a daemon (its socket is not there)."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    with pytest.raises(libvirt.libvirtError) as raised:
        libvirt.open(f"qemu:///system?socket={socket}")
    return raised.value


def test_failures_have_the_api_error_shape(queues, caplog, tmp_path):
    def scrub(text: str) -> str:
        return text.replace("qemu+ssh://root@kvm1/system", "zone west").replace(
            str(tmp_path), "<host path>"
        )

    queue = queues(scrub=scrub)
    failures = {
        "api": ApiError(409, "conflict", "the network is in use", [("name", "in use")]),
        "spec": SpecError("disks[0].size", "must be positive"),
        "engine": VceError("cannot reach qemu+ssh://root@kvm1/system"),
        "unreachable": HostUnreachable("Failed to connect to qemu+ssh://root@kvm1/system: EOF"),
        # A libvirt call outside the engine's mapping whose connection failed.
        "lost": lost_connection(tmp_path / "libvirt-sock"),
        "bug": KeyError("secret internals"),
    }

    def failing(payload: dict, report: Callable[[dict], None]) -> dict:
        raise failures[payload["what"]]

    queue.register("put", failing)
    submitted = {
        what: queue.submit(customer("a"), "put", f"vms/{what}", {"what": what}, request_id=what)[0]
        for what in failures
    }
    with caplog.at_level(logging.ERROR, logger="vce.serve.actions"):
        queue.start()
        errors = {what: queue.wait(a["id"], "a", 10) for what, a in submitted.items()}
    assert {action["status"] for action in errors.values()} == {"failed"}
    errors = {what: action["error"] for what, action in errors.items()}
    assert errors["api"] == {
        "code": "conflict",
        "message": "the network is in use",
        "fields": [{"path": "name", "reason": "in use"}],
        "request_id": "api",
    }
    assert errors["spec"]["code"] == "invalid"
    assert errors["spec"]["fields"] == [{"path": "disks[0].size", "reason": "must be positive"}]
    assert errors["engine"] == {
        "code": "refused",
        "message": "cannot reach zone west",
        "fields": [],
        "request_id": "engine",
    }
    # The host was lost: an outage the caller retries, told so, scrubbed.
    assert errors["unreachable"] == {
        "code": "host_unavailable",
        "message": "the zone's host cannot be reached now, retry after 30 s: "
        "Failed to connect to zone west: EOF",
        "fields": [],
        "request_id": "unreachable",
    }
    assert errors["lost"]["code"] == "host_unavailable"
    assert "Failed to connect socket to '<host path>/libvirt-sock'" in errors["lost"]["message"]
    assert str(tmp_path) not in errors["lost"]["message"]
    assert errors["bug"]["code"] == "internal"
    assert "secret internals" not in errors["bug"]["message"]
    assert "Traceback" not in errors["bug"]["message"]
    assert submitted["bug"]["id"] in errors["bug"]["message"]
    assert "secret internals" in caplog.text and "Traceback" in caplog.text


def test_progress_held_back_by_the_throttle_is_written_while_the_action_runs(queues):
    queue = queues()
    release = threading.Event()

    def handler(payload: dict, report: Callable[[dict], None]) -> dict:
        report({"step": 1})
        report({"step": 2})  # within the throttle's half second: held back
        release.wait(10)
        return {}

    queue.register("put", handler)
    action, _created = queue.submit(customer("a"), "put", "vms/web", {})
    queue.start()
    try:
        running = until(
            lambda: (a := queue.get(action["id"], "a"))["progress"] == {"step": 2} and a
        )
        assert running["status"] == "running"
    finally:
        release.set()
    assert queue.wait(action["id"], "a", 10)["status"] == "succeeded"


def test_wait_returns_as_soon_as_the_action_ends(queues):
    queue = queues()
    release = threading.Event()
    ended: list[float] = []

    def handler(payload: dict, report: Callable[[dict], None]) -> dict:
        release.wait(10)
        ended.append(time.monotonic())
        return {}

    queue.register("put", handler)
    action, _created = queue.submit(customer("a"), "put", "vms/web", {})
    queue.start()
    began = time.monotonic()
    assert queue.wait(action["id"], "a", 0.3)["status"] == "running"  # the time is up
    assert 0.3 <= time.monotonic() - began < 1.0
    assert queue.wait(action["id"], "b", 5) is None  # another tenant's: not waited for
    threading.Timer(0.5, release.set).start()
    assert queue.wait(action["id"], "a", 30)["status"] == "succeeded"
    assert time.monotonic() - ended[0] < 0.2  # woken by the worker, not at the next poll


def test_a_submission_wakes_a_worker_at_once(queues):
    queue = queues(workers=2)
    started: dict[str, float] = {}

    def handler(payload: dict, report: Callable[[dict], None]) -> dict:
        started[payload["n"]] = time.monotonic()
        return {}

    queue.register("put", handler)
    queue.start()
    time.sleep(0.1)  # the workers are idle, waiting
    latencies = []
    for n in range(10):
        began = time.monotonic()
        action, _created = queue.submit(customer("a"), "put", "vms/web", {"n": str(n)})
        until(lambda n=n: str(n) in started, 5)
        latencies.append(started[str(n)] - began)
        assert queue.wait(action["id"], "a", 5)["status"] == "succeeded"
    assert sorted(latencies)[5] < 0.25  # well inside the idle poll's half second


def test_stop_leaves_an_unfinished_action_running(queues):
    queue = queues(workers=1)
    release = threading.Event()
    queue.register("put", lambda payload, report: {"released": release.wait(10)})
    action, _created = queue.submit(customer("a"), "put", "vms/web", {})
    queue.start()
    until(lambda: queue.get(action["id"], "a")["status"] == "running")
    queue.stop(0.2)
    assert queue.get(action["id"], "a")["status"] == "running"
    release.set()


# -- other processes: a killed instance, two instances ---------------------------------------


class Instances:
    """Queue instances in other processes on one ledger; every one still running is killed."""

    def __init__(self, url: str, outdir: Path) -> None:
        self.url = url
        self.outdir = outdir
        self.children: list[Any] = []

    def start(self, instance: str, **options: Any) -> Any:
        flags = [f"--{name.replace('_', '-')}={value}" for name, value in options.items()]
        child = action_worker.start("run", self.url, str(self.outdir), instance, *flags)
        self.children.append(child)
        assert child.stdout.readline().strip() == "ready"
        return child

    def kill(self, child: Any) -> None:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)

    def close(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.wait(10)
            child.stdout.close()
            if child.stdin:
                child.stdin.close()


@pytest.fixture
def instances(any_ledger_url, tmp_path) -> Iterator[Instances]:
    Ledger.open(any_ledger_url, create=True)
    started = Instances(any_ledger_url, tmp_path)
    yield started
    started.close()


def sleeper(queue: ActionQueue, tenant: str = "a") -> dict:
    queue.register("sleep", lambda payload, report: {"finished": payload["n"]})
    return queue.submit(customer(tenant), "sleep", "vms/slow", {"n": 1, "seconds": 30})[0]


def test_an_action_of_a_killed_instance_runs_again_after_a_restart(queues, instances, tmp_path):
    queue = queues(stale_after=1.0, instance="restarted")
    action = sleeper(queue)
    child = instances.start("first")
    until((tmp_path / "started-1").exists)
    instances.kill(child)  # mid-run, as kill -9 of the server
    assert queue.get(action["id"], "a")["status"] == "running"
    queue.start()  # recovers it once its heartbeat is older than stale_after
    done = queue.wait(action["id"], "a", 8)
    assert (done["status"], done["attempts"], done["result"]) == ("succeeded", 2, {"finished": 1})


def test_an_action_abandoned_twice_is_interrupted(queues, instances, tmp_path):
    queue = queues(stale_after=1.0, instance="third")
    action = sleeper(queue)
    first = instances.start("first")
    until((tmp_path / "started-1").exists)
    instances.kill(first)
    (tmp_path / "started-1").unlink()
    second = instances.start("second", stale_after=1.0)  # recovers and runs it again
    until((tmp_path / "started-1").exists)
    instances.kill(second)
    queue.start()
    done = queue.wait(action["id"], "a", 8)
    assert (done["status"], done["attempts"], done["error"]["code"]) == (
        "interrupted",
        2,
        "interrupted",
    )
    assert "retry" in done["error"]["message"]
    assert done["finished_at"] is not None and done["result"] is None


@pytest.fixture
def postgres_url(request, tmp_path) -> Iterator[str]:
    url = fresh_database_url("postgresql", tmp_path, request)
    Ledger.open(url, create=True)
    yield url
    forget_stores()


def test_two_instances_on_one_postgresql_run_each_action_once(postgres_url, tmp_path):
    submitter = ActionQueue(Ledger.open(postgres_url), Settings(ledger_url=postgres_url))
    submitter.register("append", echo)  # submits only; never started
    two = Instances(postgres_url, tmp_path)
    try:
        children = [two.start(name, workers=2) for name in ("one", "two")]
        submitted = [
            submitter.submit(
                customer(f"t{n % 10}"), "append", f"vms/{n}", {"n": n, "seconds": 0.2}
            )[0]
            for n in range(20)
        ]
        for action in submitted:
            assert submitter.wait(action["id"], None, 10)["status"] == "succeeded"
        for child in children:
            child.stdin.close()
            assert child.wait(15) == 0
    finally:
        two.close()
    runs = [line.split() for line in (tmp_path / "runs").read_text().splitlines()]
    assert sorted(int(n) for n, _instance in runs) == list(range(20))  # each exactly once
    assert {instance for _n, instance in runs} == {"one", "two"}
    claimed = {row.claimed_by for row in rows(submitter)}
    assert claimed == {"one", "two"}
