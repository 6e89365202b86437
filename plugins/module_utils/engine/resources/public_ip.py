# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Public IPs: an address of the zone's pool, allocated in the ledger and bound 1:1 to a VM's
NIC on its host with nftables (DNAT in, SNAT out) in the project's own table.

The VM's network is routed (libvirt's `route` forward mode, tied to no interface; the host's
guard lets it leave only through the zone's uplink); the address is put on the uplink so the
host answers for it. Every rule carries a comment naming tenant, binding and both
addresses, so the bindings are read back from the host itself.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Container, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ...core import fields
from ...core.errors import SpecError
from ...core.plan import UNKNOWN, Change, Plan
from ...core.result import Result
from ...core.spec import EnvironmentSpec
from ...core.validation import (
    check_name,
)
from ...core.zones import PublicIpSpec, PublicZone, parse_public_ip, parse_public_zone
from ...host.connection import DEFAULT_URI, Host, TenantInventory
from ...host.ownership import object_name
from ...host.shell import HostShell, host_shell
from ...ledger.tenants import Ledger
from ..gate import Declaration, Gate
from ..run import Run, conclude
from .vm import BoundPublicIp

TABLE = "vce_nat"
TAG = "vce"
# Base chains of the project's table; `nft -f` adds them only when missing.
TABLE_DEFINITION = f"""table ip {TABLE} {{
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
  chain output {{ type nat hook output priority -100; policy accept; }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
}}
"""

# A gratuitous ARP for each address, from the uplink (python3 of the host, standard library):
# the zone's gateway learns at once that this host answers for an address now, when a VM moved
# here with its public IP (`ip addr add` announces nothing; the gateway would keep the old
# host's MAC until its cache expired).
ANNOUNCE = r"""
import socket, struct, sys
sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sock.bind((sys.argv[1], 0))
mac = sock.getsockname()[4]
for address in sys.argv[2:]:
    ip = socket.inet_aton(address)
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + bytes(6) + ip
    sock.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
"""

try:
    import sqlalchemy as sa

    from ...ledger.schema import public_ips
except ImportError:  # reported by the ledger's Store()
    sa = None


@dataclass(frozen=True)
class Binding:
    """One public IP as the host holds it: its NAT rules and the address on the uplink."""

    tenant: str
    name: str
    public: str
    private: str
    handles: tuple[tuple[str, int], ...] = ()  # (chain, rule handle)


def comment_of(tenant: str, name: str, public: str, private: str) -> str:
    return f"{TAG}:{tenant}:{name}:{public}:{private}"


@dataclass
class NatState:
    bindings: dict[tuple[str, str], Binding] = field(default_factory=dict)
    uplink_addresses: set[str] = field(default_factory=set)


