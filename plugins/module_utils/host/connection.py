# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One libvirt connection per host per run, and what a tenant has on that host."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlencode, urlsplit

from ..core.errors import (
    HostUnreachable,
    VceError,
    connection_failed,
    libvirt,
    libvirt_action,
    libvirt_reason,
    vanished,
)
from .ownership import (
    DUPLICATED,
    SEPARATOR,
    UNOWNED,
    Intruder,
    disk_claim,
    is_vm_volume,
    object_name,
    ownership_problem,
)
from .shell import HostShell
from .xml import (
    DomainState,
    NetworkState,
    VolumeState,
    read_domain,
    read_network,
    read_volume,
)

DEFAULT_URI = "qemu:///system"
_connections: dict[str, object] = {}
SSH_TRANSPORTS = ("ssh", "libssh", "libssh2")
# libvirt's URI parameters of the SSH transports (the rest, e.g. socket, name the daemon).
SSH_PARAMETERS = frozenset(
    {"command", "keyfile", "known_hosts", "known_hosts_verify", "netcat", "no_tty",
     "no_verify", "sshauth", "proxy"}
)  # fmt: skip

DOMAIN_STATES = {
    0: "nostate",
    1: "running",
    2: "blocked",
    3: "paused",
    4: "shutdown",
    5: "shutoff",
    6: "crashed",
    7: "pmsuspended",
}


def connect(uri: str = DEFAULT_URI) -> object:
    """Open (once per process) and return the libvirt connection for `uri`."""
    if libvirt is None:
        raise VceError(
            "The libvirt Python bindings are missing: install libvirt-python on the machine "
            "that runs the module (pip install libvirt-python)"
        )
    # libvirt prints every error to stderr by default; the engine reports them itself.
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    conn = _connections.get(uri)
    if conn is not None and answers(conn):
        return conn
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as error:
        message = f"Failed to connect to libvirt at {uri}: {libvirt_reason(error)}"
        if connection_failed(error, opening=True):
            raise HostUnreachable(message) from None
        raise VceError(message) from None
    _connections[uri] = conn
    return conn


def on_host_uri(uri: str) -> str | None:
    """The URI of the same daemon for a process running on the host itself (a backup unit's
    runner), when `uri` reaches it over SSH: without the transport (user, host and the ssh
    parameters, which name the controller's ssh and key). None for any other URI."""
    parts = urlsplit(uri)
    driver, _plus, transport = parts.scheme.partition("+")
    if transport not in SSH_TRANSPORTS:
        return None
    kept = [(k, v) for k, v in parse_qsl(parts.query) if k not in SSH_PARAMETERS]
    query = f"?{urlencode(kept, safe='/')}" if kept else ""
    return f"{driver}://{parts.path or '/'}{query}"


def answers(conn: object) -> bool:
    """Whether a kept connection still reaches its daemon. isAlive() stays true after the
    daemon restarted until a call fails (no event loop runs keepalives here), so a long-lived
    process (the control plane) asks the daemon: one cheap round trip per opened Host."""
    try:
        return bool(conn.isAlive()) and conn.getLibVersion() > 0
    except libvirt.libvirtError:
        return False


def local_domain_type() -> str:
    """'kvm' only with a real hardware module loaded; /dev/kvm alone can be a software shim."""
    for module in ("kvm_intel", "kvm_amd"):
        if os.path.isdir(f"/sys/module/{module}"):
            return "kvm"
    return "qemu"


# Run on a remote host through its host command: the same test as local_domain_type.
HARDWARE_PROBE = ("sh", "-c", "test -d /sys/module/kvm_intel || test -d /sys/module/kvm_amd")


def domain_type(conn: object, uri: str, is_local: bool, shell: HostShell | None = None) -> str:
    """The domain type to define: 'kvm' where the host has hardware virtualisation."""
    forced = os.environ.get("VCE_DOMAIN_TYPE")
    if forced in ("kvm", "qemu"):
        return forced
    if uri.startswith("test:"):
        return "test"
    if is_local:
        return local_domain_type()
    if shell is not None and shell.prefix:
        # libvirt's capabilities offer kvm wherever /dev/kvm exists, also a software shim
        # a guest cannot run under; the host's loaded modules tell.
        return "kvm" if shell.succeeds(HARDWARE_PROBE) else "qemu"
    caps = conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
    return "kvm" if "<domain>kvm</domain>" in caps else "qemu"


