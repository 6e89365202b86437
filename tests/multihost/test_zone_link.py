"""vce.kvm.zone_link across the multi-host lab: a guest in zone A reaches a guest in zone B
over the link (real packets through VXLAN on the underlay); after absent neither end has a
device and the VNI is free; refusals change nothing."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine

from tests.multihost.helpers import console_logs_on, wait_until_answers
from tests.support.ansible_runner import run_module
from tests.support.images import TINY_GUEST
from tests.support.ledger import register
from tools.cleanup import remove_prefixed
from tools.multihost import LabHost, MultiHostLab

pytestmark = [pytest.mark.multihost, pytest.mark.guest]


def side(host: LabHost, vm: str, gateway: int, dhcp: tuple[int, int], ip: int, **network) -> dict:
    """One zone's half of tenant acme: network lan 10.80.0.0/24 and one running guest."""
    return {
        "uri": host.uri,
        "host_command": host.command_prefix,
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
            remove_prefixed(host.connect(), "acme_")


def link(lab: MultiHostLab, network: str = "lan", zone_b: str = "zone-b", **extra) -> dict:
    a, b = lab.hosts["kvm-a"], lab.hosts["kvm-b"]
    return {
        "tenant": "acme",
        "name": f"{network}-ab",
        "network": network,
        "ends": [
            {
                "zone": "zone-a",
                "uri": a.uri,
                "underlay_ip": a.underlay_ip,
                "underlay_dev": "ul0",
                "host_command": a.command_prefix,
            },
            {
                "zone": zone_b,
                "uri": b.uri,
                "underlay_ip": b.underlay_ip,
                "underlay_dev": "ul0",
                "host_command": b.command_prefix,
            },
        ],
        **extra,
    }


def guest_pings(host: LabHost, guest: str, target: str) -> bool:
    """Ask the guest (over HTTP from its own host) to ping target: real guest-to-guest packets."""
    url = f"http://{guest}/cgi-bin/ping?{target}"
    code = (
        f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
    )
    for _try in range(3):
        proc = host.run([sys.executable, "-c", code], timeout=30)
        if proc.returncode == 0 and " 0% packet loss" in proc.stdout:
            return True
    return False


def vxlan_devices(host: LabHost) -> list[str]:
    return host.run(["ip", "-o", "link", "show", "type", "vxlan"], check=True).stdout.split("\n")[
        :-1
    ]


def test_a_guest_in_zone_a_reaches_a_guest_in_zone_b_over_the_link(lab, acme):
    a, b = lab.hosts["kvm-a"], lab.hosts["kvm-b"]
    assert not guest_pings(a, "10.80.0.10", "10.80.0.20")  # two separate segments so far
    checked = run_module("zone_link", link(lab), check=True)
    assert checked["changed"] and not checked["failed"], checked
    assert [c["action"] for c in checked["plan"]] == ["allocate", "connect", "connect"]
    assert vxlan_devices(a) == [] and vxlan_devices(b) == []

    created = run_module("zone_link", link(lab))
    assert created["changed"], created
    device = created["zone_link"]["device"]
    assert created["zone_link"]["vni"] >= 10000
    assert guest_pings(a, "10.80.0.10", "10.80.0.20")
    assert guest_pings(b, "10.80.0.20", "10.80.0.10")
    assert not run_module("zone_link", link(lab))["changed"]

    # A device deleted by hand at one end is made again.
    b.run(["ip", "link", "del", device], check=True)
    repaired = run_module("zone_link", link(lab))
    assert [c["action"] for c in repaired["plan"]] == ["connect"], repaired
    assert guest_pings(a, "10.80.0.10", "10.80.0.20")

    removed = run_module("zone_link", link(lab, state="absent"))
    assert [c["action"] for c in removed["plan"]] == ["disconnect", "disconnect", "release"]
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
    base = Path(tempfile.mkdtemp(prefix="vce-mh-", dir="/tmp"))
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
                {"uri": lab_host.uri, "host_command": lab_host.command_prefix, "tenant": tenant,
                 "networks": [network]}
            )  # fmt: skip

        def ends(*names: str) -> list[dict]:
            return [
                {"zone": three.hosts[n].zone, "uri": three.hosts[n].uri, "underlay_ip": three.hosts[n].underlay_ip,
                 "underlay_dev": "ul0", "host_command": three.hosts[n].command_prefix}
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

    on_b = {"uri": b.uri, "tenant": "gamma", "host_command": b.command_prefix}
    engine.run_environment({**on_b, "networks": [network(2, 150)]})
    params = {
        "uri": a.uri,
        "host_command": a.command_prefix,
        "tenant": "gamma",
        "networks": [network(1, 100)],
        "zone_links": [{"name": "lan-ab", "network": "lan", "ends": link(lab)["ends"]}],
    }
    try:
        applied = run_module("environment", params)
        assert applied["changed"] and not applied["failed"], applied
        actions = [(c["kind"], c["action"]) for c in applied["plan"]]
        # The host's guard takes the new bridge right after the network is made.
        made = [("network", "create"), ("firewall", "update"), ("zone_link", "allocate")]
        assert actions == made + [("zone_link", "connect")] * 2
        for host in (a, b):
            (device,) = vxlan_devices(host)
            assert ("master virbr" in device and "state UNKNOWN" in device) or "UP" in device
        assert not run_module("environment", params)["changed"]
    finally:
        removed = run_module("environment", {**params, "state": "absent"})
        engine.run_environment({**on_b, "state": "absent"})
    assert removed["changed"] and not removed["failed"], removed
    assert vxlan_devices(a) == [] and vxlan_devices(b) == []
