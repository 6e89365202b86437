"""A VM's move between two hosts of a zone, planned on libvirt's test driver: bad declarations
and every refusal name their field and change nothing; a VM on the destination already is left
as it is; a drain's window is checked before anything moves. (Moves themselves run on real
hosts: tests/multihost/test_migration.py.)"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import time

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import (
    SpecError,
    VceError,
    libvirt,
)
from ansible_collections.vce.kvm.plugins.module_utils.core.zones import Underlay
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.drain import (
    Peer,
    network_groups,
    parse_drain,
    run_drain,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.migration import (
    ArrivalWatch,
    MigrationPlanner,
    live_flags,
    parse_migration,
    run_migration,
    undefine_flags,
)
from ansible_collections.vce.kvm.plugins.module_utils.host.connection import Host, TenantInventory
from ansible_collections.vce.kvm.plugins.module_utils.host.ownership import Owner
from ansible_collections.vce.kvm.plugins.module_utils.host.xml import DomainState, NicDevice
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import exclusions, placements
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.support.images import make_image
from tests.support.kvm_hosts import host_file

from .conftest import URI

OTHER = "qemu+ssh://root@kvm2/system"
MOVE = {"uri": URI, "tenant": "acme", "name": "web1", "zone": "zone-a",
        "destination": {"uri": OTHER, "zone": "zone-a"}}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"destination": {"uri": OTHER, "zone": "zone-b"}}, "destination.zone"),
        ({"destination": {"uri": URI, "zone": "zone-a"}}, "destination.uri"),
        ({"destination": {"zone": "zone-a"}}, "destination.uri"),
        ({"destination": "kvm2"}, "destination"),
        ({"name": "Web 1"}, "name"),
        ({"zone": None}, "zone"),
    ],
)
def test_a_bad_declaration_names_its_field(change, field):
    with pytest.raises(SpecError) as raised:
        parse_migration({**MOVE, **change})
    assert raised.value.field == field


def declare_vm(tmp_path, name: str, network: str, ip: str) -> None:
    """acme's stopped VM `name` on the test host, its NIC on `network` (a /24 holding `ip`),
    declared with only that network and VM: what else acme has stays."""
    image = str(make_image(tmp_path / f"{name}.qcow2"))
    cidr = ip.rsplit(".", 1)[0] + ".0/24"
    facade.run_environment(
        {"uri": URI, "tenant": "acme", "default_pool": "default-pool",
         "networks": [{"name": network, "cidr": cidr, "mode": "isolated"}],
         "vms": [{"name": name, "memory_mib": 128, "state": "stopped",
                  "boot_disk": {"image": image, "size_gib": 1},
                  "nics": [{"network": network, "ip": ip}]}]}
    )  # fmt: skip


@pytest.fixture
def placed(acme, test_host, tmp_path):
    """acme's web1 (stopped) on network lan of the test host: (planner, here, there), `there`
    an empty destination with the same pools and network lan."""
    declare_vm(tmp_path, "web1", "lan", "10.30.0.10")
    here = test_host.inventory("acme")
    there = TenantInventory("acme", pools=dict(here.pools))
    there.networks = {"acme_lan": dataclasses.replace(here.networks["acme_lan"], hosts={})}
    planner = MigrationPlanner(test_host, test_host, "acme", Ledger.open(acme))
    return planner, here, there


def test_the_move_is_one_change_of_the_vms_host(placed):
    planner, here, there = placed
    plan = planner.plan("web1", here, there)
    [change] = plan.to_list()
    assert (change["kind"], change["name"], change["action"], change["field"]) == (
        "vm", "web1", "migrate", "host"
    )  # fmt: skip
    assert plan.warnings == []


def test_a_vm_on_the_destination_already_is_left_as_it_is(placed):
    planner, here, _there = placed
    arrived = TenantInventory("acme", domains=dict(here.domains))
    assert planner.plan("web1", TenantInventory("acme"), arrived).changes == []


def refusal(planner, here, there, name="web1") -> SpecError:
    with pytest.raises(SpecError) as raised:
        planner.plan(name, here, there)
    return raised.value


def test_refusals_name_the_field(placed):
    planner, here, there = placed
    assert refusal(planner, here, there, "ghost").field == "name"
    assert refusal(planner, here, here).field == "name"  # on both hosts

    without_network = copy.copy(there)
    without_network.networks = {}
    found = refusal(planner, here, without_network)
    assert found.field == "destination.uri" and "network 'lan'" in found.reason

    without_pool = copy.copy(there)
    without_pool.pools = {}
    assert "storage pool 'default-pool'" in refusal(planner, here, without_pool).reason

    leftover = copy.copy(there)
    leftover.volumes = dict(here.volumes)
    assert "exists in pool" in refusal(planner, here, leftover).reason

    taken = copy.copy(there)
    net = there.networks["acme_lan"]
    [mine] = here.networks["acme_lan"].hosts.values()
    other = dataclasses.replace(mine, mac="52:54:00:99:99:99")
    taken.networks = {"acme_lan": dataclasses.replace(net, hosts={other.mac: other})}
    assert f"leased to {other.mac}" in refusal(planner, here, taken).reason

    wider = copy.copy(there)
    wider.networks = {"acme_lan": dataclasses.replace(net, cidr=net.cidr.supernet())}
    assert "lose its address" in refusal(planner, here, wider).reason


def test_a_gateway_with_another_mac_there_is_warned_about(placed):
    planner, here, there = placed
    net = there.networks["acme_lan"]
    there.networks = {"acme_lan": dataclasses.replace(net, mac="52:54:00:aa:bb:cc")}
    [warning] = planner.plan("web1", here, there).warnings
    assert "another gateway MAC" in warning


NOW = dt.datetime(2026, 12, 4, 12, tzinfo=dt.UTC)
DRAIN = {
    "uri": URI,
    "zone": "zone-a",
    "peers": [{"uri": OTHER, "zone": "zone-a"}, {"uri": "qemu+ssh://kvm9/system", "zone": "zone-b"},
              {"uri": URI, "zone": "zone-a"}],
    "maintenance": {"announced_at": "2026-12-01T09:00:00+00:00", "ends_at": "2026-12-04T18:00:00Z"},
}  # fmt: skip


def test_a_drain_takes_the_zones_other_hosts_and_an_announced_window():
    spec = parse_drain(DRAIN, NOW)
    assert spec.peers == (Peer(OTHER),)
    assert spec.window.starts_at == NOW and spec.window.ends_at.hour == 18
    assert spec.public_zone is None


def test_a_drain_takes_what_public_ips_and_zone_links_need_of_each_peer():
    peer = {"uri": OTHER, "zone": "zone-a", "host_command": ["ssh", "root@kvm2"],
            "underlay_ip": "172.31.0.12", "underlay_dev": "ul0"}  # fmt: skip
    zone = {"uplink": "up0", "public_pools": [{"name": "pub", "cidr": "203.0.113.64/27",
                                               "gateway": "203.0.113.65"}]}  # fmt: skip
    spec = parse_drain({**DRAIN, "peers": [peer], "zone_config": zone,
                        "host_command": ["ssh", "root@kvm1"]}, NOW)  # fmt: skip
    assert spec.peers == (Peer(OTHER, ("ssh", "root@kvm2"), Underlay("172.31.0.12", "ul0")),)
    assert spec.public_zone.uplink == "up0" and spec.host_command == ("ssh", "root@kvm1")
    with pytest.raises(SpecError) as raised:
        parse_drain({**DRAIN, "peers": [{**peer, "underlay_dev": None}]}, NOW)
    assert raised.value.field == "peers[0].underlay_dev"


@pytest.mark.parametrize(
    ("destination", "field"),
    [
        ({"underlay_ip": "172.31.0.300", "underlay_dev": "ul0"}, "destination.underlay_ip"),
        ({"underlay_ip": "172.31.0.12"}, "destination.underlay_dev"),
        ({"underlay_dev": "ul0"}, "destination.underlay_ip"),
        ({"underlay_ip": "172.31.0.12", "underlay_dev": "ul0; reboot"}, "destination.underlay_dev"),
    ],
)
def test_a_bad_underlay_of_the_destination_names_its_field(destination, field):
    with pytest.raises(SpecError) as raised:
        parse_migration({**MOVE, "destination": {**MOVE["destination"], **destination}})
    assert raised.value.field == field


def domain(name: str, *networks: str) -> DomainState:
    nics = [NicDevice(f"52:54:00:00:00:{i:02x}", network) for i, network in enumerate(networks)]
    owner = Owner("acme", "vm", name.removeprefix("acme_"))
    return DomainState(name, owner, "shutoff", False, 1, 1, 128, 128, [], nics)


def test_a_drain_moves_the_vms_of_a_network_together():
    found = TenantInventory("acme")
    found.domains = {d.name: d for d in (
        domain("acme_db", "acme_back"), domain("acme_web", "acme_front"), domain("acme_cache"),
        domain("acme_api", "acme_front", "acme_back"), domain("acme_solo", "acme_other"),
    )}  # fmt: skip
    groups = [[d.name for d in group] for group in network_groups(found)]
    assert groups == [["acme_api", "acme_db", "acme_web"], ["acme_cache"], ["acme_solo"]]


def test_a_vm_leaving_others_of_its_network_behind_is_warned_about(placed, acme, tmp_path):
    planner, _here, there = placed
    declare_vm(tmp_path, "db1", "lan", "10.30.0.11")
    here = planner.source.inventory("acme")
    [warning] = planner.plan("web1", here, there).warnings
    assert "leaves db1 on network lan" in warning and "not joined" in warning
    assert planner.plan("web1", here, there, ["web1", "db1"]).warnings == []


@pytest.mark.parametrize(
    ("window", "field"),
    [
        ({"ends_at": "2026-12-04T18:00:00Z"}, "maintenance.announced_at"),
        ({"announced_at": "2026-12-05T09:00:00Z", "ends_at": "2026-12-06T18:00:00Z"},
         "maintenance.announced_at"),
        ({"announced_at": "2026-12-01T09:00:00Z"}, "maintenance.ends_at"),
        ({"announced_at": "2026-12-01T09:00:00Z", "ends_at": "2026-12-04T11:00:00Z"},
         "maintenance.ends_at"),
        ({"announced_at": "yesterday", "ends_at": "2026-12-04T18:00:00Z"},
         "maintenance.announced_at"),
    ],
)  # fmt: skip
def test_a_drain_without_an_announced_window_is_refused(window, field):
    with pytest.raises(SpecError) as raised:
        parse_drain({**DRAIN, "maintenance": window}, NOW)
    assert raised.value.field == field


@pytest.fixture
def destination(tmp_path) -> str:
    """Another test-driver host of zone-a with acme's network lan (empty) and the same pool."""
    network = {"name": "lan", "cidr": "10.30.0.0/24", "mode": "isolated"}
    return host_file(tmp_path / "kvm2.xml", "acme", [network], bridge="virbr7")


