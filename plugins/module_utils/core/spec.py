# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validated declarations: what a tenant asks for, before anything is read from a host.

Every front end (Ansible modules, the Pulumi provider, the CLI) passes plain dicts here; a
value that cannot be accepted raises SpecError naming the field path and the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import fields
from .backup_spec import ScheduleSpec, parse_schedule
from .cloud_config import cloud_config
from .errors import SpecError
from .fields import DISK_FORMATS, NETWORK_MODES, VM_STATES, spec_keys
from .validation import (
    as_list,
    as_mapping,
    at,
    check_choice,
    check_image_ref,
    check_int,
    check_ipv4,
    check_mac,
    check_name,
    check_pool,
    optional,
    reject_unknown,
)
from .zones import (
    PublicIpSpec,
    PublicZone,
    ZoneLinkSpec,
    parse_public_ip,
    parse_zone_link,
    zone_of,
    zone_uplink,
)

MAX_VCPUS = 64
MIN_MEMORY_MIB = 64
MAX_MEMORY_MIB = 1024 * 1024
MAX_DISK_GIB = 64 * 1024


@dataclass(frozen=True)
class StaticLease:
    mac: str
    ip: ipaddress.IPv4Address
    hostname: str | None = None


@dataclass(frozen=True)
class NetworkSpec:
    name: str
    cidr: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    dhcp_start: ipaddress.IPv4Address
    dhcp_end: ipaddress.IPv4Address
    mode: str = "nat"
    mtu: int | None = None
    static_leases: tuple[StaticLease, ...] = ()
    # The zone's uplink, which a routed network forwards to (public IPs are NATed there).
    uplink: str | None = None


@dataclass(frozen=True)
class DiskSpec:
    name: str
    size_gib: int
    pool: str
    format: str = "qcow2"
    # A catalogue image or one of the tenant's disks (a name), or an operator's host path.
    backing_image: str | None = None


@dataclass(frozen=True)
class BootDiskSpec:
    image: str  # as backing_image
    size_gib: int
    pool: str
    # How to read an operator's path; a catalogue image or a disk has its recorded format.
    image_format: str | None = None


@dataclass(frozen=True)
class NicSpec:
    network: str
    mac: str
    ip: ipaddress.IPv4Address | None = None


@dataclass(frozen=True)
class CloudInitSpec:
    hostname: str
    ssh_authorized_keys: tuple[str, ...] = ()
    user_data: str | None = None


@dataclass(frozen=True)
class VmSpec:
    name: str
    vcpus: int
    max_vcpus: int
    memory_mib: int
    max_memory_mib: int
    boot_disk: BootDiskSpec
    disks: tuple[str, ...] = ()
    nics: tuple[NicSpec, ...] = ()
    cloud_init: CloudInitSpec | None = None
    state: str = "running"


@dataclass(frozen=True)
class EnvironmentSpec:
    """A whole tenant environment as declared: every object kind, parsed before any host is
    read, so the planners take declarations and never raw parameters."""

    tenant: str
    networks: tuple[NetworkSpec, ...] = ()
    disks: tuple[DiskSpec, ...] = ()
    vms: tuple[VmSpec, ...] = ()
    attachments: Mapping[str, str] = field(default_factory=dict)
    public_zone: PublicZone | None = None  # the host's zone, when public IPs are declared
    public_ips: tuple[PublicIpSpec, ...] = ()
    zone_links: tuple[ZoneLinkSpec, ...] = ()
    backup_schedules: tuple[ScheduleSpec, ...] = ()


