"""The host-side backup runner on libvirt's test driver, real qemu-img on small images and a
SQLite ledger. The test driver has no backup API (backupBegin, job stats), so a stopped VM's
copy is run end to end and a running VM's run is checked to fail cleanly; checkpoints it does
keep, so their names and clean-up are checked on it."""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import subprocess
from pathlib import Path

import libvirt
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.backup_spec import Retention
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import VceError
from ansible_collections.vce.kvm.plugins.module_utils.host import connection as host
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from ansible_collections.vce.kvm.plugins.module_utils.runner import backup
from ansible_collections.vce.kvm.plugins.module_utils.runner.backup import (
    CHECKPOINT_NAME,
    BackupRun,
    RunnerConfig,
    checkpoint_name,
    drop_schedule_checkpoints,
    record_key,
)
from ansible_collections.vce.kvm.plugins.module_utils.runner.repo import ScheduleRepo

from tests.support.backup_api import BackupConnection, BackupDomain
from tests.support.files import mode_of
from tests.support.ledger import register
from tests.support.testdriver import URI, fresh_driver

UTC = dt.UTC
T0 = dt.datetime(2026, 11, 10, 2, 0, tzinfo=UTC)


def qemu(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=True).stdout


def image(path: Path, seed: int) -> Path:
    qemu("create", "-q", "-f", "qcow2", str(path), "8M")
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {seed} 1M 1M", str(path)],
        capture_output=True, check=True,
    )  # fmt: skip
    return path


def content(path: Path) -> str:
    raw = path.with_suffix(".raw")
    qemu("convert", "-f", "qcow2", "-O", "raw", str(path), str(raw))
    try:
        return hashlib.sha256(raw.read_bytes()).hexdigest()
    finally:
        raw.unlink()


def disk_xml(path: Path, target: str, serial: str) -> str:
    return (
        f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
        f"<source file='{path}'/><target dev='{target}' bus='virtio'/>"
        f"<serial>{serial}</serial></disk>"
    )


@pytest.fixture
def vm(monkeypatch, tmp_path, ledger_url):
    """A stopped VM acme_web1 with a boot disk and a data disk, tenant acme registered.

    A run closes its libvirt connection when it ends; the test's own connection keeps the
    test driver's state (the VM) alive across runs, as a host keeps its VMs."""
    drivers = fresh_driver(monkeypatch)
    next(drivers, None)
    keep = libvirt.open(URI)
    register(ledger_url, "acme")
    disks = tmp_path / "disks"
    disks.mkdir()
    boot, data = image(disks / "boot.qcow2", 1), image(disks / "data.qcow2", 2)
    host.connect(URI).defineXML(
        "<domain type='test'><name>acme_web1</name><memory>131072</memory>"
        "<os><type>hvm</type></os><devices>"
        f"{disk_xml(boot, 'vda', 'boot')}{disk_xml(data, 'vdb', 'data1')}"
        "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/></disk>"
        "</devices></domain>"
    )
    yield {"boot": boot, "data1": data}
    # Gone even when a failed test's traceback still holds a connection to the driver.
    domain = keep.lookupByName("acme_web1")
    for checkpoint in domain.listAllCheckpoints():
        checkpoint.delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
    if domain.isActive():
        domain.destroy()
    domain.undefine()
    keep.close()
    next(drivers, None)


def config(tmp_path: Path, ledger_url: str | None, **changes) -> RunnerConfig:
    values = {
        "tenant": "acme", "vm": "web1", "domain": "acme_web1", "schedule": "nightly",
        "uri": URI, "root": str(tmp_path / "backups"), "disks": (),
        "retention": Retention(keep_last=7), "ledger_url": ledger_url,
    }  # fmt: skip
    return RunnerConfig(**{**values, **changes})


class Clock:
    def __init__(self, start: dt.datetime, step: dt.timedelta) -> None:
        self.now, self.step = start, step

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self) -> None:
        self.now += self.step


def records(ledger_url: str) -> list:
    return Ledger.open(ledger_url).backup_records("acme", "web1")