class NatTable:
    """The project's nft table on one host, read and changed in one batch each."""

    def __init__(self, shell: HostShell, uplink: str) -> None:
        self.shell = shell
        self.uplink = uplink
        # Re-declaring an existing table costs as much as the rules of 50 bindings.
        self.table_seen = False

    def observe(self) -> NatState:
        state = NatState()
        listing = self.shell.json(["nft", "-j", "list", "ruleset", "ip"], "list", "nftables rules")
        found: dict[tuple[str, str], list[tuple[str, int]]] = {}
        details: dict[tuple[str, str], tuple[str, str]] = {}
        for item in listing.get("nftables", []):
            if item.get("table", {}).get("name") == TABLE:
                self.table_seen = True
            rule = item.get("rule")
            if not rule or rule.get("table") != TABLE:
                continue
            parts = str(rule.get("comment", "")).split(":")
            if len(parts) != 5 or parts[0] != TAG:
                continue
            key = (parts[1], parts[2])
            found.setdefault(key, []).append((rule["chain"], int(rule["handle"])))
            details[key] = (parts[3], parts[4])
        for key, handles in found.items():
            public, private = details[key]
            state.bindings[key] = Binding(key[0], key[1], public, private, tuple(sorted(handles)))
        state.uplink_addresses = self.uplink_addresses()
        return state

    def batch(self, bind: Sequence[Binding], unbind: Sequence[Binding]) -> None:
        """All rule changes in one atomic `nft -f`, then the uplink's addresses in one
        `ip -batch`."""
        self.change_rules(bind, unbind)
        present = self.uplink_addresses()
        keep = {b.public for b in bind}
        commands = [
            f"addr del {old.public}/32 dev {self.uplink}"
            for old in unbind
            if old.public not in keep and old.public in present
        ]
        commands += [f"addr add {public}/32 dev {self.uplink}" for public in sorted(keep - present)]
        if commands:
            self.change_addresses(commands)

    def change_addresses(self, commands: Sequence[str]) -> None:
        self.shell.run(
            ["ip", "-batch", "-"],
            "change",
            f"public addresses on {self.uplink}",
            stdin="\n".join(commands) + "\n",
        )

    def take_over(self, addresses: Sequence[str]) -> None:
        """The addresses on this host's uplink (whose rules are there already), announced: a
        VM moved here with its public IPs is reached here from now on. One command: the guest
        is unreachable until it is done."""
        script = (
            'script=$1 dev=$2; shift 2; for address; do ip addr add "$address/32" dev "$dev" '
            '|| exit 1; done; exec python3 -c "$script" "$dev" "$@"'
        )
        argv = ["sh", "-c", script, "take-over", ANNOUNCE, self.uplink, *addresses]
        self.shell.run(argv, "take over", f"public addresses on {self.uplink}")

    def change_rules(self, bind: Sequence[Binding], unbind: Sequence[Binding]) -> None:
        """The rules of `unbind` deleted and those of `bind` added, in one atomic `nft -f`."""
        lines = [] if self.table_seen else [TABLE_DEFINITION]
        for old in unbind:
            lines += [
                f"delete rule ip {TABLE} {chain} handle {handle}" for chain, handle in old.handles
            ]
        for new in bind:
            note = json.dumps(comment_of(new.tenant, new.name, new.public, new.private))
            dnat = f"ip daddr {new.public} dnat to {new.private} comment {note}"
            lines += [
                f"add rule ip {TABLE} prerouting {dnat}",
                f"add rule ip {TABLE} output {dnat}",
                f'add rule ip {TABLE} postrouting oifname "{self.uplink}" ip saddr {new.private} '
                f"snat to {new.public} comment {note}",
            ]
        self.shell.run(
            ["nft", "-f", "-"],
            "apply",
            f"nftables rules of table {TABLE}",
            stdin="\n".join(lines) + "\n",
        )
        self.table_seen = True

    def uplink_addresses(self) -> set[str]:
        """The /32 addresses on the uplink: where the host answers for public IPs."""
        shown = self.shell.json(
            ["ip", "-j", "-4", "addr", "show", "dev", self.uplink], "read", f"uplink {self.uplink}"
        )
        return {
            info["local"]
            for link in shown or []
            for info in link.get("addr_info", [])
            if info.get("prefixlen") == 32
        }


def nic_address(inventory: TenantInventory, tenant: str, spec: PublicIpSpec, path: str) -> str:
    """The VM NIC's reserved private address (the VM must be the tenant's, the NIC must have
    a fixed IP on a routed network of this host)."""
    prefix = f"{path}." if path else ""
    libvirt_name = object_name(tenant, spec.vm)
    inventory.refuse_intruder("vm", libvirt_name)
    domain = inventory.domains.get(libvirt_name)
    if domain is None:
        raise SpecError(f"{prefix}vm", f"unknown VM {spec.vm!r} of tenant {tenant!r} on this host")
    for nic in domain.nics:
        state = inventory.networks.get(nic.network)
        declared = state.owner.name if state and state.owner else nic.network
        if spec.network is not None and declared != spec.network:
            continue
        if state is None:
            break
        lease = state.hosts.get(nic.mac)
        if lease is None:
            raise SpecError(
                f"{prefix}vm",
                f"VM {spec.vm}'s NIC on {declared} has no fixed IP; declare nics[].ip",
            )
        if state.mode != "routed":
            raise SpecError(
                f"{prefix}network",
                f"VM {spec.vm}'s NIC is on network {declared} ({state.mode}); a public IP needs a "
                "routed network (mode: routed)",
            )
        return str(lease.ip)
    wanted = f" on network {spec.network}" if spec.network else ""
    raise SpecError(f"{prefix}network", f"VM {spec.vm} has no NIC{wanted} of tenant {tenant}")


