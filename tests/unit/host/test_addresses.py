"""The IPv4 space in use on a host, read from libvirt's test driver (its networks and the
addresses its interface API reports) and from the host's `ip` through a host command (a
stand-in host): what overlaps it, with a network's own subnets and bridge left out."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.host import connection
from ansible_collections.vce.kvm.plugins.module_utils.host.addresses import (
    UsedSpace,
    used_space,
)
from ansible_collections.vce.kvm.plugins.module_utils.host.connection import Host
from ansible_collections.vce.kvm.plugins.module_utils.host.shell import HostShell
from hypothesis import given
from hypothesis import strategies as st

from tests.support.standin_host import StandInHost

URI = "test:///default"


def net(text: str) -> ipaddress.IPv4Network:
    return ipaddress.IPv4Network(text)


@pytest.fixture
def test_host(monkeypatch):
    opened: dict = {}
    monkeypatch.setattr(connection, "_connections", opened)
    yield Host(URI)
    for conn in opened.values():
        with contextlib.suppress(Exception):
            conn.close()


def define(host: Host, name: str, bridge: str, cidr: str, route: str = "") -> None:
    address, prefix = cidr.split("/")
    host.conn.networkDefineXML(
        f"<network><name>{name}</name><bridge name='{bridge}'/>"
        f"<ip address='{address}' prefix='{prefix}'/>{route}</network>"
    )


def test_every_libvirt_network_and_the_drivers_interface_addresses_are_in_use(test_host):
    route = "<route address='10.77.0.0' prefix='16' gateway='10.50.0.2'/>"
    define(test_host, "other_lan", "virbr7", "10.50.0.1/24", route)
    used = used_space(test_host, HostShell())
    assert used.networks["default"] == (net("192.168.122.0/24"),)
    assert used.networks["other_lan"] == (net("10.50.0.0/24"), net("10.77.0.0/16"))
    # The test driver's interface eth1 has 192.168.0.5/24; no `ip` runs for a test: URI.
    assert used.host == (net("192.168.0.0/24"),)
    assert used.overlaps(net("10.50.0.128/25"), "acme_lan")
    assert used.overlaps(net("10.77.3.0/24"), "acme_lan")
    assert not used.overlaps(net("10.50.0.0/24"), "other_lan")
    assert used.overlaps(net("192.168.0.0/16"), "acme_lan")
    assert not used.overlaps(net("10.51.0.0/24"), "acme_lan")


def test_the_hosts_addresses_and_routes_come_through_the_host_command(test_host, tmp_path):
    define(test_host, "acme_lan", "virbr9", "10.60.0.1/24")
    standin = StandInHost(tmp_path / "kvm", {"eth0": 1500, "up0": 1500, "virbr9": 1500})

    def addresses(state):
        state["links"]["eth0"]["addrs"] = ["10.99.0.7/24"]
        state["links"]["up0"]["addrs"] = ["203.0.113.5/32"]
        state["links"]["virbr9"]["addrs"] = ["10.60.0.1/24"]  # acme_lan's own bridge
        state["routes"] = [
            {"dst": "default", "gateway": "10.99.0.1", "dev": "eth0"},
            {"dst": "172.20.0.0/16", "gateway": "10.99.0.1", "dev": "eth0"},
            {"dst": "10.60.0.0/24", "dev": "virbr9"},
        ]

    standin.change(addresses)
    used = used_space(test_host, HostShell(standin.prefix))
    assert set(used.host) == {
        net("192.168.0.0/24"),
        net("10.99.0.0/24"),
        net("203.0.113.5/32"),
        net("172.20.0.0/16"),
    }
    assert not used.overlaps(net("10.60.0.0/24"), "acme_lan")
    assert used.overlaps(net("172.20.5.0/24"), "acme_lan")


CIDRS = st.builds(
    lambda address, prefix: ipaddress.IPv4Network((address, prefix), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(8, 32),
)


@given(
    st.dictionaries(st.sampled_from(["a", "b", "c"]), st.lists(CIDRS, max_size=2), max_size=3),
    st.lists(CIDRS, max_size=3),
    CIDRS,
    st.sampled_from(["a", "b", "c", "d"]),
)
def test_overlap_is_any_overlap_but_with_the_network_itself(networks, host, cidr, own):
    used = UsedSpace({k: tuple(v) for k, v in networks.items()}, tuple(host))
    others = [c for name, cidrs in networks.items() if name != own for c in cidrs]
    expected = any(cidr.overlaps(other) for other in [*others, *host])
    assert used.overlaps(cidr, own) == expected
