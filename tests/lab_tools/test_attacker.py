"""tools.attacker: namespaces plugged into a bridge of a scratch namespace send real packets,
every probe is bounded, and nothing is left behind, also when plugging fails."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tools.attacker import (
    Probe,
    arp_frame,
    dhcp_offered,
    listening,
    ping,
    plugged,
    port_name,
    probe_all,
    send_vxlan,
    tcp_open,
    udp_dns,
    vxlan_packet,
)

BRIDGE = "br0"
GATEWAY = "10.99.0.1"
RECEIVER = """
import socket, sys
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("0.0.0.0", 4789)); sock.settimeout(10)
print("ready", flush=True)
print(sock.recvfrom(2048)[0].hex(), flush=True)
"""


def netns_names() -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [line.split()[0] for line in listing.stdout.splitlines() if line]


def in_ns(netns: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, *argv], check=True, timeout=30)


@pytest.fixture
def scratch() -> Iterator[str]:
    """A namespace standing for a KVM host: bridge br0 with the gateway, and dnsmasq on it."""
    netns = f"vat-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    dnsmasq = None
    try:
        in_ns(netns, "ip", "link", "set", "lo", "up")
        in_ns(netns, "ip", "link", "add", BRIDGE, "type", "bridge")
        in_ns(netns, "ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
        in_ns(netns, "ip", "link", "set", BRIDGE, "up")
        dnsmasq = subprocess.Popen(  # pylint: disable=consider-using-with
            ["ip", "netns", "exec", netns, "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
             f"--interface={BRIDGE}", "--bind-interfaces", "--no-resolv", "--no-hosts",
             "--pid-file=", "--leasefile-ro", "--dhcp-range=10.99.0.100,10.99.0.150,1h"]
        )  # fmt: skip
        yield netns
    finally:
        if dnsmasq is not None:
            dnsmasq.kill()
            dnsmasq.wait(timeout=10)
        subprocess.run(["ip", "netns", "delete", netns], check=False, timeout=30)


def test_probes_tell_open_from_closed_and_unreachable(scratch):
    name = f"{scratch}-x"
    with plugged(scratch, BRIDGE, "10.99.0.200/24", GATEWAY, name) as attacker:
        assert attacker.netns == name and attacker.address == "10.99.0.200"
        with listening(scratch, [GATEWAY], 8080):
            assert tcp_open(attacker, GATEWAY, 8080)
        assert not tcp_open(attacker, GATEWAY, 8080)  # the listener went with the block
        assert ping(attacker, GATEWAY)
        assert udp_dns(attacker, GATEWAY)
        assert dhcp_offered(attacker)

        started = time.monotonic()
        results = probe_all(
            attacker,
            [
                Probe("ping", "10.99.0.77"),
                Probe("tcp", "10.99.0.77", 80),
                Probe("dns", "10.99.0.77"),
            ]
            + [Probe("ping", GATEWAY)] * 40,
        )
        assert results == [False, False, False] + [True] * 40
        assert time.monotonic() - started < 10  # concurrently, each bounded by its 1 s


def test_vxlan_carries_the_frame_with_the_vni_where_the_kernel_filter_reads_it(scratch):
    with (
        plugged(scratch, BRIDGE, "10.99.0.201/24", None, f"{scratch}-s") as sender,
        plugged(scratch, BRIDGE, "10.99.0.202/24", None, f"{scratch}-r") as receiver,
    ):
        mac = receiver.mac
        frame = arp_frame("02:00:00:00:00:01", "10.99.0.1", "10.99.0.202", op=2, dst_mac=mac)
        capture = subprocess.Popen(  # pylint: disable=consider-using-with
            ["ip", "netns", "exec", receiver.netns, sys.executable, "-c", RECEIVER],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert capture.stdout is not None and capture.stdout.readline().strip() == "ready"
            send_vxlan(sender, receiver.address, 0x123456, frame)
            received = bytes.fromhex(capture.communicate(timeout=15)[0].strip())
        finally:
            capture.kill()
    assert received == vxlan_packet(0x123456, frame)
    assert received[0] == 0x08 and received[4:7] == bytes.fromhex("123456")  # nft @th,96,24
    assert received[8:14] == bytes.fromhex(mac.replace(":", ""))
    assert received[20:22] == b"\x08\x06" and len(frame) == 60  # ARP, padded to the minimum


def test_everything_goes_on_exit_also_on_failure(scratch):
    name = f"{scratch}-f"
    with (
        pytest.raises(RuntimeError, match="nope"),
        plugged(scratch, "nope", "10.99.0.203/24", GATEWAY, name),
    ):
        pass
    assert name not in netns_names()

    sleeper = None
    with (
        pytest.raises(ZeroDivisionError),
        plugged(scratch, BRIDGE, "10.99.0.203/24", GATEWAY, name),
    ):
        sleeper = subprocess.Popen(["ip", "netns", "exec", name, "sleep", "300"])  # pylint: disable=consider-using-with
        time.sleep(0.5)
        raise ZeroDivisionError
    assert name not in netns_names()
    assert sleeper is not None and sleeper.wait(timeout=5) == -9  # killed with its namespace
    ports = subprocess.run(
        ["ip", "netns", "exec", scratch, "ip", "-o", "link"],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert port_name(name) not in ports.stdout


def test_an_existing_namespace_is_refused_and_kept(scratch):
    with (
        pytest.raises(RuntimeError, match="exists already"),
        plugged(None, BRIDGE, "10.99.0.204/24", None, scratch),
    ):
        pass
    assert scratch in netns_names()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="vni out of range"):
        vxlan_packet(1 << 24, b"")