def spec_hash(spec: Any) -> str:
    """A short stable digest of a declaration, stored in the object's ownership metadata."""
    payload = json.dumps(dataclasses.asdict(spec), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def default_mac(tenant: str, vm: str, index: int) -> str:
    """A MAC derived from the declaration, so that re-runs and other front ends agree on it."""
    digest = hashlib.sha256(f"{tenant}/{vm}/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def parse_lease(raw: Any, path: str, cidr: ipaddress.IPv4Network) -> StaticLease:
    raw = as_mapping(raw, path)
    reject_unknown(raw, spec_keys(fields.STATIC_LEASE), path)
    mac = check_mac(raw.get("mac"), at(path, "mac"))
    ip = check_ipv4(raw.get("ip"), at(path, "ip"))
    check_host_address(ip, cidr, at(path, "ip"))
    hostname = raw.get("hostname")
    if hostname is not None:
        check_name(hostname, at(path, "hostname"))
    return StaticLease(mac=mac, ip=ip, hostname=hostname)


def check_host_address(ip: ipaddress.IPv4Address, cidr: ipaddress.IPv4Network, path: str) -> None:
    if ip not in cidr:
        raise SpecError(path, f"{ip} is outside the network's CIDR {cidr}")
    if cidr.prefixlen < 31 and ip in (cidr.network_address, cidr.broadcast_address):
        raise SpecError(path, f"{ip} is the network or broadcast address of {cidr}")


# Where a tenant network may lie: private space (RFC 1918) only, never the whole IPv4 space,
# loopback, link-local, multicast, shared (RFC 6598) or public addresses, which belong to the
# hosts, the zones' public pools and the outside world.
TENANT_SPACE = (
    ipaddress.IPv4Network("10.0.0.0/8"),
    ipaddress.IPv4Network("172.16.0.0/12"),
    ipaddress.IPv4Network("192.168.0.0/16"),
)
# /16 is the widest (65,534 addresses for one DHCP server), /29 the narrowest (5 guests).
WIDEST_PREFIX = 16
NARROWEST_PREFIX = 29


def reserved_kind(cidr: ipaddress.IPv4Network) -> str:
    """What a network outside the tenant space is, for the refusal."""
    if cidr.prefixlen == 0:
        return "the whole IPv4 address space"
    for kind, test in (
        ("loopback", cidr.is_loopback),
        ("link-local", cidr.is_link_local),
        ("multicast", cidr.is_multicast),
        ("unspecified (0.0.0.0/8)", cidr.subnet_of(ipaddress.IPv4Network("0.0.0.0/8"))),
    ):
        if test:
            return f"{kind} address space"
    return "not private address space"


def check_network_cidr(raw: Any, field: str) -> ipaddress.IPv4Network:
    """A tenant network's CIDR: RFC 1918 space, a prefix from /16 to /29."""
    try:
        cidr = ipaddress.IPv4Network(str(raw), strict=True)
    except ValueError as error:
        raise SpecError(field, f"invalid IPv4 CIDR {raw!r}: {error}") from None
    if not any(cidr.subnet_of(space) for space in TENANT_SPACE):
        spaces = ", ".join(str(space) for space in TENANT_SPACE)
        raise SpecError(
            field,
            f"{cidr} is {reserved_kind(cidr)}: a tenant network lies in private space ({spaces})",
        )
    if cidr.prefixlen > NARROWEST_PREFIX:
        raise SpecError(
            field, f"{cidr} is too small: use a prefix of /{NARROWEST_PREFIX} or larger"
        )
    if cidr.prefixlen < WIDEST_PREFIX:
        raise SpecError(field, f"{cidr} is too large: use a prefix of /{WIDEST_PREFIX} or smaller")
    return cidr


def check_routed(mode: str, raw: Mapping[str, Any], path: str, uplink: str | None) -> str | None:
    """The uplink of the network: the zone's for a routed one, never one a tenant names."""
    if "uplink" in raw:
        raise SpecError(
            at(path, "uplink"),
            "a tenant does not choose the uplink: a routed network is routed to its zone's "
            "uplink, which the operator's zone configuration (zone_config.uplink) gives",
        )
    if mode != "routed":
        return None
    if uplink is None:
        raise SpecError(
            at(path, "mode"),
            "a routed network needs the zone's uplink, and this run has no zone configuration "
            "(zone_config)",
        )
    return uplink


def parse_network(raw: Any, path: str, uplink: str | None = None) -> NetworkSpec:
    """A tenant network; `uplink` is the zone's, from the run's settings, for a routed one."""
    raw = as_mapping(raw, path)
    mode = check_choice(optional(raw, "mode", "nat"), at(path, "mode"), NETWORK_MODES)
    uplink = check_routed(mode, raw, path, uplink)
    reject_unknown(raw, spec_keys(fields.NETWORK), path)
    name = check_name(raw.get("name"), at(path, "name"))
    cidr = check_network_cidr(raw.get("cidr"), at(path, "cidr"))
    hosts = cidr.num_addresses - 2
    first = cidr.network_address + 1
    gateway = check_ipv4(optional(raw, "gateway", first), at(path, "gateway"))
    check_host_address(gateway, cidr, at(path, "gateway"))
    default_start = cidr.network_address + max(2, hosts // 2)
    dhcp_start = check_ipv4(optional(raw, "dhcp_start", default_start), at(path, "dhcp_start"))
    dhcp_end = check_ipv4(
        optional(raw, "dhcp_end", cidr.broadcast_address - 1), at(path, "dhcp_end")
    )
    check_host_address(dhcp_start, cidr, at(path, "dhcp_start"))
    check_host_address(dhcp_end, cidr, at(path, "dhcp_end"))
    if dhcp_end < dhcp_start:
        raise SpecError(at(path, "dhcp_end"), f"{dhcp_end} comes before dhcp_start {dhcp_start}")
    if dhcp_start <= gateway <= dhcp_end:
        raise SpecError(at(path, "gateway"), f"{gateway} lies inside the DHCP range")
    mtu = raw.get("mtu")
    if mtu is not None:
        mtu = check_int(mtu, at(path, "mtu"), 576, 9000)
    leases = tuple(
        parse_lease(item, at(path, f"static_leases[{i}]"), cidr)
        for i, item in enumerate(as_list(raw.get("static_leases"), at(path, "static_leases")))
    )
    return NetworkSpec(name, cidr, gateway, dhcp_start, dhcp_end, mode, mtu, leases, uplink)


def parse_disk(raw: Any, path: str, default_pool: str) -> DiskSpec:
    raw = as_mapping(raw, path)
    reject_unknown(raw, spec_keys(fields.DISK), path)
    name = check_name(raw.get("name"), at(path, "name"))
    size = check_int(raw.get("size_gib"), at(path, "size_gib"), 1, MAX_DISK_GIB, "GiB")
    pool = check_pool(optional(raw, "pool", default_pool), at(path, "pool"))
    fmt = check_choice(optional(raw, "format", "qcow2"), at(path, "format"), DISK_FORMATS)
    backing = raw.get("backing_image")
    if backing is not None:
        backing = check_image_ref(backing, at(path, "backing_image"))
        if fmt != "qcow2":
            raise SpecError(at(path, "backing_image"), "a backing image needs format qcow2")
    return DiskSpec(name, size, pool, fmt, backing)


def parse_boot_disk(raw: Any, path: str, default_pool: str) -> BootDiskSpec:
    raw = as_mapping(raw, path)
    reject_unknown(raw, spec_keys(fields.BOOT_DISK), path)
    image = check_image_ref(raw.get("image"), at(path, "image"))
    size = check_int(raw.get("size_gib"), at(path, "size_gib"), 1, MAX_DISK_GIB, "GiB")
    pool = check_pool(optional(raw, "pool", default_pool), at(path, "pool"))
    fmt = raw.get("image_format")
    if fmt is not None:
        fmt = check_choice(fmt, at(path, "image_format"), DISK_FORMATS)
    return BootDiskSpec(image, size, pool, fmt)


def parse_cloud_init(raw: Any, path: str, vm_name: str) -> CloudInitSpec:
    raw = as_mapping(raw, path)
    reject_unknown(raw, spec_keys(fields.CLOUD_INIT), path)
    hostname = check_name(optional(raw, "hostname", vm_name), at(path, "hostname"))
    keys = []
    for i, key in enumerate(
        as_list(raw.get("ssh_authorized_keys"), at(path, "ssh_authorized_keys"))
    ):
        if not isinstance(key, str) or not key.strip() or "\n" in key.strip():
            raise SpecError(
                at(path, f"ssh_authorized_keys[{i}]"), "must be one public key on one line"
            )
        keys.append(key.strip())
    user_data = raw.get("user_data")
    if user_data is not None and not isinstance(user_data, str):
        raise SpecError(at(path, "user_data"), "must be a string (cloud-config YAML or a script)")
    if user_data is not None:  # refused here, at plan time, not by the guest at boot
        cloud_config(user_data, hostname, keys, at(path, "user_data"))
    return CloudInitSpec(hostname, tuple(keys), user_data)


def parse_nic(raw: Any, path: str, tenant: str, vm: str, index: int) -> NicSpec:
    raw = as_mapping(raw, path)
    reject_unknown(raw, spec_keys(fields.NIC), path)
    network = check_name(raw.get("network"), at(path, "network"))
    mac = raw.get("mac")
    mac = check_mac(mac, at(path, "mac")) if mac is not None else default_mac(tenant, vm, index)
    ip = raw.get("ip")
    return NicSpec(network, mac, check_ipv4(ip, at(path, "ip")) if ip is not None else None)


def parse_vm(raw: Any, path: str, tenant: str, default_pool: str) -> VmSpec:
    raw = as_mapping(raw, path)
    reject_unknown(raw, spec_keys(fields.VM), path)
    name = check_name(raw.get("name"), at(path, "name"))
    vcpus = check_int(raw.get("vcpus", 1), at(path, "vcpus"), 1, MAX_VCPUS)
    max_vcpus = check_int(optional(raw, "max_vcpus", vcpus), at(path, "max_vcpus"), 1, MAX_VCPUS)
    if max_vcpus < vcpus:
        raise SpecError(at(path, "max_vcpus"), f"{max_vcpus} is below vcpus {vcpus}")
    if raw.get("memory_mib") is None:
        raise SpecError(at(path, "memory_mib"), "the VM's memory in MiB is required")
    memory = check_int(
        raw.get("memory_mib"), at(path, "memory_mib"), MIN_MEMORY_MIB, MAX_MEMORY_MIB, "MiB"
    )
    max_memory = check_int(
        optional(raw, "max_memory_mib", memory),
        at(path, "max_memory_mib"),
        MIN_MEMORY_MIB,
        MAX_MEMORY_MIB,
        "MiB",
    )
    if max_memory < memory:
        raise SpecError(at(path, "max_memory_mib"), f"{max_memory} is below memory_mib {memory}")
    if raw.get("boot_disk") is None:
        raise SpecError(at(path, "boot_disk"), "a boot disk (image and size_gib) is required")
    boot = parse_boot_disk(raw["boot_disk"], at(path, "boot_disk"), default_pool)
    disks = tuple(
        check_name(item, at(path, f"disks[{i}]"))
        for i, item in enumerate(as_list(raw.get("disks"), at(path, "disks")))
    )
    if len(set(disks)) != len(disks):
        raise SpecError(at(path, "disks"), "lists a disk twice")
    if len(disks) > 20:
        raise SpecError(at(path, "disks"), "at most 20 extra disks per VM")
    nics = tuple(
        parse_nic(item, at(path, f"nics[{i}]"), tenant, name, i)
        for i, item in enumerate(as_list(raw.get("nics"), at(path, "nics")))
    )
    check_nic_macs(nics, path)
    cloud_init = raw.get("cloud_init")
    if cloud_init is not None:
        cloud_init = parse_cloud_init(cloud_init, at(path, "cloud_init"), name)
    state = check_choice(optional(raw, "state", "running"), at(path, "state"), VM_STATES)
    return VmSpec(name, vcpus, max_vcpus, memory, max_memory, boot, disks, nics, cloud_init, state)


def check_nic_macs(nics: Sequence[NicSpec], path: str) -> None:
    """One NIC per MAC: libvirt finds a VM's NIC by its MAC (to move or detach it)."""
    first: dict[str, int] = {}
    for i, nic in enumerate(nics):
        if nic.mac in first:
            raise SpecError(
                at(path, f"nics[{i}].mac"),
                f"MAC {nic.mac} is already the MAC of nics[{first[nic.mac]}] of this VM; "
                "each NIC needs its own MAC",
            )
        first[nic.mac] = i


def check_unique(names: Sequence[str], path: str, what: str) -> None:
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise SpecError(f"{path}[{i}].name", f"{what} {name!r} is declared twice")
        seen.add(name)


def check_network_overlaps(networks: Sequence[NetworkSpec], path: str) -> None:
    for i, net in enumerate(networks):
        for other in networks[:i]:
            if net.cidr.overlaps(other.cidr):
                raise SpecError(
                    f"{path}[{i}].cidr",
                    f"{net.cidr} overlaps network {other.name!r} ({other.cidr}) of the same tenant",
                )


def check_addresses(spec: EnvironmentSpec) -> None:
    """Each MAC once in the environment; each IP once per network, and inside its CIDR."""
    networks = {net.name: net for net in spec.networks}
    macs: dict[str, str] = {}
    ips: dict[tuple[str, ipaddress.IPv4Address], str] = {}

    def claim(mac: str, net: str, ip: ipaddress.IPv4Address | None, where: str) -> None:
        if mac in macs:
            raise SpecError(f"{where}.mac", f"MAC {mac} is already used by {macs[mac]}")
        macs[mac] = where
        if ip is None:
            return
        if net in networks:
            check_host_address(ip, networks[net].cidr, f"{where}.ip")
            if ip == networks[net].gateway:
                raise SpecError(f"{where}.ip", f"{ip} is the gateway of network {net!r}")
        if (net, ip) in ips:
            raise SpecError(f"{where}.ip", f"IP {ip} is already used by {ips[(net, ip)]}")
        ips[(net, ip)] = where

    for i, net in enumerate(spec.networks):
        for j, lease in enumerate(net.static_leases):
            claim(lease.mac, net.name, lease.ip, f"networks[{i}].static_leases[{j}]")
    for i, vm in enumerate(spec.vms):
        for j, nic in enumerate(vm.nics):
            claim(nic.mac, nic.network, nic.ip, f"vms[{i}].nics[{j}]")


def parse_environment(
    raw: Mapping[str, Any], default_pool: str = "default", complete: bool = True
) -> EnvironmentSpec:
    """Parse a declaration; `complete` means every referenced object is declared in it too
    (the environment module); single-resource modules resolve references on the host."""
    tenant = check_name(raw.get("tenant"), "tenant")
    uplink = zone_uplink(raw)
    networks = tuple(
        parse_network(item, f"networks[{i}]", uplink)
        for i, item in enumerate(as_list(raw.get("networks"), "networks"))
    )
    disks_raw = as_list(raw.get("disks"), "disks")
    disks = tuple(parse_disk(item, f"disks[{i}]", default_pool) for i, item in enumerate(disks_raw))
    vms = tuple(
        parse_vm(item, f"vms[{i}]", tenant, default_pool)
        for i, item in enumerate(as_list(raw.get("vms"), "vms"))
    )
    check_unique([n.name for n in networks], "networks", "network")
    check_unique([d.name for d in disks], "disks", "disk")
    check_unique([v.name for v in vms], "vms", "VM")
    check_network_overlaps(networks, "networks")
    attachments = collect_attachments(disks_raw, vms)
    zone = zone_of(raw)
    spec = EnvironmentSpec(
        tenant, networks, disks, vms, attachments, zone,
        parse_public_ips(raw, zone), parse_zone_links(raw), parse_backup_schedules(raw),
    )  # fmt: skip
    check_addresses(spec)
    if complete:
        check_references(spec)
    return spec


def parse_public_ips(raw: Mapping[str, Any], zone: PublicZone | None) -> tuple[PublicIpSpec, ...]:
    items = as_list(raw.get("public_ips"), "public_ips")
    if items and zone is None:
        raise SpecError("zone_config", "public IPs need the host's zone: set zone and zone_config")
    ips = tuple(parse_public_ip(item, f"public_ips[{i}]", zone) for i, item in enumerate(items))
    names = [ip.name for ip in ips]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SpecError("public_ips", f"public IP {twice[0]!r} is declared twice")
    return ips


def parse_zone_links(raw: Mapping[str, Any]) -> tuple[ZoneLinkSpec, ...]:
    links = []
    for i, item in enumerate(as_list(raw.get("zone_links"), "zone_links")):
        path = f"zone_links[{i}]"
        reject_unknown(as_mapping(item, path), {"name", "network", "ends"}, path)
        links.append(parse_zone_link(item, path))
    check_unique([link.name for link in links], "zone_links", "zone link")
    return tuple(links)


def parse_backup_schedules(raw: Mapping[str, Any]) -> tuple[ScheduleSpec, ...]:
    items = as_list(raw.get("backup_schedules"), "backup_schedules")
    specs = tuple(parse_schedule(item, f"backup_schedules[{i}]") for i, item in enumerate(items))
    names = [(s.vm, s.name) for s in specs]
    if len(set(names)) != len(names):
        raise SpecError("backup_schedules", "declares the same schedule of a VM twice")
    return specs


def collect_attachments(disks_raw: list[Any], vms: Sequence[VmSpec]) -> dict[str, str]:
    """disk name -> VM name, from either side of the declaration; one VM per disk."""
    attachments: dict[str, str] = {}
    for i, vm in enumerate(vms):
        for j, disk in enumerate(vm.disks):
            if disk in attachments:
                raise SpecError(
                    f"vms[{i}].disks[{j}]",
                    f"disk {disk!r} is already attached to {attachments[disk]!r}",
                )
            attachments[disk] = vm.name
    for i, raw in enumerate(disks_raw):
        target = raw.get("attach_to") if isinstance(raw, Mapping) else None
        if target is None:
            continue
        check_name(target, f"disks[{i}].attach_to")
        current = attachments.get(raw["name"])
        if current is not None and current != target:
            raise SpecError(f"disks[{i}].attach_to", f"disk is also listed by VM {current!r}")
        attachments[raw["name"]] = target
    return attachments


def check_references(spec: EnvironmentSpec) -> None:
    networks = {net.name for net in spec.networks}
    disks = {disk.name for disk in spec.disks}
    vms = {vm.name for vm in spec.vms}
    for i, vm in enumerate(spec.vms):
        for j, nic in enumerate(vm.nics):
            if nic.network not in networks:
                raise SpecError(f"vms[{i}].nics[{j}].network", f"unknown network {nic.network!r}")
        for j, disk in enumerate(vm.disks):
            if disk not in disks:
                raise SpecError(f"vms[{i}].disks[{j}]", f"unknown disk {disk!r}")
    for disk, vm in spec.attachments.items():
        if vm not in vms:
            index = [d.name for d in spec.disks].index(disk)
            raise SpecError(f"disks[{index}].attach_to", f"unknown VM {vm!r}")
