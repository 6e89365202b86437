"""Backup schedules of a VM on libvirt's test driver: units and config rendered, verified by
the real `systemd-analyze`, written under the test's folder, counted in the ledger; the
frequency read from the calendar and checked against the plan; removal and purge. `systemctl`
reaches a stand-in host (tests/support) so nothing on this machine is reloaded."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.core.quota import QuotaExceeded
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade
from ansible_collections.vce.kvm.plugins.module_utils.engine.drift import DeclaredHost, DriftCheck
from ansible_collections.vce.kvm.plugins.module_utils.engine.drift_report import (
    json_report,
    junit_report,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.backup_schedule import (
    check_host_path,
    parse_backup_host,
    read_host_schedules,
    run_backup_schedule,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import (
    backup_schedules,
    events,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from hypothesis import given
from hypothesis import strategies as st

from tests.support.files import mode_of
from tests.support.images import make_image
from tests.support.ledger import register
from tests.support.standin_host import StandInHost

from .conftest import URI

BASE = "vce-backup-acme_web1_nightly"


def environment(image):
    return {
        "uri": URI,
        "tenant": "acme",
        "default_pool": "default-pool",
        "disks": [{"name": "data1", "size_gib": 1}],
        "vms": [
            {"name": "web1", "vcpus": 1, "memory_mib": 128,
             "boot_disk": {"image": image, "size_gib": 1}, "disks": ["data1"]},
        ],
    }  # fmt: skip


class Lab:
    def __init__(self, tmp_path, ledger_url, vm=True):
        self.tmp_path = tmp_path
        self.ledger_url = ledger_url
        self.image = tmp_path / "base.qcow2"
        make_image(self.image)
        self.runner = tmp_path / "vce-backup"
        self.runner.write_text("#!/bin/sh\nexit 0\n")
        self.runner.chmod(0o755)
        self.root = tmp_path / "backups"
        self.units = tmp_path / "units"
        self.config = tmp_path / "config"
        self.host = StandInHost(tmp_path / "kvm")
        if vm:
            facade.run_environment(environment(str(self.image)))

    def where(self):
        return {
            "uri": URI,
            "ledger_url": self.ledger_url,
            "backup_root": str(self.root),
            "unit_dir": str(self.units),
            "config_dir": str(self.config),
            "runner": str(self.runner),
            "host_command": self.host.prefix,
        }

    def params(self, **extra):
        return {
            **self.where(),
            "tenant": "acme",
            "vm": "web1",
            "name": "nightly",
            "calendar": "daily",
            "retention": {"keep_daily": 7},
            **extra,
        }

    def rows(self):
        with Ledger.open(self.ledger_url).store.read() as connection:
            query = sa.select(backup_schedules)
            return [(r.vm, r.name, r.frequency, r.calendar) for r in connection.execute(query)]

    def event_kinds(self):
        with Ledger.open(self.ledger_url).store.read() as connection:
            query = sa.select(events.c.kind).where(events.c.kind.like("backup_schedule%"))
            return sorted(r.kind for r in connection.execute(query))


@pytest.fixture
def lab(tmp_path, acme):
    return Lab(tmp_path, acme)


def test_check_mode_plans_the_schedule_and_writes_nothing(lab):
    result = run_backup_schedule(lab.params(), check_mode=True)
    assert result.plan == [
        {
            "kind": "backup_schedule",
            "name": "web1/nightly",
            "action": "create",
            "class": "live",
            "field": "schedule",
            "before": None,
            "after": {
                "calendar": "daily",
                "frequency": "daily",
                "retention": {"keep_daily": 7},
                "disks": "all",
                "target": str(lab.root),
            },
        }
    ]
    assert not lab.units.exists() and not lab.config.exists()
    assert lab.rows() == []


def test_a_schedule_is_installed_recorded_and_then_unchanged(lab):
    result = run_backup_schedule(lab.params(disks=["boot", "data1"]))
    assert result.changed
    facts = result.facts["backup_schedule"]
    assert facts["timer"] == f"{BASE}.timer"
    assert facts["service"] == f"{BASE}.service"
    assert (facts["enabled"], facts["disks"], facts["frequency"]) == (
        True,
        ["boot", "data1"],
        "daily",
    )
    timer = (lab.units / f"{BASE}.timer").read_text()
    assert "OnCalendar=daily\n" in timer and f"Unit={BASE}.service\n" in timer
    service = (lab.units / f"{BASE}.service").read_text()
    assert f"ExecStart={lab.runner} run --config {lab.config}/{BASE}.json\n" in service
    config = json.loads((lab.config / f"{BASE}.json").read_text())
    assert (config["domain"], config["root"], config["ledger_url"]) == (
        "acme_web1",
        str(lab.root),
        lab.ledger_url,
    )
    assert (lab.units / "timers.target.wants" / f"{BASE}.timer").is_symlink()
    assert lab.rows() == [("web1", "nightly", "daily", "daily")]
    assert lab.event_kinds() == ["backup_schedule_created"]
    again = run_backup_schedule(lab.params(disks=["boot", "data1"]))
    assert (again.changed, again.plan) == (False, [])


def test_a_changed_schedule_is_updated_and_a_damaged_one_rewritten(lab):
    run_backup_schedule(lab.params())
    result = run_backup_schedule(lab.params(calendar="Sun 03:00", retention={"keep_weekly": 4}))
    [change] = result.plan
    assert change["action"] == "update"
    assert (change["before"]["frequency"], change["after"]["frequency"]) == ("daily", "weekly")
    assert change["after"]["retention"] == {"keep_weekly": 4}
    assert lab.rows() == [("web1", "nightly", "weekly", "Sun 03:00")]
    assert lab.event_kinds() == ["backup_schedule_created", "backup_schedule_updated"]
    (lab.config / f"{BASE}.json").write_text("{not json")
    repaired = run_backup_schedule(lab.params())
    assert [c["action"] for c in repaired.plan] == ["create"]
    assert not run_backup_schedule(lab.params()).changed


@pytest.mark.parametrize(
    ("calendar", "reason"),
    [
        ("hourly", "'hourly' is a hourly schedule, which plan lab does not allow (allowed: "
                   "daily, weekly, monthly)"),
        ("*:0/15", "'*:0/15' runs more often than hourly (every 0:15:00)"),
        ("every tuesday-ish", "invalid calendar expression"),
    ],
)  # fmt: skip
def test_calendars_the_plan_does_not_allow_are_refused(lab, calendar, reason):
    with pytest.raises(SpecError) as caught:
        run_backup_schedule(lab.params(calendar=calendar), check_mode=True)
    assert caught.value.field == "calendar"
    assert reason in caught.value.reason


def test_a_plan_with_hourly_backups_allows_them(tmp_path, ledger_url, connections):
    register(ledger_url, "acme", backup_frequencies=["hourly", "daily"])
    lab = Lab(tmp_path, ledger_url)
    result = run_backup_schedule(lab.params(calendar="*-*-* 00/6:00"), check_mode=True)
    assert result.plan[0]["after"]["frequency"] == "hourly"


@pytest.mark.parametrize(
    ("extra", "field", "reason"),
    [
        ({"target": "/srv/elsewhere"}, "target", "is outside the allowed backup root"),
        ({"pool": "default-pool"}, "pool", "/default-pool is outside the allowed backup root"),
        ({"pool": "nope"}, "pool", "no directory storage pool 'nope' on this host"),
        ({"vm": "db1"}, "vm", "tenant acme has no VM 'db1' on this host"),
        ({"disks": ["boot", "data9"]}, "disks[1]", "VM web1 has no disk 'data9' (it has boot, data1)"),
        ({"backup_root": "/srv/backups dir"}, "backup_root", "letters, digits"),
        ({"runner": "/srv/../bin/sh"}, "runner", "letters, digits"),
    ],
)  # fmt: skip
def test_bad_schedules_are_refused_with_the_field(lab, extra, field, reason):
    with pytest.raises(SpecError) as caught:
        run_backup_schedule(lab.params(**extra), check_mode=True)
    assert caught.value.field == field
    assert reason in caught.value.reason


def test_a_missing_runner_is_reported_by_the_unit_check(lab):
    with pytest.raises(SpecError) as caught:
        run_backup_schedule(lab.params(runner=str(lab.tmp_path / "nowhere")), check_mode=True)
    assert caught.value.field == "name"
    assert caught.value.reason == (
        f"systemd-analyze verify refused the units: the backup runner {lab.tmp_path}/nowhere "
        "is not installed on the host (the kvm_host role installs it; or set runner)"
    )


def test_the_backup_schedules_quota_counts_every_host(tmp_path, ledger_url, connections):
    register(ledger_url, "acme", backup_schedules=1)
    lab = Lab(tmp_path, ledger_url)
    run_backup_schedule(lab.params())
    with pytest.raises(QuotaExceeded, match="backup schedules"):
        run_backup_schedule(lab.params(name="weekly", calendar="Sun 03:00"), check_mode=True)
    # Changing the one it has is no new schedule.
    assert run_backup_schedule(lab.params(retention={"keep_daily": 3})).changed


def test_removal_deletes_the_files_and_the_row_and_purge_the_backups(lab):
    run_backup_schedule(lab.params())
    kept = lab.root / "acme" / "web1" / "nightly" / "20261124T023000Z"
    kept.mkdir(parents=True)
    checked = run_backup_schedule(lab.params(state="absent", purge_backups=True), check_mode=True)
    assert [(c["action"], c["field"], c["after"]) for c in checked.plan] == [
        ("delete", "schedule", None),
        ("purge", "backups", None),
    ]
    assert checked.plan[0]["before"]["calendar"] == "daily"
    assert checked.plan[1]["before"] == f"{lab.root}/acme/web1/nightly"
    assert (lab.units / f"{BASE}.timer").exists()
    result = run_backup_schedule(lab.params(state="absent", purge_backups=True))
    assert result.changed and result.facts == {"backup_schedule": {}}
    assert not (lab.units / f"{BASE}.timer").exists()
    assert not (lab.config / f"{BASE}.json").exists()
    assert not kept.exists()
    assert lab.rows() == []
    assert lab.event_kinds() == ["backup_schedule_created", "backup_schedule_removed"]
    assert not run_backup_schedule(lab.params(state="absent")).changed


def test_a_schedule_the_ledger_remembers_is_removed_even_without_its_files(lab):
    run_backup_schedule(lab.params())
    for path in (lab.units / f"{BASE}.timer", lab.config / f"{BASE}.json"):
        path.unlink()
    result = run_backup_schedule(lab.params(state="absent"))
    assert [c["action"] for c in result.plan] == ["delete"]
    assert lab.rows() == []


def test_an_environment_schedules_the_vms_it_declares_and_prunes_when_asked(lab):
    declared = {
        **environment(str(lab.image)),
        **lab.where(),
        "backup_schedules": [
            {"vm": "web1", "name": "nightly", "calendar": "daily", "retention": {"keep_last": 3}}
        ],
    }
    made = facade.run_environment(declared)
    # The first run through the host command also installs the host's guard table.
    assert [(c["kind"], c["action"]) for c in made.plan] == [
        ("backup_schedule", "create"),
        ("firewall", "create"),
    ]
    assert not facade.run_environment(declared).changed
    twice = {**declared, "backup_schedules": declared["backup_schedules"] * 2}
    with pytest.raises(SpecError, match="declares the same schedule of a VM twice"):
        facade.run_environment(twice, check_mode=True)
    undeclared = {**declared, "backup_schedules": []}
    kept = facade.run_environment(undeclared, check_mode=True)
    assert kept.warnings == [
        "tenant acme has backup schedules no declaration mentions: web1/nightly (set prune: "
        "true to remove them)"
    ]
    pruned = facade.run_environment({**undeclared, "prune": True})
    assert [(c["kind"], c["action"]) for c in pruned.plan] == [("backup_schedule", "delete")]
    assert lab.rows() == []


def test_a_vm_declared_in_the_same_run_can_be_scheduled(tmp_path, acme):
    lab = Lab(tmp_path, acme, vm=False)
    declared = {
        **environment(str(lab.image)),
        **lab.where(),
        "backup_schedules": [
            {"vm": "web1", "name": "nightly", "calendar": "daily", "retention": {"keep_last": 3},
             "disks": ["data1"]},
        ],
    }  # fmt: skip
    result = facade.run_environment(declared, check_mode=True)
    # The host's guard table follows every change of the tenant's (it is not installed yet).
    assert [(c["kind"], c["action"]) for c in result.plan][-2:] == [
        ("backup_schedule", "create"),
        ("firewall", "create"),
    ]
    declared["backup_schedules"][0]["disks"] = ["data2"]
    with pytest.raises(SpecError) as caught:
        facade.run_environment(declared, check_mode=True)
    assert caught.value.field == "backup_schedules[0].disks[0]"


def test_every_tenants_schedules_are_read_in_one_pass(lab):
    run_backup_schedule(lab.params())
    read = read_host_schedules(parse_backup_host(lab.where()))
    assert sorted(read["files"]) == [
        f"{lab.config}/{BASE}.json",
        f"{lab.units}/{BASE}.service",
        f"{lab.units}/{BASE}.timer",
    ]
    assert read["enabled"] == [f"{BASE}.timer"]


def test_host_paths_are_plain_absolute_paths():
    assert check_host_path("/srv/backups/", "backup_root") == "/srv/backups"
    assert check_host_path("/", "backup_root") == "/"
    for bad in ("relative", "/srv/a b", "/srv/%i", "/srv/../etc", None):
        with pytest.raises(SpecError):
            check_host_path(bad, "backup_root")


@given(st.text(alphabet="/ab.-_ %$\\\n\0", max_size=20))
def test_an_accepted_host_path_is_absolute_plain_and_without_parent_steps(value):
    try:
        path = check_host_path(value, "unit_dir")
    except SpecError as error:
        assert error.field == "unit_dir"
        return
    assert path.startswith("/")
    assert set(path) <= set("/ab.-_")
    assert ".." not in path.split("/")
    assert path == "/" or not path.endswith("/")


def test_a_host_path_ending_in_a_newline_is_refused():
    with pytest.raises(SpecError) as caught:
        check_host_path("/usr/local/bin/vce-backup\n", "runner")
    assert caught.value.field == "runner"


@pytest.mark.usefixtures("umask")
def test_the_runner_config_holding_the_ledger_url_is_root_only(lab):
    run_backup_schedule(lab.params())
    assert (
        json.loads((lab.config / f"{BASE}.json").read_text())["ledger_url"]
        == lab.params()["ledger_url"]
    )
    assert (mode_of(lab.config), mode_of(lab.config / f"{BASE}.json")) == (0o700, 0o600)
    assert mode_of(lab.units / f"{BASE}.service") == 0o644


def test_a_removed_timer_is_named_in_the_plan_and_the_drift_report_then_restored(lab):
    run_backup_schedule(lab.params())
    timer = lab.units / f"{BASE}.timer"
    timer.unlink()
    (lab.units / "timers.target.wants" / f"{BASE}.timer").unlink()
    service = lab.units / f"{BASE}.service"
    service.write_text(service.read_text() + "# edited by hand\n")
    [change] = run_backup_schedule(lab.params(), check_mode=True).plan
    assert (change["action"], change["field"]) == ("update", "files")
    assert change["before"] == {
        "missing": [str(timer)], "altered": [str(service)], "timer_enabled": False,
    }  # fmt: skip
    assert change["after"] == {"missing": [], "altered": [], "timer_enabled": True}
    declared = {
        "vms": environment(str(lab.image))["vms"],
        "disks": environment(str(lab.image))["disks"],
        "backup_schedules": [
            {"vm": "web1", "name": "nightly", "calendar": "daily", "retention": {"keep_daily": 7}}
        ],
    }
    shared = {k: v for k, v in lab.where().items() if k not in ("uri", "ledger_url")}
    shared["default_pool"] = "default-pool"
    check = DriftCheck(
        DeclaredHost.from_options("kvm1", URI, lab.ledger_url, {"acme": declared}, shared)
    )
    case = next(c for c in check.cases() if c.kind == "backup_schedule")
    assert (case.name, case.status) == ("web1/nightly", "drifted")
    assert str(timer) in case.describe() and str(timer) in json_report([case])
    assert "backup_schedule web1/nightly differs: files" in junit_report([case])
    assert run_backup_schedule(lab.params()).changed
    assert timer.exists() and "edited by hand" not in service.read_text()
    assert not run_backup_schedule(lab.params()).changed
