# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Zone links: one tenant network spanning two availability zones, as one L2 segment over
VXLAN on the hosts' underlay.

Each end is a VXLAN device `vx<VNI>` on the host's underlay interface, from its own underlay
address to the other end's, and a port of the tenant network's libvirt bridge. The VNI is
allocated in the ledger (unique). VXLAN adds 50 bytes, so the network's MTU must fit in the
underlay's MTU minus 50: the link is refused otherwise, saying which to change.

The kernel's VXLAN socket takes packets on every address of the host, so each host that holds
an end also keeps the nft table `inet vce_vxlan` (host/vxlan_filter.py): VXLAN is let in only
from a recorded link's peer, on its underlay device, with its VNI. The table is rendered from
the ledger's links of every tenant with an end on the host, and a run that adds, connects or
removes a link keeps it on both ends, after the VNI is allocated and before any device is made
or removed: a device never listens without the filter, and a removed link's packets are
dropped, never let through.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass
from functools import partial
from typing import Any

from ...core.errors import SpecError, VceError
from ...core.plan import UNKNOWN, Change, Plan
from ...core.result import Result
from ...core.spec import EnvironmentSpec, NetworkSpec
from ...core.validation import (
    check_name,
)
from ...core.zones import LinkEnd, ZoneLinkSpec, parse_link_end, parse_zone_link
from ...host.connection import Host
from ...host.firewall import NftTable
from ...host.ownership import check_owner, object_name
from ...host.shell import HostShell
from ...host.vxlan_filter import FAMILY, TABLE, VXLAN_PORT, VxlanPeer, render_vxlan_table
from ...host.xml import NetworkState
from ...ledger.tenants import Ledger
from ..gate import Declaration, Gate
from ..run import Run, conclude
from .firewall import KIND, differing_lines, lines

try:
    import sqlalchemy as sa

    from ...ledger.schema import zone_links
except ImportError:  # reported by the ledger's Store()
    sa = None

VXLAN_OVERHEAD = 50
# A link's changes that only write the ledger, before the filters that are rendered from it.
LEDGER_ACTIONS = ("allocate", "record")
FIRST_VNI = 10_000
LAST_VNI = 16_777_215
DEFAULT_MTU = 1500


@dataclass(frozen=True)
class End:
    """A link end as a run reaches it: the declared end, and the shell of its host."""

    zone: str
    uri: str
    underlay_ip: str
    underlay_dev: str
    shell: HostShell

    @classmethod
    def of(cls, end: LinkEnd) -> End:
        shell = HostShell(end.host_command)
        return cls(end.zone, end.uri, end.underlay_ip, end.underlay_dev, shell)

    def host(self) -> Host:
        return Host(self.uri)

    def record(self) -> dict[str, Any]:
        """The end as the ledger records it (the link's `ends` column)."""
        return {
            "zone": self.zone,
            "uri": self.uri,
            "underlay_ip": self.underlay_ip,
            "underlay_dev": self.underlay_dev,
            "host_command": list(self.shell.prefix),
        }


@dataclass
class EndState:
    network: NetworkState
    underlay_mtu: int
    device: dict[str, Any] | None  # `ip -j -d link` of vx<VNI>, when it exists


