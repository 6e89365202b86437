# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A tenant's VM moved to another host of its zone: live when it runs, its disks copied.

Storage is not shared between hosts: every disk of the VM is a volume of a pool on its host.
Before the move the destination gets an empty volume of the same name, size, format and
backing file in the pool of the same name (a boot disk's base image is a catalogue image of
the zone, at the same path on every host of it), and the VM's fixed-IP leases on its networks
(which must exist there already: the move never declares a network). A running or paused VM
then moves with libvirt's live migration (virDomainMigrate3: LIVE, PERSIST_DEST,
UNDEFINE_SOURCE, NON_SHARED_INC): QEMU copies the disks' own layers over NBD while the guest
runs, then its memory, and pauses it only for the last dirty pages; the destination XML has
the disks' new paths and the destination's console log directory. A read-only device (the
cloud-init seed) is not copied by QEMU: its volume is streamed through libvirt first. A
stopped VM moves cold: every volume streamed, the domain defined there and undefined here.

The controller holds both hosts' connections (libvirt's managed migration): the hosts need no
access to each other's libvirtd, only the migration and NBD ports of the destination, which
libvirt picks on the destination's host name. After the move the source keeps nothing of the
VM (domain, volumes, leases), and the ledger records it: at one moment the VM's objects end on
the source host and begin on the destination (no hour counted twice, none lost), and both
hosts' usage rows follow.

