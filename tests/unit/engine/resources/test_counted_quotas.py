"""The kinds the ledger counts itself (backup schedules, public IPs, zone links) count wherever
quotas and facts count: `info` shows them, and a quota or plan below what the tenant uses is
refused in check mode and for real, exactly like `vms`. The backup schedule is installed by
the engine on libvirt's test driver; the public IP and zone link rows are written as their
planners record them (their own tests make them on real hosts)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.backup_schedule import (
    run_backup_schedule,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.tenant import (
    run_quota,
    run_tenant,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import public_ips, zone_links
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.support.ledger import plan_catalog, register

from .conftest import URI
from .test_backup_schedule import Lab

NOW = dt.datetime(2026, 11, 24, 9, 0, tzinfo=dt.UTC)
COUNTED = ("backup_schedules", "public_ips", "zone_links", "vms")


@pytest.fixture
def used(tmp_path, any_ledger_url, connections):
    """acme with one VM, one backup schedule, one public IP and one zone link."""
    register(any_ledger_url, "acme")
    lab = Lab(tmp_path, any_ledger_url)
    run_backup_schedule(lab.params())
    with Ledger.open(any_ledger_url).store.read() as connection:
        connection.execute(
            public_ips.insert().values(
                address="203.0.113.5",
                zone="ala",
                pool="main",
                tenant="acme",
                name="www",
                host=URI,
                vm="web1",
                private_ip="10.20.0.10",
                allocated_at=NOW,
                updated_at=NOW,
            )
        )
        connection.execute(
            zone_links.insert().values(
                tenant="acme",
                name="ab",
                vni=4100,
                network="lan",
                cidr="10.50.0.0/24",
                ends=json.dumps([{"zone": "ala", "uri": URI}]),
                created_at=NOW,
            )
        )
    return any_ledger_url


def tenant_params(url: str, **extra) -> dict:
    return {
        "ledger_url": url, "name": "acme", "customer": "customer-of-acme", "plan": "lab",
        "plans": plan_catalog("lab"), **extra,
    }  # fmt: skip


def test_info_shows_every_counted_kind(used):
    usage = facade.run_info({"uri": URI, "tenant": "acme", "ledger_url": used})["ledger"]["usage"]
    assert {kind: usage[kind] for kind in COUNTED} == dict.fromkeys(COUNTED, 1)


@pytest.mark.parametrize("kind", COUNTED)
@pytest.mark.parametrize("check_mode", [True, False], ids=["check", "apply"])
def test_a_quota_request_below_usage_is_refused_for_every_counted_kind(used, kind, check_mode):
    with pytest.raises(SpecError) as refused:
        run_quota({"ledger_url": used, "tenant": "acme", "quotas": {kind: 0}}, check_mode)
    assert refused.value.field == "quotas"
    assert f"{kind}: limit 0 is below current usage 1" in refused.value.reason
    assert run_tenant(tenant_params(used), check_mode=True).facts["tenant"]["quotas"][kind] == 1000


@pytest.mark.parametrize("kind", COUNTED)
@pytest.mark.parametrize("check_mode", [True, False], ids=["check", "apply"])
def test_overrides_or_a_plan_below_usage_are_refused_for_every_counted_kind(used, kind, check_mode):
    with pytest.raises(SpecError) as refused:
        run_tenant(tenant_params(used, quotas={kind: 0}), check_mode)
    assert (refused.value.field, f"{kind}: limit 0" in refused.value.reason) == ("quotas", True)
    small = plan_catalog("small", **{kind: 0})
    with pytest.raises(SpecError) as refused:
        run_tenant(tenant_params(used, plan="small", plans=small), check_mode)
    assert (refused.value.field, f"{kind}: limit 0" in refused.value.reason) == ("plan", True)
    facts = run_tenant(tenant_params(used), check_mode=True).facts["tenant"]
    assert (facts["plan"], facts["quota_overrides"]) == ("lab", {})
