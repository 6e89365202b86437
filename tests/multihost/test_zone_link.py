"""vce.kvm.zone_link across the multi-host lab: a guest in zone A reaches a guest in zone B
over the link (real packets through VXLAN on the underlay); after absent neither end has a
device and the VNI is free; refusals change nothing."""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator

import libvirt
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine

from tests.multihost.helpers import (
    console_logs_on,
    guest_pings,
    run_module_on,
    wait_until_answers,
)
from tests.support.ansible_runner import run_module
from tests.support.images import TINY_GUEST
from tests.support.ledger import register
from tools.attacker import Attacker, arp_frame, plugged, send_vxlan
from tools.cleanup import remove_prefixed
from tools.multihost import LabHost, MultiHostLab, new_lab_dir

pytestmark = [pytest.mark.multihost, pytest.mark.guest]


def side(host: LabHost, vm: str, gateway: int, dhcp: tuple[int, int], ip: int, **network) -> dict:
    """One zone's half of tenant acme: network lan 10.80.0.0/24 and one running guest."""
    return {
        "uri": host.ssh_uri,
        "host_command": host.ssh_command,
        "tenant": "acme",
        "networks": [
            {
                "name": "lan",
                "cidr": "10.80.0.0/24",
                "mode": "isolated",
                "gateway": f"10.80.0.{gateway}",
                "dhcp_start": f"10.80.0.{dhcp[0]}",
                "dhcp_end": f"10.80.0.{dhcp[1]}",
                **network,
            },
            {"name": "thin", "cidr": "10.81.0.0/24", "mode": "isolated", "mtu": 1520},
        ],
        "vms": [
            {
                "name": vm,
                "memory_mib": 96,
                "boot_disk": {"image": TINY_GUEST, "size_gib": 1},
                "nics": [{"network": "lan", "ip": f"10.80.0.{ip}"}],
            }
        ],
    }


@pytest.fixture(scope="module")
def acme(lab, ledger_url) -> Iterator[str]:
    register(ledger_url, "acme")
    try:
        for host, params in (
            (lab.hosts["kvm-a"], side(lab.hosts["kvm-a"], "a1", 1, (100, 149), 10)),
            (lab.hosts["kvm-b"], side(lab.hosts["kvm-b"], "b1", 2, (150, 199), 20)),
        ):
            with console_logs_on(host):
                engine.run_environment(params)
        wait_until_answers(lab.hosts["kvm-a"], "10.80.0.10")
        wait_until_answers(lab.hosts["kvm-b"], "10.80.0.20")
        yield "acme"
    finally:
        for host in lab.hosts.values():
            remove_prefixed(libvirt.open(host.ssh_uri), "acme_")


def link(lab: MultiHostLab, network: str = "lan", zone_b: str = "zone-b", **extra) -> dict:
    a, b = lab.hosts["kvm-a"], lab.hosts["kvm-b"]
    return {
        "tenant": "acme",
        "name": f"{network}-ab",
        "network": network,
        "ends": [
            {
                "zone": "zone-a",
                "uri": a.ssh_uri,
                "underlay_ip": a.underlay_ip,
                "underlay_dev": "ul0",
                "host_command": a.ssh_command,
            },
            {
                "zone": zone_b,
                "uri": b.ssh_uri,
                "underlay_ip": b.underlay_ip,
                "underlay_dev": "ul0",
                "host_command": b.ssh_command,
            },
        ],
        **extra,
    }


def vxlan_devices(host: LabHost) -> list[str]:
    return host.ssh(["ip", "-o", "link", "show", "type", "vxlan"], check=True).stdout.split("\n")[
        :-1
    ]