@dataclass
class TenantInventory:
    """The tenant's objects on one host, read in one pass.

    `domains`, `networks` and `volumes` hold only what is the tenant's; every other object
    named with the tenant's prefix is in `intruders`, so that no planner, meter or fact ever
    takes it for the tenant's.
    """

    tenant: str
    domains: dict[str, DomainState] = field(default_factory=dict)
    networks: dict[str, NetworkState] = field(default_factory=dict)
    volumes: dict[tuple[str, str], VolumeState] = field(default_factory=dict)
    pools: dict[str, str] = field(default_factory=dict)
    intruders: list[Intruder] = field(default_factory=list)
    # The domains among the intruders: never touched, but what they use is in use.
    foreign_domains: dict[str, DomainState] = field(default_factory=dict)

    def intruder(self, kind: str, libvirt_name: str) -> Intruder | None:
        return next(
            (i for i in self.intruders if i.kind == kind and i.libvirt_name == libvirt_name), None
        )

    def refuse_intruder(self, kind: str, libvirt_name: str) -> None:
        """Refuse a plan for the name `libvirt_name` when an object that is not the tenant's
        holds it."""
        found = self.intruder(kind, libvirt_name)
        if found is not None:
            raise found.refusal()

    def refuse_duplicated_disk(self, name: str) -> None:
        """Refuse a plan for disk `name` when more than one volume claims it: which of them
        the tenant's disk is cannot be told from libvirt."""
        for found in self.intruders:
            if (found.kind, found.problem, found.claimed) == ("disk", DUPLICATED, name):
                raise found.refusal()

    def separate_intruders(self) -> None:
        """Move what is named like the tenant's but is not theirs from the objects to
        `intruders`: domains and networks whose ownership metadata is missing, another
        tenant's, of another kind, or claims another name (a copy of a real object's tag is
        `duplicated`, the object it copies stays); volumes whose name the engine never makes.
        Volumes claiming one disk stay counted, and are `duplicated` for every plan."""
        for kind, objects in (("vm", self.domains), ("network", self.networks)):
            for libvirt_name, state in sorted(objects.items()):
                problem = ownership_problem(state.owner, self.tenant, kind, libvirt_name)
                if problem:
                    self.intruders.append(self.classify(kind, libvirt_name, state, problem))
            for intruder in self.intruders:
                if intruder.kind == kind and intruder.libvirt_name in objects:
                    state = objects.pop(intruder.libvirt_name)
                    if isinstance(state, DomainState):
                        self.foreign_domains[intruder.libvirt_name] = state
        claims: dict[str, list[tuple[str, str]]] = {}
        for key in sorted(self.volumes):
            claim = disk_claim(self.tenant, key[1])
            if claim:
                claims.setdefault(claim, []).append(key)
            elif not is_vm_volume(self.tenant, key[1]):
                del self.volumes[key]
                reason = f"volume {key[1]!r} in pool {key[0]!r} is not named as vce.kvm names disks"
                self.intruders.append(Intruder("disk", f"{key[0]}/{key[1]}", UNOWNED, reason))
        for claim, keys in claims.items():
            if len(keys) > 1:
                shown = ", ".join(f"{pool}/{name}" for pool, name in keys)
                reason = (
                    f"disk {claim!r} of tenant {self.tenant!r} is claimed by {len(keys)} "
                    f"volumes ({shown}): which one is the disk cannot be told"
                )
                for pool, name in keys:
                    self.intruders.append(
                        Intruder("disk", f"{pool}/{name}", DUPLICATED, reason, claim)
                    )

    def classify(
        self, kind: str, libvirt_name: str, state: DomainState | NetworkState, problem: str
    ) -> Intruder:
        """An intruder is `duplicated` when its metadata copies the tag of the tenant's real
        object (the one with the claimed name), `unowned` otherwise."""
        owner = state.owner
        claimed = owner.name if owner and (owner.tenant, owner.kind) == (self.tenant, kind) else ""
        objects: Mapping[str, DomainState | NetworkState] = (
            self.domains if kind == "vm" else self.networks
        )
        original = objects.get(object_name(self.tenant, claimed)) if claimed else None
        if original is not None and not ownership_problem(
            original.owner, self.tenant, kind, original.name
        ):
            return Intruder(kind, libvirt_name, DUPLICATED, problem, claimed)
        return Intruder(kind, libvirt_name, UNOWNED, problem, claimed)


@contextmanager
def skip_vanished() -> Iterator[None]:
    try:
        yield
    except Exception as error:
        if not vanished(error):
            raise


@dataclass(frozen=True)
class Selection:
    """Which of a tenant's objects an inventory reads, by their names within the tenant
    (None: every one): domains and networks by name, volumes by stem (`web.boot`, `data`)."""

    domains: frozenset[str] | None = None
    networks: frozenset[str] | None = None
    volumes: frozenset[str] | None = None


