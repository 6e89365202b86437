"""The resources service's kinds that need the zone's settings from the host record: public
IPs (the zone's uplink and pools) and backup schedules (the host's backup directories), on
libvirt's test driver with a stand-in host for nft, ip and systemctl behind the record's host
command."""

from __future__ import annotations

import datetime as dt
import os
import sys

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import VceError
from ansible_collections.vce.kvm.plugins.module_utils.host import connection as host_connection
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger, acting_as
from ansible_collections.vce.kvm.plugins.module_utils.runner.repo import (
    MANIFEST,
    DiskFile,
    Manifest,
    ScheduleRepo,
    write_json_atomically,
)
from vce_server.actions import ActionQueue
from vce_server.errors import ApiError
from vce_server.principal import Principal
from vce_server.service.resources import Resources, backup_public_id
from vce_server.settings import Settings

from tests.support.host_records import add_host, closing_connections, private_host
from tests.support.images import make_image, register_image
from tests.support.kvm_hosts import host_file
from tests.support.ledger import register
from tests.support.standin_host import StandInHost

POOLS = [{"name": "pub-a", "cidr": "203.0.113.64/29", "gateway": "203.0.113.65"}]
VM = {
    "memory_mib": 128,
    "boot_disk": {"image": "base", "size_gib": 1, "pool": "default-pool"},
    "nics": [{"network": "lan", "ip": "10.20.0.10"}],
}


@pytest.fixture
def connections(monkeypatch):
    yield from closing_connections(monkeypatch)


@pytest.fixture
def zone(tmp_path, monkeypatch, connections, ledger_url) -> Resources:
    """Zone-a's one host: the test driver, reached through a stand-in host's command."""
    # The host's python3 (backup schedule files): this interpreter, without site start-up.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')
    (bin_dir / "python3").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    runner = tmp_path / "vce-backup"
    runner.write_text("#!/bin/sh\nexit 0\n")
    runner.chmod(0o755)
    settings = {"backup_root": str(tmp_path / "backups"), "unit_dir": str(tmp_path / "units"),
                "config_dir": str(tmp_path / "config"), "runner": str(runner)}  # fmt: skip
    host = StandInHost(tmp_path / "kvm", {"up0": 1500})
    register(ledger_url, "acme")
    register(ledger_url, "other")
    uri = private_host(tmp_path / "kvm1.xml")
    add_host(ledger_url, "kvm1", "zone-a", uri, host.prefix, "up0", POOLS, settings)
    register_image(ledger_url, make_image(tmp_path / "base.qcow2"), name="base", zone="zone-a")
    return Resources(ledger_url)


def put(resources: Resources, kind: str, name: str, body: dict, tenant: str = "acme") -> dict:
    payload = resources.validate(tenant, kind, name, body)
    with acting_as("api-z-1", "api:vce_test"):
        return resources.handlers()["put"](payload, lambda _progress: None)


def delete(resources: Resources, kind: str, name: str) -> dict:
    payload = {"tenant": "acme", "kind": kind, "name": name, "zone": None}
    with acting_as("api-z-2", "api:vce_test"):
        return resources.handlers()["delete"](payload, lambda _progress: None)


def with_vm(resources: Resources) -> None:
    put(resources, "networks", "lan", {"cidr": "10.20.0.0/24", "mode": "routed"})
    put(resources, "vms", "web", VM)


def test_a_public_ip_from_the_zones_pools(zone):
    with_vm(zone)
    made = put(zone, "public_ips", "www", {"vm": "web"})
    assert made["object"]["address"] == "203.0.113.66"
    assert made["object"]["private_ip"] == "10.20.0.10"
    assert put(zone, "public_ips", "www", {"vm": "web"})["plan"] == []
    assert [ip["name"] for ip in zone.list("acme", "public_ips")] == ["www"]
    with pytest.raises(ApiError) as error:
        zone.read("other", "public_ips", "www")
    assert error.value.status == 404
    released = delete(zone, "public_ips", "www")["plan"]
    assert {c["action"] for c in released} >= {"release"}, released
    with pytest.raises(ApiError):
        zone.read("acme", "public_ips", "www")
    assert zone.list("acme", "public_ips") == []


