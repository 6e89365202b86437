"""A KVM host lost in the middle of a fleet-wide playbooks/tenant.yml: its sshd killed (the
listener and every session) while the engine's module runs on it. The other hosts converge;
the run names the lost host and fails for it only; the ledger holds nothing half-written; the
SLA probe opens incidents for the lost host's running VMs; once sshd is back, a re-run
converges and records nothing twice."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from itertools import pairwise

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.support.ansible_runner import ROOT
from tests.support.fleet import (
    PLAYBOOK_TIMEOUT,
    Fleet,
    apply,
    declaration,
    recap,
    tenant_playbook,
)
from tools.multihost import LabHost, netns_pids

pytestmark = [pytest.mark.multihost]
FLEET_SIZE = 3
LOST = "kvm-a2"
ENGINE_TASK = "TASK [vce.kvm.tenant_environment : Reconcile"
MODULE_WAIT = 120.0


def declare_all(fleet: Fleet, vms: int) -> None:
    """`vms` VMs per host; the lost host's first VM runs (the probe watches it)."""
    for index, host in enumerate(fleet.lab.hosts, start=1):
        fleet.declare(host, declaration(index, vms, running=1 if host == LOST else 0))


def module_running(host: LabHost) -> bool:
    """Is a module running on the host right now? Ansible pipelines it into the host's
    Python over its SSH session, so a Python process of the host's namespace is one."""
    for pid in netns_pids(host.netns):
        with contextlib.suppress(OSError):  # the process ended meanwhile
            if "python" in os.readlink(f"/proc/{pid}/exe"):
                return True
    return False


def kill_sshd_mid_run(fleet: Fleet) -> tuple[int, str]:
    """Start the fleet-wide run; kill the lost host's sshd while the engine's module runs
    there (the task after the tenants' registration), i.e. between libvirt and the ledger."""
    lost = fleet.lab.hosts[LOST]
    proc = tenant_playbook(fleet)
    watchdog = threading.Timer(PLAYBOOK_TIMEOUT, proc.kill)
    watchdog.start()
    try:
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith(ENGINE_TASK):
                break
        deadline = time.monotonic() + MODULE_WAIT
        while not module_running(lost):
            assert proc.poll() is None, "the run ended before the module ran on the lost host"
            assert time.monotonic() < deadline, "the module never ran on the lost host"
            time.sleep(0.02)
        fleet.lab.kill_sshd(LOST)
        rest, _err = proc.communicate()
        # The module, cut off from Ansible and from libvirt, ends on its own: the ledger is
        # read after it has, so nothing it writes later goes unseen.
        deadline = time.monotonic() + MODULE_WAIT
        while module_running(lost):
            assert time.monotonic() < deadline, "the module on the lost host never ended"
            time.sleep(0.2)
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(seen) + rest


def ledger_rows(fleet: Fleet, query: str) -> list[sa.Row]:
    with Ledger.open(fleet.ledger_url).store.read() as connection:
        return connection.execute(sa.text(query)).all()


def libvirt_vms(host: LabHost) -> dict[str, str]:
    """{vm: running|stopped} as the host's libvirtd has them. Read through its local socket:
    the host's admin at its console, since SSH to it is what the test takes away."""
    conn = host.connect()
    try:
        return {
            d.name().split("_", 1)[1]: "running" if d.isActive() else "stopped"
            for d in conn.listAllDomains()
        }
    finally:
        conn.close()


def open_vm_usage(fleet: Fleet, host: LabHost) -> dict[str, str]:
    rows = ledger_rows(
        fleet,
        "SELECT name, state FROM usage_intervals WHERE kind = 'vm' AND ended_at IS NULL"
        f" AND host = '{host.ssh_uri}'",
    )
    names = [row.name for row in rows]
    assert len(names) == len(set(names)), f"two open usage intervals of one VM: {rows}"
    return {row.name: row.state for row in rows}


def pending_intents(fleet: Fleet) -> list[sa.Row]:
    return ledger_rows(
        fleet, "SELECT host, name, action FROM usage_intents WHERE resolved_at IS NULL"
    )


def probe(fleet: Fleet) -> tuple[int, list[dict]]:
    """`vce ledger probe` over every host of the fleet, as the probe's timer runs it."""
    uris = [arg for host in fleet.lab.hosts.values() for arg in ("--uri", host.ssh_uri)]
    proc = subprocess.run(
        [sys.executable, "-m", "ansible_collections.vce.kvm.cli.vce", "ledger", "probe",
         "--ledger-url", fleet.ledger_url, *uris],
        capture_output=True, text=True, timeout=120, check=False,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "collections")},
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def lost_mid_run(fleet: Fleet) -> tuple[int, str]:
    declare_all(fleet, vms=2)
    code, out = apply(fleet)
    assert code == 0, out[-4000:]
    declare_all(fleet, vms=3)  # a third VM on every host: work for the fleet-wide run
    return kill_sshd_mid_run(fleet)


