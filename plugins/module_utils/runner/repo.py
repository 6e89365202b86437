# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Backups on the KVM host's disk: layout, manifests, retention and pruning.

    <root>/<tenant>/<vm>/.lock                          one run per VM at a time
    <root>/<tenant>/<vm>/<schedule>/<backup id>/        one backup: <target>.qcow2 + manifest.json
    <root>/<tenant>/<vm>/<schedule>/.partial-<id>/      a run in progress (never listed)

A backup counts only once its directory carries its final name, and it gets that name only
after its files passed `qemu-img check` and its manifest was written. An incremental backup's
files have the previous backup's files as qcow2 backing files (relative paths), so a chain
needs nothing but its own directory; pruning a backup another one builds on first folds its
data into that one.

A backup is the tenant's data: every directory the runner makes is 0700 and every file 0600,
whatever the umask it runs under (systemd's default is 022).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.backup_spec import Retention
from ..core.errors import VceError
from ..host.files import make_private_dir, open_private, private_umask
from ..host.shell import HostShell

MANIFEST = "manifest.json"
PARTIAL_PREFIX = ".partial-"
LOCK_FILE = ".lock"
MANIFEST_FORMAT = 1
QEMU_IMG_TIMEOUT = 6 * 3600


def backup_id_of(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def files_size(directory: Path) -> int:
    """Bytes a backup's image files really take on disk (what is allocated, not sparse)."""
    return sum(p.stat().st_blocks * 512 for p in directory.iterdir() if p.name != MANIFEST)


def qemu_img(args: Sequence[str], action: str, obj: str) -> str:
    """qemu-img on this host (the runner and restores run there), with a backup's patience.

    It runs under umask 077: the images it writes are a tenant's data, private from their
    first byte (callers still chmod them, for a file that existed before).
    """
    with private_umask():
        return HostShell().run(["qemu-img", *args], action, obj, timeout=QEMU_IMG_TIMEOUT)


@dataclass
class DiskFile:
    name: str  # the declared disk name ("boot" for the boot disk)
    target: str  # the guest device (vda, vdb, ...)
    file: str  # file name inside the backup directory
    virtual_size: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "target": self.target,
            "file": self.file,
            "virtual_size": self.virtual_size,
        }


@dataclass
class Manifest:
    backup_id: str
    tenant: str
    vm: str
    schedule: str
    kind: str  # full | incremental | copy (a stopped VM's disks, copied)
    taken_at: dt.datetime
    disks: list[DiskFile]
    parent: str | None = None  # the backup this one's files build on
    checkpoint: str | None = None  # the libvirt checkpoint this backup's data reaches
    duration_s: float = 0.0
    size_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "backup_id": self.backup_id,
            "tenant": self.tenant,
            "vm": self.vm,
            "schedule": self.schedule,
            "kind": self.kind,
            "taken_at": self.taken_at.isoformat(),
            "disks": [d.as_dict() for d in self.disks],
            "parent": self.parent,
            "checkpoint": self.checkpoint,
            "duration_s": round(self.duration_s, 3),
            "size_bytes": self.size_bytes,
            **self.extra,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Manifest:
        known = {
            "format", "backup_id", "tenant", "vm", "schedule", "kind", "taken_at", "disks",
            "parent", "checkpoint", "duration_s", "size_bytes",
        }  # fmt: skip
        return cls(
            backup_id=raw["backup_id"],
            tenant=raw["tenant"],
            vm=raw["vm"],
            schedule=raw["schedule"],
            kind=raw["kind"],
            taken_at=dt.datetime.fromisoformat(raw["taken_at"]),
            disks=[DiskFile(**d) for d in raw["disks"]],
            parent=raw.get("parent"),
            checkpoint=raw.get("checkpoint"),
            duration_s=float(raw.get("duration_s", 0)),
            size_bytes=int(raw.get("size_bytes", 0)),
            extra={k: v for k, v in raw.items() if k not in known},
        )


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_TRUNC), "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