def test_a_backup_schedule_on_the_hosts_directories(zone, tmp_path):
    with_vm(zone)
    schedule = {"vm": "web", "calendar": "daily", "retention": {"keep_daily": 7}}
    made = put(zone, "backup_schedules", "nightly", schedule)
    assert made["plan"][0]["after"]["target"] == "<host path>"
    assert str(tmp_path) not in str(made)
    assert made["object"]["timer"].endswith(".timer")
    assert (tmp_path / "units").exists()
    assert put(zone, "backup_schedules", "nightly", schedule)["plan"] == []
    assert zone.read("acme", "backup_schedules", "nightly")["vm"] == "web"
    put(zone, "vms", "db", {**VM, "nics": []})
    with pytest.raises(ApiError) as error:
        put(zone, "backup_schedules", "nightly", {**schedule, "vm": "db"})
    assert (error.value.status, error.value.code) == (409, "conflict")
    with pytest.raises(ApiError):
        zone.read("other", "backup_schedules", "nightly")
    assert [c["action"] for c in delete(zone, "backup_schedules", "nightly")["plan"]] == ["delete"]
    assert zone.list("acme", "backup_schedules") == []


def test_a_schedule_declared_with_purge_backups_takes_its_backups_with_it(zone, ledger_url):
    """A DELETE has no body: whether the backups go is the schedule's last declaration's, as
    the action queue recorded it."""
    with_vm(zone)
    queue = ActionQueue(Ledger.open(ledger_url), Settings(ledger_url=ledger_url), zone.scrub)
    for kind, handler in zone.handlers().items():
        queue.register(kind, handler)
    who = Principal("vce_0000test", "user-acme", "customer", "acme", frozenset({"write"}))
    schedule = {"vm": "web", "calendar": "daily", "retention": {"keep_daily": 7}}
    queue.start()
    try:
        for kind, payload in (
            ("put", zone.validate("acme", "backup_schedules", "nightly",
                                  {**schedule, "purge_backups": True})),
            ("delete", {"tenant": "acme", "kind": "backup_schedules", "name": "nightly",
                        "zone": None}),
        ):  # fmt: skip
            action, _new = queue.submit(who, kind, "backup_schedules/nightly", payload)
            done = queue.wait(action["id"], "acme", 30)
            assert done["status"] == "succeeded", done
    finally:
        queue.stop(10.0)
    assert [c["action"] for c in done["result"]["plan"]] == ["delete", "purge"]


def test_a_refusal_of_the_run_has_the_engines_field_path(zone):
    payload = zone.validate("acme", "vms", "web", VM)
    with acting_as("api-z-3", "api:vce_test"), pytest.raises(Exception) as error:
        zone.handlers()["put"](payload, lambda _progress: None)
    answer = zone.refusal(error.value)
    assert (answer.status, answer.fields[0][0]) == (422, "nics[0].network")
    assert "unknown network 'lan'" in answer.message