def test_a_guest_in_zone_a_reaches_a_guest_in_zone_b_over_the_link(lab, acme, ledger_url):
    a, b = lab.hosts["kvm-a"], lab.hosts["kvm-b"]
    assert not guest_pings(a, "10.80.0.10", "10.80.0.20")  # two separate segments so far
    checked = run_module("zone_link", link(lab), check=True)
    assert checked["changed"] and not checked["failed"], checked
    assert [c["action"] for c in checked["plan"]] == [
        "allocate", "create", "create", "connect", "connect"
    ]  # fmt: skip
    assert vxlan_devices(a) == [] and vxlan_devices(b) == []

    # Applied as the zones playbook applies it: on kvm-a over Ansible's SSH connection, from
    # where kvm-b's end is reached through kvm-b's qemu+ssh URI and ssh.
    created = run_module_on(a, "zone_link", {**link(lab), "ledger_url": ledger_url})
    assert created["changed"], created
    device = created["zone_link"]["device"]
    assert created["zone_link"]["vni"] >= 10000
    assert guest_pings(a, "10.80.0.10", "10.80.0.20")
    assert guest_pings(b, "10.80.0.20", "10.80.0.10")
    assert not run_module("zone_link", link(lab))["changed"]

    # A device deleted by hand at one end is made again.
    b.ssh(["ip", "link", "del", device], check=True)
    repaired = run_module("zone_link", link(lab))
    assert [c["action"] for c in repaired["plan"]] == ["connect"], repaired
    assert guest_pings(a, "10.80.0.10", "10.80.0.20")

    removed = run_module("zone_link", link(lab, state="absent"))
    assert [c["action"] for c in removed["plan"]] == [
        "update", "update", "disconnect", "disconnect", "release"
    ]  # fmt: skip
    assert vxlan_devices(a) == [] and vxlan_devices(b) == []
    assert not guest_pings(a, "10.80.0.10", "10.80.0.20")
    assert removed["zone_link"] == {}
    assert not run_module("zone_link", link(lab, state="absent"))["changed"]


def test_refused_links_change_nothing(lab, acme):
    cases = [
        (link(lab, zone_b="zone-a"), "ends[1].zone", "a zone link joins two zones"),
        (link(lab, network="thin"), "ends[0].underlay_dev", "MTU too small"),
        (link(lab, network="nope"), "ends[0]", "has no network 'nope'"),
        ({**link(lab), "ends": link(lab)["ends"][:1]}, "ends", "exactly two ends"),
    ]
    for params, field, reason in cases:
        result = run_module("zone_link", params)
        assert result["failed"] and not result["changed"], result
        assert result["field"] == field and reason in result["msg"], result
    assert vxlan_devices(lab.hosts["kvm-a"]) == [] and vxlan_devices(lab.hosts["kvm-b"]) == []


