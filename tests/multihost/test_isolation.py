"""Tenants isolated on the wire (issue 17), attacked from inside the multi-host lab.

Two tenants, acme and rival, each with a routed (lan), a NAT (nat) and an isolated (iso)
network on both hosts; each tenant's iso is one segment over a zone link. An attacker
namespace plugged into each of the twelve networks stands for a guest with root; on each
host a namespace at the private address of each tenant's VM `web` (a stopped VM with a public
IP) answers for that VM. Listeners on every host address, on every attacker and in the
internet namespace tell a dropped probe from a closed port.

From every attacker, only these answer: the own network's gateway for DNS and DHCP, the own
network's other guests (over the link for iso), the public IPs on the same host (hairpin,
not from iso) and the internet through NAT or a public IP. Nothing else of any host, no other
network of the own tenant, nothing of the other tenant. From the internet, with routes to the
private ranges through the hosts, only the public IPs answer. All of it still holds after a
libvirtd restart.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace

import libvirt
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.zone_link import (
    run_zone_link,
)
from ansible_collections.vce.kvm.plugins.module_utils.host.ownership import object_name

from tests.support.images import TINY_GUEST
from tests.support.ledger import register
from tools.attacker import Attacker, Probe, listening, plugged, probe_all
from tools.cleanup import remove_prefixed
from tools.multihost import INET_GATEWAY, LabHost, MultiHostLab

pytestmark = [pytest.mark.multihost]

PORT = 8080  # a listener's port on every address that a probe may reach
TENANTS = ("acme", "rival")
NETWORKS = {"lan": "routed", "nat": "nat", "iso": "isolated"}
HOSTS = ("kvm-a", "kvm-b")
POOLS = {"zone-a": "203.0.113.64/27", "zone-b": "203.0.113.96/27"}
PUBLIC_IPS = {  # (host, tenant): the address of the tenant's VM web there
    ("kvm-a", "acme"): "203.0.113.70",
    ("kvm-a", "rival"): "203.0.113.71",
    ("kvm-b", "acme"): "203.0.113.110",
    ("kvm-b", "rival"): "203.0.113.111",
}
# dnsmasq pings an address for ~3 s before it offers it, one DISCOVER after the other; an
# iso network's dnsmasq gets the DISCOVERs of both ends of the link.
DHCP_TIMEOUT = 12.0
RETRY_TIMEOUT = 3.0


def second_octet(tenant: str, network: str) -> int:
    """acme: lan 71, nat 72, iso 73; rival: 81, 82, 83."""
    return 71 + 10 * TENANTS.index(tenant) + list(NETWORKS).index(network)


def host_number(host: str) -> int:
    return HOSTS.index(host) + 1


def cidr(tenant: str, network: str, host: str) -> str:
    """iso is one /24 on both hosts (the link joins it); lan and nat are a /24 per host."""
    third = 0 if network == "iso" else host_number(host)
    return f"10.{second_octet(tenant, network)}.{third}.0/24"


def address(tenant: str, network: str, host: str, last: int) -> str:
    return cidr(tenant, network, host).replace(".0/24", f".{last}")


def gateway(tenant: str, network: str, host: str) -> str:
    """On iso each host's end of the link has a gateway of its own: .1 on kvm-a, .2 on kvm-b."""
    return address(tenant, network, host, host_number(host) if network == "iso" else 1)


def zone_config(zone: str) -> dict:
    pool = {"name": f"pub-{zone}", "cidr": POOLS[zone], "gateway": INET_GATEWAY}
    return {"uplink": "up0", "public_pools": [pool]}


def network_spec(tenant: str, network: str, host: str) -> dict:
    spec = {"name": network, "cidr": cidr(tenant, network, host), "mode": NETWORKS[network]}
    if network == "iso":  # the two ends of the link lease from halves of the range
        first = 100 + 50 * (host_number(host) - 1)
        spec |= {
            "gateway": gateway(tenant, network, host),
            "dhcp_start": address(tenant, network, host, first),
            "dhcp_end": address(tenant, network, host, first + 49),
        }
    return spec


