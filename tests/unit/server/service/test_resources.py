"""The resources service: declarations refused at once with the engine's field path (no
libvirt: the zone's host URI here cannot even be opened), and, on libvirt's test driver, a
network put, read back, put again, planned and removed, with its run recorded as the API's."""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import images, runs
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger, acting_as
from vce_server.errors import ApiError
from vce_server.service.resources import Resources, backup_public_id

from tests.support.host_records import add_host, closing_connections, private_host
from tests.support.images import make_image, register_image
from tests.support.ledger import register

POOLS = [{"name": "p1", "cidr": "203.0.113.0/28", "gateway": "203.0.113.1"}]
UNDERLAY = {"underlay_ip": "192.0.2.1", "underlay_dev": "eth1"}
VM = {"memory_mib": 128, "boot_disk": {"image": "base", "size_gib": 1}}
SCHEDULE = {"vm": "web", "calendar": "daily", "retention": {"keep_daily": 7}}
# Names as a hostile customer writes them (as the CLI's hostile inputs).
HOSTILE_NAMES = ["web\n", "../../etc/passwd", "a" * 10000, "WEB", "we\x1bb", "", "web/1"]
# What the server alone decides: every front end's key for hosts, URIs, ledgers and paths.
SERVER_KEYS = {
    "uri": "qemu:///system",
    "host_command": ["ssh", "root@kvm9"],
    "ledger_url": "sqlite:////tmp/x.sqlite3",
    "tenant": "other",
    "image_dirs": ["/"],
    "host": "kvm1",
    "default_pool": "default",
    "zone_config": {"uplink": "eth0", "public_pools": POOLS},
    "state_of_mind": "calm",
}


@pytest.fixture
def offline(ledger_url) -> Resources:
    """Zones whose hosts cannot be reached: validation must not try."""
    Ledger.open(ledger_url, create=True)
    add_host(ledger_url, "kvm1", "zone-a", "test:///nonexistent/kvm1.xml", uplink="eth0")
    add_host(ledger_url, "kvm2", "zone-b", "test:///nonexistent/kvm2.xml", uplink="eth0",
             public_pools=POOLS, settings=UNDERLAY)  # fmt: skip
    add_host(ledger_url, "kvm3", "zone-c", "test:///nonexistent/kvm3.xml", settings=UNDERLAY)
    return Resources(ledger_url)


def refused(resources: Resources, kind: str, name: str, body: object) -> tuple[str, str]:
    started = time.monotonic()
    with pytest.raises(ApiError) as error:
        resources.validate("acme", kind, name, body)
    assert time.monotonic() - started < 0.5
    assert error.value.status == 422
    assert error.value.code == "invalid"
    [field] = error.value.fields
    return field


VALID = {
    "networks": {"zone": "zone-a", "cidr": "10.20.0.0/24"},
    "disks": {"zone": "zone-a", "size_gib": 2},
    "vms": {"zone": "zone-a", **VM},
    "public_ips": {"zone": "zone-b", "vm": "web"},
    "zone_links": {"network": "lan", "zones": ["zone-b", "zone-c"]},
    "backup_schedules": {"zone": "zone-a", **SCHEDULE},
}


@pytest.mark.parametrize("kind", sorted(VALID))
def test_a_valid_declaration_becomes_the_payload_without_libvirt(offline, kind):
    payload = offline.validate("acme", kind, "web", VALID[kind])
    assert payload["tenant"] == "acme"
    assert payload["name"] == payload["body"]["name"] == "web"
    assert "zone" not in payload["body"]


@pytest.mark.parametrize("kind", sorted(VALID))
@pytest.mark.parametrize("key", sorted(SERVER_KEYS))
def test_keys_of_the_server_are_refused_by_name(offline, kind, key):
    path, reason = refused(offline, kind, "web", {**VALID[kind], key: SERVER_KEYS[key]})
    assert path == key
    assert "unknown field" in reason


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_in_the_path_are_refused(offline, name):
    path, _reason = refused(offline, "vms", name, VALID["vms"])
    assert path == "name"


