# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Restore a VM's disk from a named backup: as a new disk beside it, or into the VM itself.

Into the VM, the disk's data is replaced: only with `confirm: true`, with the VM stopped first
(and started again if it ran). The restored image is written beside the disk and renamed over
it, so a failure never leaves half a disk. The VM's checkpoints are forgotten (their bitmaps
lived in the replaced image): the next backup of each schedule is a full one.

A restore is an action, so it is recorded in the ledger under a key made of what was restored
from where (and `request`, to restore the same backup again): a re-run changes nothing.

The backups and the disks are files of the KVM host: their manifests are read and the image is
written there, through the host command (`ssh root@kvm1` for a control plane that reaches the
host over SSH; none where the module runs on the host).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from ...core.backup_spec import check_under_root
from ...core.errors import SpecError, libvirt, libvirt_action
from ...core.plan import Change, ChangeClass, Plan
from ...core.quota import mib_of_bytes
from ...core.result import Result
from ...core.validation import check_choice, check_name, check_pool
from ...host.connection import Host, TenantInventory
from ...host.files import FILE_MODE
from ...host.ownership import object_name, volume_name
from ...host.shell import HostShell
from ...host.xml import DiskDevice
from ...ledger.tenants import Ledger, key_of
from ...runner.repo import MANIFEST, QEMU_IMG_TIMEOUT, Manifest, ScheduleRepo
from ..gate import Declaration, Gate, declare_one
from ..run import conclude_one
from .backup_schedule import parse_backup_host
from .disk import find_volume
from .vm import VmPlanner

MODES = ("new_disk", "in_place")

# Run on the host with python3 (as the backup schedules' scripts are): one command per step.
# The manifests of one schedule's finished backups (a directory without one is not listed).
MANIFESTS_SCRIPT = r"""
import json, os, sys
directory, manifest = sys.argv[1:3]
found = []
if os.path.isdir(directory):
    for name in sorted(os.listdir(directory)):
        if name.startswith("."):
            continue
        try:
            with open(os.path.join(directory, name, manifest)) as handle:
                found.append(json.load(handle))
        except (OSError, ValueError):
            continue
print(json.dumps(found))
"""

# A backup's image into a disk: written beside it under umask 077 and renamed over it, so the
# disk is never half-written and never wider than `mode`, even for a moment.
RESTORE_SCRIPT = r"""
import os, subprocess, sys
source, target, fmt, mode = sys.argv[1:5]
staging = os.path.join(os.path.dirname(target), "." + os.path.basename(target) + ".restoring")
os.umask(0o077)
try:
    proc = subprocess.run(["qemu-img", "convert", "-q", "-f", "qcow2", "-O", fmt, source,
                           staging], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(proc.stderr.strip() or "qemu-img convert exited %d" % proc.returncode)
    os.chmod(staging, int(mode, 8))
    os.rename(staging, target)
finally:
    if os.path.lexists(staging):
        os.unlink(staging)
"""


def host_backups(shell: HostShell, repo: ScheduleRepo) -> list[Manifest]:
    """The schedule's good backups on the host, oldest first."""
    raw = shell.json(
        ["python3", "-c", MANIFESTS_SCRIPT, str(repo.dir), MANIFEST],
        "read", f"the backups of schedule {repo.schedule} of VM {repo.vm}",
    )  # fmt: skip
    found = []
    for item in raw if isinstance(raw, list) else []:
        try:
            found.append(Manifest.from_dict(item))
        except (ValueError, KeyError, TypeError):
            continue  # not a finished backup: never listed, never restored
    return sorted(found, key=lambda m: (m.taken_at, m.backup_id))


def find_backup(found: list[Manifest], repo: ScheduleRepo, backup: str) -> Manifest:
    if not found:
        raise SpecError(
            "schedule", f"schedule {repo.schedule} of VM {repo.vm} has no backups in {repo.dir}"
        )
    if backup == "latest":
        return found[-1]
    for manifest in found:
        if manifest.backup_id == backup:
            return manifest
    shown = ", ".join(m.backup_id for m in found[-5:])
    raise SpecError("backup", f"no backup {backup!r} of schedule {repo.schedule} (latest: {shown})")


