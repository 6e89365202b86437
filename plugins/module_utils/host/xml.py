# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""libvirt XML documents, built and read with ElementTree: never by formatting strings.

Names, host names and SSH keys can hold '<', '&' or quotes; ElementTree escapes them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from ..core.spec import NetworkSpec, StaticLease
from .ownership import Owner, add_metadata, read_owner

GIB = 1024**3
KIB_PER_MIB = 1024
DISK_TARGETS = tuple(f"vd{chr(c)}" for c in range(ord("a"), ord("z") + 1))


def to_string(root: ET.Element) -> str:
    return ET.tostring(root, encoding="unicode")


def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    element = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrs.items()})
    if text is not None:
        element.text = text
    return element


# Networks -----------------------------------------------------------------------------------


def dhcp_host_element(lease: StaticLease) -> ET.Element:
    host = ET.Element("host", {"mac": lease.mac, "ip": str(lease.ip)})
    if lease.hostname:
        host.set("name", lease.hostname)
    return host


def gateway_mac(libvirt_name: str, gateway: ipaddress.IPv4Address) -> str:
    """The bridge's MAC of a tenant network: the same on every host for one declaration, so a
    guest moved live to another host of the zone still reaches its gateway through the MAC it
    has in its ARP cache (with a random one per host it was cut off until its cache expired,
    up to seconds). A zone link's ends have different gateways, so different MACs on their one
    segment. Locally administered and unicast (02:...), never one of the VMs' 52:54:00:..."""
    digest = hashlib.sha256(f"{libvirt_name}/{gateway}".encode()).digest()
    return ":".join(f"{byte:02x}" for byte in (0x02, *digest[:5]))


def network_xml(
    libvirt_name: str, spec: NetworkSpec, owner: Owner, leases: list[StaticLease]
) -> str:
    root = ET.Element("network")
    sub(root, "name", libvirt_name)
    add_metadata(root, owner)
    if spec.mode == "nat":
        forward = sub(root, "forward", mode="nat")
        nat = sub(forward, "nat")
        sub(nat, "port", start="1024", end="65535")
    elif spec.mode == "routed":
        # No `dev`: libvirt then ties the bridge to no interface (it keeps its anti-spoofing
        # rules on the network's range) and the host's guard (`inet vce_guard`) lets a routed
        # network leave only through the zone's uplink. With `dev`, libvirt's own chains reject
        # a VM's packet DNAT-ed to a public IP on another bridge (hairpin across networks).
        sub(root, "forward", mode="route")
    # No STP: with it the kernel holds every new port (a VM's tap) in listening and learning
    # for twice its minimum forward delay (2 s; libvirt's delay 0 is raised to it), so a VM
    # arriving by live migration was unreachable for 4 s. A tenant bridge is a leaf: VM taps,
    # and a zone link's point-to-point VXLAN port.
    sub(root, "bridge", stp="off", delay="0")
    sub(root, "mac", address=gateway_mac(libvirt_name, spec.gateway))
    if spec.mtu:
        sub(root, "mtu", size=str(spec.mtu))
    ip = sub(root, "ip", address=str(spec.gateway), prefix=str(spec.cidr.prefixlen))
    dhcp = sub(ip, "dhcp")
    sub(dhcp, "range", start=str(spec.dhcp_start), end=str(spec.dhcp_end))
    for lease in sorted(leases, key=lambda item: item.mac):
        dhcp.append(dhcp_host_element(lease))
    return to_string(root)


@dataclass
class NetworkState:
    """What libvirt holds for one network: the fields the engine compares."""

    name: str
    owner: Owner | None
    active: bool
    autostart: bool
    mode: str = "isolated"
    cidr: ipaddress.IPv4Network | None = None
    gateway: ipaddress.IPv4Address | None = None
    dhcp_start: ipaddress.IPv4Address | None = None
    dhcp_end: ipaddress.IPv4Address | None = None
    mtu: int | None = None
    bridge: str = ""
    mac: str = ""  # the bridge's (the gateway's) MAC
    hosts: dict[str, StaticLease] = field(default_factory=dict)
    # The interface a routed network made by an earlier version is tied to (`forward dev`).
    forward_dev: str | None = None


def read_network(xml: str, active: bool, autostart: bool) -> NetworkState:
    root = ET.fromstring(xml)
    state = NetworkState(root.findtext("name", ""), read_owner(root), active, autostart)
    forward = root.find("forward")
    if forward is not None:
        state.mode = forward.get("mode", "nat")
        if state.mode == "route":
            state.mode = "routed"
            state.forward_dev = forward.get("dev")
    bridge = root.find("bridge")
    state.bridge = bridge.get("name", "") if bridge is not None else ""
    mac = root.find("mac")
    state.mac = (mac.get("address") or "").lower() if mac is not None else ""
    mtu = root.find("mtu")
    state.mtu = int(mtu.get("size", "0")) if mtu is not None else None
    ip = root.find("ip")
    if ip is None or ip.get("family", "ipv4") != "ipv4":
        return state
    state.gateway = ipaddress.IPv4Address(ip.get("address"))
    prefix = ip.get("prefix") or str(
        ipaddress.IPv4Network(f"0.0.0.0/{ip.get('netmask')}").prefixlen
    )
    state.cidr = ipaddress.IPv4Network(f"{state.gateway}/{prefix}", strict=False)
    dhcp_range = ip.find("dhcp/range")
    if dhcp_range is not None:
        state.dhcp_start = ipaddress.IPv4Address(dhcp_range.get("start"))
        state.dhcp_end = ipaddress.IPv4Address(dhcp_range.get("end"))
    for host in ip.findall("dhcp/host"):
        mac = (host.get("mac") or "").lower()
        if mac and host.get("ip"):
            state.hosts[mac] = StaticLease(
                mac, ipaddress.IPv4Address(host.get("ip")), host.get("name")
            )
    return state


