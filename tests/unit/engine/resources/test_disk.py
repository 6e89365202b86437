"""Tenant disks on libvirt's test driver: created in a pool, grown, never shrunk, moved or
converted, and removed only when no VM uses them."""

from __future__ import annotations

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import (
    ApplyError,
    OwnershipError,
    SpecError,
)
from ansible_collections.vce.kvm.plugins.module_utils.core.spec import parse_disk
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.disk import (
    DiskPlanner,
    find_volume,
)
from ansible_collections.vce.kvm.plugins.module_utils.host.xml import GIB, volume_xml

from .conftest import URI

POOL = "default-pool"
OWNER_TAG = (
    "<vce:owner xmlns:vce='https://vce-kvm.dev/xmlns/owner/1' tenant='{tenant}' kind='vm' "
    "name='{name}'/>"
)


def plan_of(test_host, raw, path=""):
    spec = parse_disk(raw, "", POOL)
    return DiskPlanner(test_host, "acme").plan_present(spec, test_host.inventory("acme"), path)


def test_a_new_disk_is_planned_in_its_pool_and_made_once(test_host):
    plan = plan_of(test_host, {"name": "data1", "size_gib": 2})
    assert plan.to_list() == [
        {
            "kind": "disk",
            "name": "data1",
            "action": "create",
            "class": "live",
            "before": None,
            "after": {"size_gib": 2, "pool": POOL, "format": "qcow2", "backing_image": None},
        }
    ]
    plan.apply()
    volume = find_volume(test_host.inventory("acme"), "acme", "data1")
    assert (volume.pool, volume.capacity, volume.path.startswith("/default-pool/")) == (
        POOL,
        2 * 1024**3,
        True,
    )
    assert not plan_of(test_host, {"name": "data1", "size_gib": 2}).changed


def test_a_disk_is_grown_live_and_never_shrunk(test_host):
    plan_of(test_host, {"name": "data1", "size_gib": 2}).apply()
    plan = plan_of(test_host, {"name": "data1", "size_gib": 3})
    assert [(c.action, c.change_class.value, c.field, c.before, c.after) for c in plan.changes] == [
        ("resize", "live", "size_gib", 2.0, 3)
    ]
    # The test driver cannot resize volumes: the failure names what was being done.
    with pytest.raises(ApplyError, match=r"Failed to grow volume acme\S*data1\S*: .*not supported"):
        plan.apply()
    with pytest.raises(SpecError, match="shrinking it to 1 GiB would destroy data") as caught:
        plan_of(test_host, {"name": "data1", "size_gib": 1}, "disks[0].")
    assert caught.value.field == "disks[0].size_gib"


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        (
            {"pool": "nope"},
            "pool",
            "unknown storage pool 'nope' (pools on this host: default-pool)",
        ),
        ({"format": "raw"}, "format", "converting it is not supported"),
        (
            {"backing_image": "/default-pool/base.qcow2"},
            "backing_image",
            "a host path is not accepted here",
        ),
    ],
)
def test_what_cannot_change_is_refused_with_the_field(test_host, change, field, reason):
    plan_of(test_host, {"name": "data1", "size_gib": 2}).apply()
    with pytest.raises(SpecError) as caught:
        plan_of(test_host, {"name": "data1", "size_gib": 2, **change})
    assert caught.value.field == field
    assert reason in caught.value.reason


def test_a_disk_in_another_pool_is_not_moved(test_host):
    plan_of(test_host, {"name": "data1", "size_gib": 2}).apply()
    test_host.conn.storagePoolCreateXML(
        "<pool type='dir'><name>fast</name><target><path>/fast</path></target></pool>", 0
    )
    with pytest.raises(SpecError, match="lives in pool 'default-pool'; moving it") as caught:
        plan_of(test_host, {"name": "data1", "size_gib": 2, "pool": "fast"})
    assert caught.value.field == "pool"


def test_removal_names_what_goes_and_waits_for_the_vm_to_let_go(test_host):
    engine = DiskPlanner(test_host, "acme")
    assert not engine.plan_absent("data1", test_host.inventory("acme")).changed
    plan_of(test_host, {"name": "data1", "size_gib": 2}).apply()
    path = find_volume(test_host.inventory("acme"), "acme", "data1").path
    test_host.conn.defineXML(
        "<domain type='test'><name>acme_web1</name><memory>131072</memory>"
        "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
        f"<source file='{path}'/><target dev='vdb'/></disk></devices></domain>"
    )
    with pytest.raises(SpecError, match="attached to VM 'acme_web1'; detach it first") as caught:
        engine.plan_absent("data1", test_host.inventory("acme"))
    assert caught.value.field == "state"
    test_host.conn.lookupByName("acme_web1").undefine()
    plan = engine.plan_absent("data1", test_host.inventory("acme"))
    [change] = plan.to_list()
    assert (change["action"], change["before"]["size_gib"], change["before"]["path"]) == (
        "delete",
        2.0,
        path,
    )
    plan.apply()
    assert find_volume(test_host.inventory("acme"), "acme", "data1") is None