def declared_nic_address(environment: EnvironmentSpec, spec: PublicIpSpec, path: str) -> str | None:
    """The NIC's address from the environment's own declaration, when it declares the VM
    (which may not exist yet when the plan is made); None otherwise."""
    vm = next((v for v in environment.vms if v.name == spec.vm), None)
    if vm is None:
        return None
    networks = {n.name: n for n in environment.networks}
    for nic in vm.nics:
        if spec.network is not None and nic.network != spec.network:
            continue
        network = networks.get(nic.network)
        if nic.ip is None:
            raise SpecError(
                f"{path}.vm", f"VM {spec.vm}'s NIC on {nic.network} has no fixed IP; declare its ip"
            )
        if network is None or network.mode != "routed":
            mode = network.mode if network else "not declared here"
            raise SpecError(
                f"{path}.network",
                f"VM {spec.vm}'s NIC is on network {nic.network} ({mode}); a public IP needs a "
                "routed network (mode: routed)",
            )
        return str(nic.ip)
    wanted = f" on network {spec.network}" if spec.network else ""
    raise SpecError(f"{path}.network", f"VM {spec.vm} has no NIC{wanted}")


class PublicIpPlanner:
    """Allocation in the ledger and binding on the host, planned together.

    Each allocation is its own short ledger transaction under the tenant's and the zone's
    locks. Bindings, unbindings and releases are collected while the plan applies and carried
    out by flush(): one nft batch, one ip batch, one ledger transaction per run and host.
    """

    def __init__(
        self, ledger: Ledger, host: Host, tenant: str, zone: PublicZone, shell: HostShell
    ) -> None:
        self.ledger = ledger
        self.host = host
        self.tenant = tenant
        self.zone = zone
        self.nat = NatTable(shell, zone.uplink)
        self.to_bind: list[tuple[str, str, Binding | None]] = []  # name, private, old binding
        self.to_unbind: list[Binding] = []
        self.to_release: list[str] = []
        # The host's NAT as read for the plan: still true when the run changed nothing.
        self.observed = NatState()

    @contextmanager
    def locked(self) -> Iterator[Any]:
        with self.ledger.store.locked(self.tenant) as connection:
            self.ledger.store.also_lock(connection, zone_lock(self.zone.name))
            yield connection

    def allocations(self, here: bool = False) -> dict[str, Any]:
        """The tenant's allocations in this zone, by name; `here`: only those bound through
        this host (another host of the zone holds the NAT rules of the others)."""
        with self.ledger.store.read() as connection:
            query = sa.select(public_ips).where(
                public_ips.c.tenant == self.tenant, public_ips.c.zone == self.zone.name
            )
            if here:
                query = query.where(public_ips.c.host == self.host.uri)
            return {row.name: row for row in connection.execute(query)}

    def unused(self, taken: Container[str]) -> list[tuple[str, str]]:
        """The zone's assignable addresses nobody holds, in pool order, with their pool."""
        return [
            (str(address), pool.name)
            for pool in self.zone.pools
            for address in pool.addresses()
            if str(address) not in taken
        ]

    def free_address(self, connection: Any) -> tuple[str, str]:
        taken = {row.address for row in connection.execute(sa.select(public_ips.c.address))}
        free = self.unused(taken)
        if not free:
            raise self.exhausted()
        return free[0]

    def plan(
        self,
        declared: Sequence[tuple[PublicIpSpec, str, str]],
        removed: Sequence[str],
        nat: NatState,
    ) -> Plan:
        """Changes for the declared public IPs - (spec, private address, field path) -
        and the removals of the named ones."""
        plan = Plan()
        current = self.allocations()
        new = [spec for spec, *_rest in declared if spec.name not in current]
        with self.ledger.store.read() as connection:
            # The quota of what `new` adds is the gate's (engine/gate.py: check_counted).
            taken = {row.address: row for row in connection.execute(sa.select(public_ips))}
        wanted = {str(s.address) for s, *_rest in declared if s.address is not None}
        automatic = [a for a, _pool in self.unused(taken) if a not in wanted]
        needed = [s for s in new if s.address is None]
        if len(needed) > len(automatic):
            raise self.exhausted()
        for spec, private, path in declared:
            prefix = f"{path}." if path else ""
            row = current.get(spec.name)
            address = self.choose(spec, row, taken, prefix)
            if row is None:
                plan.add(
                    Change(
                        "public_ip",
                        spec.name,
                        "allocate",
                        field="address",
                        after=address or UNKNOWN,
                        run=partial(self.allocate, spec, address, private),
                    )
                )
            elif (row.vm, row.private_ip) != (spec.vm, private):
                plan.add(
                    Change(
                        "public_ip",
                        spec.name,
                        "rebind",
                        field="vm",
                        before=f"{row.vm} ({row.private_ip})",
                        after=f"{spec.vm} ({private})",
                        run=partial(self.record_binding, spec.name, spec.vm, private),
                    )
                )
            self.plan_binding(plan, spec.name, row.address if row else address, private, nat)
        for name in removed:
            self.plan_release(plan, name, current.get(name), nat)
        return plan

    def exhausted(self) -> SpecError:
        pools = ", ".join(f"{p.name} {p.cidr}" for p in self.zone.pools)
        return SpecError(
            "zone_config.public_pools", f"zone {self.zone.name}'s pools are exhausted ({pools})"
        )

    def choose(
        self, spec: PublicIpSpec, row: Any, taken: Mapping[str, Any], prefix: str
    ) -> str | None:
        """The address the declaration holds or asks for; None: the pool's first free one."""
        if spec.address is None:
            return row.address if row else None
        address = str(spec.address)
        if row is not None and row.address != address:
            raise SpecError(
                f"{prefix}address",
                f"{self.tenant}'s public IP {spec.name} is {row.address}; changing the address "
                "means releasing it (state: absent) and allocating a new one",
            )
        holder = taken.get(address)
        if holder is not None and (holder.tenant, holder.name) != (self.tenant, spec.name):
            raise SpecError(f"{prefix}address", f"{address} is already taken")
        return address

    def plan_binding(
        self, plan: Plan, name: str, address: str | None, private: str, nat: NatState
    ) -> None:
        bound = nat.bindings.get((self.tenant, name))
        healthy = (
            bound is not None
            and address is not None
            and (bound.public, bound.private) == (address, private)
            and len(bound.handles) == 3
            and bound.public in nat.uplink_addresses
        )
        if healthy:
            return
        plan.add(
            Change(
                "public_ip",
                name,
                "bind",
                field="binding",
                before=f"{bound.public} -> {bound.private}" if bound else None,
                after=f"{address or UNKNOWN} -> {private}",
                run=partial(self.to_bind.append, (name, private, bound)),
            )
        )

    def plan_release(self, plan: Plan, name: str, row: Any, nat: NatState) -> None:
        if row is not None and row.host != self.host.uri:
            raise SpecError(
                "name",
                f"public IP {name} is bound on another host of zone {self.zone.name} "
                f"({row.host}): release it there",
            )
        bound = nat.bindings.get((self.tenant, name))
        if bound is not None:
            plan.add(
                Change(
                    "public_ip",
                    name,
                    "unbind",
                    field="binding",
                    before=f"{bound.public} -> {bound.private}",
                    run=partial(self.to_unbind.append, bound),
                )
            )
        if row is not None:
            plan.add(
                Change(
                    "public_ip",
                    name,
                    "release",
                    field="address",
                    before=row.address,
                    run=partial(self.to_release.append, name),
                )
            )

    def allocate(self, spec: PublicIpSpec, address: str | None, private: str) -> None:
        with self.locked() as connection:
            if address is None:
                address, pool = self.free_address(connection)
            else:
                pool = self.zone.pool_of(ipaddress.IPv4Address(address)).name
                holder = connection.execute(
                    sa.select(public_ips).where(public_ips.c.address == address)
                ).first()
                if holder is not None:
                    raise SpecError("address", f"{address} was taken by another run meanwhile")
            now = self.ledger.now()
            connection.execute(
                public_ips.insert().values(
                    address=address,
                    zone=self.zone.name,
                    pool=pool,
                    tenant=self.tenant,
                    name=spec.name,
                    host=self.host.uri,
                    vm=spec.vm,
                    private_ip=private,
                    allocated_at=now,
                    updated_at=now,
                )
            )
            detail = {"name": spec.name, "address": address}
            self.ledger.event(connection, self.tenant, "public_ip_allocated", detail)

    def record_binding(self, name: str, vm: str, private: str) -> None:
        with self.locked() as connection:
            connection.execute(
                public_ips.update()
                .where(
                    public_ips.c.tenant == self.tenant,
                    public_ips.c.zone == self.zone.name,
                    public_ips.c.name == name,
                )
                .values(vm=vm, private_ip=private, host=self.host.uri, updated_at=self.ledger.now())
            )

    def release(self, names: Sequence[str]) -> None:
        """Free the addresses (after their rules and addresses went, in flush)."""
        with self.locked() as connection:
            for name in names:
                row = connection.execute(
                    sa.select(public_ips).where(
                        public_ips.c.tenant == self.tenant,
                        public_ips.c.zone == self.zone.name,
                        public_ips.c.name == name,
                    )
                ).first()
                if row is None:
                    continue
                connection.execute(public_ips.delete().where(public_ips.c.address == row.address))
                detail = {"name": name, "address": row.address}
                self.ledger.event(connection, self.tenant, "public_ip_released", detail)

    def flush(self) -> None:
        """Apply what the run's changes collected: every rule in one nft batch, the uplink's
        addresses in one ip batch, then the releases in one ledger transaction."""
        if self.to_bind or self.to_unbind:
            rows = self.allocations()
            bind, unbind = [], list(self.to_unbind)
            for name, private, old in self.to_bind:
                bind.append(Binding(self.tenant, name, rows[name].address, private))
                if old is not None:
                    unbind.append(old)
            self.nat.batch(bind, unbind)
        if self.to_release:
            self.release(self.to_release)
        self.to_bind.clear()
        self.to_unbind.clear()
        self.to_release.clear()

    def facts(self, nat: NatState) -> dict[str, dict[str, Any]]:
        result = {}
        for name, row in self.allocations().items():
            bound = nat.bindings.get((self.tenant, name))
            result[name] = {
                "name": name,
                "address": row.address,
                "pool": row.pool,
                "zone": row.zone,
                "vm": row.vm,
                "private_ip": row.private_ip,
                "bound": bound is not None and bound.public == row.address,
            }
        return result