class Host:
    """A KVM host reached through one libvirt URI."""

    def __init__(self, uri: str = DEFAULT_URI, shell: HostShell | None = None) -> None:
        self.uri = uri
        self.shell = shell  # the host command path, when the run has one
        self.conn = connect(uri)
        self._domain_type: str | None = None
        # Host-side paths can be checked from here only when the daemon runs on this machine.
        self.is_local = "+" not in uri.split(":", 1)[0] and uri.split("://", 1)[-1][:1] in "/?"
        # libvirt's test driver keeps no separate persistent network definition.
        self.network_config_flag = (
            0 if uri.startswith("test:") else libvirt.VIR_NETWORK_XML_INACTIVE
        )
        self.log_dir = os.environ.get("VCE_CONSOLE_LOG_DIR", "/var/log/libvirt/qemu")

    @property
    def domain_type(self) -> str:
        if self._domain_type is None:
            self._domain_type = domain_type(self.conn, self.uri, self.is_local, self.shell)
        return self._domain_type

    def inventory(self, tenant: str, selection: Selection | None = None) -> TenantInventory:
        """The tenant's objects; with `selection`, only those it names (one object's facts
        need not read every domain, network and volume of the tenant)."""
        return self.read_inventories(tenant, selection)[tenant]

    def inventories(self) -> dict[str, TenantInventory]:
        """Every tenant's objects on the host, read in one pass (reconciliation, probes)."""
        return self.read_inventories(None)

    def read_inventories(
        self, only: str | None, selection: Selection | None = None
    ) -> dict[str, TenantInventory]:
        """The objects of tenant `only` (None: of every tenant), by tenant; with `selection`,
        only the objects it names are read (the others are not even described by libvirt).

        Objects may vanish between the listing and their read when another run works on the
        same host: such an object is not the tenant's any more (or not yet), so it is skipped.
        """
        found = {only: TenantInventory(only)} if only is not None else {}
        chosen = selection or Selection()

        def inventory_of(
            name: str, wanted: frozenset[str] | None, volume: bool = False
        ) -> TenantInventory | None:
            tenant, separator, rest = name.partition(SEPARATOR)
            if not separator or not tenant or (only is not None and tenant != only):
                return None
            # A volume is selected by its stem: `web.boot` of `acme_web.boot.qcow2`.
            key = (rest.rpartition(".")[0] or rest) if volume else rest
            if wanted is not None and key not in wanted:
                return None
            return found.setdefault(tenant, TenantInventory(tenant))

        with libvirt_action("list", f"domains on {self.uri}"):
            for dom in self.conn.listAllDomains(0):
                inventory = inventory_of(dom.name(), chosen.domains)
                if inventory is not None:
                    with skip_vanished():
                        inventory.domains[dom.name()] = self.read_domain(dom)
        with libvirt_action("list", f"networks on {self.uri}"):
            for net in self.conn.listAllNetworks(0):
                inventory = inventory_of(net.name(), chosen.networks)
                if inventory is not None:
                    with skip_vanished():
                        inventory.networks[net.name()] = self.read_network(net)
        pools: dict[str, str] = {}
        with libvirt_action("list", f"storage pools on {self.uri}"):
            for pool in self.conn.listAllStoragePools(0):
                pools[pool.name()] = self.pool_path(pool)
                if not pool.isActive():
                    continue
                for vol in pool.listAllVolumes(0):
                    inventory = inventory_of(vol.name(), chosen.volumes, volume=True)
                    if inventory is not None:
                        with skip_vanished():
                            key = (pool.name(), vol.name())
                            inventory.volumes[key] = read_volume(pool.name(), vol.XMLDesc(0))
        for inventory in found.values():
            inventory.pools = dict(pools)
            inventory.separate_intruders()
        return found

    def read_domain(self, dom: object) -> DomainState:
        name = dom.name()
        with libvirt_action("read", f"domain {name}"):
            state_code = dom.state()[0]
            state = DOMAIN_STATES.get(state_code, "unknown")
            config = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            result = read_domain(config, state, bool(dom.autostart()))
            if dom.isActive():
                live = read_domain(dom.XMLDesc(0), state, result.autostart)
                result.live_vcpus = live.vcpus
                result.live_max_vcpus = live.max_vcpus
                result.live_max_memory_mib = live.max_memory_mib
        return result

    def network(self, libvirt_name: str) -> NetworkState | None:
        """One network read alone, without listing the host; None when there is none."""
        with libvirt_action("read", f"network {libvirt_name}"), skip_vanished():
            return self.read_network(self.conn.networkLookupByName(libvirt_name))
        return None

    def read_network(self, net: object) -> NetworkState:
        with libvirt_action("read", f"network {net.name()}"):
            active = bool(net.isActive())
            config = net.XMLDesc(self.network_config_flag)
            state = read_network(config, active, bool(net.autostart()))
            if active:
                # A lease removed from the running dnsmasq only is still a missing lease.
                live = read_network(net.XMLDesc(0), active, state.autostart)
                state.hosts = {m: h for m, h in state.hosts.items() if live.hosts.get(m) == h}
            return state

    def pool_path(self, pool: object) -> str:
        return ET.fromstring(pool.XMLDesc(0)).findtext("target/path", "")

    def lookup_pool(self, name: str) -> object:
        with libvirt_action("find", f"storage pool {name}"):
            return self.conn.storagePoolLookupByName(name)
