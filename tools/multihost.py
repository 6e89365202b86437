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

Hosts are reached the way a provider reaches its KVM hosts: over SSH. Every host runs a real
``sshd`` (Debian's openssh-server) in its namespace with a host key of its own, listening only
on its management address: a veth ``mg0`` with 172.30.K.(10+i)/24, whose other end is a port
of the bridge ``<prefix>-mg`` in this machine's namespace (172.30.K.1, the controller). K is
the first /24 of 172.30.0.0/16 no interface of this machine uses, chosen under a lock, so
labs of concurrent test runs never share one. The controller's key, a ``known_hosts`` pinning
every host key (by address and name), an ``ssh_config`` (``StrictHostKeyChecking yes``, never
``no``) and an ``ssh`` command that uses that config are in ``<base_dir>/ssh``:
``LabHost.ssh_command`` runs host commands through it, ``LabHost.ssh_uri`` is the host's
``qemu+ssh://`` URI (libvirt runs that ``ssh`` through the URI's ``command`` parameter).
sshd refuses keys under a group- or world-writable directory (StrictModes), so a lab's
base_dir must not be under /tmp: tests use /var/lib/vce-kvm/labs.

Each host also gets /etc/netns/<netns>/{hosts,resolv.conf}, which ``ip netns exec`` mounts
over /etc for everything run there, libvirtd included: the hosts resolve each other's names
to underlay addresses, and DNS fails at once instead of timing out. Without that, the
machine's resolver is reached through the default route, i.e. into the internet namespace,
where queries vanish: libvirt's getHostname() took 5 s (glibc's timeout) per call.

CLI (state is kept in DIR/lab.json, so ``down`` works from another process)::

    python -m tools.multihost up DIR [--host NAME:ZONE ...] [--prefix P]   # prints JSON
    python -m tools.multihost up DIR --hosts N [--inventory FILE]   # a fleet of N hosts
    python -m tools.multihost down DIR

``--hosts N`` (1 to FLEET_MAX) spreads N hosts over the zones zone-a and zone-b in turn
(``fleet_hosts``); ``--inventory FILE`` also writes an Ansible inventory of the lab's hosts
(``MultiHostLab.write_inventory``), whose group ``kvm_hosts`` playbooks/tenant.yml and
``vce drift`` run over.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import libvirt
import yaml

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
FLEET_ZONES = ("zone-a", "zone-b")
FLEET_MAX = 8
STATE_FILE = "lab.json"
POOL_NAME = "default"
COMMAND_TIMEOUT = 60.0

UNDERLAY_DEV = "ul0"
UNDERLAY_BRIDGE = "ul0"
UNDERLAY_NET = "172.31.250"
UNDERLAY_FIRST_HOST = 10

MGMT_DEV = "mg0"
MGMT_NET = "172.30"  # /16: a lab takes the first free 172.30.K.0/24 of this machine
MGMT_CONTROLLER = 1
MGMT_FIRST_HOST = 10
MGMT_LOCK = Path("/run/vce-kvm-lab.lock")
SSH_DIR = "ssh"
SSHD = "/usr/sbin/sshd"
SSH_START_SECONDS = 10.0
# A lab's base_dir for tests: sshd's StrictModes refuses keys below /tmp (world-writable).
LABS_ROOT = Path("/var/lib/vce-kvm/labs")

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
    # The management ports are in this machine's namespace. Deleted here, they go at once
    # with their peers; left to the namespaces' deletion, the kernel removes them later.
    for port in mgmt_ports(prefix):
        _run(["ip", "link", "delete", port])
    for name in names:
        _run(["ip", "netns", "delete", name])
    # The management bridge is in this machine's namespace; its ports went with the hosts'.
    if (Path("/sys/class/net") / mgmt_bridge(prefix)).exists():
        _run(["ip", "link", "delete", mgmt_bridge(prefix)])
    # /etc/netns itself stays: it is iproute2's, and other labs may be using it right now.
    for etc in ETC_NETNS.glob(f"{prefix}-*"):
        shutil.rmtree(etc, ignore_errors=True)
    if base_dir is not None:
        state = _read_state(base_dir)
        if state is not None and state.get("prefix") == prefix:
            for host, _zone in state["hosts"]:
                shutil.rmtree(base_dir / host, ignore_errors=True)
            shutil.rmtree(base_dir / SSH_DIR, ignore_errors=True)
            (base_dir / STATE_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: it holds the caller's own files
            base_dir.rmdir()
    return names


def mgmt_bridge(prefix: str) -> str:
    return f"{prefix}-mg"


def mgmt_port(prefix: str, index: int) -> str:
    """The management bridge's port towards the host of that index."""
    return f"{prefix}m{index}"


def mgmt_ports(prefix: str) -> list[str]:
    """The management ports of the lab with this prefix that exist on this machine."""
    pattern = re.compile(rf"^{re.escape(prefix)}m\d+$")
    return sorted(p.name for p in Path("/sys/class/net").iterdir() if pattern.match(p.name))


def free_mgmt_subnet() -> int:
    """K of the first 172.30.K.0/24 no interface of this machine has an address in."""
    used = set()
    for line in _run(["ip", "-4", "-o", "addr", "show"]).splitlines():
        address = line.split()[3]
        if address.startswith(f"{MGMT_NET}."):
            used.add(int(address.split(".")[2]))
    for k in range(256):
        if k not in used:
            return k
    raise RuntimeError(f"no free /24 left in {MGMT_NET}.0.0/16 for a lab's management network")


def new_lab_dir(prefix: str = "vce-mh-") -> Path:
    """A fresh base_dir for a test's lab, where sshd accepts its keys (not below /tmp)."""
    LABS_ROOT.mkdir(parents=True, exist_ok=True, mode=0o755)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=LABS_ROOT))


