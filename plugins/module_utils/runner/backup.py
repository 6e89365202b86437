# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host-side backup runner: what a schedule's systemd service runs (`vce-backup run`, the
command line is cli/backup.py).

A running VM is backed up live with libvirt's backup API in push mode: full the first time,
then incremental from the schedule's last checkpoint; an incremental's files are rebased onto
the previous backup's so the chain never points at the live disk. A stopped VM's disks are
copied. Every file passes `qemu-img check` before the backup gets its final name; then the
run is recorded in the ledger (size, duration, result) and the schedule's retention applied.

A failed or killed run leaves nothing counted as good: its partial directory, its libvirt job
and its checkpoint are removed (by the next run, when this one was killed).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.backup_spec import Retention, parse_retention
from ..core.errors import ApplyError, VceError, libvirt_action, libvirt_reason
from ..core.quota import show
from ..host.connection import connect
from ..host.files import make_private_dir, seal
from ..host.xml import DiskDevice, read_domain
from .repo import (
    MANIFEST,
    DiskFile,
    Manifest,
    ScheduleRepo,
    backup_id_of,
    files_size,
    qemu_img,
    write_json_atomically,
)

try:
    import libvirt
except ImportError:  # reported by host.connect
    libvirt = None

CONFIG_FORMAT = 1
JOB_POLL_S = 0.05
ABORT_WAIT_S = 60.0
CHECKPOINT_NAME = re.compile(  # matched whole, with fullmatch, ASCII digits only
    r"vce-(?P<schedule>.+)-(?P<id>[0-9]{8}T[0-9]{6}Z(?:-[0-9]+)?)"
)


@dataclass(frozen=True)
class RunnerConfig:
    """What the backup_schedule module writes for a schedule, as the runner reads it."""

    tenant: str
    vm: str
    domain: str
    schedule: str
    uri: str
    root: str
    disks: tuple[str, ...]
    retention: Retention
    ledger_url: str | None = None
    timeout_s: int = 6 * 3600
    # The runner runs on the host: the daemon's URI there, when `uri` (the host record's,
    # which names the host in the ledger) is how a controller reaches it over SSH.
    connect_uri: str | None = None

    def as_dict(self) -> dict[str, Any]:
        connect_uri = {"connect_uri": self.connect_uri} if self.connect_uri else {}
        return {
            "format": CONFIG_FORMAT,
            "tenant": self.tenant,
            "vm": self.vm,
            "domain": self.domain,
            "schedule": self.schedule,
            "uri": self.uri,
            "root": self.root,
            "disks": list(self.disks),
            "retention": self.retention.as_dict(),
            "ledger_url": self.ledger_url,
            "timeout_s": self.timeout_s,
            **connect_uri,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RunnerConfig:
        return cls(
            tenant=raw["tenant"],
            vm=raw["vm"],
            domain=raw["domain"],
            schedule=raw["schedule"],
            uri=raw["uri"],
            root=raw["root"],
            disks=tuple(raw.get("disks") or ()),
            # Validated as the module validates it: an empty policy would prune every backup.
            retention=parse_retention(raw["retention"], "retention"),
            ledger_url=raw.get("ledger_url"),
            timeout_s=int(raw.get("timeout_s") or 6 * 3600),
            connect_uri=raw.get("connect_uri") or None,
        )

    @classmethod
    def load(cls, path: str | Path) -> RunnerConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except KeyError as error:
            raise VceError(
                f"Failed to read backup schedule config {path}: missing key {error}"
            ) from None
        except (OSError, ValueError, TypeError, VceError) as error:
            raise VceError(f"Failed to read backup schedule config {path}: {error}") from None


@dataclass
class RunResult:
    status: str  # ok | failed
    backup_id: str
    kind: str
    started_at: dt.datetime
    duration_s: float = 0.0
    size_bytes: int = 0
    error: str | None = None
    cleaned: list[str] = field(default_factory=list)  # what a killed earlier run had left
    pruned: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    bytes_processed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "backup_id": self.backup_id,
            "kind": self.kind,
            "started_at": self.started_at.isoformat(),
            "duration_s": round(self.duration_s, 3),
            "size_bytes": self.size_bytes,
            "bytes_processed": self.bytes_processed,
            "error": self.error,
            "cleaned": self.cleaned,
            "pruned": self.pruned,
            "warnings": self.warnings,
        }


