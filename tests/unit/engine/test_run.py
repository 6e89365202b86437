"""How a run ends when the work batched after its changes fails: the changes were made, and the
error carries them."""

from __future__ import annotations

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import ApplyError, VceError
from ansible_collections.vce.kvm.plugins.module_utils.core.plan import Change, Plan
from ansible_collections.vce.kvm.plugins.module_utils.engine.run import Run, conclude


def no_facts(after, applied) -> dict:
    return {}


def test_a_failed_flush_reports_every_change_as_applied():
    made: list[str] = []
    plan = Plan()
    plan.add(Change("public_ip", "web", "allocate", run=lambda: made.append("web")))

    def flush() -> None:
        raise VceError("Failed to apply the nft batch")

    with pytest.raises(ApplyError) as failed:
        conclude(Run(plan, no_facts, flush=flush), check_mode=False)
    assert made == ["web"]
    assert [c["name"] for c in failed.value.applied] == ["web"] and failed.value.changed
    assert str(failed.value).startswith(
        "Failed to apply the nft batch (applied before the failure: all 1 changes: public_ip web "
        "allocate; failed: the work batched after them;"
    )


def test_a_flush_that_fails_with_a_bug_says_so_and_keeps_the_applied_changes():
    plan = Plan()
    plan.add(Change("public_ip", "web", "allocate", run=lambda: None))

    def flush() -> None:
        raise KeyError("handle")

    with pytest.raises(ApplyError) as failed:
        conclude(Run(plan, no_facts, flush=flush), check_mode=False)
    assert failed.value.unexpected and failed.value.changed
    assert str(failed.value).startswith("Unexpected error in vce.kvm (KeyError: 'handle')")
