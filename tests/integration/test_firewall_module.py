"""The host's guard table (vce.kvm.firewall, and environment runs keeping it) on a private
libvirtd of this test's own: NAT, routed and isolated networks made through the engine, the
table holding their bridges and gateways, no change on a second run, a rule deleted by hand
reported and restored, check mode changing nothing, and the table kept across a libvirtd
restart (which rewrites libvirt's own chains).

The daemon runs in a network namespace of the test's own, reached like a lab host through
`host_command`: there is one guard table per namespace, and in this machine's own namespace
every other libvirtd running here (other sessions' tests) would share it, so a run of theirs
could rewrite it between two of this test's reads. The daemon, its namespace and with it the
table and the uplink go at the end, also on failure."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import libvirt
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.engine.drift import DeclaredHost, DriftCheck
from ansible_collections.vce.kvm.plugins.module_utils.host.xml import read_network
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.support.ansible_runner import run_module
from tests.support.ledger import register
from tools.cleanup import stop_emptied
from tools.libvirtd import PrivateLibvirtd

pytestmark = pytest.mark.integration

TENANT = "guardit"
MODES = {"nat": "nat", "routed": "routed", "iso": "isolated"}


@dataclass
class Site:
    """The test's own KVM host: its libvirtd, ledger, uplink and network ranges."""

    daemon: PrivateLibvirtd
    ledger_url: str
    uplink: str
    third: int  # 10.<third>.<n>.0/24

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.daemon.netns]

    def run(self, argv: list[str]) -> str:
        """A command on the test's host (in its namespace); its output, checked."""
        return subprocess.run(
            [*self.prefix, *argv], capture_output=True, text=True, check=True, timeout=10
        ).stdout

    @property
    def zone_config(self) -> dict:
        pool = {"name": "pub", "cidr": "203.0.113.240/28", "gateway": "203.0.113.241"}
        return {"uplink": self.uplink, "public_pools": [pool]}

    def environment(self) -> dict:
        networks = [
            {"name": name, "cidr": f"10.{self.third}.{i}.0/24", "mode": mode}
            for i, (name, mode) in enumerate(MODES.items(), 1)
        ]
        return {
            "uri": self.daemon.uri,
            "tenant": TENANT,
            "ledger_url": self.ledger_url,
            "host_command": self.prefix,
            "zone": "zone-it",
            "zone_config": self.zone_config,
            "networks": networks,
        }

    def firewall(self, **extra) -> dict:
        return {
            "uri": self.daemon.uri,
            "ledger_url": self.ledger_url,
            "host_command": self.prefix,
            "zone_config": self.zone_config,
            **extra,
        }


def guard_listing(site: Site) -> str:
    return site.run(["nft", "-s", "list", "table", "inet", "vce_guard"])


def bridges(site: Site) -> dict[str, tuple[str, str]]:
    """Declared network name -> (bridge, gateway), as libvirt holds them."""
    conn = libvirt.open(site.daemon.uri)
    try:
        found = {}
        for name in MODES:
            xml = conn.networkLookupByName(f"{TENANT}_{name}").XMLDesc(0)
            state = read_network(xml, True, True)
            found[name] = (state.bridge, str(state.gateway))
        return found
    finally:
        conn.close()


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    base = Path(tempfile.mkdtemp(prefix="vce-guard-", dir="/tmp"))
    netns = f"vce-guard-{os.getpid()}"
    daemon = PrivateLibvirtd(base / "daemon", netns=netns)
    ledger_url = f"sqlite:///{base / 'ledger.sqlite3'}"
    site = Site(daemon, ledger_url, "up0", 20)
    try:
        subprocess.run(["ip", "netns", "add", netns], check=True, timeout=10)
        site.run(["ip", "link", "set", "lo", "up"])
        site.run(["ip", "link", "add", "up0", "type", "bridge"])
        site.run(["ip", "link", "set", "up0", "up"])
        daemon.start()
        Ledger.open(ledger_url, create=True)
        register(ledger_url, TENANT)
        yield site
    finally:
        stop_emptied(daemon)
        subprocess.run(["ip", "netns", "delete", netns], check=False, timeout=10)
        shutil.rmtree(base, ignore_errors=True)


def test_the_guard_holds_every_mode_and_a_second_run_changes_nothing(site):
    made = run_module("environment", site.environment())
    assert not made["failed"], made
    kinds = [(c["kind"], c["action"]) for c in made["plan"]]
    assert kinds[-1] == ("firewall", "create"), kinds
    listing = guard_listing(site)
    held = bridges(site)
    for name, (bridge, gateway) in held.items():
        assert f'"{bridge}" . {gateway}' in listing, (name, listing)
        assert f'"{bridge}" . "{bridge}"' in listing
    iso_bridge = held["iso"][0]
    assert (
        f'set isolated_bridges {{\n\t\ttype ifname\n\t\telements = {{ "{iso_bridge}" }}' in listing
    )
    assert f'oifname != "{site.uplink}" counter drop' in listing
    assert f'oifname "{site.uplink}" iifname @bridges ip saddr @cidrs counter drop' in listing

    again = run_module("environment", site.environment())
    assert again["changed"] is False, again["plan"]
    module = run_module("firewall", site.firewall())
    assert module["changed"] is False, module["plan"]
    assert sorted(n["bridge"] for n in module["firewall"]["networks"]) == sorted(
        b for b, _gateway in held.values()
    )