class ZoneLinkPlanner:
    def __init__(
        self, ledger: Ledger, tenant: str, name: str, network: str, ends: tuple[End, End]
    ) -> None:
        self.ledger = ledger
        self.tenant = tenant
        self.name = name
        self.network = network
        self.ends = ends
        # Recorded ends on hosts the declaration no longer names (an end moved to another host
        # of its zone, with a migrated VM): their devices go, their filters drop the link.
        self.departed: tuple[End, ...] = ()

    def row(self) -> Any:
        with self.ledger.store.read() as connection:
            return self.ledger.zone_link(connection, self.tenant, self.name)

    def vni(self) -> int | None:
        row = self.row()
        return row.vni if row else None

    def observe_end(
        self, end: End, vni: int | None, path: str, declared: NetworkSpec | None = None
    ) -> EndState:
        """The end's network as the host has it, or as declared in the same run (created
        before the link is connected; its bridge is read when connecting)."""
        libvirt_name = object_name(self.tenant, self.network)
        state = end.host().network(libvirt_name)
        if state is None and declared is not None:
            state = NetworkState(
                libvirt_name, None, False, True, declared.mode, declared.cidr, declared.gateway,
                declared.dhcp_start, declared.dhcp_end, declared.mtu,
            )  # fmt: skip
        elif state is None:
            raise SpecError(
                f"{path}",
                f"tenant {self.tenant} has no network {self.network!r} in zone {end.zone} "
                f"({end.uri})",
            )
        else:
            check_owner(state.owner, self.tenant, "network", libvirt_name)
        links = end.shell.json(
            ["ip", "-j", "-d", "link", "show", "dev", end.underlay_dev],
            "read",
            f"underlay {end.underlay_dev}",
        )
        mtu = int(links[0]["mtu"]) if links else DEFAULT_MTU
        device = None
        if vni is not None:
            found = end.shell.json(
                ["ip", "-j", "-d", "link", "show", "type", "vxlan"], "list", "VXLAN devices"
            )
            device = next((d for d in found or [] if d.get("ifname") == device_name(vni)), None)
        return EndState(state, mtu, device)

    def validate(self, states: tuple[EndState, EndState]) -> str:
        """Refuse what cannot be one L2 segment; returns the network's CIDR."""
        a, b = (s.network for s in states)
        if self.ends[0].zone == self.ends[1].zone:
            raise SpecError(
                "ends[1].zone",
                f"both ends are in zone {self.ends[0].zone}; a zone link joins two zones",
            )
        for i, state in enumerate(states):
            mtu = state.network.mtu or DEFAULT_MTU
            if mtu + VXLAN_OVERHEAD > state.underlay_mtu:
                end = self.ends[i]
                raise SpecError(
                    f"ends[{i}].underlay_dev",
                    f"MTU too small: network {self.network} has MTU {mtu}, which needs an "
                    f"underlay MTU of {mtu + VXLAN_OVERHEAD}, but {end.underlay_dev} in zone "
                    f"{end.zone} has {state.underlay_mtu}; lower the network's mtu to "
                    f"{state.underlay_mtu - VXLAN_OVERHEAD} or raise the underlay's",
                )
        if a.cidr != b.cidr:
            raise SpecError(
                "network",
                f"network {self.network} is {a.cidr} in zone {self.ends[0].zone} but {b.cidr} in "
                f"zone {self.ends[1].zone}; a link joins one subnet",
            )
        if a.gateway == b.gateway:
            raise SpecError(
                "network",
                f"both ends of {self.network} use gateway {a.gateway}; give each zone its own "
                "gateway address",
            )
        if a.dhcp_start <= b.dhcp_end and b.dhcp_start <= a.dhcp_end:
            raise SpecError(
                "network",
                f"the DHCP ranges of {self.network} overlap ({a.dhcp_start}-{a.dhcp_end} and "
                f"{b.dhcp_start}-{b.dhcp_end}); give each zone its own range",
            )
        return str(a.cidr)

    def check_overlaps(self, cidr: str) -> None:
        with self.ledger.store.read() as connection:
            query = sa.select(zone_links).where(
                zone_links.c.tenant == self.tenant, zone_links.c.name != self.name
            )
            for other in connection.execute(query):
                if ipaddress.IPv4Network(other.cidr).overlaps(ipaddress.IPv4Network(cidr)):
                    raise SpecError(
                        "network", f"{cidr} overlaps {other.cidr} of the tenant's link {other.name}"
                    )

    def plan_present(self, declared: NetworkSpec | None = None, path: str = "") -> Plan:
        """Both ends; `declared` is the first end's network when the same run creates it."""
        plan = Plan()
        row = self.row()
        vni = row.vni if row else None
        states = (
            self.observe_end(self.ends[0], vni, f"{path}ends[0]", declared),
            self.observe_end(self.ends[1], vni, f"{path}ends[1]"),
        )
        cidr = self.validate(states)
        self.check_overlaps(cidr)
        if row is None:  # its quota is the gate's (engine/gate.py: check_counted)
            plan.add(
                Change(
                    "zone_link",
                    self.name,
                    "allocate",
                    field="vni",
                    after=UNKNOWN,
                    run=partial(self.allocate, cidr),
                )
            )
        elif json.loads(row.ends) != self.records():
            plan.add(
                Change(
                    "zone_link",
                    self.name,
                    "record",
                    field="ends",
                    before=json.loads(row.ends),
                    after=self.records(),
                    run=self.record_ends,
                )
            )
        device = device_name(vni) if vni else f"vx{UNKNOWN}"
        for i, (end, state) in enumerate(zip(self.ends, states, strict=True)):
            peer = self.ends[1 - i]
            if self.healthy(state, end, peer):
                continue
            plan.add(
                Change(
                    "zone_link",
                    self.name,
                    "connect",
                    field=f"ends[{i}]",
                    before=state.device.get("ifname") if state.device else None,
                    after=f"{device} {end.underlay_ip} -> {peer.underlay_ip} on "
                    f"{state.network.bridge}",
                    run=partial(self.connect, end, peer, state),
                )
            )
        if row is not None:
            self.departed = self.departed_ends(json.loads(row.ends))
            for end in self.departed:
                plan.extend(self.plan_departure(end, row.vni))
        return plan

    def healthy(self, state: EndState, end: End, peer: End) -> bool:
        """The device as connect() makes it: bound to the underlay address and device, sending
        to the peer only, learning no other remote, a port of the network's bridge, up."""
        device = state.device
        if device is None:
            return False
        data = device.get("linkinfo", {}).get("info_data", {})
        return (
            data.get("remote") == peer.underlay_ip
            and data.get("local") == end.underlay_ip
            and data.get("link") == end.underlay_dev
            and data.get("port") == VXLAN_PORT
            and data.get("learning") is False
            and device.get("master") == state.network.bridge
            and "UP" in device.get("flags", [])
        )

    def departed_ends(self, recorded: Sequence[Mapping[str, Any]]) -> tuple[End, ...]:
        declared = {end.uri for end in self.ends}
        return tuple(
            End.of(parse_link_end(raw, f"recorded link {self.name} ends[{i}]"))
            for i, raw in enumerate(recorded)
            if raw["uri"] not in declared
        )

    def plan_departure(self, end: End, vni: int) -> Plan:
        """The link's device removed from a host that no longer holds an end (after the new
        end is connected: the changes' order). A host that cannot be read is warned about: a
        link moves off a host that is down too, and its device then stays there, unused."""
        plan = Plan()
        name = device_name(vni)
        try:
            found = end.shell.json(
                ["ip", "-j", "link", "show", "type", "vxlan"], "list", "VXLAN devices"
            )
        except VceError as error:
            plan.warnings.append(
                f"zone link {self.name}: the host it leaves ({end.uri}) could not be read, its "
                f"device {name} may stay there: {error}"
            )
            return plan
        if any(d.get("ifname") == name for d in found or []):
            plan.add(self.disconnect(end, vni, f"{end.zone} (left)"))
        return plan

    def disconnect(self, end: End, vni: int, field: str) -> Change:
        name = device_name(vni)
        run = partial(end.shell.run, ["ip", "link", "del", name], "delete",
                      f"VXLAN device {name} in zone {end.zone}")  # fmt: skip
        return Change("zone_link", self.name, "disconnect", field=field, before=name, run=run)

    def plan_absent(self) -> Plan:
        plan = Plan()
        row = self.row()
        if row is None:
            return plan
        for i, end in enumerate(self.ends):
            found = end.shell.json(
                ["ip", "-j", "link", "show", "type", "vxlan"], "list", "VXLAN devices"
            )
            if any(d.get("ifname") == device_name(row.vni) for d in found or []):
                plan.add(self.disconnect(end, row.vni, f"ends[{i}]"))
        plan.add(
            Change("zone_link", self.name, "release", field="vni", before=row.vni, run=self.release)
        )
        return plan

    def allocate(self, cidr: str) -> None:
        with self.ledger.store.locked(self.tenant) as connection:
            self.ledger.store.also_lock(connection, "(vni)")
            used = {r.vni for r in connection.execute(sa.select(zone_links.c.vni))}
            vni = next(v for v in range(FIRST_VNI, LAST_VNI + 1) if v not in used)
            connection.execute(
                zone_links.insert().values(
                    tenant=self.tenant,
                    name=self.name,
                    vni=vni,
                    network=self.network,
                    cidr=cidr,
                    ends=json.dumps(self.records(), sort_keys=True),
                    created_at=self.ledger.now(),
                )
            )
            self.ledger.event(
                connection, self.tenant, "zone_link_created", {"name": self.name, "vni": vni}
            )

    def records(self) -> list[dict[str, Any]]:
        return [end.record() for end in self.ends]

    def record_ends(self) -> None:
        """The declared ends in the ledger: the filters are rendered from them."""
        with self.ledger.store.locked(self.tenant) as connection:
            connection.execute(
                zone_links.update()
                .where(zone_links.c.tenant == self.tenant, zone_links.c.name == self.name)
                .values(ends=json.dumps(self.records(), sort_keys=True))
            )

    def connect(self, end: End, peer: End, state: EndState) -> None:
        vni = self.row().vni
        name = device_name(vni)
        obj = f"VXLAN device {name} in zone {end.zone}"
        if state.device is not None:
            end.shell.run(["ip", "link", "del", name], "replace", obj)
        # `nolearning`: the peer is the only remote; a packet never teaches the device another
        # underlay address to send a guest's frames to.
        end.shell.run(
            ["ip", "link", "add", name, "type", "vxlan", "id", str(vni), "local", end.underlay_ip,
             "remote", peer.underlay_ip, "dstport", str(VXLAN_PORT), "dev", end.underlay_dev,
             "nolearning"],
            "create", obj,
        )  # fmt: skip
        mtu = state.network.mtu or DEFAULT_MTU
        # Read now: a network created earlier in the same run got its bridge name only then.
        network = end.host().network(object_name(self.tenant, self.network))
        end.shell.run(["ip", "link", "set", name, "mtu", str(mtu)], "set the MTU of", obj)
        end.shell.run(["ip", "link", "set", name, "master", network.bridge], "attach", obj)
        end.shell.run(["ip", "link", "set", name, "up"], "start", obj)

    def release(self) -> None:
        with self.ledger.store.locked(self.tenant) as connection:
            connection.execute(
                zone_links.delete().where(
                    zone_links.c.tenant == self.tenant, zone_links.c.name == self.name
                )
            )
            self.ledger.event(connection, self.tenant, "zone_link_removed", {"name": self.name})

    def facts(self) -> dict[str, Any]:
        row = self.row()
        if row is None:
            return {}
        return {
            "name": row.name,
            "vni": row.vni,
            "network": row.network,
            "cidr": row.cidr,
            "ends": json.loads(row.ends),
            "device": device_name(row.vni),
        }