A failed migration leaves the VM running on the source (libvirt's own rollback); what was
made for it on the destination is removed again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ...core import quota
from ...core.errors import ApplyError, SpecError, VceError, libvirt, libvirt_action, vanished
from ...core.plan import Change, ChangeClass, Plan
from ...core.result import Result
from ...core.spec import StaticLease
from ...core.validation import check_name, check_prefix
from ...core.zones import (
    PublicZone,
    Underlay,
    ZoneLinkSpec,
    parse_link_end,
    parse_underlay,
    zone_of,
)
from ...host.connection import DEFAULT_URI, Host, TenantInventory
from ...host.ownership import object_name
from ...host.shell import HostShell
from ...host.xml import DomainState, VolumeState, relocated_domain_xml, volume_copy_xml
from ...ledger.metering import (
    ABSENT,
    Meter,
    Metering,
    UsageChange,
    changes_between,
    host_meters,
)
from ...ledger.tenants import Ledger
from ..gate import observed_objects, running_vms
from ..run import Run, conclude
from .network import NetworkPlanner
from .public_ip import Binding, NatTable, PublicIpPlanner
from .vm import UNDEFINE_FLAGS, vm_lease
from .zone_link import VxlanFilters, links_touching, with_filters, zone_link_planner

try:
    import sqlalchemy as sa

    from ...ledger.schema import placements, public_ips
except ImportError:  # reported by the ledger's Store()
    sa = None

KIND = "vm"
LIVE_STATES = ("running", "paused")
COLD_STATES = ("shutoff", "crashed")
STREAM_CHUNK = 256 * 1024
ARRIVAL_POLL_SECONDS = 0.05
ARRIVAL_JOIN_SECONDS = 120.0  # a hand-over of public IPs: a few commands on two hosts


def live_flags() -> int:
    return (
        libvirt.VIR_MIGRATE_LIVE
        | libvirt.VIR_MIGRATE_PERSIST_DEST
        | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
        | libvirt.VIR_MIGRATE_NON_SHARED_INC
    )


def undefine_flags() -> int:
    flags = 0
    for flag in UNDEFINE_FLAGS:
        flags |= getattr(libvirt, flag, 0)
    return flags


# -- the declaration ------------------------------------------------------------------------


@dataclass(frozen=True)
class MigrationSpec:
    """VM `name` of `tenant`, on the host at `uri` in `zone`, to be on `destination`."""

    tenant: str
    name: str
    uri: str
    zone: str
    destination: str  # the destination host's libvirt URI
    destination_zone: str
    # Where public IPs bound to the VM follow it: the zone's uplink and pools, both hosts'
    # host commands (nft, ip); None without a zone_config.
    public_zone: PublicZone | None = None
    shells: tuple[HostShell, HostShell] = (HostShell(), HostShell())
    # Where a zone link of the VM's network follows it: the destination's underlay address
    # and device; None when not given.
    underlay: Underlay | None = None


def check_uri(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip() or "\n" in value:
        raise SpecError(path, "must be a libvirt connection URI (e.g. qemu+ssh://root@kvm2/system)")
    return value


def parse_migration(params: Mapping[str, Any]) -> MigrationSpec:
    tenant = check_name(params.get("tenant"), "tenant")
    name = check_name(params.get("name"), "name")
    uri = check_uri(params.get("uri") or DEFAULT_URI, "uri")
    zone = check_name(params.get("zone"), "zone")
    raw = params.get("destination")
    if not isinstance(raw, Mapping):
        raise SpecError("destination", "must be a mapping: the destination host's uri and zone")
    destination = check_uri(raw.get("uri"), "destination.uri")
    destination_zone = check_name(raw.get("zone"), "destination.zone")
    if destination_zone != zone:
        raise SpecError(
            "destination.zone",
            f"a VM moves only between hosts of its zone: its host is in zone {zone!r}, the "
            f"destination in {destination_zone!r}",
        )
    if destination == uri:
        raise SpecError("destination.uri", "is the VM's own host")
    public_zone = zone_of({"zone": zone, "zone_config": params.get("zone_config")})
    shells = (
        HostShell(check_prefix(params.get("host_command"))),
        HostShell(check_prefix(raw.get("host_command"), "destination.host_command")),
    )
    underlay = parse_underlay(raw, "destination.")
    return MigrationSpec(
        tenant, name, uri, zone, destination, destination_zone, public_zone, shells, underlay
    )


# -- what a move copies ---------------------------------------------------------------------


@dataclass(frozen=True)
class DiskCopy:
    """One disk of the VM: its volume on the source, and its path on the destination."""

    target: str  # the device (vda, hdc)
    volume: VolumeState
    new_path: str
    streamed: bool  # copied through libvirt before the move, not by QEMU (read-only devices)


@dataclass(frozen=True)
class Move:
    """Everything a move of one VM makes, observed and checked before anything is."""

    name: str
    libvirt_name: str
    live: bool
    autostart: bool
    disks: tuple[DiskCopy, ...]
    leases: tuple[tuple[str, StaticLease], ...]  # libvirt network, the VM's lease on it
    public_ips: tuple[Any, ...] = ()  # the ledger's rows of the public IPs bound to the VM
    # The zone links that follow the VM: their changes, made as soon as it runs there.
    links: Plan = field(default_factory=Plan)

    def bindings(self, tenant: str) -> list[Binding]:
        return [Binding(tenant, row.name, row.address, row.private_ip) for row in self.public_ips]

    @property
    def paths(self) -> dict[str, str]:
        return {copy.volume.path: copy.new_path for copy in self.disks}


@dataclass
class MoveReport:
    """What a move did: how, and how long (libvirt's job statistics for a live move)."""

    mode: str = ""  # live | cold
    wall_seconds: float = 0.0
    downtime_ms: int | None = None
    memory_bytes: int | None = None
    disk_bytes: int = 0  # streamed through libvirt
    usage_changes: list[dict[str, Any]] = field(default_factory=list)


def field_error(error: VceError, path: str) -> SpecError:
    return error if isinstance(error, SpecError) else SpecError(path, str(error))


class ArrivalWatch(threading.Thread):
    """Runs `then` as soon as the domain runs on the destination, while the migration call
    still waits for the source's confirmation through the controller (a second or more): a
    public IP's address moves with the guest, not after the whole call. Stopped when the call
    returns, fired or not."""

    def __init__(self, conn: Any, libvirt_name: str, then: Any) -> None:
        super().__init__(name=f"arrival of {libvirt_name}", daemon=True)
        self.conn = conn
        self.libvirt_name = libvirt_name
        self.then = then
        self.returned = threading.Event()
        self.error: Exception | None = None

    def arrived(self) -> bool:
        try:
            state = self.conn.lookupByName(self.libvirt_name).state()[0]
        except libvirt.libvirtError:  # not defined there yet
            return False
        return state == libvirt.VIR_DOMAIN_RUNNING

    def run(self) -> None:
        while not self.returned.is_set():
            if self.arrived():
                try:
                    self.then()
                except Exception as error:  # told by the thread that waits for the move
                    self.error = error
                return
            self.returned.wait(ARRIVAL_POLL_SECONDS)

    def stop(self) -> None:
        self.returned.set()
        if self.is_alive():
            self.join(ARRIVAL_JOIN_SECONDS)


class MigrationPlanner:
    """Observe, plan and apply the move of one of a tenant's VMs between two hosts."""

    def __init__(
        self,
        source: Host,
        destination: Host,
        tenant: str,
        ledger: Ledger,
        spec: MigrationSpec | None = None,
    ) -> None:
        """`spec`: the zone and host commands public IPs need, the destination's underlay
        a zone link needs (without them a VM with either is refused, naming the field)."""
        self.source = source
        self.destination = destination
        self.tenant = tenant
        self.ledger = ledger
        self.public_zone = spec.public_zone if spec else None
        self.shells = spec.shells if spec else (HostShell(), HostShell())
        self.underlay = spec.underlay if spec else None
        self.zone = spec.zone if spec else None
        self.report = MoveReport()
        self.handed_over = False  # public IPs and zone links follow the VM (once per move)
        self.arrival_error: VceError | None = None  # of the hand-over the arrival watch made

    def observe(self) -> tuple[TenantInventory, TenantInventory]:
        return self.source.inventory(self.tenant), self.destination.inventory(self.tenant)

    # -- planning ---------------------------------------------------------------------------

    def plan(
        self, name: str, here: TenantInventory, there: TenantInventory, group: Sequence[str] = ()
    ) -> Plan:
        """The move, the public IPs and zone links that follow the VM; none when the VM is on
        the destination already. `group`: the tenant's VMs this run moves to the same host
        with it (in order; a drain keeps the VMs of a network together): the zone links of
        their networks follow the last of them."""
        libvirt_name = object_name(self.tenant, name)
        for inventory in (here, there):
            found = inventory.intruder(KIND, libvirt_name)
            if found is not None:
                raise field_error(found.refusal(), "name")
        domain, arrived = here.domains.get(libvirt_name), there.domains.get(libvirt_name)
        if domain is None and arrived is not None:
            return Plan()
        if domain is None:
            raise SpecError(
                "name",
                f"VM {name!r} of tenant {self.tenant!r} is on neither {self.source.uri} nor "
                f"{self.destination.uri}",
            )
        if arrived is not None:
            raise SpecError(
                "name",
                f"VM {name!r} of tenant {self.tenant!r} is defined on both hosts (an interrupted "
                "move?): remove the copy that does not run before moving it again",
            )
        self.check_unplaced()
        links = self.plan_networks(name, domain, here, group)
        move = dataclasses.replace(
            self.move_of(name, domain, here, there),
            public_ips=tuple(self.bound_public_ips(name)),
            links=links,
        )
        plan = Plan()
        plan.warnings.extend(self.gateway_warnings(name, domain, here, there))
        plan.warnings.extend(links.warnings)
        plan.add(
            Change(
                KIND,
                name,
                "migrate",
                ChangeClass.LIVE,
                "host",
                self.source.uri,
                self.destination.uri,
                partial(self.apply, move),
            )
        )
        for row in move.public_ips:
            plan.add(self.moved("public_ip", row.name, partial(self.record_public_ip, row)))
        # Shown as planned; made by the move's hand-over (move_links).
        plan.changes += [dataclasses.replace(change, run=None) for change in links.changes]
        return plan

    def plan_networks(
        self, name: str, domain: DomainState, here: TenantInventory, group: Sequence[str]
    ) -> Plan:
        """For each network of the VM: a warning when VMs of it stay on the source (a
        network's copies on two hosts are not joined: they no longer reach each other), else
        its zone link moved to the destination with the last VM that leaves."""
        plan = Plan()
        links = {
            object_name(self.tenant, row.network): row
            for row in links_touching(self.ledger, self.tenant, self.source.uri).values()
        }
        filters = VxlanFilters(self.ledger)
        leaving = {name, *group}
        for network in dict.fromkeys(nic.network for nic in domain.nics):
            kept = sorted(
                d.owner.name
                for d in here.domains.values()
                if d.owner.name not in leaving and any(n.network == network for n in d.nics)
            )
            declared = network[len(object_name(self.tenant, "")) :]
            row = links.get(network)
            if kept:
                plan.warnings.append(
                    f"VM {name} leaves {', '.join(kept)} on network {declared} of "
                    f"{self.source.uri}: a network's copies on two hosts are not joined, they "
                    "will not reach each other"
                    + (f"; zone link {row.name} stays with them" if row is not None else "")
                )
            elif row is not None and (not group or name == group[-1]):
                plan.extend(self.plan_link(name, row, filters))
        if filters.shells:
            plan = with_filters(plan, filters.plan())
        return plan

    def plan_link(self, name: str, row: Any, filters: VxlanFilters) -> Plan:
        """The link's end on the source moved to the destination (zone_link.py: the new end
        and the peer's connected, the source's device removed, the filters kept), and its
        usage with it when the source's end is the first."""
        if self.underlay is None:
            raise SpecError(
                "destination.underlay_ip",
                f"network {row.network} of VM {name!r} is joined to another zone by zone link "
                f"{row.name}, which follows the VM: give the destination's underlay_ip and "
                "underlay_dev",
            )
        if not self.shells[1].prefix and not self.destination.is_local:
            raise SpecError(
                "destination.host_command",
                f"zone link {row.name} follows VM {name!r}: give the command that runs ip on "
                "the destination host",
            )
        recorded = json.loads(row.ends)
        ends = [self.arrival_end(end) if end["uri"] == self.source.uri else end for end in recorded]
        spec = ZoneLinkSpec(
            row.name,
            row.network,
            (parse_link_end(ends[0], "ends[0]"), parse_link_end(ends[1], "ends[1]")),
        )
        planner = zone_link_planner(self.ledger, self.tenant, spec)
        plan = planner.plan_present()
        filters.present(planner, row.vni)
        first = recorded[0]["uri"] == self.source.uri  # the host the link is metered on
        plan.add(self.moved("zone_link", row.name, partial(self.record_link, row.name, first)))
        return plan

    def moved(self, kind: str, name: str, record: Any) -> Change:
        """An object that follows the VM: its host changes; `record` writes it in the ledger."""
        source, destination = self.source.uri, self.destination.uri
        return Change(kind, name, "move", ChangeClass.LIVE, "host", source, destination, record)

    def arrival_end(self, end: Mapping[str, Any]) -> dict[str, Any]:
        """The link's end as the destination holds it (its zone stays: a move is in one zone)."""
        return {
            **end,
            "uri": self.destination.uri,
            "underlay_ip": self.underlay.ip,
            "underlay_dev": self.underlay.dev,
            "host_command": list(self.shells[1].prefix),
        }

    def check_unplaced(self) -> None:
        """A tenant the control plane manages in the zone is kept on the host it placed it
        on (its `placements`): the server would declare the VM there again after a move."""
        if self.zone is None:
            return
        with self.ledger.store.read() as connection:
            row = connection.execute(
                sa.select(placements.c.host).where(
                    placements.c.tenant == self.tenant, placements.c.zone == self.zone
                )
            ).first()
        if row is not None:
            raise SpecError(
                "tenant",
                f"tenant {self.tenant!r} is managed by the control plane (vce serve), which "
                f"keeps its objects of zone {self.zone} on host {row.host}: its VMs do not move "
                "one by one",
            )

    def bound_public_ips(self, name: str) -> list[Any]:
        """The public IPs bound to the VM through the source host (the ledger's rows), once
        the run can move them (the zone and both hosts' commands given)."""
        with self.ledger.store.read() as connection:
            rows = connection.execute(
                sa.select(public_ips)
                .where(public_ips.c.tenant == self.tenant, public_ips.c.host == self.source.uri)
                .where(public_ips.c.vm == name)
                .order_by(public_ips.c.name)
            ).all()
        hosts = (self.source, self.destination)
        unreached = any(
            not s.prefix and not h.is_local for s, h in zip(self.shells, hosts, strict=True)
        )
        if rows and (self.public_zone is None or unreached):
            names = ", ".join(f"{row.name} ({row.address})" for row in rows)
            raise SpecError(
                "zone_config",
                f"VM {name!r} has public IPs bound on its host: {names}; give the zone's "
                "zone_config and both hosts' host_command so that they follow it",
            )
        return list(rows)

    def move_of(
        self, name: str, domain: DomainState, here: TenantInventory, there: TenantInventory
    ) -> Move:
        if domain.state not in LIVE_STATES + COLD_STATES:
            raise SpecError("name", f"VM {name!r} is {domain.state}: only a running, paused or "
                            "stopped VM moves")  # fmt: skip
        disks = tuple(self.disk_copy(name, device, here, there) for device in domain.disks)
        leases = tuple(
            self.lease_of(name, nic.mac, nic.network, here, there) for nic in domain.nics
        )
        for other in there.domains.values():
            shared = {n.mac for n in other.nics} & {n.mac for n in domain.nics}
            if shared:
                raise SpecError(
                    "destination.uri",
                    f"MAC {sorted(shared)[0]} of VM {name!r} is used by VM {other.name!r} on the "
                    "destination host",
                )
        return Move(
            name,
            domain.name,
            domain.state in LIVE_STATES,
            domain.autostart,
            disks,
            tuple(lease for lease in leases if lease is not None),
        )

    def gateway_warnings(
        self, name: str, domain: DomainState, here: TenantInventory, there: TenantInventory
    ) -> list[str]:
        """Networks whose gateway has another MAC on the destination (made before gateways
        had one MAC on every host): the guest reaches its gateway there only once its ARP
        cache expires or the host asks for its address, which can take seconds."""
        warnings = []
        for nic in domain.nics:
            old, new = here.networks.get(nic.network), there.networks.get(nic.network)
            if old is not None and new is not None and old.mac != new.mac:
                warnings.append(
                    f"VM {name}: network {nic.network} has another gateway MAC on "
                    f"{self.destination.uri} ({new.mac or 'none'}, here {old.mac or 'none'}); the "
                    "guest may not reach its gateway for some seconds after the move"
                )
        return warnings

    def disk_copy(
        self, name: str, device: Any, here: TenantInventory, there: TenantInventory
    ) -> DiskCopy:
        volume = next((v for v in here.volumes.values() if v.path == device.path), None)
        if volume is None:
            raise SpecError(
                "name",
                f"disk {device.target} of VM {name!r} ({device.path or 'no file'}) is not a "
                f"volume of tenant {self.tenant!r} in a storage pool: it cannot be copied",
            )
        directory = there.pools.get(volume.pool)
        if directory is None:
            raise SpecError(
                "destination.uri",
                f"storage pool {volume.pool!r} (disk {device.target} of VM {name!r}) is not on "
                "the destination host",
            )
        if (volume.pool, volume.name) in there.volumes or any(
            i.libvirt_name == f"{volume.pool}/{volume.name}" for i in there.intruders
        ):
            raise SpecError(
                "destination.uri",
                f"volume {volume.name} exists in pool {volume.pool!r} of the destination host "
                "already: remove it (a copy of an interrupted move?) before moving VM "
                f"{name!r}",
            )
        new_path = f"{directory.rstrip('/')}/{volume.name}"
        return DiskCopy(device.target, volume, new_path, streamed=device.device != "disk")

    def lease_of(
        self, name: str, mac: str, network: str, here: TenantInventory, there: TenantInventory
    ) -> tuple[str, StaticLease] | None:
        """The VM's fixed-IP lease on `network` (None without one), once the destination's
        network of that name is known to take it."""
        found = there.intruder("network", network)
        if found is not None:
            raise field_error(found.refusal(), "destination.uri")
        target = there.networks.get(network)
        declared = network[len(object_name(self.tenant, "")) :]
        if target is None:
            raise SpecError(
                "destination.uri",
                f"network {declared!r} of VM {name!r} is not on the destination host: declare "
                "it there first (an environment or network run on that host)",
            )
        source = here.networks.get(network)
        lease = vm_lease(source, self.tenant, mac)
        if source is not None and source.cidr != target.cidr:
            raise SpecError(
                "destination.uri",
                f"network {declared!r} is {target.cidr} on the destination host and "
                f"{source.cidr} here: VM {name!r} would lose its address",
            )
        if lease is None:
            return None
        for other_mac, other in target.hosts.items():
            if other.ip == lease.ip and other_mac != mac:
                raise SpecError(
                    "destination.uri",
                    f"{lease.ip} of VM {name!r} on network {declared!r} is leased to {other_mac} "
                    "on the destination host",
                )
        return network, lease

    # -- apply ------------------------------------------------------------------------------

    def apply(self, move: Move) -> None:
        """Make the destination ready, move, remove what is left on the source, record it
        (what both hosts hold just before and after: a drain's earlier moves are not this one's)."""
        before = self.observe()
        started = time.monotonic()
        made: list[DiskCopy] = []
        leases = NetworkPlanner(self.destination, self.tenant)
        added: list[tuple[str, StaticLease]] = []
        try:
            for copy in move.disks:
                self.create_copy(copy)
                made.append(copy)
                if copy.streamed or not move.live:
                    self.stream(copy)
            for network, lease in move.leases:
                leases.set_lease(network, lease.mac, lease)
                added.append((network, lease))
            # The destination's NAT rules before the VM arrives: they match nothing until the
            # address is there too, right after the switch-over.
            if move.public_ips:
                self.nat(1).change_rules(move.bindings(self.tenant), [])
            if move.live:
                self.move_live(move)
            else:
                self.move_cold(move)
        except Exception as error:
            left = self.undo(made, added, move)
            if not isinstance(error, VceError):
                raise
            notes = "; ".join(left) if left else "nothing of it is left there"
            raise ApplyError(
                f"{error} (the VM stays on {self.source.uri}; {notes})", left=left
            ) from error
        # The VM runs on the destination now: what fails from here is said once the source is
        # cleared and the move recorded, never undone.
        failures = [self.arrival_error] if self.arrival_error else []
        failures += self.attempt(partial(self.hand_over, move))
        self.report.wall_seconds = round(time.monotonic() - started, 3)
        failures += self.attempt(partial(self.clear_source, move))
        failures += self.attempt(partial(self.record, move, before))
        if failures:
            raise ApplyError("; ".join(str(f) for f in failures), left=[str(f) for f in failures])

    @staticmethod
    def attempt(step: Any) -> list[VceError]:
        try:
            step()
        except VceError as error:
            return [error]
        return []

    def record(self, move: Move, before: tuple[TenantInventory, TenantInventory]) -> None:
        try:
            hosts = (self.source.uri, self.destination.uri)
            after = self.observe()
            self.report.usage_changes += record_move(self.ledger, self.tenant, before, after, hosts)
        except VceError as error:
            raise ApplyError(
                f"VM {move.name} moved to {self.destination.uri}, but the ledger did not take "
                f"the move: {error} (`vce ledger reconcile` on both hosts records what they hold)"
            ) from error

    def create_copy(self, copy: DiskCopy) -> None:
        pool = self.destination.lookup_pool(copy.volume.pool)
        with libvirt_action("create", f"volume {copy.volume.name} on {self.destination.uri}"):
            pool.createXML(volume_copy_xml(copy.volume), 0)

    def volume(self, host: Host, pool_name: str, name: str) -> Any:
        pool = host.lookup_pool(pool_name)
        with libvirt_action("find", f"volume {name} on {host.uri}"):
            return pool.storageVolLookupByName(name)

    def stream(self, copy: DiskCopy) -> None:
        """The volume's bytes (a qcow2 layer as it is on disk) from the source to its copy."""
        volume = copy.volume
        source = self.volume(self.source, volume.pool, volume.name)
        target = self.volume(self.destination, volume.pool, volume.name)
        with libvirt_action("copy", f"volume {volume.name} to {self.destination.uri}"):
            down = self.source.conn.newStream(0)
            up = self.destination.conn.newStream(0)
            try:
                source.download(down, 0, 0, 0)
                target.upload(up, 0, 0, 0)
                while True:
                    chunk = down.recv(STREAM_CHUNK)
                    if not chunk:
                        break
                    self.send(up, chunk)
                    self.report.disk_bytes += len(chunk)
                down.finish()
                up.finish()
            except BaseException:
                # An open stream keeps its connection (and a transfer on the host) alive.
                for stream in (down, up):
                    with contextlib.suppress(libvirt.libvirtError):
                        stream.abort()
                raise

    @staticmethod
    def send(stream: Any, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            taken = stream.send(bytes(view))
            if taken <= 0:
                raise OSError("the upload stream to the destination stopped")
            view = view[taken:]

    def move_live(self, move: Move) -> None:
        dom = self.domain(self.source, move.libvirt_name)
        log_dir = self.destination.log_dir
        with libvirt_action("read", f"domain {move.libvirt_name}"):
            live = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE)
            saved = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_INACTIVE)
        params = {
            libvirt.VIR_MIGRATE_PARAM_DEST_XML: relocated_domain_xml(live, move.paths, log_dir),
            libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: relocated_domain_xml(saved, move.paths, log_dir),
            libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS: [
                c.target for c in move.disks if not c.streamed
            ],
        }
        watch = ArrivalWatch(
            self.destination.conn, move.libvirt_name, partial(self.hand_over, move)
        )
        if move.public_ips or move.links.changes:
            watch.start()
        try:
            with libvirt_action("migrate", f"domain {move.libvirt_name} to {self.destination.uri}"):
                arrived = dom.migrate3(self.destination.conn, params, live_flags())
        finally:
            watch.stop()
        # Said after the move is recorded (apply): the VM runs on the destination.
        self.arrival_error = watch.error
        self.report.mode = "live"
        with libvirt_action("read the migration statistics of", f"domain {move.libvirt_name}"):
            stats = arrived.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        self.report.downtime_ms = stats.get("downtime")
        self.report.memory_bytes = stats.get("memory_processed")
        self.set_autostart(arrived, move)

    def move_cold(self, move: Move) -> None:
        dom = self.domain(self.source, move.libvirt_name)
        with libvirt_action("read", f"domain {move.libvirt_name}"):
            saved = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_INACTIVE)
        xml = relocated_domain_xml(saved, move.paths, self.destination.log_dir)
        with libvirt_action("define", f"domain {move.libvirt_name} on {self.destination.uri}"):
            arrived = self.destination.conn.defineXML(xml)
        self.set_autostart(arrived, move)
        with libvirt_action("undefine", f"domain {move.libvirt_name} on {self.source.uri}"):
            dom.undefineFlags(undefine_flags())
        self.report.mode = "cold"

    def set_autostart(self, dom: Any, move: Move) -> None:
        with libvirt_action("set autostart of", f"domain {move.libvirt_name}"):
            dom.setAutostart(1 if move.autostart else 0)

    def domain(self, host: Host, libvirt_name: str) -> Any:
        with libvirt_action("find", f"domain {libvirt_name} on {host.uri}"):
            return host.conn.lookupByName(libvirt_name)

    def undo(
        self, made: list[DiskCopy], added: list[tuple[str, StaticLease]], move: Move
    ) -> list[str]:
        """Best effort after a failed move: the destination's new volumes, leases and NAT
        rules removed; what could not be, named."""
        left = []
        if move.public_ips:
            try:
                there = self.nat(1)
                found = there.observe().bindings
                there.change_rules([], [found[k] for k in self.binding_keys(move) if k in found])
            except VceError:
                left.append(f"NAT rules of the VM's public IPs on {self.destination.uri}")
        left += [what for what, _error in self.remove(self.destination, made, added)]
        return left

    def remove(
        self, host: Host, disks: Iterable[DiskCopy], leases: Iterable[tuple[str, StaticLease]]
    ) -> list[tuple[str, VceError]]:
        """The VM's volumes and leases removed from `host`; what could not be, and why."""
        left = []
        for copy in disks:
            try:
                with libvirt_action("delete", f"volume {copy.volume.name}"):
                    self.volume(host, copy.volume.pool, copy.volume.name).delete(0)
            except VceError as error:
                if not vanished(error):
                    left.append((f"volume {copy.volume.name} on {host.uri}", error))
        networks = NetworkPlanner(host, self.tenant)
        for network, lease in leases:
            try:
                networks.set_lease(network, lease.mac, None)
            except VceError as error:
                left.append((f"lease {lease.ip} on network {network} of {host.uri}", error))
        return left

    def clear_source(self, move: Move) -> None:
        """The VM's volumes and leases removed from the source, which runs it no more."""
        found = self.remove(self.source, move.disks, move.leases)
        left = [f"{what}: {error}" for what, error in found]
        if left:
            raise ApplyError(
                f"VM {move.name} moved to {self.destination.uri}, but the source keeps: "
                f"{'; '.join(left)} (remove them by hand)",
                left=left,
            )

    def nat(self, side: int) -> NatTable:
        """The NAT table of the source (0) or the destination (1)."""
        return NatTable(self.shells[side], self.public_zone.uplink if self.public_zone else "")

    def binding_keys(self, move: Move) -> list[tuple[str, str]]:
        return [(self.tenant, row.name) for row in move.public_ips]

    def hand_over(self, move: Move) -> None:
        """Once the guest runs on the destination, once per move: its public IPs, then its
        zone links follow it."""
        if self.handed_over:
            return
        self.handed_over = True
        failures = []
        if move.public_ips:
            hint = ("bind them on the destination with vce.kvm.public_ip; the source may keep "
                    "their rules and addresses")  # fmt: skip
            step = partial(self.follow, move, "its public IPs", hint, self.move_public_ips)
            failures += self.attempt(step)
        if move.links.changes:
            names = ", ".join(sorted({c.name for c in move.links.changes if c.kind == "zone_link"}))
            hint = "declare the link with its end on the destination: vce.kvm.zone_link"
            step = partial(self.follow, move, f"zone link {names}", hint, self.move_links)
            failures += self.attempt(step)
        if failures:
            raise ApplyError("; ".join(str(f) for f in failures))

    def follow(self, move: Move, what: str, hint: str, step: Any) -> None:
        """`step(move)`; its failure says what did not follow the moved VM, and what to do."""
        try:
            step(move)
        except VceError as error:
            raise ApplyError(
                f"VM {move.name} moved to {self.destination.uri}, but {what} did not follow: "
                f"{error} ({hint})"
            ) from error

    def move_public_ips(self, move: Move) -> None:
        """The addresses on the destination's uplink, announced (the zone's gateway sends
        their traffic there at once), then the source's rules and addresses removed."""
        self.nat(1).take_over([row.address for row in move.public_ips])
        here = self.nat(0)
        found = here.observe().bindings
        here.batch([], [found[k] for k in self.binding_keys(move) if k in found])

    @staticmethod
    def move_links(move: Move) -> None:
        """The zone links' changes: their ends moved to the destination (zone_link.py)."""
        move.links.apply()

    def record_public_ip(self, row: Any) -> None:
        """The binding's host in the ledger, and its usage moved at one moment."""
        zone = self.public_zone
        planner = PublicIpPlanner(self.ledger, self.destination, self.tenant, zone, self.shells[1])
        planner.record_binding(row.name, row.vm, row.private_ip)
        at = self.ledger.now()
        key = f"{zone.name}:{row.name}"
        changes = [
            UsageChange(self.tenant, self.source.uri, "public_ip", key, "moved_out", at, ABSENT),
            UsageChange(self.tenant, self.destination.uri, "public_ip", key, "moved_in", at,
                        Meter("present", row.vm, public_ips=1)),
        ]  # fmt: skip
        Metering(self.ledger).record(changes)
        self.report.usage_changes += [change.as_dict() for change in changes]

    def record_link(self, link: str, metered_here: bool) -> None:
        """A link is metered on the host of its first end: its usage moves at one moment."""
        if not metered_here:
            return
        at = self.ledger.now()
        changes = [
            UsageChange(self.tenant, self.source.uri, "zone_link", link, "moved_out", at, ABSENT),
            UsageChange(self.tenant, self.destination.uri, "zone_link", link, "moved_in", at,
                        Meter("present", zone_links=1)),
        ]  # fmt: skip
        Metering(self.ledger).record(changes)
        self.report.usage_changes += [change.as_dict() for change in changes]


