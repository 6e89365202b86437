"""vce.kvm.public_ip across the multi-host lab, with real packets: a tiny guest on kvm-a answers
ping and HTTP from the internet namespace at its public IP, its outbound connections leave as
that address, rebinding keeps the address, and after absent nothing is left on the host."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import libvirt
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine

from tests.multihost.helpers import console_logs_on, run_module_on, wait_until_answers
from tests.support.ansible_runner import run_module
from tests.support.images import TINY_GUEST
from tests.support.ledger import register
from tools.cleanup import remove_prefixed
from tools.multihost import LabHost, MultiHostLab

pytestmark = [pytest.mark.multihost, pytest.mark.guest]
ZONE = {
    "uplink": "up0",
    "public_pools": [{"name": "pub-a", "cidr": "203.0.113.64/27", "gateway": "203.0.113.1"}],
}
TINY_ZONE = {  # one assignable address: .98 (.97 is the gateway)
    "uplink": "up0",
    "public_pools": [{"name": "tiny", "cidr": "203.0.113.96/30", "gateway": "203.0.113.97"}],
}
SERVER = """
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        print(self.client_address[0], flush=True)
        self.send_response(200); self.end_headers(); self.wfile.write(b"token-7f3a")
    def log_message(self, *args):
        pass
http.server.HTTPServer(("203.0.113.1", 8080), Handler).serve_forever()
"""


@pytest.fixture(scope="module")
def kvm_a(lab: MultiHostLab) -> LabHost:
    return lab.hosts["kvm-a"]


def environment(host: LabHost, tenant: str, image: str, third_octet: int, **states: str) -> dict:
    """A routed network (to zone-a's uplink) and one VM per keyword (name=state), addresses
    .10, .11, ..."""
    return {
        "uri": host.ssh_uri,
        "tenant": tenant,
        "zone": "zone-a",
        "zone_config": ZONE,
        "host_command": host.ssh_command,
        "networks": [
            {"name": "lan", "cidr": f"10.60.{third_octet}.0/24", "mode": "routed"},
            {"name": "quiet", "cidr": f"10.61.{third_octet}.0/24", "mode": "isolated"},
        ],
        "vms": [
            {
                "name": name,
                "memory_mib": 96,
                "boot_disk": {"image": image, "size_gib": 1},
                "nics": [nic(name, third_octet, i)],
                "state": state,
            }
            for i, (name, state) in enumerate(states.items())
        ],
    }


def nic(vm: str, third_octet: int, index: int) -> dict:
    """VM "hidden" sits on the isolated network; the others on the routed one."""
    if vm == "hidden":
        return {"network": "quiet", "ip": f"10.61.{third_octet}.10"}
    return {"network": "lan", "ip": f"10.60.{third_octet}.{10 + index}"}


@pytest.fixture(scope="module")
def acme(lab, kvm_a, ledger_url) -> Iterator[str]:
    """Tenant acme on kvm-a: web1 running (the tiny guest), web2 stopped, hidden (isolated)."""
    register(ledger_url, "acme", public_ips=3)
    try:
        with console_logs_on(kvm_a):
            params = environment(
                kvm_a,
                "acme",
                TINY_GUEST,
                1,
                web1="running",
                web2="stopped",
                hidden="stopped",
            )
            engine.run_environment(params)
        wait_until_answers(kvm_a, "10.60.1.10")
        yield "acme"
    finally:
        remove_prefixed(libvirt.open(kvm_a.ssh_uri), "acme_")


@pytest.fixture(scope="module")
def rival(lab, kvm_a, ledger_url, acme) -> str:
    """Another tenant on kvm-a with a stopped VM on its own routed network."""
    register(ledger_url, "rival")
    engine.run_environment(environment(kvm_a, "rival", TINY_GUEST, 2, db1="stopped", db2="stopped"))
    return "rival"


def pip(host: LabHost, tenant: str, name: str, zone: dict | None = None, **extra) -> dict:
    return {
        "uri": host.ssh_uri,
        "tenant": tenant,
        "name": name,
        "zone": "zone-a",
        "zone_config": zone or ZONE,
        "host_command": host.ssh_command,
        **extra,
    }


def nat_rules(host: LabHost) -> list[str]:
    """Comments of the rules in the project's table on the host."""
    listing = host.ssh(["nft", "-j", "list", "ruleset", "ip"], check=True).stdout
    items = json.loads(listing)["nftables"]
    return sorted(
        i["rule"].get("comment", "")
        for i in items
        if "rule" in i and i["rule"]["table"] == "vce_nat"
    )


def uplink_addresses(host: LabHost) -> set[str]:
    shown = json.loads(
        host.ssh(["ip", "-j", "-4", "addr", "show", "dev", "up0"], check=True).stdout
    )
    return {a["local"] for link in shown for a in link["addr_info"]}


def from_internet(lab: MultiHostLab, url: str) -> str:
    code = (
        f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=10).read().decode())"
    )
    proc = lab.inet_run([sys.executable, "-c", code], timeout=30)
    return proc.stdout.strip() if proc.returncode == 0 else f"FAILED: {proc.stderr.strip()[-300:]}"


