"""A hostile guest without a VM: a network namespace plugged into a tenant's bridge.

A namespace whose veth is a port of a libvirt bridge sends the same frames a guest with root
would, boots in milliseconds and needs no image, so the isolation tests and the benches use
one wherever a guest only has to send and receive packets::

    with plugged("lab-kvm-a", "virbr3", "10.1.0.200/24", "10.1.0.1", "atk-a") as attacker:
        assert not tcp_open(attacker, "172.31.250.10", 22)
        assert udp_dns(attacker, "10.1.0.1")
        results = probe_all(attacker, [Probe("tcp", "10.1.0.1", 80), Probe("ping", "10.2.0.1")])

Every probe is bounded (one attempt, a timeout in seconds); ``probe_all`` runs many at once
in one process inside the namespace (this file, run as a script there: it uses the standard
library only). ``listening`` starts TCP listeners on addresses of a namespace, so that a probe
that is not dropped finds an open port. Everything made here goes on exit, also on failure.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

COMMAND_TIMEOUT = 30.0
PORT_READY_TIMEOUT = 10.0
LISTEN_READY_TIMEOUT = 10.0
LISTEN_LIFETIME = 900  # seconds: a listener whose owner died goes by itself
POLL_INTERVAL = 0.05
MAX_PARALLEL = 32
VXLAN_PORT = 4789
DEVICE = "eth0"  # the attacker's side of the veth, inside its own namespace
DNS_NAME = "localhost"  # answered from the server's hosts file: nothing is forwarded
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"


# ---- running things in a namespace


def _in_netns(netns: str | None, argv: Sequence[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


def _run(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT, **kw: Any) -> str:
    """Run a short command; its stdout, or an error naming it with its stderr."""
    proc = subprocess.run(
        list(argv), capture_output=True, text=True, check=False, timeout=timeout, **kw
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _netns_exists(name: str) -> bool:
    listing = _run(["ip", "netns", "list"])
    return name in (line.split()[0] for line in listing.splitlines() if line)


def _kill_netns_processes(netns: str) -> None:
    """SIGKILL what runs in the namespace (probes, listeners), so that it can go."""
    proc = subprocess.run(
        ["ip", "netns", "pids", netns], capture_output=True, text=True, check=False, timeout=10
    )
    for word in proc.stdout.split():
        if word.isdigit() and int(word) != os.getpid():
            with suppress(ProcessLookupError):
                os.kill(int(word), signal.SIGKILL)


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


@dataclass(frozen=True)
class Attacker:
    """A namespace plugged into a tenant bridge; ``address`` is its IPv4 on that network."""

    netns: str
    address: str

    def run(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        """argv inside the attacker's namespace: output captured, not checked, bounded."""
        kw.setdefault("timeout", COMMAND_TIMEOUT)
        return subprocess.run(
            _in_netns(self.netns, argv), capture_output=True, text=True, check=False, **kw
        )

    @property
    def mac(self) -> str:
        return _run(_in_netns(self.netns, ["cat", f"/sys/class/net/{DEVICE}/address"])).strip()


def port_name(name: str) -> str:
    """The bridge port of attacker `name` in the host's namespace (at most 15 characters)."""
    return "vat" + hashlib.sha1(name.encode()).hexdigest()[:10]


def _link_exists(netns: str | None, link: str) -> bool:
    argv = _in_netns(netns, ["ip", "link", "show", "dev", link])
    return subprocess.run(argv, capture_output=True, check=False, timeout=10).returncode == 0


def _port_forwarding(host_netns: str | None, port: str) -> bool:
    """The bridge forwards on the port (with STP on, a new port starts in 'listening')."""
    shown = _run(_in_netns(host_netns, ["bridge", "-j", "link", "show", "dev", port]))
    return any(entry.get("state") == "forwarding" for entry in json.loads(shown or "[]"))