# -- the ledger ---------------------------------------------------------------------------


def record_move(
    ledger: Ledger,
    tenant: str,
    before: tuple[TenantInventory, TenantInventory],
    after: tuple[TenantInventory, TenantInventory],
    hosts: tuple[str, str],
) -> list[dict[str, Any]]:
    """The move in the usage timeline, at one moment on both hosts, and both hosts' usage."""
    at = ledger.now()
    changes: list[UsageChange] = []
    for host, old, new, action in zip(hosts, before, after, ("moved_out", "moved_in"), strict=True):
        found = changes_between(tenant, host, host_meters(old), host_meters(new), at)
        changes.extend(dataclasses.replace(change, action=action) for change in found)
    Metering(ledger).record(changes)
    with ledger.store.locked(tenant) as connection:
        for host, inventory in zip(hosts, after, strict=True):
            used = quota.add(*observed_objects(inventory).values())
            ledger.record_host_usage(connection, tenant, host, used, running_vms(inventory))
    return [change.as_dict() for change in changes]


def migration_facts(
    spec: MigrationSpec, report: MoveReport, applied: bool, planned: bool
) -> dict[str, Any]:
    """Where the VM is after the run (in check mode: now), and how it moved."""
    return {
        "migration": {
            "tenant": spec.tenant,
            "vm": spec.name,
            "source": spec.uri,
            "destination": spec.destination,
            "host": spec.destination if applied or not planned else spec.uri,
            "mode": report.mode or None,
            "wall_seconds": report.wall_seconds if applied else None,
            "downtime_ms": report.downtime_ms,
            "memory_bytes": report.memory_bytes,
            "streamed_bytes": report.disk_bytes,
        }
    }


def run_migration(params: Mapping[str, Any], check_mode: bool = False) -> Result:
    """Move VM `name` of `tenant` from the host at `uri` to `destination.uri` (same zone)."""
    spec = parse_migration(params)
    ledger = Ledger.open(params.get("ledger_url") or None)
    engine = MigrationPlanner(Host(spec.uri), Host(spec.destination), spec.tenant, ledger, spec)
    plan = engine.plan(spec.name, *engine.observe())

    def facts(_after: object, applied: bool) -> dict[str, Any]:
        return migration_facts(spec, engine.report, applied, bool(plan.changes))

    result = conclude(Run(plan, facts), check_mode)
    result.usage_changes = engine.report.usage_changes
    return result