def pings(lab: MultiHostLab, address: str) -> bool:
    return any(
        lab.inet_run(["ping", "-c", "1", "-W", "1", address]).returncode == 0 for _try in range(3)
    )


def test_public_ip_reaches_the_guest_and_its_traffic_leaves_as_that_address(
    lab, kvm_a, acme, ledger_url
):
    checked = run_module("public_ip", pip(kvm_a, acme, "web", vm="web1"), check=True, diff=True)
    assert checked["changed"] and not checked["failed"], checked
    assert [c["action"] for c in checked["plan"]] == ["allocate", "bind"]
    assert nat_rules(kvm_a) == []

    # Bound as a playbook binds it: on the host, over Ansible's SSH connection.
    bound = run_module_on(
        kvm_a, "public_ip", {**pip(kvm_a, acme, "web", vm="web1"), "ledger_url": ledger_url}
    )
    assert bound["changed"], bound
    address = bound["public_ip"]["address"]
    assert address == "203.0.113.65" and bound["public_ip"]["bound"]
    comment = f"vce:acme:web:{address}:10.60.1.10"
    assert nat_rules(kvm_a) == [comment] * 3
    assert address in uplink_addresses(kvm_a)
    assert not run_module("public_ip", pip(kvm_a, acme, "web", vm="web1"))["changed"]

    assert pings(lab, address)
    assert from_internet(lab, f"http://{address}/") == "web1 10.60.1.10"
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab.internet_netns, sys.executable, "-c", SERVER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1)
        fetched = from_internet(lab, f"http://{address}/cgi-bin/fetch?http://203.0.113.1:8080/x")
        assert fetched == "token-7f3a"
    finally:
        server.terminate()
        seen = server.communicate(timeout=10)[0].split()
    assert seen == [address]  # the guest's own request arrived from its public IP

    # A rule removed by hand is put back.
    kvm_a.ssh(["nft", "flush", "chain", "ip", "vce_nat", "postrouting"], check=True)
    repaired = run_module("public_ip", pip(kvm_a, acme, "web", vm="web1"))
    assert [c["action"] for c in repaired.get("plan", [])] == ["bind"], repaired
    assert nat_rules(kvm_a) == [comment] * 3


def test_rebinding_keeps_the_address_and_absent_leaves_nothing(lab, kvm_a, acme):
    first = run_module("public_ip", pip(kvm_a, acme, "web", vm="web1"))["public_ip"]["address"]
    moved = run_module("public_ip", pip(kvm_a, acme, "web", vm="web2"))
    assert [c["action"] for c in moved["plan"]] == ["rebind", "bind"]
    assert moved["public_ip"]["address"] == first
    assert nat_rules(kvm_a) == [f"vce:acme:web:{first}:10.60.1.11"] * 3

    gone = run_module("public_ip", pip(kvm_a, acme, "web", state="absent"))
    assert [c["action"] for c in gone["plan"]] == ["unbind", "release"]
    assert gone["public_ip"] == {}
    assert nat_rules(kvm_a) == []
    assert first not in uplink_addresses(kvm_a)
    assert not pings(lab, first)
    assert not run_module("public_ip", pip(kvm_a, acme, "web", state="absent"))["changed"]
    again = run_module("public_ip", pip(kvm_a, acme, "other", vm="web1"))
    assert again["public_ip"]["address"] == first  # released addresses are reused
    assert run_module("public_ip", pip(kvm_a, acme, "other", state="absent"))["changed"]