LinkKey = tuple[str, str]  # (tenant, link name)


def peers_on(uri: str, label: str, vni: int, ends: Sequence[Mapping[str, Any]]) -> list[VxlanPeer]:
    """What a link's end on the host at `uri` lets in: its peer's VXLAN with the link's VNI."""
    return [
        VxlanPeer(
            end["underlay_dev"],
            ipaddress.IPv4Address(end["underlay_ip"]),
            ipaddress.IPv4Address(ends[1 - i]["underlay_ip"]),
            vni,
            label,
        )
        for i, end in enumerate(ends)
        if end["uri"] == uri
    ]


class VxlanFilters:
    """The VXLAN filter (`inet vce_vxlan`) of every host a run's zone links have an end on.

    Planned from the ledger's links of every tenant on the host with the run's own links as
    they will be; applied from the ledger as it is then (after the run's VNI allocations), less
    the links the run removes.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.shells: dict[str, HostShell] = {}
        self.arriving: dict[LinkKey, tuple[int | None, list[dict[str, Any]]]] = {}
        self.leaving: set[LinkKey] = set()

    def present(self, planner: ZoneLinkPlanner, vni: int | None) -> None:
        """A link the run keeps or makes; `vni` None while it is not allocated yet."""
        self.touch(planner)
        self.arriving[(planner.tenant, planner.name)] = (vni, [e.record() for e in planner.ends])

    def absent(self, planner: ZoneLinkPlanner) -> None:
        self.touch(planner)
        self.leaving.add((planner.tenant, planner.name))

    def touch(self, planner: ZoneLinkPlanner) -> None:
        for end in planner.ends + planner.departed:
            self.shells.setdefault(end.uri, end.shell)

    def recorded(self, uri: str, leaving: Set[LinkKey]) -> list[VxlanPeer]:
        """The peers the ledger's links give the host at `uri`, but those in `leaving`."""
        with self.ledger.store.read() as connection:
            rows = list(connection.execute(sa.select(zone_links)))
        return [
            peer
            for row in rows
            if (row.tenant, row.name) not in leaving
            for peer in peers_on(uri, f"{row.tenant}/{row.name}", row.vni, json.loads(row.ends))
        ]

    def projected(self, uri: str) -> list[VxlanPeer] | None:
        """The peers the host has after the run; None while one of them has no VNI yet."""
        peers = self.recorded(uri, self.leaving | set(self.arriving))
        for (tenant, name), (vni, ends) in self.arriving.items():
            if not any(end["uri"] == uri for end in ends):
                continue
            if vni is None:
                return None
            peers.extend(peers_on(uri, f"{tenant}/{name}", vni, ends))
        return peers

    def plan(self) -> Plan:
        """One change per host whose table is not what the run leaves it with; it shows the
        rules as `nft list` prints them (of a changed table, those that differ)."""
        plan = Plan()
        for uri, shell in self.shells.items():
            table = NftTable(shell, FAMILY, TABLE)
            observed = table.observed()
            peers = self.projected(uri)
            after = UNKNOWN if peers is None else table.expected(render_vxlan_table(peers))
            if after == observed:
                continue
            if peers is None:
                before, shown = lines(observed), UNKNOWN
            elif observed is None:
                before, shown = None, lines(after)
            else:
                before, shown = differing_lines(observed, after)
            action = "create" if observed is None else "update"
            run = partial(self.keep, table, uri)
            plan.add(Change(KIND, TABLE, action, field=uri, before=before, after=shown, run=run))
        return plan

    def keep(self, table: NftTable, uri: str) -> None:
        table.replace(render_vxlan_table(self.recorded(uri, frozenset(self.leaving))))


