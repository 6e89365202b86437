"""vce.kvm.backup_schedule and the host-side runner against the private libvirtd: units checked
by systemd-analyze and installed, check/diff/idempotence, bad input changing nothing, quotas,
the environment's schedules, and a runner killed in the middle of a live backup."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from ansible_collections.vce.kvm.plugins.module_utils.runner.backup import CHECKPOINT_NAME

from tests.integration.conftest import run_backup, wait_for
from tests.support.ansible_runner import run_module
from tests.support.ledger import register
from tools.cleanup import remove_prefixed

pytestmark = pytest.mark.integration


def vm_environment(uri: str, tenant: str, image: str, state: str = "stopped", **extra) -> dict:
    return {
        "uri": uri,
        "tenant": tenant,
        "disks": [{"name": "data", "size_gib": 1}],
        "vms": [
            {
                "name": "web",
                "memory_mib": 64,
                "boot_disk": {"image": image, "size_gib": 1},
                "disks": ["data"],
                "state": state,
            }
        ],
        **extra,
    }


def schedule_args(uri: str, tenant: str, backup_host: dict, **extra) -> dict:
    return {
        "uri": uri,
        "tenant": tenant,
        "vm": "web",
        "name": "nightly",
        "calendar": "*-*-* 02:30",
        "retention": {"keep_daily": 7, "keep_weekly": 4},
        **backup_host,
        **extra,
    }


def unit_files(backup_host: dict) -> list[str]:
    found = []
    for key in ("unit_dir", "config_dir"):
        directory = Path(backup_host[key])
        if directory.exists():
            found += sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))
    return found


def test_schedule_lifecycle(uri, conn, tenant, blank_image, backup_host):
    assert not run_module("environment", vm_environment(uri, tenant, blank_image))["failed"]
    args = schedule_args(uri, tenant, backup_host)
    base = f"vce-backup-{tenant}_web_nightly"

    checked = run_module("backup_schedule", args, check=True, diff=True)
    assert checked["changed"] is True and not checked["failed"]
    assert [(c["action"], c["after"]["frequency"]) for c in checked["plan"]] == [
        ("create", "daily")
    ]
    assert checked["diff"]["after"] == {
        "backup_schedule/web/nightly": {"schedule": checked["plan"][0]["after"]}
    }
    assert unit_files(backup_host) == []  # check mode wrote nothing

    created = run_module("backup_schedule", args)
    assert created["changed"] is True, created
    units = Path(backup_host["unit_dir"])
    timer, service = units / f"{base}.timer", units / f"{base}.service"
    assert "OnCalendar=*-*-* 02:30" in timer.read_text()
    assert f"ExecStart={backup_host['runner']} run --config" in service.read_text()
    wanted = units / "timers.target.wants" / f"{base}.timer"
    assert wanted.is_symlink() and wanted.resolve() == timer.resolve()
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(timer), str(service)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr
    config_path = Path(backup_host["config_dir"]) / f"{base}.json"
    config = json.loads(config_path.read_text())
    assert config["domain"] == f"{tenant}_web" and config["retention"] == args["retention"]
    assert created["backup_schedule"]["enabled"] is True

    again = run_module("backup_schedule", args)
    assert again["changed"] is False, again["plan"]

    weekly = run_module("backup_schedule", {**args, "calendar": "Sun 03:00"}, diff=True)
    assert [c["action"] for c in weekly["plan"]] == ["update"]
    assert weekly["plan"][0]["before"]["frequency"] == "daily"
    assert weekly["plan"][0]["after"]["frequency"] == "weekly"
    assert "OnCalendar=Sun 03:00" in timer.read_text()

    # The VM is stopped: its disks are copied.
    copied = run_backup(str(config_path), now="2026-11-01T02:30:00+00:00")
    assert copied["status"] == "ok" and copied["kind"] == "copy", copied
    backup_dir = Path(backup_host["backup_root"]) / tenant / "web" / "nightly" / copied["backup_id"]
    manifest = json.loads((backup_dir / "manifest.json").read_text())
    assert [d["name"] for d in manifest["disks"]] == ["boot", "data"]
    records = Ledger.open().backup_records(tenant)
    assert [(r.status, r.kind, r.size_bytes > 0) for r in records] == [("ok", "copy", True)]
    info = run_module("backup_schedule", args | {"calendar": "Sun 03:00"})
    assert info["backup_schedule"]["backups"] == [copied["backup_id"]]

    removed = run_module("backup_schedule", {**args, "state": "absent"})
    assert [c["action"] for c in removed["plan"]] == ["delete"]
    assert unit_files(backup_host) == ["timers.target.wants"]  # an empty wants directory
    assert backup_dir.is_dir()  # backups stay unless purged
    assert run_module("backup_schedule", {**args, "state": "absent"})["changed"] is False


def test_bad_input_changes_nothing(uri, conn, tenant, blank_image, backup_host):
    assert not run_module("environment", vm_environment(uri, tenant, blank_image))["failed"]
    args = schedule_args(uri, tenant, backup_host)
    cases = [
        ({"vm": "nosuchvm"}, "vm", "has no VM 'nosuchvm'"),
        ({"calendar": "hourly"}, "calendar", "hourly schedule, which plan lab does not allow"),
        ({"calendar": "*:0/10"}, "calendar", "more often than hourly"),
        ({"calendar": "bogus 99"}, "calendar", "invalid calendar expression"),
        ({"retention": {"keep_daily": 0}}, "retention.keep_daily", "must be at least 1"),
        ({"target": "/var/tmp/elsewhere"}, "target", "outside the allowed backup root"),
        ({"disks": ["nosuchdisk"]}, "disks[0]", "has no disk 'nosuchdisk'"),
        ({"runner": "/nonexistent/vce-backup"}, "name", "is not installed on the host"),
    ]
    for change, field, reason in cases:
        result = run_module("backup_schedule", {**args, **change})
        assert result["failed"], change
        assert result.get("field") == field, (change, result["msg"])
        assert reason in result["msg"], (change, result["msg"])
        assert "Traceback" not in result["msg"]
    assert unit_files(backup_host) == []
    assert not Path(backup_host["backup_root"]).exists()


def test_frequencies_follow_the_plan_and_schedules_count_against_the_quota(
    uri, conn, blank_image, backup_host, ledger_url
):
    tenant = f"bq{os.getpid() % 10000}"
    register(
        ledger_url,
        tenant,
        plan="premium",
        backup_frequencies=["hourly", "daily"],
        backup_schedules=1,
    )
    try:
        assert not run_module("environment", vm_environment(uri, tenant, blank_image))["failed"]
        hourly = run_module(
            "backup_schedule", schedule_args(uri, tenant, backup_host, calendar="hourly")
        )
        assert hourly["changed"] and hourly["backup_schedule"]["frequency"] == "hourly"
        weekly = run_module(
            "backup_schedule",
            schedule_args(uri, tenant, backup_host, name="weekly", calendar="weekly"),
        )
        assert weekly["failed"] and "plan premium does not allow" in weekly["msg"]
        second = run_module(
            "backup_schedule",
            schedule_args(uri, tenant, backup_host, name="daily", calendar="daily"),
        )
        assert second["failed"] and second["quota_breaches"][0]["quota"] == "backup_schedules"
        assert len(list(Path(backup_host["unit_dir"]).glob("*.timer"))) == 1
    finally:
        remove_prefixed(conn, f"{tenant}_")


def test_environment_declares_schedules_and_prunes_them(
    uri, conn, tenant, blank_image, backup_host
):
    schedules = [
        {"vm": "web", "name": "daily", "calendar": "daily", "retention": {"keep_last": 3}},
        {
            "vm": "web",
            "name": "weekly",
            "calendar": "weekly",
            "disks": ["data"],
            "retention": {"keep_weekly": 4},
        },
    ]
    env = vm_environment(uri, tenant, blank_image, backup_schedules=schedules, **backup_host)
    first = run_module("environment", env)
    assert not first["failed"], first.get("msg")
    made = [
        (c["kind"], c["name"], c["action"]) for c in first["plan"] if c["kind"] == "backup_schedule"
    ]
    assert made == [
        ("backup_schedule", "web/daily", "create"),
        ("backup_schedule", "web/weekly", "create"),
    ]
    assert run_module("environment", env)["changed"] is False

    kept = run_module("environment", {**env, "backup_schedules": schedules[:1]})
    assert kept["changed"] is False and any("web/weekly" in w for w in kept.get("warnings", []))
    pruned = run_module("environment", {**env, "backup_schedules": schedules[:1], "prune": True})
    assert [(c["name"], c["action"]) for c in pruned["plan"]] == [("web/weekly", "delete")]
    timers = sorted(p.name for p in Path(backup_host["unit_dir"]).glob("*.timer"))
    assert timers == [f"vce-backup-{tenant}_web_daily.timer"]

    gone = run_module(
        "environment", {"uri": uri, "tenant": tenant, "state": "absent", **backup_host}
    )
    assert ("web/daily", "delete") in [(c["name"], c["action"]) for c in gone["plan"]]
    assert list(Path(backup_host["unit_dir"]).glob("*.timer")) == []


def fill(path: str, mib: int) -> None:
    """Allocated data in the VM's disk before it starts (the VM runs no OS)."""
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {mib}M", path],
        capture_output=True,
        check=True,
    )


