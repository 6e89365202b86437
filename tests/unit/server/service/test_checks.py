"""The check of one declaration (POST /v1/{kind}/{name}/check): what it adds to the tenant's
usage beyond what its object uses now, refused as its PUT (422) or over the quotas with the
client's pending usage (409, on the declaration's field), against the engine's gate on libvirt's
test driver; nothing is written to the ledger or to libvirt, nothing is placed."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.host import connection as host_connection
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import metadata
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger, acting_as
from vce_server.errors import ApiError
from vce_server.service.checks import Checks
from vce_server.service.resources import Resources

from tests.support.host_records import add_host, closing_connections, private_host
from tests.support.images import make_image, register_image
from tests.support.ledger import register

VM = {"memory_mib": 128, "boot_disk": {"image": "base", "size_gib": 1, "pool": "default-pool"}}
POOLS = [{"name": "p1", "cidr": "203.0.113.0/28", "gateway": "203.0.113.1"}]
UNDERLAY = {"underlay_ip": "192.0.2.1", "underlay_dev": "eth1"}
SCHEDULE = {"vm": "web", "calendar": "daily", "retention": {"keep_daily": 7}}


@pytest.fixture
def connections(monkeypatch):
    yield from closing_connections(monkeypatch)


@pytest.fixture
def checks(connections, ledger_url, tmp_path) -> Checks:
    """Zone-a's one test-driver host, with the image `base`; acme may have 4 vCPUs, 1 GiB of
    RAM, 4 GiB of disk and one backup schedule."""
    register(ledger_url, "acme", "small", vcpus=4, ram_gib=1, disk_gib=4, backup_schedules=1)
    register(ledger_url, "other")
    add_host(ledger_url, "kvm1", "zone-a", private_host(tmp_path / "kvm1.xml"))
    register_image(ledger_url, make_image(tmp_path / "base.qcow2"), name="base", zone="zone-a")
    return Checks(Resources(ledger_url))


def put(resources: Resources, kind: str, name: str, body: dict, tenant: str = "acme") -> dict:
    payload = resources.validate(tenant, kind, name, body)
    with acting_as(f"api-{tenant}{kind}{name}-1", "api:vce_test"):
        return resources.handlers()["put"](payload, lambda _progress: None)


def refusal(checks: Checks, kind: str, name: str, body: object) -> ApiError:
    with pytest.raises(ApiError) as error:
        checks.check("acme", kind, name, body)
    return error.value


def ledger_rows(ledger_url: str) -> dict[str, list]:
    with Ledger.open(ledger_url).store.read() as connection:
        return {
            table.name: sorted(map(repr, connection.execute(sa.select(table)).all()))
            for table in metadata.sorted_tables
        }


def libvirt_objects(checks: Checks) -> tuple[list[str], list[str], list[str]]:
    conn = host_connection.connect(checks.resources.fleet.hosts()[0].uri)
    volumes = [v.name() for p in conn.listAllStoragePools(0) for v in p.listAllVolumes(0)]
    return (
        sorted(d.name() for d in conn.listAllDomains(0)),
        sorted(n.name() for n in conn.listAllNetworks(0)),
        sorted(volumes),
    )


def test_a_new_vm_adds_what_it_declares_and_nothing_is_written(checks, ledger_url):
    before = (ledger_rows(ledger_url), libvirt_objects(checks))
    assert checks.check("acme", "vms", "web", {"declaration": VM}) == {
        "usage": {"vms": 1, "vcpus": 1, "ram_gib": "0.125", "disk_gib": "1"}
    }
    assert checks.check("acme", "disks", "data", {"declaration": {"size_gib": 2}}) == {
        "usage": {"disk_gib": "2"}
    }
    assert checks.check("acme", "networks", "lan", {"declaration": {"cidr": "10.9.0.0/24"}}) == {
        "usage": {"networks": 1}
    }
    assert checks.check("acme", "backup_schedules", "nightly", {"declaration": SCHEDULE}) == {
        "usage": {"backup_schedules": 1}
    }
    assert (ledger_rows(ledger_url), libvirt_objects(checks)) == before
    assert checks.resources.fleet.placed("acme") == []


def test_a_change_of_an_existing_object_counts_only_its_growth(checks):
    put(checks.resources, "vms", "web", {**VM, "state": "stopped"})
    put(checks.resources, "disks", "data", {"size_gib": 2, "pool": "default-pool"})
    same = {"declaration": {**VM, "state": "stopped"}}
    assert checks.check("acme", "vms", "web", same) == {"usage": {}}
    grown = {**VM, "vcpus": 2, "memory_mib": 256, "state": "stopped"}
    assert checks.check("acme", "vms", "web", {"declaration": grown}) == {
        "usage": {"vcpus": 1, "ram_gib": "0.125"}
    }
    # Disks never shrink: a smaller size adds nothing.
    assert checks.check("acme", "disks", "data", {"declaration": {"size_gib": 1}}) == {"usage": {}}
    assert checks.check("acme", "disks", "data", {"declaration": {"size_gib": 3}}) == {
        "usage": {"disk_gib": "1"}
    }
    put(checks.resources, "backup_schedules", "nightly", SCHEDULE)
    changed = {**SCHEDULE, "calendar": "weekly"}
    assert checks.check("acme", "backup_schedules", "nightly", {"declaration": changed}) == {
        "usage": {}
    }


def test_pending_usage_pushes_a_declaration_over_the_quota_on_its_field(checks):
    body = {"declaration": {**VM, "vcpus": 2}, "pending": {"vcpus": 3}}
    error = refusal(checks, "vms", "web", body)
    assert (error.status, error.code) == (409, "quota_exceeded")
    assert [path for path, _reason in error.fields] == ["vcpus"]
    assert "limit 4, used 3, requested 2" in error.fields[0][1]
    assert "POST /v1/requests" in error.message
    body = {"declaration": {**VM, "memory_mib": 512}, "pending": {"ram_gib": "0.75"}}
    assert [p for p, _r in refusal(checks, "vms", "web", body).fields] == ["memory_mib"]
    body = {"declaration": {**VM, "vcpus": 5, "memory_mib": 2048}, "pending": {"ram_gib": 0}}
    assert [p for p, _r in refusal(checks, "vms", "web", body).fields] == ["vcpus", "memory_mib"]
    body = {"declaration": VM, "pending": {"disk_gib": "3.5"}}
    assert [p for p, _r in refusal(checks, "vms", "web", body).fields] == ["boot_disk.size_gib"]
    body = {"declaration": {"size_gib": 2}, "pending": {"disk_gib": 3}}
    assert [p for p, _r in refusal(checks, "disks", "data", body).fields] == ["size_gib"]
    body = {"declaration": SCHEDULE, "pending": {"backup_schedules": 1}}
    assert [p for p, _r in refusal(checks, "backup_schedules", "s", body).fields] == ["name"]
    # Within the quota with what is pending: the declaration's own usage.
    fits = {"declaration": {**VM, "vcpus": 2}, "pending": {"vcpus": 2, "ram_gib": "0.5"}}
    assert checks.check("acme", "vms", "web", fits)["usage"]["vcpus"] == 2


def test_what_others_use_counts_too(checks):
    put(checks.resources, "vms", "db", {**VM, "vcpus": 3, "state": "stopped"})
    error = refusal(checks, "vms", "web", {"declaration": {**VM, "vcpus": 2}})
    assert [path for path, _reason in error.fields] == ["vcpus"]


@pytest.mark.parametrize(
    ("kind", "body", "path"),
    [
        ("vms", {"declaration": {**VM, "memory_mib": "lots"}}, "memory_mib"),
        ("vms", {"declaration": {**VM, "uri": "qemu:///system"}}, "uri"),
        ("vms", {"declaration": {**VM, "boot_disk": {"image": "/etc/shadow", "size_gib": 1}}},
         "boot_disk.image"),
        ("disks", {"declaration": {"size_gib": 1, "zone": "zone-z"}}, "zone"),
        ("networks", {"declaration": {"cidr": "10.0.0.0/33"}}, "cidr"),
        ("public_ips", {"declaration": {"vm": "web"}}, "zone"),
        ("vms", {"declaration": VM, "pending": {"cpus": 1}}, "pending.cpus"),
        ("vms", {"declaration": VM, "pending": {"vcpus": -1}}, "pending.vcpus"),
        ("vms", {"declaration": VM, "pending": {"vcpus": 1.5}}, "pending.vcpus"),
        ("vms", {"declaration": VM, "pending": {"ram_gib": "lots"}}, "pending.ram_gib"),
        ("vms", {"declaration": VM, "pending": {"ram_gib": "NaN"}}, "pending.ram_gib"),
        ("vms", {"declaration": VM, "pending": {"ram_gib": "1e999999"}}, "pending.ram_gib"),
        ("vms", {"declaration": VM, "pending": {"vms": True}}, "pending.vms"),
        ("vms", {"declaration": VM, "pending": [1]}, "pending"),
        ("vms", {"pending": {}}, "declaration"),
        ("vms", {"declaration": ["memory_mib"]}, "declaration"),
        ("vms", {"declaration": VM, "tenant": "other"}, "tenant"),
        ("vms", [], "body"),
    ],
)  # fmt: skip
def test_a_bad_check_is_refused_with_the_field_path(checks, kind, body, path):
    error = refusal(checks, kind, "web", body)
    assert (error.status, error.code, error.fields[0][0]) == (422, "invalid", path)


def test_a_spec_error_is_the_one_its_put_answers(checks):
    declaration = {**VM, "nics": [{"network": "lan", "ip": "10.0.0.300"}]}
    with pytest.raises(ApiError) as put_error:
        checks.resources.validate("acme", "vms", "web", declaration)
    error = refusal(checks, "vms", "web", {"declaration": declaration})
    assert (error.status, error.message, error.fields) == (
        422, put_error.value.message, put_error.value.fields
    )  # fmt: skip


def test_another_tenants_objects_of_the_same_name_are_irrelevant(checks):
    put(checks.resources, "vms", "web", {**VM, "state": "stopped"}, tenant="other")
    put(checks.resources, "backup_schedules", "nightly", SCHEDULE, tenant="other")
    assert checks.check("acme", "vms", "web", {"declaration": VM})["usage"]["vms"] == 1
    assert checks.check("acme", "backup_schedules", "nightly", {"declaration": SCHEDULE}) == {
        "usage": {"backup_schedules": 1}
    }


@pytest.fixture
def counted(ledger_url) -> Checks:
    """Zones whose hosts cannot be reached: the ledger counts these kinds, libvirt is not
    asked."""
    register(ledger_url, "acme", "small", public_ips=1, zone_links=0)
    add_host(ledger_url, "kvm2", "zone-b", "test:///nonexistent/kvm2.xml", uplink="eth0",
             public_pools=POOLS, settings=UNDERLAY)  # fmt: skip
    add_host(ledger_url, "kvm3", "zone-c", "test:///nonexistent/kvm3.xml", settings=UNDERLAY)
    return Checks(Resources(ledger_url))


def test_counted_kinds_add_one_new_object(counted, ledger_url):
    ip = {"declaration": {"zone": "zone-b", "vm": "web"}}
    assert counted.check("acme", "public_ips", "www", ip) == {"usage": {"public_ips": 1}}
    over = {**ip, "pending": {"public_ips": 1}}
    assert [p for p, _r in refusal(counted, "public_ips", "www", over).fields] == ["name"]
    link = {"declaration": {"network": "lan", "zones": ["zone-b", "zone-c"]}}
    error = refusal(counted, "zone_links", "stretch", link)
    assert (error.code, error.fields[0][0]) == ("quota_exceeded", "name")
    assert "nonexistent" not in error.message and "kvm2" not in error.message
    assert counted.resources.fleet.placed("acme") == []
