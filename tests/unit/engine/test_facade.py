"""Plan logic against libvirt's test driver: create, idempotent re-run, live/restart classes,
ownership refusals. The test driver lacks uploads, block resize and DHCP leases, so those are
covered by the integration tests against a real libvirtd."""

from __future__ import annotations

import copy

import libvirt
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import (
    ApplyError,
    OwnershipError,
    SpecError,
    libvirt_action,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine
from ansible_collections.vce.kvm.plugins.module_utils.host import connection as host

from tests.support.images import make_image
from tests.support.ledger import register
from tests.support.testdriver import fresh_driver

URI = "test:///default"


@pytest.fixture
def fresh(monkeypatch, tmp_path, ledger_url):
    """A new test-driver connection per test: its state starts from the driver's defaults; the
    tenant is registered in a fresh ledger."""
    # Closed after the test, not left to the garbage collector: the driver keeps its objects
    # while any connection to it is open, and the next test would find them.
    driver = fresh_driver(monkeypatch)
    next(driver, None)
    register(ledger_url, "acme")
    register(ledger_url, "other")
    image = tmp_path / "base.qcow2"
    make_image(image)
    yield str(image)
    next(driver, None)


def declaration(image: str) -> dict:
    return {
        "uri": URI,
        "tenant": "acme",
        "default_pool": "default-pool",
        "networks": [{"name": "lan", "cidr": "10.20.0.0/24"}],
        "disks": [{"name": "data1", "size_gib": 2}],
        "vms": [
            {
                "name": "web1",
                "vcpus": 1,
                "max_vcpus": 2,
                "memory_mib": 128,
                "boot_disk": {"image": image, "size_gib": 1},
                "disks": ["data1"],
                "nics": [{"network": "lan", "ip": "10.20.0.10"}],
            }
        ],
    }


def test_check_mode_plans_and_changes_nothing(fresh):
    params = declaration(fresh)
    result = engine.run_environment(params, check_mode=True)
    assert [(c["kind"], c["action"]) for c in result.plan] == [
        ("network", "create"),
        ("disk", "create"),
        ("vm", "create"),
    ]
    conn = host.connect(URI)
    assert not any(d.name().startswith("acme_") for d in conn.listAllDomains(0))


def test_apply_then_rerun_is_unchanged(fresh):
    params = declaration(fresh)
    assert engine.run_environment(params).changed
    again = engine.run_environment(params)
    assert not again.changed
    assert again.plan == []


def test_vcpu_within_maximum_is_live_memory_beyond_is_restart(fresh):
    params = declaration(fresh)
    engine.run_environment(params)
    changed = copy.deepcopy(params)
    changed["vms"][0]["vcpus"] = 2
    changed["vms"][0]["memory_mib"] = 256
    result = engine.run_environment(changed, check_mode=True)
    classes = {c.get("field"): c["class"] for c in result.plan}
    assert classes["vcpus"] == "live"
    assert classes["memory_mib"] == "restart"
    assert classes["max_memory_mib"] == "restart"
    assert result.pending_restart and "allow_restart" in result.pending_restart[0]


def test_domain_of_nobody_is_refused(fresh):
    conn = host.connect(URI)
    conn.defineXML(
        "<domain type='test'><name>acme_web1</name><memory>131072</memory>"
        "<os><type>hvm</type></os></domain>"
    )
    with pytest.raises(OwnershipError, match=r"not created by vce\.kvm"):
        engine.run_environment(declaration(fresh), check_mode=True)


def test_unknown_pool_is_refused(fresh):
    params = declaration(fresh)
    params["disks"][0]["pool"] = "nope"
    with pytest.raises(SpecError) as caught:
        engine.run_environment(params, check_mode=True)
    assert caught.value.field == "disks[0].pool"
    assert "unknown storage pool 'nope'" in caught.value.reason


def test_overlap_with_existing_network_of_tenant_is_refused(fresh):
    engine.run_environment(declaration(fresh))
    with pytest.raises(SpecError, match="overlaps network 'lan'"):
        engine.run_network(
            {"uri": URI, "tenant": "acme", "name": "other", "cidr": "10.20.0.0/25"},
            check_mode=True,
        )


def test_libvirt_errors_name_action_and_object(fresh):
    expected = pytest.raises(ApplyError, match=r"^Failed to start domain acme_x: boom")
    with expected, libvirt_action("start", "domain acme_x"):
        raise libvirt.libvirtError("boom")
