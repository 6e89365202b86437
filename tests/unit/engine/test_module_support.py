"""What every vce.kvm module reports through run_module: the result as Ansible's exit_json
gets it, and each kind of failure as fail_json gets it (never a raw traceback)."""

from __future__ import annotations

from typing import Any

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import (
    ApplyError,
    SpecError,
    VceError,
)
from ansible_collections.vce.kvm.plugins.module_utils.core.quota import Breach, QuotaExceeded
from ansible_collections.vce.kvm.plugins.module_utils.core.result import Result
from ansible_collections.vce.kvm.plugins.module_utils.engine import module_support as support


class Exited(Exception):
    """AnsibleModule.exit_json and fail_json end the module: so do these."""


class StandInModule:
    """The attributes of AnsibleModule that run_module uses."""

    def __init__(self, params: dict[str, Any], check_mode: bool = False, diff: bool = False):
        self.params = params
        self.check_mode = check_mode
        self._diff = diff
        self.warnings: list[str] = []
        self.outcome: tuple[str, dict[str, Any]] | None = None

    def warn(self, warning: str) -> None:
        self.warnings.append(warning)

    def exit_json(self, **kwargs: Any) -> None:
        self.outcome = ("exit", kwargs)
        raise Exited

    def fail_json(self, **kwargs: Any) -> None:
        self.outcome = ("fail", kwargs)
        raise Exited


def run(action, check_mode=False, diff=False, params=None) -> tuple[str, dict, StandInModule]:
    module = StandInModule(params or {"tenant": "acme"}, check_mode, diff)
    with pytest.raises(Exited):
        support.run_module(module, action)
    assert module.outcome is not None
    return (*module.outcome, module)


def result(**facts) -> Result:
    return Result(
        changed=True,
        plan=[{"kind": "vm", "name": "web1", "action": "create"}],
        diff={"before": {}, "after": {"vm": "web1"}},
        warnings=["pool almost full"],
        pending_restart=[],
        facts=facts,
    )


def test_the_result_is_reported_with_warnings_and_facts_and_the_diff_only_when_asked():
    seen = {}

    def action(params, check_mode):
        seen.update(params=params, check_mode=check_mode)
        return result(vm={"name": "web1"})

    how, output, module = run(action, check_mode=True)
    assert seen == {"params": {"tenant": "acme"}, "check_mode": True}
    assert how == "exit"
    assert output["changed"] is True
    assert output["vm"] == {"name": "web1"}
    assert output["plan"][0]["action"] == "create"
    assert "diff" not in output and "warnings" not in output
    assert module.warnings == ["pool almost full"]
    _how, output, _module = run(action, diff=True)
    assert output["diff"] == {"before": {}, "after": {"vm": "web1"}}


def test_a_spec_error_names_the_field_and_changes_nothing():
    def action(params, check_mode):
        raise SpecError("vms[0].vcpus", "must be at least 1")

    how, output, _module = run(action)
    assert how == "fail"
    assert output["field"] == "vms[0].vcpus"
    assert output["reason"] == "must be at least 1"
    assert "vms[0].vcpus" in output["msg"] and output["changed"] is False


def test_a_quota_breach_lists_each_quota_in_its_unit_gib_as_exact_decimals():
    breaches = [Breach("ram_gib", 4, 3 * 1024, 1536), Breach("vms", 2, 2, 1)]

    def action(params, check_mode):
        raise QuotaExceeded("acme", breaches)

    how, output, _module = run(action)
    assert how == "fail" and output["changed"] is False
    assert "Quota exceeded for tenant acme" in output["msg"]
    assert output["quota_breaches"] == [
        {"quota": "ram_gib", "limit": 4, "used": "3", "requested": "1.5"},
        {"quota": "vms", "limit": 2, "used": 2, "requested": 1},
    ]


def test_an_engine_error_is_its_message():
    def action(params, check_mode):
        raise VceError("Failed to connect to libvirt at qemu:///system: no socket")

    how, output, _module = run(action)
    assert (how, output) == (
        "fail",
        {"msg": "Failed to connect to libvirt at qemu:///system: no socket", "changed": False},
    )


def test_a_bug_is_reported_as_one_with_its_trace_kept_for_verbose_runs():
    def action(params, check_mode):
        return {}["missing"]

    how, output, _module = run(action)
    assert how == "fail"
    assert output["msg"].startswith("Unexpected error in vce.kvm (KeyError: 'missing')")
    assert "please report it" in output["msg"]
    assert "Traceback" in output["exception"] and "KeyError" in output["exception"]


def test_option_specs_share_connection_and_ledger_options():
    spec = support.connection_spec(name={"type": "str"})
    assert spec["tenant"]["required"] is True
    assert spec["uri"]["default"] == "qemu:///system"
    assert spec["name"] == {"type": "str"}
    host = support.host_spec(backup_root={"type": "path"})
    assert "tenant" not in host and set(host) == {"uri", "backup_root"}
    ledger = support.ledger_spec()
    assert set(ledger) == {"uri", "tenant", "ledger_url"}
    assert set(support.RETENTION_OPTIONS) and all(
        option == {"type": "int"} for option in support.RETENTION_OPTIONS.values()
    )


def raising(error: Exception):
    def action(params, check_mode):
        raise error

    return action


def test_a_run_that_applied_changes_before_failing_is_reported_changed_with_them():
    applied = [{"kind": "network", "name": "lan", "action": "create"}]
    outcome, details, _module = run(raising(ApplyError("Failed to define domain", applied)))
    assert outcome == "fail"
    assert details["changed"] is True
    assert details["applied"] == applied and details["left"] == []
    assert details["msg"] == "Failed to define domain"
    assert "exception" not in details


def test_a_run_whose_failed_change_left_something_is_reported_changed():
    error = ApplyError("Failed to start domain acme_web1", left=["domain acme_web1"])
    outcome, details, _module = run(raising(error))
    assert (outcome, details["changed"], details["left"]) == ("fail", True, ["domain acme_web1"])


def test_a_run_that_applied_nothing_before_failing_is_reported_unchanged():
    outcome, details, _module = run(raising(ApplyError("Failed to create network lan")))
    assert (outcome, details["changed"]) == ("fail", False)
    assert "applied" not in details


def test_a_bug_part_way_is_reported_changed_with_its_trace():
    try:
        raise KeyError("target")
    except KeyError as cause:
        error = ApplyError("Unexpected error", [{"kind": "vm"}], unexpected=True)
        error.__cause__ = cause
    outcome, details, _module = run(raising(error))
    assert outcome == "fail" and details["changed"] is True
    assert "exception" in details
