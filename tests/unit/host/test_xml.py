"""XML is built with ElementTree: metacharacters in values stay data, never markup; a domain's
interfaces are found by MAC and network with their address."""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ET

from ansible_collections.vce.kvm.plugins.module_utils.core.spec import NetworkSpec, StaticLease
from ansible_collections.vce.kvm.plugins.module_utils.host.ownership import Owner, read_owner
from ansible_collections.vce.kvm.plugins.module_utils.host.xml import (
    DiskDevice,
    DomainDefinition,
    NicDevice,
    VolumeState,
    domain_xml,
    interfaces_on,
    network_xml,
    read_domain,
    read_network,
    read_volume,
    relocated_domain_xml,
    volume_copy_xml,
)


def test_domain_xml_round_trip_keeps_owner_and_escapes_values():
    owner = Owner("acme", "vm", "web1", "abc", (("seed", "x'<&>\""),))
    definition = DomainDefinition(
        name="acme_web1",
        domain_type="qemu",
        owner=owner,
        vcpus=1,
        max_vcpus=4,
        memory_mib=128,
        max_memory_mib=512,
        disks=[DiskDevice("vda", "/pool/a&b <c>.qcow2", "qcow2", serial="boot")],
        nics=[NicDevice("52:54:00:00:00:01", "acme_lan")],
    )
    xml = domain_xml(definition)
    assert "a&amp;b &lt;c&gt;" in xml
    root = ET.fromstring(xml)
    assert read_owner(root) == owner
    state = read_domain(xml, "shutoff", False)
    assert (state.vcpus, state.max_vcpus, state.memory_mib, state.max_memory_mib) == (
        1,
        4,
        128,
        512,
    )
    assert state.disks[0].path == "/pool/a&b <c>.qcow2"
    assert state.nics == [NicDevice("52:54:00:00:00:01", "acme_lan")]


def test_network_xml_round_trip():
    spec = NetworkSpec(
        "lan",
        ipaddress.IPv4Network("10.1.0.0/24"),
        ipaddress.IPv4Address("10.1.0.1"),
        ipaddress.IPv4Address("10.1.0.100"),
        ipaddress.IPv4Address("10.1.0.200"),
        "isolated",
        1400,
    )
    lease = StaticLease("52:54:00:00:00:02", ipaddress.IPv4Address("10.1.0.5"), "web")
    xml = network_xml("acme_lan", spec, Owner("acme", "network", "lan", "h"), [lease])
    state = read_network(xml, True, True)
    assert state.mode == "isolated"
    assert str(state.cidr) == "10.1.0.0/24"
    assert state.mtu == 1400
    assert state.hosts == {lease.mac: lease}
    assert state.owner.tenant == "acme"


def test_interfaces_on_a_network_are_found_by_mac_and_network_with_their_address():
    xml = """<domain><devices>
      <interface type='network'><mac address='52:54:00:00:00:01'/><source network='acme_lan'/>
        <address type='pci' domain='0x0000' bus='0x00' slot='0x03' function='0x0'/></interface>
      <interface type='network'><mac address='52:54:00:00:00:01'/><source network='acme_dmz'/>
        <address type='pci' domain='0x0000' bus='0x00' slot='0x07' function='0x0'/></interface>
    </devices></domain>"""
    [found] = interfaces_on(xml, "52:54:00:00:00:01", "acme_lan")
    assert 'slot="0x03"' in found and "acme_dmz" not in found
    assert interfaces_on(xml, "52:54:00:00:00:02", "acme_lan") == []


def test_a_routed_network_names_no_forward_interface_and_an_older_ones_is_read():
    spec = NetworkSpec(
        "dmz",
        ipaddress.IPv4Network("10.4.0.0/24"),
        ipaddress.IPv4Address("10.4.0.1"),
        ipaddress.IPv4Address("10.4.0.100"),
        ipaddress.IPv4Address("10.4.0.200"),
        "routed",
        uplink="up0",
    )
    root = ET.fromstring(network_xml("acme_dmz", spec, Owner("acme", "network", "dmz", "h"), []))
    assert root.find("forward").attrib == {"mode": "route"}
    state = read_network(ET.tostring(root, encoding="unicode"), True, True)
    assert (state.mode, state.forward_dev) == ("routed", None)
    root.find("forward").set("dev", "up0")
    older = read_network(ET.tostring(root, encoding="unicode"), True, True)
    assert (older.mode, older.forward_dev) == ("routed", "up0")


def lan(gateway: str = "10.1.0.1") -> NetworkSpec:
    return NetworkSpec(
        "lan",
        ipaddress.IPv4Network("10.1.0.0/24"),
        ipaddress.IPv4Address(gateway),
        ipaddress.IPv4Address("10.1.0.100"),
        ipaddress.IPv4Address("10.1.0.200"),
        "isolated",
    )


def test_a_network_has_one_gateway_mac_on_every_host_and_no_stp():
    owner = Owner("acme", "network", "lan", "h")
    first = ET.fromstring(network_xml("acme_lan", lan(), owner, []))
    again = read_network(network_xml("acme_lan", lan(), owner, []), True, True)
    assert first.find("bridge").get("stp") == "off"
    mac = first.find("mac").get("address")
    assert again.mac == mac and mac.startswith("02:") and len(mac.split(":")) == 6
    # A zone link's other end has another gateway on the same segment: another MAC.
    assert read_network(network_xml("acme_lan", lan("10.1.0.2"), owner, []), True, True).mac != mac
    assert read_network(network_xml("beta_lan", lan(), owner, []), True, True).mac != mac


def test_a_relocated_domain_has_the_new_disk_paths_and_console_log_directory():
    definition = DomainDefinition(
        name="acme_web1",
        domain_type="qemu",
        owner=Owner("acme", "vm", "web1", "abc"),
        vcpus=1,
        max_vcpus=1,
        memory_mib=96,
        max_memory_mib=96,
        disks=[
            DiskDevice("vda", "/a/pool/acme_web1.boot.qcow2", "qcow2", serial="boot"),
            DiskDevice("vdb", "/elsewhere/other.img", "raw"),
        ],
        nics=[NicDevice("52:54:00:00:00:01", "acme_lan")],
        console_log="/a/log/acme_web1.console.log",
    )
    paths = {"/a/pool/acme_web1.boot.qcow2": "/b/pool/acme_web1.boot.qcow2"}
    moved = relocated_domain_xml(domain_xml(definition), paths, "/b/log/")
    state = read_domain(moved, "shutoff", False)
    assert [d.path for d in state.disks] == ["/b/pool/acme_web1.boot.qcow2", "/elsewhere/other.img"]
    root = ET.fromstring(moved)
    assert root.find("devices/serial/log").get("file") == "/b/log/acme_web1.console.log"
    assert read_owner(root) == definition.owner


def test_a_volume_copy_has_the_exact_size_format_and_backing_file():
    volume = VolumeState("default", "acme_web1.boot.qcow2", "/a/x", 1073741824 + 512, "qcow2",
                         "/images/base.qcow2", "qcow2")  # fmt: skip
    copy = read_volume("default", volume_copy_xml(volume))
    assert (copy.name, copy.capacity, copy.format, copy.backing, copy.backing_format) == (
        volume.name, volume.capacity, "qcow2", "/images/base.qcow2", "qcow2"
    )  # fmt: skip
    raw = read_volume(
        "default", volume_copy_xml(VolumeState("default", "d.img", "/a/d", 9, "raw", None))
    )
    assert (raw.format, raw.backing, raw.capacity) == ("raw", None, 9)
