# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Public IPs: an address of the zone's pool, allocated in the ledger and bound 1:1 to a VM's
NIC on its host with nftables (DNAT in, SNAT out) in the project's own table.

The VM's network is routed to the zone's uplink (libvirt's own `route` forward mode, so libvirt
keeps allowing that traffic whenever it rewrites its chains); the address is put on the uplink
so the host answers for it. Every rule carries a comment naming tenant, binding and both
addresses, so the bindings are read back from the host itself.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import quota
from .enforcement import Declaration, Gate
from .errors import SpecError, VceError
from .host import DEFAULT_URI, Host, TenantInventory
from .hostshell import HostShell, check_prefix
from .ledger import Ledger
from .ownership import check_owner, object_name
from .plan import UNKNOWN, Change, Plan
from .result import Result
from .spec import INTERFACE_PATTERN, as_list, as_mapping, check_ipv4, check_name, reject_unknown

TABLE = "vce_nat"
TAG = "vce"
# Base chains of the project's table; `nft -f` adds them only when missing.
TABLE_DEFINITION = f"""table ip {TABLE} {{
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept; }}
  chain output {{ type nat hook output priority -100; policy accept; }}
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
}}
"""

try:
    import sqlalchemy as sa

    from .ledger_schema import public_ips
except ImportError:  # reported by the ledger's Store()
    sa = None


@dataclass(frozen=True)
class Pool:
    name: str
    cidr: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    exclude: frozenset[ipaddress.IPv4Address] = frozenset()

    def addresses(self) -> list[ipaddress.IPv4Address]:
        """Assignable addresses in order: not the network, broadcast, gateway or excluded."""
        return [a for a in self.cidr.hosts() if a != self.gateway and a not in self.exclude]


@dataclass(frozen=True)
class Zone:
    name: str
    uplink: str
    pools: tuple[Pool, ...]

    def pool_of(self, address: ipaddress.IPv4Address) -> Pool | None:
        return next((p for p in self.pools if address in p.cidr), None)


def parse_zone(name: Any, raw: Any) -> Zone:
    zone = check_name(name, "zone")
    raw = as_mapping(raw, "zone_config")
    reject_unknown(raw, {"uplink", "public_pools"}, "zone_config")
    uplink = raw.get("uplink")
    if not isinstance(uplink, str) or not INTERFACE_PATTERN.match(uplink):
        raise SpecError(
            "zone_config.uplink", f"the zone's uplink interface is required, got {uplink!r}"
        )
    pools = []
    for i, item in enumerate(as_list(raw.get("public_pools"), "zone_config.public_pools")):
        path = f"zone_config.public_pools[{i}]"
        item = as_mapping(item, path)
        reject_unknown(item, {"name", "cidr", "gateway", "exclude"}, path)
        try:
            cidr = ipaddress.IPv4Network(str(item.get("cidr")), strict=True)
        except ValueError as error:
            raise SpecError(
                f"{path}.cidr", f"invalid IPv4 CIDR {item.get('cidr')!r}: {error}"
            ) from None
        gateway = check_ipv4(item.get("gateway"), f"{path}.gateway")
        exclude = frozenset(
            check_ipv4(a, f"{path}.exclude[{j}]")
            for j, a in enumerate(as_list(item.get("exclude"), f"{path}.exclude"))
        )
        pools.append(Pool(check_name(item.get("name"), f"{path}.name"), cidr, gateway, exclude))
    if not pools:
        raise SpecError("zone_config.public_pools", f"zone {zone} has no public IP pool")
    return Zone(zone, uplink, tuple(pools))


@dataclass(frozen=True)
class PublicIpSpec:
    name: str
    vm: str
    network: str | None  # the NIC's network; None: the VM's first NIC
    address: ipaddress.IPv4Address | None  # requested; None: the pool's first free one


