# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tenant VMs: a libvirt domain, its overlay boot disk, cloud-init seed, NICs and leases."""

from __future__ import annotations

import contextlib
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from ...core.errors import ApplyError, SpecError, VceError, libvirt, libvirt_action, vanished
from ...core.plan import UNKNOWN, Change, ChangeClass, Plan
from ...core.spec import DiskSpec, NetworkSpec, StaticLease, VmSpec, check_host_address, spec_hash
from ...host.cloudinit import seed_digest, seed_image
from ...host.connection import Host, TenantInventory
from ...host.ownership import (
    NAMESPACE,
    PREFIX,
    Owner,
    object_name,
    owner_element,
    volume_name,
)
from ...host.xml import (
    GIB,
    KIB_PER_MIB,
    DiskDevice,
    DomainDefinition,
    DomainState,
    NetworkState,
    NicDevice,
    disk_device_xml,
    domain_xml,
    free_disk_target,
    interfaces_on,
    nic_device_xml,
    raw_volume_xml,
    to_string,
    volume_xml,
)
from .disk import DiskPlanner, attached_to, find_volume, pool_directory
from .image import ImageSources, Source
from .network import NetworkPlanner, managed_leases

KIND = "vm"
SEED_TARGET = "hdc"
POLL_SECONDS = 0.2
SHUTDOWN_RETRY_SECONDS = 2.0
UNDEFINE_FLAGS = (
    "VIR_DOMAIN_UNDEFINE_MANAGED_SAVE",
    "VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA",
    "VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA",
    "VIR_DOMAIN_UNDEFINE_NVRAM",
)


def vm_hash(spec: VmSpec) -> str:
    """The configuration's digest; power state is operation, not configuration."""
    return spec_hash(replace(spec, state=""))


def send_all(stream: Any, payload: bytes, chunk: int = 256 * 1024) -> None:
    """virStream.send may take fewer bytes than offered: keep sending until all are taken."""
    view = memoryview(payload)
    sent = 0
    while sent < len(payload):
        taken = stream.send(bytes(view[sent : sent + chunk]))
        if taken <= 0:
            stream.abort()
            raise OSError(f"the upload stream stopped after {sent} of {len(payload)} bytes")
        sent += taken
    stream.finish()


def boot_volume_name(tenant: str, vm: str) -> str:
    return f"{object_name(tenant, vm)}.boot.qcow2"


def seed_volume_name(tenant: str, vm: str) -> str:
    return f"{object_name(tenant, vm)}.seed.iso"


def undone(reason: str, made: list[str], left: dict[str, str]) -> str:
    """A failed create's reason, with what it had made and what of that it could not remove."""
    removed = [f"volume {name}" for name in made if name not in left]
    notes = [f"removed what it had made: {', '.join(removed)}"] if removed else []
    notes += [f"could not remove volume {name}: {why}" for name, why in left.items()]
    return f"{reason} ({'; '.join(notes)})" if notes else reason


def vm_summary(spec: VmSpec) -> dict[str, Any]:
    return {
        "vcpus": spec.vcpus,
        "max_vcpus": spec.max_vcpus,
        "memory_mib": spec.memory_mib,
        "max_memory_mib": spec.max_memory_mib,
        "boot_disk": {
            "image": spec.boot_disk.image,
            "size_gib": spec.boot_disk.size_gib,
            "pool": spec.boot_disk.pool,
        },
        "disks": list(spec.disks),
        "nics": [
            {"network": n.network, "mac": n.mac, "ip": str(n.ip) if n.ip else UNKNOWN}
            for n in spec.nics
        ],
        "cloud_init": spec.cloud_init is not None,
        "state": spec.state,
    }


def domain_summary(domain: DomainState) -> dict[str, Any]:
    return {
        "vcpus": domain.vcpus,
        "max_vcpus": domain.max_vcpus,
        "memory_mib": domain.memory_mib,
        "max_memory_mib": domain.max_memory_mib,
        "disks": [d.path for d in domain.disks],
        "nics": [{"network": n.network, "mac": n.mac} for n in domain.nics],
        "state": domain.state,
    }


@dataclass(frozen=True)
class Dimension:
    """vCPUs or memory: a current value that may change live up to a maximum fixed at boot."""

    field: str
    max_field: str
    wanted: int
    wanted_max: int
    config: int
    config_max: int
    live: int | None  # None when stopped, or when the live value is not compared
    live_max: int | None  # None when stopped
    set_max: Callable[[], None]
    set_current: Callable[[bool], None]  # argument: also change the running VM


