"""The live-or-restart rule for vCPUs and memory, case by case."""

from __future__ import annotations

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.plan import Plan
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.vm import (
    Dimension,
    plan_dimension,
)


def plan_for(wanted, wanted_max, config, config_max, live, live_max):
    calls: list[object] = []
    dimension = Dimension(
        "vcpus", "max_vcpus", wanted, wanted_max, config, config_max, live, live_max,
        lambda: calls.append("max"), lambda live_too: calls.append(("current", live_too)),
    )  # fmt: skip
    plan, restart = Plan(), []
    plan_dimension(plan, "web1", dimension, restart)
    plan.apply()
    changes = [(c.field, c.change_class.value, c.before, c.after) for c in plan.changes]
    return changes, restart, calls


@pytest.mark.parametrize(
    ("args", "changes", "restart", "calls"),
    [
        # unchanged, running
        ((2, 4, 2, 4, 2, 4), [], [], []),
        # grow within the running maximum: live, running VM included
        ((3, 4, 2, 4, 2, 4), [("vcpus", "live", 2, 3)], [], [("current", True)]),
        # only the running VM drifted (e.g. virsh setvcpus --live): corrected live
        ((2, 4, 2, 4, 3, 4), [("vcpus", "live", 3, 2)], [], [("current", True)]),
        # beyond the running maximum: definition now, VM at its next restart
        (
            (6, 8, 2, 4, 2, 4),
            [("max_vcpus", "restart", 4, 8), ("vcpus", "restart", 2, 6)],
            ["max_vcpus", "vcpus"],
            ["max", ("current", False)],
        ),
        # already written in an earlier run: nothing to change, restart still pending
        ((6, 8, 6, 8, 2, 4), [], ["max_vcpus", "vcpus"], []),
        # stopped VM: everything is a plain definition change
        (
            (6, 8, 2, 4, None, None),
            [("max_vcpus", "live", 4, 8), ("vcpus", "live", 2, 6)],
            [],
            ["max", ("current", False)],
        ),
    ],
)
def test_live_or_restart(args, changes, restart, calls):
    assert plan_for(*args) == (changes, restart, calls)
