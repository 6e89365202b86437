"""Restores from a schedule's backups: as a new disk, or into the VM with confirm. The host is
libvirt's test driver with its pool in the test's folder; the images are real qcow2 files
made and converted by the real `qemu-img`."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError, VceError
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.backup_restore import (
    run_backup_restore,
)
from ansible_collections.vce.kvm.plugins.module_utils.host import connection as host
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import events
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from ansible_collections.vce.kvm.plugins.module_utils.runner.repo import (
    MANIFEST,
    DiskFile,
    Manifest,
    ScheduleRepo,
    write_json_atomically,
)

from tests.support.files import mode_of
from tests.support.images import make_image
from tests.support.kvm_hosts import host_file

OLD, NEW = "20261123T023000Z", "20261124T023000Z"
MIB = 1024 * 1024


def qemu_img(*args):
    subprocess.run(["qemu-img", *args], check=True, capture_output=True)


def info(path):
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", str(path)], check=True, capture_output=True
    )
    return json.loads(out.stdout)


VM = {
    "name": "web1",
    "vcpus": 1,
    "memory_mib": 128,
    "boot_disk": {"image": "", "size_gib": 1},
}


class Lab:
    def __init__(self, tmp_path, ledger_url, vm=True):
        self.ledger_url = ledger_url
        self.pool = tmp_path / "pool"
        self.pool.mkdir()
        self.root = tmp_path / "backups"
        self.uri = host_file(tmp_path / "kvm.xml", "acme", [], pool_path=str(self.pool))
        self.disk = self.pool / "acme_web1.boot.qcow2"
        if vm:
            image = tmp_path / "base.qcow2"
            make_image(image)
            declared = {**VM, "boot_disk": {"image": str(image), "size_gib": 1}}
            facade.run_environment(
                {
                    "uri": self.uri,
                    "tenant": "acme",
                    "default_pool": "default-pool",
                    "vms": [declared],
                }
            )
            # The VM's disk as a real image (the test driver keeps no files).
            qemu_img("create", "-q", "-f", "qcow2", str(self.disk), "1M")
            self.disk.chmod(0o600)
        self.repo = ScheduleRepo(self.root, "acme", "web1", "nightly")
        for backup_id, size in ((OLD, MIB), (NEW, 2 * MIB)):
            self.backup(backup_id, size)

    def backup(self, backup_id, size, disk="boot"):
        directory = self.repo.path(backup_id)
        directory.mkdir(parents=True)
        qemu_img("create", "-q", "-f", "qcow2", str(directory / "vda.qcow2"), str(size))
        taken = dt.datetime.strptime(backup_id, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        manifest = Manifest(
            backup_id, "acme", "web1", "nightly", "copy", taken,
            [DiskFile(disk, "vda", "vda.qcow2", size)],
        )  # fmt: skip
        write_json_atomically(directory / MANIFEST, manifest.as_dict())

    def params(self, **extra):
        return {
            "uri": self.uri,
            "tenant": "acme",
            "ledger_url": self.ledger_url,
            "backup_root": str(self.root),
            "vm": "web1",
            "schedule": "nightly",
            **extra,
        }

    def restores(self):
        with Ledger.open(self.ledger_url).store.read() as connection:
            query = sa.select(events.c.detail).where(events.c.kind == "backup_restored")
            return [json.loads(r.detail) for r in connection.execute(query)]

    def show_volume(self, name):
        """What a real pool refresh finds; the test driver does not look at the directory."""
        pool = host.connect(self.uri).storagePoolLookupByName("default-pool")
        pool.createXML(
            f"<volume><name>{name}</name><capacity>{2 * MIB}</capacity>"
            "<target><format type='qcow2'/></target></volume>",
            0,
        )


@pytest.fixture
def lab(tmp_path, acme):
    return Lab(tmp_path, acme)


def test_check_mode_plans_a_new_disk_from_the_latest_backup(lab):
    result = run_backup_restore(lab.params(new_disk="restored"), check_mode=True)
    assert [(c["kind"], c["name"], c["action"], c["class"]) for c in result.plan] == [
        ("disk", "restored", "restore", "live")
    ]
    assert result.plan[0]["after"] == {
        "schedule": "nightly",
        "backup": NEW,
        "taken_at": "2026-11-24T02:30:00+00:00",
        "disk": "boot",
        "pool": "default-pool",
    }
    assert result.facts["backup"]["path"] == str(lab.repo.path(NEW))
    assert not (lab.pool / "acme_restored.qcow2").exists()
    assert lab.restores() == []


def test_a_named_backup_becomes_a_new_disk_once(lab):
    params = lab.params(new_disk="restored", backup=OLD)
    result = run_backup_restore(params)
    target = lab.pool / "acme_restored.qcow2"
    assert result.changed
    assert (info(target)["format"], info(target)["virtual-size"]) == ("qcow2", MIB)
    [restored] = lab.restores()
    assert (restored["backup"], restored["mode"], restored["target"]) == (
        OLD,
        "new_disk",
        str(target),
    )
    lab.show_volume("acme_restored.qcow2")
    assert not run_backup_restore(params).changed
    # Another restore (the latest backup) into the same name is refused.
    with pytest.raises(SpecError, match="already has a disk 'restored'") as caught:
        run_backup_restore(lab.params(new_disk="restored"), check_mode=True)
    assert caught.value.field == "new_disk"


def test_restoring_into_the_vm_needs_confirm_stops_and_starts_it(lab):
    with pytest.raises(SpecError, match="replaces all data on its disk boot") as caught:
        run_backup_restore(lab.params(mode="in_place"), check_mode=True)
    assert caught.value.field == "confirm"
    checked = run_backup_restore(lab.params(mode="in_place", confirm=True), check_mode=True)
    assert [(c["kind"], c["action"], c["class"]) for c in checked.plan] == [
        ("vm", "stop", "restart"),
        ("disk", "restore", "replace"),
        ("vm", "start", "live"),
    ]
    assert info(lab.disk)["virtual-size"] == MIB
    result = run_backup_restore(lab.params(mode="in_place", confirm=True))
    assert result.changed
    assert info(lab.disk)["virtual-size"] == 2 * MIB
    assert oct(lab.disk.stat().st_mode & 0o777) == "0o600"
    assert [r["mode"] for r in lab.restores()] == ["in_place"]
    assert result.facts["vm"]["state"] == "running"
    assert not run_backup_restore(lab.params(mode="in_place", confirm=True)).changed
    again = run_backup_restore(lab.params(mode="in_place", confirm=True, request="ticket-7"))
    assert [c["action"] for c in again.plan] == ["stop", "restore", "start"]


def test_a_vm_left_stopped_is_not_started(lab):
    result = run_backup_restore(lab.params(mode="in_place", confirm=True, start=False))
    assert [c["action"] for c in result.plan] == ["stop", "restore"]
    assert result.facts["vm"]["state"] == "shutoff"
    stopped = run_backup_restore(lab.params(mode="in_place", confirm=True, request="again"))
    assert [c["action"] for c in stopped.plan] == ["restore"]


@pytest.mark.parametrize(
    ("extra", "field", "reason"),
    [
        ({"backup": "20200101T000000Z"}, "backup", f"no backup '20200101T000000Z' of schedule nightly (latest: {OLD}, {NEW})"),
        ({"schedule": "weekly"}, "schedule", "schedule weekly of VM web1 has no backups"),
        ({"disk": "data1"}, "disk", f"backup {NEW} holds no disk 'data1' (it holds boot)"),
        ({"mode": "sideways"}, "mode", "must be one of"),
        ({"target": "/srv/elsewhere"}, "target", "outside the allowed backup root"),
        ({"pool": "nope"}, "pool", "no directory storage pool 'nope' on this host"),
        ({"new_disk": None}, "new_disk", ""),
    ],
)  # fmt: skip
def test_bad_restores_are_refused_with_the_field(tmp_path, acme, extra, field, reason):
    params = Lab(tmp_path, acme, vm=False).params(**{"new_disk": "restored", **extra})
    with pytest.raises(SpecError) as caught:
        run_backup_restore(params, check_mode=True)
    assert caught.value.field == field
    assert reason in caught.value.reason


def test_a_restore_into_a_vm_it_cannot_find_is_refused(lab):
    shutil.copytree(lab.repo.dir, ScheduleRepo(lab.root, "acme", "db1", "nightly").dir)
    with pytest.raises(SpecError, match="tenant acme has no VM 'db1' on this host") as caught:
        run_backup_restore(lab.params(vm="db1", mode="in_place", confirm=True), check_mode=True)
    assert caught.value.field == "vm"
    with pytest.raises(SpecError, match="VM web1 has no disk 'data1'") as caught:
        lab.backup("20261125T023000Z", MIB, disk="data1")
        run_backup_restore(lab.params(disk="data1", mode="in_place", confirm=True))
    assert caught.value.field == "disk"


@pytest.mark.usefixtures("umask")
def test_a_restored_image_is_private_whatever_the_umask_and_the_old_mode(lab):
    run_backup_restore(lab.params(new_disk="restored"))
    assert mode_of(lab.pool / "acme_restored.qcow2") == 0o600
    lab.disk.chmod(0o644)  # a disk made wider by hand: the restore does not keep that
    run_backup_restore(lab.params(mode="in_place", confirm=True))
    assert mode_of(lab.disk) == 0o600


def test_a_restore_reads_and_writes_the_hosts_files_through_the_host_command(lab, tmp_path):
    # A stand-in `ssh` (its remote side runs the one line it gets) that logs each line: the
    # backups' manifests are read and the image written on the host, not where the run runs.
    log = tmp_path / "ssh.log"
    ssh = tmp_path / "ssh"
    ssh.write_text(f'#!/bin/sh\nshift\nprintf "%s\\0" "$*" >> {log}\nexec sh -c "$*"\n')
    ssh.chmod(0o755)
    params = lab.params(new_disk="restored", backup=OLD, host_command=[str(ssh), "root@kvm1"])
    result = run_backup_restore(params)
    assert result.changed and (lab.pool / "acme_restored.qcow2").exists()
    assert info(lab.pool / "acme_restored.qcow2")["virtual-size"] == MIB
    lines = log.read_text().split("\0")[:-1]
    assert [line.split()[:2] for line in lines] == [["python3", "-c"]] * 2
    assert str(lab.repo.dir) in lines[0]
    assert str(lab.repo.path(OLD) / "vda.qcow2") in lines[1]
    assert str(lab.pool / "acme_restored.qcow2") in lines[1]
    missing = lab.params(new_disk="again", backup=OLD, host_command=[str(tmp_path / "none")])
    with pytest.raises(VceError, match="Failed to read the backups of schedule nightly"):
        run_backup_restore(missing)
