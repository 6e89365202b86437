"""Drift on libvirt's test driver and a SQLite ledger: each declared object in sync, drifted
or missing, undeclared objects and tenants as orphans, what cannot be compared as errors, and
the declaration read from an inventory host's variables. The host's backup schedule files are
read by the real read script from empty folders in tmp_path."""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET

import libvirt
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import (
    OwnershipError,
    SpecError,
    VceError,
)
from ansible_collections.vce.kvm.plugins.module_utils.core.plan import Change, ChangeClass
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade
from ansible_collections.vce.kvm.plugins.module_utils.engine.drift import (
    DeclaredHost,
    DriftCheck,
    declared_objects,
    evidence,
    failure_status,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.drift_report import (
    json_report,
    junit_report,
)
from ansible_collections.vce.kvm.plugins.module_utils.host import connection as host
from ansible_collections.vce.kvm.plugins.module_utils.host.xml import volume_xml

from tests.support.images import make_image
from tests.support.ledger import register
from tests.support.testdriver import (
    URI,
    define_copy,
    define_unowned,
    environment,
    fresh_driver,
)

DECLARED = ("networks", "disks", "vms")


@pytest.fixture
def site(monkeypatch, tmp_path, ledger_url):
    """acme and globex deployed on the test driver; hostvars declaring acme only."""
    drivers = fresh_driver(monkeypatch)
    next(drivers, None)
    image = tmp_path / "base.qcow2"
    make_image(image)
    register(ledger_url, "acme")
    register(ledger_url, "globex")
    acme = environment(image, "acme")
    facade.run_environment(acme)
    globex = environment(image, "globex")
    globex["networks"][0]["cidr"] = "10.30.0.0/24"
    globex["vms"][0]["nics"][0]["ip"] = "10.30.0.5"
    facade.run_environment(globex)
    paths = {}
    for name in ("unit_dir", "config_dir", "backup_root"):
        paths[name] = tmp_path / name
        paths[name].mkdir()
    hostvars = {
        "vce_uri": URI,
        "vce_pool": "default-pool",
        "vce_backup_unit_dir": str(paths["unit_dir"]),
        "vce_backup_config_dir": str(paths["config_dir"]),
        "vce_backup_root": str(paths["backup_root"]),
        "vce_tenants": {"acme": {k: copy.deepcopy(acme[k]) for k in DECLARED}},
    }
    yield hostvars
    next(drivers, None)


def cases_of(hostvars, only=()):
    return {
        (c.tenant, c.kind, c.name): c
        for c in DriftCheck(DeclaredHost.from_hostvars("kvm1", hostvars), only).cases()
    }


def test_what_is_as_declared_is_in_sync_and_an_undeclared_tenant_is_all_orphans(site):
    cases = cases_of(site)
    acme = {key: c.status for key, c in cases.items() if key[0] == "acme"}
    assert acme == {
        ("acme", "network", "lan"): "in_sync",
        ("acme", "disk", "data1"): "in_sync",
        ("acme", "vm", "web1"): "in_sync",
    }
    globex = [c for key, c in cases.items() if key[0] == "globex"]
    assert sorted((c.kind, c.name, c.status) for c in globex) == [
        ("disk", "data1", "orphan"), ("network", "lan", "orphan"), ("vm", "web1", "orphan"),
    ]  # fmt: skip
    assert all(c.message == "tagged for the tenant, but no declaration mentions it" for c in globex)
    assert [d.action for d in globex[0].differences] == ["delete"]


def test_a_changed_declaration_is_drift_with_declared_against_actual_and_a_new_object_missing(site):
    acme = site["vce_tenants"]["acme"]
    acme["vms"][0]["vcpus"] = 2
    acme["disks"].append({"name": "data2", "size_gib": 1})
    cases = cases_of(site, only=["acme"])
    assert {key[0] for key in cases} == {"acme"}
    web1 = cases[("acme", "vm", "web1")]
    assert web1.status == "drifted"
    vcpus = next(d for d in web1.differences if d.field == "vcpus")
    assert (vcpus.declared, vcpus.actual, vcpus.change_class) == (2, 1, "live")
    data2 = cases[("acme", "disk", "data2")]
    assert data2.status == "missing"
    assert data2.differences[0].declared["size_gib"] == 1
    assert cases[("acme", "disk", "data1")].status == "in_sync"


def test_an_object_changed_by_hand_is_drifted_and_an_extra_one_is_an_orphan(site):
    domain = host.connect(URI).lookupByName("acme_web1")
    domain.setVcpusFlags(2, libvirt.VIR_DOMAIN_AFFECT_LIVE)
    domain.suspend()
    facade.run_network({"uri": URI, "tenant": "acme", "name": "spare", "cidr": "10.21.0.0/24"})
    cases = cases_of(site, only=["acme"])
    web1 = cases[("acme", "vm", "web1")]
    assert web1.status == "drifted"
    assert {(d.field, d.declared, d.actual, d.action) for d in web1.differences} == {
        ("vcpus", 1, 2, "update"),
        ("state", "running", "paused", "resume"),
    }
    spare = cases[("acme", "network", "spare")]
    assert (spare.status, spare.differences[0].action) == ("orphan", "delete")
    assert cases[("acme", "network", "lan")].status == "in_sync"


def test_a_declared_tenant_with_nothing_on_the_host_is_all_missing(site):
    site["vce_tenants"]["initech"] = {
        "networks": [{"name": "lan", "cidr": "10.40.0.0/24"}],
        "disks": [{"name": "data1", "size_gib": 1}],
    }
    # The ledger need not know initech for a comparison.
    cases = cases_of(site, only=["initech"])
    assert {key: c.status for key, c in cases.items()} == {
        ("initech", "network", "lan"): "missing",
        ("initech", "disk", "data1"): "missing",
    }


def test_a_name_taken_by_another_owner_is_drift_naming_the_owner(site):
    conn = host.connect(URI)
    conn.defineXML(
        "<domain type='test'><name>acme_db9</name><memory>131072</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    vm = copy.deepcopy(site["vce_tenants"]["acme"]["vms"][0])
    vm.update(name="db9", disks=[], nics=[])
    site["vce_tenants"]["acme"]["vms"].append(vm)
    db9 = cases_of(site, only=["acme"])[("acme", "vm", "db9")]
    assert db9.status == "drifted"
    assert "not created by vce.kvm" in db9.message


def test_a_declaration_that_cannot_be_read_is_an_error_for_its_tenant(site):
    site["vce_tenants"]["acme"]["vms"][0]["vcpus"] = 0
    cases = cases_of(site, only=["acme"])
    (case,) = cases.values()
    assert (case.kind, case.name, case.status) == ("tenant", "acme", "error")
    assert case.message.startswith("the declaration cannot be read: ")
    assert "vcpus" in case.message


def test_a_host_that_cannot_be_read_is_one_error_case(site, tmp_path):
    site["vce_uri"] = f"test://{tmp_path}/missing.xml"
    (case,) = DriftCheck(DeclaredHost.from_hostvars("kvm9", site)).cases()
    assert (case.host, case.tenant, case.kind, case.status) == ("kvm9", "", "host", "error")
    assert case.name == site["vce_uri"]
    assert "Failed to connect to libvirt" in case.message


def test_the_declaration_comes_from_the_hosts_variables():
    declaration = DeclaredHost.from_hostvars(
        "kvm1",
        {
            "vce_uri": "qemu+ssh://root@kvm1/system",
            "vce_ledger_url": "",
            "vce_zone": "ala",
            "vce_zones": {"ala": {"uplink": "eth0"}},
            "vce_pool": "fast",
            "vce_host_command": None,
            "vce_tenants": {
                "acme": {"vms": [], "networks": None, "plan": "lab", "customer": "c"},
                "globex": None,
            },
        },
    )
    assert declaration.uri == "qemu+ssh://root@kvm1/system"
    assert declaration.ledger_url is None
    assert declaration.shared == {
        "default_pool": "fast", "zone": "ala", "zone_config": {"uplink": "eth0"},
    }  # fmt: skip
    # Only the environment module's options; the tenant module's stay out.
    assert declaration.tenants == {"acme": {"vms": []}, "globex": {}}
    bare = DeclaredHost.from_hostvars("kvm2", {"vce_zone": "ast", "vce_zones": {"ala": {}}})
    assert (bare.uri, bare.tenants, bare.shared) == ("qemu:///system", {}, {})


@pytest.mark.parametrize(
    ("tenants", "field"),
    [(["acme"], "tenants"), ({"Not OK": {}}, "tenants"), ({"acme": ["vms"]}, "tenants.acme")],
)
def test_bad_tenant_declarations_are_refused_naming_the_field(tenants, field):
    with pytest.raises(SpecError) as error:
        DeclaredHost.from_hostvars("kvm1", {"vce_tenants": tenants})
    assert error.value.field == field


def test_declared_objects_are_listed_by_kind_in_declaration_order():
    params = {
        "networks": [{"name": "lan"}],
        "vms": [{"name": "web1"}, {"vcpus": 1}],
        "public_ips": [{"name": "www"}],
        "zone_links": [{"name": "ab"}],
        "backup_schedules": [{"vm": "web1", "name": "nightly"}],
    }
    assert declared_objects(params) == [
        ("network", "lan"), ("vm", "web1"), ("public_ip", "www"), ("zone_link", "ab"),
        ("backup_schedule", "web1/nightly"),
    ]  # fmt: skip


def test_a_change_to_the_same_value_is_evidence_only_when_nothing_else_is():
    same = Change("public_ip", "www", "bind", ChangeClass.LIVE, "nat", "203.0.113.5", "203.0.113.5")
    real = Change("public_ip", "www", "update", ChangeClass.LIVE, "vm", "web1", "web2")
    assert [d.field for d in evidence([same, real])] == ["vm"]
    assert [d.field for d in evidence([same])] == ["nat"]
    assert failure_status(SpecError("disks[0].size_gib", "cannot shrink")) == "drifted"
    assert failure_status(OwnershipError("taken")) == "drifted"
    assert failure_status(VceError("Failed to read")) == "error"


def test_objects_named_like_the_tenants_but_not_theirs_are_unowned_or_duplicated(site):
    conn = host.connect(URI)
    define_unowned(conn, "acme_extra")
    define_copy(conn, "acme_web1", "acme_copy")
    conn.networkDefineXML(
        "<network><name>acme_guest</name><ip address='10.77.0.1' prefix='24'/></network>"
    )
    pool = conn.storagePoolLookupByName("default-pool")
    pool.createXML(volume_xml("acme_data1.img", 1, "raw"), 0)
    pool.createXML(volume_xml("acme_notes.txt", 1, "raw"), 0)
    del pool  # the test driver resets only once no object of it is referenced
    cases = cases_of(site, only=["acme"])
    intruders = {
        (c.kind, c.name): (c.status, c.message)
        for c in cases.values()
        if c.status in ("unowned", "duplicated")
    }
    assert {key: status for key, (status, _message) in intruders.items()} == {
        ("vm", "acme_extra"): "unowned",
        ("vm", "acme_copy"): "duplicated",
        ("network", "acme_guest"): "unowned",
        ("disk", "default-pool/acme_data1.img"): "duplicated",
        ("disk", "default-pool/acme_data1.qcow2"): "duplicated",
        ("disk", "default-pool/acme_notes.txt"): "unowned",
    }
    assert "no vce ownership metadata" in intruders[("vm", "acme_extra")][1]
    copy_message = intruders[("vm", "acme_copy")][1]
    assert "carries the ownership metadata of vm 'web1'" in copy_message
    assert "vce.kvm names 'acme_web1'" in copy_message
    assert "acme_data1.img" in intruders[("disk", "default-pool/acme_data1.qcow2")][1]
    # The disk two volumes claim cannot be planned, nor the VM that uses it: both say why.
    for name in (("disk", "data1"), ("vm", "web1")):
        case = cases[("acme", *name)]
        assert case.status == "drifted" and "claimed by 2 volumes" in case.message
        assert case.differences == []
    # Nothing of the intruders is an orphan to delete.
    assert [c for c in cases.values() if c.status == "orphan"] == []
    listed = list(cases.values())
    document = json.loads(json_report(listed))
    assert (document["summary"]["unowned"], document["summary"]["duplicated"]) == (3, 3)
    junit = ET.fromstring(junit_report(listed))
    failures = {
        case.get("name"): case.find("failure").get("type")
        for case in junit.iter("testcase")
        if case.find("failure") is not None
    }
    assert failures["acme_copy"] == "duplicated" and failures["acme_extra"] == "unowned"
    assert failures["acme_guest"] == "unowned"


def test_a_prefix_that_is_no_tenants_makes_no_case(site):
    define_unowned(host.connect(URI), "debian_12")
    assert not [key for key in cases_of(site) if key[0] == "debian"]