def environment(lab_host: LabHost, tenant: str) -> dict:
    """The tenant's three networks on the host, VM web (stopped) on lan with a public IP."""
    web = {
        "name": "web",
        "memory_mib": 96,
        "boot_disk": {"image": TINY_GUEST, "size_gib": 1},
        "nics": [{"network": "lan", "ip": address(tenant, "lan", lab_host.name, 10)}],
        "state": "stopped",
    }
    return {
        "uri": lab_host.ssh_uri,
        "tenant": tenant,
        "zone": lab_host.zone,
        "zone_config": zone_config(lab_host.zone),
        "host_command": lab_host.ssh_command,
        "networks": [network_spec(tenant, network, lab_host.name) for network in NETWORKS],
        "vms": [web],
        "public_ips": [
            {"name": "web", "vm": "web", "address": PUBLIC_IPS[(lab_host.name, tenant)]}
        ],
    }


def zone_link(lab: MultiHostLab, tenant: str) -> dict:
    ends = [
        {
            "zone": h.zone,
            "uri": h.ssh_uri,
            "underlay_ip": h.underlay_ip,
            "underlay_dev": h.underlay_dev,
            "host_command": h.ssh_command,
        }
        for h in (lab.hosts[name] for name in HOSTS)
    ]
    return {"tenant": tenant, "name": "iso-ab", "network": "iso", "ends": ends}


@dataclass(frozen=True)
class Node:
    """A namespace standing for a guest: an attacker on a network, or the VM web."""

    host: str
    tenant: str
    network: str
    attacker: Attacker
    is_web: bool = False

    @property
    def address(self) -> str:
        return self.attacker.address

    @property
    def label(self) -> str:
        role = "web" if self.is_web else "attacker"
        return f"{role} {self.address} ({self.tenant} {self.network} on {self.host})"

    def same_segment(self, other: Node) -> bool:
        """On one L2 segment: the same network, and the same host unless linked (iso)."""
        return (self.tenant, self.network) == (other.tenant, other.network) and (
            self.network == "iso" or self.host == other.host
        )


@dataclass(frozen=True)
class Case:
    node: Node
    probe: Probe
    expected: bool
    target: str  # what the probe is aimed at, for the report

    def describe(self, answered: bool) -> str:
        where = f"{self.probe.ip}:{self.probe.port}" if self.probe.port else self.probe.ip
        got = "answered" if answered else "no answer"
        want = "open" if self.expected else "blocked"
        return (
            f"{self.node.label} -> {self.probe.kind} {where} [{self.target}]: "
            f"expected {want}, got {got}"
        )


@dataclass
class World:
    lab: MultiHostLab
    nodes: list[Node]


def host_addresses(lab: MultiHostLab, host: str) -> dict[str, str]:
    """Every address of a host, named: underlay, uplink, each network's gateway."""
    lab_host = lab.hosts[host]
    named = {lab_host.underlay_ip: f"{host} underlay", lab_host.public_ip: f"{host} uplink"}
    for tenant in TENANTS:
        for network in NETWORKS:
            named[gateway(tenant, network, host)] = f"{host} gateway of {tenant} {network}"
    return named


def bridge_of(lab_host: LabHost, tenant: str, network: str) -> str:
    conn = libvirt.open(lab_host.ssh_uri)
    try:
        return conn.networkLookupByName(object_name(tenant, network)).bridgeName()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def world(lab: MultiHostLab, ledger_url: str) -> Iterator[World]:
    """Both tenants on both hosts, linked, with the attackers plugged in and everything
    listening; all of it removed at the end."""
    with ExitStack() as stack:
        for tenant in TENANTS:
            register(ledger_url, tenant, public_ips=2)
        for host in lab.hosts.values():
            for tenant in TENANTS:  # a connection of the end: libvirtd restarts in between
                stack.callback(
                    lambda h=host, t=tenant: remove_prefixed(libvirt.open(h.ssh_uri), f"{t}_")
                )
        for name in HOSTS:
            for tenant in TENANTS:
                engine.run_environment(environment(lab.hosts[name], tenant))
        for tenant in TENANTS:
            run_zone_link(zone_link(lab, tenant))
        nodes = [plug(stack, lab, *where) for where in node_places()]
        for node in nodes:
            stack.enter_context(listening(node.attacker.netns, [node.address], PORT))
        for name in HOSTS:
            addresses = list(host_addresses(lab, name))
            stack.enter_context(listening(lab.hosts[name].netns, addresses, PORT))
        stack.enter_context(listening(lab.internet_netns, [INET_GATEWAY], PORT))
        yield World(lab, nodes)


def node_places() -> list[tuple[str, str, str, bool]]:
    """(host, tenant, network, is_web) of every node."""
    places = [
        (host, tenant, network, False)
        for host in HOSTS
        for tenant in TENANTS
        for network in NETWORKS
    ]
    return places + [(host, tenant, "lan", True) for host in HOSTS for tenant in TENANTS]


