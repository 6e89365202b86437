"""A tenant network's CIDR and uplink as the parser takes them: private space (RFC 1918) only,
a prefix from /16 to /29, no two of the tenant's networks overlapping, and the uplink of a
routed network from the zone's configuration, never from the tenant. Properties over
arbitrary CIDRs and strings: a valid spec or a SpecError naming the field, nothing else."""

from __future__ import annotations

import ipaddress

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.core.spec import (
    NARROWEST_PREFIX,
    TENANT_SPACE,
    WIDEST_PREFIX,
    parse_environment,
    parse_network,
)
from hypothesis import given
from hypothesis import strategies as st

ZONE = {
    "uplink": "up0",
    "public_pools": [{"name": "pub", "cidr": "203.0.113.0/28", "gateway": "203.0.113.1"}],
}

ANY_NETWORK = st.builds(
    lambda address, prefix: ipaddress.IPv4Network((address, prefix), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
TENANT_NETWORK = st.builds(
    lambda space, offset, prefix: ipaddress.IPv4Network(
        (int(space.network_address) + offset % space.num_addresses, prefix), strict=False
    ),
    st.sampled_from(TENANT_SPACE),
    st.integers(0, 2**32 - 1),
    st.integers(WIDEST_PREFIX, NARROWEST_PREFIX),
)


def allowed(cidr: ipaddress.IPv4Network) -> bool:
    in_space = any(cidr.subnet_of(space) for space in TENANT_SPACE)
    return in_space and WIDEST_PREFIX <= cidr.prefixlen <= NARROWEST_PREFIX


@given(ANY_NETWORK)
def test_a_cidr_is_taken_exactly_when_it_is_private_and_between_16_and_29(cidr):
    try:
        spec = parse_network({"name": "lan", "cidr": str(cidr)}, "networks[0]")
    except SpecError as error:
        assert error.field == "networks[0].cidr"
        assert not allowed(cidr)
    else:
        assert allowed(cidr) and spec.cidr == cidr


@given(st.one_of(st.text(max_size=40), st.integers(), st.none(), st.lists(st.integers())))
def test_any_other_cidr_value_is_refused_by_field(raw):
    try:
        parse_network({"name": "lan", "cidr": raw}, "")
    except SpecError as error:
        assert error.field == "cidr"


@given(TENANT_NETWORK, TENANT_NETWORK)
def test_two_networks_of_the_tenant_are_refused_exactly_when_they_overlap(first, second):
    raw = {
        "tenant": "acme",
        "networks": [{"name": "a", "cidr": str(first)}, {"name": "b", "cidr": str(second)}],
    }
    try:
        parse_environment(raw)
    except SpecError as error:
        assert error.field == "networks[1].cidr" and first.overlaps(second)
        assert "overlaps network 'a'" in error.reason
    else:
        assert not first.overlaps(second)


@pytest.mark.parametrize(
    ("cidr", "reason"),
    [
        ("0.0.0.0/0", "0.0.0.0/0 is the whole IPv4 address space"),
        ("127.0.0.0/24", "loopback address space"),
        ("169.254.0.0/16", "link-local address space"),
        ("224.0.0.0/24", "multicast address space"),
        ("0.0.0.0/24", "unspecified"),
        ("100.64.0.0/24", "not private address space"),
        ("203.0.113.0/24", "not private address space"),
        ("8.8.8.0/24", "not private address space"),
        ("10.0.0.0/8", "too large: use a prefix of /16 or smaller"),
        ("172.16.0.0/12", "too large"),
        ("10.0.0.0/15", "too large"),
        ("10.0.0.0/30", "too small: use a prefix of /29 or larger"),
        ("192.168.1.1/32", "too small"),
    ],
)
def test_reserved_public_too_wide_and_too_narrow_ranges_are_refused(cidr, reason):
    with pytest.raises(SpecError, match=reason) as caught:
        parse_network({"name": "lan", "cidr": cidr}, "networks[0]")
    assert caught.value.field == "networks[0].cidr"


@pytest.mark.parametrize("cidr", ["10.0.0.0/16", "172.31.255.248/29", "192.168.122.0/24"])
def test_the_edges_of_the_limits_are_taken(cidr):
    assert str(parse_network({"name": "lan", "cidr": cidr}, "").cidr) == cidr


def test_a_tenant_never_names_the_uplink_a_routed_network_takes_the_zones():
    routed = {"name": "lan", "cidr": "10.9.0.0/24", "mode": "routed"}
    for raw in ({**routed, "uplink": "eth0"}, {"name": "lan", "cidr": "10.9.0.0/24", "uplink": ""}):
        with pytest.raises(SpecError, match="a tenant does not choose the uplink") as caught:
            parse_network(raw, "networks[0]", "up0")
        assert caught.value.field == "networks[0].uplink"
    with pytest.raises(SpecError, match="needs the zone's uplink") as caught:
        parse_network(routed, "networks[0]")
    assert caught.value.field == "networks[0].mode"
    assert parse_network(routed, "", "up0").uplink == "up0"
    assert parse_network({**routed, "mode": "nat"}, "", "up0").uplink is None


def test_an_environment_routes_its_networks_to_the_zones_uplink():
    raw = {
        "tenant": "acme",
        "networks": [{"name": "lan", "cidr": "10.9.0.0/24", "mode": "routed"}],
        "zone": "zone-a",
        "zone_config": ZONE,
    }
    assert parse_environment(raw).networks[0].uplink == "up0"
    with pytest.raises(SpecError, match="needs the zone's uplink") as caught:
        parse_environment({**raw, "zone_config": None})
    assert caught.value.field == "networks[0].mode"
    tenant_uplink = {**raw, "networks": [{**raw["networks"][0], "uplink": "eth9"}]}
    with pytest.raises(SpecError, match="a tenant does not choose the uplink") as caught:
        parse_environment(tenant_uplink)
    assert caught.value.field == "networks[0].uplink"
    with pytest.raises(SpecError, match="uplink interface is required") as caught:
        parse_environment({**raw, "zone_config": {**ZONE, "uplink": "eth 0"}})
    assert caught.value.field == "zone_config.uplink"