def test_links_of_a_tenant_never_overlap_and_never_join_another_tenant(ledger_url):
    base = new_lab_dir()
    hosts = (("kvm-a", "zone-a"), ("kvm-b", "zone-b"), ("kvm-c", "zone-c"))
    three = MultiHostLab(base, hosts=hosts)
    try:
        three.start()
        register(ledger_url, "beta")
        register(ledger_url, "rival")
        layout = {"kvm-a": ("beta", 1, 100), "kvm-b": ("beta", 2, 150), "kvm-c": ("rival", 3, 200)}
        for host_name, (tenant, gateway, start) in layout.items():
            network = {
                "name": "lan", "cidr": "10.90.0.0/24", "mode": "isolated",
                "gateway": f"10.90.0.{gateway}", "dhcp_start": f"10.90.0.{start}",
                "dhcp_end": f"10.90.0.{start + 40}",
            }  # fmt: skip
            lab_host = three.hosts[host_name]
            engine.run_environment(
                {"uri": lab_host.ssh_uri, "host_command": lab_host.ssh_command, "tenant": tenant,
                 "networks": [network]}
            )  # fmt: skip

        def ends(*names: str) -> list[dict]:
            return [
                {"zone": three.hosts[n].zone, "uri": three.hosts[n].ssh_uri, "underlay_ip": three.hosts[n].underlay_ip,
                 "underlay_dev": "ul0", "host_command": three.hosts[n].ssh_command}
                for n in names
            ]  # fmt: skip

        first = {"tenant": "beta", "name": "ab", "network": "lan", "ends": ends("kvm-a", "kvm-b")}
        assert run_module("zone_link", first)["changed"]
        overlap = run_module("zone_link", {**first, "name": "bc", "ends": ends("kvm-b", "kvm-a")})
        assert (
            overlap["failed"] and "overlaps 10.90.0.0/24 of the tenant's link ab" in overlap["msg"]
        ), overlap
        foreign = run_module("zone_link", {**first, "name": "ac", "ends": ends("kvm-a", "kvm-c")})
        assert foreign["failed"] and foreign["field"] == "ends[1]", foreign
        assert "tenant beta has no network 'lan' in zone zone-c" in foreign["msg"]
        assert run_module("zone_link", {**first, "state": "absent"})["changed"]
    finally:
        three.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_environment_creates_a_network_and_links_it_in_one_run(lab, ledger_url):
    a, b = lab.hosts["kvm-a"], lab.hosts["kvm-b"]
    register(ledger_url, "gamma")

    def network(gateway: int, start: int) -> dict:
        return {
            "name": "lan", "cidr": "10.95.0.0/24", "mode": "isolated", "gateway": f"10.95.0.{gateway}",
            "dhcp_start": f"10.95.0.{start}", "dhcp_end": f"10.95.0.{start + 40}",
        }  # fmt: skip

    on_b = {"uri": b.ssh_uri, "tenant": "gamma", "host_command": b.ssh_command}
    engine.run_environment({**on_b, "networks": [network(2, 150)]})
    params = {
        "uri": a.ssh_uri,
        "host_command": a.ssh_command,
        "tenant": "gamma",
        "networks": [network(1, 100)],
        "zone_links": [{"name": "lan-ab", "network": "lan", "ends": link(lab)["ends"]}],
    }
    try:
        applied = run_module("environment", params)
        assert applied["changed"] and not applied["failed"], applied
        # The host's guard table (vce_guard) is kept by the same run: not this test's.
        actions = [(c["kind"], c["action"]) for c in applied["plan"] if c["name"] != "vce_guard"]
        assert actions == [
            ("network", "create"),
            ("zone_link", "allocate"),
            ("firewall", "update"),
            ("firewall", "update"),
            ("zone_link", "connect"),
            ("zone_link", "connect"),
        ]
        for host in (a, b):
            (device,) = vxlan_devices(host)
            assert ("master virbr" in device and "state UNKNOWN" in device) or "UP" in device
        assert not run_module("environment", params)["changed"]
    finally:
        removed = run_module("environment", {**params, "state": "absent"})
        engine.run_environment({**on_b, "state": "absent"})
    assert removed["changed"] and not removed["failed"], removed
    assert vxlan_devices(a) == [] and vxlan_devices(b) == []


# ---- the VXLAN filter (inet vce_vxlan): VXLAN only from a link's peer, with its VNI

# Tenant rival's link runs over second underlay addresses of the same hosts: so host A's
# first address is the right peer for acme's VNI and the wrong one for rival's.
RIVAL_UNDERLAY = {"kvm-a": "172.31.250.110", "kvm-b": "172.31.250.111"}
RIVAL_ZONES = {
    "kvm-a": ("zone-a", "203.0.113.64/27"),
    "kvm-b": ("zone-b", "203.0.113.96/27"),
}
FORGED_MAC = "02:66:76:78:00:01"  # what an attacker's inner frames claim to come from
PEER_MAC = "02:66:76:78:00:02"  # the right peer's frame: must pass, or the test proves nothing
SETTLE = 0.5  # seconds for the last frame to be bridged (or not) and answered


def rival_side(host: LabHost, index: int) -> dict:
    """Tenant rival on one host: a linked isolated `lan`, and a routed, a NAT and an isolated
    network for the attackers."""
    zone, pool = RIVAL_ZONES[host.name]
    gateway = 1 + index
    return {
        "uri": host.ssh_uri,
        "tenant": "rival",
        "zone": zone,
        "zone_config": {
            "uplink": "up0",
            "public_pools": [{"name": "pub", "cidr": pool, "gateway": "203.0.113.1"}],
        },
        "host_command": host.ssh_command,
        "networks": [
            {"name": "lan", "cidr": "10.84.0.0/24", "mode": "isolated",
             "gateway": f"10.84.0.{gateway}", "dhcp_start": f"10.84.0.{100 + 50 * index}",
             "dhcp_end": f"10.84.0.{149 + 50 * index}"},
            {"name": "pub", "cidr": f"10.85.{index}.0/24", "mode": "routed"},
            {"name": "out", "cidr": f"10.86.{index}.0/24", "mode": "nat"},
            {"name": "cell", "cidr": f"10.87.{index}.0/24", "mode": "isolated"},
        ],
    }  # fmt: skip