def tcp_answers(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((address, port)) == 0


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
    socket_path: Path
    ssh_dir: Path  # the lab's: the controller's key, known_hosts, ssh_config, `ssh`
    mgmt_ip: str = ""  # known once the lab has started
    underlay_dev: str = UNDERLAY_DEV
    uplink: str = UPLINK_DEV

    @property
    def command_prefix(self) -> list[str]:
        """Put in front of a command to run it on this host without SSH (in its network
        namespace): for what a test does as the host's own administrator at its console."""
        return ["ip", "netns", "exec", self.netns]

    @property
    def ssh_command(self) -> list[str]:
        """Put in front of a command to run it on this host over SSH, as a controller does."""
        return [str(self.ssh_dir / "ssh"), f"root@{self.mgmt_ip}"]

    @property
    def ssh_uri(self) -> str:
        """The host's libvirt over SSH: its daemon's socket, through the lab's `ssh` (which
        pins the host keys and holds the controller's key)."""
        command = self.ssh_dir / "ssh"
        return f"qemu+ssh://root@{self.mgmt_ip}/system?socket={self.socket_path}&command={command}"

    @property
    def sshd_dir(self) -> Path:
        return self.pool_dir.parent / SSH_DIR

    def ansible_vars(self, python: str) -> dict[str, Any]:
        """How an inventory reaches this host: Ansible over SSH (modules run on the host with
        `python`), the engine through the host's qemu+ssh URI and host commands through ssh,
        from wherever the module runs (the controller for `vce drift`, a peer for a link)."""
        return {
            "ansible_connection": "ssh",
            "ansible_host": self.mgmt_ip,
            "ansible_user": "root",
            "ansible_ssh_common_args": f"-F {self.ssh_dir / 'ssh_config'}",
            "ansible_python_interpreter": python,
            # Each module in one SSH session, its code on stdin: no files copied to the host
            # first (three more sessions per task; the lab's sshd has no sftp).
            "ansible_pipelining": True,
            "vce_uri": self.ssh_uri,
            "vce_host_command": self.ssh_command,
            "vce_zone": self.zone,
            "vce_underlay_ip": self.underlay_ip,
            "vce_underlay_dev": self.underlay_dev,
        }

    def ssh(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Run argv on this host over SSH (quoted for the remote shell); like ``run``."""
        return run_captured([*self.ssh_command, shlex.join(argv)], **kw)

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
                socket_path=daemon.socket_path,
                ssh_dir=self.ssh_dir,
            )
        self.mgmt_subnet: int | None = None

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
        lab = cls(base_dir, hosts, state["prefix"], state["underlay_mtu"])
        if state.get("mgmt_subnet") is not None:
            lab.address_hosts(state["mgmt_subnet"])
        return lab

    # ---- names

    @property
    def ssh_dir(self) -> Path:
        return self.base_dir / SSH_DIR

    @property
    def mgmt_bridge(self) -> str:
        return mgmt_bridge(self.prefix)

    @property
    def controller_ip(self) -> str:
        return f"{MGMT_NET}.{self.mgmt_subnet}.{MGMT_CONTROLLER}"

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
            self._make_mgmt()
            self._write_state()
            self._make_controller_ssh()
            for host in self.hosts.values():
                self.start_sshd(host.name)
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

    def start_sshd(self, name: str) -> None:
        """Start host `name`'s sshd (again, after ``kill_sshd``) and wait until it answers."""
        host = self.hosts[name]
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation
        subprocess.run(
            [*host.command_prefix, SSHD, "-f", str(host.sshd_dir / "sshd_config"),
             "-E", str(host.sshd_dir / "sshd.log")],
            check=True, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
        )  # fmt: skip
        if not _wait_until(lambda: tcp_answers(host.mgmt_ip, 22), SSH_START_SECONDS):
            raise RuntimeError(f"sshd of {name} does not answer on {host.mgmt_ip}:22")

    def kill_sshd(self, name: str) -> None:
        """SIGKILL every sshd of host `name`, its listener and its sessions (and so the
        commands and libvirt connections running through them): the host is lost to its
        controllers while its daemons and guests run on."""
        host = self.hosts[name]
        pids = [pid for pid in netns_pids(host.netns) if _process_name(pid) == "sshd"]
        _signal_all(pids, signal.SIGKILL)
        _wait_until(lambda: not any(_pid_alive(p) for p in pids), STOP_TIMEOUT)

    def authorize(self, public_key_line: str) -> None:
        """Let one more key log in to every host as root (appended to each host's
        authorized_keys), as an operator gives a second controller, e.g. the control plane,
        a key of its own instead of sharing the controller's."""
        line = public_key_line.strip()
        if not line or "\n" in line:
            raise ValueError("expected one public key line")
        for host in self.hosts.values():
            with (host.sshd_dir / "authorized_keys").open("a") as keys:
                keys.write(f"{line}\n")

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
            "mgmt_subnet": self.mgmt_subnet,
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

    def address_hosts(self, subnet: int) -> None:
        self.mgmt_subnet = subnet
        for i, (name, host) in enumerate(list(self.hosts.items())):
            self.hosts[name] = replace(host, mgmt_ip=f"{MGMT_NET}.{subnet}.{MGMT_FIRST_HOST + i}")

    def _make_mgmt(self) -> None:
        """The management network: a bridge here (the controller's side) and a port of it
        in every host. The subnet is chosen and taken under a lock, so two labs starting at
        once take two."""
        MGMT_LOCK.parent.mkdir(parents=True, exist_ok=True)
        with MGMT_LOCK.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self.address_hosts(free_mgmt_subnet())
            _run(["ip", "link", "add", self.mgmt_bridge, "type", "bridge"])
            _run(["ip", "addr", "add", f"{self.controller_ip}/24", "dev", self.mgmt_bridge])
        _run(["ip", "link", "set", self.mgmt_bridge, "up"])
        for i, host in enumerate(self.hosts.values()):
            port = mgmt_port(self.prefix, i)
            _run(["ip", "link", "add", MGMT_DEV, "netns", host.netns, "type", "veth",
                  "peer", "name", port])  # fmt: skip
            _run(["ip", "link", "set", port, "master", self.mgmt_bridge, "up"])
            _ip(host.netns, "addr", "add", f"{host.mgmt_ip}/24", "dev", MGMT_DEV)
            _ip(host.netns, "link", "set", MGMT_DEV, "up")

    def _make_controller_ssh(self) -> None:
        """The controller's key, every host's key, sshd's files, and the pinned known_hosts."""
        self.ssh_dir.mkdir(mode=0o700, exist_ok=True)
        keygen(self.ssh_dir / "id_ed25519", f"controller@{self.prefix}")
        controller_key = (self.ssh_dir / "id_ed25519.pub").read_text()
        known = []
        for host in self.hosts.values():
            host.sshd_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            keygen(host.sshd_dir / "ssh_host_ed25519_key", f"root@{host.name}")
            public = (host.sshd_dir / "ssh_host_ed25519_key.pub").read_text().split()
            known.append(f"{host.mgmt_ip},{host.name} {public[0]} {public[1]}\n")
            write_private(host.sshd_dir / "authorized_keys", controller_key)
            write_private(host.sshd_dir / "sshd_config", sshd_config(host))
        write_private(self.ssh_dir / "known_hosts", "".join(known))
        write_private(self.ssh_dir / "ssh_config", ssh_config(self.ssh_dir))
        wrapper = self.ssh_dir / "ssh"
        wrapper.write_text(
            "#!/bin/sh\n# ssh with the lab's config: its key, its pinned host keys.\n"
            f'exec /usr/bin/ssh -F {shlex.quote(str(self.ssh_dir / "ssh_config"))} "$@"\n'
        )
        wrapper.chmod(0o700)

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
            "ssh_dir": str(self.ssh_dir),
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
                    "mgmt_ip": h.mgmt_ip,
                    "ssh_uri": h.ssh_uri,
                    "ssh_command": h.ssh_command,
                }
                for name, h in self.hosts.items()
            },
        }

    def inventory(self, python: str) -> dict[str, Any]:
        """An Ansible inventory of the lab's hosts as data: group ``kvm_hosts`` (what
        playbooks/tenant.yml and ``vce drift`` run over), each host reached over SSH
        (``LabHost.ansible_vars``) with its storage pool and backup directories of its own,
        and every zone's public pool in ``vce_zones``. Tenants are the user's to add."""
        hosts = {}
        for host in self.hosts.values():
            backups = host.pool_dir.parent / "backup"
            hosts[host.name] = {
                **host.ansible_vars(python),
                "vce_pool": POOL_NAME,
                "vce_backup_root": str(backups / "archive"),
                "vce_backup_unit_dir": str(backups / "units"),
                "vce_backup_config_dir": str(backups / "config"),
            }
        zones = {
            zone: {
                "uplink": pool["uplink"],
                "public_pools": [
                    {"name": f"pub-{zone}", "cidr": pool["pool"], "gateway": pool["gateway"]}
                ],
            }
            for zone, pool in self.zones.items()
        }
        return {"all": {"vars": {"vce_zones": zones}, "children": {"kvm_hosts": {"hosts": hosts}}}}

    def write_inventory(self, path: Path, python: str) -> Path:
        """Write ``inventory(python)`` as YAML to `path` (modules run there with `python`).
        Ansible also reads group_vars/ and host_vars/ beside it: put tenants there."""
        path = Path(path)
        path.write_text(yaml.safe_dump(self.inventory(python), sort_keys=False))
        return path