def with_filters(links: Plan, filters: Plan) -> Plan:
    """The links' changes with the filters' after every ledger write that the filters render
    from (a VNI allocated, ends recorded) and before any device is made or removed."""
    plan = Plan(warnings=links.warnings, pending_restart=links.pending_restart)
    recording = [c for c in links.changes if c.action in LEDGER_ACTIONS]
    plan.changes = recording + filters.changes
    plan.changes += [c for c in links.changes if c.action not in LEDGER_ACTIONS]
    return plan


def device_name(vni: int) -> str:
    return f"vx{vni}"


def run_zone_link(params: Mapping[str, Any], check_mode: bool = False) -> Result:
    tenant = check_name(params.get("tenant"), "tenant")
    ledger = Ledger.open(params.get("ledger_url") or None)
    engine = zone_link_planner(ledger, tenant, parse_zone_link(params, ""))
    host = engine.ends[0].host()
    gate = Gate(ledger, host, tenant, Declaration())
    filters = VxlanFilters(ledger)
    if params.get("state") == "absent":
        plan = engine.plan_absent()
        filters.absent(engine)
    else:
        plan = engine.plan_present()
        filters.present(engine, engine.vni())
    plan = with_filters(plan, filters.plan())
    return conclude(
        Run(plan, lambda _after, _applied: {"zone_link": engine.facts()}, gate), check_mode
    )