def parse_public_ip(raw: Any, path: str, zone: Zone) -> PublicIpSpec:
    raw = as_mapping(raw, path)
    reject_unknown(raw, {"name", "vm", "network", "address"}, path)
    prefix = f"{path}." if path else ""
    name = check_name(raw.get("name"), f"{prefix}name")
    vm = check_name(raw.get("vm"), f"{prefix}vm")
    network = raw.get("network")
    if network is not None:
        network = check_name(network, f"{prefix}network")
    address = None
    if raw.get("address") is not None:
        address = check_ipv4(raw["address"], f"{prefix}address")
        pool = zone.pool_of(address)
        if pool is None:
            pools = ", ".join(str(p.cidr) for p in zone.pools)
            raise SpecError(
                f"{prefix}address", f"{address} is outside zone {zone.name}'s pools ({pools})"
            )
        if address not in pool.addresses():
            raise SpecError(
                f"{prefix}address",
                f"{address} is not assignable in pool {pool.name} (network, gateway or excluded)",
            )
    return PublicIpSpec(name, vm, network, address)


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

    def observe(self) -> NatState:
        state = NatState()
        listing = self.shell.json(["nft", "-j", "list", "ruleset", "ip"], "list", "nftables rules")
        found: dict[tuple[str, str], list[tuple[str, int]]] = {}
        details: dict[tuple[str, str], tuple[str, str]] = {}
        for item in listing.get("nftables", []):
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
        addresses = self.shell.json(
            ["ip", "-j", "-4", "addr", "show", "dev", self.uplink], "read", f"uplink {self.uplink}"
        )
        for link in addresses or []:
            for info in link.get("addr_info", []):
                if info.get("prefixlen") == 32:
                    state.uplink_addresses.add(info["local"])
        return state

    def batch(self, bind: Sequence[Binding], unbind: Sequence[Binding]) -> None:
        """All rule changes in one atomic `nft -f`, then the uplink's addresses."""
        lines = [TABLE_DEFINITION]
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
        keep = {b.public for b in bind}
        for old in unbind:
            if old.public not in keep:
                self.address(old.public, present=False)
        for new in bind:
            self.address(new.public, present=True)

    def address(self, public: str, present: bool) -> None:
        verb = "add" if present else "del"
        argv = ["ip", "addr", verb, f"{public}/32", "dev", self.uplink]
        try:
            self.shell.run(
                argv, "add" if present else "remove", f"address {public} on {self.uplink}"
            )
        except VceError as error:
            # Already there (add) or already gone (del): the state wanted holds.
            if "File exists" not in str(error) and "Cannot assign" not in str(error):
                raise


def nic_address(
    inventory: TenantInventory, tenant: str, spec: PublicIpSpec, path: str
) -> tuple[str, str]:
    """The VM NIC's reserved private address and its network's uplink (the VM must be the
    tenant's, the NIC must have a fixed IP on a routed network)."""
    prefix = f"{path}." if path else ""
    libvirt_name = object_name(tenant, spec.vm)
    domain = inventory.domains.get(libvirt_name)
    if domain is None:
        raise SpecError(f"{prefix}vm", f"unknown VM {spec.vm!r} of tenant {tenant!r} on this host")
    check_owner(domain.owner, tenant, "vm", libvirt_name)
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
        if state.mode != "routed" or not state.uplink:
            raise SpecError(
                f"{prefix}network",
                f"VM {spec.vm}'s NIC is on network {declared} ({state.mode}); a public IP needs a "
                "routed network (mode: routed, uplink: the zone's uplink)",
            )
        return str(lease.ip), state.uplink
    wanted = f" on network {spec.network}" if spec.network else ""
    raise SpecError(f"{prefix}network", f"VM {spec.vm} has no NIC{wanted} of tenant {tenant}")


