"""A lab of several KVM hosts on one machine: network namespaces, each with its own libvirtd.

Tests of cross-host features (zones, public addresses, cross-zone links) need more than one
libvirt host, and this machine is only one. Each lab host here is a named network namespace
``<prefix>-<host>`` running a ``PrivateLibvirtd`` inside it, so its bridges, dnsmasq, taps,
guests and libvirt's firewall rules are its own. Two more namespaces stand for the wires
between the hosts:

* ``<prefix>-ul``, the underlay: bridge ``ul0``; every host has ``ul0`` (MTU ``underlay_mtu``,
  roomy enough for VXLAN) with 172.31.250.(10+i)/24.
* ``<prefix>-inet``, the internet: bridge ``inet0`` with 203.0.113.1/24, the zones' gateway;
  every host has an uplink ``up0`` with one address of its own, 203.0.113.(2+i)/32, and a
  default route through the gateway, like a real KVM host's public side. A zone's public
  pool (zone i: 203.0.113.(64+32i)/27) is on-link on inet0 without any route, so it is the
  engine's job to make a host answer ARP for the pool addresses it uses.

Every veth is created directly in its two namespaces (never in the host's), so deleting the
namespaces removes every link, and names such as ``ul0`` repeat harmlessly across hosts.

Each host also gets /etc/netns/<netns>/{hosts,resolv.conf}, which ``ip netns exec`` mounts
over /etc for everything run there, libvirtd included: the hosts resolve each other's names
to underlay addresses, and DNS fails at once instead of timing out. Without that, the
machine's resolver is reached through the default route, i.e. into the internet namespace,
where queries vanish: libvirt's getHostname() took 5 s (glibc's timeout) per call.

CLI (state is kept in DIR/lab.json, so ``down`` works from another process)::

    python -m tools.multihost up DIR [--host NAME:ZONE ...] [--prefix P]   # prints JSON
    python -m tools.multihost down DIR
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import libvirt

from tools.labhost import ensure_pool
from tools.libvirtd import (
    STOP_TIMEOUT,
    PrivateLibvirtd,
    _pid_alive,
    _quiet_libvirt,
    _signal_all,
    _wait_until,
)

ETC_NETNS = Path("/etc/netns")
DEFAULT_HOSTS: tuple[tuple[str, str], ...] = (("kvm-a", "zone-a"), ("kvm-b", "zone-b"))
STATE_FILE = "lab.json"
POOL_NAME = "default"
COMMAND_TIMEOUT = 60.0

UNDERLAY_DEV = "ul0"
UNDERLAY_BRIDGE = "ul0"
UNDERLAY_NET = "172.31.250"
UNDERLAY_FIRST_HOST = 10

UPLINK_DEV = "up0"
INET_BRIDGE = "inet0"
INET_GATEWAY = "203.0.113.1"
INET_PREFIXLEN = 24
HOST_PUBLIC_FIRST = 2
ZONE_POOL_FIRST = 64
ZONE_POOL_SIZE = 32
ZONE_POOL_PREFIXLEN = 27

# Host public addresses (.2 up) must stay below the first pool (.64); pools fill .64-.255.
MAX_HOSTS = ZONE_POOL_FIRST - HOST_PUBLIC_FIRST
MAX_ZONES = (256 - ZONE_POOL_FIRST) // ZONE_POOL_SIZE

# Short, so that "<prefix>-<host>" stays readable and a test may put the prefix into
# interface names of its own (15 characters at most) to find them again.
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,7}$")
HOST_RE = re.compile(r"^[a-z][a-z0-9-]{0,15}$")


def _run(argv: list[str]) -> str:
    """Run a short command; return its stdout, raise with its stderr when it fails."""
    proc = subprocess.run(
        argv, capture_output=True, text=True, check=False, timeout=COMMAND_TIMEOUT
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _ip(netns: str, *args: str) -> None:
    """Run ``ip -n netns args...``."""
    _run(["ip", "-n", netns, *args])


def list_netns() -> list[str]:
    """Names of the named network namespaces (``ip netns list`` appends '(id: N)' to some)."""
    return [line.split()[0] for line in _run(["ip", "netns", "list"]).splitlines() if line]


def netns_pids(netns: str) -> list[int]:
    """Processes in a named network namespace; empty when it does not exist."""
    proc = subprocess.run(
        ["ip", "netns", "pids", netns],
        capture_output=True,
        text=True,
        check=False,
        timeout=COMMAND_TIMEOUT,
    )
    return [int(word) for word in proc.stdout.split() if word.isdigit()]


def _kill(pids: Sequence[int]) -> None:
    """SIGTERM, then SIGKILL what is left; each wait bounded by STOP_TIMEOUT."""
    _signal_all(pids, signal.SIGTERM)
    if not _wait_until(lambda: not any(_pid_alive(p) for p in pids), STOP_TIMEOUT):
        _signal_all([p for p in pids if _pid_alive(p)], signal.SIGKILL)
        _wait_until(lambda: not any(_pid_alive(p) for p in pids), STOP_TIMEOUT)


def _read_state(base_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((base_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def cleanup_leftovers(prefix: str, base_dir: Path | None = None) -> list[str]:
    """Remove what a lab with this prefix left behind, e.g. after a crashed run.

    Kills every process in the namespaces ``<prefix>-*`` (libvirtd, virtlogd, dnsmasq, QEMU),
    deletes those namespaces (which deletes their links), and with base_dir also the lab's
    directories there (as recorded in its lab.json). Pass the exact prefix of one lab: a
    shorter one would also hit labs of other test runs. Returns the namespaces deleted.
    """
    if not PREFIX_RE.match(prefix):
        raise ValueError(f"not a lab prefix: {prefix!r}")
    names = [name for name in list_netns() if name.startswith(f"{prefix}-")]
    own = os.getpid()
    _kill([pid for name in names for pid in netns_pids(name) if pid != own])
    for name in names:
        _run(["ip", "netns", "delete", name])
    # /etc/netns itself stays: it is iproute2's, and other labs may be using it right now.
    for etc in ETC_NETNS.glob(f"{prefix}-*"):
        shutil.rmtree(etc, ignore_errors=True)
    if base_dir is not None:
        state = _read_state(base_dir)
        if state is not None and state.get("prefix") == prefix:
            for host, _zone in state["hosts"]:
                shutil.rmtree(base_dir / host, ignore_errors=True)
            (base_dir / STATE_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: it holds the caller's own files
            base_dir.rmdir()
    return names


def run_captured(
    argv: Sequence[str], check: bool = False, timeout: float = COMMAND_TIMEOUT, **kw: Any
) -> subprocess.CompletedProcess[str]:
    """argv with its text output captured; not checked unless asked."""
    return subprocess.run(
        list(argv), capture_output=True, text=True, check=check, timeout=timeout, **kw
    )


@dataclass(frozen=True, kw_only=True)
class LabHost:
    """One lab KVM host: where its libvirtd answers and how to run commands on it."""

    name: str
    zone: str
    netns: str
    uri: str
    underlay_ip: str
    pool_dir: Path
    public_ip: str
    log_dir: Path
    underlay_dev: str = UNDERLAY_DEV
    uplink: str = UPLINK_DEV

    @property
    def command_prefix(self) -> list[str]:
        """Put in front of a command to run it on this host (in its network namespace)."""
        return ["ip", "netns", "exec", self.netns]

    def run(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run argv on this host; text output captured, not checked, 60 s timeout by default."""
        return run_captured([*self.command_prefix, *argv], **kw)

    def connect(self) -> libvirt.virConnect:
        """Open a read-write connection to this host's libvirtd."""
        return libvirt.open(self.uri)