def plug(
    stack: ExitStack, lab: MultiHostLab, host: str, tenant: str, network: str, is_web: bool
) -> Node:
    """A node's namespace: web at .10 of lan; attackers at .200 (iso: .201 and .202)."""
    last = 10 if is_web else 200 + (host_number(host) if network == "iso" else 0)
    lab_host = lab.hosts[host]
    attacker = stack.enter_context(
        plugged(
            lab_host.netns,
            bridge_of(lab_host, tenant, network),
            f"{address(tenant, network, host, last)}/24",
            gateway(tenant, network, host),
            f"{lab.prefix}-{'w' if is_web else 'x'}{host_number(host)}{tenant[0]}{network}",
        )
    )
    return Node(host, tenant, network, attacker, is_web)


# ---- what each node may and may not reach


def guest_cases(world: World, node: Node) -> list[Case]:
    """Probes from one node (attacker or web) and what each must give."""
    cases = host_cases(world, node)
    for other in world.nodes:
        if other is not node:
            reachable = node.same_segment(other)
            for probe in (Probe("tcp", other.address, PORT), Probe("ping", other.address)):
                cases.append(Case(node, probe, reachable, other.label))
    # Out to the internet only through NAT or with a public IP, never with a private source.
    leaves = node.network == "nat" or node.is_web
    for probe in (Probe("tcp", INET_GATEWAY, PORT), Probe("ping", INET_GATEWAY)):
        cases.append(Case(node, probe, leaves, "internet gateway"))
    if not node.is_web:  # one client per network is enough (and dnsmasq serves one at a time)
        dhcp = Probe("dhcp", timeout=DHCP_TIMEOUT)
        cases.append(Case(node, dhcp, True, "own network's DHCP"))
    return cases


def hairpin_cases(node: Node, across: bool) -> list[Case]:
    """The public IPs of the other VMs on the node's host: through the host and back (none
    from an isolated network). `across`: those of webs on another network than the node's
    (the other tenant's, or the own tenant's from nat), else those on the node's own network
    (and, from iso, all of them, blocked)."""
    cases = []
    for (host, tenant), public in PUBLIC_IPS.items():
        on_own_network = (tenant, "lan") == (node.tenant, node.network)
        if host != node.host or (node.is_web and on_own_network):
            continue  # a VM's own public IP is not the hairpin asked for
        from_iso = node.network == "iso"  # blocked, whichever network: in the first test
        if (not across) if from_iso else across != on_own_network:
            target = f"public IP of {tenant} web on {host}"
            for probe in (Probe("tcp", public, PORT), Probe("ping", public)):
                cases.append(Case(node, probe, node.network != "iso", target))
    return cases


def host_cases(world: World, node: Node) -> list[Case]:
    """Every address of both hosts: a listener on each, DNS on each gateway; only the own
    network's gateways answer DNS (both ends of a link), nothing answers anything else."""
    cases = []
    for host in HOSTS:
        for ip, name in host_addresses(world.lab, host).items():
            own = ip in own_gateways(node)
            if host == node.host or "underlay" in name or own:
                for probe in (Probe("tcp", ip, PORT), Probe("ping", ip)):
                    cases.append(Case(node, probe, False, name))
            if "gateway" in name:
                for probe in (Probe("dns", ip, 53), Probe("tcp", ip, 53)):
                    cases.append(Case(node, probe, own, f"DNS of {name}"))
    return cases


def own_gateways(node: Node) -> set[str]:
    hosts = HOSTS if node.network == "iso" else (node.host,)
    return {gateway(node.tenant, node.network, host) for host in hosts}


def internet_cases(world: World, neighbour: Node) -> list[Case]:
    """From the uplink: every private address of a guest unreachable, every public IP open."""
    cases = []
    for node in world.nodes:
        for probe in (Probe("tcp", node.address, PORT), Probe("ping", node.address)):
            cases.append(Case(neighbour, probe, False, node.label))
    for (host, tenant), public in PUBLIC_IPS.items():
        for probe in (Probe("tcp", public, PORT), Probe("ping", public)):
            cases.append(Case(neighbour, probe, True, f"public IP of {tenant} web on {host}"))
    return cases