def test_a_zone_link_between_the_tenants_hosts_of_two_zones(tmp_path, connections, ledger_url):
    register(ledger_url, "acme")
    register(ledger_url, "other")
    lan = {"name": "lan", "cidr": "10.30.0.0/24"}
    halves = {"zone-a": {**lan, "gateway": "10.30.0.1", "dhcp_start": "10.30.0.10",
                         "dhcp_end": "10.30.0.99"},
              "zone-b": {**lan, "gateway": "10.30.0.2", "dhcp_start": "10.30.0.100",
                         "dhcp_end": "10.30.0.199"}}  # fmt: skip
    for i, (zone_name, half) in enumerate(halves.items()):
        uri = host_file(tmp_path / f"kvm-{i}.xml", "acme", [half], f"virbr{5 * i + 1}")
        shell = StandInHost(tmp_path / f"shell-{i}", {"ul0": 1600})
        underlay = {"underlay_ip": f"192.0.2.{i + 1}", "underlay_dev": "ul0"}
        add_host(ledger_url, f"kvm{i}", zone_name, uri, shell.prefix, settings=underlay)
    resources = Resources(ledger_url)
    for zone_name in halves:
        resources.fleet.place("acme", zone_name)
    body = {"network": "lan", "zones": ["zone-a", "zone-b"]}
    made = put(resources, "zone_links", "stretch", body)
    assert made["object"]["network"] == "lan"
    assert made["object"]["zones"] == ["zone-a", "zone-b"]
    assert "ends" not in made["object"]
    assert str(tmp_path) not in str(made)
    assert put(resources, "zone_links", "stretch", body)["plan"] == []
    assert [link["name"] for link in resources.list("acme", "zone_links")] == ["stretch"]
    with pytest.raises(ApiError) as error:
        resources.read("other", "zone_links", "stretch")
    assert error.value.status == 404
    assert delete(resources, "zone_links", "stretch")["plan"]
    assert resources.list("acme", "zone_links") == []


def test_a_backup_restored_as_a_new_disk_once_per_action(tmp_path, connections, ledger_url):
    pool, root = tmp_path / "pool", tmp_path / "backups"
    pool.mkdir()
    register(ledger_url, "acme")
    register(ledger_url, "other")
    uri = host_file(tmp_path / "kvm.xml", "acme", [], pool_path=str(pool))
    add_host(ledger_url, "kvm1", "zone-a", uri, settings={"backup_root": str(root)})
    register_image(ledger_url, make_image(tmp_path / "base.qcow2"), name="base", zone="zone-a")
    resources = Resources(ledger_url)
    put(resources, "vms", "web", {**VM, "nics": []})
    taken = "20261124T023000Z"
    repo = ScheduleRepo(root, "acme", "web", "nightly")
    repo.path(taken).mkdir(parents=True)
    make_image(repo.path(taken) / "vda.qcow2")
    moment = dt.datetime(2026, 11, 24, 2, 30, tzinfo=dt.UTC)
    files = [DiskFile("boot", "vda", "vda.qcow2", 1024 * 1024)]
    manifest = Manifest(taken, "acme", "web", "nightly", "copy", moment, files)
    write_json_atomically(repo.path(taken) / MANIFEST, manifest.as_dict())
    ledger = Ledger.open(ledger_url)
    with ledger.store.locked("acme") as connection:
        ledger.record_backup(
            connection, "k" * 40, tenant="acme", host=uri, vm="web", schedule="nightly",
            backup_id=taken, kind="copy", status="ok", started_at=moment, finished_at=moment,
            duration_ms=1, size_bytes=1024,
        )  # fmt: skip
    shown = backup_public_id("k" * 40)
    payload = resources.validate_restore("acme", shown, {"new_disk": "restored"})
    with acting_as("api-r1-1", "api:vce_test"):
        first = resources.handlers()["restore"](payload, lambda _progress: None)
    assert [(c["name"], c["action"]) for c in first["plan"]] == [("restored", "restore")]
    assert first["plan"][0]["after"]["backup"] == taken
    assert (pool / "acme_restored.qcow2").exists()
    # What a real pool's refresh finds; the test driver does not look at the directory.
    libvirt_pool = host_connection.connect(uri).storagePoolLookupByName("default-pool")
    libvirt_pool.createXML(
        "<volume><name>acme_restored.qcow2</name><capacity>1048576</capacity>"
        "<target><format type='qcow2'/></target></volume>",
        0,
    )
    with acting_as("api-r1-2", "api:vce_test"):
        again = resources.handlers()["restore"](payload, lambda _progress: None)
    assert again["plan"] == []
    # Another action is another restore: refused, the name is taken now.
    with acting_as("api-r2-1", "api:vce_test"), pytest.raises(VceError, match="already has"):
        resources.handlers()["restore"](payload, lambda _progress: None)
    with pytest.raises(ApiError) as error:
        resources.validate_restore("other", shown, {"new_disk": "mine"})
    assert error.value.status == 404