def test_a_stopped_vm_is_copied_checked_and_recorded(vm, tmp_path, ledger_url):
    result = BackupRun(config(tmp_path, ledger_url), Clock(T0, dt.timedelta(0))).run()
    assert (result.status, result.kind, result.error) == ("ok", "copy", None)
    assert result.backup_id == "20261110T020000Z"
    repo = ScheduleRepo(tmp_path / "backups", "acme", "web1", "nightly")
    (manifest,) = repo.backups()
    assert manifest.kind == "copy" and manifest.checkpoint is None
    assert [(d.name, d.target, d.file) for d in manifest.disks] == [
        ("boot", "vda", "vda.qcow2"), ("data1", "vdb", "vdb.qcow2"),
    ]  # fmt: skip
    assert all(d.virtual_size == 8 * 1024 * 1024 for d in manifest.disks)
    folder = repo.path(result.backup_id)
    assert content(folder / "vda.qcow2") == content(vm["boot"])
    assert content(folder / "vdb.qcow2") == content(vm["data1"])
    assert result.size_bytes == manifest.size_bytes > 0
    (row,) = records(ledger_url)
    assert (row.status, row.kind, row.backup_id, row.size_bytes) == (
        "ok", "copy", result.backup_id, result.size_bytes,
    )  # fmt: skip
    assert row.key == record_key(URI, "acme", "web1", "nightly", result.backup_id)
    assert row.error is None and row.pruned_at is None
    assert result.as_dict()["started_at"] == T0.isoformat()


def test_a_host_reached_over_ssh_is_backed_up_through_its_own_daemon(vm, tmp_path, ledger_url):
    # The host record's URI reaches the host over SSH from the control plane; the runner on the
    # host connects to `connect_uri` and records its backups under the record's URI.
    remote = "qemu+ssh://root@kvm1.example/system?command=/srv/vce/ssh"
    run = BackupRun(
        config(tmp_path, ledger_url, uri=remote, connect_uri=URI), Clock(T0, dt.timedelta(0))
    )
    result = run.run()
    assert (result.status, result.kind) == ("ok", "copy"), result.error
    (row,) = records(ledger_url)
    assert row.key == record_key(remote, "acme", "web1", "nightly", result.backup_id)


def test_only_the_disks_named_are_copied_and_an_unknown_one_fails_the_run(vm, tmp_path, ledger_url):
    one = BackupRun(config(tmp_path, ledger_url, disks=("data1",)), lambda: T0).run()
    assert one.status == "ok"
    (manifest,) = ScheduleRepo(tmp_path / "backups", "acme", "web1", "nightly").backups()
    assert [d.name for d in manifest.disks] == ["data1"]
    bad = BackupRun(config(tmp_path, ledger_url, disks=("data9",), schedule="weekly"), lambda: T0)
    failed = bad.run()
    assert failed.status == "failed"
    assert failed.error == "VM web1 of tenant acme has no disk data9 (it has boot, data1)"
    assert not (tmp_path / "backups" / "acme" / "web1" / "weekly").exists()
    statuses = sorted((r.schedule, r.status) for r in records(ledger_url))
    assert statuses == [("nightly", "ok"), ("weekly", "failed")]
    failed_row = next(r for r in records(ledger_url) if r.status == "failed")
    assert failed_row.key.endswith(":failed") and "data9" in failed_row.error


def test_retention_prunes_the_oldest_and_the_ledger_knows(vm, tmp_path, ledger_url):
    clock = Clock(T0, dt.timedelta(days=1))
    settings = config(tmp_path, ledger_url, retention=Retention(keep_last=2))
    kept = []
    for _attempt in range(3):
        result = BackupRun(settings, clock).run()
        assert result.status == "ok", result.error
        kept.append(result.backup_id)
        clock.advance()
    assert result.pruned == [kept[0]]
    repo = ScheduleRepo(settings.root, "acme", "web1", "nightly")
    assert [m.backup_id for m in repo.backups()] == kept[1:]
    pruned = {r.backup_id: r.pruned_at for r in records(ledger_url)}
    assert pruned[kept[0]] is not None
    assert pruned[kept[1]] is None and pruned[kept[2]] is None


def test_two_runs_in_the_same_second_get_distinct_ids(vm, tmp_path, ledger_url):
    ids = [
        BackupRun(config(tmp_path, ledger_url), lambda: T0).run().backup_id for _attempt in range(2)
    ]
    assert ids == ["20261110T020000Z", "20261110T020000Z-2"]


