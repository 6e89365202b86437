"""Ledger helpers for tests: plans and tenants registered the way an operator does it."""

from __future__ import annotations

from typing import Any

from ansible_collections.vce.kvm.plugins.module_utils.core.quota import KINDS
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.tenant import run_tenant
from ansible_collections.vce.kvm.plugins.module_utils.ledger import store as ledger_store

ROOMY = dict.fromkeys(KINDS, 1000)


def plan_catalog(
    name: str = "lab",
    trial_hours: int = 0,
    backup_frequencies: list[str] | None = None,
    **quotas: int,
) -> dict[str, Any]:
    plan: dict[str, Any] = {"quotas": {**ROOMY, **quotas}, "trial_hours": trial_hours}
    if backup_frequencies is not None:
        plan["backup_frequencies"] = backup_frequencies
    return {name: plan}


def register(
    url: str,
    tenant: str,
    plan: str = "lab",
    customer: str | None = None,
    backup_frequencies: list[str] | None = None,
    **quotas: int,
) -> dict:
    """Register `tenant` on a plan with roomy quotas (or the ones given) and no trial."""
    result = run_tenant(
        {
            "ledger_url": url,
            "name": tenant,
            "customer": customer or f"customer-of-{tenant}",
            "plan": plan,
            "plans": plan_catalog(plan, backup_frequencies=backup_frequencies, **quotas),
        }
    )
    return result.facts["tenant"]


def forget_stores() -> None:
    """Close every store this process opened (tests use a database per test)."""
    for store in list(ledger_store._stores.values()):
        store.dispose()


def unrecorded(url: str, usage_changes: list[dict]) -> list[dict]:
    """A run's reported usage changes, taken back out of the ledger: the engine records its
    changes itself (write-ahead intents), and a test of the callback or the recorder needs a
    change that only they write (as a public IP's, which the ledger meters itself)."""
    from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import usage_intervals
    from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

    keys = [change["key"] for change in usage_changes]
    with Ledger.open(url).store.read() as connection:
        connection.execute(usage_intervals.delete().where(usage_intervals.c.key.in_(keys)))
    return usage_changes