def test_the_disk_module_checks_applies_and_removes(acme):
    params = {"uri": URI, "tenant": "acme", "name": "data1", "size_gib": 2, "pool": POOL}
    checked = facade.run_disk(params, check_mode=True)
    assert [c["action"] for c in checked.plan] == ["create"]
    assert not facade.run_disk({**params, "state": "absent"}, check_mode=True).changed
    made = facade.run_disk(params)
    assert made.changed and made.facts["disk"]["size_gib"] == 2
    assert not facade.run_disk(params).changed
    removed = facade.run_disk({**params, "state": "absent"})
    assert [c["action"] for c in removed.plan] == ["delete"]
    assert not facade.run_disk({**params, "state": "absent"}).changed


def test_a_disk_of_a_running_vm_is_grown_through_the_vm(test_host):
    plan_of(test_host, {"name": "data1", "size_gib": 2}).apply()
    path = find_volume(test_host.inventory("acme"), "acme", "data1").path
    test_host.conn.createXML(
        "<domain type='test'><name>acme_web1</name><memory>131072</memory>"
        f"<metadata>{OWNER_TAG.format(tenant='acme', name='web1')}</metadata>"
        "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
        f"<source file='{path}'/><target dev='vdb'/></disk></devices></domain>",
        0,
    )
    plan = plan_of(test_host, {"name": "data1", "size_gib": 4})
    assert [(c.action, c.before, c.after) for c in plan.changes] == [("resize", 2.0, 4)]
    with pytest.raises(ApplyError, match=r"Failed to grow disk \S+ of running domain acme_web1"):
        plan.apply()


def test_a_disk_used_by_a_vm_that_is_not_the_tenants_is_neither_grown_nor_deleted(test_host):
    plan_of(test_host, {"name": "data1", "size_gib": 2}).apply()
    path = find_volume(test_host.inventory("acme"), "acme", "data1").path
    test_host.conn.createXML(
        "<domain type='test'><name>acme_intruder</name><memory>131072</memory>"
        "<os><type>hvm</type></os><devices><disk type='file' device='disk'>"
        f"<source file='{path}'/><target dev='vdb'/></disk></devices></domain>",
        0,
    )
    with pytest.raises(OwnershipError, match="'acme_intruder' exists but was not created by"):
        plan_of(test_host, {"name": "data1", "size_gib": 4})
    with pytest.raises(SpecError, match="attached to VM 'acme_intruder'; detach it first"):
        DiskPlanner(test_host, "acme").plan_absent("data1", test_host.inventory("acme"))
    assert find_volume(test_host.inventory("acme"), "acme", "data1").capacity == 2 * GIB


def test_two_volumes_claiming_one_disk_are_refused_by_every_plan_naming_both(test_host):
    plan_of(test_host, {"name": "data1", "size_gib": 2}).apply()
    # No libvirt object is kept: the test driver resets only once every reference is gone.
    test_host.lookup_pool(POOL).createXML(volume_xml("acme_data1.img", 1, "raw"), 0)
    inventory = test_host.inventory("acme")
    assert sorted((i.problem, i.claimed, i.libvirt_name) for i in inventory.intruders) == [
        ("duplicated", "data1", "default-pool/acme_data1.img"),
        ("duplicated", "data1", "default-pool/acme_data1.qcow2"),
    ]
    planner = DiskPlanner(test_host, "acme")
    for plan in (
        lambda: plan_of(test_host, {"name": "data1", "size_gib": 4}),
        lambda: planner.plan_absent("data1", test_host.inventory("acme")),
    ):
        with pytest.raises(OwnershipError) as refused:
            plan()
        assert "acme_data1.img" in str(refused.value)
        assert "acme_data1.qcow2" in str(refused.value)
    assert len(test_host.inventory("acme").volumes) == 2


def test_a_volume_named_like_the_tenants_that_the_engine_never_makes_is_not_theirs(test_host):
    test_host.lookup_pool(POOL).createXML(volume_xml("acme_notes.txt", 1, "raw"), 0)
    inventory = test_host.inventory("acme")
    assert inventory.volumes == {}
    (intruder,) = inventory.intruders
    assert (intruder.kind, intruder.problem, intruder.libvirt_name) == (
        "disk", "unowned", "default-pool/acme_notes.txt",
    )  # fmt: skip
