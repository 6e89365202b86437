"""Backups of a booted guest that writes known data to its disk: a full backup, more writes,
an incremental backup; each restored into a new disk holds exactly the data of its moment,
and a restore into the VM (stopped first, confirmed) brings the guest's disk back."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import run_backup, wait_for
from tests.integration.helpers import volume
from tests.integration.test_guest_boot import boot, http_get
from tests.support.ansible_runner import run_module

pytestmark = [pytest.mark.integration, pytest.mark.guest]
SAMPLE_MIB = 64  # the guest's /cgi-bin/disk hashes the disk's first 64 MiB


def guest_md5(address: str, query: str) -> str:
    """Once, not polled: a write repeated would write other random data."""
    reply = http_get(f"http://{address}/cgi-bin/disk?{query}")
    assert reply is not None and reply[0] == 200, reply
    return reply[1].strip()


def image_md5(path: str, tmp_path: Path) -> str:
    raw = tmp_path / "sample.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", path, str(raw)], check=True)
    with raw.open("rb") as handle:
        digest = hashlib.md5(handle.read(SAMPLE_MIB << 20)).hexdigest()
    raw.unlink()
    return digest


def test_backups_restore_the_data_of_their_moment(
    uri, conn, pool, tenant, subnet, base_image, libvirtd, backup_host, tmp_path
):
    address = f"{subnet}.42"
    env = {
        "uri": uri,
        "tenant": tenant,
        "shutdown_timeout": 15,
        "networks": [{"name": "lan", "cidr": f"{subnet}.0/24", "mode": "isolated"}],
        "disks": [{"name": "data", "size_gib": 1}],
        "vms": [
            {
                "name": "guest",
                "memory_mib": 160,
                "boot_disk": {"image": str(base_image), "size_gib": 1},
                "disks": ["data"],
                "nics": [{"network": "lan", "ip": address}],
            }
        ],
    }
    boot(env, libvirtd, tenant, address)
    assert wait_for(lambda: http_get(f"http://{address}/"), 30, 0.5), "httpd does not answer"
    schedule = {
        "uri": uri, "tenant": tenant, "vm": "guest", "name": "daily", "calendar": "daily",
        "disks": ["data"], "retention": {"keep_last": 7}, **backup_host,
    }  # fmt: skip
    assert run_module("backup_schedule", schedule)["changed"]
    config = str(Path(backup_host["config_dir"]) / f"vce-backup-{tenant}_guest_daily.json")

    first_data = guest_md5(address, "vdb,0,8")
    full = run_backup(config, now="2026-11-20T02:30:00+00:00")
    assert (full["status"], full["kind"]) == ("ok", "full"), full
    second_data = guest_md5(address, "vdb,16,8")
    assert second_data != first_data
    incremental = run_backup(config, now="2026-11-21T02:30:00+00:00")
    assert (incremental["status"], incremental["kind"]) == ("ok", "incremental"), incremental
    assert incremental["size_bytes"] < 32 << 20  # about the 8 MiB written, not the disk

    restores = {
        "r1": (full["backup_id"], first_data),
        "r2": (incremental["backup_id"], second_data),
    }
    for name, (backup_id, expected) in restores.items():
        args = {
            "uri": uri, "tenant": tenant, "vm": "guest", "schedule": "daily", "backup": backup_id,
            "disk": "data", "new_disk": name, "backup_root": backup_host["backup_root"],
        }  # fmt: skip
        checked = run_module("backup_restore", args, check=True)
        assert checked["changed"] and volume(conn, pool, f"{tenant}_{name}.qcow2") is None
        restored = run_module("backup_restore", args)
        assert restored["changed"], restored
        path = volume(conn, pool, f"{tenant}_{name}.qcow2")["path"]
        assert image_md5(path, tmp_path) == expected, f"{name} does not hold backup {backup_id}"
        assert run_module("backup_restore", args)["changed"] is False

    in_place = {
        "uri": uri, "tenant": tenant, "vm": "guest", "schedule": "daily",
        "backup": full["backup_id"], "disk": "data", "mode": "in_place", "shutdown_timeout": 15,
        "backup_root": backup_host["backup_root"],
    }  # fmt: skip
    refused = run_module("backup_restore", in_place)
    assert refused["failed"] and refused["field"] == "confirm"
    assert guest_md5(address, "vdb") == second_data  # untouched
    rolled_back = run_module("backup_restore", {**in_place, "confirm": True})
    assert [(c["kind"], c["action"]) for c in rolled_back["plan"]] == [
        ("vm", "stop"), ("disk", "restore"), ("vm", "start"),
    ]  # fmt: skip
    assert wait_for(lambda: http_get(f"http://{address}/"), 90, 0.5), "the guest did not come back"
    assert guest_md5(address, "vdb") == first_data
    assert run_module("backup_restore", {**in_place, "confirm": True})["changed"] is False

    # The restored disk has no bitmaps: the schedule starts a new chain with a full backup.
    after = run_backup(config, now="2026-11-22T02:30:00+00:00")
    assert (after["status"], after["kind"]) == ("ok", "full"), after
