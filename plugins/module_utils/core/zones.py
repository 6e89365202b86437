# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Declarations across a zone: public IPs from the zone's pools, and zone links joining a
tenant network in two zones. Data and its validation, no I/O: the planners are in
engine/resources (public_ip.py, zone_link.py)."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import SpecError
from .validation import (
    as_list,
    as_mapping,
    check_ipv4,
    check_name,
    check_prefix,
    is_interface,
    reject_unknown,
)


@dataclass(frozen=True)
class Pool:
    name: str
    cidr: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    exclude: frozenset[ipaddress.IPv4Address] = frozenset()

    def addresses(self) -> list[ipaddress.IPv4Address]:
        """Assignable addresses in order: not the network, broadcast, gateway or excluded."""
        return [a for a in self.cidr.hosts() if a != self.gateway and a not in self.exclude]


@dataclass(frozen=True)
class PublicZone:
    """A zone as its public IPs need it: the uplink towards the public network, the pools."""

    name: str
    uplink: str
    pools: tuple[Pool, ...]

    def pool_of(self, address: ipaddress.IPv4Address) -> Pool | None:
        return next((p for p in self.pools if address in p.cidr), None)


def check_zone_config(raw: Any) -> tuple[Mapping[str, Any], str]:
    """A zone's configuration and its uplink, checked."""
    raw = as_mapping(raw, "zone_config")
    reject_unknown(raw, {"uplink", "public_pools"}, "zone_config")
    uplink = raw.get("uplink")
    if not is_interface(uplink):
        raise SpecError(
            "zone_config.uplink", f"the zone's uplink interface is required, got {uplink!r}"
        )
    return raw, uplink


def parse_public_zone(name: Any, raw: Any) -> PublicZone:
    zone = check_name(name, "zone")
    raw, uplink = check_zone_config(raw)
    pools = []
    for i, item in enumerate(as_list(raw.get("public_pools"), "zone_config.public_pools")):
        path = f"zone_config.public_pools[{i}]"
        item = as_mapping(item, path)
        reject_unknown(item, {"name", "cidr", "gateway", "exclude"}, path)
        try:
            cidr = ipaddress.IPv4Network(str(item.get("cidr")), strict=True)
        except ValueError as error:
            raise SpecError(
                f"{path}.cidr", f"invalid IPv4 CIDR {item.get('cidr')!r}: {error}"
            ) from None
        gateway = check_ipv4(item.get("gateway"), f"{path}.gateway")
        exclude = frozenset(
            check_ipv4(a, f"{path}.exclude[{j}]")
            for j, a in enumerate(as_list(item.get("exclude"), f"{path}.exclude"))
        )
        pools.append(Pool(check_name(item.get("name"), f"{path}.name"), cidr, gateway, exclude))
    if not pools:
        raise SpecError("zone_config.public_pools", f"zone {zone} has no public IP pool")
    return PublicZone(zone, uplink, tuple(pools))


@dataclass(frozen=True)
class PublicIpSpec:
    name: str
    vm: str
    network: str | None  # the NIC's network; None: the VM's first NIC
    address: ipaddress.IPv4Address | None  # requested; None: the pool's first free one


def parse_public_ip(raw: Any, path: str, zone: PublicZone) -> PublicIpSpec:
    raw = as_mapping(raw, path)
    reject_unknown(raw, {"name", "vm", "network", "address"}, path)
    prefix = f"{path}." if path else ""
    name = check_name(raw.get("name"), f"{prefix}name")
    vm = check_name(raw.get("vm"), f"{prefix}vm")
    network = raw.get("network")
    if network is not None:
        network = check_name(network, f"{prefix}network")
    address = None
    if raw.get("address") is not None:
        address = check_ipv4(raw["address"], f"{prefix}address")
        pool = zone.pool_of(address)
        if pool is None:
            pools = ", ".join(str(p.cidr) for p in zone.pools)
            raise SpecError(
                f"{prefix}address", f"{address} is outside zone {zone.name}'s pools ({pools})"
            )
        if address not in pool.addresses():
            raise SpecError(
                f"{prefix}address",
                f"{address} is not assignable in pool {pool.name} (network, gateway or excluded)",
            )
    return PublicIpSpec(name, vm, network, address)