# Volumes ------------------------------------------------------------------------------------


def volume_xml(
    name: str, size_gib: int, fmt: str, backing: str | None = None, backing_format: str = "qcow2"
) -> str:
    root = ET.Element("volume")
    sub(root, "name", name)
    sub(root, "capacity", str(size_gib * GIB), unit="bytes")
    sub(root, "allocation", "0", unit="bytes")
    target = sub(root, "target")
    sub(target, "format", type=fmt)
    if fmt == "qcow2":
        # libvirt 9.0 otherwise writes qcow2 v2 (compat 0.10), which cannot hold the
        # persistent dirty bitmaps that incremental backups need.
        sub(target, "compat", "1.1")
    if backing:
        store = sub(root, "backingStore")
        sub(store, "path", backing)
        sub(store, "format", type=backing_format)
    return to_string(root)


def raw_volume_xml(name: str, size_bytes: int) -> str:
    root = ET.Element("volume")
    sub(root, "name", name)
    sub(root, "capacity", str(size_bytes), unit="bytes")
    target = sub(root, "target")
    sub(target, "format", type="raw")
    return to_string(root)


@dataclass
class VolumeState:
    pool: str
    name: str
    path: str
    capacity: int
    format: str
    backing: str | None
    backing_format: str | None = None


def read_volume(pool: str, xml: str) -> VolumeState:
    root = ET.fromstring(xml)
    fmt = root.find("target/format")
    backing_fmt = root.find("backingStore/format")
    return VolumeState(
        pool=pool,
        name=root.findtext("name", ""),
        path=root.findtext("target/path", ""),
        capacity=int(root.findtext("capacity", "0")),
        format=fmt.get("type", "raw") if fmt is not None else "raw",
        backing=root.findtext("backingStore/path"),
        backing_format=backing_fmt.get("type") if backing_fmt is not None else None,
    )


# Domains ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiskDevice:
    target: str
    path: str
    fmt: str
    serial: str = ""
    device: str = "disk"


@dataclass(frozen=True)
class NicDevice:
    mac: str
    network: str


@dataclass
class DomainDefinition:
    """Everything needed to define a domain; the VM engine fills it from a declaration."""

    name: str
    domain_type: str
    owner: Owner
    vcpus: int
    max_vcpus: int
    memory_mib: int
    max_memory_mib: int
    disks: list[DiskDevice]
    nics: list[NicDevice]
    console_log: str | None = None


def disk_device_element(disk: DiskDevice) -> ET.Element:
    element = ET.Element("disk", {"type": "file", "device": disk.device})
    sub(element, "driver", name="qemu", type=disk.fmt, discard="unmap")
    sub(element, "source", file=disk.path)
    if disk.device == "cdrom":
        sub(element, "target", dev=disk.target, bus="ide")
        sub(element, "readonly")
    else:
        sub(element, "target", dev=disk.target, bus="virtio")
    if disk.serial:
        sub(element, "serial", disk.serial)
    return element


def disk_device_xml(disk: DiskDevice) -> str:
    return to_string(disk_device_element(disk))


def nic_device_element(nic: NicDevice) -> ET.Element:
    element = ET.Element("interface", {"type": "network"})
    sub(element, "mac", address=nic.mac)
    sub(element, "source", network=nic.network)
    sub(element, "model", type="virtio")
    return element


def nic_device_xml(nic: NicDevice) -> str:
    return to_string(nic_device_element(nic))


def interfaces_on(domain_xml: str, mac: str, network: str) -> list[str]:
    """The XML of each of the domain's interfaces with this MAC on this network, as the domain
    holds it (PCI address and alias included: what tells two NICs of one MAC apart)."""
    found = []
    for element in ET.fromstring(domain_xml).findall("devices/interface"):
        address, source = element.find("mac"), element.find("source")
        if (
            address is not None
            and (address.get("address") or "").lower() == mac
            and source is not None
            and source.get("network") == network
        ):
            found.append(to_string(element))
    return found