def test_the_run_fails_for_the_lost_host_only(fleet, lost_mid_run):
    code, out = lost_mid_run
    assert code != 0, out[-4000:]
    counts = recap(out)
    assert set(counts) == set(fleet.lab.hosts), out[-3000:]
    lost = counts.pop(LOST)
    assert lost["failed"] + lost["unreachable"] >= 1, lost
    assert all(c["failed"] == c["unreachable"] == 0 and c["changed"] >= 1 for c in counts.values())
    assert any(line.startswith(f"fatal: [{LOST}]") for line in out.splitlines()), out[-3000:]
    for name in counts:
        assert libvirt_vms(fleet.lab.hosts[name]) == {f"vm{n}": "stopped" for n in (1, 2, 3)}


def test_the_ledger_holds_nothing_half_written(fleet, lost_mid_run):
    (run,) = ledger_rows(
        fleet, "SELECT result, ended_at FROM runs WHERE source = 'ansible' ORDER BY started_at DESC LIMIT 1"
    )  # fmt: skip
    assert run.result == "failed" and run.ended_at is not None
    assert not ledger_rows(fleet, "SELECT id FROM runs WHERE result = 'running'")
    for host in fleet.lab.hosts.values():
        actual, recorded = libvirt_vms(host), open_vm_usage(fleet, host)
        if host.name != LOST:
            assert recorded == actual, host.name
            continue
        # What the killed module did is recorded, or waits as a written-ahead intent for the
        # next run to confirm; nothing is recorded that libvirt does not show.
        waiting = {row.name for row in pending_intents(fleet) if row.host == host.ssh_uri}
        assert {vm: state for vm, state in recorded.items() if vm not in waiting} == {
            vm: state for vm, state in actual.items() if vm not in waiting
        }
        assert set(actual) - set(recorded) <= waiting
    assert {row.host for row in pending_intents(fleet)} <= {fleet.lab.hosts[LOST].ssh_uri}


def test_the_probe_opens_incidents_for_the_lost_hosts_running_vms(fleet, lost_mid_run):
    code, report = probe(fleet)
    assert code == 1
    lost = fleet.lab.hosts[LOST]
    by_host = {entry["host"]: entry for entry in report}
    assert "unreachable" in by_host[lost.ssh_uri]
    opened = [(i["tenant"], i["vm"]) for entry in report for i in entry["opened"]]
    assert opened == [(fleet.tenant_of(LOST), "vm1")]
    rows = ledger_rows(
        fleet, "SELECT tenant, vm, host, cause FROM incidents WHERE ended_at IS NULL"
    )
    assert [tuple(row) for row in rows] == [
        (fleet.tenant_of(LOST), "vm1", lost.ssh_uri, "provider")
    ]


def test_host_back_a_rerun_converges_without_duplicates(fleet, lost_mid_run):
    fleet.lab.start_sshd(LOST)
    code, out = apply(fleet)
    assert code == 0, out[-4000:]
    assert all(c["failed"] == c["unreachable"] == 0 for c in recap(out).values())
    code, out = apply(fleet)
    assert code == 0 and all(c["changed"] == 0 for c in recap(out).values()), out[-3000:]
    for host in fleet.lab.hosts.values():
        assert open_vm_usage(fleet, host) == libvirt_vms(host), host.name
    assert not pending_intents(fleet)
    timeline = ledger_rows(
        fleet,
        "SELECT host, tenant, kind, name, state FROM usage_intervals ORDER BY started_at, key",
    )
    per_resource: dict[tuple, list[str]] = {}
    for row in timeline:
        per_resource.setdefault(tuple(row)[:4], []).append(row.state)
    repeated = {k: s for k, s in per_resource.items() if any(a == b for a, b in pairwise(s))}
    assert not repeated, repeated
    assert per_resource
    code, report = probe(fleet)
    assert code == 0, report
    ended = [(i["tenant"], i["vm"]) for entry in report for i in entry["ended"]]
    assert ended == [(fleet.tenant_of(LOST), "vm1")]
    assert not ledger_rows(fleet, "SELECT id FROM incidents WHERE ended_at IS NULL")