@contextmanager
def plugged(
    host_netns: str | None, bridge: str, cidr_address: str, gateway: str | None, name: str
) -> Iterator[Attacker]:
    """A namespace `name` whose veth is a port of `bridge` in `host_netns` (None: this
    machine's own namespace), with `cidr_address` ("10.1.0.200/24") and a default route via
    `gateway` when given. The namespace, its veth and whatever runs in it go on exit."""
    if _netns_exists(name):
        raise RuntimeError(f"network namespace {name} exists already: not ours to plug or remove")
    port = port_name(name)
    _run(["ip", "netns", "add", name])
    try:
        peer = ["peer", "name", port, *(("netns", host_netns) if host_netns else ())]
        _run(["ip", "link", "add", DEVICE, "netns", name, "type", "veth", *peer])
        _run(_in_netns(host_netns, ["ip", "link", "set", port, "master", bridge, "up"]))
        for argv in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "addr", "add", cidr_address, "dev", DEVICE],
            ["ip", "link", "set", DEVICE, "up"],
            *([["ip", "route", "add", "default", "via", gateway]] if gateway else []),
        ):
            _run(_in_netns(name, argv))
        if not _wait_until(lambda: _port_forwarding(host_netns, port), PORT_READY_TIMEOUT):
            raise RuntimeError(f"bridge {bridge} does not forward on port {port}")
        yield Attacker(name, cidr_address.split("/")[0])
    finally:
        _kill_netns_processes(name)
        # The veth goes with the namespace, its peer in the host namespace with it, but the
        # kernel destroys them after `ip netns delete` returns: wait, so the name is free.
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=COMMAND_TIMEOUT)
        _wait_until(lambda: not _link_exists(host_netns, port), PORT_READY_TIMEOUT)


# ---- probes


@dataclass(frozen=True)
class Probe:
    """One bounded attempt: ``tcp`` connect, ``dns`` (a query over UDP), ``ping`` (one ICMP
    echo), ``dhcp`` (a DISCOVER broadcast: is an OFFER made?). ``True`` means it answered."""

    kind: str
    ip: str = ""
    port: int = 0
    timeout: float = 1.0


def _tcp(probe: Probe) -> bool:
    try:
        with socket.create_connection((probe.ip, probe.port), timeout=probe.timeout):
            return True
    except OSError:
        return False


def dns_query(name: str, query_id: int) -> bytes:
    """A standard DNS query (recursion desired) for the A record of `name`."""
    header = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    labels = b"".join(
        bytes([len(label)]) + label.encode("ascii") for label in name.strip(".").split(".")
    )
    return header + labels + b"\x00" + struct.pack("!HH", 1, 1)


def _answered(sock: socket.socket, timeout: float, matches: Callable[[bytes, str], bool]) -> bool:
    """Whether a datagram that `matches` (payload, sender address) arrives within timeout."""
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            reply, sender = sock.recvfrom(4096)
            if matches(reply, sender[0]):
                return True
    except OSError:  # the timeout, or an ICMP error (port unreachable) on the socket
        return False
    return False


def _dns(probe: Probe) -> bool:
    """Any reply with our ID (an answer, NXDOMAIN, REFUSED): the server answered."""
    query_id = random.randrange(1 << 16)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(dns_query(DNS_NAME, query_id), (probe.ip, probe.port or 53))
        except OSError:
            return False
        return _answered(
            sock,
            probe.timeout,
            lambda reply, _sender: len(reply) >= 12 and reply[:2] == struct.pack("!H", query_id),
        )


def _icmp_checksum(data: bytes) -> int:
    padded = data + b"\x00" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(padded) // 2}H", padded))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def icmp_echo(ident: int, sequence: int, payload: bytes = b"vce-probe") -> bytes:
    """An ICMP echo request (type 8) with its checksum."""
    header = struct.pack("!BBHHH", 8, 0, 0, ident, sequence)
    checksum = _icmp_checksum(header + payload)
    return struct.pack("!BBHHH", 8, 0, checksum, ident, sequence) + payload


def _ping(probe: Probe) -> bool:
    """One echo request on a raw socket (no process per ping: hundreds run at once)."""
    ident = random.randrange(1 << 16)

    def is_reply(packet: bytes, sender: str) -> bool:
        icmp = packet[(packet[0] & 0x0F) * 4 :]
        return (
            sender == probe.ip and icmp[:1] == b"\x00" and icmp[4:8] == struct.pack("!HH", ident, 1)
        )

    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        try:
            sock.sendto(icmp_echo(ident, 1), (probe.ip, 0))
        except OSError:
            return False
        return _answered(sock, probe.timeout, is_reply)