class ScheduleRepo:
    """One schedule's backups of one VM."""

    def __init__(self, root: str | Path, tenant: str, vm: str, schedule: str) -> None:
        self.vm_dir = Path(root) / tenant / vm
        self.dir = self.vm_dir / schedule
        self.tenant = tenant
        self.vm = vm
        self.schedule = schedule

    def backups(self) -> list[Manifest]:
        """The good backups, oldest first."""
        found = []
        if not self.dir.is_dir():
            return found
        for entry in self.dir.iterdir():
            if entry.name.startswith("."):
                continue
            manifest = entry / MANIFEST
            try:
                found.append(Manifest.from_dict(json.loads(manifest.read_text())))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not a finished backup: never listed, never restored
        return sorted(found, key=lambda m: (m.taken_at, m.backup_id))

    def path(self, backup_id: str) -> Path:
        return self.dir / backup_id

    def partial(self, backup_id: str) -> Path:
        return self.dir / f"{PARTIAL_PREFIX}{backup_id}"

    def clear_partials(self) -> list[str]:
        """Remove what killed or failed runs left; returns their names."""
        removed = []
        if self.dir.is_dir():
            for entry in self.dir.iterdir():
                if entry.name.startswith(PARTIAL_PREFIX) or (
                    entry.is_dir() and not (entry / MANIFEST).exists()
                ):
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(entry.name)
        return removed

    def new_id(self, moment: dt.datetime) -> str:
        base = backup_id_of(moment)
        candidate, n = base, 1
        while self.path(candidate).exists() or self.partial(candidate).exists():
            n += 1
            candidate = f"{base}-{n}"
        return candidate

    @contextlib.contextmanager
    def vm_lock(self, timeout: float) -> Iterator[None]:
        """Serialise runs for the VM (every schedule): the disks' jobs and checkpoints are
        the VM's, not the schedule's."""
        make_private_dir(self.vm_dir)
        lock = open_private(self.vm_dir / LOCK_FILE, os.O_WRONLY | os.O_APPEND)
        with os.fdopen(lock, "a") as handle:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise VceError(
                            f"another backup of VM {self.vm} is still running after "
                            f"{timeout:.0f} s; this run gives up"
                        ) from None
                    time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    # -- retention ----------------------------------------------------------------------

    def prune(self, retention: Retention) -> tuple[list[Manifest], list[Manifest]]:
        """Delete what the schedule's retention does not keep; returns (pruned, rewritten):
        survivors that had the data of a pruned backup folded into them."""
        backups = self.backups()
        keep = survivors(((m.backup_id, m.taken_at) for m in backups), retention)
        by_id = {m.backup_id: m for m in backups}
        pruned: list[Manifest] = []
        rewritten: dict[str, Manifest] = {}
        for manifest in backups:  # oldest first: a chain folds forwards
            if manifest.backup_id in keep:
                continue
            child = next((m for m in by_id.values() if m.parent == manifest.backup_id), None)
            if child is not None:
                self.fold_into(child, manifest)
                rewritten[child.backup_id] = child
            shutil.rmtree(self.path(manifest.backup_id))
            del by_id[manifest.backup_id]
            rewritten.pop(manifest.backup_id, None)
            pruned.append(manifest)
        return pruned, list(rewritten.values())

    def fold_into(self, child: Manifest, parent: Manifest) -> None:
        """Make `child` hold what it read from `parent`, building on `parent`'s parent."""
        for disk in child.disks:
            path = self.path(child.backup_id) / disk.file
            grand = next((d for d in parent.disks if d.target == disk.target), None)
            if parent.parent is not None and grand is not None:
                backing = ["-b", f"../{parent.parent}/{grand.file}", "-F", "qcow2"]
            else:
                backing = ["-b", ""]
            qemu_img(
                ["rebase", "-q", "-f", "qcow2", *backing, str(path)],
                "fold backup into",
                f"{child.backup_id}/{disk.file}",
            )
        child.parent = parent.parent
        if child.parent is None:
            child.kind = "full"
        child.size_bytes = files_size(self.path(child.backup_id))
        write_json_atomically(self.path(child.backup_id) / MANIFEST, child.as_dict())


def bucket_keys(moment: dt.datetime) -> dict[str, Any]:
    moment = moment.astimezone(dt.UTC)
    iso = moment.isocalendar()
    return {
        "keep_hourly": (moment.year, moment.month, moment.day, moment.hour),
        "keep_daily": (moment.year, moment.month, moment.day),
        "keep_weekly": (iso.year, iso.week),
        "keep_monthly": (moment.year, moment.month),
    }


def survivors(backups: Iterable[tuple[str, dt.datetime]], retention: Retention) -> set[str]:
    """Which backups a retention policy keeps: the newest `keep_last`, and for each of
    hourly/daily/weekly/monthly the newest backup of each of the newest N periods (UTC)."""
    newest_first = sorted(backups, key=lambda b: (b[1], b[0]), reverse=True)
    keep = {backup_id for backup_id, _moment in newest_first[: retention.keep_last or 0]}
    for rule in ("keep_hourly", "keep_daily", "keep_weekly", "keep_monthly"):
        wanted = getattr(retention, rule) or 0
        seen: set[Any] = set()
        for backup_id, moment in newest_first:
            if len(seen) >= wanted:
                break
            bucket = bucket_keys(moment)[rule]
            if bucket not in seen:
                seen.add(bucket)
                keep.add(backup_id)
    return keep
