"""No usage record lost, no writer refused, with real ansible-playbook runs and the ledger
callback against the private libvirtd and a SQLite ledger.

- 20 applies of a 4-VM environment, each killed with SIGKILL (every process of the run) at a
  random moment of a full apply's duration, then one re-apply: the usage rows equal what
  libvirt holds, no state is recorded twice, and each row is dated within the run it names.
- 8 playbooks at once, 5 rounds, on one SQLite ledger: none fails with "database is locked"
  and no spool file is left.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.host.connection import Host
from ansible_collections.vce.kvm.plugins.module_utils.ledger.metering import host_meters, meter_of
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import (
    runs,
    usage_intents,
    usage_intervals,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger, utcnow

from tests.conftest import fresh_database_url
from tests.integration.conftest import IMAGE_ZONE
from tests.support.ansible_runner import ANSIBLE_PLAYBOOK, ROOT, ansible_env
from tests.support.images import register_image
from tests.support.ledger import register
from tools.cleanup import remove_prefixed

pytestmark = pytest.mark.integration
TRIALS = 20
VMS = 4
SEED = 16010
PARALLEL = 8
ROUNDS = 5
RUN_TIMEOUT = 240


@dataclass
class Trial:
    """One ansible-playbook run: its id and the moments it began and was over."""

    run_id: str
    started: dt.datetime
    ended: dt.datetime
    killed: bool


def write_playbook(path: Path, args: dict) -> Path:
    play = {
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "tasks": [{"name": "environment", "vce.kvm.environment": args}],
    }
    path.write_text(json.dumps([play]))  # JSON is YAML
    return path


def vms_args(uri: str, url: str, tenant: str, image: str, batch: str) -> dict:
    """The tenant's environment as `batch`'s four stopped VMs; the previous batch's are pruned.
    Stopped VMs on a blank image: a define and a small overlay each, fast."""
    return {
        "uri": uri, "tenant": tenant, "ledger_url": url, "prune": True, "shutdown_timeout": 1,
        "default_pool": "default",
        "vms": [
            {"name": f"{batch}v{i}", "vcpus": 1, "memory_mib": 64, "state": "stopped",
             "boot_disk": {"image": image, "size_gib": 1}}
            for i in range(VMS)
        ],
    }  # fmt: skip


def start_playbook(playbook: Path, url: str, spool: Path, run_id: str, log: Path):
    """ansible-playbook in a process group of its own, so that all of it can be killed."""
    env = ansible_env({"VCE_LEDGER_URL": url, "VCE_LEDGER_SPOOL": str(spool), "VCE_RUN_ID": run_id})
    with log.open("w") as out:
        return subprocess.Popen(
            [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(playbook)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True,
        )  # fmt: skip


def processes_of(run_id: str) -> list[int]:
    """Every process of this user carrying the run's id in its environment (a process that
    left the group is still the run's)."""
    marker = f"VCE_RUN_ID={run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def kill_run(process: subprocess.Popen, run_id: str) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    for pid in processes_of(run_id):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=30)
    deadline = time.monotonic() + 10
    while processes_of(run_id) and time.monotonic() < deadline:
        time.sleep(0.05)


def run_to_end(playbook: Path, url: str, spool: Path, run_id: str, log: Path) -> Trial:
    started = utcnow()
    process = start_playbook(playbook, url, spool, run_id, log)
    try:
        process.wait(timeout=RUN_TIMEOUT)
    finally:
        kill_run(process, run_id)
    assert process.returncode == 0, log.read_text()[-3000:]
    return Trial(run_id, started, utcnow(), killed=False)


def run_killed(
    playbook: Path,
    url: str,
    spool: Path,
    run_id: str,
    log: Path,
    after: float,
    planned: bool = False,
) -> Trial:
    """The run killed `after` seconds from its start, or with `planned` from the moment its
    intents are in the ledger."""
    started = utcnow()
    process = start_playbook(playbook, url, spool, run_id, log)
    if planned:
        wait_for_intents(url, run_id, process)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=after)
    killed = process.returncode is None
    kill_run(process, run_id)
    return Trial(run_id, started, utcnow(), killed)


def wait_for_intents(url: str, run_id: str, process: subprocess.Popen) -> None:
    """Until the run's intents are written (read-only, so the poll takes no write lock), the
    run ends, or a full run's time has passed."""
    path = sa.engine.make_url(url).database
    deadline = time.monotonic() + RUN_TIMEOUT
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
        while process.poll() is None and time.monotonic() < deadline:
            query = "SELECT count(*) FROM usage_intents WHERE run_id = ?"
            if db.execute(query, (run_id,)).fetchone()[0]:
                return
            time.sleep(0.01)


def apply_span(url: str, run_id: str) -> float:
    """Seconds from a run's intents to their confirmation (a trial's apply, which also
    removes the previous batch, lasts longer)."""
    with Ledger.open(url).store.read() as connection:
        planned, resolved = connection.execute(
            sa.select(sa.func.min(usage_intents.c.planned_at), sa.func.max(usage_intents.c.resolved_at))
            .where(usage_intents.c.run_id == run_id)
        ).one()  # fmt: skip
    return (resolved - planned).total_seconds()


def usage_rows(url: str, tenant: str) -> list:
    with Ledger.open(url).store.read() as connection:
        query = sa.select(usage_intervals).where(usage_intervals.c.tenant == tenant)
        return connection.execute(query.order_by(usage_intervals.c.started_at)).fetchall()


def pending_intents(url: str, tenant: str, run_id: str | None = None) -> int:
    query = sa.select(sa.func.count()).where(
        usage_intents.c.tenant == tenant, usage_intents.c.resolved_at.is_(None)
    )
    if run_id is not None:
        query = query.where(usage_intents.c.run_id == run_id)
    with Ledger.open(url).store.read() as connection:
        return connection.execute(query).scalar()


