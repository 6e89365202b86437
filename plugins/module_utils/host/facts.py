# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Read-only facts of a tenant's objects on a host: what `info` and module results show."""

from __future__ import annotations

from typing import Any

from ..core.errors import libvirt, libvirt_action
from .connection import Host, TenantInventory
from .ownership import tenant_prefix
from .xml import GIB


def dynamic_leases(host: Host, inventory: TenantInventory) -> dict[str, str]:
    """MAC -> IP from dnsmasq's current leases on the tenant's active networks."""
    leases: dict[str, str] = {}
    for state in inventory.networks.values():
        if not state.active:
            continue
        with libvirt_action("read the DHCP leases of", f"network {state.name}"):
            net = host.conn.networkLookupByName(state.name)
            try:
                current = net.DHCPLeases()
            except libvirt.libvirtError as error:
                if error.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                    raise
                current = []  # drivers without dnsmasq (libvirt's test driver) have none
            for lease in current:
                if lease.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV4:
                    leases[str(lease["mac"]).lower()] = str(lease["ipaddr"])
    return leases


def tenant_facts(
    host: Host, tenant: str, inventory: TenantInventory | None = None
) -> dict[str, Any]:
    inventory = inventory or host.inventory(tenant)
    prefix = tenant_prefix(tenant)
    networks: dict[str, Any] = {}
    reserved: dict[str, tuple[str, str]] = {}
    by_libvirt_name: dict[str, str] = {}
    for _name, state in sorted(inventory.networks.items()):
        if state.owner is None or state.owner.tenant != tenant:
            continue
        by_libvirt_name[state.name] = state.owner.name
        networks[state.owner.name] = {
            "libvirt_name": state.name,
            "cidr": str(state.cidr),
            "gateway": str(state.gateway),
            "dhcp_range": [str(state.dhcp_start), str(state.dhcp_end)],
            "mode": state.mode,
            "mtu": state.mtu,
            "bridge": state.bridge,
            "active": state.active,
            "autostart": state.autostart,
            "static_leases": [
                {"mac": lease.mac, "ip": str(lease.ip), "hostname": lease.hostname}
                for lease in state.hosts.values()
            ],
        }
        for lease in state.hosts.values():
            reserved[lease.mac] = (state.owner.name, str(lease.ip))
    dynamic = dynamic_leases(host, inventory)
    vms: dict[str, Any] = {}
    attached: dict[str, str] = {}
    for _name, domain in sorted(inventory.domains.items()):
        if domain.owner is None or domain.owner.tenant != tenant:
            continue
        for disk in domain.disks:
            attached[disk.path] = domain.owner.name
        vms[domain.owner.name] = {
            "libvirt_name": domain.name,
            "state": domain.state,
            "autostart": domain.autostart,
            "vcpus": domain.live_vcpus or domain.vcpus,
            "max_vcpus": domain.max_vcpus,
            "memory_mib": domain.memory_mib,
            "max_memory_mib": domain.max_memory_mib,
            "spec_hash": domain.owner.spec_hash,
            "disks": [
                {"target": d.target, "path": d.path, "serial": d.serial, "device": d.device}
                for d in domain.disks
            ],
            "nics": [
                {
                    "mac": nic.mac,
                    "network": by_libvirt_name.get(nic.network, nic.network),
                    "ip": reserved.get(nic.mac, ("", dynamic.get(nic.mac)))[1],
                }
                for nic in domain.nics
            ],
        }
    disks: dict[str, Any] = {}
    for (_pool, vol_name), volume in sorted(inventory.volumes.items()):
        stem = vol_name[len(prefix) :].rsplit(".", 1)[0]
        disks[stem] = {
            "volume": vol_name,
            "pool": volume.pool,
            "path": volume.path,
            "size_gib": round(volume.capacity / GIB, 3),
            "format": volume.format,
            "backing_image": volume.backing,
            "attached_to": attached.get(volume.path),
        }
    return {"tenant": tenant, "networks": networks, "vms": vms, "disks": disks}