def test_a_rule_removed_by_hand_is_reported_and_restored(site):
    run_module("environment", site.environment())
    installed = guard_listing(site)
    site.run(["nft", "flush", "chain", "inet", "vce_guard", "tenant_in"])
    flushed = guard_listing(site)

    checked = run_module("firewall", site.firewall(), check=True, diff=True)
    assert checked["changed"] is True and not checked["failed"], checked
    assert "counter drop" in checked["plan"][0]["after"]
    assert "ct state established,related accept" in checked["diff"]["after"]
    assert guard_listing(site) == flushed  # check mode changed nothing

    shared = {"zone": "zone-it", "zone_config": site.zone_config, "host_command": site.prefix}
    declared = DeclaredHost.from_options("it-host", site.daemon.uri, site.ledger_url, {}, shared)
    (case,) = [c for c in DriftCheck(declared).cases() if c.kind == "firewall"]
    assert case.status == "drifted"

    reapplied = run_module("environment", site.environment())
    assert [(c["kind"], c["action"]) for c in reapplied["plan"]] == [("firewall", "update")]
    assert guard_listing(site) == installed


def test_the_table_survives_a_libvirtd_restart(site):
    run_module("environment", site.environment())
    before = guard_listing(site)
    site.daemon.restart_libvirtd()
    chains = site.run(["iptables", "-S", "LIBVIRT_FWI"])
    assert bridges(site)["nat"][0] in chains  # libvirt wrote its own chains again
    assert guard_listing(site) == before
    # A module run of its own (this process's cached connection died with the old libvirtd).
    assert run_module("firewall", site.firewall())["changed"] is False


def test_state_absent_removes_the_table_and_check_mode_keeps_it(site):
    run_module("environment", site.environment())
    checked = run_module("firewall", site.firewall(state="absent"), check=True)
    assert checked["changed"] is True
    assert guard_listing(site)
    removed = run_module("firewall", site.firewall(state="absent"))
    assert [c["action"] for c in removed["plan"]] == ["delete"]
    gone = subprocess.run(
        [*site.prefix, "nft", "list", "table", "inet", "vce_guard"],
        capture_output=True, check=False, timeout=10,
    )  # fmt: skip
    assert gone.returncode != 0


def port_master(site: Site, port: str) -> str:
    shown = site.run(["ip", "-o", "link", "show", "dev", port])
    return shown.split(" master ", 1)[1].split()[0] if " master " in shown else ""


def test_a_routed_network_of_an_earlier_version_is_untied_live_and_its_ports_stay(site):
    """A routed network defined as before (`<forward mode='route' dev='up0'/>`), with a port
    on its bridge standing for a running VM's tap: the run unties it without restarting it
    (the bridge and its port stay), and libvirt's rules no longer name the uplink."""
    run_module("environment", site.environment())
    name = f"{TENANT}_routed"
    bridge, _gateway = bridges(site)["routed"]
    cidr = f"10.{site.third}.2.0/24"
    conn = libvirt.open(site.daemon.uri)
    try:
        net = conn.networkLookupByName(name)
        root = ET.fromstring(net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE))
        net.destroy()
        root.find("forward").set("dev", site.uplink)  # what versions before the guard defined
        conn.networkDefineXML(ET.tostring(root, encoding="unicode")).create()
    finally:
        conn.close()
    site.run(["ip", "link", "add", "vce-tap0", "type", "veth", "peer", "name", "vce-tap0p"])
    site.run(["ip", "link", "set", "vce-tap0", "master", bridge, "up"])
    index = site.run(["cat", f"/sys/class/net/{bridge}/ifindex"])
    assert f"-d {cidr} -i {site.uplink} -o {bridge}" in site.run(["iptables", "-S", "LIBVIRT_FWI"])
    assert f"-s {cidr} -i {bridge} -o {site.uplink}" in site.run(["iptables", "-S", "LIBVIRT_FWO"])

    untied = run_module("environment", site.environment())
    changes = [(c["kind"], c["action"], c["field"], c["class"]) for c in untied["plan"]]
    assert changes == [("network", "update", "forward dev", "live")], untied
    rules = site.run(["iptables", "-S", "LIBVIRT_FWO"]) + site.run(
        ["iptables", "-S", "LIBVIRT_FWI"]
    )
    assert f"-s {cidr} -i {bridge} -j ACCEPT" in rules
    assert f"-d {cidr} -o {bridge} -j ACCEPT" in rules
    assert (
        f"{bridge} -o {site.uplink}" not in rules and f"-i {site.uplink} -o {bridge}" not in rules
    )
    # Never restarted: the same bridge, its port still on it.
    assert site.run(["cat", f"/sys/class/net/{bridge}/ifindex"]) == index
    assert port_master(site, "vce-tap0") == bridge
    assert run_module("environment", site.environment())["changed"] is False