def test_what_a_killed_run_left_is_cleaned_and_reported(vm, tmp_path, ledger_url):
    settings = config(tmp_path, ledger_url)
    repo = ScheduleRepo(settings.root, "acme", "web1", "nightly")
    leftover = repo.partial("20261109T020000Z")
    leftover.mkdir(parents=True)
    (leftover / "vda.qcow2").write_bytes(b"half")
    result = BackupRun(settings, lambda: T0).run()
    assert result.status == "ok"
    assert result.cleaned == [leftover.name]
    assert not leftover.exists()


def test_a_full_backup_storage_quota_refuses_the_run(vm, tmp_path, ledger_url):
    register(ledger_url, "acme", backup_storage_gib=0)
    result = BackupRun(config(tmp_path, ledger_url), lambda: T0).run()
    assert result.status == "failed"
    assert result.error.startswith("backup storage quota of tenant acme is full: 0 GiB used of 0")
    assert "vce.kvm.quota (backup_storage_gib)" in result.error
    (row,) = records(ledger_url)
    assert row.status == "failed"


def test_without_a_reachable_ledger_the_backup_is_kept_and_the_run_says_so(vm, tmp_path):
    url = "postgresql+psycopg://vce@127.0.0.1:1/vce"  # nothing listens on port 1
    result = BackupRun(config(tmp_path, url), lambda: T0).run()
    assert result.status == "ok"
    assert len(result.warnings) == 1
    assert result.warnings[0].startswith("the ledger has no record of this run: Failed to")


def test_a_vm_that_is_not_there_fails_the_run_naming_it(vm, tmp_path, ledger_url):
    result = BackupRun(config(tmp_path, ledger_url, domain="acme_web9"), lambda: T0).run()
    assert result.status == "failed"
    assert result.error.startswith("Failed to find domain acme_web9")
    (row,) = records(ledger_url)
    assert (row.status, row.backup_id) == ("failed", "20261110T020000Z")


def test_a_run_waits_for_another_run_of_the_vm_then_gives_up(vm, tmp_path, ledger_url):
    settings = config(tmp_path, ledger_url, timeout_s=0)
    repo = ScheduleRepo(settings.root, "acme", "web1", "other")
    repo.vm_dir.mkdir(parents=True)
    with (repo.vm_dir / ".lock").open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        lock_files = list(repo.vm_dir.iterdir())
        result = BackupRun(settings, lambda: T0).run()
    assert lock_files, "the runner's lock file is in the VM's folder"
    assert result.status == "failed"
    assert result.error == "another backup of VM web1 is still running after 0 s; this run gives up"


def test_a_running_vm_on_a_driver_without_the_backup_api_fails_cleanly(vm, tmp_path, ledger_url):
    host.connect(URI).lookupByName("acme_web1").create()
    result = BackupRun(config(tmp_path, ledger_url), lambda: T0).run()
    assert result.status == "failed"
    assert "Failed to read the jobs of acme_web1" in result.error
    assert ScheduleRepo(tmp_path / "backups", "acme", "web1", "nightly").backups() == []
    assert records(ledger_url)[0].status == "failed"


def test_checkpoints_of_the_schedule_are_dropped_and_other_schedules_kept(vm, tmp_path, ledger_url):
    domain = host.connect(URI).lookupByName("acme_web1")
    names = [
        checkpoint_name("nightly", "20261108T020000Z"),
        checkpoint_name("nightly", "20261109T020000Z-2"),
        checkpoint_name("weekly", "20261109T020000Z"),
        "operator-made",
    ]
    domain.create()  # the test driver makes checkpoints of running domains only
    for name in names:
        domain.checkpointCreateXML(f"<domaincheckpoint><name>{name}</name></domaincheckpoint>")
    domain.destroy()
    assert CHECKPOINT_NAME.match(names[1]).group("schedule", "id") == (
        "nightly", "20261109T020000Z-2",
    )  # fmt: skip
    dropped = drop_schedule_checkpoints(domain, "nightly", names[1], "VM web1")
    assert dropped == [f"checkpoint {names[0]}"]
    # A copy run keeps no checkpoint of its own (the last backup has none): it drops them.
    result = BackupRun(config(tmp_path, ledger_url), lambda: T0).run()
    assert result.status == "ok"
    assert f"checkpoint {names[1]}" in result.cleaned
    left = sorted(cp.getName() for cp in domain.listAllCheckpoints())
    assert left == sorted([names[2], names[3]])