def checkpoint_name(schedule: str, backup_id: str) -> str:
    return f"vce-{schedule}-{backup_id}"


def record_key(uri: str, tenant: str, vm: str, schedule: str, backup_id: str) -> str:
    return f"backup:{uri}:{tenant}:{vm}:{schedule}:{backup_id}"


def checkpoint_names(domain: Any, obj: str) -> list[str]:
    with libvirt_action("list the checkpoints of", obj):
        return [cp.getName() for cp in domain.listAllCheckpoints()]


def delete_checkpoint(domain: Any, name: str, obj: str) -> None:
    with libvirt_action("find", f"checkpoint {name} of {obj}"):
        checkpoint = domain.checkpointLookupByName(name)
    try:
        checkpoint.delete(0)
    except libvirt.libvirtError:
        # An inactive domain whose image lost the bitmap: forget the checkpoint anyway.
        with libvirt_action("delete", f"checkpoint {name} of {obj}"):
            checkpoint.delete(libvirt.VIR_DOMAIN_CHECKPOINT_DELETE_METADATA_ONLY)


def drop_schedule_checkpoints(domain: Any, schedule: str, keep: str | None, obj: str) -> list[str]:
    """Delete `schedule`'s checkpoints except `keep`; returns what was dropped."""
    dropped = []
    for name in checkpoint_names(domain, obj):
        match = CHECKPOINT_NAME.fullmatch(name)
        if match and match.group("schedule") == schedule and name != keep:
            delete_checkpoint(domain, name, obj)
            dropped.append(f"checkpoint {name}")
    return dropped


