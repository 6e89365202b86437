"""libvirt's backup API for a test-driver domain, which has none: `backupBegin` in push mode
does what QEMU would (each disk asked for is written to its target file as qcow2, with real
qemu-img, and the checkpoint is made on the test driver), and the job is then over.

Everything else - the domain's XML, state and checkpoints - is the test driver's own, so the
runner's decisions (full or incremental, rebase, checkpoints kept and dropped, clean-up after
a failure) are checked against real checkpoints and real files."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from typing import Any

import libvirt


class BackupDomain:
    def __init__(self, domain: Any, disks: dict[str, str]) -> None:
        self._domain = domain
        self._disks = disks  # target -> source file
        self.fail_incremental = False  # the checkpoint's bitmaps are gone
        self.job_error: str | None = None  # the job ends with this error
        self.job_running = False  # a job left by a killed run
        self.aborted = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._domain, name)

    def backupBegin(self, backup_xml: str, checkpoint_xml: str | None, flags: int = 0) -> None:
        backup = ET.fromstring(backup_xml)
        incremental = backup.findtext("incremental")
        if incremental is not None:
            known = {cp.getName() for cp in self._domain.listAllCheckpoints()}
            if self.fail_incremental or incremental not in known:
                raise libvirt.libvirtError(f"missing bitmap for checkpoint {incremental}")
        for disk in backup.iter("disk"):
            if disk.get("backup") != "yes":
                continue
            target = disk.find("target").get("file")
            subprocess.run(
                ["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "qcow2",
                 self._disks[disk.get("name")], target],
                check=True, capture_output=True,
            )  # fmt: skip
        if checkpoint_xml:
            self._domain.checkpointCreateXML(checkpoint_xml, 0)

    def jobInfo(self) -> list[int]:
        state = (
            libvirt.VIR_DOMAIN_JOB_UNBOUNDED if self.job_running else libvirt.VIR_DOMAIN_JOB_NONE
        )
        return [state, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]

    def abortJob(self) -> None:
        self.aborted += 1
        self.job_running = False

    def jobStats(self, flags: int = 0) -> dict[str, Any]:
        if self.job_error:
            return {
                "type": libvirt.VIR_DOMAIN_JOB_FAILED,
                "success": False,
                "errmsg": self.job_error,
            }
        return {"type": libvirt.VIR_DOMAIN_JOB_COMPLETED, "success": True, "disk_processed": 4096}


class BackupConnection:
    """The connection the runner opens, handing out the one BackupDomain."""

    def __init__(self, conn: Any, domain: BackupDomain) -> None:
        self._conn = conn
        self._domain = domain

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def lookupByName(self, name: str) -> Any:
        if name != self._domain.name():
            return self._conn.lookupByName(name)
        return self._domain

    def close(self) -> int:
        return 0  # the test's connection keeps the driver's state