def links_touching(ledger: Ledger, tenant: str, uri: str) -> dict[str, Any]:
    """The tenant's recorded links with an end on the host at `uri`, by name."""
    with ledger.store.read() as connection:
        rows = connection.execute(sa.select(zone_links).where(zone_links.c.tenant == tenant))
        return {r.name: r for r in rows if any(e["uri"] == uri for e in json.loads(r.ends))}


def plan_environment_links(
    spec: EnvironmentSpec | None, ledger: Ledger, tenant: str, uri: str, remove_undeclared: bool
) -> Plan:
    """The environment's zone links (this host is the first end of each; its network may be
    declared in the same run). With prune or state absent (`spec` None), the tenant's other
    links with an end on this host are removed, both ends."""
    plan = Plan()
    filters = VxlanFilters(ledger)
    links = spec.zone_links if spec else ()
    networks = {n.name: n for n in spec.networks} if spec else {}
    for i, link in enumerate(links):
        path = f"zone_links[{i}]"
        if link.ends[0].uri != uri:
            raise SpecError(f"{path}.ends[0].uri", f"the first end must be this host ({uri})")
        planner = zone_link_planner(ledger, tenant, link)
        plan.extend(planner.plan_present(networks.get(link.network), f"{path}."))
        filters.present(planner, planner.vni())
    recorded = links_touching(ledger, tenant, uri)
    undeclared = sorted(set(recorded) - {link.name for link in links})
    for name in undeclared if remove_undeclared else []:
        row = recorded[name]
        ends = json.loads(row.ends)
        link = ZoneLinkSpec(
            name,
            row.network,
            (
                parse_link_end(ends[0], f"recorded link {name} ends[0]"),
                parse_link_end(ends[1], f"recorded link {name} ends[1]"),
            ),
        )
        planner = zone_link_planner(ledger, tenant, link)
        plan.extend(planner.plan_absent())
        filters.absent(planner)
    if undeclared and not remove_undeclared:
        plan.warnings.append(
            f"tenant {tenant} has zone links no declaration mentions: {', '.join(undeclared)} "
            "(set prune: true to remove them)"
        )
    return with_filters(plan, filters.plan())


def zone_link_planner(ledger: Ledger, tenant: str, spec: ZoneLinkSpec) -> ZoneLinkPlanner:
    ends = (End.of(spec.ends[0]), End.of(spec.ends[1]))
    return ZoneLinkPlanner(ledger, tenant, spec.name, spec.network, ends)


def recorded_zone_link(params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The tenant's zone link `name` as the ledger recorded it: its network and the zones of
    its ends (what a front end needs to read it back), or None."""
    tenant = check_name(params.get("tenant"), "tenant")
    name = check_name(params.get("name"), "name")
    ledger = Ledger.open(params.get("ledger_url") or None)
    with ledger.store.read() as connection:
        row = ledger.zone_link(connection, tenant, name)
    if row is None:
        return None
    return {"network": row.network, "zones": [end["zone"] for end in json.loads(row.ends)]}


def read_zone_link(params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The zone link's facts (both ends read from their hosts), or None when it is gone."""
    tenant = check_name(params.get("tenant"), "tenant")
    ledger = Ledger.open(params.get("ledger_url") or None)
    return zone_link_planner(ledger, tenant, parse_zone_link(params, "")).facts() or None
