"""What the dynamic inventory lists, on libvirt's test driver and a SQLite ledger: tenant VMs
with their addresses and state, the ledger's plan, blocks and public IPs, copies of a VM on
several hosts, unreachable hosts as warnings (or errors with strict), and bad sources refused
naming the field."""

from __future__ import annotations

import datetime as dt

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError, VceError
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade
from ansible_collections.vce.kvm.plugins.module_utils.engine.listing import (
    HostSource,
    host_vars,
    inventory_names,
    list_tenant_vms,
    parse_hosts,
    parse_tenants,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger import schema
from ansible_collections.vce.kvm.plugins.module_utils.ledger.store import open_store

from tests.support.images import make_image
from tests.support.ledger import register
from tests.support.testdriver import URI, environment, fresh_driver

# The test driver shares one state between its connections: a second URI reaching it is a
# second "host" holding the same VMs (a copy left behind, a declaration applied twice).
KVM1 = HostSource("kvm1", URI, "ala")
KVM2 = HostSource("kvm2", f"{URI}?copy", None)
NOW = dt.datetime(2026, 11, 10, tzinfo=dt.UTC)


@pytest.fixture
def hosts(monkeypatch, tmp_path, ledger_url):
    """Tenants acme (one VM, web1) and globex (one VM, db1) on the test driver."""
    yield from fresh_driver(monkeypatch)


@pytest.fixture
def deployed(hosts, tmp_path, ledger_url):
    image = tmp_path / "base.qcow2"
    make_image(image)
    register(ledger_url, "acme", plan="lab")
    register(ledger_url, "globex", plan="pro")
    facade.run_environment(environment(image, "acme"))
    globex = environment(image, "globex")
    globex["networks"][0]["cidr"] = "10.30.0.0/24"
    globex["vms"][0].update(name="db1", nics=[{"network": "lan", "ip": "10.30.0.5"}], vcpus=2)
    facade.run_environment(globex)
    return ledger_url


def add_rows(url: str, table, *rows: dict) -> None:
    with open_store(url).read() as connection:
        for row in rows:
            connection.execute(table.insert().values(**row))


def public_ip(address: str, tenant: str, vm: str, host: str, zone: str) -> dict:
    return {
        "address": address, "zone": zone, "pool": "p", "tenant": tenant, "name": f"ip-{vm}",
        "host": host, "vm": vm, "private_ip": "10.20.0.10", "allocated_at": NOW, "updated_at": NOW,
    }  # fmt: skip


def test_every_tenant_vm_is_listed_with_what_the_host_says(deployed):
    listing = list_tenant_vms([KVM1])
    assert listing.complete
    assert [(vm["tenant"], vm["vm"]) for vm in listing.vms] == [("acme", "web1"), ("globex", "db1")]
    web1 = listing.vms[0]
    assert web1 == {
        "tenant": "acme", "vm": "web1", "zone": "ala", "host": "kvm1", "uri": URI,
        "state": "running", "vcpus": 1, "memory_mib": 128, "private_ips": ["10.20.0.10"],
    }  # fmt: skip
    assert "plan" not in web1  # no ledger read, no ledger variables
    assert [vm["tenant"] for vm in list_tenant_vms([KVM1], only=frozenset({"globex"})).vms] == [
        "globex"
    ]


def test_the_ledger_adds_plan_blocks_and_the_public_ips_bound_on_that_host(deployed):
    add_rows(
        deployed, schema.blocks, {"tenant": "acme", "vm": "web1", "since": NOW, "reason": "abuse"}
    )
    add_rows(
        deployed,
        schema.public_ips,
        public_ip("203.0.113.9", "acme", "web1", URI, "ala"),
        public_ip("203.0.113.7", "acme", "web1", URI, "ala") | {"name": "second"},
        # Bound by a run that reached kvm2's twin under a URI not in the source: by zone.
        public_ip("198.51.100.1", "globex", "db1", "qemu:///system", "ala"),
    )
    listing = list_tenant_vms([KVM1, KVM2], ledger_url=deployed)
    by_key = {(vm["host"], vm["tenant"], vm["vm"]): vm for vm in listing.vms}
    web1 = by_key[("kvm1", "acme", "web1")]
    assert (web1["plan"], web1["blocked"], web1["public_ips"]) == (
        "lab", True, ["203.0.113.7", "203.0.113.9"],
    )  # fmt: skip
    # The same VM seen through kvm2's URI is not the one the addresses were bound on.
    assert by_key[("kvm2", "acme", "web1")]["public_ips"] == []
    assert by_key[("kvm1", "globex", "db1")]["public_ips"] == ["198.51.100.1"]
    assert by_key[("kvm2", "globex", "db1")]["public_ips"] == []
    assert by_key[("kvm2", "globex", "db1")]["plan"] == "pro"
    assert host_vars(web1)["ansible_host"] == "203.0.113.7"
    assert host_vars(by_key[("kvm2", "acme", "web1")])["ansible_host"] == "10.20.0.10"


def test_a_vm_on_several_hosts_is_listed_once_per_host(deployed):
    listing = list_tenant_vms([KVM1, KVM2])
    assert inventory_names(listing.vms) == [
        "acme.web1.kvm1", "globex.db1.kvm1", "acme.web1.kvm2", "globex.db1.kvm2",
    ]  # fmt: skip
    assert inventory_names(listing.vms[:2]) == ["acme.web1", "globex.db1"]


def test_an_unreachable_host_is_a_warning_naming_it_or_with_strict_an_error(deployed, tmp_path):
    gone = HostSource("kvm9", f"test://{tmp_path}/missing.xml", "ast")
    listing = list_tenant_vms([gone, KVM1])
    assert not listing.complete
    assert len(listing.vms) == 2
    (warning,) = listing.warnings
    assert warning.startswith("Failed to list the tenant VMs of host kvm9")
    assert gone.uri in warning
    with pytest.raises(VceError, match="Failed to list the tenant VMs of host kvm9"):
        list_tenant_vms([gone, KVM1], strict=True)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://vce@127.0.0.1:1/vce",  # nothing listens on port 1
        "mysql://vce@ledger/vce",
    ],
)
def test_an_unreadable_ledger_is_a_warning_and_the_vms_are_still_listed(deployed, url):
    listing = list_tenant_vms([KVM1], ledger_url=url)
    assert len(listing.vms) == 2 and "plan" not in listing.vms[0]
    (warning,) = listing.warnings
    assert warning.startswith("Failed to read plans and public IPs from the ledger: ")
    with pytest.raises(VceError, match="from the ledger"):
        list_tenant_vms([KVM1], ledger_url=url, strict=True)