def dhcp_discover(mac: str, xid: int) -> bytes:
    """A DHCPDISCOVER from `mac` asking for a broadcast reply (we hold no address yet)."""
    chaddr = bytes.fromhex(mac.replace(":", "")).ljust(16, b"\x00")
    fixed = struct.pack("!BBBBIHH4s4s4s4s16s", 1, 1, 6, 0, xid, 0, 0x8000, *[b"\0" * 4] * 4, chaddr)
    options = b"\x63\x82\x53\x63" + b"\x35\x01\x01" + b"\xff"
    return fixed + b"\x00" * 192 + options


def _dhcp(probe: Probe) -> bool:
    """True when an OFFER for our transaction arrives (sent to the broadcast or our MAC)."""
    mac = Path(f"/sys/class/net/{DEVICE}/address").read_text(encoding="ascii").strip()
    xid = random.randrange(1 << 32)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, DEVICE.encode())
        sock.bind(("", 68))
        try:
            sock.sendto(dhcp_discover(mac, xid), (probe.ip or "255.255.255.255", 67))
        except OSError:
            return False
        return _answered(
            sock,
            probe.timeout,
            lambda reply, _sender: (
                len(reply) > 240 and reply[0] == 2 and reply[4:8] == struct.pack("!I", xid)
            ),
        )


PROBES = {"tcp": _tcp, "dns": _dns, "ping": _ping, "dhcp": _dhcp}


def _probe_here(probes: list[Probe]) -> list[bool]:
    """Run probes in this process's namespace, at most MAX_PARALLEL at a time."""
    port_68 = threading.Lock()  # DHCP probes bind the client port: one at a time

    def run(probe: Probe) -> bool:
        if probe.kind != "dhcp":
            return PROBES[probe.kind](probe)
        with port_68:
            return _dhcp(probe)

    with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, max(1, len(probes)))) as pool:
        return list(pool.map(run, probes))


