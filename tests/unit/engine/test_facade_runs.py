"""The one-object entry points (network, disk, vm, info) and an environment's removal, on
libvirt's test driver and a SQLite ledger: what each reports (plan, facts) and what is left on
the host. The test driver cannot attach or detach a disk, so those are planned in check mode
and the apply's failure is checked for what it tells the user."""

from __future__ import annotations

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import (
    ApplyError,
    SpecError,
    libvirt,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine
from ansible_collections.vce.kvm.plugins.module_utils.host import connection as host

from tests.support.images import make_image
from tests.support.ledger import register
from tests.support.testdriver import URI, environment, fresh_driver


@pytest.fixture
def image(monkeypatch, tmp_path, ledger_url):
    drivers = fresh_driver(monkeypatch)
    next(drivers, None)
    register(ledger_url, "acme")
    path = tmp_path / "base.qcow2"
    make_image(path)
    yield str(path)
    next(drivers, None)


@pytest.fixture
def deployed(image):
    """acme's environment: network lan, disk data1 attached to VM web1."""
    engine.run_environment(environment(image))
    return image


def acme_objects() -> set[str]:
    conn = host.connect(URI)
    names = {d.name() for d in conn.listAllDomains(0)} | {n.name() for n in conn.listAllNetworks(0)}
    for pool in conn.listAllStoragePools(0):
        names |= {v.name() for v in pool.listAllVolumes(0)}
    return {name for name in names if name.startswith("acme_")}


def actions(result) -> list[tuple[str, str, str]]:
    return [(c["kind"], c["name"], c["action"]) for c in result.plan]


def test_a_network_alone_is_made_reported_kept_and_removed(image):
    params = {"uri": URI, "tenant": "acme", "name": "lan", "cidr": "10.20.0.0/24", "mtu": 1400}
    made = engine.run_network(params)
    assert made.changed and actions(made) == [("network", "lan", "create")]
    facts = made.facts["network"]
    assert (facts["libvirt_name"], facts["gateway"], facts["mtu"]) == (
        "acme_lan",
        "10.20.0.1",
        1400,
    )
    again = engine.run_network(params)
    assert not again.changed and again.facts["network"]["cidr"] == "10.20.0.0/24"
    absent = {"uri": URI, "tenant": "acme", "name": "lan", "state": "absent"}
    assert actions(engine.run_network(absent, check_mode=True)) == [("network", "lan", "delete")]
    assert "acme_lan" in acme_objects()
    gone = engine.run_network(absent)
    assert gone.changed and gone.facts == {"network": {}}
    assert acme_objects() == set()


def test_a_vm_alone_is_made_on_its_network_and_its_removal_planned(image):
    engine.run_network({"uri": URI, "tenant": "acme", "name": "lan", "cidr": "10.20.0.0/24"})
    vm = {
        "uri": URI, "tenant": "acme", "name": "web2", "vcpus": 1, "memory_mib": 128,
        "default_pool": "default-pool", "boot_disk": {"image": image, "size_gib": 1},
        "nics": [{"network": "lan", "ip": "10.20.0.20"}],
    }  # fmt: skip
    made = engine.run_vm(vm)
    assert made.changed
    facts = made.facts["vm"]
    assert (facts["libvirt_name"], facts["state"], facts["vcpus"]) == ("acme_web2", "running", 1)
    assert facts["disks"][0]["path"] == "/default-pool/acme_web2.boot.qcow2"
    assert not engine.run_vm(vm).changed
    stopped = engine.run_vm({**vm, "state": "stopped"}, check_mode=True)
    assert stopped.plan and stopped.facts["vm"]["state"] == "running"  # check mode: as it was
    # The test driver cannot undefine a domain with the engine's flags: removal is planned.
    absent = engine.run_vm({"uri": URI, "tenant": "acme", "name": "web2", "state": "absent"}, True)
    assert ("vm", "web2", "delete") in actions(absent)
    assert "acme_web2" in acme_objects()


def test_a_disk_alone_is_made_and_removed(image):
    params = {
        "uri": URI,
        "tenant": "acme",
        "name": "scratch",
        "size_gib": 1,
        "pool": "default-pool",
    }
    made = engine.run_disk(params)
    assert actions(made) == [("disk", "scratch", "create")]
    assert made.facts["disk"]["path"] == "/default-pool/acme_scratch.qcow2"
    assert made.facts["disk"]["attached_to"] is None
    assert not engine.run_disk(params).changed
    gone = engine.run_disk({**params, "state": "absent"})
    assert gone.changed and "acme_scratch.qcow2" not in acme_objects()


def test_attaching_plans_the_attach_on_a_free_target_and_refuses_what_cannot_be(deployed):
    engine.run_vm(
        {
            "uri": URI, "tenant": "acme", "name": "web2", "vcpus": 1, "memory_mib": 128,
            "default_pool": "default-pool", "boot_disk": {"image": deployed, "size_gib": 1},
        }
    )  # fmt: skip
    disk = {"uri": URI, "tenant": "acme", "size_gib": 2, "pool": "default-pool"}
    # Already attached to the VM asked for: nothing to do.
    same = engine.run_disk({**disk, "name": "data1", "state": "attached", "attach_to": "web1"})
    assert not same.changed and same.facts["disk"]["attached_to"] == "web1"
    with pytest.raises(SpecError) as error:
        engine.run_disk({**disk, "name": "data1", "state": "attached", "attach_to": "web2"}, True)
    assert error.value.field == "attach_to"
    assert "attached to VM 'web1'; detach it first" in error.value.reason
    with pytest.raises(SpecError, match="unknown VM 'web9'"):
        engine.run_disk({**disk, "name": "data2", "state": "attached", "attach_to": "web9"}, True)
    new = {**disk, "name": "data2", "state": "attached", "attach_to": "web2"}
    planned = engine.run_disk(new, check_mode=True)
    assert actions(planned) == [("disk", "data2", "create"), ("disk", "data2", "attach")]
    assert planned.plan[1]["after"] == "web2"
    with pytest.raises(ApplyError) as failed:
        engine.run_disk(new)
    message = str(failed.value)
    assert message.startswith("Failed to attach a device to domain acme_web2")
    assert (
        "applied before the failure: 1 of 2 changes: disk data2 create; failed: disk data2 "
        "attach; not applied after it: 0; a re-run continues from here" in message
    )
    assert [c["action"] for c in failed.value.applied] == ["create"]
    assert failed.value.changed


def test_detaching_plans_the_detach_from_the_vm_using_it(deployed):
    disk = {"uri": URI, "tenant": "acme", "name": "data1", "size_gib": 2, "pool": "default-pool"}
    planned = engine.run_disk({**disk, "state": "detached"}, check_mode=True)
    assert actions(planned) == [("disk", "data1", "detach")]
    assert (planned.plan[0]["before"], planned.plan[0]["after"]) == ("web1", None)
    engine.run_disk({**disk, "name": "spare"})
    assert not engine.run_disk({**disk, "name": "spare", "state": "detached"}).changed


def test_an_environment_removal_is_planned_for_every_object_of_the_tenant(deployed):
    absent = {"uri": URI, "tenant": "acme", "state": "absent"}
    planned = engine.run_environment(absent, check_mode=True)
    assert {(kind, action) for kind, _name, action in actions(planned)} == {
        ("vm", "delete"), ("disk", "delete"), ("network", "delete"),
    }  # fmt: skip
    assert planned.facts == {}
    assert {"acme_web1", "acme_lan", "acme_data1.qcow2"} <= acme_objects()


def test_an_environment_without_vms_removed_leaves_nothing_of_the_tenant(image):
    params = environment(image)
    params["vms"] = []
    engine.run_environment(params)
    assert acme_objects() == {"acme_lan", "acme_data1.qcow2"}
    absent = {"uri": URI, "tenant": "acme", "state": "absent"}
    removed = engine.run_environment(absent)
    assert removed.changed
    assert removed.facts["environment"]["networks"] == {}
    assert acme_objects() == set()
    assert not engine.run_environment(absent).changed


def test_info_reports_the_host_and_the_ledger(deployed):
    info = engine.run_info({"uri": URI, "tenant": "acme"})
    assert set(info["vms"]) == {"web1"} and set(info["networks"]) == {"lan"}
    assert info["ledger"]["plan"] == "lab"
    assert engine.run_info({"uri": URI, "tenant": "nobody"})["ledger"] == {}


def test_blocking_a_vm_goes_through_the_tenant_ledger(deployed):
    params = {"uri": URI, "tenant": "acme", "name": "web1", "blocked": True, "reason": "abuse"}
    blocked = engine.run_vm(params)
    assert blocked.changed and blocked.facts == {"vm": {"name": "web1", "blocked": True}}
    assert "web1" in engine.run_info({"uri": URI, "tenant": "acme"})["ledger"]["blocked_vms"]


def web2(image: str) -> dict:
    return {
        "uri": URI, "tenant": "acme", "name": "web2", "vcpus": 1, "memory_mib": 128,
        "default_pool": "default-pool", "boot_disk": {"image": image, "size_gib": 1},
    }  # fmt: skip


def refuse(reason: str):
    def refused(*args, **kwargs):
        raise libvirt.libvirtError(reason)

    return refused


def test_a_vm_create_that_cannot_define_its_domain_removes_the_boot_volume_it_made(
    image, monkeypatch
):
    with monkeypatch.context() as patch:
        patch.setattr(host.connect(URI), "defineXML", refuse("no room for domains"))
        with pytest.raises(ApplyError) as failed:
            engine.run_vm(web2(image))
    message = str(failed.value)
    assert message.startswith("Failed to define domain acme_web2: no room for domains")
    assert "removed what it had made: volume acme_web2.boot.qcow2" in message
    assert "applied before the failure: 0 of 1 changes; failed: vm web2 create;" in message
    assert not failed.value.changed
    assert acme_objects() == set()
    assert engine.run_vm(web2(image)).changed  # the re-run makes it all
    assert acme_objects() == {"acme_web2", "acme_web2.boot.qcow2"}


def test_a_vm_create_that_cannot_remove_its_boot_volume_says_it_left_it(image, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(host.connect(URI), "defineXML", refuse("no room for domains"))
        patch.setattr(libvirt.virStorageVol, "delete", refuse("volume busy"))
        with pytest.raises(ApplyError) as failed:
            engine.run_vm(web2(image))
    message = str(failed.value)
    assert "could not remove volume acme_web2.boot.qcow2: " in message
    assert "volume busy" in message
    assert "which left volume acme_web2.boot.qcow2 in place" in message
    assert failed.value.left == ["volume acme_web2.boot.qcow2"]
    assert failed.value.changed and failed.value.applied == []
    assert acme_objects() == {"acme_web2.boot.qcow2"}
    assert engine.run_vm(web2(image)).changed  # the re-run uses the volume left
    assert acme_objects() == {"acme_web2", "acme_web2.boot.qcow2"}


def test_a_vm_create_that_cannot_start_its_domain_says_the_domain_is_defined(image, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(libvirt.virDomain, "create", refuse("not enough memory"))
        with pytest.raises(ApplyError) as failed:
            engine.run_vm(web2(image))
    assert str(failed.value).startswith(
        "Failed to start domain acme_web2: not enough memory (domain acme_web2 is defined)"
    )
    assert failed.value.left == ["domain acme_web2"] and failed.value.changed
    assert acme_objects() == {"acme_web2", "acme_web2.boot.qcow2"}
    again = engine.run_vm(web2(image))
    assert again.changed and again.facts["vm"]["state"] == "running"