class RestorePlanner:
    def __init__(self, ledger: Ledger, host: Host, tenant: str, params: Mapping[str, Any]) -> None:
        self.ledger = ledger
        self.host = host
        self.tenant = tenant
        self.vm = check_name(params.get("vm"), "vm")
        self.schedule = check_name(params.get("schedule"), "schedule")
        self.disk = check_name(params.get("disk") or "boot", "disk")
        self.mode = check_choice(params.get("mode") or "new_disk", "mode", MODES)
        where = parse_backup_host(params)
        root = check_under_root(
            params.get("target") or where.backup_root, where.backup_root, "target"
        )
        self.repo = ScheduleRepo(root, tenant, self.vm, self.schedule)
        self.shell = where.shell
        found = host_backups(self.shell, self.repo)
        self.manifest = find_backup(found, self.repo, str(params.get("backup") or "latest"))
        self.file = next((d for d in self.manifest.disks if d.name == self.disk), None)
        if self.file is None:
            names = ", ".join(d.name for d in self.manifest.disks)
            raise SpecError(
                "disk",
                f"backup {self.manifest.backup_id} holds no disk {self.disk!r} (it holds {names})",
            )
        self.source = self.repo.path(self.manifest.backup_id) / self.file.file
        self.request = str(params.get("request") or "")
        self.key = key_of(
            "restore", host.uri, tenant, self.vm, self.schedule, self.manifest.backup_id,
            self.disk, self.mode, params.get("new_disk"), self.request,
        )  # fmt: skip

    def done_before(self) -> bool:
        return self.ledger.has_event(self.key)

    def record(self, target: str) -> None:
        with self.ledger.store.locked(self.tenant) as connection:
            self.ledger.event(
                connection, self.tenant, "backup_restored",
                {
                    "vm": self.vm, "schedule": self.schedule, "backup": self.manifest.backup_id,
                    "disk": self.disk, "mode": self.mode, "target": target, "request": self.request,
                },
                key=self.key,
            )  # fmt: skip

    def summary(self) -> dict[str, Any]:
        return {
            "schedule": self.schedule,
            "backup": self.manifest.backup_id,
            "taken_at": self.manifest.taken_at.isoformat(),
            "disk": self.disk,
        }

    # -- as a new disk --------------------------------------------------------------------

    def source_pool(self, inventory: TenantInventory) -> str:
        """The pool of the disk the backup was taken from, when it is still there."""
        domain = inventory.domains.get(object_name(self.tenant, self.vm))
        paths = (
            {d.path for d in domain.disks if (d.serial or d.target) == self.disk}
            if domain
            else set()
        )
        for volume in inventory.volumes.values():
            if volume.path in paths:
                return volume.pool
        return "default"

    def plan_new_disk(self, name: str, pool: str, inventory: TenantInventory) -> Plan:
        plan = Plan()
        existing = find_volume(inventory, self.tenant, name)
        if existing is not None:
            if self.done_before():
                return plan
            raise SpecError(
                "new_disk", f"tenant {self.tenant} already has a disk {name!r}; choose another name"
            )
        pool_path = inventory.pools.get(pool)
        if pool_path is None:
            raise SpecError("pool", f"no directory storage pool {pool!r} on this host")
        path = Path(pool_path) / volume_name(self.tenant, name, "qcow2")
        plan.add(
            Change(
                "disk",
                name,
                "restore",
                field="data",
                after={**self.summary(), "pool": pool},
                run=partial(self.restore_new, path, pool),
            )
        )
        return plan

    def copy(self, target: Path, fmt: str, what: str) -> None:
        """The backup's image written as `target` on the host: a tenant's data, private
        (FILE_MODE) whatever the umask and whatever mode an old file had."""
        self.shell.run(
            ["python3", "-c", RESTORE_SCRIPT, str(self.source), str(target), fmt,
             format(FILE_MODE, "o")],
            "restore", f"backup {self.manifest.backup_id} into {what}", timeout=QEMU_IMG_TIMEOUT,
        )  # fmt: skip

    def restore_new(self, path: Path, pool: str) -> None:
        self.copy(path, "qcow2", f"disk {path.name}")
        with libvirt_action("refresh", f"storage pool {pool}"):
            self.host.lookup_pool(pool).refresh(0)
        self.record(str(path))

    # -- into the VM ----------------------------------------------------------------------

    def plan_in_place(
        self, confirm: bool, start: bool, timeout: float, inventory: TenantInventory
    ) -> Plan:
        plan = Plan()
        libvirt_name = object_name(self.tenant, self.vm)
        inventory.refuse_intruder("vm", libvirt_name)
        domain = inventory.domains.get(libvirt_name)
        if domain is None:
            raise SpecError("vm", f"tenant {self.tenant} has no VM {self.vm!r} on this host")
        device = next((d for d in domain.disks if (d.serial or d.target) == self.disk), None)
        if device is None:
            raise SpecError("disk", f"VM {self.vm} has no disk {self.disk!r}")
        if self.done_before():
            return plan
        if not confirm:
            raise SpecError(
                "confirm",
                f"restoring backup {self.manifest.backup_id} into VM {self.vm} replaces all data "
                f"on its disk {self.disk}: set confirm: true to do it",
            )
        vms = VmPlanner(self.host, self.tenant, timeout)
        running = domain.state in ("running", "paused")
        if running:
            plan.add(
                Change(
                    "vm",
                    self.vm,
                    "stop",
                    change_class=ChangeClass.RESTART,
                    field="state",
                    before=domain.state,
                    after="shutoff",
                    run=partial(vms.stop, libvirt_name),
                )
            )
        plan.add(
            Change(
                "disk",
                self.disk,
                "restore",
                change_class=ChangeClass.REPLACE,
                field="data",
                before="current",
                after=self.summary(),
                run=partial(self.restore_in_place, libvirt_name, device),
            )
        )
        if running and start:
            plan.add(
                Change(
                    "vm",
                    self.vm,
                    "start",
                    field="state",
                    before="shutoff",
                    after="running",
                    run=partial(vms.start, libvirt_name),
                )
            )
        return plan

    def restore_in_place(self, libvirt_name: str, device: DiskDevice) -> None:
        path = Path(device.path)
        # Never the disk's old mode when that was wider: a restore is the tenant's data.
        self.copy(path, device.fmt, f"disk {self.disk} of VM {self.vm}")
        with libvirt_action("forget the checkpoints of", f"VM {self.vm}"):
            dom = self.host.conn.lookupByName(libvirt_name)
            for checkpoint in dom.listAllCheckpoints():
                checkpoint.delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)
        self.record(str(path))