def zone_of(params: Mapping[str, Any]) -> PublicZone | None:
    """The zone a run's parameters give (`zone` and `zone_config`), or None without a
    zone_config."""
    if params.get("zone_config") is None:
        return None
    return parse_public_zone(params.get("zone"), params.get("zone_config"))


def zone_uplink(params: Mapping[str, Any]) -> str | None:
    """The uplink of the run's zone (`zone_config.uplink`), where a routed network is routed;
    None without a zone_config. An operator's setting: a tenant never names an uplink."""
    if params.get("zone_config") is None:
        return None
    return check_zone_config(params["zone_config"])[1]


@dataclass(frozen=True)
class Underlay:
    """Where a host sends and receives the zone links' VXLAN traffic."""

    ip: str
    dev: str


def check_underlay(raw: Mapping[str, Any], prefix: str) -> Underlay:
    """`underlay_ip` and `underlay_dev` of a host given in `raw`, both required; `prefix` is
    the path of `raw` with its trailing dot ("" at the top)."""
    address = str(check_ipv4(raw.get("underlay_ip"), f"{prefix}underlay_ip"))
    dev = raw.get("underlay_dev")
    if not is_interface(dev):
        raise SpecError(f"{prefix}underlay_dev", f"an interface name is required, got {dev!r}")
    return Underlay(address, dev)


def parse_underlay(raw: Mapping[str, Any], prefix: str) -> Underlay | None:
    """A host's underlay where it is optional: both fields or neither."""
    if raw.get("underlay_ip") is None and raw.get("underlay_dev") is None:
        return None
    return check_underlay(raw, prefix)


@dataclass(frozen=True)
class LinkEnd:
    """One end of a zone link: the host in that zone and its underlay."""

    zone: str
    uri: str
    underlay_ip: str
    underlay_dev: str
    host_command: tuple[str, ...] = ()


def parse_link_end(raw: Any, path: str) -> LinkEnd:
    raw = as_mapping(raw, path)
    reject_unknown(raw, {"zone", "uri", "underlay_ip", "underlay_dev", "host_command"}, path)
    zone = check_name(raw.get("zone"), f"{path}.zone")
    uri = raw.get("uri")
    if not isinstance(uri, str) or not uri:
        raise SpecError(f"{path}.uri", "the libvirt URI of the end's host is required")
    underlay = check_underlay(raw, f"{path}.")
    prefix = check_prefix(raw.get("host_command"), f"{path}.host_command")
    return LinkEnd(zone, uri, underlay.ip, underlay.dev, prefix)


@dataclass(frozen=True)
class ZoneLinkSpec:
    name: str
    network: str  # the tenant network both ends join
    ends: tuple[LinkEnd, LinkEnd]


def parse_zone_link(raw: Any, path: str) -> ZoneLinkSpec:
    """A zone link's name, network and two ends; other keys of `raw` are the caller's."""
    raw = as_mapping(raw, path or "zone_link")
    prefix = f"{path}." if path else ""
    name = check_name(raw.get("name"), f"{prefix}name")
    network = check_name(raw.get("network"), f"{prefix}network")
    raw_ends = as_list(raw.get("ends"), f"{prefix}ends")
    if len(raw_ends) != 2:
        raise SpecError(f"{prefix}ends", f"a zone link has exactly two ends, got {len(raw_ends)}")
    ends = (
        parse_link_end(raw_ends[0], f"{prefix}ends[0]"),
        parse_link_end(raw_ends[1], f"{prefix}ends[1]"),
    )
    return ZoneLinkSpec(name, network, ends)
