"""A plan that fails part-way says exactly which changes were applied, and carries them on the
ApplyError for the front ends."""

from __future__ import annotations

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import ApplyError, VceError
from ansible_collections.vce.kvm.plugins.module_utils.core.plan import Change, Plan


def succeed() -> None:
    """A change that is made."""


def fail_with(error: Exception):
    def failing() -> None:
        raise error

    return failing


def plan_of(*runs) -> Plan:
    plan = Plan()
    for index, run in enumerate(runs):
        plan.add(Change("network", f"lan{index}", "create", run=run))
    return plan


def test_a_failure_mid_way_names_the_changes_applied_before_it():
    plan = plan_of(succeed, succeed, fail_with(VceError("Failed to create network")), succeed)
    with pytest.raises(ApplyError) as failed:
        plan.apply()
    assert str(failed.value) == (
        "Failed to create network (applied before the failure: 2 of 4 changes: network lan0 "
        "create, network lan1 create; failed: network lan2 create; not applied after it: 1; "
        "a re-run continues from here)"
    )
    assert [c["name"] for c in failed.value.applied] == ["lan0", "lan1"]
    assert failed.value.changed and not failed.value.unexpected


def test_a_first_change_that_fails_leaves_the_run_unchanged():
    with pytest.raises(ApplyError) as failed:
        plan_of(fail_with(VceError("no")), succeed).apply()
    assert failed.value.applied == [] and not failed.value.changed
    assert "applied before the failure: 0 of 2 changes; failed: network lan0 create;" in str(
        failed.value
    )


def test_what_a_failed_change_left_makes_the_run_changed():
    left = ApplyError("Failed to start domain acme_web1", left=["domain acme_web1"])
    with pytest.raises(ApplyError) as failed:
        plan_of(fail_with(left)).apply()
    assert failed.value.left == ["domain acme_web1"] and failed.value.changed
    assert "failed: network lan0 create, which left domain acme_web1 in place;" in str(failed.value)


def test_an_unexpected_error_still_reports_what_was_applied():
    with pytest.raises(ApplyError) as failed:
        plan_of(succeed, fail_with(KeyError("target"))).apply()
    assert failed.value.unexpected and failed.value.changed
    assert str(failed.value).startswith("Unexpected error in vce.kvm (KeyError: 'target')")
    assert isinstance(failed.value.__cause__, KeyError)


def test_changes_without_a_call_are_neither_run_nor_counted():
    plan = plan_of(succeed, fail_with(VceError("no")))
    plan.changes.insert(0, Change("plan", "small", "define"))
    with pytest.raises(ApplyError, match=r"applied before the failure: 1 of 2 changes"):
        plan.apply()


def test_a_plan_that_would_delete_one_object_twice_is_refused_naming_it():
    plan = Plan()
    for _twice in range(2):
        plan.add(Change("vm", "web1", "delete", run=lambda: None))
    with pytest.raises(VceError, match="would delete vm web1 twice: two objects on the host"):
        plan.check_acts_once()
    several = Plan([Change("vm", "web1", "update", field=f) for f in ("vcpus", "vcpus")])
    several.add(Change("zone_link", "ab", "delete", field="ends[0]"))
    several.add(Change("zone_link", "ab", "delete", field="ends[1]"))
    several.check_acts_once()  # updates, and one removal per end, are not acting twice