def rival_link(lab: MultiHostLab) -> dict:
    ends = link(lab)["ends"]
    for end, host in zip(ends, ("kvm-a", "kvm-b"), strict=True):
        end["underlay_ip"] = RIVAL_UNDERLAY[host]
    return {"tenant": "rival", "name": "lan-ab", "network": "lan", "ends": ends}


@pytest.fixture
def two_links(lab, acme, ledger_url) -> Iterator[dict[str, tuple[int, str]]]:
    """acme's and rival's links between kvm-a and kvm-b: {tenant: (VNI, linked subnet)}."""
    register(ledger_url, "rival")
    hosts = [lab.hosts["kvm-a"], lab.hosts["kvm-b"]]
    try:
        for index, host in enumerate(hosts):
            address = f"{RIVAL_UNDERLAY[host.name]}/24"
            host.ssh(["ip", "addr", "add", address, "dev", "ul0"], check=True)
            engine.run_environment(rival_side(host, index))
        links = {}
        for tenant, params in (("acme", link(lab)), ("rival", rival_link(lab))):
            made = run_module("zone_link", params)
            assert made["changed"] and not made["failed"], made
            links[tenant] = (made["zone_link"]["vni"], made["zone_link"]["cidr"])
        yield links
    finally:
        run_module("zone_link", link(lab, state="absent"))
        run_module("zone_link", {**rival_link(lab), "state": "absent"})
        for host in hosts:
            remove_prefixed(libvirt.open(host.ssh_uri), "rival_")
            host.ssh(["ip", "addr", "del", f"{RIVAL_UNDERLAY[host.name]}/24", "dev", "ul0"])


def host_addresses(host: LabHost) -> list[str]:
    """Every IPv4 address of the host but loopback: underlay, uplink, every gateway."""
    shown = json.loads(host.ssh(["ip", "-j", "-4", "addr", "show"], check=True).stdout)
    return sorted(
        a["local"] for link_ in shown for a in link_["addr_info"] if link_["ifname"] != "lo"
    )


def forged_arp(mac: str, cidr: str) -> bytes:
    """A broadcast ARP request from `mac` claiming .77 of the linked subnet: bridged, it
    teaches the bridge the MAC and plants a neighbour entry at the gateway it asks for."""
    base = cidr.rsplit(".", 1)[0]
    return arp_frame(mac, f"{base}.77", f"{base}.1")


def planted(lab: MultiHostLab, mac: str) -> list[str]:
    """Where a MAC was learnt: bridge forwarding entries and neighbour entries, on any host."""
    found = []
    for host in lab.hosts.values():
        for argv in (["bridge", "fdb", "show"], ["ip", "neigh", "show"]):
            lines = host.ssh(argv, check=True).stdout.splitlines()
            found += [f"{host.name}: {line}" for line in lines if mac in line.lower()]
    return found


def network_bridge(host: LabHost, tenant: str, network: str) -> str:
    conn = libvirt.open(host.ssh_uri)
    try:
        return conn.networkLookupByName(f"{tenant}_{network}").bridgeName()
    finally:
        conn.close()


def filter_drops(host: LabHost, chain: str = "vxlan_in") -> int:
    """Packets a chain of the host's VXLAN filter dropped so far: VXLAN coming in (vxlan_in),
    a guest's VXLAN on its way out to the underlay (forward)."""
    listing = host.ssh(["nft", "list", "chain", "inet", "vce_vxlan", chain], check=True)
    counted = re.search(r"counter packets (\d+) bytes \d+ drop", listing.stdout)
    assert counted, listing.stdout
    return int(counted.group(1))


def flood(attacker: Attacker, targets: list[str], links: dict[str, tuple[int, str]]) -> int:
    """VXLAN frames with every link's VNI to every target; returns how many were sent."""
    for target in targets:
        for vni, cidr in links.values():
            send_vxlan(attacker, target, vni, forged_arp(FORGED_MAC, cidr), count=2)
    return 2 * len(targets) * len(links)


