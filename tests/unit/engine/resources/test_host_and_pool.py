"""Storage pool and host record declarations: what is accepted, what is refused with the field,
and the pool plans against libvirt's test driver."""

from __future__ import annotations

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.host import (
    parse_host,
    version_text,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.pool import (
    PoolPlanner,
    parse_pool,
    run_storage_pool,
)
from ansible_collections.vce.kvm.plugins.module_utils.host import connection as host
from ansible_collections.vce.kvm.plugins.module_utils.host.connection import Host

POOLS = [{"name": "main", "cidr": "203.0.113.0/28", "gateway": "203.0.113.1"}]


def test_a_pool_declaration_is_normalised():
    spec = parse_pool({"name": "images", "path": "/srv/vce//images/", "autostart": None})
    assert (spec.name, spec.path, spec.type, spec.autostart) == (
        "images",
        "/srv/vce/images",
        "dir",
        True,
    )


@pytest.mark.parametrize(
    ("params", "field", "reason"),
    [
        ({"name": "bad/name", "path": "/srv/p"}, "name", "invalid storage pool name"),
        ({"name": "p", "path": "relative/dir"}, "path", "absolute path"),
        ({"name": "p", "path": "/srv/../etc"}, "path", "forbidden character or '..'"),
        ({"name": "p"}, "path", "required when state=present"),
        ({"name": "p", "path": "/srv/p", "type": "logical"}, "type", "must be one of dir"),
        ({"name": "p", "path": "/srv/p", "autostart": "yes"}, "autostart", "true or false"),
    ],
)
def test_bad_pool_declarations_name_the_field(params, field, reason):
    with pytest.raises(SpecError, match=reason) as caught:
        parse_pool(params)
    assert caught.value.field == field


def test_an_unknown_state_is_refused_before_connecting():
    with pytest.raises(SpecError) as caught:
        run_storage_pool({"name": "p", "state": "gone", "uri": "qemu+ssh://nowhere.invalid/system"})
    assert caught.value.field == "state"


def test_host_declaration_reuses_the_zone_checks():
    declared = parse_host(
        {"name": "kvm-01.lab", "zone": "zone-a", "uplink": "eth1", "public_pools": POOLS}
    )
    assert declared.public_pools == (
        {"name": "main", "cidr": "203.0.113.0/28", "gateway": "203.0.113.1", "exclude": []},
    )
    assert declared.uri == "qemu:///system"
    without_pools = parse_host({"name": "kvm-02", "zone": "zone-a", "public_pools": []})
    assert (without_pools.uplink, without_pools.public_pools) == (None, ())


@pytest.mark.parametrize(
    ("params", "field", "reason"),
    [
        ({"name": "Kvm_01", "zone": "z"}, "name", "invalid host name"),
        ({"name": "kvm-01"}, "zone", "required when state=present"),
        ({"name": "kvm-01", "zone": "Zone A"}, "zone", "invalid name"),
        ({"name": "kvm-01", "zone": "z", "uri": "nonsense"}, "uri", "libvirt URI"),
        ({"name": "kvm-01", "zone": "z", "uplink": "eth 1"}, "uplink", "invalid interface"),
        ({"name": "kvm-01", "zone": "z", "public_pools": POOLS}, "uplink", "uplink interface"),
        (
            {"name": "kvm-01", "zone": "z", "uplink": "eth1",
             "public_pools": [{**POOLS[0], "cidr": "203.0.113.1/28"}]},
            "public_pools[0].cidr", "invalid IPv4 CIDR",
        ),
        (
            {"name": "kvm-01", "zone": "z", "uplink": "eth1",
             "public_pools": [{**POOLS[0], "exclude": ["203.0.113.x"]}]},
            "public_pools[0].exclude[0]", "invalid IPv4 address",
        ),
        (
            {"name": "kvm-01", "zone": "z", "uplink": "eth1",
             "public_pools": [{**POOLS[0], "vlan": 7}]},
            "public_pools[0].vlan", "unknown option",
        ),
    ],
)  # fmt: skip
def test_bad_host_declarations_name_the_field(params, field, reason):
    with pytest.raises(SpecError, match=reason) as caught:
        parse_host(params)
    assert caught.value.field == field


def test_libvirt_versions_read_as_text():
    assert version_text(9000000) == "9.0.0"
    assert version_text(7002022) == "7.2.22"


@pytest.fixture
def test_host(monkeypatch):
    """libvirt's test driver, with a dir pool 'default-pool'. The driver keeps its objects while
    any connection to it is open, so this test's connections are closed afterwards."""
    connections = {}
    monkeypatch.setattr(host, "_connections", connections)
    yield Host("test:///default")
    for conn in connections.values():
        conn.close()


def test_a_new_pool_is_defined_built_started_and_autostarted(test_host):
    engine = PoolPlanner(test_host)
    spec = parse_pool({"name": "scratch", "path": "/scratch"})
    assert engine.observe("scratch") is None
    plan = engine.plan_present(spec, None)
    assert [(c.action, c.field) for c in plan.changes] == [
        ("define", None), ("build", "directory"), ("start", "active"), ("autostart", "autostart"),
    ]  # fmt: skip
    plan.apply()
    state = engine.observe("scratch")
    assert (state.path, state.active, state.autostart, state.volumes) == (
        "/scratch",
        True,
        True,
        (),
    )
    assert not engine.plan_present(spec, state).changed


def test_a_pool_is_never_moved_or_its_path_taken_twice(test_host):
    engine = PoolPlanner(test_host)
    current = engine.observe("default-pool")
    with pytest.raises(
        SpecError, match="exists with path /default-pool, declared /elsewhere"
    ) as caught:
        engine.plan_present(parse_pool({"name": "default-pool", "path": "/elsewhere"}), current)
    assert caught.value.field == "path"
    with pytest.raises(SpecError, match="already the path of storage pool default-pool"):
        engine.plan_present(parse_pool({"name": "scratch", "path": "/default-pool/"}), None)
