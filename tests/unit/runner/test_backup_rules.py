"""Backup rules without a VM: schedule declarations, calendar frequencies (real
systemd-analyze), retention with a simulated clock, and pruning of real qcow2 chains."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.backup_spec import (
    Retention,
    check_frequency,
    check_under_root,
    parse_calendar_output,
    parse_schedule,
)
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.runner.repo import (
    DiskFile,
    Manifest,
    ScheduleRepo,
    survivors,
)

from tests.support.backups import runner_script

UTC = dt.UTC


def calendar(expression: str):
    out = subprocess.run(
        ["systemd-analyze", "calendar", "--iterations=100", expression],
        capture_output=True, text=True, check=True, env={"TZ": "UTC"},
    ).stdout  # fmt: skip
    return parse_calendar_output(expression, out)


@pytest.mark.parametrize(
    ("expression", "frequency"),
    [
        ("hourly", "hourly"),
        ("*-*-* 00/6:00", "hourly"),
        ("daily", "daily"),
        ("*-*-* 02:30", "daily"),
        ("Mon..Fri 02:00", "daily"),
        ("weekly", "weekly"),
        ("Sun 03:00", "weekly"),
        ("monthly", "monthly"),
        ("*-*-01 04:00", "monthly"),
        ("*:0/15", None),
    ],
)
def test_frequency_is_read_from_the_calendar(expression, frequency):
    assert calendar(expression).frequency == frequency


def test_a_frequency_outside_the_plan_is_refused_with_what_is_allowed():
    with pytest.raises(SpecError) as error:
        check_frequency(calendar("hourly"), ("daily", "weekly"), "standard", "calendar")
    assert error.value.field == "calendar"
    assert "hourly schedule, which plan standard does not allow" in error.value.reason
    assert "allowed: daily, weekly" in error.value.reason
    with pytest.raises(SpecError, match="more often than hourly"):
        check_frequency(calendar("*:0/15"), ("hourly", "daily"), "premium", "calendar")
    assert check_frequency(calendar("Sun 03:00"), ("daily", "weekly"), "standard", "c") == "weekly"


GOOD = {"name": "nightly", "calendar": "daily", "retention": {"keep_daily": 7}}


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"retention": {"keep_daily": 0}}, "retention.keep_daily", "must be at least 1"),
        ({"retention": {}}, "retention", "at least one rule"),
        ({"retention": {"keep_forever": 1}}, "retention.keep_forever", "unknown option"),
        ({"retention": {"keep_last": -2}}, "retention.keep_last", "must be positive"),
        ({"calendar": ""}, "calendar", "calendar expression is required"),
        ({"calendar": "daily; rm -rf /"}, "calendar", "invalid calendar expression"),
        ({"calendar": "daily\nExecStart=/bin/sh"}, "calendar", "invalid calendar expression"),
        ({"target": "relative/dir"}, "target", "absolute path"),
        ({"target": "/srv/b", "pool": "p"}, "pool", "not both"),
        ({"disks": ["data", "data"]}, "disks", "twice"),
        ({"name": "Nightly"}, "name", "invalid name"),
    ],
)
def test_bad_schedules_name_the_field(change, field, reason):
    with pytest.raises(SpecError) as error:
        parse_schedule({**GOOD, **change}, "", "web1")
    assert error.value.field == field
    assert reason in error.value.reason


def test_target_must_be_inside_the_backup_root():
    assert check_under_root("/srv/backups/a", "/srv/backups", "t") == "/srv/backups/a"
    assert check_under_root("/srv/backups/", "/srv/backups", "t") == "/srv/backups"
    for outside in ("/srv/backups-other", "/etc", "/srv/backups/../etc"):
        with pytest.raises(SpecError, match="outside the allowed backup root"):
            check_under_root(outside, "/srv/backups", "target")


# -- retention with a simulated clock ---------------------------------------------------------


def simulate(start: dt.datetime, step: dt.timedelta, runs: int, retention: Retention) -> list[str]:
    """Run a schedule `runs` times, pruning after each run as the runner does."""
    kept: list[tuple[str, dt.datetime]] = []
    for i in range(runs):
        moment = start + i * step
        kept.append((moment.strftime("%Y%m%dT%H%M%SZ"), moment))
        alive = survivors(kept, retention)
        kept = [b for b in kept if b[0] in alive]
    return sorted(b[0] for b in kept)


def test_keep_last_keeps_exactly_the_newest():
    start = dt.datetime(2026, 1, 1, 2, 30, tzinfo=UTC)
    kept = simulate(start, dt.timedelta(days=1), 50, Retention(keep_last=3))
    assert kept == ["20260217T023000Z", "20260218T023000Z", "20260219T023000Z"]


def test_daily_weekly_monthly_over_a_simulated_half_year():
    start = dt.datetime(2026, 1, 1, 2, 30, tzinfo=UTC)  # a Thursday
    runs = 181  # daily until 2026-06-30
    kept = simulate(
        start, dt.timedelta(days=1), runs, Retention(keep_daily=7, keep_weekly=4, keep_monthly=3)
    )
    last = start + (runs - 1) * dt.timedelta(days=1)
    assert last.date() == dt.date(2026, 6, 30)  # a Tuesday
    daily = [f"202606{d:02d}T023000Z" for d in range(24, 31)]
    # The newest backup of each of the 4 newest ISO weeks: week 27 (its Tuesday, already a
    # daily), then the Sundays ending weeks 26, 25 and 24.
    weekly = ["20260621T023000Z", "20260614T023000Z"]
    # The newest of each of the 3 newest months: June's (the last daily), 31 May, 30 April.
    monthly = ["20260531T023000Z", "20260430T023000Z"]
    assert kept == sorted({*daily, *weekly, *monthly})


def test_hourly_rule_counts_hours_not_runs():
    start = dt.datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
    kept = simulate(start, dt.timedelta(minutes=20), 12, Retention(keep_hourly=2))
    # runs at :00 :20 :40 for hours 00..03; the newest of hours 03 and 02 stay
    assert kept == ["20260301T024000Z", "20260301T034000Z"]


# -- pruning real chains ------------------------------------------------------------------------


def qemu(*args: str) -> str:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=True).stdout


def write(path: Path, offset_mib: int, seed: int) -> None:
    subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", f"write -P {seed} {offset_mib}M 1M", str(path)],
        capture_output=True, check=True,
    )  # fmt: skip


def content_digest(path: Path) -> str:
    raw = path.with_suffix(".raw")
    qemu("convert", "-f", "qcow2", "-O", "raw", str(path), str(raw))
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    raw.unlink()
    return digest


def take(repo: ScheduleRepo, moment: dt.datetime, seed: int, parent: Manifest | None) -> Manifest:
    """A backup as the runner leaves it: one disk, an incremental on top of `parent`."""
    backup_id = repo.new_id(moment)
    directory = repo.path(backup_id)
    directory.mkdir(parents=True)
    image = directory / "vda.qcow2"
    if parent is None:
        qemu("create", "-q", "-f", "qcow2", str(image), "16M")
    else:
        backing = f"../{parent.backup_id}/vda.qcow2"
        qemu("create", "-q", "-f", "qcow2", "-b", backing, "-F", "qcow2", str(image), "16M")
    write(image, seed % 16, seed)
    manifest = Manifest(
        backup_id, repo.tenant, repo.vm, repo.schedule,
        "incremental" if parent else "full", moment,
        [DiskFile("boot", "vda", "vda.qcow2", 16 << 20)],
        parent=parent.backup_id if parent else None,
    )  # fmt: skip
    (directory / "manifest.json").write_text(json.dumps(manifest.as_dict()))
    return manifest


def test_retention_of_two_schedules_on_one_vm_keeps_exactly_the_expected_restorable_backups(
    tmp_path,
):
    daily = ScheduleRepo(tmp_path, "acme", "web1", "daily")
    weekly = ScheduleRepo(tmp_path, "acme", "web1", "weekly")
    policies = {"daily": Retention(keep_last=3), "weekly": Retention(keep_weekly=2)}
    start = dt.datetime(2026, 2, 2, 2, 0, tzinfo=UTC)  # a Monday
    digests: dict[str, dict[str, str]] = {"daily": {}, "weekly": {}}
    last: dict[str, Manifest | None] = {"daily": None, "weekly": None}
    for day in range(21):
        moment = start + dt.timedelta(days=day)
        runs = [(daily, 1 + day)]
        if moment.weekday() == 6:  # Sundays
            runs.append((weekly, 100 + day))
        for repo, seed in runs:
            manifest = take(repo, moment, seed, last[repo.schedule])
            path = repo.path(manifest.backup_id) / "vda.qcow2"
            digests[repo.schedule][manifest.backup_id] = content_digest(path)
            repo.prune(policies[repo.schedule])
            last[repo.schedule] = repo.backups()[-1]
    kept_daily = [m.backup_id for m in daily.backups()]
    kept_weekly = [m.backup_id for m in weekly.backups()]
    assert kept_daily == ["20260220T020000Z", "20260221T020000Z", "20260222T020000Z"]
    assert kept_weekly == ["20260215T020000Z", "20260222T020000Z"]  # never pruned by daily
    for repo in (daily, weekly):
        backups = repo.backups()
        assert backups[0].parent is None and backups[0].kind == "full"  # the oldest was folded
        for manifest in backups:
            image = repo.path(manifest.backup_id) / "vda.qcow2"
            qemu("check", "-q", str(image))
            # Each survivor still reads as exactly the data of its moment.
            assert content_digest(image) == digests[repo.schedule][manifest.backup_id]
        on_disk = sorted(p.name for p in repo.dir.iterdir())
        assert on_disk == [m.backup_id for m in backups]


def test_a_half_written_backup_is_never_listed(tmp_path):
    repo = ScheduleRepo(tmp_path, "acme", "web1", "daily")
    good = take(repo, dt.datetime(2026, 1, 1, tzinfo=UTC), 1, None)
    repo.partial("20260102T000000Z").mkdir()
    (repo.dir / "20260103T000000Z").mkdir()  # renamed but no manifest: not ours to trust
    assert [m.backup_id for m in repo.backups()] == [good.backup_id]
    assert sorted(repo.clear_partials()) == [".partial-20260102T000000Z", "20260103T000000Z"]
    assert [p.name for p in repo.dir.iterdir()] == [good.backup_id]


def vce_backup(*args: str) -> subprocess.CompletedProcess:
    """The command as a schedule's service runs it, with this checkout's code."""
    script = Path(tempfile.mkdtemp(dir="/tmp")) / "vce-backup"
    script.write_text(runner_script(Path(__file__).resolve().parents[3]))
    script.chmod(0o755)
    try:
        return subprocess.run(
            [str(script), *args], capture_output=True, text=True, timeout=120, check=False
        )
    finally:
        shutil.rmtree(script.parent)


def test_the_vce_backup_command_lists_a_schedule(tmp_path):
    from importlib.metadata import entry_points

    from ansible_collections.vce.kvm.plugins.module_utils.runner.backup import RunnerConfig

    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("vce-backup") == "ansible_collections.vce.kvm.cli.backup:main"
    repo = ScheduleRepo(tmp_path, "acme", "web1", "daily")
    good = take(repo, dt.datetime(2026, 1, 1, tzinfo=UTC), 1, None)
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps(
            RunnerConfig(
                "acme", "web1", "acme_web1", "daily", "qemu:///system", str(tmp_path), (),
                Retention(keep_last=1),
            ).as_dict()
        )
    )  # fmt: skip
    listed = vce_backup("list", "--config", str(config))
    assert listed.returncode == 0, listed.stderr
    assert [b["backup_id"] for b in json.loads(listed.stdout)] == [good.backup_id]
    missing = vce_backup("list", "--config", str(tmp_path / "missing.json"))
    assert missing.returncode == 2 and "Failed to read backup schedule config" in missing.stderr
    config.write_text(json.dumps(json.loads(config.read_text()) | {"retention": {}}))
    empty = vce_backup("run", "--config", str(config))
    assert empty.returncode == 2  # an empty policy would prune every backup
    assert "retention: give at least one rule" in empty.stderr
    assert [m.backup_id for m in repo.backups()] == [good.backup_id]