def test_vxlan_from_a_guest_or_the_uplink_is_dropped_and_the_links_keep_working(lab, two_links):
    a, b = lab.hosts["kvm-a"], lab.hosts["kvm-b"]
    for host in (a, b):
        rules = host.ssh(["nft", "list", "chain", "inet", "vce_vxlan", "vxlan_in"], check=True)
        assert rules.stdout.count(" accept comment ") == 2, rules.stdout  # acme's and rival's
    targets = sorted(set(host_addresses(a) + host_addresses(b)))
    assert {a.underlay_ip, b.underlay_ip, a.public_ip, b.public_ip} <= set(targets)
    drops = {host.name: filter_drops(host) for host in (a, b)}

    # From a guest's seat in rival's routed, NAT and isolated networks, on both hosts.
    for index, host in enumerate((a, b)):
        for network in ("pub", "out", "cell"):
            subnet = {"pub": 85, "out": 86, "cell": 87}[network]
            bridge = network_bridge(host, "rival", network)
            gateway = f"10.{subnet}.{index}.1"
            name = f"{lab.prefix}-x{index}{network}"
            with plugged(host.netns, bridge, f"10.{subnet}.{index}.200/24", gateway, name) as x:
                flood(x, targets, two_links)
    # From the uplink: a neighbour on the internet with a route to every host address (an
    # address both hosts have, as acme's `thin` gateway, through the first).
    routes = {t: h.public_ip for h in (b, a) for t in host_addresses(h) if t != h.public_ip}
    try:
        for target, via in routes.items():
            lab.inet_run(["ip", "route", "add", f"{target}/32", "via", via], check=True)
        flood(Attacker(lab.internet_netns, "203.0.113.1"), targets, two_links)
    finally:
        for target, via in routes.items():
            lab.inet_run(["ip", "route", "del", f"{target}/32", "via", via])
    time.sleep(SETTLE)
    assert planted(lab, FORGED_MAC) == []
    assert all(filter_drops(host) > drops[host.name] for host in (a, b))
    # Guests' VXLAN towards the other host's underlay never left: NAT would have given it this
    # host's underlay address, which the other end lets in.
    assert all(filter_drops(host, "forward") > 0 for host in (a, b))

    # The right peer (kvm-a's first underlay address, acme's) with rival's VNI: dropped too.
    peer = Attacker(a.netns, a.underlay_ip)
    rival_vni, rival_cidr = two_links["rival"]
    before = filter_drops(b)
    send_vxlan(peer, b.underlay_ip, rival_vni, forged_arp(FORGED_MAC, rival_cidr), count=3)
    time.sleep(SETTLE)
    assert planted(lab, FORGED_MAC) == []
    assert filter_drops(b) == before + 3

    # ... and with acme's VNI it passes: the filter reads the VNI where VXLAN carries it.
    acme_vni, acme_cidr = two_links["acme"]
    send_vxlan(peer, b.underlay_ip, acme_vni, forged_arp(PEER_MAC, acme_cidr))
    time.sleep(SETTLE)
    learnt = planted(lab, PEER_MAC)
    assert any(line.startswith("kvm-b: ") and f"dev vx{acme_vni}" in line for line in learnt), (
        learnt
    )
    assert filter_drops(b) == before + 3

    # The tenants' own link carries their guests' traffic as before.
    assert guest_pings(a, "10.80.0.10", "10.80.0.20")
    assert guest_pings(b, "10.80.0.20", "10.80.0.10")


def test_a_zone_link_run_restores_a_filter_changed_by_hand(lab, acme):
    a, b = lab.hosts["kvm-a"], lab.hosts["kvm-b"]
    try:
        assert run_module("zone_link", link(lab))["changed"]
        b.ssh(["nft", "flush", "chain", "inet", "vce_vxlan", "vxlan_in"], check=True)
        checked = run_module("zone_link", link(lab), check=True, diff=True)
        assert [(c["kind"], c["action"], c["field"]) for c in checked["plan"]] == [
            ("firewall", "update", b.ssh_uri)
        ], checked
        accept, drop = checked["diff"]["after"]["firewall/vce_vxlan"][b.ssh_uri]  # flushed both
        assert accept.endswith('accept comment "acme/lan-ab"') and drop == "counter drop"
        assert run_module("zone_link", link(lab))["changed"]
        assert not run_module("zone_link", link(lab))["changed"]
        listing = b.ssh(["nft", "list", "chain", "inet", "vce_vxlan", "vxlan_in"], check=True)
        assert f"ip saddr {a.underlay_ip} ip daddr {b.underlay_ip}" in listing.stdout
    finally:
        run_module("zone_link", link(lab, state="absent"))