def test_bad_public_ip_input_changes_nothing(kvm_a, acme, rival):
    taken = run_module("public_ip", pip(kvm_a, rival, "db", vm="db1", address="203.0.113.70"))
    assert taken["changed"], taken
    cases = [
        (
            pip(kvm_a, acme, "x", vm="web1", address="198.51.100.5"),
            "address",
            "outside zone zone-a",
        ),
        (pip(kvm_a, acme, "x", vm="web1", address="203.0.113.70"), "address", "already taken"),
        (pip(kvm_a, acme, "x", vm="nope"), "vm", "unknown VM 'nope'"),
        (pip(kvm_a, acme, "x", vm="db1"), "vm", "unknown VM 'db1'"),  # rival's VM
        (pip(kvm_a, acme, "x", vm="hidden"), "network", "needs a routed network"),
        (pip(kvm_a, acme, "x", vm="web1", network="nope"), "network", "has no NIC on network nope"),
    ]
    before = nat_rules(kvm_a)
    for args, field, reason in cases:
        result = run_module("public_ip", args)
        assert result["failed"] and not result["changed"], result
        assert result["field"] == field and reason in result["msg"], result
    tiny = run_module("public_ip", pip(kvm_a, rival, "db2", vm="db2", zone=TINY_ZONE))
    assert tiny["public_ip"]["address"] == "203.0.113.98"
    exhausted = run_module("public_ip", pip(kvm_a, acme, "x", vm="web2", zone=TINY_ZONE))
    assert exhausted["failed"] and "exhausted" in exhausted["msg"]
    assert nat_rules(kvm_a) == sorted(before + ["vce:rival:db2:203.0.113.98:10.60.2.11"] * 3)
    for name, zone in (("db", ZONE), ("db2", TINY_ZONE)):
        assert run_module("public_ip", pip(kvm_a, rival, name, zone=zone, state="absent"))[
            "changed"
        ]


def allocate(args: dict) -> str:
    os.environ["VCE_LEDGER_URL"] = args.pop("ledger_url")
    from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.public_ip import (
        run_public_ip,
    )

    return run_public_ip(args).facts["public_ip"]["address"]


def test_two_tenants_at_once_never_get_the_same_address(kvm_a, acme, rival, ledger_url):
    jobs = [
        {**pip(kvm_a, acme, "race", vm="web2"), "ledger_url": ledger_url},
        {**pip(kvm_a, rival, "race", vm="db2"), "ledger_url": ledger_url},
    ]
    with multiprocessing.get_context("spawn").Pool(2) as workers:
        addresses = workers.map(allocate, jobs, chunksize=1)
    assert len(set(addresses)) == 2, addresses
    for tenant in (acme, rival):
        assert run_module("public_ip", pip(kvm_a, tenant, "race", state="absent"))["changed"]
    assert nat_rules(kvm_a) == []


ZONE_B = {
    "uplink": "up0",
    "public_pools": [{"name": "pub-b", "cidr": "203.0.113.96/27", "gateway": "203.0.113.1"}],
}


def test_environment_declares_vms_and_their_public_ips_in_one_run(lab, ledger_url, acme):
    kvm_b = lab.hosts["kvm-b"]
    params = {
        **environment(kvm_b, acme, TINY_GUEST, 3, app1="stopped", app2="stopped"),
        "public_ips": [
            {"name": "app1", "vm": "app1"},
            {"name": "app2", "vm": "app2", "address": "203.0.113.120"},
        ],
        "zone": "zone-b",
        "zone_config": ZONE_B,
        "host_command": kvm_b.ssh_command,
    }
    try:
        checked = run_module("environment", params, check=True)
        assert checked["changed"] and not checked["failed"], checked
        allocations = [c for c in checked["plan"] if c["action"] == "allocate"]
        assert [c["after"] for c in allocations] == ["(known after apply)", "203.0.113.120"]
        applied = run_module("environment", params)
        assert applied["changed"], applied
        ips = applied["environment"]["public_ips"]
        assert {n: (ip["address"], ip["bound"]) for n, ip in ips.items()} == {
            "app1": ("203.0.113.97", True),
            "app2": ("203.0.113.120", True),
        }
        assert nat_rules(kvm_b) == sorted(
            ["vce:acme:app1:203.0.113.97:10.60.3.10"] * 3
            + ["vce:acme:app2:203.0.113.120:10.60.3.11"] * 3
        )
        assert not run_module("environment", params)["changed"]
    finally:
        absent = {**params, "state": "absent"}
        removed = run_module("environment", absent)
    assert removed["changed"] and not removed["failed"], removed
    assert nat_rules(kvm_b) == []
    assert not {"203.0.113.97", "203.0.113.120"} & uplink_addresses(kvm_b)