def keygen(path: Path, comment: str) -> None:
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])


def write_private(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


def sshd_config(host: LabHost) -> str:
    """sshd as on a production KVM host: keys only, root by key only, the management
    address only (not the underlay, not the uplink, not a tenant's network)."""
    d = host.sshd_dir
    return (
        f"ListenAddress {host.mgmt_ip}:22\n"
        f"HostKey {d / 'ssh_host_ed25519_key'}\n"
        f"PidFile {d / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\n"
        "PermitRootLogin prohibit-password\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes yes\n"
        "X11Forwarding no\n"
        "AllowTcpForwarding no\n"
        "MaxStartups 64:30:128\n"  # a fleet run opens many sessions at once
        "MaxSessions 64\n"
        # Bash sources ~/.bashrc for every command sshd runs (when SSH_CLIENT is set and
        # SHLVL < 2). This machine's root .bashrc initialises pyenv, 0.5 s a command; a KVM
        # host's root has none, so the lab's sessions skip it as a host's cost nothing.
        "SetEnv SHLVL=1\n"
    )


def ssh_config(ssh_dir: Path) -> str:
    """The controller's SSH settings for every lab host: its key only, host keys pinned."""
    return (
        "Host *\n"
        "  User root\n"
        f"  IdentityFile {ssh_dir / 'id_ed25519'}\n"
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {ssh_dir / 'known_hosts'}\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n"
        "  BatchMode yes\n"
        "  ConnectTimeout 5\n"
        "  ServerAliveInterval 5\n"
        "  ServerAliveCountMax 2\n"
        # One connection per host for every command and libvirt connection through it: a
        # new one costs a key exchange (0.3-0.5 s here), and a run makes a dozen.
        "  ControlMaster auto\n"
        # user@address, not %C (a 40-digit hash): ssh adds 17 characters while it binds the
        # socket, and a lab's path with %C passed a unix socket's 108 (bench/migration.py's).
        f"  ControlPath {ssh_dir / 'cm-%r@%h'}\n"
        "  ControlPersist 30\n"
    )


def _process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def fleet_hosts(count: int) -> list[tuple[str, str]]:
    """`count` hosts over FLEET_ZONES in turn: kvm-a1 (zone-a), kvm-b1 (zone-b), kvm-a2, ..."""
    if not 1 <= count <= FLEET_MAX:
        raise ValueError(f"a fleet has 1 to {FLEET_MAX} hosts, not {count}")
    hosts = []
    for i in range(count):
        zone = FLEET_ZONES[i % len(FLEET_ZONES)]
        hosts.append((f"kvm-{zone[-1]}{i // len(FLEET_ZONES) + 1}", zone))
    return hosts


def _fleet_size(text: str) -> int:
    try:
        count = int(text)
        fleet_hosts(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 1 to {FLEET_MAX} hosts, got {text!r}") from None
    return count


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
    chosen = up.add_mutually_exclusive_group()
    chosen.add_argument("--host", dest="host_zones", type=_host_zone, action="append")
    chosen.add_argument("--hosts", dest="count", type=_fleet_size, help="a fleet of N hosts")
    up.add_argument("--prefix")
    up.add_argument("--inventory", type=Path, help="also write an Ansible inventory here")
    down = sub.add_parser("down", help="stop the lab recorded in DIR and remove its files")
    down.add_argument("dir", type=Path)
    args = parser.parse_args(argv)

    if args.command == "up":
        hosts = fleet_hosts(args.count) if args.count else args.host_zones or DEFAULT_HOSTS
        lab = MultiHostLab(args.dir, hosts, args.prefix).start()
        if args.inventory:
            lab.write_inventory(args.inventory, sys.executable)
        print(json.dumps(lab.describe(), indent=2))
    else:
        MultiHostLab.from_state(args.dir).stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