def answers_to(cases: Sequence[Case]) -> dict[Case, bool]:
    """Every case's probe, each node's probes at once in its namespace, all nodes at once."""
    by_node: dict[Node, list[Case]] = {}
    for case in cases:
        by_node.setdefault(case.node, []).append(case)
    answers: dict[Case, bool] = {}
    with ThreadPoolExecutor(max_workers=max(1, len(by_node))) as pool:
        batches = pool.map(lambda n: probe_all(n.attacker, [c.probe for c in by_node[n]]), by_node)
        for node, batch in zip(by_node, batches, strict=True):
            answers.update(zip(by_node[node], batch, strict=True))
    return answers


def run_cases(cases: Sequence[Case]) -> tuple[list[str], dict[str, float]]:
    """Every case; the mismatches described, and the counts. An answer is final, but a probe
    that should be answered and was not gets one more, slower try: the machine is shared, and
    a stall of a second must not look like a firewall."""
    started = time.monotonic()
    answers = answers_to(cases)
    unanswered = [c for c in cases if c.expected and not answers[c]]
    slower = [
        replace(c, probe=replace(c.probe, timeout=max(c.probe.timeout, RETRY_TIMEOUT)))
        for c in unanswered
    ]
    retried = answers_to(slower)
    for case, again in zip(unanswered, slower, strict=True):
        answers[case] = retried[again]
    seconds = time.monotonic() - started
    mismatches = [case.describe(answers[case]) for case in cases if answers[case] != case.expected]
    counts = {
        "probes": len(cases),
        "expected_open": sum(c.expected for c in cases),
        "expected_blocked": sum(not c.expected for c in cases),
        "retried": len(unanswered),
        "mismatches": len(mismatches),
        "seconds": round(seconds, 1),
    }
    print(f"\nprobes: {counts}")
    return mismatches, counts


def assert_all_hold(cases: Sequence[Case]) -> None:
    mismatches, counts = run_cases(cases)
    assert not mismatches, f"{len(mismatches)} of {counts['probes']} probes:\n" + "\n".join(
        mismatches
    )


# ---- tests


def test_tenant_networks_reach_only_their_own_gateway_segment_and_the_internet(world):
    assert_all_hold([case for node in world.nodes for case in guest_cases(world, node)])


def test_hairpin_a_vm_reaches_another_vms_public_ip_on_its_network(world):
    assert_all_hold([case for node in world.nodes for case in hairpin_cases(node, False)])


def test_hairpin_a_vm_reaches_the_public_ip_of_a_vm_on_another_network(world):
    assert_all_hold([case for node in world.nodes for case in hairpin_cases(node, True)])


def test_from_the_uplink_private_ranges_are_unreachable_and_public_ips_answer(world):
    """A hostile neighbour on the uplink routes every private range to the host serving it."""
    lab = world.lab
    routes = {
        cidr(tenant, network, host): lab.hosts[host].public_ip
        for host in reversed(HOSTS)  # iso, on both hosts: through kvm-a
        for tenant in TENANTS
        for network in NETWORKS
    }
    neighbour = Node("internet", "none", "uplink", Attacker(lab.internet_netns, INET_GATEWAY))
    try:
        for destination, via in routes.items():
            lab.inet_run(["ip", "route", "replace", destination, "via", via], check=True)
        assert_all_hold(internet_cases(world, neighbour))
    finally:
        for destination in routes:
            lab.inet_run(["ip", "route", "del", destination])


def guard_listing(lab_host: LabHost) -> str:
    return lab_host.ssh(["nft", "-s", "list", "table", "inet", "vce_guard"], check=True).stdout


def test_the_rules_survive_a_libvirtd_restart(world):
    """libvirtd rewrites its own chains when it starts; ours are not its to touch."""
    lab, kvm_a = world.lab, world.lab.hosts["kvm-a"]
    before = guard_listing(kvm_a)
    kvm_a.ssh(["iptables", "-F", "LIBVIRT_FWI"], check=True)  # so we see libvirt rewrite it
    lab.restart_libvirtd("kvm-a")
    chains = kvm_a.ssh(["iptables", "-S", "LIBVIRT_FWI"], check=True).stdout
    assert bridge_of(kvm_a, "acme", "lan") in chains  # libvirt wrote its own rules anew
    assert guard_listing(kvm_a) == before
    on_a = [node for node in world.nodes if node.host == "kvm-a"]
    assert_all_hold(
        [case for node in on_a for case in guest_cases(world, node) + hairpin_cases(node, False)]
    )
