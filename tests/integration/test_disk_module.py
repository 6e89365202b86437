"""vce.kvm.disk against a real libvirtd: create, grow (live on a running VM), never shrink,
attach and detach, absent."""

from __future__ import annotations

import pytest

from tests.integration.helpers import domain, tenant_objects, volume
from tests.support.ansible_runner import run_module

pytestmark = pytest.mark.integration
GIB = 1024**3


def test_disk_lifecycle_with_live_grow(uri, conn, tenant, blank_image):
    disk = {"uri": uri, "tenant": tenant, "name": "data1", "size_gib": 1}
    vol_name = f"{tenant}_data1.qcow2"

    checked = run_module("disk", disk, check=True, diff=True)
    assert checked["changed"] and checked["diff"]["after"]["disk/data1"]["create"]["size_gib"] == 1
    assert volume(conn, "default", vol_name) is None

    assert run_module("disk", disk)["changed"] is True
    assert volume(conn, "default", vol_name)["capacity"] == GIB
    assert run_module("disk", disk)["changed"] is False

    vm = {
        "uri": uri, "tenant": tenant, "name": "db1", "memory_mib": 64,
        "boot_disk": {"image": blank_image, "size_gib": 1}, "shutdown_timeout": 1,
    }  # fmt: skip
    assert run_module("vm", vm)["changed"] is True

    attach = {**disk, "state": "attached", "attach_to": "db1"}
    checked = run_module("disk", attach, check=True)
    assert [c["action"] for c in checked["plan"]] == ["attach"]
    assert not any(d.serial == "data1" for d in domain(conn, f"{tenant}_db1").disks)
    assert run_module("disk", attach)["changed"] is True
    attached = [d for d in domain(conn, f"{tenant}_db1").disks if d.serial == "data1"]
    assert attached and attached[0].target == "vdb"
    live = conn.lookupByName(f"{tenant}_db1").XMLDesc(0)
    assert "data1" in live  # attached to the running VM too, not only its definition
    assert run_module("disk", attach)["changed"] is False

    grown = run_module("disk", {**attach, "size_gib": 2})
    assert grown["changed"] and grown["plan"][0]["action"] == "resize"
    assert volume(conn, "default", vol_name)["capacity"] == 2 * GIB
    info = conn.lookupByName(f"{tenant}_db1").blockInfo("vdb")
    assert info[0] == 2 * GIB  # the running guest sees the new size

    shrink = run_module("disk", {**attach, "size_gib": 1})
    assert shrink["failed"] and shrink["field"] == "size_gib" and "shrinking" in shrink["msg"]
    assert volume(conn, "default", vol_name)["capacity"] == 2 * GIB

    busy = run_module("disk", {**disk, "state": "absent"})
    assert busy["failed"] and "attached to VM 'db1'" in busy["msg"]

    detached = run_module("disk", {**disk, "size_gib": 2, "state": "detached"})
    assert detached["changed"] is True
    assert not any(d.serial == "data1" for d in domain(conn, f"{tenant}_db1").disks)
    assert run_module("disk", {**disk, "size_gib": 2, "state": "detached"})["changed"] is False

    assert run_module("disk", {**disk, "state": "absent"})["changed"] is True
    assert volume(conn, "default", vol_name) is None
    assert run_module("disk", {**disk, "state": "absent"})["changed"] is False


def test_bad_disk_input_changes_nothing(uri, conn, tenant):
    before = tenant_objects(conn, tenant)
    cases = [
        ({"size_gib": 0}, "size_gib", "must be positive"),
        ({"size_gib": -3}, "size_gib", "must be positive"),
        ({"pool": "nope"}, "pool", "unknown storage pool 'nope'"),
        ({"name": "da ta"}, "name", "invalid name"),
        ({"name": "../x"}, "name", "invalid name"),
        ({"state": "attached", "attach_to": "ghost"}, "attach_to", "unknown VM 'ghost'"),
    ]
    for extra, field, reason in cases:
        result = run_module(
            "disk", {"uri": uri, "tenant": tenant, "name": "data1", "size_gib": 1, **extra}
        )
        assert result["failed"], (extra, result)
        assert result["field"] == field and reason in result["msg"], (extra, result["msg"])
    assert tenant_objects(conn, tenant) == before
