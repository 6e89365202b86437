"""vce.kvm.image and the images tenants' disks start from, against a real libvirtd: the
catalogue is registered from the file (check mode, idempotence); a VM boots from a catalogue
image and a disk from one of the tenant's disks; a host file, another tenant's volume, a qcow2
whose backing file leaves the catalogue and a path outside the image directories are refused,
naming the field, and nothing is made."""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.helpers import domain, tenant_objects, volume
from tests.support.ansible_runner import run_module
from tests.support.images import make_image
from tests.support.ledger import register

pytestmark = pytest.mark.integration


def test_an_image_is_registered_once_and_listed_by_info(uri, tenant, image_dir, ledger_url):
    path = make_image(image_dir / "registered.qcow2")
    args = {"name": "registered", "zone": "it", "path": str(path), "image_dirs": [str(image_dir)]}
    checked = run_module("image", args, check=True, diff=True)
    assert checked["changed"] is True and checked["image"] == {}, checked
    created = run_module("image", args)
    assert created["changed"] is True, created
    assert created["image"]["virtual_size"] == 16 << 20
    assert run_module("image", args)["changed"] is False
    listed = run_module("info", {"uri": uri, "tenant": tenant})
    assert listed["images"]["it/registered"]["path"] == str(path)
    shadow = run_module("image", {**args, "name": "shadow", "path": "/etc/shadow", "format": "raw"})
    assert shadow["failed"] and shadow["field"] == "path", shadow
    assert "outside the host's image directories" in shadow["msg"]


def test_a_vm_boots_from_the_catalogue_and_a_disk_from_the_tenants_own_disk(
    uri, conn, pool, tenant, blank_image, blank_image_path
):
    vm = {
        "uri": uri,
        "tenant": tenant,
        "name": "web1",
        "memory_mib": 96,
        "boot_disk": {"image": blank_image, "size_gib": 1},
        "shutdown_timeout": 1,
    }
    created = run_module("vm", vm)
    assert created["changed"] is True, created
    assert domain(conn, f"{tenant}_web1").state == "running"
    boot = volume(conn, pool, f"{tenant}_web1.boot.qcow2")
    assert boot["backing"] == str(blank_image_path)
    disks = {"uri": uri, "tenant": tenant, "size_gib": 1}
    assert not run_module("disk", {**disks, "name": "golden", "backing_image": blank_image})[
        "failed"
    ]
    copy = run_module("disk", {**disks, "name": "copy", "backing_image": "golden"})
    assert copy["changed"] is True, copy
    golden = volume(conn, pool, f"{tenant}_golden.qcow2")
    assert volume(conn, pool, f"{tenant}_copy.qcow2")["backing"] == golden["path"]


def test_what_is_not_the_tenants_is_refused_naming_the_field_and_nothing_is_made(
    uri, conn, pool, tenant, ledger_url, image_dir, tmp_path, blank_image
):
    other = f"{tenant}o"
    register(ledger_url, other)
    try:
        made = run_module("disk", {"uri": uri, "tenant": other, "name": "secret", "size_gib": 1})
        assert made["changed"], made
        secret = volume(conn, pool, f"{other}_secret.qcow2")["path"]
        leak = make_image(image_dir / f"{tenant}-leak.qcow2", backing="/etc/shadow")
        outside = make_image(tmp_path / "outside.qcow2")
        before = tenant_objects(conn, tenant)
        operator = {"uri": uri, "tenant": tenant, "image_dirs": [str(image_dir)]}
        boot_cases = [
            ({"image": "/etc/shadow", "image_format": "raw"}, "outside the host's image"),
            ({"image": secret}, "outside the host's image directories"),
            ({"image": str(leak)}, "reaches /etc/shadow"),
            ({"image": str(outside)}, "outside the host's image directories"),
            ({"image": "secret"}, f"neither a disk of tenant {tenant!r}"),
        ]
        for boot, reason in boot_cases:
            args = {**operator, "name": "web1", "memory_mib": 96}
            result = run_module("vm", {**args, "boot_disk": {**boot, "size_gib": 1}})
            assert result["failed"], (boot, result)
            assert result["field"] == "boot_disk.image", (boot, result["msg"])
            assert reason in result["msg"], (boot, result["msg"])
        for backing, reason in [
            ("/etc/shadow", "outside the host's image directories"),
            ("secret", f"neither a disk of tenant {tenant!r}"),
            (str(leak), "reaches /etc/shadow"),
        ]:
            args = {**operator, "name": "d1", "size_gib": 1, "backing_image": backing}
            result = run_module("disk", args)
            assert result["failed"] and result["field"] == "backing_image", (backing, result)
            assert reason in result["msg"], (backing, result["msg"])
        environment = run_module(
            "environment",
            {
                **operator,
                "disks": [{"name": "d1", "size_gib": 1, "backing_image": "/etc/shadow"}],
            },
        )
        assert environment["failed"] and environment["field"] == "disks[0].backing_image"
        assert tenant_objects(conn, tenant) == before
    finally:
        subprocess.run(
            ["virsh", "-c", uri, "vol-delete", "--pool", pool, f"{other}_secret.qcow2"],
            capture_output=True,
            check=False,
            timeout=30,
        )
