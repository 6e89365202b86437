"""vce.kvm.tenant, vce.kvm.quota and the vm module's operator block through Ansible, against a
real libvirtd and a ledger the modules create themselves (migrations run inside Ansible's
module payload)."""

from __future__ import annotations

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.quota import KINDS

from tests.integration.helpers import domain
from tests.support.ansible_runner import run_module
from tests.support.images import register_image

pytestmark = pytest.mark.integration

PLANS = {
    "starter": {
        "quotas": {**dict.fromkeys(KINDS, 10), "vms": 2, "vcpus": 2},
        "trial_quotas": {**dict.fromkeys(KINDS, 10), "vms": 1, "vcpus": 2},
    }
}


@pytest.fixture
def own_ledger(tmp_path):
    """A ledger no one has opened yet: the first registration creates and migrates it."""
    return f"sqlite:///{tmp_path / 'fresh' / 'ledger.sqlite3'}"


def tenant_args(ledger, name, **extra):
    return {
        "ledger_url": ledger,
        "name": name,
        "customer": "BIN-990",
        "plan": "starter",
        "plans": PLANS,
        **extra,
    }


def vm_args(uri, ledger, tenant, image, name="web1", **extra):
    return {
        "uri": uri,
        "ledger_url": ledger,
        "tenant": tenant,
        "name": name,
        "vcpus": 1,
        "memory_mib": 96,
        "boot_disk": {"image": image, "size_gib": 1},
        "shutdown_timeout": 2,
        **extra,
    }


def test_register_check_then_apply_then_idempotent(own_ledger, tenant):
    name = f"{tenant}n"
    checked = run_module("tenant", tenant_args(own_ledger, name), check=True, diff=True)
    assert checked["changed"] and not checked["failed"], checked
    assert checked["tenant"] == {}
    assert checked["diff"]["after"][f"tenant/{name}"] == {"plan": "starter"}
    created = run_module("tenant", tenant_args(own_ledger, name))
    assert created["changed"], created
    assert created["tenant"]["state"] == "trial"
    assert created["tenant"]["quotas"]["vms"] == 1
    again = run_module("tenant", tenant_args(own_ledger, name))
    assert not again["changed"], again


def test_quota_breach_in_check_mode_names_limit_used_requested(
    uri, own_ledger, tenant, blank_image, blank_image_path
):
    assert run_module("tenant", tenant_args(own_ledger, tenant))["changed"]
    register_image(own_ledger, blank_image_path, name=blank_image)
    assert run_module("vm", vm_args(uri, own_ledger, tenant, blank_image, state="stopped"))[
        "changed"
    ]
    second = vm_args(uri, own_ledger, tenant, blank_image, name="web2", state="stopped")
    refused = run_module("vm", second, check=True)
    assert refused["failed"] and not refused["changed"]
    assert refused["quota_breaches"] == [{"quota": "vms", "limit": 1, "used": 1, "requested": 1}]
    assert "Quota exceeded for tenant" in refused["msg"] and "vce.kvm.quota" in refused["msg"]
    request = {
        "ledger_url": own_ledger,
        "tenant": tenant,
        "quotas": {"vms": 2},
        "requested_at": "2026-11-24T09:00:00+05:00",
        "reference": "ticket-1",
    }
    applied = run_module("quota", request)
    assert applied["changed"] and applied["request"]["requested_at"] == "2026-11-24T04:00:00+00:00"
    assert not run_module("quota", request)["changed"]
    assert run_module("vm", second)["changed"]


def test_bad_input_fails_clearly_and_changes_nothing(uri, own_ledger, tenant, blank_image):
    # A ledger that does not exist (a mistyped URL) is named, and nothing creates it but a
    # registration.
    missing = run_module("vm", vm_args(uri, own_ledger, f"{tenant}u", blank_image))
    assert missing["failed"] and "No ledger at" in missing["msg"]
    assert not run_module("tenant", tenant_args(own_ledger, f"{tenant}r")).get("failed")
    unknown = run_module("vm", vm_args(uri, own_ledger, f"{tenant}u", blank_image))
    assert unknown["failed"] and "is not in the ledger" in unknown["msg"]
    assert "Traceback" not in unknown["msg"]
    negative = run_module("tenant", tenant_args(own_ledger, tenant, quotas={"vcpus": -2}))
    assert negative["failed"] and negative["field"] == "quotas.vcpus"
    kind = run_module("quota", {"ledger_url": own_ledger, "tenant": tenant, "quotas": {"gpus": 1}})
    assert kind["failed"] and "unknown quota kind" in kind["msg"]
    plan = run_module("tenant", tenant_args(own_ledger, tenant, plan="gold"))
    assert plan["failed"] and plan["field"] == "plan"
    nothing = run_module("tenant", tenant_args(own_ledger, tenant), check=True)
    assert nothing["changed"] and nothing["tenant"] == {}  # still not registered


def test_operator_block_pauses_and_locks_a_vm(
    uri, own_ledger, conn, tenant, blank_image, blank_image_path
):
    assert run_module("tenant", tenant_args(own_ledger, tenant, quotas={"vms": 2}))["changed"]
    register_image(own_ledger, blank_image_path, name=blank_image)
    assert run_module("vm", vm_args(uri, own_ledger, tenant, blank_image))["changed"]
    block = {
        "uri": uri,
        "ledger_url": own_ledger,
        "tenant": tenant,
        "name": "web1",
        "blocked": True,
    }
    assert run_module("vm", block)["changed"]
    assert conn.lookupByName(f"{tenant}_web1").state()[0] == 3  # paused
    assert not run_module("vm", block)["changed"]
    held = run_module("vm", vm_args(uri, own_ledger, tenant, blank_image))
    assert not held["changed"] and not held["failed"], held
    grown = run_module("vm", vm_args(uri, own_ledger, tenant, blank_image, memory_mib=128))
    assert grown["failed"] and "blocked by the operator" in grown["msg"]
    assert domain(conn, f"{tenant}_web1").memory_mib == 96
    assert run_module("vm", {**block, "blocked": False})["changed"]
    assert conn.lookupByName(f"{tenant}_web1").state()[0] == 1  # running


def test_suspending_a_tenant_pauses_its_vms_until_resumed(
    uri, own_ledger, conn, tenant, blank_image, blank_image_path
):
    assert run_module("tenant", tenant_args(own_ledger, tenant))["changed"]
    register_image(own_ledger, blank_image_path, name=blank_image)
    assert run_module("vm", vm_args(uri, own_ledger, tenant, blank_image))["changed"]
    suspended = run_module("tenant", tenant_args(own_ledger, tenant, state="suspended", uri=uri))
    assert suspended["changed"] and suspended["tenant"]["state"] == "suspended"
    assert conn.lookupByName(f"{tenant}_web1").state()[0] == 3
    refused = run_module("vm", vm_args(uri, own_ledger, tenant, blank_image, state="stopped"))
    assert refused["failed"] and "suspended by the operator" in refused["msg"]
    resumed = run_module("tenant", tenant_args(own_ledger, tenant, state="active", uri=uri))
    assert resumed["tenant"]["state"] == "trial"  # back in its trial, which has started
    assert resumed["tenant"]["trial"]["started_at"] is not None
    assert conn.lookupByName(f"{tenant}_web1").state()[0] == 1