class PublicIpEngine:
    """Allocation in the ledger and binding on the host, planned together."""

    def __init__(
        self, ledger: Ledger, host: Host, tenant: str, zone: Zone, shell: HostShell
    ) -> None:
        self.ledger = ledger
        self.host = host
        self.tenant = tenant
        self.zone = zone
        self.nat = NatTable(shell, zone.uplink)

    def allocation(self, connection: Any, name: str) -> Any:
        query = sa.select(public_ips).where(
            public_ips.c.tenant == self.tenant,
            public_ips.c.zone == self.zone.name,
            public_ips.c.name == name,
        )
        return connection.execute(query).first()

    def holder(self, connection: Any, address: str) -> Any:
        return connection.execute(
            sa.select(public_ips).where(public_ips.c.address == address)
        ).first()

    def free_address(self, connection: Any) -> tuple[str, str]:
        taken = {row.address for row in connection.execute(sa.select(public_ips.c.address))}
        for pool in self.zone.pools:
            for address in pool.addresses():
                if str(address) not in taken:
                    return str(address), pool.name
        pools = ", ".join(f"{p.name} {p.cidr}" for p in self.zone.pools)
        raise SpecError(
            "zone_config.public_pools", f"zone {self.zone.name}'s pools are exhausted ({pools})"
        )

    def choose(
        self, connection: Any, spec: PublicIpSpec, current: Any, path: str
    ) -> tuple[str | None, str]:
        """The address this declaration gets: the one it holds, the one it asks for, or the pool's
        first free one (None in check mode until apply picks it)."""
        prefix = f"{path}." if path else ""
        if spec.address is not None:
            address = str(spec.address)
            if current is not None and current.address != address:
                raise SpecError(
                    f"{prefix}address",
                    f"{self.tenant}'s public IP {spec.name} is {current.address}; changing the "
                    "address means releasing it (state: absent) and allocating a new one",
                )
            holder = self.holder(connection, address)
            if holder is not None and (holder.tenant, holder.name) != (self.tenant, spec.name):
                raise SpecError(f"{prefix}address", f"{address} is already taken")
            return address, self.zone.pool_of(spec.address).name
        if current is not None:
            return current.address, current.pool
        return None, ""

    def plan_present(
        self,
        connection: Any,
        spec: PublicIpSpec,
        inventory: TenantInventory,
        nat: NatState,
        path: str = "",
    ) -> Plan:
        plan = Plan()
        private, uplink = nic_address(inventory, self.tenant, spec, path)
        if uplink != self.zone.uplink:
            raise SpecError(
                f"{path + '.' if path else ''}network",
                f"VM {spec.vm}'s network is routed to {uplink}, not to zone "
                f"{self.zone.name}'s uplink {self.zone.uplink}",
            )
        current = self.allocation(connection, spec.name)
        address, pool = self.choose(connection, spec, current, path)
        if current is None:
            limits = self.ledger.limits(
                connection, self.ledger.require_tenant(connection, self.tenant)
            )
            used = {"public_ips": self.ledger.public_ip_count(connection, self.tenant)}
            found = quota.breaches(limits, used, {"public_ips": 1})
            if found:
                raise quota.QuotaExceeded(self.tenant, found)
            if address is None:
                self.free_address(connection)  # fail now, in check mode too, if none is left
            plan.add(
                Change(
                    "public_ip",
                    spec.name,
                    "allocate",
                    field="address",
                    after=address or UNKNOWN,
                    run=lambda: self.allocate(connection, spec, address, pool, private),
                )
            )
        bound = nat.bindings.get((self.tenant, spec.name))
        if current is not None and (current.vm, current.private_ip) != (spec.vm, private):
            plan.add(
                Change(
                    "public_ip",
                    spec.name,
                    "rebind",
                    field="vm",
                    before=f"{current.vm} ({current.private_ip})",
                    after=f"{spec.vm} ({private})",
                    run=lambda: self.record_binding(connection, spec.name, spec.vm, private),
                )
            )
        target = address or UNKNOWN
        healthy = (
            bound is not None
            and bound.public == target
            and bound.private == private
            and len(bound.handles) == 3
            and bound.public in nat.uplink_addresses
        )
        if not healthy:
            plan.add(
                Change(
                    "public_ip",
                    spec.name,
                    "bind",
                    field="binding",
                    before=f"{bound.public} -> {bound.private}" if bound else None,
                    after=f"{target} -> {private}",
                    run=lambda: self.bind(connection, spec.name, private, bound),
                )
            )
        return plan

    def plan_absent(self, connection: Any, name: str, nat: NatState) -> Plan:
        plan = Plan()
        current = self.allocation(connection, name)
        bound = nat.bindings.get((self.tenant, name))
        if bound is not None:
            plan.add(
                Change(
                    "public_ip",
                    name,
                    "unbind",
                    field="binding",
                    before=f"{bound.public} -> {bound.private}",
                    run=lambda: self.nat.batch([], [bound]),
                )
            )
        if current is not None:
            plan.add(
                Change(
                    "public_ip",
                    name,
                    "release",
                    field="address",
                    before=current.address,
                    run=lambda: self.release(connection, name),
                )
            )
        return plan

    def allocate(
        self, connection: Any, spec: PublicIpSpec, address: str | None, pool: str, private: str
    ) -> None:
        if address is None:
            address, pool = self.free_address(connection)
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
        self.ledger.event(
            connection, self.tenant, "public_ip_allocated", {"name": spec.name, "address": address}
        )

    def record_binding(self, connection: Any, name: str, vm: str, private: str) -> None:
        connection.execute(
            public_ips.update()
            .where(
                public_ips.c.tenant == self.tenant,
                public_ips.c.zone == self.zone.name,
                public_ips.c.name == name,
            )
            .values(vm=vm, private_ip=private, host=self.host.uri, updated_at=self.ledger.now())
        )

    def bind(self, connection: Any, name: str, private: str, bound: Binding | None) -> None:
        address = self.allocation(connection, name).address
        new = Binding(self.tenant, name, address, private)
        self.nat.batch([new], [bound] if bound else [])

    def release(self, connection: Any, name: str) -> None:
        row = self.allocation(connection, name)
        connection.execute(public_ips.delete().where(public_ips.c.address == row.address))
        self.ledger.event(
            connection, self.tenant, "public_ip_released", {"name": name, "address": row.address}
        )

    def facts(self, connection: Any, name: str, nat: NatState) -> dict[str, Any]:
        row = self.allocation(connection, name)
        if row is None:
            return {}
        bound = nat.bindings.get((self.tenant, name))
        return {
            "name": name,
            "address": row.address,
            "pool": row.pool,
            "zone": row.zone,
            "vm": row.vm,
            "private_ip": row.private_ip,
            "bound": bound is not None and bound.public == row.address,
        }