def not_a_database(tmp_path):
    path = tmp_path / "garbage.sqlite3"
    path.write_text("not a database" * 100)
    return f"sqlite:///{path}"


def under_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    return f"sqlite:///{tmp_path / 'file' / 'ledger.sqlite3'}"


# A ledger under a file is a missing ledger, which a read refuses with a VceError.
@pytest.mark.parametrize("make_url", [not_a_database, under_a_file])
def test_an_unusable_sqlite_ledger_is_a_warning_too(deployed, tmp_path, make_url):
    url = make_url(tmp_path)
    listing = list_tenant_vms([KVM1], ledger_url=url)
    assert len(listing.vms) == 2
    assert listing.warnings[0].startswith("Failed to read plans and public IPs from the ledger")
    with pytest.raises(VceError, match="from the ledger"):
        list_tenant_vms([KVM1], ledger_url=url, strict=True)


def test_host_vars_prefix_every_value_and_leave_ansible_host_unset_without_an_address():
    vm = {"tenant": "acme", "vm": "w", "private_ips": [], "state": "shutoff"}
    assert host_vars(vm) == {
        "vce_tenant": "acme", "vce_vm": "w", "vce_private_ips": [], "vce_state": "shutoff",
    }  # fmt: skip


def test_the_source_hosts_are_parsed():
    assert parse_hosts([{"name": "kvm-ala-01", "uri": "qemu+ssh://root@kvm/system", "zone": "ala"}, {"name": "b", "uri": URI}]) == [
        HostSource("kvm-ala-01", "qemu+ssh://root@kvm/system", "ala"),
        HostSource("b", URI, None),
    ]  # fmt: skip
    assert parse_tenants(None) is None
    assert parse_tenants(["acme", "globex"]) == frozenset({"acme", "globex"})


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        ([], "hosts", "must be a non-empty list"),
        ({"name": "a"}, "hosts", "must be a non-empty list"),
        (["kvm1"], "hosts[0]", "must be a mapping"),
        ([{"name": "a", "uri": URI, "port": 22}], "hosts[0].port", "unknown key; use name, uri, zone"),
        ([{"name": "a b", "uri": URI}], "hosts[0].name", "must be 1-63 letters"),
        ([{"uri": URI}], "hosts[0].name", "must be 1-63 letters"),
        ([{"name": "a", "uri": "kvm1"}], "hosts[0].uri", "must be a libvirt URI"),
        ([{"name": "a", "uri": URI, "zone": 3}], "hosts[0].zone", "must be 1-63 letters"),
        ([{"name": "a", "uri": URI}, {"name": "a", "uri": URI + "?2"}], "hosts[].name", "must be unique, 'a'"),
        ([{"name": "a", "uri": URI}, {"name": "b", "uri": URI}], "hosts[].uri", "must be unique"),
    ],
)  # fmt: skip
def test_bad_source_hosts_are_refused_naming_the_field(raw, field, reason):
    with pytest.raises(SpecError) as error:
        parse_hosts(raw)
    assert error.value.field == field
    assert error.value.reason.startswith(reason)


def test_bad_tenant_lists_are_refused_naming_the_field():
    with pytest.raises(SpecError) as error:
        parse_tenants("acme")
    assert error.value.field == "tenants"
    with pytest.raises(SpecError) as error:
        parse_tenants(["acme", "Not OK"])
    assert error.value.field == "tenants[1]"


@pytest.mark.parametrize("key", ["name", "zone"])
def test_a_host_source_name_or_zone_ending_in_a_newline_is_refused(key):
    source = {"name": "kvm1", "uri": "test:///default", "zone": "zone-a", key: "kvm1\n"}
    with pytest.raises(SpecError) as caught:
        parse_hosts([source])
    assert caught.value.field.endswith(f".{key}")
