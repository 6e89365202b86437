"""Where a tenant's objects live (zones, placements kept in the ledger) and the scrubbing of
host details from what customers see, on real engine messages."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError, VceError
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import hosts, placements
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from vce_server.service.fleet import Fleet, scrubbed

from tests.support.host_records import add_host, closing_connections
from tests.support.ledger import register

SSH = ["ssh", "-o", "BatchMode=yes", "root@kvm2.dc1.example"]


def fleet_of(url: str) -> Fleet:
    return Fleet(Ledger.open(url, create=True))


@pytest.fixture
def two_zones(ledger_url: str) -> Fleet:
    add_host(ledger_url, "kvm1", "zone-a", "qemu:///system")
    add_host(ledger_url, "kvm2", "zone-a", "qemu+ssh://root@kvm2.dc1.example/system", SSH)
    add_host(ledger_url, "kvm3", "zone-b", "qemu+tcp://10.0.0.3/system")
    return fleet_of(ledger_url)


def placement_rows(fleet: Fleet) -> list[tuple[str, str, str]]:
    with fleet.ledger.store.read() as connection:
        rows = connection.execute(sa.select(placements).order_by(placements.c.tenant)).all()
    return [(r.tenant, r.zone, r.host) for r in rows]


def test_zones_are_the_distinct_zones_of_the_hosts(two_zones):
    assert two_zones.zones() == ["zone-a", "zone-b"]


def test_placement_takes_the_least_placed_host_then_the_name_and_keeps_it(two_zones):
    assert two_zones.place("acme", "zone-a").name == "kvm1"
    assert two_zones.place("beta", "zone-a").name == "kvm2"
    assert two_zones.place("gamma", "zone-a").name == "kvm1"
    # kvm1 holds two tenants now; acme stays where its objects are.
    assert two_zones.place("acme", "zone-a").name == "kvm1"
    assert two_zones.place("acme", "zone-b").name == "kvm3"
    assert placement_rows(two_zones) == [
        ("acme", "zone-a", "kvm1"),
        ("acme", "zone-b", "kvm3"),
        ("beta", "zone-a", "kvm2"),
        ("gamma", "zone-a", "kvm1"),
    ]


def test_where_places_nothing_and_preview_records_nothing(two_zones):
    assert two_zones.where("acme", "zone-a") is None
    assert two_zones.preview("acme", "zone-a").name == "kvm1"
    assert placement_rows(two_zones) == []
    placed = two_zones.place("acme", "zone-a")
    assert two_zones.where("acme", "zone-a") == placed
    assert two_zones.placed("acme") == [placed]


def test_a_zone_must_be_named_when_there_are_several(two_zones):
    with pytest.raises(SpecError) as error:
        two_zones.place("acme", None, "zones[0]")
    assert error.value.field == "zones[0]"
    assert "zone-a, zone-b" in error.value.reason


def test_an_unknown_zone_is_refused_on_its_path(two_zones):
    for zone in ("zone-c", "", 5, "zone-a\n"):
        with pytest.raises(SpecError) as error:
            two_zones.place("acme", zone)
        assert error.value.field == "zone"
        assert "unknown zone" in error.value.reason
    assert placement_rows(two_zones) == []


def test_the_only_zone_is_taken_when_none_is_named(ledger_url):
    add_host(ledger_url, "kvm1", "zone-a", "qemu:///system")
    assert fleet_of(ledger_url).place("acme", None).zone == "zone-a"


def test_no_host_at_all_is_refused_on_the_zone(ledger_url):
    with pytest.raises(SpecError) as error:
        fleet_of(ledger_url).place("acme", None)
    assert error.value.field == "zone"


def test_a_removed_host_is_not_replaced_silently(two_zones):
    two_zones.place("acme", "zone-b")
    with two_zones.ledger.store.write() as connection:
        connection.execute(sa.text("DELETE FROM hosts WHERE name = 'kvm3'"))
    add_host(str(two_zones.ledger.store.url), "kvm4", "zone-b", "qemu:///session")
    with pytest.raises(VceError, match="not available"):
        two_zones.where("acme", "zone-b")


def test_concurrent_placements_of_one_tenant_give_one_host(any_ledger_url):
    add_host(any_ledger_url, "kvm1", "zone-a", "qemu:///system")
    add_host(any_ledger_url, "kvm2", "zone-a", "qemu:///session")
    fleet = fleet_of(any_ledger_url)
    fleet.place("other", "zone-a")  # kvm1 has one tenant: both hosts are plausible choices
    barrier = threading.Barrier(2)
    chosen, failures = [], []

    def place() -> None:
        try:
            barrier.wait(timeout=10)
            chosen.append(fleet.place("acme", "zone-a").name)
        except Exception as error:  # reported below
            failures.append(error)

    threads = [threading.Thread(target=place) for _thread in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not failures
    assert chosen == ["kvm2", "kvm2"]
    assert [row for row in placement_rows(fleet) if row[0] == "acme"] == [
        ("acme", "zone-a", "kvm2")
    ]


# -- scrubbing -----------------------------------------------------------------------------


def test_scrub_replaces_uris_commands_host_names_and_paths(two_zones):
    text = (
        "Failed to connect to qemu+ssh://root@kvm2.dc1.example/system via "
        "ssh -o BatchMode=yes root@kvm2.dc1.example; ran ['ssh', '-o', 'BatchMode=yes', "
        "'root@kvm2.dc1.example']: host kvm2.dc1.example said no for "
        "/var/lib/libvirt/images/acme_web.qcow2 and '/etc/vce-kvm/backup/x.json' "
        "(qemu+tcp://10.0.0.3/system, qemu:///system)"
    )
    shown = two_zones.scrub(text)
    for secret in ("kvm2", "ssh", "root@", "qemu", "/var/", "/etc/", "10.0.0.3"):
        assert secret not in shown
    assert shown == (
        "Failed to connect to zone zone-a via zone zone-a; ran zone zone-a: host zone zone-a "
        "said no for <host path> and '<host path>' (zone zone-b, zone zone-a)"
    )


def test_scrub_of_a_host_reached_through_the_servers_own_ssh(ledger_url):
    # The server's ssh wrapper (its key, its pinned known_hosts) and a host alias of its
    # ssh_config that the URI does not name.
    wrapper = "/var/lib/vce-serve/ssh/ssh"
    uri = f"qemu+ssh://root@10.30.0.11/system?socket=/run/libvirt/libvirt-sock&command={wrapper}"
    add_host(ledger_url, "kvm7", "zone-c", uri, [wrapper, "kvm7-mgmt"])
    text = (
        f"Failed to connect to libvirt at {uri}: Cannot recv data: ssh: connect to host "
        f"10.30.0.11 port 22: Connection refused; {wrapper} kvm7-mgmt 'nft list ruleset' "
        "exited 255: ssh: Could not resolve hostname kvm7-mgmt; keyfile=/var/lib/vce-serve/"
        "ssh/id_ed25519"
    )
    shown = fleet_of(ledger_url).scrub(text)
    for secret in ("10.30.0.11", "kvm7", "vce-serve", "id_ed25519", "qemu+ssh", "command="):
        assert secret not in shown
    assert shown == (
        "Failed to connect to libvirt at zone zone-c: Cannot recv data: ssh: connect to host "
        "zone zone-c port 22: Connection refused; zone zone-c 'nft list ruleset' exited 255: "
        "ssh: Could not resolve hostname zone zone-c; keyfile=<host path>"
    )


def test_scrub_keeps_addresses_cidrs_names_and_the_apis_own_paths(two_zones):
    text = (
        "cidr: 10.20.0.0/24 overlaps 192.168.122.0/24 of network lan on kvm10; "
        "POST /v1/requests with kind quota_increase; read/write at 3/4"
    )
    assert two_zones.scrub(text) == text


def test_scrubbed_reaches_every_string_of_a_plan(two_zones):
    plan = [{"kind": "disk", "after": {"path": "/srv/pool/acme_d.qcow2", "size": 2}}]
    assert scrubbed(plan, two_zones.scrub) == [
        {"kind": "disk", "after": {"path": "<host path>", "size": 2}}
    ]


@pytest.fixture
def connections(monkeypatch):
    yield from closing_connections(monkeypatch)


@pytest.fixture
def test_driver(connections, ledger_url):
    register(ledger_url, "acme")
    return ledger_url


def engine_message(params: dict) -> str:
    with pytest.raises(VceError) as error:
        facade.run_network(params, check_mode=True)
    return str(error.value)


def test_scrub_of_a_refused_cidr_overlap(test_driver):
    add_host(test_driver, "kvm1", "zone-a", "test:///default")
    params = {"uri": "test:///default", "tenant": "acme", "ledger_url": test_driver,
              "name": "lan", "cidr": "192.168.122.0/24"}  # fmt: skip
    shown = fleet_of(test_driver).scrub(engine_message(params))
    assert shown.startswith("cidr: 192.168.122.0/24 overlaps a network already in use")


def test_scrub_of_a_libvirt_failure_naming_the_uri_and_a_path(test_driver, tmp_path):
    uri = f"test://{tmp_path}/missing/host.xml"
    add_host(test_driver, "kvm1", "zone-a", uri)
    params = {"uri": uri, "tenant": "acme", "ledger_url": test_driver, "name": "lan",
              "cidr": "10.9.0.0/24"}  # fmt: skip
    message = engine_message(params)
    assert str(tmp_path) in message
    shown = fleet_of(test_driver).scrub(message)
    assert str(tmp_path) not in shown
    assert "test:" not in shown
    assert "zone zone-a" in shown


def test_scrub_of_a_missing_image(test_driver):
    add_host(test_driver, "kvm1", "zone-a", "test:///default")
    params = {"uri": "test:///default", "tenant": "acme", "ledger_url": test_driver,
              "name": "web", "memory_mib": 128, "zone": "zone-a", "image_dirs": [],
              "boot_disk": {"image": "nope", "size_gib": 1, "pool": "default-pool"}}  # fmt: skip
    with pytest.raises(VceError) as error:
        facade.run_vm(params, check_mode=True)
    shown = fleet_of(test_driver).scrub(str(error.value))
    assert "nope" in shown
    assert "test:///default" not in shown
    assert "/" not in shown.replace("<host path>", "")


def test_a_placement_whose_host_record_was_removed_is_refused_not_moved(two_zones):
    two_zones.place("acme", "zone-a")
    with two_zones.ledger.store.write() as connection:
        connection.execute(sa.delete(hosts).where(hosts.c.name == "kvm1"))
    for read in (two_zones.preview, two_zones.where):
        with pytest.raises(VceError, match="host in zone zone-a is not available"):
            read("acme", "zone-a")
    # Another tenant is placed on the host that is left.
    assert two_zones.preview("beta", "zone-a").name == "kvm2"
