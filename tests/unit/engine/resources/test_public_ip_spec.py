"""Zones and public IP declarations: what is accepted and what is refused, with the field."""

from __future__ import annotations

import ipaddress

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.core.zones import (
    parse_public_ip,
    parse_public_zone,
)

ZONE = {
    "uplink": "up0",
    "public_pools": [
        {
            "name": "pub-a",
            "cidr": "203.0.113.64/29",
            "gateway": "203.0.113.65",
            "exclude": ["203.0.113.66"],
        },
        {"name": "pub-b", "cidr": "203.0.113.72/30", "gateway": "203.0.113.73"},
    ],
}


def test_pools_give_their_assignable_addresses_in_order():
    zone = parse_public_zone("zone-a", ZONE)
    assert [str(a) for a in zone.pools[0].addresses()] == [
        "203.0.113.67", "203.0.113.68", "203.0.113.69", "203.0.113.70",
    ]  # fmt: skip
    assert [str(a) for a in zone.pools[1].addresses()] == ["203.0.113.74"]


def test_a_requested_address_must_be_assignable_in_a_pool():
    zone = parse_public_zone("zone-a", ZONE)
    spec = parse_public_ip({"name": "web", "vm": "web1", "address": "203.0.113.74"}, "", zone)
    assert spec.address == ipaddress.IPv4Address("203.0.113.74")


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        ({"address": "198.51.100.7"}, "address", "outside zone zone-a's pools"),
        ({"address": "203.0.113.65"}, "address", "not assignable in pool pub-a"),
        ({"address": "203.0.113.66"}, "address", "not assignable in pool pub-a"),
        ({"address": "203.0.113.64"}, "address", "not assignable in pool pub-a"),
        ({"address": "nonsense"}, "address", "IPv4"),
        ({"vm": None}, "vm", "a name is required"),
        ({"colour": "red"}, "colour", "unknown"),
    ],
)
def test_bad_public_ip_declarations(raw, field, reason):
    zone = parse_public_zone("zone-a", ZONE)
    with pytest.raises(SpecError) as error:
        parse_public_ip({"name": "web", "vm": "web1", **raw}, "", zone)
    assert error.value.field.endswith(field)
    assert reason in error.value.reason


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({**ZONE, "uplink": "not an interface"}, "zone_config.uplink"),
        ({**ZONE, "public_pools": []}, "zone_config.public_pools"),
        (
            {
                **ZONE,
                "public_pools": [{"name": "p", "cidr": "203.0.113.1/24", "gateway": "203.0.113.1"}],
            },
            "zone_config.public_pools[0].cidr",
        ),
    ],
)
def test_bad_zones(raw, field):
    with pytest.raises(SpecError) as error:
        parse_public_zone("zone-a", raw)
    assert error.value.field == field


def test_a_routed_network_needs_the_zones_uplink_and_is_tied_to_no_interface():
    from ansible_collections.vce.kvm.plugins.module_utils.core.spec import parse_network
    from ansible_collections.vce.kvm.plugins.module_utils.host.ownership import Owner
    from ansible_collections.vce.kvm.plugins.module_utils.host.xml import (
        network_xml,
        read_network,
    )

    routed = {"name": "lan", "cidr": "10.9.0.0/24", "mode": "routed"}
    spec = parse_network(routed, "", ZONE["uplink"])
    xml = network_xml("acme_lan", spec, Owner("acme", "network", "lan"), [])
    state = read_network(xml, True, True)
    # The guard keeps it to the zone's uplink; libvirt ties it to none.
    assert (spec.uplink, state.mode, state.forward_dev) == ("up0", "routed", None)
    with pytest.raises(SpecError, match="mode: a routed network needs the zone's uplink"):
        parse_network(routed, "")
    assert parse_network({**routed, "mode": "nat"}, "", ZONE["uplink"]).uplink is None