def bound_through(
    ledger: Ledger, tenant: str, host_uri: str, declared: Container[tuple[str, str]] = ()
) -> tuple[BoundPublicIp, ...]:
    """The tenant's public IPs the ledger records as bound through this host, but those the
    run declares ((zone, name): their planner binds them to where their NIC will be)."""
    with ledger.store.read() as connection:
        query = sa.select(public_ips).where(
            public_ips.c.tenant == tenant, public_ips.c.host == host_uri
        )
        rows = connection.execute(query.order_by(public_ips.c.name)).all()
    return tuple(
        BoundPublicIp(row.name, row.address, row.vm, row.private_ip)
        for row in rows
        if (row.zone, row.name) not in declared
    )


def zone_lock(zone: str) -> str:
    return f"(public-ips {zone})"


def public_ip_planner(
    params: Mapping[str, Any], ledger: Ledger, host: Host, tenant: str
) -> PublicIpPlanner:
    """The planner of the tenant's public IPs in the zone the run's parameters give."""
    zone = parse_public_zone(params.get("zone"), params.get("zone_config"))
    return planner_in(zone, params, ledger, host, tenant)


def planner_in(
    zone: PublicZone, params: Mapping[str, Any], ledger: Ledger, host: Host, tenant: str
) -> PublicIpPlanner:
    return PublicIpPlanner(ledger, host, tenant, zone, host_shell(params))