def probe_all(attacker: Attacker, probes: Sequence[Probe]) -> list[bool]:
    """Every probe from inside the attacker's namespace, concurrently; one answer per probe."""
    unknown = sorted({p.kind for p in probes} - set(PROBES))
    if unknown:
        raise ValueError(f"unknown probe kinds: {unknown}")
    if not probes:
        return []
    rounds = -(-len(probes) // MAX_PARALLEL) + sum(p.kind == "dhcp" for p in probes)
    bound = max(p.timeout for p in probes) * rounds + COMMAND_TIMEOUT
    request = json.dumps([asdict(p) for p in probes])
    argv = [sys.executable, os.path.abspath(__file__), "probe"]
    proc = attacker.run(argv, input=request, timeout=bound)
    if proc.returncode != 0:
        raise RuntimeError(f"probes in {attacker.netns} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout)


def tcp_open(attacker: Attacker, ip: str, port: int, timeout: float = 1.0) -> bool:
    """A TCP connection to ip:port from the attacker is accepted."""
    return probe_all(attacker, [Probe("tcp", ip, port, timeout)])[0]


def udp_dns(attacker: Attacker, server: str, port: int = 53, timeout: float = 1.0) -> bool:
    """The DNS server at server:port answers the attacker's query."""
    return probe_all(attacker, [Probe("dns", server, port, timeout)])[0]


def ping(attacker: Attacker, ip: str, timeout: float = 1.0) -> bool:
    """One ICMP echo from the attacker to ip is answered."""
    return probe_all(attacker, [Probe("ping", ip, 0, timeout)])[0]


def dhcp_offered(attacker: Attacker, server: str = "", timeout: float = 6.0) -> bool:
    """A DHCP server on the attacker's network offers it a lease (a DISCOVER, broadcast
    unless `server` names the address to send it to). dnsmasq pings an address before it
    offers it and waits about 3 s for an answer: hence the longer timeout."""
    return probe_all(attacker, [Probe("dhcp", server, 67, timeout)])[0]


# ---- VXLAN


def vxlan_packet(vni: int, inner_frame: bytes) -> bytes:
    """The VXLAN header (RFC 7348: flags with I set, 24-bit VNI) and the inner Ethernet frame."""
    if not 0 <= vni < 1 << 24:
        raise ValueError(f"vni out of range: {vni}")
    return struct.pack("!B3xI", 0x08, vni << 8) + inner_frame


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def arp_frame(
    sender_mac: str, sender_ip: str, target_ip: str, op: int = 1, dst_mac: str = BROADCAST_MAC
) -> bytes:
    """An Ethernet frame with an ARP request (op 1) or reply (op 2): what a forged neighbour
    entry or a MAC learnt in a bridge's forwarding table comes from."""
    target_mac = "00:00:00:00:00:00" if op == 1 else dst_mac
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + b"".join(
        (
            _mac_bytes(sender_mac),
            socket.inet_aton(sender_ip),
            _mac_bytes(target_mac),
            socket.inet_aton(target_ip),
        )
    )
    return _mac_bytes(dst_mac) + _mac_bytes(sender_mac) + b"\x08\x06" + arp.ljust(46, b"\x00")


def send_vxlan(
    attacker: Attacker, dst_ip: str, vni: int, inner_frame: bytes, count: int = 1
) -> None:
    """Send `count` VXLAN packets (UDP 4789) carrying inner_frame from the attacker."""
    if not 1 <= count <= 1000:
        raise ValueError(f"count must be 1 to 1000: {count}")
    payload = vxlan_packet(vni, inner_frame).hex()
    request = json.dumps({"ip": dst_ip, "payload": payload, "count": count})
    proc = attacker.run([sys.executable, os.path.abspath(__file__), "udp"], input=request)
    if proc.returncode != 0:
        raise RuntimeError(f"VXLAN from {attacker.netns} failed: {proc.stderr.strip()[-500:]}")


def _send_udp(ip: str, payload: bytes, count: int, port: int = VXLAN_PORT) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _sent in range(count):
            try:
                sock.sendto(payload, (ip, port))
            except OSError:  # e.g. no route: a dropped packet, as far as the sender knows
                return


# ---- listeners


def _listen_here(addresses: list[str], port: int, lifetime: float) -> None:
    """Accept (and close at once) TCP connections on every address until killed or lifetime."""
    sockets = []
    for address in addresses:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(64)
        sockets.append(sock)
    print("ready", flush=True)
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline:
        readable, _w, _x = select.select(sockets, [], [], 1.0)
        for sock in readable:
            conn, _peer = sock.accept()
            conn.close()


@contextmanager
def listening(netns: str | None, addresses: Sequence[str], port: int) -> Iterator[None]:
    """TCP listeners on port at every address, inside netns (None: here), until the end of
    the block (and at most LISTEN_LIFETIME seconds)."""
    argv = [sys.executable, os.path.abspath(__file__), "listen", str(port), *addresses]
    listener = subprocess.Popen(  # pylint: disable=consider-using-with
        _in_netns(netns, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert listener.stdout is not None
        ready, _w, _x = select.select([listener.stdout], [], [], LISTEN_READY_TIMEOUT)
        if not ready or listener.stdout.readline().strip() != "ready":
            listener.kill()
            errors = listener.communicate(timeout=10)[1].strip()[-500:]
            raise RuntimeError(f"listeners on {list(addresses)}:{port} did not start: {errors}")
        yield
    finally:
        listener.kill()
        listener.wait(timeout=10)


def _main(argv: list[str]) -> int:
    """Entry point inside a namespace: `probe` and `udp` read JSON on stdin."""
    if argv[:1] == ["probe"]:
        probes = [Probe(**fields) for fields in json.load(sys.stdin)]
        print(json.dumps(_probe_here(probes)))
    elif argv[:1] == ["udp"]:
        request = json.load(sys.stdin)
        _send_udp(request["ip"], bytes.fromhex(request["payload"]), int(request["count"]))
    elif argv[:1] == ["listen"] and len(argv) >= 3:
        _listen_here(argv[2:], int(argv[1]), LISTEN_LIFETIME)
    else:
        print("usage: attacker.py probe|udp < JSON, or listen PORT ADDRESS...", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