def test_the_config_file_round_trips_and_bad_ones_are_refused_naming_the_file(tmp_path):
    settings = config(
        tmp_path, "sqlite:///x.sqlite3", disks=("boot",), timeout_s=60,
        connect_uri="qemu:///system?socket=/run/x.sock",
    )  # fmt: skip
    path = tmp_path / "nightly.json"
    path.write_text(json.dumps(settings.as_dict()))
    assert RunnerConfig.load(path) == settings
    raw = settings.as_dict()
    del raw["timeout_s"], raw["disks"], raw["ledger_url"], raw["connect_uri"]
    path.write_text(json.dumps(raw))
    defaults = RunnerConfig.load(path)
    assert (defaults.timeout_s, defaults.disks, defaults.ledger_url, defaults.connect_uri) == (
        6 * 3600, (), None, None,
    )  # fmt: skip
    for text, reason in [
        ("{", "Expecting"),
        (json.dumps({**raw, "retention": {"keep_daily": 0}}), "must be at least 1"),
        (json.dumps({k: v for k, v in raw.items() if k != "domain"}), "'domain'"),
    ]:
        path.write_text(text)
        with pytest.raises(VceError) as error:
            RunnerConfig.load(path)
        assert str(error.value).startswith(f"Failed to read backup schedule config {path}: ")
        assert reason in str(error.value)
    with pytest.raises(VceError, match=r"missing\.json"):
        RunnerConfig.load(tmp_path / "missing.json")


# -- a running VM, with the backup API the test driver lacks (tests/support/backup_api.py) --


@pytest.fixture
def live(vm, monkeypatch):
    conn = libvirt.open(URI)
    real = conn.lookupByName("acme_web1")
    real.create()
    domain = BackupDomain(real, {"vda": str(vm["boot"]), "vdb": str(vm["data1"])})
    monkeypatch.setattr(backup, "connect", lambda uri: BackupConnection(conn, domain))
    monkeypatch.setattr(backup, "JOB_POLL_S", 0.001)
    yield domain
    conn.close()


def backing_of(path: Path) -> str | None:
    return json.loads(qemu("info", "--output=json", "-U", str(path))).get("backing-filename")


def checkpoints(domain) -> list[str]:
    return sorted(cp.getName() for cp in domain.listAllCheckpoints())


def test_a_running_vm_gets_a_full_backup_then_incrementals_on_top(live, tmp_path, ledger_url):
    clock = Clock(T0, dt.timedelta(days=1))
    settings = config(tmp_path, ledger_url)
    first = BackupRun(settings, clock).run()
    assert (first.status, first.kind, first.bytes_processed) == ("ok", "full", 4096), first.error
    assert checkpoints(live) == [checkpoint_name("nightly", first.backup_id)]
    clock.advance()
    second = BackupRun(settings, clock).run()
    assert (second.status, second.kind) == ("ok", "incremental"), second.error
    repo = ScheduleRepo(settings.root, "acme", "web1", "nightly")
    full, incremental = repo.backups()
    assert incremental.parent == full.backup_id
    assert incremental.checkpoint == checkpoint_name("nightly", second.backup_id)
    # The chain points at the previous backup, never at the live disk.
    for disk in ("vda.qcow2", "vdb.qcow2"):
        assert backing_of(repo.path(second.backup_id) / disk) == f"../{first.backup_id}/{disk}"
        assert backing_of(repo.path(first.backup_id) / disk) is None
        qemu("check", "-q", str(repo.path(second.backup_id) / disk))
    # Only the newest checkpoint of the schedule is kept.
    assert checkpoints(live) == [checkpoint_name("nightly", second.backup_id)]
    kinds = [(r.kind, r.status) for r in records(ledger_url)]
    assert kinds == [("full", "ok"), ("incremental", "ok")]


def test_lost_bitmaps_fall_back_to_a_full_backup_with_a_warning(live, tmp_path, ledger_url):
    clock = Clock(T0, dt.timedelta(days=1))
    settings = config(tmp_path, ledger_url)
    first = BackupRun(settings, clock).run()
    clock.advance()
    live.fail_incremental = True
    second = BackupRun(settings, clock).run()
    assert (second.status, second.kind) == ("ok", "full"), second.error
    assert second.warnings == [
        f"incremental backup from {first.backup_id} failed; took a full backup instead"
    ]
    repo = ScheduleRepo(settings.root, "acme", "web1", "nightly")
    assert repo.backups()[-1].parent is None
    assert backing_of(repo.path(second.backup_id) / "vda.qcow2") is None
    assert checkpoints(live) == [checkpoint_name("nightly", second.backup_id)]


