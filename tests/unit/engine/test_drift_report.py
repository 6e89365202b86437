"""Drift reports as CI reads them: the JSON document and its summary, JUnit XML (one suite per
host, drift a failure, what could not be compared an error), cases read back from a report,
and report files rewritten only when their content changes."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError, VceError
from ansible_collections.vce.kvm.plugins.module_utils.core.plan import Change, ChangeClass
from ansible_collections.vce.kvm.plugins.module_utils.engine.drift_report import (
    Difference,
    DriftCase,
    json_report,
    junit_report,
    report_document,
    write_if_changed,
)

GENERATED = "2026-11-10T09:00:00+00:00"


def cases() -> list[DriftCase]:
    vcpus = Difference.of(Change("vm", "web1", "update", ChangeClass.LIVE, "vcpus", 1, 2))
    rule = Difference("bind", "nat", "203.0.113.5", "203.0.113.5", "live")
    return [
        DriftCase("kvm1", "acme", "network", "lan"),
        DriftCase("kvm1", "acme", "vm", "web1", "drifted", [vcpus]),
        DriftCase("kvm1", "acme", "disk", "data1", "missing", [Difference("create", None, 2, None, "live")]),
        DriftCase("kvm2", "acme", "public_ip", "www", "drifted", [rule]),
        DriftCase("kvm2", "ghost", "vm", "old", "orphan", [], "tagged for the tenant, but no declaration mentions it"),
        DriftCase("kvm2", "acme", "vm", "acme_extra", "unowned", [], "vm 'acme_extra' exists but was not created by vce.kvm"),
        DriftCase("kvm2", "acme", "vm", "acme_copy", "duplicated", [], "vm 'acme_copy' carries the ownership metadata of vm 'web1'"),
        DriftCase("kvm3", "", "host", "qemu+ssh://kvm3/system", "error", [], "Failed to connect"),
    ]  # fmt: skip


def test_the_json_report_summarises_and_lists_every_case():
    document = json.loads(json_report(cases(), GENERATED))
    assert document["drifted"] is True
    assert document["generated_at"] == GENERATED
    assert document["summary"] == {
        "resources": 8, "in_sync": 1, "drifted": 2, "missing": 1, "orphan": 1, "unowned": 1,
        "duplicated": 1, "error": 1,
    }  # fmt: skip
    intruders = [(c["name"], c["status"]) for c in document["cases"] if c["kind"] == "vm"][1:]
    assert intruders == [("old", "orphan"), ("acme_extra", "unowned"), ("acme_copy", "duplicated")]
    web1 = document["cases"][1]
    assert web1["differences"] == [
        {"action": "update", "field": "vcpus", "declared": 2, "actual": 1, "class": "live"}
    ]
    in_sync = report_document([DriftCase("kvm1", "acme", "network", "lan")])
    assert in_sync["drifted"] is False and "generated_at" not in in_sync


def test_cases_read_back_from_a_report_are_the_same_cases():
    document = json.loads(json_report(cases()))
    again = [DriftCase.from_dict(raw, f"cases[{i}]") for i, raw in enumerate(document["cases"])]
    assert again == cases()


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        ("web1", "cases[0]", "must be a drift case"),
        ({"host": "kvm1", "tenant": "acme"}, "cases[0]", "a drift case needs kind, name, status"),
        (
            {"host": "kvm1", "tenant": "acme", "kind": "vm", "name": "w", "status": "fine"},
            "cases[0].status",
            "must be one of in_sync, drifted, missing, orphan, unowned, duplicated, error",
        ),
    ],
)
def test_what_is_not_a_drift_case_is_refused_naming_where(raw, field, reason):
    with pytest.raises(SpecError) as error:
        DriftCase.from_dict(raw, "cases[0]")
    assert (error.value.field, error.value.reason[: len(reason)]) == (field, reason)


def test_descriptions_say_declared_against_actual_or_not_in_force():
    described = [case.describe() for case in cases()]
    assert described[0] == "kvm1 acme network lan: in_sync"
    assert described[1] == "kvm1 acme vm web1: drifted\n  vcpus: declared 2, actual 1 (update)"
    assert described[2].endswith("create: declared 2, actual null (create)")
    assert described[3].endswith('nat: "203.0.113.5" is not in force on the host (bind)')
    assert described[4].splitlines()[1] == "  tagged for the tenant, but no declaration mentions it"


def test_junit_has_a_suite_per_host_drift_as_failures_and_unreadable_hosts_as_errors():
    root = ET.fromstring(junit_report(cases(), GENERATED))
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("8", "6", "1")
    suites = {suite.get("name"): suite for suite in root.findall("testsuite")}
    assert list(suites) == ["kvm1", "kvm2", "kvm3"]
    kvm1 = suites["kvm1"]
    assert (kvm1.get("tests"), kvm1.get("failures"), kvm1.get("errors")) == ("3", "2", "0")
    assert kvm1.get("timestamp") == GENERATED
    lan, web1, data1 = kvm1.findall("testcase")
    assert lan.get("classname") == "kvm1.acme.network" and list(lan) == []
    assert web1.find("failure").get("type") == "drifted"
    assert web1.find("failure").get("message") == "vm web1 differs: vcpus"
    assert "declared 2, actual 1" in web1.find("failure").text
    assert data1.find("failure").get("message") == "disk data1 is declared but not on the host"
    _www, old, extra, copy = suites["kvm2"].findall("testcase")
    assert suites["kvm2"].get("failures") == "4"
    assert old.find("failure").get("type") == "orphan"
    assert (extra.get("classname"), extra.get("name")) == ("kvm2.acme.vm", "acme_extra")
    assert extra.find("failure").get("type") == "unowned"
    assert "not created by vce.kvm" in extra.find("failure").get("message")
    assert copy.find("failure").get("type") == "duplicated"
    assert "ownership metadata of vm 'web1'" in copy.find("failure").get("message")
    host = suites["kvm3"].find("testcase")
    assert host.get("classname") == "kvm3.-.host"
    assert host.find("error").get("message") == "Failed to connect"
    assert "timestamp" not in ET.fromstring(junit_report(cases())).find("testsuite").attrib


def test_a_report_is_written_only_when_its_content_changes(tmp_path):
    path = tmp_path / "reports" / "drift.json"
    text = json_report(cases())
    assert write_if_changed(str(path), text, check_mode=True) is True
    assert not path.exists()
    assert write_if_changed(str(path), text) is True
    assert path.read_text() == text
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    before = path.stat().st_mtime_ns
    assert write_if_changed(str(path), text) is False
    assert path.stat().st_mtime_ns == before
    assert write_if_changed(str(path), json_report(cases()[:1])) is True
    assert json.loads(path.read_text())["summary"]["resources"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["drift.json"]  # no scratch file left


def test_unreadable_or_unwritable_report_paths_are_errors_naming_the_path(tmp_path):
    directory = tmp_path / "a-directory"
    directory.mkdir()
    with pytest.raises(VceError, match=f"Failed to read report {directory}"):
        write_if_changed(str(directory), "{}")
    # /proc takes no new files, not even root's.
    with pytest.raises(VceError, match=r"^Failed to write report /proc/vce-drift\.json: "):
        write_if_changed("/proc/vce-drift.json", "{}")
