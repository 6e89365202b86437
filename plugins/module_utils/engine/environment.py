# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A whole tenant environment in one plan: networks, then disks, then VMs, then removals."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TypeVar

from ..core.errors import VceError
from ..core.plan import Plan
from ..core.spec import EnvironmentSpec, StaticLease, VmSpec
from ..host.connection import Host, TenantInventory
from ..host.ownership import EXTENSIONS, tenant_prefix
from ..host.shell import HostShell
from ..host.xml import DomainState, NetworkState, VolumeState
from .resources.disk import DiskPlanner
from .resources.image import ImageSources
from .resources.network import NetworkPlanner
from .resources.vm import BoundPublicIp, Context, VmPlanner

T = TypeVar("T", DomainState, NetworkState)


# (kind, declared name) -> why that object could not be planned.
Failures = dict[tuple[str, str], VceError]


@contextmanager
def planning(failures: Failures | None, kind: str, name: str) -> Iterator[None]:
    """Plan one object; with `failures` given, an object that cannot be planned is recorded
    there and the others are still planned (drift reports every object), else it raises."""
    try:
        yield
    except VceError as error:
        if failures is None:
            raise
        failures[(kind, name)] = error


@dataclass
class Options:
    allow_restart: bool = False
    allow_replace: bool = False
    prune: bool = False
    shutdown_timeout: float = 60.0


class EnvironmentPlanner:
    """Plans and applies every object of one tenant on one host together."""

    def __init__(
        self,
        host: Host,
        tenant: str,
        options: Options | None = None,
        shell: HostShell | None = None,
        images: ImageSources | None = None,
    ) -> None:
        self.host = host
        self.tenant = tenant
        self.options = options or Options()
        self.networks = NetworkPlanner(host, tenant, shell)
        self.disks = DiskPlanner(host, tenant, images)
        self.vms = VmPlanner(host, tenant, self.options.shutdown_timeout, images)

    def observe(self) -> TenantInventory:
        return self.host.inventory(self.tenant)

    def plan_present(
        self,
        spec: EnvironmentSpec,
        inventory: TenantInventory,
        failures: Failures | None = None,
        public_ips: tuple[BoundPublicIp, ...] = (),
    ) -> Plan:
        """`public_ips`: those bound through this host that the declaration does not hold (a
        VM's NIC is not moved away from one)."""
        plan = Plan()
        vm_leases = self.vm_leases(spec)
        for i, net in enumerate(spec.networks):
            with planning(failures, "network", net.name):
                plan.extend(
                    self.networks.plan_present(
                        net,
                        inventory,
                        vm_leases.get(net.name, []),
                        self.options.allow_replace,
                        f"networks[{i}].cidr",
                    )
                )
        for i, disk in enumerate(spec.disks):
            with planning(failures, "disk", disk.name):
                plan.extend(self.disks.plan_present(disk, inventory, f"disks[{i}]."))
        ctx_networks = {net.name: net for net in spec.networks}
        ctx_disks = {disk.name: disk for disk in spec.disks}
        attached = self.attachments(spec)
        for i, vm in enumerate(spec.vms):
            ctx = Context(
                ctx_networks, ctx_disks, self.options.allow_restart, f"vms[{i}].", public_ips
            )
            with planning(failures, "vm", vm.name):
                plan.extend(self.vms.plan_present(attached[vm.name], inventory, ctx))
        undeclared = self.plan_undeclared(spec, inventory, failures)
        if self.options.prune:
            plan.extend(undeclared)
        elif undeclared.changes:
            names = ", ".join(f"{c.kind} {c.name}" for c in undeclared.changes)
            plan.warnings.append(
                f"tenant {self.tenant} has objects no declaration mentions: {names} "
                "(set prune: true to delete them)"
            )
        return plan

    @staticmethod
    def vm_leases(spec: EnvironmentSpec) -> dict[str, list[StaticLease]]:
        leases: dict[str, list[StaticLease]] = {}
        for vm in spec.vms:
            hostname = vm.cloud_init.hostname if vm.cloud_init else vm.name
            for nic in vm.nics:
                if nic.ip is not None:
                    lease = StaticLease(nic.mac, nic.ip, hostname)
                    leases.setdefault(nic.network, []).append(lease)
        return leases

    @staticmethod
    def attachments(spec: EnvironmentSpec) -> dict[str, VmSpec]:
        """Each VM with the disks attached to it from either side of the declaration."""
        result = {}
        for vm in spec.vms:
            extra = tuple(d for d, owner in spec.attachments.items() if owner == vm.name)
            disks = vm.disks + tuple(d for d in extra if d not in vm.disks)
            result[vm.name] = replace(vm, disks=disks)
        return result

    def plan_undeclared(
        self, spec: EnvironmentSpec, inventory: TenantInventory, failures: Failures | None = None
    ) -> Plan:
        """Deletions of the tenant's objects that the declaration does not mention. A disk
        that more than one volume claims is refused, never deleted twice or at random."""
        declared_vms = {vm.name for vm in spec.vms}
        declared_disks = {disk.name for disk in spec.disks}
        declared_nets = {net.name for net in spec.networks}
        plan = Plan()
        for name, _domain in self.owned(inventory.domains.values()):
            if name not in declared_vms:
                plan.extend(self.vms.plan_absent(name, inventory))
        for name, volume in self.standalone_volumes(inventory).items():
            if name not in declared_disks:
                with planning(failures, "disk", name):
                    inventory.refuse_duplicated_disk(name)
                    plan.add(self.disks.delete_change(name, volume))
        for name, state in self.owned(inventory.networks.values()):
            if name not in declared_nets:
                plan.add(self.networks.delete_change(name, state))
        return plan

    def plan_absent(self, inventory: TenantInventory, failures: Failures | None = None) -> Plan:
        """Everything the tenant owns on the host, removed: VMs, disks, networks."""
        return self.plan_undeclared(EnvironmentSpec(self.tenant), inventory, failures)

    def owned(self, objects: Iterable[T]) -> list[tuple[str, T]]:
        """The tenant's objects by declared name, in name order."""
        return sorted(
            ((o.owner.name, o) for o in objects if o.owner and o.owner.tenant == self.tenant),
            key=lambda item: item[0],
        )

    def standalone_volumes(self, inventory: TenantInventory) -> dict[str, VolumeState]:
        """The tenant's disks (not boot disks or seeds), by declared name."""
        prefix = tenant_prefix(self.tenant)
        result = {}
        for (_pool, vol_name), volume in sorted(inventory.volumes.items()):
            stem, _dot, ext = vol_name[len(prefix) :].rpartition(".")
            if "." not in stem and ext in EXTENSIONS.values():
                result[stem] = volume
        return result
