# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tenant networks: a libvirt network per declared network, with DHCP and static leases."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

from ...core.errors import SpecError, libvirt, libvirt_action
from ...core.plan import UNKNOWN, Change, ChangeClass, Plan
from ...core.spec import NetworkSpec, StaticLease, spec_hash
from ...host.addresses import UsedSpace, used_space
from ...host.connection import Host, TenantInventory
from ...host.ownership import Owner, add_metadata, object_name
from ...host.shell import HostShell
from ...host.xml import NetworkState, dhcp_host_element, network_xml, read_network, to_string

KIND = "network"
REPLACE_FIELDS = ("mode", "cidr", "gateway", "mtu")
# The field of the change that unties a routed network made by an earlier version from its
# uplink (`<forward mode='route' dev='…'/>`): the guard restricts routed networks now.
FORWARD_DEV = "forward dev"


def network_summary(spec: NetworkSpec) -> dict[str, object]:
    return {
        "bridge": UNKNOWN,  # libvirt picks the name when the network is defined
        "cidr": str(spec.cidr),
        "gateway": str(spec.gateway),
        "dhcp_range": f"{spec.dhcp_start}-{spec.dhcp_end}",
        "mode": spec.mode,
        "mtu": spec.mtu,
        "static_leases": {lease.mac: str(lease.ip) for lease in spec.static_leases},
    }


def state_summary(state: NetworkState) -> dict[str, object]:
    return {
        "cidr": str(state.cidr),
        "gateway": str(state.gateway),
        "dhcp_range": f"{state.dhcp_start}-{state.dhcp_end}",
        "mode": state.mode,
        "mtu": state.mtu,
        "active": state.active,
        "bridge": state.bridge,
        "static_leases": {mac: str(lease.ip) for mac, lease in sorted(state.hosts.items())},
    }


def network_owner(tenant: str, spec: NetworkSpec) -> Owner:
    managed = ",".join(sorted(lease.mac for lease in spec.static_leases))
    return Owner(tenant, KIND, spec.name, spec_hash(spec), (("leases", managed),))


def managed_leases(state: NetworkState) -> set[str]:
    if state.owner is None:
        return set()
    return {mac for mac in state.owner.get("leases").split(",") if mac}