def plan_dimension(plan: Plan, name: str, d: Dimension, restart_needed: list[str]) -> None:
    """Within the running maximum a change is live; beyond it, it waits for a restart."""
    running = d.live_max is not None
    if d.config_max != d.wanted_max:
        cls = ChangeClass.RESTART if running else ChangeClass.LIVE
        plan.add(
            Change(
                KIND,
                name,
                "update",
                change_class=cls,
                field=d.max_field,
                before=d.config_max,
                after=d.wanted_max,
                run=d.set_max,
            )
        )
    if running and d.live_max != d.wanted_max:
        restart_needed.append(d.max_field)
    fits_live = running and d.wanted <= d.live_max
    live_differs = d.live is not None and d.live != d.wanted
    if d.config != d.wanted or (live_differs and fits_live):
        cls = ChangeClass.RESTART if running and not fits_live else ChangeClass.LIVE
        before = d.live if live_differs and fits_live else d.config
        plan.add(
            Change(
                KIND,
                name,
                "update",
                change_class=cls,
                field=d.field,
                before=before,
                after=d.wanted,
                run=lambda: d.set_current(fits_live),
            )
        )
    effective = d.live if d.live is not None else d.config
    if running and not fits_live and effective != d.wanted:
        restart_needed.append(d.field)


def power(
    name: str,
    action: str,
    before: str,
    after: str,
    run: Callable[[], None],
    change_class: ChangeClass = ChangeClass.LIVE,
) -> Change:
    """A change of a VM's power state."""
    return Change(KIND, name, action, change_class, "state", before, after, run)


@dataclass(frozen=True)
class BoundPublicIp:
    """A public IP the ledger records as bound on this host to one of the tenant's VMs."""

    name: str
    address: str
    vm: str
    private_ip: str


@dataclass
class Context:
    """What a VM's plan may rely on besides the host: the rest of the same declaration."""

    networks: dict[str, NetworkSpec] = field(default_factory=dict)
    disks: dict[str, DiskSpec] = field(default_factory=dict)
    allow_restart: bool = False
    path: str = ""
    # Bound public IPs this run does not declare (a run that declares one binds it itself).
    public_ips: tuple[BoundPublicIp, ...] = ()


@dataclass(frozen=True)
class NicMove:
    """A NIC (same MAC) going to another of the tenant's networks, its fixed-IP lease with it."""

    mac: str
    old: str  # libvirt network names
    new: str
    old_lease: StaticLease | None  # the VM's lease on the old network: removed after the move
    lease: StaticLease | None  # the declared fixed IP's lease on the new network
    add_lease: bool  # the new network lacks it: added before the move
    before: dict[str, Any]  # declared network and address, for the plan
    after: dict[str, Any]

    def carried(self) -> set[tuple[str, str]]:
        """(network, MAC) of the leases this move plans: the old network's, and the new one's
        with a fixed IP (without one, a left-over lease there is removed as any stale one)."""
        return {(self.old, self.mac), *([(self.new, self.mac)] if self.lease else [])}


def vm_lease(state: NetworkState | None, tenant: str, mac: str) -> StaticLease | None:
    """The lease of `mac` on the tenant's network that a VM's NIC put there (not one of the
    network's own static leases), or None."""
    if state is None or state.owner is None or state.owner.tenant != tenant:
        return None
    if mac in managed_leases(state):
        return None
    return state.hosts.get(mac)


@dataclass
class Resolved:
    """A VM declaration with every reference turned into a libvirt name or path."""

    spec: VmSpec
    libvirt_name: str
    image: Source  # the base image of the boot disk
    boot_path: str
    seed_path: str
    extra_disks: list[tuple[str, str, str]]  # declared name, path, format
    networks: list[str]  # libvirt network per NIC
    leases: list[tuple[str, str, StaticLease]]  # declared network, libvirt network, lease
    seed: str  # digest of the cloud-init seed, "" without one