def domain_xml(definition: DomainDefinition) -> str:
    root = ET.Element("domain", {"type": definition.domain_type})
    sub(root, "name", definition.name)
    add_metadata(root, definition.owner)
    sub(root, "memory", str(definition.max_memory_mib * KIB_PER_MIB), unit="KiB")
    sub(root, "currentMemory", str(definition.memory_mib * KIB_PER_MIB), unit="KiB")
    sub(root, "vcpu", str(definition.max_vcpus), placement="static", current=str(definition.vcpus))
    os_element = sub(root, "os")
    sub(os_element, "type", "hvm", arch="x86_64", machine="pc")
    sub(os_element, "boot", dev="hd")
    features = sub(root, "features")
    sub(features, "acpi")
    sub(features, "apic")
    if definition.domain_type == "kvm":
        sub(root, "cpu", mode="host-passthrough")
    sub(root, "clock", offset="utc")
    sub(root, "on_poweroff", "destroy")
    sub(root, "on_reboot", "restart")
    sub(root, "on_crash", "destroy")
    devices = sub(root, "devices")
    for disk in definition.disks:
        devices.append(disk_device_element(disk))
    for nic in definition.nics:
        devices.append(nic_device_element(nic))
    serial = sub(devices, "serial", type="pty")
    if definition.console_log:
        sub(serial, "log", file=definition.console_log, append="on")
    sub(serial, "target", port="0")
    console = sub(devices, "console", type="pty")
    sub(console, "target", type="serial", port="0")
    sub(devices, "memballoon", model="virtio")
    return to_string(root)


@dataclass
class DomainState:
    """A domain as libvirt reports it: persistent config, and live values when running."""

    name: str
    owner: Owner | None
    state: str
    autostart: bool
    vcpus: int
    max_vcpus: int
    memory_mib: int
    max_memory_mib: int
    disks: list[DiskDevice]
    nics: list[NicDevice]
    live_vcpus: int | None = None
    live_max_vcpus: int | None = None
    live_max_memory_mib: int | None = None


def read_domain(config_xml: str, state: str, autostart: bool) -> DomainState:
    root = ET.fromstring(config_xml)
    vcpu = root.find("vcpu")
    max_vcpus = int(vcpu.text or "1") if vcpu is not None else 1
    current = int(vcpu.get("current", max_vcpus)) if vcpu is not None else 1
    disks = []
    for element in root.findall("devices/disk"):
        source = element.find("source")
        target = element.find("target")
        driver = element.find("driver")
        disks.append(
            DiskDevice(
                target=target.get("dev", "") if target is not None else "",
                path=source.get("file", "") if source is not None else "",
                fmt=driver.get("type", "raw") if driver is not None else "raw",
                serial=element.findtext("serial", ""),
                device=element.get("device", "disk"),
            )
        )
    nics = []
    for element in root.findall("devices/interface"):
        mac = element.find("mac")
        source = element.find("source")
        nics.append(
            NicDevice(
                mac=(mac.get("address", "") if mac is not None else "").lower(),
                network=source.get("network", "") if source is not None else "",
            )
        )
    return DomainState(
        name=root.findtext("name", ""),
        owner=read_owner(root),
        state=state,
        autostart=autostart,
        vcpus=current,
        max_vcpus=max_vcpus,
        memory_mib=kib_to_mib(root.findtext("currentMemory") or root.findtext("memory", "0")),
        max_memory_mib=kib_to_mib(root.findtext("memory", "0")),
        disks=disks,
        nics=nics,
    )


def kib_to_mib(text: str) -> int:
    return int(text) // KIB_PER_MIB


def free_disk_target(used: set[str]) -> str:
    for target in DISK_TARGETS[1:]:
        if target not in used:
            return target
    raise ValueError("no free virtio disk target left (vdb..vdz are all in use)")


# Moving a domain to another host ------------------------------------------------------------


def volume_copy_xml(volume: VolumeState) -> str:
    """A volume like `volume` (name, exact capacity, format, backing file), empty: where a
    migration copies the volume's data on another host."""
    root = ET.Element("volume")
    sub(root, "name", volume.name)
    sub(root, "capacity", str(volume.capacity), unit="bytes")
    sub(root, "allocation", "0", unit="bytes")
    target = sub(root, "target")
    sub(target, "format", type=volume.format)
    if volume.format == "qcow2":
        sub(target, "compat", "1.1")  # as volume_xml: room for persistent dirty bitmaps
    if volume.backing:
        store = sub(root, "backingStore")
        sub(store, "path", volume.backing)
        sub(store, "format", type=volume.backing_format or "qcow2")
    return to_string(root)


def relocated_domain_xml(xml: str, paths: dict[str, str], log_dir: str) -> str:
    """A domain's XML for another host: each disk's source file per `paths` (old to new), and
    the console logs in `log_dir` (under their own file names)."""
    root = ET.fromstring(xml)
    for source in root.findall("devices/disk/source"):
        old = source.get("file")
        if old in paths:
            source.set("file", paths[old])
    for log in root.findall("devices/serial/log") + root.findall("devices/console/log"):
        name = (log.get("file") or "").rsplit("/", 1)[-1]
        if name:
            log.set("file", f"{log_dir.rstrip('/')}/{name}")
    return to_string(root)