def read_public_ip(params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The tenant's public IP `name` (allocation and binding), or None."""
    tenant = check_name(params.get("tenant"), "tenant")
    name = check_name(params.get("name"), "name")
    host = Host(params.get("uri") or DEFAULT_URI)
    planner = public_ip_planner(params, Ledger.open(params.get("ledger_url") or None), host, tenant)
    return planner.facts(planner.nat.observe()).get(name) or None


def declared_public_ip(params: Mapping[str, Any], zone: PublicZone) -> PublicIpSpec:
    """The public IP a module's (or a Pulumi resource's) parameters declare in `zone`; the
    provider's Check reads them with this too."""
    return parse_public_ip(fields.declared(fields.PUBLIC_IP, params), "", zone)


def run_public_ip(params: Mapping[str, Any], check_mode: bool = False) -> Result:
    tenant = check_name(params.get("tenant"), "tenant")
    name = check_name(params.get("name"), "name")
    host = Host(params.get("uri") or DEFAULT_URI)
    ledger = Ledger.open(params.get("ledger_url") or None)
    planner = public_ip_planner(params, ledger, host, tenant)
    gate = Gate(ledger, host, tenant, Declaration())
    nat = planner.nat.observe()
    if (params.get("state") or "present") == "present":
        inventory = host.inventory(tenant)
        spec = declared_public_ip(params, planner.zone)
        private = nic_address(inventory, tenant, spec, "")
        plan = planner.plan([(spec, private, "")], [], nat)
    else:
        plan = planner.plan([], [name], nat)

    def facts(_after: object, applied: bool) -> dict[str, Any]:
        now = planner.nat.observe() if applied else nat
        return {"public_ip": planner.facts(now).get(name, {})}

    return conclude(Run(plan, facts, gate, flush=planner.flush), check_mode)


def plan_environment_public_ips(
    spec: EnvironmentSpec | None,
    planner: PublicIpPlanner | None,
    inventory: TenantInventory,
    remove_undeclared: bool,
) -> Plan:
    """The environment's public IPs (the VMs they bind may be declared in the same run); with
    prune or state absent (`spec` None), the tenant's other public IPs of the zone are
    released. `planner` None: the host has no zone (parse_environment refuses public IPs)."""
    if planner is None:
        return Plan()
    tenant = planner.tenant
    declared = []
    for i, item in enumerate(spec.public_ips if spec else ()):
        path = f"public_ips[{i}]"
        found = declared_nic_address(spec, item, path)
        private = found or nic_address(inventory, tenant, item, path)
        declared.append((item, private, path))
    names = {item.name for item, *_rest in declared}
    undeclared = sorted(set(planner.allocations(here=True)) - names)
    planner.observed = planner.nat.observe()
    plan = planner.plan(declared, undeclared if remove_undeclared else [], planner.observed)
    if undeclared and not remove_undeclared:
        plan.warnings.append(
            f"tenant {tenant} has public IPs no declaration mentions: {', '.join(undeclared)} "
            "(set prune: true to release them)"
        )
    return plan