def run_backup_restore(params: Mapping[str, Any], check_mode: bool = False) -> Result:
    tenant = check_name(params.get("tenant"), "tenant")
    host = Host(params.get("uri") or "qemu:///system")
    ledger = Ledger.open(params.get("ledger_url") or None)
    engine = RestorePlanner(ledger, host, tenant, params)
    if engine.mode == "new_disk":
        name = check_name(params.get("new_disk"), "new_disk")
        mib = mib_of_bytes(engine.file.virtual_size)
        gate = Gate(ledger, host, tenant, declare_one((("disk", name), {"disk_gib": mib})))
        inventory = host.inventory(tenant)
        pool = params.get("pool") or engine.source_pool(inventory)
        plan = engine.plan_new_disk(name, check_pool(pool, "pool"), inventory)
        result = conclude_one(plan, check_mode, gate, inventory, "disks", name)
    else:
        gate = Gate(ledger, host, tenant, Declaration())
        inventory = host.inventory(tenant)
        plan = engine.plan_in_place(
            bool(params.get("confirm")), params.get("start") is not False,
            float(params.get("shutdown_timeout") or 60), inventory,
        )  # fmt: skip
        result = conclude_one(plan, check_mode, gate, inventory, "vms", engine.vm)
    result.facts["backup"] = {
        **engine.summary(),
        "path": str(engine.repo.path(engine.manifest.backup_id)),
    }
    return result