def zone_lock(zone: str) -> str:
    return f"(public-ips {zone})"


def run_public_ip(params: Mapping[str, Any], check_mode: bool = False) -> Result:
    tenant = check_name(params.get("tenant"), "tenant")
    zone = parse_zone(params.get("zone"), params.get("zone_config"))
    state = params.get("state") or "present"
    shell = HostShell(check_prefix(params.get("host_command")))
    host = Host(params.get("uri") or DEFAULT_URI)
    ledger = Ledger.open(params.get("ledger_url") or None)
    spec = (
        parse_public_ip(
            {
                k: params.get(k)
                for k in ("name", "vm", "network", "address")
                if params.get(k) is not None
            },
            "",
            zone,
        )
        if state == "present"
        else None
    )
    name = check_name(params.get("name"), "name")
    gate = Gate(ledger, host, tenant, Declaration())
    engine = PublicIpEngine(ledger, host, tenant, zone, shell)
    inventory = host.inventory(tenant)
    with ledger.store.locked(tenant) as connection:
        ledger.store.also_lock(connection, zone_lock(zone.name))
        nat = engine.nat.observe()
        plan = (
            engine.plan_present(connection, spec, inventory, nat)
            if spec
            else engine.plan_absent(connection, name, nat)
        )
        gate.admit(plan, inventory)
        if not check_mode:
            plan.apply()
            nat = engine.nat.observe() if plan.changed else nat
        facts = engine.facts(connection, name, nat)
    return Result(
        plan.changed, plan.to_list(), plan.diff(), plan.warnings, facts={"public_ip": facts}
    )