CASES = {
    "name differs from the path": ("vms", {**VALID["vms"], "name": "db"}, "name"),
    "body not an object": ("vms", ["memory_mib", 128], "body"),
    "an image path": (
        "vms", {**VM, "boot_disk": {"image": "/etc/shadow", "size_gib": 1}}, "boot_disk.image"
    ),
    "an image path upwards": (
        "vms", {**VM, "boot_disk": {"image": "../../x.qcow2", "size_gib": 1}}, "boot_disk.image"
    ),
    "an image path's format": (
        "vms", {**VM, "boot_disk": {"image": "base", "size_gib": 1, "image_format": "raw"}},
        "boot_disk.image_format",
    ),
    "a backing image path": ("disks", {"size_gib": 1, "backing_image": "/dev/sda"}, "backing_image"),
    "RAM as words": ("vms", {**VM, "memory_mib": "lots"}, "memory_mib"),
    "RAM overflowing": ("vms", {**VM, "memory_mib": 10**30}, "memory_mib"),
    "a NIC address outside reason": (
        "vms", {**VM, "nics": [{"network": "lan", "ip": "10.0.0.300"}]}, "nics[0].ip"
    ),
    "an unknown NIC key": ("vms", {**VM, "nics": [{"network": "lan", "uri": "x"}]}, "nics[0].uri"),
    "a state of its own": ("vms", {**VM, "state": "absent"}, "state"),
    "restart as a word": ("vms", {**VM, "allow_restart": "yes"}, "allow_restart"),
    "a prefix of 33 bits": ("networks", {"cidr": "10.0.0.0/33"}, "cidr"),
    "a CIDR with a newline": ("networks", {"cidr": "10.0.0.0/24\n"}, "cidr"),
    "a MAC with an escape": (
        "vms", {**VM, "nics": [{"network": "lan", "mac": "52:54:00:00:00:0\x1b"}]}, "nics[0].mac"
    ),
    "a pool as a path": ("disks", {"size_gib": 1, "pool": "../../etc"}, "pool"),
    "a disk of a zettabyte": ("disks", {"size_gib": 10**12}, "size_gib"),
    "a host name with a newline": (
        "vms", {**VM, "cloud_init": {"hostname": "web\nroot"}}, "cloud_init.hostname"
    ),
    "a network named as a path": (
        "vms", {**VM, "nics": [{"network": "../../etc/passwd"}]}, "nics[0].network"
    ),
    "a lease without a MAC": (
        "networks", {"cidr": "10.0.0.0/24", "static_leases": [{"ip": "10.0.0.5"}]},
        "static_leases[0].mac",
    ),
    "an unknown zone": ("networks", {"zone": "zone-z", "cidr": "10.0.0.0/24"}, "zone"),
    "a zone as a path": ("networks", {"zone": "../zone-a", "cidr": "10.0.0.0/24"}, "zone"),
    "no zone among several": ("networks", {"cidr": "10.0.0.0/24"}, "zone"),
    "routed without an uplink": (
        "networks", {"zone": "zone-c", "cidr": "10.0.0.0/24", "mode": "routed"}, "mode"
    ),
    "a public IP where there are none": ("public_ips", {"zone": "zone-a", "vm": "web"}, "zone"),
    "a public IP outside the pools": (
        "public_ips", {"zone": "zone-b", "vm": "web", "address": "198.51.100.7"}, "address"
    ),
    "a link to one zone": ("zone_links", {"network": "lan", "zones": ["zone-b"]}, "zones"),
    "a link to itself": ("zone_links", {"network": "lan", "zones": ["zone-b", "zone-b"]}, "zones[1]"),
    "a link without an underlay": (
        "zone_links", {"network": "lan", "zones": ["zone-b", "zone-a"]}, "zones[1]"
    ),
    "a link's ends": ("zone_links", {**VALID["zone_links"], "ends": []}, "ends"),
    "a backup target path": (
        "backup_schedules", {**VALID["backup_schedules"], "target": "/etc"}, "target"
    ),
    "a calendar of shell": (
        "backup_schedules", {**VALID["backup_schedules"], "calendar": "daily; rm -rf /"}, "calendar"
    ),
    "a retention of words": (
        "backup_schedules", {**VALID["backup_schedules"], "retention": {"keep_daily": "x"}},
        "retention.keep_daily",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_declarations_are_refused_with_the_engines_field_path(offline, case):
    kind, body, expected = CASES[case]
    if (
        isinstance(body, dict)
        and "zone" not in body
        and kind != "zone_links"
        and case != "no zone among several"
    ):
        body = {**body, "zone": "zone-a"}
    path, _reason = refused(offline, kind, "web", body)
    assert path == expected


def test_an_unknown_kind_is_not_found(offline):
    with pytest.raises(ApiError) as error:
        offline.validate("acme", "hosts", "kvm1", {})
    assert error.value.status == 404


def test_refusals_name_no_host(offline):
    with pytest.raises(ApiError) as error:
        offline.validate("acme", "public_ips", "ip", {"zone": "zone-a", "vm": "web"})
    assert "nonexistent" not in error.value.message
    assert "kvm1" not in error.value.message


PLAN_CASES = {
    "a host's URI": ({"uri": "qemu:///system"}, "uri"),
    "a host command in a VM": (
        {"zone": "zone-a", "vms": [{"name": "web", **VM, "host_command": ["sh"]}]},
        "vms[0].host_command",
    ),
    "an image path in a VM": (
        {"zone": "zone-a", "vms": [{"name": "web", **VM,
                                    "boot_disk": {"image": "/etc/passwd", "size_gib": 1}}]},
        "vms[0].boot_disk.image",
    ),
    "a zone per entry": (
        {"zone": "zone-a", "disks": [{"name": "d", "size_gib": 1, "zone": "zone-b"}]},
        "disks[0].zone",
    ),
    "a backup target": (
        {"zone": "zone-a", "backup_schedules": [{**SCHEDULE, "name": "s", "target": "/"}]},
        "backup_schedules[0].target",
    ),
    "a link from another zone": (
        {"zone": "zone-c", "zone_links": [{"name": "l", "network": "lan",
                                           "zones": ["zone-b", "zone-c"]}]},
        "zone_links[0].zones[0]",
    ),
    "vms not a list": ({"zone": "zone-a", "vms": "web"}, "vms"),
    "public IPs where there are none": (
        {"zone": "zone-c", "public_ips": [{"name": "ip", "vm": "web"}]}, "public_ips"
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(PLAN_CASES))
def test_plan_refuses_what_a_customer_may_not_declare(offline, case):
    declaration, expected = PLAN_CASES[case]
    with pytest.raises(ApiError) as error:
        offline.plan("acme", declaration)
    assert error.value.status == 422
    assert error.value.fields[0][0] == expected


def test_the_catalogue_has_no_paths(offline, ledger_url, tmp_path):
    register_image(ledger_url, make_image(tmp_path / "base.qcow2"), name="base", zone="zone-a")
    [image] = offline.images()
    assert set(image) == {"zone", "name", "format", "virtual_size", "sha256"}
    with Ledger.open(ledger_url).store.read() as connection:
        assert connection.execute(sa.select(images.c.path)).scalar() == str(tmp_path / "base.qcow2")
    assert offline.zones() == ["zone-a", "zone-b", "zone-c"]


# -- on libvirt's test driver ----------------------------------------------------------------


@pytest.fixture
def connections(monkeypatch):
    yield from closing_connections(monkeypatch)


@pytest.fixture
def test_driver(connections, ledger_url, tmp_path) -> Resources:
    register(ledger_url, "acme")
    register(ledger_url, "other")
    add_host(ledger_url, "kvm1", "zone-a", private_host(tmp_path / "kvm1.xml"))
    return Resources(ledger_url)


def noted(progress: list[dict]):
    return progress.append


def test_a_network_put_read_put_again_and_deleted(test_driver, ledger_url):
    payload = test_driver.validate("acme", "networks", "lan", {"cidr": "10.20.0.0/24"})
    handlers = test_driver.handlers()
    progress: list[dict] = []
    with acting_as("api-a1-1", "api:vce_ci"):
        first = handlers["put"](payload, noted(progress))
    assert [c["action"] for c in first["plan"]][:1] == ["create"]
    assert first["object"]["cidr"] == "10.20.0.0/24"
    assert first["object"]["zone"] == "zone-a"
    assert progress == [{"step": "run", "zone": "zone-a"}]
    shown = test_driver.read("acme", "networks", "lan")
    assert "libvirt_name" not in shown and "bridge" not in shown  # the host's, not the tenant's
    with acting_as("api-a2-1", "api:vce_ci"):
        again = handlers["put"](payload, noted(progress))
    assert again["plan"] == []
    assert [n["name"] for n in test_driver.list("acme", "networks")] == ["lan"]
    with pytest.raises(ApiError) as error:
        test_driver.read("other", "networks", "lan")
    assert error.value.status == 404
    assert test_driver.list("other", "networks") == []
    with acting_as("api-a3-1", "api:vce_ci"):
        gone = handlers["delete"](
            {"tenant": "acme", "kind": "networks", "name": "lan", "zone": None}, noted(progress)
        )
    assert [c["action"] for c in gone["plan"]] == ["delete"]
    with pytest.raises(ApiError):
        test_driver.read("acme", "networks", "lan")
    with Ledger.open(ledger_url).store.read() as connection:
        rows = connection.execute(sa.select(runs).order_by(runs.c.id)).all()
    assert [(r.id, r.source, r.actor, r.result) for r in rows] == [
        ("api-a1-1", "api", "api:vce_ci", "ok"),
        ("api-a2-1", "api", "api:vce_ci", "ok"),
        ("api-a3-1", "api", "api:vce_ci", "ok"),
    ]
    detail = json.loads(rows[0].detail)
    assert (detail["tenant"], detail["action"], detail["attempt"]) == ("acme", "a1", 1)


def test_plan_is_the_environments_check_mode_plan(test_driver, ledger_url):
    declaration = {
        "networks": [{"name": "lan", "cidr": "10.30.0.0/24"}],
        "disks": [{"name": "data", "size_gib": 1, "pool": "default-pool"}],
    }
    shown = test_driver.plan("acme", declaration)
    engine = facade.run_environment(
        {
            "uri": test_driver.fleet.hosts()[0].uri,
            "tenant": "acme",
            "ledger_url": ledger_url,
            "zone": "zone-a",
            "image_dirs": [],
            **declaration,
        },
        check_mode=True,
    )
    assert shown == [change for change in engine.plan if change["kind"] != "firewall"]
    assert {c["name"] for c in shown} >= {"lan", "data"}
    assert test_driver.list("acme", "networks") == []
    assert test_driver.fleet.placed("acme") == []


def test_a_failed_run_is_recorded_failed_and_scrubbed(test_driver, ledger_url):
    payload = test_driver.validate("acme", "networks", "lan", {"cidr": "192.168.122.0/24"})
    with acting_as("api-b1-1", "api:vce_ci"), pytest.raises(Exception) as error:
        test_driver.handlers()["put"](payload, noted([]))
    assert "overlaps" in str(error.value)
    with Ledger.open(ledger_url).store.read() as connection:
        row = connection.execute(sa.select(runs).where(runs.c.id == "api-b1-1")).one()
    assert (row.source, row.result) == ("api", "failed")


def recorded_backup(ledger_url: str, tenant: str, key: str) -> None:
    ledger = Ledger.open(ledger_url)
    now = ledger.now()
    with ledger.store.locked(tenant) as connection:
        ledger.record_backup(
            connection, key, tenant=tenant, host="test:///nonexistent/kvm1.xml", vm="web",
            schedule="nightly", backup_id="20261201T000000Z", kind="full", status="ok",
            started_at=now, finished_at=now, duration_ms=5, size_bytes=1024,
        )  # fmt: skip


def test_backups_are_listed_and_restored_by_the_tenant_only(offline, ledger_url):
    recorded_backup(ledger_url, "acme", "a" * 40)
    [backup] = offline.backups("acme", "web")
    shown = backup_public_id("a" * 40)
    assert (backup["id"], backup["schedule"], backup["pruned"]) == (shown, "nightly", False)
    assert offline.backups("acme", "db") == []
    assert offline.backups("other") == []
    payload = offline.validate_restore("acme", shown, {"new_disk": "web-restored"})
    assert payload == {"tenant": "acme", "backup": shown, "new_disk": "web-restored",
                       "mode": "new_disk"}  # fmt: skip
    # Another tenant's backup, and the ledger's key (it names the host) are no backup's id.
    for tenant, backup_id in (("other", shown), ("acme", "a" * 40)):
        with pytest.raises(ApiError) as error:
            offline.validate_restore(tenant, backup_id, {"new_disk": "x"})
        assert error.value.status == 404
    for body, path in (
        ({"new_disk": "../x"}, "new_disk"),
        ({}, "new_disk"),
        ({"mode": "everywhere"}, "mode"),
        ({"new_disk": "x", "target": "/etc"}, "target"),
        ({"new_disk": "x", "pool": "/dev"}, "pool"),
        ({"mode": "in_place", "confirm": "yes"}, "confirm"),
        ([], "body"),
    ):
        with pytest.raises(ApiError) as error:
            offline.validate_restore("acme", shown, body)
        assert (error.value.status, error.value.fields[0][0]) == (422, path), body


def test_an_operators_block_is_checked_before_it_is_queued(test_driver):
    for args, path in (
        (("acme\n", "web", True, ""), "tenant"),
        (("acme", "../web", True, ""), "vm"),
        (("acme", "web", "yes", ""), "blocked"),
        (("acme", "web", True, "abuse\x1b[2J"), "reason"),
    ):
        with pytest.raises(ApiError) as error:
            test_driver.validate_block(*args)
        assert (error.value.status, error.value.fields[0][0]) == (422, path)
    with pytest.raises(ApiError) as error:
        test_driver.validate_block("acme", "web", True, "abuse")
    assert error.value.status == 404