class VmPlanner:
    """Observe, plan and apply one tenant's VMs on one host."""

    def __init__(
        self,
        host: Host,
        tenant: str,
        shutdown_timeout: float = 60.0,
        images: ImageSources | None = None,
    ) -> None:
        self.host = host
        self.tenant = tenant
        self.networks = NetworkPlanner(host, tenant)
        self.disks = DiskPlanner(host, tenant, images)
        self.shutdown_timeout = shutdown_timeout

    # references ------------------------------------------------------------------------------

    def resolve(self, spec: VmSpec, inventory: TenantInventory, ctx: Context) -> Resolved:
        libvirt_name = object_name(self.tenant, spec.name)
        boot_pool = pool_directory(inventory, spec.boot_disk.pool, f"{ctx.path}boot_disk.pool")
        image = self.disks.images.resolve(
            spec.boot_disk.image,
            spec.boot_disk.image_format,
            inventory,
            f"{ctx.path}boot_disk.image",
        )
        seed_pool = boot_pool.rstrip("/")
        extra = [
            self.resolve_disk(name, inventory, ctx, i, libvirt_name)
            for i, name in enumerate(spec.disks)
        ]
        networks: list[str] = []
        leases: list[tuple[str, str, StaticLease]] = []
        for i, nic in enumerate(spec.nics):
            net_name, cidr = self.resolve_network(nic.network, inventory, ctx, i)
            networks.append(net_name)
            if nic.ip is not None:
                check_host_address(nic.ip, cidr, f"{ctx.path}nics[{i}].ip")
                hostname = spec.cloud_init.hostname if spec.cloud_init else spec.name
                leases.append((nic.network, net_name, StaticLease(nic.mac, nic.ip, hostname)))
        self.check_address_conflicts(spec, inventory, leases, ctx)
        seed = seed_digest(libvirt_name, spec.cloud_init) if spec.cloud_init else ""
        return Resolved(
            spec,
            libvirt_name,
            image,
            f"{boot_pool.rstrip('/')}/{boot_volume_name(self.tenant, spec.name)}",
            f"{seed_pool}/{seed_volume_name(self.tenant, spec.name)}",
            extra,
            networks,
            leases,
            seed,
        )

    def resolve_disk(
        self, name: str, inventory: TenantInventory, ctx: Context, index: int, vm: str
    ) -> tuple[str, str, str]:
        """A data disk of VM `vm` (its libvirt name): one another VM uses is refused, since two
        guests writing one disk corrupt it (and QEMU refuses to start the second)."""
        inventory.refuse_duplicated_disk(name)
        volume = find_volume(inventory, self.tenant, name)
        if volume is not None:
            user = attached_to(inventory, volume.path)
            if user is not None and user.name != vm:
                holder = user.owner.name if user.owner else user.name
                raise SpecError(
                    f"{ctx.path}disks[{index}]",
                    f"disk {name!r} is attached to VM {holder!r}; detach it from that VM first",
                )
            return name, volume.path, volume.format
        declared = ctx.disks.get(name)
        if declared is None:
            raise SpecError(
                f"{ctx.path}disks[{index}]", f"unknown disk {name!r} of tenant {self.tenant!r}"
            )
        pool_path = pool_directory(inventory, declared.pool, f"{ctx.path}disks[{index}]")
        path = f"{pool_path.rstrip('/')}/{volume_name(self.tenant, name, declared.format)}"
        return name, path, declared.format

    def resolve_network(
        self, name: str, inventory: TenantInventory, ctx: Context, index: int
    ) -> tuple[str, ipaddress.IPv4Network]:
        libvirt_name = object_name(self.tenant, name)
        declared = ctx.networks.get(name)
        if declared is not None:
            return libvirt_name, declared.cidr
        inventory.refuse_intruder("network", libvirt_name)
        state = inventory.networks.get(libvirt_name)
        if state is None or state.cidr is None:
            raise SpecError(
                f"{ctx.path}nics[{index}].network",
                f"unknown network {name!r} of tenant {self.tenant!r}",
            )
        return libvirt_name, state.cidr

    def check_address_conflicts(
        self,
        spec: VmSpec,
        inventory: TenantInventory,
        leases: list[tuple[str, str, StaticLease]],
        ctx: Context,
    ) -> None:
        libvirt_name = object_name(self.tenant, spec.name)
        for i, nic in enumerate(spec.nics):
            for domain in inventory.domains.values():
                if domain.name != libvirt_name and any(n.mac == nic.mac for n in domain.nics):
                    raise SpecError(
                        f"{ctx.path}nics[{i}].mac",
                        f"MAC {nic.mac} is already used by VM {domain.name!r}",
                    )
        own_macs = {nic.mac for nic in spec.nics}
        for declared_net, net_name, lease in leases:
            state = inventory.networks.get(net_name)
            if state is None:
                continue
            if lease.ip == state.gateway:
                raise SpecError(
                    f"{ctx.path}nics", f"{lease.ip} is the gateway of network {declared_net!r}"
                )
            for mac, other in state.hosts.items():
                if other.ip == lease.ip and mac not in own_macs:
                    raise SpecError(
                        f"{ctx.path}nics",
                        f"IP {lease.ip} on network {declared_net!r} is already leased to {mac}",
                    )

    # planning --------------------------------------------------------------------------------

    def owned(self, inventory: TenantInventory, name: str) -> DomainState | None:
        libvirt_name = object_name(self.tenant, name)
        inventory.refuse_intruder(KIND, libvirt_name)
        return inventory.domains.get(libvirt_name)

    def plan_present(self, spec: VmSpec, inventory: TenantInventory, ctx: Context) -> Plan:
        domain = self.owned(inventory, spec.name)
        resolved = self.resolve(spec, inventory, ctx)
        plan = Plan()
        moves = self.nic_moves(resolved, domain, inventory, ctx) if domain else []
        moving = {pair for move in moves for pair in move.carried()}
        self.plan_leases(plan, resolved, inventory, domain, moving)
        if domain is None:
            plan.changes.insert(
                0,
                Change(
                    KIND,
                    spec.name,
                    "create",
                    after=vm_summary(spec),
                    run=lambda: self.create(resolved, inventory),
                ),
            )
            return plan
        self.plan_update(plan, resolved, domain, inventory, ctx, moves)
        return plan

    def plan_leases(
        self,
        plan: Plan,
        resolved: Resolved,
        inventory: TenantInventory,
        domain: DomainState | None,
        moving: set[tuple[str, str]],
    ) -> None:
        """Leases of the VM's NICs added, changed or removed; `moving` (network, MAC): those a
        NIC move carries, planned with it."""
        wanted = {(net, lease.mac): (declared, lease) for declared, net, lease in resolved.leases}
        for (net_name, mac), (declared, lease) in sorted(wanted.items()):
            state = inventory.networks.get(net_name)
            # A network created in this plan has the lease in its definition.
            if state is None or (net_name, mac) in moving:
                continue
            current = state.hosts.get(mac)
            if current != lease:
                plan.add(
                    self.networks.lease_change(
                        declared, net_name, current, lease, KIND, resolved.spec.name
                    )
                )
        macs = {nic.mac for nic in resolved.spec.nics} | {
            n.mac for n in (domain.nics if domain else [])
        }
        for net_name, state in sorted(inventory.networks.items()):
            for mac in sorted(macs & set(state.hosts)):
                stale = (net_name, mac) not in wanted and (net_name, mac) not in moving
                if stale and vm_lease(state, self.tenant, mac) is not None:
                    plan.add(
                        self.networks.lease_change(
                            state.owner.name,
                            net_name,
                            state.hosts[mac],
                            None,
                            KIND,
                            resolved.spec.name,
                        )
                    )

    def plan_update(
        self,
        plan: Plan,
        r: Resolved,
        domain: DomainState,
        inventory: TenantInventory,
        ctx: Context,
        moves: list[NicMove],
    ) -> None:
        spec = r.spec
        running = domain.state in ("running", "paused")
        restart_needed: list[str] = []
        self.plan_cpu_memory(plan, spec, domain, running, restart_needed)
        self.plan_boot_disk(plan, r, inventory, domain, ctx)
        self.plan_extra_disks(plan, r, domain, running)
        self.plan_nics(plan, r, domain, running, moves)
        if running and moves:
            restart_needed.append("nics")
        self.plan_seed(plan, r, domain, running, restart_needed)
        name = spec.name
        if (
            plan.changes
            or domain.owner is None
            or domain.owner.spec_hash != vm_hash(spec)
            or domain.owner.get("seed") != r.seed
        ):
            owner = self.owner(spec, r.seed)
            plan.add(
                Change(
                    KIND,
                    name,
                    "update",
                    field="metadata",
                    before=domain.owner.spec_hash if domain.owner else None,
                    after=owner.spec_hash,
                    run=lambda: self.set_metadata(r.libvirt_name, owner),
                )
            )
        wants_autostart = spec.state == "running"
        if domain.autostart != wants_autostart:
            plan.add(
                Change(
                    KIND,
                    name,
                    "autostart",
                    field="autostart",
                    before=domain.autostart,
                    after=wants_autostart,
                    run=lambda: self.set_autostart(r.libvirt_name, wants_autostart),
                )
            )
        self.plan_power(plan, r, domain, restart_needed, ctx)

    def plan_cpu_memory(
        self,
        plan: Plan,
        spec: VmSpec,
        domain: DomainState,
        running: bool,
        restart_needed: list[str],
    ) -> None:
        libvirt_name = object_name(self.tenant, spec.name)
        vcpus = Dimension(
            "vcpus",
            "max_vcpus",
            spec.vcpus,
            spec.max_vcpus,
            domain.vcpus,
            domain.max_vcpus,
            domain.live_vcpus if running else None,
            domain.live_max_vcpus if running else None,
            lambda: self.set_max_vcpus(libvirt_name, spec.max_vcpus, spec.vcpus),
            lambda live: self.set_vcpus(libvirt_name, spec.vcpus, live),
        )
        # The balloon's current size is the guest's business: only the definition is compared.
        memory = Dimension(
            "memory_mib",
            "max_memory_mib",
            spec.memory_mib,
            spec.max_memory_mib,
            domain.memory_mib,
            domain.max_memory_mib,
            None,
            domain.live_max_memory_mib if running else None,
            lambda: self.set_max_memory(libvirt_name, spec.max_memory_mib, spec.memory_mib),
            lambda live: self.set_memory(libvirt_name, spec.memory_mib, live),
        )
        for dimension in (vcpus, memory):
            plan_dimension(plan, spec.name, dimension, restart_needed)

    def plan_boot_disk(
        self, plan: Plan, r: Resolved, inventory: TenantInventory, domain: DomainState, ctx: Context
    ) -> None:
        spec = r.spec
        volume = next((v for v in inventory.volumes.values() if v.path == r.boot_path), None)
        if volume is None:
            raise SpecError(
                f"{ctx.path}boot_disk",
                f"the boot disk {r.boot_path} of VM {spec.name!r} is missing from the host; "
                "restore it from a backup or delete and re-create the VM",
            )
        if volume.backing is not None and volume.backing != r.image.path:
            raise SpecError(
                f"{ctx.path}boot_disk.image",
                f"VM {spec.name!r} was created from {volume.backing}; changing the base image "
                "would replace its boot disk and is refused (delete and re-create the VM)",
            )
        wanted = spec.boot_disk.size_gib * GIB
        if wanted < volume.capacity:
            raise SpecError(
                f"{ctx.path}boot_disk.size_gib",
                f"the boot disk of {spec.name!r} is {volume.capacity / GIB:g} GiB; shrinking it "
                f"to {spec.boot_disk.size_gib} GiB would destroy data and is refused",
            )
        if wanted > volume.capacity:
            plan.add(
                Change(
                    KIND,
                    spec.name,
                    "resize",
                    field="boot_disk.size_gib",
                    before=volume.capacity / GIB,
                    after=spec.boot_disk.size_gib,
                    run=lambda: self.disks.grow(volume, wanted, domain),
                )
            )

    def plan_extra_disks(self, plan: Plan, r: Resolved, domain: DomainState, running: bool) -> None:
        managed = {r.boot_path, r.seed_path}
        present = {d.path: d for d in domain.disks}
        wanted_paths = {path for _name, path, _format in r.extra_disks}
        used = {d.target for d in domain.disks}
        for disk_name, path, fmt in r.extra_disks:
            if path in present:
                continue
            target = free_disk_target(used)
            used.add(target)
            xml = disk_device_xml(DiskDevice(target, path, fmt, serial=disk_name))
            plan.add(
                self.device_change(r, running, "attach", f"disk {disk_name}", None, target, xml)
            )
        for path, device in present.items():
            if path in managed or path in wanted_paths or device.device != "disk":
                continue
            field, xml = f"disk {device.serial or path}", disk_device_xml(device)
            plan.add(self.device_change(r, running, "detach", field, device.target, None, xml))

    def nic_moves(
        self, r: Resolved, domain: DomainState, inventory: TenantInventory, ctx: Context
    ) -> list[NicMove]:
        """The declared NICs whose MAC the VM has on another network: each is moved, not
        attached a second time (libvirt finds a NIC by its MAC: two would make it ambiguous)."""
        present: dict[str, str] = {}
        for nic in domain.nics:
            present.setdefault(nic.mac, nic.network)
        declared = {lease.mac: lease for _declared, _net, lease in r.leases}
        moves = []
        for index, (nic, net) in enumerate(zip(r.spec.nics, r.networks, strict=False)):
            old = present.get(nic.mac)
            if old is None or NicDevice(nic.mac, net) in domain.nics:
                continue
            old_state = inventory.networks.get(old)
            self.refuse_bound_public_ip(r.spec.name, old_state, ctx, index)
            old_lease = vm_lease(old_state, self.tenant, nic.mac)
            new_state = inventory.networks.get(net)
            lease = declared.get(nic.mac)
            # A network made in this plan holds the lease in its definition already.
            add = (
                lease is not None
                and new_state is not None
                and new_state.hosts.get(nic.mac) != lease
            )
            old_name = old_state.owner.name if old_state and old_state.owner else old
            before = {"network": old_name, "ip": str(old_lease.ip) if old_lease else None}
            after = {"network": nic.network, "ip": str(nic.ip) if nic.ip else None}
            moves.append(NicMove(nic.mac, old, net, old_lease, lease, add, before, after))
        return moves

    def refuse_bound_public_ip(
        self, vm: str, old_state: NetworkState | None, ctx: Context, index: int
    ) -> None:
        """A public IP bound to the NIC's address would keep pointing at the network the NIC
        leaves: refused, unless the run declares that public IP (its planner re-binds it)."""
        if old_state is None or old_state.cidr is None:
            return
        for bound in ctx.public_ips:
            if bound.vm == vm and ipaddress.IPv4Address(bound.private_ip) in old_state.cidr:
                old = old_state.owner.name if old_state.owner else old_state.name
                raise SpecError(
                    f"{ctx.path}nics[{index}].network",
                    f"public IP {bound.name} ({bound.address}) is bound to this NIC's address "
                    f"{bound.private_ip} on network {old!r}; moving the NIC would leave it "
                    "pointing at a network the NIC left: declare the public IP in the same "
                    "environment run (it is bound to the new address) or release it first",
                )

    def plan_nics(
        self, plan: Plan, r: Resolved, domain: DomainState, running: bool, moves: list[NicMove]
    ) -> None:
        """Detaches first (a VM left with two NICs of one MAC then has one to move), then
        moves, then attaches."""
        present = {(n.mac, n.network) for n in domain.nics}
        wanted = {(nic.mac, net) for nic, net in zip(r.spec.nics, r.networks, strict=False)}
        wanted |= {(m.mac, m.old) for m in moves}  # moved, not detached
        for nic in domain.nics:
            if (nic.mac, nic.network) in wanted:
                continue
            run = partial(self.detach_nic, r.libvirt_name, nic, running)
            field = f"nic {nic.mac}"
            plan.add(Change(KIND, r.spec.name, "detach", field=field, before=nic.network, run=run))
        for move in moves:
            plan.add(self.move_change(r, running, move))
        moved = {m.mac for m in moves}
        for nic, net in zip(r.spec.nics, r.networks, strict=False):
            if (nic.mac, net) in present or nic.mac in moved:
                continue
            xml = nic_device_xml(NicDevice(nic.mac, net))
            plan.add(
                self.device_change(r, running, "attach", f"nic {nic.mac}", None, nic.network, xml)
            )

    def move_change(self, r: Resolved, running: bool, move: NicMove) -> Change:
        run = partial(self.move_nic, r.libvirt_name, move, running)
        # Running, the guest keeps the address it had until its DHCP client asks again: at
        # the restart, or at its lease's renewal.
        cls = ChangeClass.RESTART if running else ChangeClass.LIVE
        return Change(
            KIND, r.spec.name, "move", cls, f"nic {move.mac}", move.before, move.after, run
        )

    def device_change(
        self, r: Resolved, running: bool, action: str, field: str, before: Any, after: Any, xml: str
    ) -> Change:
        """A disk attached or detached, or a NIC attached, live when the VM runs."""
        call = self.attach if action == "attach" else self.detach
        run = partial(call, r.libvirt_name, xml, running)
        return Change(KIND, r.spec.name, action, field=field, before=before, after=after, run=run)

    def plan_seed(
        self, plan: Plan, r: Resolved, domain: DomainState, running: bool, restart_needed: list[str]
    ) -> None:
        current = domain.owner.get("seed") if domain.owner else ""
        has_device = any(d.path == r.seed_path for d in domain.disks)
        if current == r.seed and has_device == bool(r.seed):
            return
        cls = ChangeClass.RESTART if running else ChangeClass.LIVE
        if running:
            restart_needed.append("cloud_init")
        plan.add(
            Change(
                KIND,
                r.spec.name,
                "update",
                change_class=cls,
                field="cloud_init",
                before=current or None,
                after=r.seed or None,
                run=lambda: self.rewrite_seed(r, has_device),
            )
        )

    def plan_power(
        self, plan: Plan, r: Resolved, domain: DomainState, restart_needed: list[str], ctx: Context
    ) -> None:
        name, libvirt_name = r.spec.name, r.libvirt_name
        if r.spec.state == "stopped":
            if domain.state not in ("shutoff", "crashed"):
                plan.add(
                    power(name, "stop", domain.state, "stopped", partial(self.stop, libvirt_name))
                )
            return
        if domain.state == "paused":
            plan.add(power(name, "resume", "paused", "running", partial(self.resume, libvirt_name)))
        elif domain.state != "running":
            plan.add(
                power(name, "start", domain.state, "running", partial(self.start, libvirt_name))
            )
            return
        if not restart_needed:
            return
        fields = ", ".join(dict.fromkeys(restart_needed))
        if ctx.allow_restart:
            restart = partial(self.restart, libvirt_name)
            plan.add(power(name, "restart", "running", "running", restart, ChangeClass.RESTART))
            return
        for change in plan.changes:
            if (
                change.kind == KIND
                and change.name == name
                and change.change_class == ChangeClass.RESTART
            ):
                change.pending_restart = True
        message = (
            f"vm {name}: {fields} take effect at the next restart "
            "(set allow_restart: true to restart now)"
        )
        plan.pending_restart.append(message)
        plan.warnings.append(message)

    def plan_absent(self, name: str, inventory: TenantInventory) -> Plan:
        plan = Plan()
        domain = self.owned(inventory, name)
        boot = [
            v
            for v in inventory.volumes.values()
            if v.name in (boot_volume_name(self.tenant, name), seed_volume_name(self.tenant, name))
        ]
        if domain is None and not boot:
            return plan
        macs = {n.mac for n in domain.nics} if domain else set()
        leases = [
            (net_name, state.hosts[mac])
            for net_name, state in sorted(inventory.networks.items())
            for mac in sorted(macs & set(state.hosts))
        ]
        before = domain_summary(domain) if domain else {"volumes": [v.name for v in boot]}
        plan.add(
            Change(
                KIND,
                name,
                "delete",
                before=before,
                run=lambda: self.delete(
                    object_name(self.tenant, name), domain is not None, boot, leases
                ),
            )
        )
        return plan

    # apply -----------------------------------------------------------------------------------

    def owner(self, spec: VmSpec, seed: str) -> Owner:
        return Owner(self.tenant, KIND, spec.name, vm_hash(spec), (("seed", seed),))

    def definition(self, r: Resolved) -> DomainDefinition:
        spec = r.spec
        disks = [DiskDevice("vda", r.boot_path, "qcow2", serial="boot")]
        used = {"vda"}
        for disk_name, path, fmt in r.extra_disks:
            target = free_disk_target(used)
            used.add(target)
            disks.append(DiskDevice(target, path, fmt, serial=disk_name))
        if r.seed:
            disks.append(DiskDevice(SEED_TARGET, r.seed_path, "raw", device="cdrom"))
        return DomainDefinition(
            name=r.libvirt_name,
            domain_type=self.host.domain_type,
            owner=self.owner(spec, r.seed),
            vcpus=spec.vcpus,
            max_vcpus=spec.max_vcpus,
            memory_mib=spec.memory_mib,
            max_memory_mib=spec.max_memory_mib,
            disks=disks,
            nics=[NicDevice(nic.mac, net) for nic, net in zip(spec.nics, r.networks, strict=False)],
            console_log=f"{self.host.log_dir}/{r.libvirt_name}.console.log",
        )

    def create(self, r: Resolved, inventory: TenantInventory) -> None:
        """Make the boot volume and seed, then define (and start) the domain. Until the domain
        is defined, a failure removes the volumes made here, so that a re-run starts afresh;
        after, the domain is left in place and the error says so (a re-run converges on it)."""
        made: list[str] = []  # volumes of the boot pool made by this change
        try:
            dom = self.define(r, inventory, made)
        except Exception as error:
            left = self.remove_volumes(r.spec.boot_disk.pool, made)
            if not isinstance(error, VceError):
                raise
            message = undone(str(error), made, left)
            raise ApplyError(message, left=[f"volume {name}" for name in left]) from error
        try:
            with libvirt_action("set autostart of", f"domain {r.libvirt_name}"):
                dom.setAutostart(1 if r.spec.state == "running" else 0)
            if r.spec.state == "running":
                with libvirt_action("start", f"domain {r.libvirt_name}"):
                    dom.create()
        except ApplyError as error:
            domain = f"domain {r.libvirt_name}"
            raise ApplyError(f"{error} ({domain} is defined)", left=[domain]) from error

    def define(self, r: Resolved, inventory: TenantInventory, made: list[str]) -> Any:
        """The boot volume if missing, the seed, then the domain; `made` grows as they are."""
        spec = r.spec
        if not any(v.path == r.boot_path for v in inventory.volumes.values()):
            name = boot_volume_name(self.tenant, spec.name)
            xml = volume_xml(
                name,
                spec.boot_disk.size_gib,
                "qcow2",
                r.image.path,
                r.image.format,
            )
            self.disks.create(spec.boot_disk.pool, name, xml)
            made.append(name)
        if r.seed:
            # Listed before it is written: a failed upload leaves the volume it created.
            made.append(seed_volume_name(self.tenant, spec.name))
            self.write_seed(r)
        xml = domain_xml(self.definition(r))
        with libvirt_action("define", f"domain {r.libvirt_name}"):
            return self.host.conn.defineXML(xml)

    def remove_volumes(self, pool_name: str, names: list[str]) -> dict[str, str]:
        """Best effort: delete `names` from the pool; those that could not be, with why."""
        left = {}
        for name in names:
            try:
                pool = self.host.lookup_pool(pool_name)
                with libvirt_action("delete", f"volume {name}"):
                    pool.storageVolLookupByName(name).delete(0)
            except VceError as error:
                if not vanished(error):  # never made (a failed upload's volume may not exist)
                    left[name] = str(error)
        return left

    def write_seed(self, r: Resolved) -> None:
        cloud_init = r.spec.cloud_init
        if cloud_init is None:
            return
        payload = seed_image(r.libvirt_name, cloud_init)
        name = seed_volume_name(self.tenant, r.spec.name)
        pool = self.host.lookup_pool(r.spec.boot_disk.pool)
        with libvirt_action("write", f"cloud-init seed {name}"):
            with contextlib.suppress(libvirt.libvirtError):
                pool.storageVolLookupByName(name).delete(0)
            vol = pool.createXML(raw_volume_xml(name, len(payload)), 0)
            stream = self.host.conn.newStream(0)
            vol.upload(stream, 0, len(payload), 0)
            send_all(stream, payload)

    def rewrite_seed(self, r: Resolved, has_device: bool) -> None:
        if r.seed:
            self.write_seed(r)
            if not has_device:
                device = DiskDevice(SEED_TARGET, r.seed_path, "raw", device="cdrom")
                self.attach(r.libvirt_name, disk_device_xml(device), False)
            return
        if has_device:
            device = DiskDevice(SEED_TARGET, r.seed_path, "raw", device="cdrom")
            self.detach(r.libvirt_name, disk_device_xml(device), False)
        pool = self.host.lookup_pool(r.spec.boot_disk.pool)
        seed = f"cloud-init seed of {r.libvirt_name}"
        with libvirt_action("delete", seed), contextlib.suppress(libvirt.libvirtError):
            pool.storageVolLookupByName(seed_volume_name(self.tenant, r.spec.name)).delete(0)

    def lookup(self, libvirt_name: str) -> Any:
        with libvirt_action("find", f"domain {libvirt_name}"):
            return self.host.conn.lookupByName(libvirt_name)

    def call(self, libvirt_name: str, verb: str, method: str, *args: Any) -> Any:
        """The domain's libvirt `method`, its errors mapped as `verb` of the domain."""
        dom = self.lookup(libvirt_name)
        with libvirt_action(verb, f"domain {libvirt_name}"):
            return getattr(dom, method)(*args)

    def affect(self, dom: Any, live: bool) -> int:
        flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        if live and dom.isActive():
            flags |= libvirt.VIR_DOMAIN_AFFECT_LIVE
        return flags

    def set_max_vcpus(self, libvirt_name: str, maximum: int, current: int) -> None:
        dom = self.lookup(libvirt_name)
        config = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        with libvirt_action("set the vCPU maximum of", f"domain {libvirt_name}"):
            if current < dom.vcpusFlags(config):
                dom.setVcpusFlags(current, config)
            dom.setVcpusFlags(maximum, config | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)

    def set_vcpus(self, libvirt_name: str, vcpus: int, live: bool) -> None:
        self.call_affecting(libvirt_name, "set vCPUs of", "setVcpusFlags", vcpus, live)

    def set_max_memory(self, libvirt_name: str, maximum_mib: int, current_mib: int) -> None:
        dom = self.lookup(libvirt_name)
        config = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        with libvirt_action("set the memory maximum of", f"domain {libvirt_name}"):
            dom.setMemoryFlags(maximum_mib * KIB_PER_MIB, config | libvirt.VIR_DOMAIN_MEM_MAXIMUM)
            dom.setMemoryFlags(min(current_mib, maximum_mib) * KIB_PER_MIB, config)

    def set_memory(self, libvirt_name: str, memory_mib: int, live: bool) -> None:
        kib = memory_mib * KIB_PER_MIB
        self.call_affecting(libvirt_name, "set memory of", "setMemoryFlags", kib, live)

    def attach(self, libvirt_name: str, xml: str, live: bool) -> None:
        self.call_affecting(libvirt_name, "attach a device to", "attachDeviceFlags", xml, live)

    def detach(self, libvirt_name: str, xml: str, live: bool) -> None:
        self.call_affecting(libvirt_name, "detach a device from", "detachDeviceFlags", xml, live)

    def detach_nic(self, libvirt_name: str, nic: NicDevice, live: bool) -> None:
        """The interface with this MAC on this network detached from the definition and, when
        the VM runs, from the VM: each named by its own XML there, so that a VM left with two
        NICs of one MAC (by an earlier attach) loses the right one."""
        dom = self.lookup(libvirt_name)
        with libvirt_action("detach a device from", f"domain {libvirt_name}"):
            scopes = [(libvirt.VIR_DOMAIN_XML_INACTIVE, libvirt.VIR_DOMAIN_AFFECT_CONFIG)]
            if live and dom.isActive():
                scopes.append((0, libvirt.VIR_DOMAIN_AFFECT_LIVE))
            for xml_flags, affect in scopes:
                for xml in interfaces_on(dom.XMLDesc(xml_flags), nic.mac, nic.network):
                    dom.detachDeviceFlags(xml, affect)

    def move_nic(self, libvirt_name: str, move: NicMove, live: bool) -> None:
        """The interface's source network changed in place, in the definition and, when it
        runs, in the VM (libvirt moves its tap to the new bridge: no hot-unplug for the guest
        to acknowledge). The new lease is there before the NIC arrives; the old one goes after
        it left, so an interrupted move leaves a lease where the NIC may be, never none."""
        if move.add_lease:
            self.networks.set_lease(move.new, move.mac, move.lease)
        xml = nic_device_xml(NicDevice(move.mac, move.new))
        verb = f"move NIC {move.mac} to network {move.new} in"
        self.call_affecting(libvirt_name, verb, "updateDeviceFlags", xml, live)
        if move.old_lease is not None:
            self.networks.set_lease(move.old, move.mac, None)

    def call_affecting(
        self, libvirt_name: str, verb: str, method: str, value: Any, live: bool
    ) -> None:
        """`method(value, flags)` on the domain's definition, and on the running domain too
        when `live` and it runs."""
        dom = self.lookup(libvirt_name)
        with libvirt_action(verb, f"domain {libvirt_name}"):
            getattr(dom, method)(value, self.affect(dom, live))

    def set_metadata(self, libvirt_name: str, owner: Owner) -> None:
        dom = self.lookup(libvirt_name)
        xml = to_string(owner_element(owner, qualified=False))
        with libvirt_action("update the ownership metadata of", f"domain {libvirt_name}"):
            dom.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT, xml, PREFIX, NAMESPACE, self.affect(dom, True)
            )

    def set_autostart(self, libvirt_name: str, enabled: bool) -> None:
        dom = self.lookup(libvirt_name)
        with libvirt_action("set autostart of", f"domain {libvirt_name}"):
            dom.setAutostart(1 if enabled else 0)

    def start(self, libvirt_name: str) -> None:
        self.call(libvirt_name, "start", "create")

    def suspend(self, libvirt_name: str) -> None:
        self.call(libvirt_name, "pause", "suspend")

    def resume(self, libvirt_name: str) -> None:
        self.call(libvirt_name, "resume", "resume")

    def stop(self, libvirt_name: str) -> None:
        """ACPI shutdown, waiting at most shutdown_timeout; then power off.

        A guest that is still booting may drop the request, so it is repeated while waiting.
        """
        dom = self.lookup(libvirt_name)
        with libvirt_action("stop", f"domain {libvirt_name}"):
            deadline = time.monotonic() + self.shutdown_timeout
            next_request = 0.0
            while dom.isActive() and time.monotonic() < deadline:
                if time.monotonic() >= next_request:
                    with contextlib.suppress(libvirt.libvirtError):
                        dom.shutdown()
                    next_request = time.monotonic() + SHUTDOWN_RETRY_SECONDS
                time.sleep(POLL_SECONDS)
            if dom.isActive():
                dom.destroy()

    def restart(self, libvirt_name: str) -> None:
        self.stop(libvirt_name)
        self.start(libvirt_name)

    def delete(
        self,
        libvirt_name: str,
        has_domain: bool,
        volumes: list[Any],
        leases: list[tuple[str, StaticLease]],
    ) -> None:
        if has_domain:
            dom = self.lookup(libvirt_name)
            with libvirt_action("delete", f"domain {libvirt_name}"):
                if dom.isActive():
                    dom.destroy()
                flags = 0
                for flag in UNDEFINE_FLAGS:
                    flags |= getattr(libvirt, flag, 0)
                dom.undefineFlags(flags)
        for net_name, lease in leases:
            self.networks.set_lease(net_name, lease.mac, None)
        for volume in volumes:
            self.disks.delete(volume)
