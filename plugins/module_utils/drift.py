# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Drift: every difference between the declared tenant environments and what the hosts hold.

The comparison is the engine's own plan, made as an apply with `prune` would make it (restarts
and replacements allowed, so nothing is refused for being disruptive) and never applied: what
the plan would change is what drifted. Each declared object becomes one case, and each object
tagged for a tenant that no declaration mentions becomes an orphan case. One libvirt listing
per host serves every tenant on it.

The inventory contract (shared by playbooks/drift.yml, the tenant_environment role and `vce
drift`): per KVM host `vce_uri`, `vce_tenants` (tenant -> the environment module's options),
`vce_pool`, `vce_zone` + `vce_zones`, `vce_host_command`, `vce_ledger_url`, and the backup
paths `vce_backup_root`, `vce_backup_runner`, `vce_backup_unit_dir`, `vce_backup_config_dir`.
"""

from __future__ import annotations

import json
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .backup import parse_backup_host, read_host_schedules
from .engine import plan_environment
from .environment import EnvironmentEngine, Failures, Options
from .errors import OwnershipError, SpecError, VceError
from .host import DEFAULT_URI, Host, TenantInventory
from .ledger import Ledger
from .plan import Change, Plan
from .spec import as_list, check_name, parse_environment

KINDS = ("network", "disk", "vm", "public_ip", "zone_link", "backup_schedule")
IN_SYNC, DRIFTED, MISSING, ORPHAN, ERROR = "in_sync", "drifted", "missing", "orphan", "error"
STATUSES = (IN_SYNC, DRIFTED, MISSING, ORPHAN, ERROR)
# Options of the environment module a tenant's declaration may hold; the rest (customer, plan,
# quotas, trial, prune) is the tenant module's or the apply's business.
ENVIRONMENT_OPTIONS = ("networks", "disks", "vms", "public_ips", "zone_links", "backup_schedules")
# Inventory variable -> environment module option, for what every tenant on a host shares.
HOST_VARIABLES = {
    "vce_pool": "default_pool",
    "vce_host_command": "host_command",
    "vce_backup_root": "backup_root",
    "vce_backup_runner": "runner",
    "vce_backup_unit_dir": "unit_dir",
    "vce_backup_config_dir": "config_dir",
}
# Drift is read as an apply with prune would see it, but no plan is ever applied.
DRIFT_OPTIONS = Options(allow_restart=True, allow_replace=True, prune=True)


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


@dataclass
class HostDeclaration:
    """What one KVM host should hold: its tenants' environments and what they share."""

    host: str
    uri: str = DEFAULT_URI
    ledger_url: str | None = None
    tenants: dict[str, dict[str, Any]] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_options(
        cls,
        host: str,
        uri: str | None,
        ledger_url: str | None,
        tenants: Any,
        shared: Mapping[str, Any],
    ) -> HostDeclaration:
        if tenants is None:
            tenants = {}
        if not isinstance(tenants, Mapping):
            raise SpecError("tenants", f"must map each tenant to its declaration, got {tenants!r}")
        declared: dict[str, dict[str, Any]] = {}
        for tenant, raw in tenants.items():
            check_name(tenant, "tenants")
            raw = raw if raw is not None else {}
            if not isinstance(raw, Mapping):
                raise SpecError(f"tenants.{tenant}", f"must be a mapping, got {raw!r}")
            declared[tenant] = {k: raw[k] for k in ENVIRONMENT_OPTIONS if raw.get(k) is not None}
        shared = {k: v for k, v in shared.items() if v is not None}
        return cls(host, uri or DEFAULT_URI, ledger_url or None, declared, shared)

    @classmethod
    def from_hostvars(cls, host: str, hostvars: Mapping[str, Any]) -> HostDeclaration:
        """The declaration an inventory host's (templated) variables make."""
        shared = {option: hostvars.get(var) for var, option in HOST_VARIABLES.items()}
        zone = hostvars.get("vce_zone")
        zones = hostvars.get("vce_zones") or {}
        if zone is not None and isinstance(zones, Mapping) and zone in zones:
            shared["zone"] = zone
            shared["zone_config"] = zones[zone]
        return cls.from_options(
            host,
            hostvars.get("vce_uri"),
            hostvars.get("vce_ledger_url"),
            hostvars.get("vce_tenants"),
            shared,
        )


def declared_objects(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(kind, name) of every object a tenant's declaration names, in declaration order."""
    found: list[tuple[str, str]] = []
    for kind, option in (
        ("network", "networks"), ("disk", "disks"), ("vm", "vms"),
        ("public_ip", "public_ips"), ("zone_link", "zone_links"),
    ):  # fmt: skip
        for item in as_list(params.get(option), option):
            if isinstance(item, Mapping) and item.get("name") is not None:
                found.append((kind, str(item["name"])))
    for item in as_list(params.get("backup_schedules"), "backup_schedules"):
        if isinstance(item, Mapping):
            found.append(("backup_schedule", f"{item.get('vm')}/{item.get('name')}"))
    return found


class DriftEngine:
    """Compares one host's declaration with the host, read once."""

    def __init__(self, declaration: HostDeclaration, only: Sequence[str] = ()) -> None:
        self.declaration = declaration
        self.only = set(only)
        self.backup_read: dict[str, Any] | None = None

    def observe(self) -> tuple[Host, Ledger, dict[str, TenantInventory]]:
        host = Host(self.declaration.uri)
        inventories = host.inventories()
        ledger = Ledger.open(self.declaration.ledger_url)
        try:
            where = parse_backup_host({**self.declaration.shared, "uri": self.declaration.uri})
            self.backup_read = read_host_schedules(where)
        except VceError:
            self.backup_read = None  # each tenant's own read then reports it
        return host, ledger, inventories

    def cases(self) -> list[DriftCase]:
        try:
            host, ledger, inventories = self.observe()
        except VceError as error:
            return [self.host_case(ERROR, str(error))]
        cases: list[DriftCase] = []
        for tenant in sorted(self.selected(self.declaration.tenants)):
            inventory = inventories.get(tenant) or self.empty_inventory(host, tenant, inventories)
            cases.extend(self.tenant_cases(tenant, host, ledger, inventory))
        for tenant in sorted(self.selected(inventories)):
            if tenant not in self.declaration.tenants:
                cases.extend(self.orphan_tenant_cases(tenant, host, ledger, inventories[tenant]))
        return cases

    def selected(self, tenants: Iterable[str]) -> list[str]:
        return [t for t in tenants if not self.only or t in self.only]

    def host_case(self, status: str, message: str) -> DriftCase:
        return DriftCase(
            self.declaration.host, "", "host", self.declaration.uri, status, [], message
        )

    @staticmethod
    def empty_inventory(
        host: Host, tenant: str, inventories: Mapping[str, TenantInventory]
    ) -> TenantInventory:
        """A tenant with nothing on the host yet; the pools come from the same reading."""
        for other in inventories.values():
            return TenantInventory(tenant, pools=dict(other.pools))
        return host.inventory(tenant)

    def params(self, tenant: str, state: str = "present") -> dict[str, Any]:
        declared = self.declaration.tenants.get(tenant, {})
        return {
            **self.declaration.shared,
            **declared,
            "tenant": tenant,
            "uri": self.declaration.uri,
            "ledger_url": self.declaration.ledger_url,
            "state": state,
            "prune": True,
        }

    def tenant_cases(
        self, tenant: str, host: Host, ledger: Ledger, inventory: TenantInventory
    ) -> list[DriftCase]:
        params = self.params(tenant)
        try:
            objects = declared_objects(params)
            spec = parse_environment(params, params.get("default_pool") or "default")
        except VceError as error:
            case = DriftCase(self.declaration.host, tenant, "tenant", tenant, ERROR)
            case.message = f"the declaration cannot be read: {error}"
            return [case]
        failures: Failures = {}
        engine = EnvironmentEngine(host, tenant, DRIFT_OPTIONS)
        try:
            _public_ips, plan = plan_environment(
                params, spec, ledger, engine, inventory, failures, self.backup_read
            )
        except VceError as error:
            failures[("tenant", "*")] = error
            plan = Plan()
        return self.classify(tenant, objects, plan, failures)

    def orphan_tenant_cases(
        self, tenant: str, host: Host, ledger: Ledger, inventory: TenantInventory
    ) -> list[DriftCase]:
        """A tenant with objects on the host and no declaration here: all of them orphans."""
        params = self.params(tenant, "absent")
        engine = EnvironmentEngine(host, tenant, DRIFT_OPTIONS)
        failures: Failures = {}
        try:
            _public_ips, plan = plan_environment(
                params, None, ledger, engine, inventory, failures, self.backup_read
            )
        except VceError as error:
            failures[("tenant", "*")] = error
            plan = Plan()
        return self.classify(tenant, [], plan, failures)

    def classify(
        self,
        tenant: str,
        objects: list[tuple[str, str]],
        plan: Plan,
        failures: Failures,
    ) -> list[DriftCase]:
        changes: dict[tuple[str, str], list[Change]] = {}
        for change in plan.changes:
            changes.setdefault((change.kind, change.name), []).append(change)
        cases = []
        for kind, name in objects:
            case = DriftCase(self.declaration.host, tenant, kind, name)
            failure = failures.get((kind, name)) or failures.get((kind, "*"))
            failure = failure or failures.get(("tenant", "*"))
            found = changes.pop((kind, name), [])
            if failure is not None:
                case.status, case.message = failure_status(failure), str(failure)
            elif found:
                created = any(c.action == "create" for c in found)
                case.status = MISSING if created else DRIFTED
            case.differences = evidence(found)
            cases.append(case)
        for (kind, name), found in changes.items():
            case = DriftCase(self.declaration.host, tenant, kind, name, ORPHAN)
            case.message = "tagged for the tenant, but no declaration mentions it"
            case.differences = evidence(found)
            cases.append(case)
        if not objects and ("tenant", "*") in failures:
            message = f"cannot be compared: {failures[('tenant', '*')]}"
            cases.append(
                DriftCase(self.declaration.host, tenant, "tenant", tenant, ERROR, [], message)
            )
        return cases


def evidence(changes: Sequence[Change]) -> list[Difference]:
    """The differences a change list shows. A change whose value is the same on both sides
    (the engine re-stamping its metadata, a binding whose nft rule is gone) is evidence only
    when nothing else is."""
    differences = [Difference.of(change) for change in changes]
    return [d for d in differences if d.declared != d.actual] or differences


def failure_status(failure: VceError) -> str:
    """What an object that the engine could not plan is: drifted when the declaration cannot
    be reached from what the host holds (a disk grown past its size, a name taken by another
    owner), an error when the host could not be read."""
    return DRIFTED if isinstance(failure, (SpecError, OwnershipError)) else ERROR


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
    failures = counts[DRIFTED] + counts[MISSING] + counts[ORPHAN]
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
            "failures": str(suite_counts[DRIFTED] + suite_counts[MISSING] + suite_counts[ORPHAN]),
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
