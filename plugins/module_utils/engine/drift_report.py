# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Drift cases and their reports: JSON and JUnit XML.

Apart from the comparison (drift.py), so that writing reports loads neither libvirt's engine
nor the ledger.
"""

from __future__ import annotations

import json
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import SpecError, VceError
from ..core.plan import Change

IN_SYNC, DRIFTED, MISSING, ORPHAN, ERROR = "in_sync", "drifted", "missing", "orphan", "error"
# Objects named like a tenant's that are not theirs (host.ownership.UNOWNED, DUPLICATED): the
# engine never touches them, so only a person can resolve them.
UNOWNED, DUPLICATED = "unowned", "duplicated"
STATUSES = (IN_SYNC, DRIFTED, MISSING, ORPHAN, UNOWNED, DUPLICATED, ERROR)
# Statuses that are a JUnit failure (ERROR is a JUnit error).
FAILURES = (DRIFTED, MISSING, ORPHAN, UNOWNED, DUPLICATED)


@dataclass(frozen=True)
class Difference:
    """One thing that differs: what an apply would do about it, declared against actual."""

    action: str
    field: str | None
    declared: Any
    actual: Any
    change_class: str

    @classmethod
    def of(cls, change: Change) -> Difference:
        return cls(change.action, change.field, change.after, change.before, change.change_class)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Difference:
        action, declared, actual = raw.get("action", ""), raw.get("declared"), raw.get("actual")
        return cls(action, raw.get("field"), declared, actual, raw.get("class", ""))

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "field": self.field,
            "declared": self.declared,
            "actual": self.actual,
            "class": self.change_class,
        }

    def describe(self) -> str:
        what = self.field or self.action
        if self.declared == self.actual:
            return f"{what}: {show(self.declared)} is not in force on the host ({self.action})"
        return f"{what}: declared {show(self.declared)}, actual {show(self.actual)} ({self.action})"


def show(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


@dataclass
class DriftCase:
    """One object on one host: a declared one, or an orphan."""

    host: str
    tenant: str
    kind: str
    name: str
    status: str = IN_SYNC
    differences: list[Difference] = field(default_factory=list)
    message: str | None = None

    @property
    def drifted(self) -> bool:
        return self.status != IN_SYNC

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "tenant": self.tenant,
            "kind": self.kind,
            "name": self.name,
            "status": self.status,
            "differences": [d.to_dict() for d in self.differences],
            "message": self.message,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], path: str) -> DriftCase:
        """A case as a report (or the drift module) wrote it; refused when it is not one."""
        if not isinstance(raw, Mapping):
            raise SpecError(path, f"must be a drift case (a mapping), got {raw!r}")
        missing = [k for k in ("host", "tenant", "kind", "name", "status") if k not in raw]
        if missing:
            raise SpecError(path, f"a drift case needs {', '.join(missing)}")
        if raw["status"] not in STATUSES:
            raise SpecError(f"{path}.status", f"must be one of {', '.join(STATUSES)}")
        differences = [Difference.from_dict(d) for d in raw.get("differences") or []]
        return cls(
            str(raw["host"]), str(raw["tenant"]), str(raw["kind"]), str(raw["name"]),
            raw["status"], differences, raw.get("message"),
        )  # fmt: skip

    def describe(self) -> str:
        lines = [f"{self.host} {self.tenant} {self.kind} {self.name}: {self.status}"]
        if self.message:
            lines.append(f"  {self.message}")
        lines.extend(f"  {d.describe()}" for d in self.differences)
        return "\n".join(lines)


def summary(cases: Sequence[DriftCase]) -> dict[str, int]:
    counts = {status: 0 for status in STATUSES}
    for case in cases:
        counts[case.status] += 1
    return {"resources": len(cases), **counts}


def report_document(cases: Sequence[DriftCase], generated_at: str | None = None) -> dict[str, Any]:
    document: dict[str, Any] = {
        "drifted": any(c.drifted for c in cases),
        "summary": summary(cases),
        "cases": [c.to_dict() for c in cases],
    }
    if generated_at:
        document["generated_at"] = generated_at
    return document


def json_report(cases: Sequence[DriftCase], generated_at: str | None = None) -> str:
    document = report_document(cases, generated_at)
    return json.dumps(document, indent=2, sort_keys=True, default=str) + "\n"


def junit_report(cases: Sequence[DriftCase], generated_at: str | None = None) -> str:
    """JUnit XML: one test suite per host, one test case per object; drift is a failure, an
    object that could not be compared an error."""
    counts = summary(cases)
    failures = sum(counts[status] for status in FAILURES)
    root = ET.Element(
        "testsuites",
        {
            "name": "vce drift",
            "tests": str(len(cases)),
            "failures": str(failures),
            "errors": str(counts[ERROR]),
        },
    )
    by_host: dict[str, list[DriftCase]] = {}
    for case in cases:
        by_host.setdefault(case.host, []).append(case)
    for host, host_cases in by_host.items():
        suite_counts = summary(host_cases)
        attributes = {
            "name": host,
            "tests": str(len(host_cases)),
            "failures": str(sum(suite_counts[status] for status in FAILURES)),
            "errors": str(suite_counts[ERROR]),
            "skipped": "0",
        }
        if generated_at:
            attributes["timestamp"] = generated_at
        suite = ET.SubElement(root, "testsuite", attributes)
        for case in host_cases:
            element = ET.SubElement(
                suite,
                "testcase",
                {"classname": f"{host}.{case.tenant or '-'}.{case.kind}", "name": case.name},
            )
            if case.status == ERROR:
                outcome = ET.SubElement(element, "error", {"type": ERROR})
            elif case.drifted:
                outcome = ET.SubElement(element, "failure", {"type": case.status})
            else:
                continue
            outcome.set("message", first_line(case))
            outcome.text = case.describe()
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def first_line(case: DriftCase) -> str:
    if case.message:
        return case.message
    if case.status == MISSING:
        return f"{case.kind} {case.name} is declared but not on the host"
    fields = ", ".join(d.field or d.action for d in case.differences)
    return f"{case.kind} {case.name} differs: {fields}"


def write_if_changed(path: str, text: str, check_mode: bool = False) -> bool:
    """Write `text` to `path` atomically; False (nothing written) when it is already there."""
    try:
        with open(path, encoding="utf-8") as current:
            if current.read() == text:
                return False
    except FileNotFoundError:
        pass
    except OSError as error:
        raise VceError(f"Failed to read report {path}: {error.strerror or error}") from None
    if check_mode:
        return True
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        handle, scratch = tempfile.mkstemp(prefix=".drift-", dir=directory)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(text)
            # Reports are read by CI tools running as other users.
            os.chmod(scratch, 0o644)
            os.replace(scratch, path)
        finally:
            if os.path.exists(scratch):
                os.unlink(scratch)
    except OSError as error:
        raise VceError(f"Failed to write report {path}: {error.strerror or error}") from None
    return True