def check_usage_matches_libvirt(url: str, uri: str, tenant: str, trials: list[Trial]) -> None:
    rows = usage_rows(url, tenant)
    latest = {
        (row.kind, row.name): meter_of(row)
        for row in rows
        if row.ended_at is None and row.state != "absent"
    }
    assert latest == host_meters(Host(uri).inventory(tenant))
    timelines: dict[tuple[str, str], list] = {}
    for row in rows:
        timelines.setdefault((row.kind, row.name), []).append(row)
    for key, timeline in timelines.items():
        states = [meter_of(row) for row in timeline]
        # No state twice in a row: a repeat would be a record made twice.
        assert all(a != b for a, b in itertools.pairwise(states)), (key, states)
    windows = {trial.run_id: trial for trial in trials}
    for row in rows:
        trial = windows.get(row.run_id)
        assert trial is not None, f"row of unknown run {row.run_id}: {row.kind} {row.name}"
        assert trial.started <= row.started_at <= trial.ended, (row, trial)


def test_kill_9_at_any_moment_loses_no_usage_record_and_dates_none_wrongly(
    tmp_path, request, uri, tenant, blank_image_path
):
    url = fresh_database_url("sqlite", tmp_path, request)
    register(url, tenant)
    register_image(url, blank_image_path, name="blank", zone=IMAGE_ZONE)
    blank_image = "blank"
    spool = tmp_path / "spool"
    began = time.monotonic()

    def playbook(batch: str) -> Path:
        return write_playbook(
            tmp_path / f"{batch}.yml", vms_args(uri, url, tenant, blank_image, batch)
        )

    # Odd trials are killed at a moment of a full run's duration, even ones at a moment of
    # the module's apply (from its intents to their confirmation, measured on the full run):
    # the window where libvirt is ahead of the ledger, short beside Ansible's start, which
    # random moments alone would seldom hit.
    trials = [run_to_end(playbook("k0"), url, spool, "full-k0", tmp_path / "k0.log")]
    duration = (trials[0].ended - trials[0].started).total_seconds()
    span = apply_span(url, trials[0].run_id)
    moments = random.Random(SEED)
    interrupted = 0
    for number in range(1, TRIALS + 1):
        batch = f"k{number}"
        run_id = f"killed-{batch}"
        log = tmp_path / f"{batch}.log"
        if number % 2:
            trial = run_killed(
                playbook(batch), url, spool, run_id, log, moments.uniform(0, duration)
            )
        else:
            delay = moments.uniform(0, span)
            trial = run_killed(playbook(batch), url, spool, run_id, log, delay, planned=True)
        trials.append(trial)
        # Killed between its intents and their confirmation: the next run confirms them.
        interrupted += pending_intents(url, tenant, run_id) > 0
    trials.append(
        run_to_end(playbook(f"k{TRIALS}"), url, spool, "reapply", tmp_path / "reapply.log")
    )
    check_usage_matches_libvirt(url, uri, tenant, trials)
    assert pending_intents(url, tenant) == 0
    assert interrupted, "no trial was killed between its intents and their confirmation"
    killed = sum(trial.killed for trial in trials)
    print(
        f"\nkill -9: full apply {duration:.1f} s, its module's apply {span:.2f} s; "
        f"{killed} of {TRIALS} runs killed, "
        f"{interrupted} between an intent and its confirmation; "
        f"{len(usage_rows(url, tenant))} usage rows; {time.monotonic() - began:.0f} s in all"
    )


def test_eight_parallel_runs_on_sqlite_wait_for_the_lock_and_spool_nothing(
    tmp_path, request, uri, conn, pool
):
    url = fresh_database_url("sqlite", tmp_path, request)
    tenants = [f"p{os.getpid() % 10000}x{i}" for i in range(PARALLEL)]
    for name in tenants:
        register(url, name)
    spool = tmp_path / "spool"
    began = time.monotonic()
    try:
        for round_number in range(1, ROUNDS + 1):
            started = []
            for name in tenants:
                args = {
                    "uri": uri, "tenant": name, "ledger_url": url, "prune": True,
                    "default_pool": "default", "disks": [{"name": f"r{round_number}", "size_gib": 1}],
                }  # fmt: skip
                playbook = write_playbook(tmp_path / f"{name}-r{round_number}.yml", args)
                log = tmp_path / f"{name}-r{round_number}.log"
                run_id = f"{name}-r{round_number}"
                started.append((start_playbook(playbook, url, spool, run_id, log), run_id, log))
            for process, run_id, log in started:
                try:
                    process.wait(timeout=RUN_TIMEOUT)
                finally:
                    kill_run(process, run_id)
                output = log.read_text()
                assert "database is locked" not in output, output[-3000:]
                assert process.returncode == 0, output[-3000:]
        assert not spool.exists() or list(spool.iterdir()) == []
        with Ledger.open(url).store.read() as connection:
            results = connection.execute(sa.select(runs.c.result)).scalars().all()
        assert results == ["ok"] * PARALLEL * ROUNDS
        for name in tenants:
            check_usage_matches_libvirt(
                url, uri, name,
                [Trial(f"{name}-r{r}", dt.datetime.min.replace(tzinfo=dt.UTC), utcnow(), False)
                 for r in range(1, ROUNDS + 1)],
            )  # fmt: skip
    finally:
        for name in tenants:
            remove_prefixed(conn, f"{name}_")
    print(f"\n{PARALLEL} parallel runs x {ROUNDS} rounds: {time.monotonic() - began:.0f} s")