class BackupRun:
    """One run of one schedule."""

    def __init__(
        self, config: RunnerConfig, clock: Callable[[], dt.datetime] | None = None
    ) -> None:
        self.config = config
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.repo = ScheduleRepo(config.root, config.tenant, config.vm, config.schedule)
        self.obj = f"VM {config.vm} of tenant {config.tenant}"
        self.t0 = time.monotonic()
        self._ledger: Any = None

    # -- the run --------------------------------------------------------------------------

    def run(self) -> RunResult:
        started = self.clock()
        self.t0 = time.monotonic()
        result = RunResult("failed", "", "full", started)
        try:
            with self.repo.vm_lock(self.config.timeout_s):
                self.backup(result, started)
                result.status = "ok"
        except VceError as error:
            result.error = str(error)
        result.duration_s = time.monotonic() - self.t0
        self.record(result)
        if result.status == "ok":
            self.apply_retention(result)
        return result

    def backup(self, result: RunResult, started: dt.datetime) -> None:
        result.cleaned.extend(self.repo.clear_partials())
        self.check_storage_quota()
        conn = connect(self.config.connect_uri or self.config.uri)
        try:
            with libvirt_action("find", f"domain {self.config.domain}"):
                domain = conn.lookupByName(self.config.domain)
            result.cleaned.extend(self.abort_stale_job(domain))
            previous = self.repo.backups()
            last = previous[-1] if previous else None
            result.cleaned.extend(self.drop_checkpoints(domain, keep=last and last.checkpoint))
            with libvirt_action("read", f"domain {self.config.domain}"):
                devices = [
                    d for d in read_domain(domain.XMLDesc(0), "", False).disks
                    if d.device == "disk"
                ]  # fmt: skip
            disks = self.selected_disks(devices)
            result.backup_id = self.repo.new_id(started)
            partial = self.repo.partial(result.backup_id)
            make_private_dir(partial, exist_ok=False)
            try:
                manifest = self.take(domain, devices, disks, last, result, partial)
                self.finish(manifest, partial)
            except BaseException:
                self.discard(domain, result, partial)
                raise
            if manifest.checkpoint:
                self.drop_checkpoints(domain, keep=manifest.checkpoint)
            result.kind = manifest.kind
            result.size_bytes = manifest.size_bytes
        finally:
            conn.close()

    def selected_disks(self, devices: list[DiskDevice]) -> list[DiskDevice]:
        by_name = {(d.serial or d.target): d for d in devices}
        if not self.config.disks:
            return sorted(by_name.values(), key=lambda d: d.target)
        missing = [name for name in self.config.disks if name not in by_name]
        if missing:
            raise VceError(
                f"{self.obj} has no disk {', '.join(missing)} (it has {', '.join(sorted(by_name))})"
            )
        return sorted((by_name[n] for n in self.config.disks), key=lambda d: d.target)

    def take(
        self,
        domain: Any,
        devices: list[DiskDevice],
        disks: list[DiskDevice],
        last: Manifest | None,
        result: RunResult,
        partial: Path,
    ) -> Manifest:
        files = [DiskFile(d.serial or d.target, d.target, f"{d.target}.qcow2", 0) for d in disks]
        manifest = Manifest(
            result.backup_id, self.config.tenant, self.config.vm, self.config.schedule,
            "full", result.started_at, files,
        )  # fmt: skip
        with libvirt_action("read the state of", f"domain {self.config.domain}"):
            active = bool(domain.isActive())
        if not active:
            self.copy(disks, files, partial)
            manifest.kind = "copy"
            # The copy holds at least what the last checkpoint saw: the next live run can
            # still be incremental from that checkpoint, on top of this copy.
            manifest.checkpoint = last.checkpoint if last else None
            return manifest
        base = last if self.can_increment(domain, last, files) else None
        checkpoint = checkpoint_name(self.config.schedule, result.backup_id)
        try:
            self.begin_backup(domain, devices, files, partial, base, checkpoint)
        except ApplyError:
            if base is None:
                raise
            # Refused at its start: the checkpoint's bitmaps are gone (a disk restored or
            # replaced), so start over. A job that fails later (disk full, timeout) is not
            # this: the run fails and the last good checkpoint stays for the next one.
            result.warnings.append(
                f"incremental backup from {base.backup_id} failed; took a full backup instead"
            )
            self.drop_checkpoints(domain, keep=None)
            for leftover in partial.iterdir():
                leftover.unlink()
            base = None
            self.begin_backup(domain, devices, files, partial, None, checkpoint)
        result.bytes_processed = self.wait_for_job(domain)
        manifest.checkpoint = checkpoint
        if base is not None:
            manifest.kind = "incremental"
            manifest.parent = base.backup_id
            for disk in files:
                previous = next(d for d in base.disks if d.target == disk.target)
                qemu_img(
                    ["rebase", "-u", "-f", "qcow2", "-b", f"../{base.backup_id}/{previous.file}",
                     "-F", "qcow2", str(partial / disk.file)],
                    "rebase", f"backup file {disk.file}",
                )  # fmt: skip
        return manifest

    def can_increment(self, domain: Any, last: Manifest | None, files: list[DiskFile]) -> bool:
        if last is None or last.checkpoint is None:
            return False
        if sorted((d.name, d.target) for d in last.disks) != sorted(
            (d.name, d.target) for d in files
        ):
            return False
        return last.checkpoint in self.checkpoints(domain)

    def begin_backup(
        self,
        domain: Any,
        devices: list[DiskDevice],
        files: list[DiskFile],
        partial: Path,
        base: Manifest | None,
        checkpoint: str,
    ) -> None:
        """Start the push-mode job (incremental from `base`'s checkpoint, else full)."""
        backup = ET.Element("domainbackup", mode="push")
        if base is not None:
            ET.SubElement(backup, "incremental").text = base.checkpoint
        backup_disks = ET.SubElement(backup, "disks")
        cp = ET.Element("domaincheckpoint")
        ET.SubElement(cp, "name").text = checkpoint
        cp_disks = ET.SubElement(cp, "disks")
        wanted = {d.target for d in files}
        for device in devices:
            if device.target not in wanted:
                ET.SubElement(backup_disks, "disk", name=device.target, backup="no")
                ET.SubElement(cp_disks, "disk", name=device.target, checkpoint="no")
                continue
            disk = ET.SubElement(backup_disks, "disk", name=device.target, backup="yes")
            disk.set("type", "file")
            ET.SubElement(disk, "driver", type="qcow2")
            ET.SubElement(disk, "target", file=str(partial / f"{device.target}.qcow2"))
            ET.SubElement(cp_disks, "disk", name=device.target, checkpoint="bitmap")
        with libvirt_action("start the backup of", self.obj):
            domain.backupBegin(ET.tostring(backup, "unicode"), ET.tostring(cp, "unicode"), 0)

    def wait_for_job(self, domain: Any) -> int | None:
        deadline = time.monotonic() + self.config.timeout_s
        while self.job_active(domain):
            if time.monotonic() >= deadline:
                self.abort_job(domain)
                raise ApplyError(
                    f"Failed to back up {self.obj}: not done after {self.config.timeout_s} s"
                )
            time.sleep(JOB_POLL_S)
        with libvirt_action("read the backup job of", self.obj):
            stats = domain.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        if not stats.get("success", stats.get("type") == libvirt.VIR_DOMAIN_JOB_COMPLETED):
            reason = stats.get("errmsg") or "the backup job failed"
            raise ApplyError(f"Failed to back up {self.obj}: {reason}")
        return stats.get("disk_processed")

    @staticmethod
    def job_active(domain: Any) -> bool:
        try:
            return domain.jobInfo()[0] != libvirt.VIR_DOMAIN_JOB_NONE
        except libvirt.libvirtError as error:
            # A backup job being set up has no data yet ("backup job data missing").
            if error.get_error_code() == libvirt.VIR_ERR_INTERNAL_ERROR:
                return True
            raise ApplyError(
                f"Failed to read the jobs of {domain.name()}: {libvirt_reason(error)}"
            ) from error

    def abort_job(self, domain: Any) -> None:
        try:
            domain.abortJob()
        except libvirt.libvirtError as error:
            # The job may have ended on its own between the check and the abort.
            if self.job_active(domain):
                raise ApplyError(
                    f"Failed to abort the backup of {self.obj}: {libvirt_reason(error)}"
                ) from error
        deadline = time.monotonic() + ABORT_WAIT_S
        while self.job_active(domain) and time.monotonic() < deadline:
            time.sleep(JOB_POLL_S)

    def abort_stale_job(self, domain: Any) -> list[str]:
        """A job still running while we hold the VM's lock was left by a killed run."""
        if not domain.isActive() or not self.job_active(domain):
            return []
        self.abort_job(domain)
        return ["backup job of a killed run"]

    def copy(self, disks: list[DiskDevice], files: list[DiskFile], partial: Path) -> None:
        for device, disk in zip(disks, files, strict=True):
            qemu_img(
                ["convert", "-q", "-f", device.fmt, "-O", "qcow2", device.path,
                 str(partial / disk.file)],
                "copy", f"disk {disk.name} of {self.obj}",
            )  # fmt: skip

    def finish(self, manifest: Manifest, partial: Path) -> None:
        """Check every file, write the manifest, then give the backup its final name."""
        for disk in manifest.disks:
            path = partial / disk.file
            qemu_img(["check", "-q", "-f", "qcow2", str(path)], "check", f"backup file {path}")
            info = json.loads(
                qemu_img(["info", "--output=json", "-U", str(path)], "read", str(path))
            )
            disk.virtual_size = int(info["virtual-size"])
        manifest.size_bytes = files_size(partial)
        manifest.duration_s = time.monotonic() - self.t0
        seal(partial)
        write_json_atomically(partial / MANIFEST, manifest.as_dict())
        final = self.repo.path(manifest.backup_id)
        os.rename(partial, final)
        fd = os.open(self.repo.dir, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def discard(self, domain: Any, result: RunResult, partial: Path) -> None:
        """A run that failed: nothing of it may stay counted or break the next run."""
        try:
            if domain.isActive() and self.job_active(domain):
                self.abort_job(domain)
            own = checkpoint_name(self.config.schedule, result.backup_id)
            if own in self.checkpoints(domain):
                self.delete_checkpoint(domain, own)
        except VceError as error:
            result.warnings.append(str(error))
        shutil.rmtree(partial, ignore_errors=True)

    # -- checkpoints ----------------------------------------------------------------------

    def checkpoints(self, domain: Any) -> list[str]:
        return checkpoint_names(domain, self.obj)

    def drop_checkpoints(self, domain: Any, keep: str | None) -> list[str]:
        """Delete this schedule's checkpoints except `keep` (other schedules' stay)."""
        return drop_schedule_checkpoints(domain, self.config.schedule, keep, self.obj)

    def delete_checkpoint(self, domain: Any, name: str) -> None:
        delete_checkpoint(domain, name, self.obj)

    # -- the ledger -----------------------------------------------------------------------

    def ledger(self) -> Any:
        """The run's ledger, opened once (not at all when no run needs it)."""
        if self._ledger is None:
            from ..ledger.tenants import Ledger

            self._ledger = Ledger.open(self.config.ledger_url, now=self.clock(), actor="vce-backup")
        return self._ledger

    def check_storage_quota(self) -> None:
        try:
            ledger = self.ledger()
            with ledger.store.read() as connection:
                record = ledger.tenant(connection, self.config.tenant)
                if record is None:
                    return
                limit = ledger.limits(connection, record).get("backup_storage_gib")
                used = ledger.backup_storage_mib(connection, self.config.tenant)
        except VceError:
            return  # no ledger reachable: back up anyway, the record says why it is missing
        if limit is not None and used >= limit:
            raise VceError(
                f"backup storage quota of tenant {self.config.tenant} is full: "
                f"{show('backup_storage_gib', used)} used of {show('backup_storage_gib', limit)}"
                "; raise it with vce.kvm.quota (backup_storage_gib) or shorten retention"
            )

    def record(self, result: RunResult) -> None:
        values = {
            "tenant": self.config.tenant,
            "host": self.config.uri,
            "vm": self.config.vm,
            "schedule": self.config.schedule,
            "backup_id": result.backup_id or backup_id_of(result.started_at),
            "kind": result.kind,
            "status": result.status,
            "started_at": result.started_at,
            "finished_at": result.started_at + dt.timedelta(seconds=result.duration_s),
            "duration_ms": round(result.duration_s * 1000),
            "size_bytes": result.size_bytes,
            "error": result.error,
        }
        suffix = "" if result.status == "ok" else ":failed"
        key = self.key(f"{values['backup_id']}{suffix}")
        try:
            ledger = self.ledger()
            with ledger.store.locked(self.config.tenant) as connection:
                ledger.record_backup(connection, key, **values)
        except VceError as error:
            result.warnings.append(f"the ledger has no record of this run: {error}")

    def apply_retention(self, result: RunResult) -> None:
        try:
            pruned, rewritten = self.repo.prune(self.config.retention)
        except (VceError, OSError) as error:
            result.warnings.append(f"retention not applied: {error}")
            return
        result.pruned = [m.backup_id for m in pruned]
        if not pruned:
            return
        try:
            ledger = self.ledger()
            with ledger.store.locked(self.config.tenant) as connection:
                for manifest in pruned:
                    ledger.update_backup(
                        connection, self.key(manifest.backup_id), pruned_at=ledger.now()
                    )
                for manifest in rewritten:
                    ledger.update_backup(
                        connection, self.key(manifest.backup_id), size_bytes=manifest.size_bytes
                    )
        except VceError as error:
            result.warnings.append(f"the ledger does not know what retention pruned: {error}")

    def key(self, backup_id: str) -> str:
        c = self.config
        return record_key(c.uri, c.tenant, c.vm, c.schedule, backup_id)
