"""Who owns a libvirt object: the ownership metadata and the name checked together, and the
inventory that keeps everything named like a tenant's but not theirs apart (libvirt's test
driver)."""

from __future__ import annotations

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import OwnershipError
from ansible_collections.vce.kvm.plugins.module_utils.host.connection import Host
from ansible_collections.vce.kvm.plugins.module_utils.host.ownership import (
    Owner,
    check_owner,
    disk_claim,
    is_vm_volume,
    ownership_problem,
)

from tests.support.testdriver import URI, fresh_driver

TAG = "<vce:owner xmlns:vce='https://vce-kvm.dev/xmlns/owner/1' tenant='{}' kind='{}' name='{}'/>"


@pytest.mark.parametrize(
    ("owner", "problem"),
    [
        (None, "'acme_web1' exists but was not created by vce.kvm"),
        (Owner("globex", "vm", "web1"), "belongs to tenant 'globex', not 'acme'"),
        (Owner("acme", "network", "web1"), "'acme_web1' is a network of tenant 'acme', not a vm"),
        (Owner("acme", "vm", "db1"), "carries the ownership metadata of vm 'db1'"),
    ],
)
def test_an_object_is_the_tenants_only_with_its_own_tag(owner, problem):
    assert problem in ownership_problem(owner, "acme", "vm", "acme_web1")
    with pytest.raises(OwnershipError, match="refusing to modify or delete it"):
        check_owner(owner, "acme", "vm", "acme_web1")
    assert ownership_problem(Owner("acme", "vm", "web1"), "acme", "vm", "acme_web1") == ""


@pytest.mark.parametrize(
    ("volume", "disk", "vm_volume"),
    [
        ("acme_data1.qcow2", "data1", False),
        ("acme_data1.img", "data1", False),
        ("acme_web1.boot.qcow2", "", True),
        ("acme_web1.seed.iso", "", True),
        ("acme_notes.txt", "", False),
        ("acme_Data1.qcow2", "", False),
        ("acme_.qcow2", "", False),
        ("acme_x.y.qcow2", "", False),
    ],
)
def test_a_volume_claims_what_its_name_says_only_when_the_engine_makes_such_names(
    volume, disk, vm_volume
):
    assert (disk_claim("acme", volume), is_vm_volume("acme", volume)) == (disk, vm_volume)


def network_xml(name: str, third: int, tag: str = "") -> str:
    metadata = f"<metadata>{tag}</metadata>" if tag else ""
    return (
        f"<network><name>{name}</name>{metadata}"
        f"<ip address='10.9.{third}.1' prefix='24'/></network>"
    )


@pytest.fixture
def test_host(monkeypatch):
    drivers = fresh_driver(monkeypatch)
    next(drivers, None)
    yield Host(URI)
    next(drivers, None)


def test_the_inventory_keeps_only_the_tenants_networks_and_names_the_rest(test_host):
    conn = test_host.conn
    conn.networkDefineXML(network_xml("acme_lan", 1, TAG.format("acme", "network", "lan")))
    conn.networkDefineXML(network_xml("acme_copy", 2, TAG.format("acme", "network", "lan")))
    conn.networkDefineXML(network_xml("acme_bare", 3))
    conn.networkDefineXML(network_xml("acme_theirs", 4, TAG.format("globex", "network", "x")))
    inventory = test_host.inventory("acme")
    assert list(inventory.networks) == ["acme_lan"]
    found = {(i.libvirt_name, i.problem, i.claimed) for i in inventory.intruders}
    assert found == {
        ("acme_copy", "duplicated", "lan"),
        ("acme_bare", "unowned", ""),
        ("acme_theirs", "unowned", ""),
    }
    with pytest.raises(OwnershipError, match="'acme_bare' exists but was not created"):
        inventory.refuse_intruder("network", "acme_bare")
    inventory.refuse_intruder("network", "acme_lan")  # the tenant's own: no refusal