def test_a_runner_killed_mid_backup_leaves_nothing_counted_and_the_next_run_succeeds(
    uri, conn, tenant, blank_image, backup_host
):
    env = vm_environment(uri, tenant, blank_image, state="stopped")
    assert not run_module("environment", env)["failed"]
    dom = conn.lookupByName(f"{tenant}_web")
    data = next(d for d in disk_paths(dom) if d.endswith("_data.qcow2"))
    fill(data, 768)
    dom.create()
    args = schedule_args(uri, tenant, backup_host, disks=["data"], retention={"keep_last": 5})
    assert run_module("backup_schedule", args)["changed"]
    config = str(Path(backup_host["config_dir"]) / f"vce-backup-{tenant}_web_nightly.json")
    runner = Path(backup_host["runner"])
    proc = subprocess.Popen(
        [str(runner), "run", "--config", config, "--now", "2026-11-02T02:30:00+00:00"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert wait_for(lambda: job_running(dom), 60, 0.01), "the backup job never started"
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    schedule_dir = Path(backup_host["backup_root"]) / tenant / "web" / "nightly"
    assert [p.name for p in schedule_dir.iterdir()] == [".partial-20261102T023000Z"]
    listed = subprocess.run(
        [str(runner), "list", "--config", config], capture_output=True, text=True, check=False
    )
    assert json.loads(listed.stdout) == []  # nothing half-written counts as a backup

    after = run_backup(config, now="2026-11-02T03:00:00+00:00")
    assert after["status"] == "ok" and after["kind"] == "full", after["error"]
    assert ".partial-20261102T023000Z" in after["cleaned"]
    assert [p.name for p in schedule_dir.iterdir()] == ["20261102T030000Z"]
    checkpoints = [c.getName() for c in dom.listAllCheckpoints()]
    assert checkpoints == ["vce-nightly-20261102T030000Z"]  # the killed run's is gone
    incremental = run_backup(config, now="2026-11-03T02:30:00+00:00")
    assert incremental["status"] == "ok" and incremental["kind"] == "incremental", incremental
    assert incremental["size_bytes"] < 16 << 20  # nothing changed: a few clusters, not 768 MiB
    image = schedule_dir / "20261103T023000Z" / "vdb.qcow2"
    compare = subprocess.run(
        ["qemu-img", "compare", "-U", data, str(image)], capture_output=True, text=True, check=False
    )
    assert compare.returncode == 0, compare.stdout + compare.stderr


def job_running(dom) -> bool:
    try:
        return dom.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE
    except libvirt.libvirtError:  # "backup job data missing": a job being set up
        return True


def disk_paths(dom) -> list[str]:
    root = ET.fromstring(dom.XMLDesc(0))
    return [s.get("file") for s in root.findall("devices/disk/source") if s.get("file")]


def test_concurrent_runs_of_one_vm_take_turns(uri, conn, tenant, blank_image, backup_host):
    assert not run_module("environment", vm_environment(uri, tenant, blank_image, state="running"))[
        "failed"
    ]
    for name in ("a", "b"):
        assert run_module(
            "backup_schedule",
            schedule_args(uri, tenant, backup_host, name=name, retention={"keep_last": 2}),
        )["changed"]
    configs = [
        str(Path(backup_host["config_dir"]) / f"vce-backup-{tenant}_web_{n}.json")
        for n in ("a", "b")
    ]
    runner = backup_host["runner"]
    started = time.monotonic()
    procs = [
        subprocess.Popen([runner, "run", "--config", c], stdout=subprocess.PIPE, text=True)
        for c in configs * 2
    ]
    results = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert time.monotonic() - started < 300
    assert [r["status"] for r in results] == ["ok"] * 4, results
    dom = conn.lookupByName(f"{tenant}_web")
    names = sorted(CHECKPOINT_NAME.match(c.getName())["schedule"] for c in dom.listAllCheckpoints())
    assert names == ["a", "b"]  # one checkpoint per schedule, each its own chain


def hmp_write(dom, path: str, offset_mib: int, mib: int, pattern: int) -> None:
    """Write into the running VM's disk at `path` from QEMU itself (the VM runs no OS)."""
    import libvirt_qemu

    blocks = json.loads(libvirt_qemu.qemuMonitorCommand(dom, '{"execute": "query-block"}', 0))
    device = next(b["qdev"] for b in blocks["return"] if b.get("inserted", {}).get("file") == path)
    command = f'qemu-io -d {device} "write -P {pattern} {offset_mib}M {mib}M"'
    output = libvirt_qemu.qemuMonitorCommand(
        dom, command, libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
    )
    assert not output.strip(), output  # qemu-io reports errors here, successes elsewhere


def test_a_copy_of_a_stopped_vm_continues_the_incremental_chain(
    uri, conn, tenant, blank_image, backup_host
):
    env = vm_environment(uri, tenant, blank_image, state="running")
    assert not run_module("environment", env)["failed"]
    dom = conn.lookupByName(f"{tenant}_web")
    args = schedule_args(uri, tenant, backup_host, disks=["data"], retention={"keep_last": 9})
    assert run_module("backup_schedule", args)["changed"]
    config = str(Path(backup_host["config_dir"]) / f"vce-backup-{tenant}_web_nightly.json")
    data = next(d for d in disk_paths(dom) if d.endswith("_data.qcow2"))
    schedule_dir = Path(backup_host["backup_root"]) / tenant / "web" / "nightly"

    hmp_write(dom, data, 0, 4, 0x11)
    assert run_backup(config, now="2026-11-01T02:30:00+00:00")["kind"] == "full"
    hmp_write(dom, data, 8, 4, 0x22)
    dom.destroy()
    copy = run_backup(config, now="2026-11-02T02:30:00+00:00")
    assert (copy["status"], copy["kind"]) == ("ok", "copy"), copy
    dom.create()
    hmp_write(dom, data, 16, 4, 0x33)
    incremental = run_backup(config, now="2026-11-03T02:30:00+00:00")
    assert (incremental["status"], incremental["kind"]) == ("ok", "incremental"), incremental
    manifest = json.loads((schedule_dir / incremental["backup_id"] / "manifest.json").read_text())
    assert manifest["parent"] == copy["backup_id"]
    dom.destroy()  # QEMU flushes its qcow2 caches as it exits: the file is now the disk

    def compare(backup: Path) -> int:
        argv = ["qemu-img", "compare", data, str(backup)]
        return subprocess.run(argv, capture_output=True, check=False).returncode

    assert compare(schedule_dir / incremental["backup_id"] / "vdb.qcow2") == 0
    assert compare(schedule_dir / copy["backup_id"] / "vdb.qcow2") == 1  # the last write counted