def move_params(acme: str, destination: str) -> dict:
    return {**MOVE, "ledger_url": acme, "destination": {"uri": destination, "zone": "zone-a"}}


def test_check_mode_plans_the_move_and_changes_nothing(placed, acme, destination):
    result = run_migration(move_params(acme, destination), check_mode=True)
    assert result.changed
    facts = result.facts["migration"]
    assert (facts["host"], facts["destination"], facts["wall_seconds"]) == (URI, destination, None)
    assert "acme_web1" in [d.name() for d in Host(URI).conn.listAllDomains()]
    assert Host(destination).inventory("acme").domains == {}


def test_a_move_that_fails_on_the_way_leaves_nothing_on_the_destination(placed, acme, destination):
    # The test driver cannot stream a volume: the cold move fails after the destination's
    # copies were made, and they go again.
    with pytest.raises(VceError) as raised:
        run_migration(move_params(acme, destination))
    assert "the VM stays on test:///default" in str(raised.value)
    there = Host(destination).inventory("acme")
    assert there.domains == {} and there.volumes == {}
    assert "acme_web1" in [d.name() for d in Host(URI).conn.listAllDomains()]


def wait_for(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_the_arrival_watch_fires_once_the_domain_runs_there_and_keeps_its_error(test_host):
    fired: list[str] = []
    watch = ArrivalWatch(test_host.conn, "test", lambda: fired.append("test"))  # running
    watch.start()
    assert wait_for(lambda: not watch.is_alive())
    watch.stop()
    assert fired == ["test"] and watch.error is None

    failing = ArrivalWatch(test_host.conn, "test", lambda: 1 / 0)
    failing.start()
    assert wait_for(lambda: not failing.is_alive())
    assert isinstance(failing.error, ZeroDivisionError)

    absent = ArrivalWatch(test_host.conn, "ghost", lambda: fired.append("ghost"))
    absent.start()
    absent.stop()
    assert not absent.is_alive() and fired == ["test"]
    assert live_flags() & libvirt.VIR_MIGRATE_LIVE and undefine_flags() >= 0


def test_a_drain_in_check_mode_plans_moves_and_windows_and_changes_nothing(
    placed, acme, destination, tmp_path
):
    declare_vm(tmp_path, "db1", "back", "10.31.0.10")
    window = {"announced_at": "2026-12-01T09:00:00Z", "ends_at": "2099-12-01T09:00:00Z"}
    params = {**DRAIN, "ledger_url": acme, "peers": [{"uri": destination, "zone": "zone-a"}],
              "maintenance": window}  # fmt: skip
    result = run_drain(params, check_mode=True)
    assert result.changed
    planned = [(c["kind"], c["name"], c["action"]) for c in result.plan]
    assert planned == [("maintenance", "acme/db1", "record"), ("vm", "acme/web1", "migrate")]
    drained = result.facts["drain"]
    assert drained["moved"] == [{"tenant": "acme", "vm": "web1", "destination": destination}]
    [stayed] = drained["stayed"]
    assert stayed["vm"] == "db1" and "network 'back'" in stayed["reason"]
    # Nothing moved, nothing recorded.
    assert {"acme_web1", "acme_db1"} <= {d.name() for d in Host(URI).conn.listAllDomains()}
    assert Host(destination).inventory("acme").domains == {}
    with Ledger.open(acme).store.read() as connection:
        assert connection.execute(sa.select(exclusions)).all() == []


def test_a_tenant_the_control_plane_placed_does_not_move(placed, acme, destination):
    with Ledger.open(acme).store.locked("acme") as connection:
        connection.execute(
            sa.insert(placements).values(
                tenant="acme", zone="zone-a", host="kvm1", placed_at=dt.datetime.now(dt.UTC)
            )
        )
    with pytest.raises(SpecError) as raised:
        run_migration(move_params(acme, destination), check_mode=True)
    assert raised.value.field == "tenant" and "host kvm1" in raised.value.reason
