# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The IPv4 space in use on a host: every libvirt network's subnets (whoever's they are) and
the host's own addresses and routes (its uplink's included).

A tenant network overlapping any of it would collide on the host (libvirt refuses to start a
network whose subnet another interface routes, and a route of the host would be shadowed), so
the network planner refuses it at plan time. Read once per run, and only when a network is
made or replaced.

Where the host's addresses come from: libvirt's interface API where it reports them (the test
driver does; a real host's udev backend reports no addresses), and `ip -j -4 addr` and
`ip -j -4 route` through the host command path (`HostShell`) on a local host or one reached
through a host command. A remote URI without a host command has libvirt's view only, and
libvirt's own check when the network starts.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ..core.errors import libvirt, libvirt_action
from .connection import Host, skip_vanished
from .shell import HostShell


@dataclass(frozen=True)
class UsedSpace:
    """What a new network must not overlap on one host."""

    networks: dict[str, tuple[ipaddress.IPv4Network, ...]]  # by libvirt network name
    host: tuple[ipaddress.IPv4Network, ...]  # the host's addresses and routes

    def overlaps(self, cidr: ipaddress.IPv4Network, own: str) -> bool:
        """Whether `cidr` overlaps anything in use but the libvirt network `own` itself."""
        others = (c for name, cidrs in self.networks.items() if name != own for c in cidrs)
        return any(cidr.overlaps(used) for used in (*others, *self.host))


def network_subnets(root: ET.Element) -> Iterator[ipaddress.IPv4Network]:
    """The IPv4 subnets of a network definition: its addresses and its static routes."""
    for ip in root.findall("ip"):
        if ip.get("family", "ipv4") != "ipv4" or not ip.get("address"):
            continue
        prefix = ip.get("prefix") or ip.get("netmask") or "32"
        yield ipaddress.IPv4Network(f"{ip.get('address')}/{prefix}", strict=False)
    for route in root.findall("route"):
        if route.get("family", "ipv4") == "ipv4" and route.get("address"):
            prefix = route.get("prefix") or route.get("netmask") or "32"
            yield ipaddress.IPv4Network(f"{route.get('address')}/{prefix}", strict=False)


def libvirt_networks(host: Host) -> tuple[dict[str, tuple[ipaddress.IPv4Network, ...]], set[str]]:
    """Every libvirt network's subnets by name, and the bridges those networks use."""
    subnets: dict[str, tuple[ipaddress.IPv4Network, ...]] = {}
    bridges: set[str] = set()
    with libvirt_action("list", f"networks on {host.uri}"):
        for net in host.conn.listAllNetworks(0):
            with skip_vanished():
                root = ET.fromstring(net.XMLDesc(0))
                subnets[net.name()] = tuple(network_subnets(root))
                bridge = root.find("bridge")
                if bridge is not None and bridge.get("name"):
                    bridges.add(bridge.get("name"))
    return subnets, bridges


def interface_addresses(host: Host) -> Iterator[tuple[str, ipaddress.IPv4Network]]:
    """(interface, subnet) of each IPv4 address libvirt's interface API reports."""
    try:
        interfaces = host.conn.listAllInterfaces(0)
    except libvirt.libvirtError as error:
        if error.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
            return  # a daemon without its interface driver: no addresses from libvirt
        raise
    for interface in interfaces:
        with skip_vanished():
            root = ET.fromstring(interface.XMLDesc(0))
            for ip in root.findall("protocol[@family='ipv4']/ip"):
                cidr = f"{ip.get('address')}/{ip.get('prefix') or 32}"
                yield root.get("name", ""), ipaddress.IPv4Network(cidr, strict=False)


def command_addresses(shell: HostShell) -> Iterator[tuple[str, ipaddress.IPv4Network]]:
    """(interface, subnet) of each IPv4 address and route the host's `ip` shows."""
    what = "the host's addresses"
    for link in as_entries(shell.json(["ip", "-j", "-4", "addr", "show"], "read", what)):
        for info in as_entries(link.get("addr_info")):
            if info.get("local") is not None:
                cidr = f"{info['local']}/{info.get('prefixlen', 32)}"
                yield link.get("ifname", ""), ipaddress.IPv4Network(cidr, strict=False)
    for route in as_entries(shell.json(["ip", "-j", "-4", "route", "show"], "read", what)):
        destination = route.get("dst")
        if destination and destination != "default":
            yield route.get("dev", ""), ipaddress.IPv4Network(destination, strict=False)


def as_entries(raw: Any) -> list[dict[str, Any]]:
    """The objects of a JSON list from `ip -j` (an empty output reads as {})."""
    return [item for item in raw if isinstance(item, dict)] if isinstance(raw, list) else []


def reads_commands(host: Host, shell: HostShell) -> bool:
    """Whether `ip` through `shell` runs on the libvirt host: a host command leads there, and
    without one a local daemon's host is this machine (the test driver has none)."""
    return bool(shell.prefix) or (host.is_local and not host.uri.startswith("test:"))


def used_space(host: Host, shell: HostShell) -> UsedSpace:
    """The IPv4 space in use on the host. Addresses on libvirt's bridges and on loopback are
    left to the libvirt networks they belong to (a network's own bridge is no collision)."""
    networks, bridges = libvirt_networks(host)
    found: Iterable[tuple[str, ipaddress.IPv4Network]] = interface_addresses(host)
    if reads_commands(host, shell):
        found = (*found, *command_addresses(shell))
    used = {cidr for device, cidr in found if device not in bridges and not cidr.is_loopback}
    return UsedSpace(networks, tuple(sorted(used)))
