"""vce.kvm.drift and vce.kvm.drift_report through the real `ansible` command: read-only in every
mode, diff, the reports written once and left alone when unchanged, bad input refused with the
field and the reason. Objects defined by hand with a tenant's prefix (no ownership
metadata, a copy of a VM's) are reported as unowned and duplicated and never removed or counted.
(The rest of the hand-made drift is tested on a lab host: tests/multihost/test_drift.py.)"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from tests.integration.helpers import tenant_objects
from tests.support.ansible_runner import run_module
from tests.support.ledger import plan_catalog

pytestmark = pytest.mark.integration


def network(name: str, cidr: str) -> dict:
    return {"name": name, "cidr": cidr, "mode": "isolated"}


def test_drift_module_reads_only_and_reports_each_object(uri, ledger_url, tenant, subnet):
    args = {
        "uri": uri,
        "ledger_url": ledger_url,
        "host_name": "kvm1",
        "tenants": {tenant: {"networks": [network("lan", f"{subnet}.0/24")], "plan": "ignored"}},
        "only_tenants": [tenant],
    }
    first = run_module("drift", args, check=True, diff=True)
    assert not first["failed"] and first["changed"] is False, first
    assert first["drifted"] is True
    (case,) = first["cases"]
    assert (case["host"], case["tenant"], case["kind"], case["name"], case["status"]) == (
        "kvm1", tenant, "network", "lan", "missing",
    )  # fmt: skip
    assert f"kvm1/{tenant}/network/lan" in first["diff"]["after"]

    applied = run_module(
        "environment", {"uri": uri, "ledger_url": ledger_url, "tenant": tenant,
                        "networks": [network("lan", f"{subnet}.0/24")]},
    )  # fmt: skip
    assert applied["changed"], applied
    again = run_module("drift", args)
    assert again["changed"] is False and again["drifted"] is False
    assert again["summary"] == {
        "resources": 1, "in_sync": 1, "drifted": 0, "missing": 0, "orphan": 0, "unowned": 0,
        "duplicated": 0, "error": 0,
    }  # fmt: skip


def define_intruders(conn, tenant: str) -> None:
    """By hand, as someone with the host's libvirt would: a domain with the tenant's prefix and
    no ownership metadata, and a copy of web1 with its metadata (devices left out, so that the
    copy shares no disk or MAC with it)."""
    conn.defineXML(
        f"<domain type='qemu'><name>{tenant}_extra</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )
    root = ET.fromstring(conn.lookupByName(f"{tenant}_web1").XMLDesc(0))
    root.find("name").text = f"{tenant}_copy"
    for element in (root.find("uuid"), root.find("devices")):
        root.remove(element)
    conn.defineXML(ET.tostring(root, encoding="unicode"))


def test_hand_defined_intruders_are_reported_and_never_removed_or_counted(
    uri, conn, ledger_url, tenant, subnet, pool, blank_image, tmp_path
):
    declared = {
        "networks": [network("lan", f"{subnet}.0/24")],
        "vms": [{"name": "web1", "vcpus": 1, "memory_mib": 96, "state": "stopped",
                 "boot_disk": {"image": blank_image, "size_gib": 1},
                 "nics": [{"network": "lan", "ip": f"{subnet}.10"}]}],
    }  # fmt: skip
    made = run_module(
        "environment",
        {"uri": uri, "ledger_url": ledger_url, "tenant": tenant, "default_pool": pool, **declared},
    )
    assert made["changed"] and not made["failed"], made
    define_intruders(conn, tenant)
    args = {
        "uri": uri, "ledger_url": ledger_url, "host_name": "kvm1", "only_tenants": [tenant],
        "tenants": {tenant: declared}, "default_pool": pool,
    }  # fmt: skip
    found = run_module("drift", args)
    assert not found["failed"], found
    statuses = {(c["kind"], c["name"]): c["status"] for c in found["cases"]}
    assert statuses == {
        ("network", "lan"): "in_sync",
        ("vm", "web1"): "in_sync",
        ("vm", f"{tenant}_extra"): "unowned",
        ("vm", f"{tenant}_copy"): "duplicated",
    }
    assert (found["summary"]["unowned"], found["summary"]["duplicated"]) == (1, 1)
    reports = {"json_path": str(tmp_path / "d.json"), "junit_path": str(tmp_path / "d.xml")}
    written = run_module("drift_report", {"cases": found["cases"], **reports})
    assert written["changed"] and written["drifted"] is True, written
    junit = ET.parse(tmp_path / "d.xml").getroot()
    failures = {c.get("name"): c.find("failure") for c in junit.iter("testcase")}
    assert failures[f"{tenant}_copy"].get("type") == "duplicated"
    assert "carries the ownership metadata of vm 'web1'" in failures[f"{tenant}_copy"].text
    assert failures[f"{tenant}_extra"].get("type") == "unowned"
    assert failures["web1"] is None

    absent = {"uri": uri, "ledger_url": ledger_url, "tenant": tenant, "state": "absent"}
    removed = run_module("environment", absent)
    assert removed["changed"] and not removed["failed"], removed
    deletions = sorted((c["kind"], c["name"]) for c in removed["plan"])
    # The host's guard table drops the deleted network's bridge.
    assert deletions == [("firewall", "vce_guard"), ("network", "lan"), ("vm", "web1")]
    assert tenant_objects(conn, tenant) == {f"domain:{tenant}_extra", f"domain:{tenant}_copy"}
    again = run_module("environment", absent)
    assert not again["changed"] and not again["failed"], again
    closed = run_module(
        "tenant",
        {"ledger_url": ledger_url, "name": tenant, "customer": f"customer-of-{tenant}",
         "plan": "lab", "plans": plan_catalog("lab"), "state": "closed"},
    )  # fmt: skip
    assert not closed["failed"] and closed["tenant"]["state"] == "closed", closed
    # With web1 gone, the copy's metadata names nothing real: it is unowned.
    left = run_module("drift", {**args, "tenants": {}})
    assert {(c["name"], c["status"]) for c in left["cases"]} == {
        (f"{tenant}_extra", "unowned"), (f"{tenant}_copy", "unowned"),
    }  # fmt: skip


def test_drift_module_reports_an_unreachable_host_as_an_error_case(ledger_url):
    result = run_module(
        "drift", {"uri": "qemu:///system?socket=/nonexistent/sock", "ledger_url": ledger_url}
    )
    assert not result["failed"], result
    (case,) = result["cases"]
    assert case["status"] == "error" and "Failed to connect to libvirt" in case["message"]


@pytest.mark.parametrize(
    ("tenants", "field", "reason"),
    [
        ({"Bad Name": {}}, "tenants", "lowercase"),
        ({"acme": ["not", "a", "mapping"]}, "tenants.acme", "must be a mapping"),
    ],
)
def test_drift_module_refuses_bad_declarations(uri, ledger_url, tenants, field, reason):
    result = run_module("drift", {"uri": uri, "ledger_url": ledger_url, "tenants": tenants})
    assert result["failed"] and result["field"] == field and reason in result["reason"], result


CASES = [
    {"host": "kvm1", "tenant": "acme", "kind": "vm", "name": "web1", "status": "drifted",
     "message": None,
     "differences": [{"action": "update", "field": "vcpus", "declared": 2, "actual": 1,
                      "class": "live"}]},
    {"host": "kvm1", "tenant": "acme", "kind": "disk", "name": "data1", "status": "in_sync",
     "message": None, "differences": []},
    {"host": "kvm2", "tenant": "", "kind": "host", "name": "qemu+ssh://kvm2/system",
     "status": "error", "message": "Failed to connect", "differences": []},
]  # fmt: skip


def test_drift_report_writes_json_and_junit_once(tmp_path):
    args = {
        "cases": CASES,
        "json_path": str(tmp_path / "out" / "drift.json"),
        "junit_path": str(tmp_path / "out" / "drift.xml"),
    }
    checked = run_module("drift_report", args, check=True)
    assert checked["changed"] and not (tmp_path / "out").exists()

    written = run_module("drift_report", args)
    assert written["changed"] and written["drifted"] is True
    document = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert document["summary"] == {
        "resources": 3, "in_sync": 1, "drifted": 1, "missing": 0, "orphan": 0, "unowned": 0,
        "duplicated": 0, "error": 1,
    }  # fmt: skip
    assert document["cases"] == CASES
    root = ET.parse(tmp_path / "out" / "drift.xml").getroot()
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "1", "1")
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"kvm1", "kvm2"}
    web1 = suites["kvm1"].find("testcase[@name='web1']")
    assert web1.get("classname") == "kvm1.acme.vm"
    assert "vcpus: declared 2, actual 1" in web1.find("failure").text
    assert suites["kvm2"].find("testcase/error").get("message") == "Failed to connect"

    again = run_module("drift_report", args)
    assert again["changed"] is False and again["written"] == []


def test_drift_report_refuses_what_is_not_a_case(tmp_path):
    result = run_module(
        "drift_report",
        {"cases": [{"host": "kvm1", "status": "fine"}], "json_path": str(tmp_path / "x.json")},
    )
    assert result["failed"] and result["field"] == "cases[0]", result
    assert "needs tenant, kind, name" in result["reason"]
    assert not (tmp_path / "x.json").exists()
