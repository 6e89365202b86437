"""A host without an uplink (no zone, the single-host demo's host): a tenant's NAT network
leaves through any interface libvirt's NAT lets it, but never to the host's management network
or any other internal range; the internet (a documentation range here) still answers.

The test's host is a network namespace of its own with a private libvirtd (as in
test_firewall_module.py). Two veths leave it: `mg0` to a namespace standing for the
management network (192.168.240.0/24, an operator's machine listening on it) and `wan0` to
one standing for the internet (198.51.100.0/24). An attacker namespace plugged into the NAT
network's bridge stands for a guest with root. Everything goes at the end, also on failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.host.xml import read_network
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.support.ansible_runner import run_module
from tests.support.ledger import register
from tools.attacker import Attacker, Probe, listening, plugged, probe_all
from tools.cleanup import stop_emptied
from tools.libvirtd import PrivateLibvirtd

pytestmark = pytest.mark.integration

TENANT = "bare"
PORT = 8080
CIDR = "10.29.0.0/24"
# (host's device, its address, the far namespace's address) for each network leaving the host.
OUTSIDE = {
    "mgmt": ("mg0", "192.168.240.1/24", "192.168.240.2"),
    "wan": ("wan0", "198.51.100.1/24", "198.51.100.2"),
}


@dataclass
class BareHost:
    daemon: PrivateLibvirtd
    ledger_url: str
    outside: dict[str, str]  # "mgmt" | "wan" -> the far namespace's name

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.daemon.netns]

    def environment(self) -> dict:
        return {
            "uri": self.daemon.uri,
            "tenant": TENANT,
            "ledger_url": self.ledger_url,
            "host_command": self.prefix,
            "networks": [{"name": "nat", "cidr": CIDR, "mode": "nat"}],
        }

    def firewall(self, **extra) -> dict:
        return {
            "uri": self.daemon.uri,
            "ledger_url": self.ledger_url,
            "host_command": self.prefix,
            **extra,
        }


def ip(netns: str, *argv: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "ip", *argv], check=True, timeout=10)


@pytest.fixture
def bare() -> Iterator[BareHost]:
    base = Path(tempfile.mkdtemp(prefix="vce-bare-", dir="/tmp"))
    netns = f"vce-bare-{os.getpid()}"
    outside = {name: f"vce-{name}-{os.getpid()}" for name in OUTSIDE}
    daemon = PrivateLibvirtd(base / "daemon", netns=netns)
    ledger_url = f"sqlite:///{base / 'ledger.sqlite3'}"
    try:
        for name in (netns, *outside.values()):
            subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
            ip(name, "link", "set", "lo", "up")
        for name, (device, address, far) in OUTSIDE.items():
            subprocess.run(
                ["ip", "-n", netns, "link", "add", device, "type", "veth",
                 "peer", "name", "eth0", "netns", outside[name]],
                check=True, timeout=10,
            )  # fmt: skip
            ip(netns, "addr", "add", address, "dev", device)
            ip(netns, "link", "set", device, "up")
            ip(outside[name], "addr", "add", f"{far}/24", "dev", "eth0")
            ip(outside[name], "link", "set", "eth0", "up")
        daemon.start()
        Ledger.open(ledger_url, create=True)
        register(ledger_url, TENANT)
        yield BareHost(daemon, ledger_url, outside)
    finally:
        stop_emptied(daemon)
        for name in (netns, *outside.values()):
            subprocess.run(["ip", "netns", "delete", name], check=False, timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def nat_bridge(host: BareHost) -> tuple[str, str]:
    conn = libvirt.open(host.daemon.uri)
    try:
        state = read_network(conn.networkLookupByName(f"{TENANT}_nat").XMLDesc(0), True, True)
        return state.bridge, str(state.gateway)
    finally:
        conn.close()


def reached(attacker: Attacker) -> dict[str, bool]:
    """Which far namespace answers a TCP connect from the attacker."""
    probes = [Probe("tcp", far, PORT) for _device, _address, far in OUTSIDE.values()]
    return dict(zip(OUTSIDE, probe_all(attacker, probes), strict=True))


def test_a_nat_network_reaches_the_internet_but_not_the_management_network(bare):
    made = run_module("environment", bare.environment())
    assert not made["failed"], made
    listing = subprocess.run(
        [*bare.prefix, "nft", "-s", "list", "table", "inet", "vce_guard"],
        capture_output=True, text=True, check=True, timeout=10,
    ).stdout  # fmt: skip
    assert "ip daddr @internal counter drop" in listing and "oifname !=" not in listing
    bridge, gateway = nat_bridge(bare)
    with ExitStack() as stack:
        for name, (_device, _address, far) in OUTSIDE.items():
            stack.enter_context(listening(bare.outside[name], [far], PORT))
        attacker = stack.enter_context(
            plugged(bare.daemon.netns, bridge, "10.29.0.200/24", gateway, f"vce-bat-{os.getpid()}")
        )
        assert reached(attacker) == {"mgmt": False, "wan": True}
        # Without the guard libvirt's NAT would take it there: the drop is the guard's.
        removed = run_module("firewall", bare.firewall(state="absent"))
        assert not removed["failed"], removed
        assert reached(attacker) == {"mgmt": True, "wan": True}
        restored = run_module("firewall", bare.firewall())
        assert [c["action"] for c in restored["plan"]] == ["create"], restored
        assert reached(attacker) == {"mgmt": False, "wan": True}
