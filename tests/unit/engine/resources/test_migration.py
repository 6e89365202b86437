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
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import (
    SpecError,
    VceError,
    libvirt,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.drain import parse_drain
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.migration import (
    ArrivalWatch,
    MigrationPlanner,
    live_flags,
    parse_migration,
    run_migration,
    undefine_flags,
)
from ansible_collections.vce.kvm.plugins.module_utils.host.connection import Host, TenantInventory
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


@pytest.fixture
def placed(acme, test_host, tmp_path):
    """acme's web1 (stopped) on network lan of the test host: (planner, here, there), `there`
    an empty destination with the same pools and network lan."""
    image = str(make_image(tmp_path / "base.qcow2"))
    facade.run_environment(
        {
            "uri": URI,
            "tenant": "acme",
            "default_pool": "default-pool",
            "networks": [{"name": "lan", "cidr": "10.30.0.0/24", "mode": "isolated"}],
            "vms": [{"name": "web1", "memory_mib": 128, "state": "stopped",
                     "boot_disk": {"image": image, "size_gib": 1},
                     "nics": [{"network": "lan", "ip": "10.30.0.10"}]}],
        }
    )  # fmt: skip
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
    assert spec.peers == (OTHER,)
    assert spec.window.starts_at == NOW and spec.window.ends_at.hour == 18


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
