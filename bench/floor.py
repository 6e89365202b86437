"""The floor of the 10-VM benchmark: a bare Python script making the minimal libvirt calls.

It creates what one ``vce.kvm.environment`` run creates for N VMs, and nothing more:

* one isolated network with a DHCP range and one static host entry per VM
  (networkDefineXML, setAutostart, create);
* per VM a qcow2 overlay volume on the base image (storagePool.createXML), a domain
  (defineXML, setAutostart) that is started (create).

No reads, no comparisons, no idempotence: this is what a hand-written script costs. All XML is
built with ElementTree. Cleanup is the caller's job (``--cleanup`` removes what a run made).

    python bench/floor.py --uri URI --image BASE.qcow2 --count 10 [--cleanup]

Prints one JSON object on stdout: the phases' durations in seconds, measured inside the script.

``--quick`` (for CI) needs no daemon of the caller's: it starts a private libvirtd (as
bench/env10.py does), creates 2 VMs, checks them, runs the cleanup, checks nothing is left;
exit 1 when a check fails.

    python bench/floor.py --quick
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import libvirt

GIB = 1024**3
MAC_PREFIX = "52:54:00:f1"


@dataclass(frozen=True)
class Vm:
    name: str
    mac: str
    ip: str


def plan_vms(prefix: str, count: int, cidr: ipaddress.IPv4Network) -> list[Vm]:
    """VM i gets host address .10+i and a MAC derived from i."""
    hosts = list(cidr.hosts())
    return [
        Vm(f"{prefix}_vm{i}", f"{MAC_PREFIX}:{i >> 8:02x}:{i & 0xFF:02x}", str(hosts[9 + i]))
        for i in range(1, count + 1)
    ]


def network_xml(name: str, cidr: ipaddress.IPv4Network, vms: list[Vm]) -> str:
    hosts = list(cidr.hosts())
    root = ET.Element("network")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "bridge", {"stp": "on", "delay": "0"})
    ip = ET.SubElement(root, "ip", {"address": str(hosts[0]), "prefix": str(cidr.prefixlen)})
    dhcp = ET.SubElement(ip, "dhcp")
    ET.SubElement(dhcp, "range", {"start": str(hosts[99]), "end": str(hosts[199])})
    for vm in vms:
        ET.SubElement(dhcp, "host", {"mac": vm.mac, "ip": vm.ip, "name": vm.name})
    return ET.tostring(root, encoding="unicode")


def volume_xml(name: str, size_gib: int, backing: str) -> str:
    root = ET.Element("volume")
    ET.SubElement(root, "name").text = name
    ET.SubElement(root, "capacity", {"unit": "bytes"}).text = str(size_gib * GIB)
    ET.SubElement(root, "allocation", {"unit": "bytes"}).text = "0"
    ET.SubElement(ET.SubElement(root, "target"), "format", {"type": "qcow2"})
    store = ET.SubElement(root, "backingStore")
    ET.SubElement(store, "path").text = backing
    ET.SubElement(store, "format", {"type": "qcow2"})
    return ET.tostring(root, encoding="unicode")


def domain_xml(
    vm: Vm, domain_type: str, memory_mib: int, disk: str, network: str, console_log: str | None
) -> str:
    root = ET.Element("domain", {"type": domain_type})
    ET.SubElement(root, "name").text = vm.name
    ET.SubElement(root, "memory", {"unit": "KiB"}).text = str(memory_mib * 1024)
    ET.SubElement(root, "vcpu").text = "1"
    os_element = ET.SubElement(root, "os")
    ET.SubElement(os_element, "type", {"arch": "x86_64", "machine": "pc"}).text = "hvm"
    ET.SubElement(os_element, "boot", {"dev": "hd"})
    features = ET.SubElement(root, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    ET.SubElement(root, "on_poweroff").text = "destroy"
    devices = ET.SubElement(root, "devices")
    disk_element = ET.SubElement(devices, "disk", {"type": "file", "device": "disk"})
    ET.SubElement(disk_element, "driver", {"name": "qemu", "type": "qcow2"})
    ET.SubElement(disk_element, "source", {"file": disk})
    ET.SubElement(disk_element, "target", {"dev": "vda", "bus": "virtio"})
    nic = ET.SubElement(devices, "interface", {"type": "network"})
    ET.SubElement(nic, "mac", {"address": vm.mac})
    ET.SubElement(nic, "source", {"network": network})
    ET.SubElement(nic, "model", {"type": "virtio"})
    serial = ET.SubElement(devices, "serial", {"type": "pty"})
    if console_log:
        ET.SubElement(serial, "log", {"file": console_log, "append": "on"})
    ET.SubElement(serial, "target", {"port": "0"})
    console = ET.SubElement(devices, "console", {"type": "pty"})
    ET.SubElement(console, "target", {"type": "serial", "port": "0"})
    return ET.tostring(root, encoding="unicode")


def create(args: argparse.Namespace) -> dict[str, float]:
    cidr = ipaddress.IPv4Network(args.cidr)
    vms = plan_vms(args.prefix, args.count, cidr)
    network = f"{args.prefix}_lan"
    timings: dict[str, float] = {}
    start = time.perf_counter()
    conn = libvirt.open(args.uri)
    timings["connect"] = time.perf_counter() - start

    mark = time.perf_counter()
    net = conn.networkDefineXML(network_xml(network, cidr, vms))
    net.setAutostart(1)
    net.create()
    timings["network"] = time.perf_counter() - mark

    pool = conn.storagePoolLookupByName(args.pool)
    volumes_s = domains_s = 0.0
    for vm in vms:
        mark = time.perf_counter()
        vol = pool.createXML(volume_xml(f"{vm.name}.qcow2", args.size_gib, args.image), 0)
        volumes_s += time.perf_counter() - mark
        mark = time.perf_counter()
        log = f"{args.console_dir}/{vm.name}.console.log" if args.console_dir else None
        xml = domain_xml(vm, args.domain_type, args.memory_mib, vol.path(), network, log)
        dom = conn.defineXML(xml)
        dom.setAutostart(1)
        dom.create()
        domains_s += time.perf_counter() - mark
    timings["volumes"] = volumes_s
    timings["domains"] = domains_s
    conn.close()
    timings["total_in_script"] = time.perf_counter() - start
    return timings


def cleanup(args: argparse.Namespace) -> dict[str, float]:
    """Remove every domain, volume and network whose name starts with PREFIX_."""
    start = time.perf_counter()
    conn = libvirt.open(args.uri)
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    prefix = f"{args.prefix}_"
    for dom in conn.listAllDomains(0):
        if dom.name().startswith(prefix):
            if dom.isActive():
                dom.destroy()
            dom.undefine()
    pool = conn.storagePoolLookupByName(args.pool)
    pool.refresh(0)
    for vol in pool.listAllVolumes(0):
        if vol.name().startswith(prefix):
            vol.delete(0)
    for net in conn.listAllNetworks(0):
        if net.name().startswith(prefix):
            if net.isActive():
                net.destroy()
            net.undefine()
    conn.close()
    return {"cleanup": time.perf_counter() - start}


def quick(args: argparse.Namespace) -> int:
    """Create and clean up a few VMs on a private libvirtd, checking both did their job."""
    # Imported here only: the measured floor must not pay for the benchmark's imports.
    import env10

    with env10.private_host(env10.QUICK_COUNT, quick=True) as ctx:
        args.uri, args.image, args.count = ctx.daemon.uri, str(ctx.image), ctx.count
        args.domain_type, args.console_dir = ctx.domain_type, str(ctx.console_dir)
        result = create(args)
        made = env10.count_objects(ctx.conn, args.prefix)
        result.update(cleanup(args))
        left = env10.count_objects(ctx.conn, args.prefix)
    json.dump(result, sys.stdout)
    print()
    wanted = {"running_domains": args.count, "overlay_volumes": args.count, "active_networks": 1}
    if made != wanted or any(left.values()):
        print(f"ERROR made {made} (wanted {wanted}), left after cleanup {left}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri")
    parser.add_argument("--image", help="qcow2 base image (absolute path)")
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--prefix", default="floor")
    parser.add_argument("--pool", default="default")
    parser.add_argument("--cidr", default="10.214.0.0/24")
    parser.add_argument("--memory-mib", type=int, default=128)
    parser.add_argument("--size-gib", type=int, default=1)
    parser.add_argument("--domain-type", default="qemu", choices=["qemu", "kvm"])
    parser.add_argument("--console-dir", default="", help="serial console logs go here")
    parser.add_argument("--cleanup", action="store_true", help="remove what a run created")
    parser.add_argument("--quick", action="store_true", help="CI smoke run on a private libvirtd")
    args = parser.parse_args(argv)
    if args.quick:
        return quick(args)
    if not (args.uri and args.image):
        parser.error("--uri and --image are required (or --quick)")
    result = cleanup(args) if args.cleanup else create(args)
    json.dump(result, sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