class MultiHostLab:
    """Several lab KVM hosts joined by an underlay and an "internet"; a context manager.

    ``hosts`` and ``zones`` are known from construction on; ``start()`` makes them real and
    ``stop()`` removes everything again (idempotent, also after a failed or partial start,
    also from another process given the same base_dir and prefix: see ``from_state``).
    ``zones`` maps each zone to its public pool description: ``pool`` (CIDR), ``gateway``,
    ``uplink`` (the hosts' interface towards the gateway) and ``hosts`` (names).
    """

    def __init__(
        self,
        base_dir: Path,
        hosts: Sequence[tuple[str, str]] = DEFAULT_HOSTS,
        prefix: str | None = None,
        underlay_mtu: int = 1550,
    ) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.host_zones = tuple((name, zone) for name, zone in hosts)
        self.prefix: str = prefix or f"vm{secrets.token_hex(2)}"
        self.underlay_mtu = underlay_mtu
        self._validate()
        self.zones: dict[str, dict[str, Any]] = {}
        for zone in dict.fromkeys(zone for _name, zone in self.host_zones):
            first = ZONE_POOL_FIRST + ZONE_POOL_SIZE * len(self.zones)
            self.zones[zone] = {
                "pool": f"203.0.113.{first}/{ZONE_POOL_PREFIXLEN}",
                "gateway": INET_GATEWAY,
                "uplink": UPLINK_DEV,
                "hosts": [name for name, z in self.host_zones if z == zone],
            }
        self._daemons: dict[str, PrivateLibvirtd] = {}
        self.hosts: dict[str, LabHost] = {}
        for i, (name, zone) in enumerate(self.host_zones):
            netns = f"{self.prefix}-{name}"
            daemon = PrivateLibvirtd(self.base_dir / name, netns=netns, hostname=name)
            self._daemons[name] = daemon
            self.hosts[name] = LabHost(
                name=name,
                zone=zone,
                netns=netns,
                uri=daemon.uri,
                underlay_ip=f"{UNDERLAY_NET}.{UNDERLAY_FIRST_HOST + i}",
                pool_dir=self.base_dir / name / "pool",
                public_ip=f"203.0.113.{HOST_PUBLIC_FIRST + i}",
                log_dir=daemon.log_dir,
            )

    def _validate(self) -> None:
        if not PREFIX_RE.match(self.prefix):
            raise ValueError(f"prefix must match {PREFIX_RE.pattern}: {self.prefix!r}")
        names = [name for name, _zone in self.host_zones]
        if not names or len(names) > MAX_HOSTS or len(set(names)) != len(names):
            raise ValueError(f"need 1 to {MAX_HOSTS} distinct host names: {names}")
        for name in names:
            if not HOST_RE.match(name) or name in ("ul", "inet"):
                raise ValueError(f"host name must match {HOST_RE.pattern}, not ul/inet: {name}")
        if len({zone for _name, zone in self.host_zones}) > MAX_ZONES:
            raise ValueError(f"at most {MAX_ZONES} zones")
        if not 1280 <= self.underlay_mtu <= 9000:
            raise ValueError(f"underlay_mtu out of range: {self.underlay_mtu}")

    @classmethod
    def from_state(cls, base_dir: Path) -> MultiHostLab:
        """The lab recorded in base_dir/lab.json by an earlier ``start()``."""
        state = _read_state(Path(base_dir))
        if state is None:
            raise FileNotFoundError(f"no readable {STATE_FILE} in {base_dir}")
        hosts = [tuple(pair) for pair in state["hosts"]]
        return cls(base_dir, hosts, state["prefix"], state["underlay_mtu"])

    # ---- names

    @property
    def underlay_netns(self) -> str:
        return f"{self.prefix}-ul"

    @property
    def internet_netns(self) -> str:
        return f"{self.prefix}-inet"

    @property
    def netns_names(self) -> list[str]:
        return [self.underlay_netns, self.internet_netns, *(h.netns for h in self.hosts.values())]

    def inet_run(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run argv in the internet namespace, like ``LabHost.run``."""
        return run_captured(["ip", "netns", "exec", self.internet_netns, *argv], **kw)

    # ---- life cycle

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Create namespaces and links, start every host's libvirtd and pool.

        Call it once. Refuses (touching nothing) when namespaces of this prefix exist already:
        stop() would otherwise remove another lab's. Cleans up after itself when a later step fails.
        """
        taken = [name for name in list_netns() if name.startswith(f"{self.prefix}-")]
        if taken:
            raise RuntimeError(f"namespaces of prefix {self.prefix} exist already: {taken}")
        try:
            self.base_dir.mkdir(parents=True, exist_ok=True)
            self._write_state()
            self._make_wires()
            for host in self.hosts.values():
                self._make_host(host)
            for host in self.hosts.values():
                self._start_libvirt(host)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the daemons, delete the namespaces and the lab's directories. Idempotent."""
        for daemon in self._daemons.values():
            daemon.stop()  # gracefully first; it also keeps the QEMU capabilities it probed
        cleanup_leftovers(self.prefix, self.base_dir)

    def restart_libvirtd(self, name: str) -> None:
        """Restart host `name`'s libvirtd alone (its guests and dnsmasq keep running), as an
        upgrade or ``systemctl restart libvirtd`` does; libvirt rewrites its own firewall rules."""
        self._daemons[name].restart_libvirtd()

    # ---- internals

    def _write_state(self) -> None:
        state = {
            "prefix": self.prefix,
            "hosts": [list(pair) for pair in self.host_zones],
            "underlay_mtu": self.underlay_mtu,
        }
        (self.base_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def _add_netns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        _ip(name, "link", "set", "lo", "up")

    def _make_wires(self) -> None:
        """The underlay and internet namespaces with their bridges."""
        ul, inet = self.underlay_netns, self.internet_netns
        self._add_netns(ul)
        # An MTU set by hand stays; otherwise a bridge follows its smallest port.
        _ip(ul, "link", "add", UNDERLAY_BRIDGE, "type", "bridge")
        _ip(ul, "link", "set", UNDERLAY_BRIDGE, "mtu", str(self.underlay_mtu), "up")
        self._add_netns(inet)
        _ip(inet, "link", "add", INET_BRIDGE, "type", "bridge")
        _ip(inet, "addr", "add", f"{INET_GATEWAY}/{INET_PREFIXLEN}", "dev", INET_BRIDGE)
        _ip(inet, "link", "set", INET_BRIDGE, "up")

    def _veth(self, host: LabHost, dev: str, other_ns: str, bridge: str, mtu: int) -> None:
        """A veth from dev in host's namespace to a port of bridge in other_ns.

        Ports are named after the host's index, not the prefix: they live in the lab's own
        namespaces, where no other lab's names can clash.
        """
        port = f"h{list(self.hosts).index(host.name)}"
        ends = (dev, "netns", host.netns, "mtu", str(mtu), "type", "veth", "peer", "name", port)
        _run(["ip", "link", "add", *ends, "netns", other_ns, "mtu", str(mtu)])
        _ip(other_ns, "link", "set", port, "master", bridge, "up")
        _ip(host.netns, "link", "set", dev, "up")

    def _write_etc(self, host: LabHost) -> None:
        """Name resolution of one host, for everything ``ip netns exec`` runs there."""
        etc = ETC_NETNS / host.netns
        etc.mkdir(parents=True, exist_ok=True)
        names = "".join(f"{h.underlay_ip}\t{h.name}\n" for h in self.hosts.values())
        (etc / "hosts").write_text(f"127.0.0.1\tlocalhost\n::1\tlocalhost\n{names}")
        # Loopback refuses at once; the lab has no DNS server.
        (etc / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")

    def _make_host(self, host: LabHost) -> None:
        """The host's namespace, forwarding on (it routes for its guests), both links."""
        ns = host.netns
        self._write_etc(host)
        self._add_netns(ns)
        _run([*host.command_prefix, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self._veth(host, host.underlay_dev, self.underlay_netns, UNDERLAY_BRIDGE, self.underlay_mtu)
        _ip(ns, "addr", "add", f"{host.underlay_ip}/24", "dev", host.underlay_dev)
        self._veth(host, host.uplink, self.internet_netns, INET_BRIDGE, 1500)
        _ip(ns, "addr", "add", f"{host.public_ip}/32", "dev", host.uplink)
        _ip(ns, "route", "add", "default", "via", INET_GATEWAY, "dev", host.uplink, "onlink")

    def _start_libvirt(self, host: LabHost) -> None:
        self._daemons[host.name].start()
        with _quiet_libvirt():  # ensure_pool's look-up fails, by design, on a new host
            conn = host.connect()
            try:
                ensure_pool(conn, POOL_NAME, host.pool_dir)
            finally:
                conn.close()

    def describe(self) -> dict[str, Any]:
        """Everything a user of the lab needs, as JSON-ready data (what the CLI prints)."""
        return {
            "prefix": self.prefix,
            "base_dir": str(self.base_dir),
            "internet_netns": self.internet_netns,
            "underlay_netns": self.underlay_netns,
            "zones": self.zones,
            "hosts": {
                name: {
                    "zone": h.zone,
                    "netns": h.netns,
                    "uri": h.uri,
                    "underlay_ip": h.underlay_ip,
                    "public_ip": h.public_ip,
                    "pool_dir": str(h.pool_dir),
                }
                for name, h in self.hosts.items()
            },
        }


def _host_zone(text: str) -> tuple[str, str]:
    name, sep, zone = text.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME:ZONE, got {text!r}")
    return name, zone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.multihost",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a lab in DIR and print its description as JSON")
    up.add_argument("dir", type=Path)
    up.add_argument("--host", dest="hosts", type=_host_zone, action="append")
    up.add_argument("--prefix")
    down = sub.add_parser("down", help="stop the lab recorded in DIR and remove its files")
    down.add_argument("dir", type=Path)
    args = parser.parse_args(argv)

    if args.command == "up":
        lab = MultiHostLab(args.dir, args.hosts or DEFAULT_HOSTS, args.prefix).start()
        print(json.dumps(lab.describe(), indent=2))
    else:
        MultiHostLab.from_state(args.dir).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
