"""vce.kvm.storage_pool against a real libvirtd: check, apply, read back, idempotence, drift,
refusals, absent.

What Ansible adds (argument checks, check and diff mode, the result) goes through the module;
the other cases call its engine entry point in-process, against the same daemon (an ansible
call costs about two seconds).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import xml.etree.ElementTree as ET

import libvirt
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError, VceError
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.pool import run_storage_pool

from tests.support.ansible_runner import run_module

pytestmark = pytest.mark.integration

_numbers = itertools.count(1)


@pytest.fixture
def pool_name(conn, libvirtd):
    """A pool name no other test uses; the pool and its directory are removed afterwards."""
    name = f"vcetest{os.getpid() % 10000}x{next(_numbers)}"
    yield name
    with contextlib.suppress(libvirt.libvirtError):
        pool = conn.storagePoolLookupByName(name)
        if pool.isActive():
            pool.refresh(0)
            for volume in pool.listAllVolumes(0):
                volume.delete(0)
            pool.destroy()
        pool.undefine()
    shutil.rmtree(libvirtd.base_dir / name, ignore_errors=True)


def read_pool(conn, name):
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError:
        return None
    root = ET.fromstring(pool.XMLDesc(0))
    return {
        "path": root.findtext("target/path"),
        "active": bool(pool.isActive()),
        "autostart": bool(pool.autostart()),
    }


def test_pool_lifecycle(uri, conn, libvirtd, pool_name):
    path = libvirtd.base_dir / pool_name
    args = {"uri": uri, "name": pool_name, "path": str(path)}

    checked = run_module("storage_pool", args, check=True, diff=True)
    assert checked["changed"] is True, checked
    assert [c["action"] for c in checked["plan"]] == ["define", "build", "start", "autostart"]
    assert checked["diff"]["after"][f"storage_pool/{pool_name}"]["define"]["path"] == str(path)
    assert read_pool(conn, pool_name) is None and not path.exists()

    created = run_module("storage_pool", args)
    assert created["changed"] is True, created
    assert read_pool(conn, pool_name) == {"path": str(path), "active": True, "autostart": True}
    assert path.is_dir()
    facts = created["pool"]
    assert (facts["name"], facts["type"], facts["volumes"]) == (pool_name, "dir", 0)
    assert facts["capacity_gib"] > 0 and 0 <= facts["available_gib"] <= facts["capacity_gib"]

    again = run_module("storage_pool", args, diff=True)
    assert again["changed"] is False, again["plan"]

    # Out of band: someone stops the pool and deletes its directory.
    conn.storagePoolLookupByName(pool_name).destroy()
    path.rmdir()
    drift = run_storage_pool(args, check_mode=True)
    assert [c["action"] for c in drift.plan] == ["build", "start"]
    assert run_storage_pool(args).changed is True
    assert read_pool(conn, pool_name)["active"] and path.is_dir()

    manual = run_storage_pool({**args, "autostart": False})
    assert [(c["field"], c["before"], c["after"]) for c in manual.plan] == [
        ("autostart", True, False)
    ]
    assert manual.diff["before"] == {f"storage_pool/{pool_name}": {"autostart": True}}
    assert read_pool(conn, pool_name)["autostart"] is False

    absent = {"uri": uri, "name": pool_name, "state": "absent"}
    assert run_storage_pool(absent, check_mode=True).changed is True
    assert read_pool(conn, pool_name) is not None
    removed = run_module("storage_pool", absent)
    assert removed["changed"] is True and removed["pool"] == {}
    assert read_pool(conn, pool_name) is None
    assert path.is_dir(), "the directory stays"
    assert run_storage_pool(absent).changed is False


def test_a_pool_is_never_moved(uri, conn, libvirtd, pool_name):
    path = libvirtd.base_dir / pool_name
    run_storage_pool({"uri": uri, "name": pool_name, "path": str(path)})
    other = libvirtd.base_dir / f"{pool_name}-moved"
    with pytest.raises(SpecError) as refused:
        run_storage_pool({"uri": uri, "name": pool_name, "path": str(other)})
    assert refused.value.field == "path"
    assert f"exists with path {path}, declared {other}" in str(refused.value)
    assert read_pool(conn, pool_name)["path"] == str(path) and not other.exists()


def test_a_pool_with_volumes_is_not_removed(uri, conn, libvirtd, pool_name):
    path = libvirtd.base_dir / pool_name
    run_storage_pool({"uri": uri, "name": pool_name, "path": str(path)})
    pool = conn.storagePoolLookupByName(pool_name)
    for name in ("a.raw", "b.raw"):
        xml = f"<volume><name>{name}</name><capacity unit='KiB'>64</capacity></volume>"
        pool.createXML(xml, 0)
    absent = {"uri": uri, "name": pool_name, "state": "absent"}
    with pytest.raises(SpecError, match=r"still holds 2 volume\(s\) \(a.raw, b.raw\)") as refused:
        run_storage_pool(absent)
    assert refused.value.field == "state"
    assert read_pool(conn, pool_name)["active"] is True

    pool.destroy()
    with pytest.raises(SpecError, match="is inactive, so its volumes cannot be counted"):
        run_storage_pool(absent)
    assert read_pool(conn, pool_name) is not None


def test_bad_pool_input_changes_nothing(uri, conn, libvirtd, pool_name):
    relative = run_module("storage_pool", {"uri": uri, "name": pool_name, "path": "images"})
    assert relative["failed"] is True and relative["field"] == "path"
    assert "absolute path" in relative["msg"] and "Traceback" not in relative["msg"]
    missing = run_module("storage_pool", {"uri": uri, "name": pool_name})
    assert missing["failed"] is True and "path" in missing["msg"]
    with pytest.raises(SpecError) as bad_name:
        run_storage_pool({"uri": uri, "name": "x/<&'>", "path": str(libvirtd.base_dir / "x")})
    assert bad_name.value.field == "name"
    with pytest.raises(SpecError, match="already the path of storage pool default") as taken:
        run_storage_pool({"uri": uri, "name": pool_name, "path": str(libvirtd.base_dir / "pool")})
    assert taken.value.field == "path"
    assert read_pool(conn, pool_name) is None


def test_libvirt_failures_are_named(uri, libvirtd, pool_name):
    blocker = libvirtd.base_dir / pool_name
    blocker.write_text("a file where the pool's parent directory should be")
    try:
        with pytest.raises(VceError) as failed:
            run_storage_pool({"uri": uri, "name": pool_name, "path": str(blocker / "images")})
    finally:
        blocker.unlink()
    assert str(failed.value).startswith(
        f"Failed to build the directory of storage pool {pool_name}: "
    )