def test_a_vm_with_other_disks_than_the_last_backup_gets_a_full_backup(live, tmp_path, ledger_url):
    clock = Clock(T0, dt.timedelta(days=1))
    BackupRun(config(tmp_path, ledger_url, disks=("boot",)), clock).run()
    clock.advance()
    second = BackupRun(config(tmp_path, ledger_url), clock).run()
    assert (second.status, second.kind) == ("ok", "full"), second.error
    assert second.warnings == []


def test_a_failed_job_leaves_no_backup_and_no_checkpoint_of_its_own(live, tmp_path, ledger_url):
    live.job_error = "No space left on device"
    settings = config(tmp_path, ledger_url)
    failed = BackupRun(settings, lambda: T0).run()
    assert failed.status == "failed"
    assert failed.error == "Failed to back up VM web1 of tenant acme: No space left on device"
    repo = ScheduleRepo(settings.root, "acme", "web1", "nightly")
    assert repo.backups() == [] and list(repo.dir.iterdir()) == []
    assert checkpoints(live) == []
    (row,) = records(ledger_url)
    assert (row.status, row.error) == ("failed", failed.error)


def test_a_failed_incremental_job_keeps_the_last_good_checkpoint(live, tmp_path, ledger_url):
    clock = Clock(T0, dt.timedelta(days=1))
    settings = config(tmp_path, ledger_url)
    first = BackupRun(settings, clock).run()
    clock.advance()
    live.job_error = "No space left on device"
    failed = BackupRun(settings, clock).run()
    assert failed.status == "failed"
    assert failed.error == "Failed to back up VM web1 of tenant acme: No space left on device"
    repo = ScheduleRepo(settings.root, "acme", "web1", "nightly")
    assert [m.backup_id for m in repo.backups()] == [first.backup_id]
    assert checkpoints(live) == [checkpoint_name("nightly", first.backup_id)]
    assert failed.warnings == []


def test_a_job_left_by_a_killed_run_is_aborted_first(live, tmp_path, ledger_url):
    live.job_running = True
    result = BackupRun(config(tmp_path, ledger_url), lambda: T0).run()
    assert result.status == "ok", result.error
    assert "backup job of a killed run" in result.cleaned
    assert live.aborted == 1


def test_a_job_that_outlasts_the_timeout_is_aborted_and_the_run_fails(
    live, tmp_path, ledger_url, monkeypatch
):
    monkeypatch.setattr(backup, "ABORT_WAIT_S", 0.05)
    begin = live.backupBegin

    def never_ending(*args):
        begin(*args)
        live.job_running = True
        live.abortJob = lambda: None  # the job does not stop when asked

    live.backupBegin = never_ending
    result = BackupRun(config(tmp_path, ledger_url, timeout_s=0), lambda: T0).run()
    assert result.status == "failed"
    assert result.error == "Failed to back up VM web1 of tenant acme: not done after 0 s"
    assert ScheduleRepo(tmp_path / "backups", "acme", "web1", "nightly").backups() == []


@pytest.mark.usefixtures("umask")
def test_a_backup_is_private_to_root_whatever_the_umask(vm, tmp_path, ledger_url):
    result = BackupRun(config(tmp_path, ledger_url), Clock(T0, dt.timedelta(0))).run()
    assert result.status == "ok", result.error
    root = tmp_path / "backups"  # not made by the role here: the runner made it
    folder = ScheduleRepo(root, "acme", "web1", "nightly").path(result.backup_id)
    directories = [root, root / "acme", root / "acme" / "web1", folder.parent, folder]
    assert [mode_of(d) for d in directories] == [0o700] * len(directories)
    files = [root / "acme" / "web1" / ".lock", *folder.iterdir()]
    assert {f.name for f in files} >= {".lock", "manifest.json", "vda.qcow2", "vdb.qcow2"}
    assert {f.name: mode_of(f) for f in files} == {f.name: 0o600 for f in files}