class NetworkPlanner:
    """Observe, plan and apply one tenant's networks on one host."""

    def __init__(self, host: Host, tenant: str, shell: HostShell | None = None) -> None:
        self.host = host
        self.tenant = tenant
        self.shell = shell or HostShell()
        self._used: UsedSpace | None = None  # read once per run, when a network is made

    def used(self) -> UsedSpace:
        if self._used is None:
            self._used = used_space(self.host, self.shell)
        return self._used

    def owned(self, inventory: TenantInventory, name: str) -> NetworkState | None:
        libvirt_name = object_name(self.tenant, name)
        inventory.refuse_intruder(KIND, libvirt_name)
        return inventory.networks.get(libvirt_name)

    def check_overlap(self, spec: NetworkSpec, inventory: TenantInventory, field: str) -> None:
        for other in inventory.networks.values():
            if other.owner is None or other.owner.name == spec.name or other.cidr is None:
                continue
            if other.owner.tenant == self.tenant and other.cidr.overlaps(spec.cidr):
                raise SpecError(
                    field,
                    f"{spec.cidr} overlaps network {other.owner.name!r} ({other.cidr}) "
                    "of the same tenant",
                )

    def check_free(self, spec: NetworkSpec, field: str) -> None:
        """Refuse a CIDR that overlaps what is in use on the host: another libvirt network
        (another tenant's, libvirt's own `default`, any other) or the host's own addresses
        and routes. The message names neither the other network nor its tenant."""
        if self.used().overlaps(spec.cidr, object_name(self.tenant, spec.name)):
            raise SpecError(
                field,
                f"{spec.cidr} overlaps a network already in use on this host (a libvirt network "
                "or the host's own addresses and routes); choose another range",
            )

    def plan_present(
        self,
        spec: NetworkSpec,
        inventory: TenantInventory,
        vm_leases: Iterable[StaticLease] = (),
        allow_replace: bool = False,
        field: str = "cidr",
    ) -> Plan:
        plan = Plan()
        self.check_overlap(spec, inventory, field)
        state = self.owned(inventory, spec.name)
        libvirt_name = object_name(self.tenant, spec.name)
        if state is None:
            self.check_free(spec, field)
            leases = [*spec.static_leases, *vm_leases]
            xml = network_xml(libvirt_name, spec, network_owner(self.tenant, spec), leases)
            plan.add(
                Change(
                    KIND,
                    spec.name,
                    "create",
                    after=network_summary(spec),
                    run=lambda: self.create(libvirt_name, xml),
                )
            )
            return plan
        replaced = [f for f in REPLACE_FIELDS if self.differs(f, spec, state)]
        if replaced:
            if not allow_replace:
                raise SpecError(
                    replaced[0],
                    f"changing {', '.join(replaced)} of network {spec.name!r} needs the network "
                    "replaced (its VMs lose connectivity meanwhile); set allow_replace: true",
                )
            self.check_free(spec, field)
            keep = [h for m, h in state.hosts.items() if m not in managed_leases(state)]
            xml = network_xml(
                libvirt_name, spec, network_owner(self.tenant, spec), [*spec.static_leases, *keep]
            )
            plan.add(
                Change(
                    KIND,
                    spec.name,
                    "replace",
                    change_class=ChangeClass.REPLACE,
                    before=state_summary(state),
                    after=network_summary(spec),
                    run=lambda: self.replace(libvirt_name, xml),
                )
            )
            return plan
        self.plan_dhcp(plan, spec, state, libvirt_name)
        if plan.changed or state.owner is None or state.owner.spec_hash != spec_hash(spec):
            plan.add(
                Change(
                    KIND,
                    spec.name,
                    "update",
                    field="metadata",
                    before=state.owner.spec_hash if state.owner else None,
                    after=spec_hash(spec),
                    run=lambda: self.refresh_definition(libvirt_name, spec),
                )
            )
        if state.forward_dev is not None:
            plan.add(self.untie_change(spec.name, libvirt_name, state.forward_dev))
        if not state.active:
            plan.add(
                Change(
                    KIND,
                    spec.name,
                    "start",
                    field="active",
                    before=False,
                    after=True,
                    run=lambda: self.start(libvirt_name),
                )
            )
        if not state.autostart:
            plan.add(
                Change(
                    KIND,
                    spec.name,
                    "autostart",
                    field="autostart",
                    before=False,
                    after=True,
                    run=lambda: self.autostart(libvirt_name),
                )
            )
        return plan

    def untie_change(self, declared_name: str, libvirt_name: str, dev: str) -> Change:
        """A routed network of an earlier version untied from its uplink, live: libvirt
        reloads its own rules for the network and its VMs stay connected."""
        return Change(
            KIND,
            declared_name,
            "update",
            field=FORWARD_DEV,
            before=dev,
            after=None,
            run=lambda: self.untie(libvirt_name, dev),
        )

    @staticmethod
    def differs(field: str, spec: NetworkSpec, state: NetworkState) -> bool:
        return getattr(spec, field) != getattr(state, field)

    def plan_dhcp(
        self, plan: Plan, spec: NetworkSpec, state: NetworkState, libvirt_name: str
    ) -> None:
        if (spec.dhcp_start, spec.dhcp_end) != (state.dhcp_start, state.dhcp_end):
            old = (state.dhcp_start, state.dhcp_end)
            new = (spec.dhcp_start, spec.dhcp_end)
            plan.add(
                Change(
                    KIND,
                    spec.name,
                    "update",
                    field="dhcp_range",
                    before=f"{old[0]}-{old[1]}",
                    after=f"{new[0]}-{new[1]}",
                    run=lambda: self.set_range(libvirt_name, old, new),
                )
            )
        declared = {lease.mac: lease for lease in spec.static_leases}
        for mac, lease in sorted(declared.items()):
            current = state.hosts.get(mac)
            if current != lease:
                plan.add(self.lease_change(spec.name, libvirt_name, current, lease))
        for mac in sorted(managed_leases(state) - set(declared)):
            current = state.hosts.get(mac)
            if current is not None:
                plan.add(self.lease_change(spec.name, libvirt_name, current, None))

    def lease_change(
        self,
        declared_name: str,
        libvirt_name: str,
        current: StaticLease | None,
        wanted: StaticLease | None,
        kind: str = KIND,
        owner_name: str | None = None,
    ) -> Change:
        """A DHCP host entry added, changed or removed on a running network, live."""
        mac = (wanted or current).mac
        return Change(
            kind,
            owner_name or declared_name,
            "update",
            field=f"lease {mac} on {declared_name}",
            before=str(current.ip) if current else None,
            after=str(wanted.ip) if wanted else None,
            run=lambda: self.set_lease(libvirt_name, mac, wanted),
        )

    def plan_absent(self, name: str, inventory: TenantInventory) -> Plan:
        plan = Plan()
        state = self.owned(inventory, name)
        if state is None:
            return plan
        # A domain named like the tenant's but not theirs uses the network all the same.
        users = [
            d.owner.name if d.name in inventory.domains and d.owner else d.name
            for d in [*inventory.domains.values(), *inventory.foreign_domains.values()]
            if any(nic.network == state.name for nic in d.nics)
        ]
        if users:
            raise SpecError(
                "state", f"network {name!r} is still used by VM(s) {', '.join(sorted(users))}"
            )
        plan.add(self.delete_change(name, state))
        return plan

    def delete_change(self, name: str, state: NetworkState) -> Change:
        return Change(
            KIND, name, "delete", before=state_summary(state), run=lambda: self.delete(state.name)
        )

    # apply -----------------------------------------------------------------------------------

    def lookup(self, libvirt_name: str) -> object:
        with libvirt_action("find", f"network {libvirt_name}"):
            return self.host.conn.networkLookupByName(libvirt_name)

    def create(self, libvirt_name: str, xml: str) -> None:
        with libvirt_action("create", f"network {libvirt_name}"):
            net = self.host.conn.networkDefineXML(xml)
            net.setAutostart(1)
            try:
                net.create()
            except Exception:
                net.undefine()
                raise

    def replace(self, libvirt_name: str, xml: str) -> None:
        self.delete(libvirt_name)
        self.create(libvirt_name, xml)

    def delete(self, libvirt_name: str) -> None:
        net = self.lookup(libvirt_name)
        with libvirt_action("delete", f"network {libvirt_name}"):
            if net.isActive():
                net.destroy()
            net.undefine()

    def start(self, libvirt_name: str) -> None:
        self.call(libvirt_name, "start", "create")

    def autostart(self, libvirt_name: str) -> None:
        self.call(libvirt_name, "set autostart on", "setAutostart", 1)

    def call(self, libvirt_name: str, verb: str, method: str, *args: Any) -> Any:
        """The network's libvirt `method`, its errors mapped as `verb` of the network."""
        net = self.lookup(libvirt_name)
        with libvirt_action(verb, f"network {libvirt_name}"):
            return getattr(net, method)(*args)

    def refresh_definition(self, libvirt_name: str, spec: NetworkSpec) -> None:
        """Write the new ownership metadata into the persistent definition.

        libvirt 9.0 has no virNetworkSetMetadata, so the definition is rewritten from what
        libvirt holds now (after the live updates) with only the metadata replaced.
        """
        net = self.lookup(libvirt_name)
        with libvirt_action("update", f"network {libvirt_name}"):
            root = ET.fromstring(net.XMLDesc(self.host.network_config_flag))
            old = root.find("metadata")
            if old is not None:
                root.remove(old)
            add_metadata(root, network_owner(self.tenant, spec))
            self.host.conn.networkDefineXML(to_string(root))

    def set_range(self, libvirt_name: str, old: tuple, new: tuple) -> None:
        net = self.lookup(libvirt_name)
        flags = self.update_flags(net)
        with libvirt_action("change the DHCP range of", f"network {libvirt_name}"):
            if old[0] is not None:
                element = sub_range(*old)
                net.update(
                    libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE,
                    libvirt.VIR_NETWORK_SECTION_IP_DHCP_RANGE,
                    -1,
                    element,
                    flags,
                )
            net.update(
                libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
                libvirt.VIR_NETWORK_SECTION_IP_DHCP_RANGE,
                -1,
                sub_range(*new),
                flags,
            )

    def untie(self, libvirt_name: str, dev: str) -> None:
        """Delete the forward interface of a routed network, live and saved: libvirt replaces
        its rules for the network without restarting it (no tap is disconnected)."""
        net = self.lookup(libvirt_name)
        flags = self.update_flags(net)
        element = ET.Element("interface", {"dev": dev})
        with libvirt_action(f"untie from {dev}", f"network {libvirt_name}"):
            net.update(
                libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE,
                libvirt.VIR_NETWORK_SECTION_FORWARD_INTERFACE,
                -1,
                to_string(element),
                flags,
            )

    @staticmethod
    def update_flags(net: object) -> int:
        flags = libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG
        if net.isActive():
            flags |= libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE
        return flags

    def set_lease(self, libvirt_name: str, mac: str, wanted: StaticLease | None) -> None:
        """Make the network hold exactly `wanted` for `mac` (None: no entry), live and saved."""
        net = self.lookup(libvirt_name)
        flags = self.update_flags(net)
        with libvirt_action(f"update the DHCP lease of {mac} on", f"network {libvirt_name}"):
            for scope in self.scopes_holding(net, mac, flags):
                probe = to_string(dhcp_host_element(StaticLease(mac, scope[1])))
                net.update(
                    libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE,
                    libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
                    -1,
                    probe,
                    scope[0],
                )
            if wanted is not None:
                xml = to_string(dhcp_host_element(wanted))
                net.update(
                    libvirt.VIR_NETWORK_UPDATE_COMMAND_ADD_LAST,
                    libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
                    -1,
                    xml,
                    flags,
                )

    def scopes_holding(self, net: object, mac: str, flags: int) -> list[tuple[int, object]]:
        """Where an entry for `mac` exists now: the live and/or saved definition."""
        scopes = []
        config = read_network(net.XMLDesc(self.host.network_config_flag), False, False)
        live = read_network(net.XMLDesc(0), True, False) if net.isActive() else None
        in_config = config.hosts.get(mac)
        in_live = live.hosts.get(mac) if live else None
        if in_config and in_live and in_config == in_live:
            scopes.append((flags, in_config.ip))
            return scopes
        if in_config:
            scopes.append((libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG, in_config.ip))
        if in_live:
            scopes.append((libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE, in_live.ip))
        return scopes


def sub_range(start: object, end: object) -> str:
    element = ET.Element("range")
    element.set("start", str(start))
    element.set("end", str(end))
    return to_string(element)
