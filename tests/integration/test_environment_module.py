"""vce.kvm.environment: a whole tenant in one call - check, apply, read back, no-op re-run,
drift, prune, absent - and vce.kvm.info reading it back."""

from __future__ import annotations

import copy

import pytest

from tests.integration.helpers import domain, network_hosts, tenant_objects, volume
from tests.support.ansible_runner import run_module

pytestmark = pytest.mark.integration


def declaration(uri, tenant, image, subnet):
    return {
        "uri": uri,
        "tenant": tenant,
        "shutdown_timeout": 1,
        "networks": [{"name": "lan", "cidr": f"{subnet}.0/24", "mode": "isolated"}],
        "disks": [{"name": "data1", "size_gib": 1}],
        "vms": [
            {
                "name": "web1",
                "memory_mib": 64,
                "boot_disk": {"image": image, "size_gib": 1},
                "disks": ["data1"],
                "nics": [{"network": "lan", "ip": f"{subnet}.10"}],
            },
            {
                "name": "web2",
                "memory_mib": 64,
                "boot_disk": {"image": image, "size_gib": 1},
                "nics": [{"network": "lan", "ip": f"{subnet}.11"}],
                "state": "stopped",
            },
        ],
    }


def test_environment_lifecycle(uri, conn, tenant, subnet, blank_image):
    env = declaration(uri, tenant, blank_image, subnet)

    checked = run_module("environment", env, check=True, diff=True)
    # The host's guard table follows the new network's bridge, before the VMs start.
    assert [(c["kind"], c["name"], c["action"]) for c in checked["plan"]] == [
        ("network", "lan", "create"),
        ("firewall", "vce_guard", "create"),
        ("disk", "data1", "create"),
        ("vm", "web1", "create"),
        ("vm", "web2", "create"),
    ]
    assert set(checked["diff"]["after"]) == {
        "network/lan", "firewall/vce_guard", "disk/data1", "vm/web1", "vm/web2",
    }  # fmt: skip
    assert tenant_objects(conn, tenant) == set()

    applied = run_module("environment", env)
    assert applied["changed"] is True, applied
    assert domain(conn, f"{tenant}_web1").state == "running"
    assert domain(conn, f"{tenant}_web2").state == "shutoff"
    assert any(d.serial == "data1" for d in domain(conn, f"{tenant}_web1").disks)
    hosts = network_hosts(conn, f"{tenant}_lan")
    assert sorted(str(h.ip) for h in hosts.values()) == [f"{subnet}.10", f"{subnet}.11"]
    facts = applied["environment"]
    assert facts["vms"]["web1"]["nics"][0]["ip"] == f"{subnet}.10"
    assert facts["disks"]["data1"]["attached_to"] == "web1"

    again = run_module("environment", env)
    assert again["changed"] is False, again["plan"]

    # Drift: web2 started by hand, web1's saved memory changed by hand.
    conn.lookupByName(f"{tenant}_web2").create()
    conn.lookupByName(f"{tenant}_web1").setMemoryFlags(48 * 1024, 2)
    drift = run_module("environment", env, check=True)
    assert {(c["name"], c.get("field")) for c in drift["plan"]} >= {
        ("web2", "state"),
        ("web1", "memory_mib"),
    }
    assert run_module("environment", env)["changed"] is True
    assert domain(conn, f"{tenant}_web2").state == "shutoff"
    assert domain(conn, f"{tenant}_web1").memory_mib == 64
    assert run_module("environment", env)["changed"] is False

    info = run_module("info", {"uri": uri, "tenant": tenant})
    assert info["changed"] is False
    assert set(info["vms"]) == {"web1", "web2"}
    assert info["networks"]["lan"]["cidr"] == f"{subnet}.0/24"

    # web2 leaves the declaration: kept and reported without prune, deleted with it.
    smaller = copy.deepcopy(env)
    smaller["vms"] = smaller["vms"][:1]
    kept = run_module("environment", smaller)
    assert kept["changed"] is False
    assert domain(conn, f"{tenant}_web2") is not None
    assert "vm web2" in kept["_stderr"] or kept.get("warnings")
    pruned = run_module("environment", {**smaller, "prune": True})
    assert [(c["name"], c["action"]) for c in pruned["plan"]] == [("web2", "delete")]
    assert domain(conn, f"{tenant}_web2") is None
    assert volume(conn, "default", f"{tenant}_web2.boot.qcow2") is None

    gone = run_module("environment", {"uri": uri, "tenant": tenant, "state": "absent"})
    assert gone["changed"] is True
    assert tenant_objects(conn, tenant) == set()
    assert (
        run_module("environment", {"uri": uri, "tenant": tenant, "state": "absent"})["changed"]
        is False
    )


def test_bad_environment_changes_nothing(uri, conn, tenant, subnet, blank_image):
    env = declaration(uri, tenant, blank_image, subnet)
    env["networks"].append({"name": "lan2", "cidr": f"{subnet}.128/25"})
    result = run_module("environment", env)
    assert result["failed"] and result["field"] == "networks[1].cidr"
    assert "overlaps network 'lan'" in result["msg"]
    env = declaration(uri, tenant, blank_image, subnet)
    env["vms"][1]["nics"][0]["ip"] = f"{subnet}.10"
    duplicate = run_module("environment", env)
    assert duplicate["failed"] and duplicate["field"] == "vms[1].nics[0].ip"
    assert tenant_objects(conn, tenant) == set()
