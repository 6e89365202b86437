# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tenant disks: storage volumes named with the tenant prefix, grown live, never shrunk.

libvirt volumes carry no <metadata>; a disk's ownership is its name (tenant prefix, and a
separator declared names cannot contain), and the serial of the attached device.
"""

from __future__ import annotations

from ...core.errors import SpecError, libvirt, libvirt_action
from ...core.plan import Change, Plan
from ...core.spec import DiskSpec
from ...host.connection import Host, TenantInventory
from ...host.ownership import volume_name
from ...host.xml import GIB, DomainState, VolumeState, volume_xml
from .image import ImageSources, Source, find_volume

KIND = "disk"


def disk_summary(spec: DiskSpec) -> dict[str, object]:
    return {
        "size_gib": spec.size_gib,
        "pool": spec.pool,
        "format": spec.format,
        "backing_image": spec.backing_image,
    }


def volume_summary(volume: VolumeState) -> dict[str, object]:
    return {
        "size_gib": round(volume.capacity / GIB, 3),
        "pool": volume.pool,
        "format": volume.format,
        "backing_image": volume.backing,
        "path": volume.path,
    }


def attached_to(inventory: TenantInventory, path: str) -> DomainState | None:
    """The domain using the volume at `path`: the tenant's, or one named like theirs."""
    for domain in [*inventory.domains.values(), *inventory.foreign_domains.values()]:
        if any(disk.path == path for disk in domain.disks):
            return domain
    return None


def pool_directory(inventory: TenantInventory, pool: str, field: str) -> str:
    if pool not in inventory.pools:
        known = ", ".join(sorted(inventory.pools)) or "none"
        raise SpecError(field, f"unknown storage pool {pool!r} (pools on this host: {known})")
    return inventory.pools[pool]


class DiskPlanner:
    """Observe, plan and apply one tenant's standalone disks on one host."""

    def __init__(self, host: Host, tenant: str, images: ImageSources | None = None) -> None:
        self.host = host
        self.tenant = tenant
        self.images = images or ImageSources.nothing()

    def backing(self, spec: DiskSpec, inventory: TenantInventory, path: str) -> Source | None:
        if spec.backing_image is None:
            return None
        return self.images.resolve(spec.backing_image, None, inventory, f"{path}backing_image")

    def planned_path(self, spec: DiskSpec, inventory: TenantInventory, field: str) -> str:
        pool_path = pool_directory(inventory, spec.pool, field)
        return f"{pool_path.rstrip('/')}/{volume_name(self.tenant, spec.name, spec.format)}"

    def plan_present(self, spec: DiskSpec, inventory: TenantInventory, path: str = "") -> Plan:
        plan = Plan()
        self.planned_path(spec, inventory, f"{path}pool")
        inventory.refuse_duplicated_disk(spec.name)
        volume = find_volume(inventory, self.tenant, spec.name)
        backing = self.backing(spec, inventory, path)
        if volume is None:
            name = volume_name(self.tenant, spec.name, spec.format)
            xml = volume_xml(
                name,
                spec.size_gib,
                spec.format,
                backing.path if backing else None,
                backing.format if backing else "qcow2",
            )
            plan.add(
                Change(
                    KIND,
                    spec.name,
                    "create",
                    after=disk_summary(spec),
                    run=lambda: self.create(spec.pool, name, xml),
                )
            )
            return plan
        self.check_immutable(spec, volume, backing, path)
        wanted = spec.size_gib * GIB
        if wanted < volume.capacity:
            raise SpecError(
                f"{path}size_gib",
                f"disk {spec.name!r} is {volume.capacity / GIB:g} GiB; shrinking it to "
                f"{spec.size_gib} GiB would destroy data and is refused",
            )
        if wanted > volume.capacity:
            domain = attached_to(inventory, volume.path)
            if domain is not None:
                inventory.refuse_intruder("vm", domain.name)
            plan.add(
                Change(
                    KIND,
                    spec.name,
                    "resize",
                    field="size_gib",
                    before=volume.capacity / GIB,
                    after=spec.size_gib,
                    run=lambda: self.grow(volume, wanted, domain),
                )
            )
        return plan

    @staticmethod
    def check_immutable(
        spec: DiskSpec, volume: VolumeState, backing: Source | None, path: str
    ) -> None:
        if volume.pool != spec.pool:
            raise SpecError(
                f"{path}pool",
                f"disk {spec.name!r} lives in pool {volume.pool!r}; moving it is not supported",
            )
        if volume.format != spec.format:
            raise SpecError(
                f"{path}format",
                f"disk {spec.name!r} is {volume.format}; converting it is not supported",
            )
        if backing is not None and volume.backing != backing.path:
            raise SpecError(
                f"{path}backing_image",
                f"disk {spec.name!r} is backed by {volume.backing!r}; changing the backing "
                "image would replace its data and is refused",
            )

    def plan_absent(self, name: str, inventory: TenantInventory) -> Plan:
        plan = Plan()
        inventory.refuse_duplicated_disk(name)
        volume = find_volume(inventory, self.tenant, name)
        if volume is None:
            return plan
        domain = attached_to(inventory, volume.path)
        if domain is not None:
            owned = domain.name in inventory.domains
            user = domain.owner.name if owned and domain.owner else domain.name
            raise SpecError(
                "state",
                f"disk {name!r} is attached to VM {user!r}; detach it first (remove it from "
                "the VM's disks or set attach_to to null)",
            )
        plan.add(self.delete_change(name, volume))
        return plan

    def delete_change(self, name: str, volume: VolumeState) -> Change:
        return Change(
            KIND, name, "delete", before=volume_summary(volume), run=lambda: self.delete(volume)
        )

    # apply -----------------------------------------------------------------------------------

    def create(self, pool_name: str, name: str, xml: str) -> None:
        pool = self.host.lookup_pool(pool_name)
        with libvirt_action("create", f"volume {name} in pool {pool_name}"):
            pool.createXML(xml, 0)

    def lookup(self, volume: VolumeState) -> object:
        pool = self.host.lookup_pool(volume.pool)
        with libvirt_action("find", f"volume {volume.name}"):
            return pool.storageVolLookupByName(volume.name)

    def grow(self, volume: VolumeState, size: int, domain: DomainState | None) -> None:
        if domain is not None and domain.state == "running":
            target = next(d.target for d in domain.disks if d.path == volume.path)
            with libvirt_action("grow", f"disk {volume.name} of running domain {domain.name}"):
                dom = self.host.conn.lookupByName(domain.name)
                dom.blockResize(target, size, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
            return
        vol = self.lookup(volume)
        with libvirt_action("grow", f"volume {volume.name}"):
            vol.resize(size, 0)

    def delete(self, volume: VolumeState) -> None:
        vol = self.lookup(volume)
        with libvirt_action("delete", f"volume {volume.name}"):
            vol.delete(0)
