"""Read libvirt directly, the way a user checks what the modules did."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import libvirt
from ansible_collections.vce.kvm.plugins.module_utils.host.xml import read_domain, read_network


def domain(conn: libvirt.virConnect, name: str):
    try:
        dom = conn.lookupByName(name)
    except libvirt.libvirtError:
        return None
    state = read_domain(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), "", bool(dom.autostart()))
    state.state = "running" if dom.isActive() else "shutoff"
    if dom.isActive():
        live = read_domain(dom.XMLDesc(0), "", False)
        state.live_vcpus = live.vcpus
        state.live_max_vcpus = live.max_vcpus
        state.live_max_memory_mib = live.max_memory_mib
    return state


def network_hosts(conn: libvirt.virConnect, name: str) -> dict:
    net = conn.networkLookupByName(name)
    return read_network(net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE), True, True).hosts


def volume(conn: libvirt.virConnect, pool: str, name: str):
    storage = conn.storagePoolLookupByName(pool)
    storage.refresh(0)
    try:
        vol = storage.storageVolLookupByName(name)
    except libvirt.libvirtError:
        return None
    root = ET.fromstring(vol.XMLDesc(0))
    return {
        "capacity": int(root.findtext("capacity")),
        "backing": root.findtext("backingStore/path"),
        "path": root.findtext("target/path"),
        "format": root.find("target/format").get("type"),
    }


def tenant_objects(conn: libvirt.virConnect, tenant: str) -> set[str]:
    prefix = f"{tenant}_"
    names = {f"domain:{d.name()}" for d in conn.listAllDomains(0) if d.name().startswith(prefix)}
    names |= {f"network:{n.name()}" for n in conn.listAllNetworks(0) if n.name().startswith(prefix)}
    for storage in conn.listAllStoragePools(0):
        storage.refresh(0)
        names |= {
            f"volume:{v.name()}" for v in storage.listAllVolumes(0) if v.name().startswith(prefix)
        }
    return names
