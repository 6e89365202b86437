# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Drift: every difference between the declared tenant environments and what the hosts hold.

The comparison is the engine's own plan, made as an apply with `prune` would make it (restarts
and replacements allowed, so nothing is refused for being disruptive) and never applied: what
the plan would change is what drifted. Each declared object becomes one case, and each object
tagged for a tenant that no declaration mentions becomes an orphan case. An object named with
a tenant's prefix that is not the tenant's (no or foreign ownership metadata: `unowned`; a copy
of a real object's tag, or a second volume claiming a disk: `duplicated`) is a case of its own,
named by its libvirt name. One libvirt listing per host serves every tenant on it.

The inventory contract (shared by playbooks/drift.yml, the tenant_environment role and `vce
drift`): per KVM host `vce_uri`, `vce_tenants` (tenant -> the environment module's options),
`vce_pool`, `vce_zone` + `vce_zones`, `vce_host_command`, `vce_ledger_url`, and the backup
paths `vce_backup_root`, `vce_backup_runner`, `vce_backup_unit_dir`, `vce_backup_config_dir`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import OwnershipError, SpecError, VceError
from ..core.plan import Change, Plan
from ..core.spec import EnvironmentSpec, parse_environment
from ..core.validation import as_list, check_name
from ..host.connection import DEFAULT_URI, Host, TenantInventory
from ..host.shell import host_shell
from ..ledger.tenants import Ledger
from .drift_report import DRIFTED, ERROR, MISSING, ORPHAN, Difference, DriftCase
from .environment import EnvironmentPlanner, Failures, Options
from .facade import plan_environment
from .resources import firewall
from .resources.backup_schedule import parse_backup_host, read_host_schedules
from .resources.image import image_sources

KINDS = ("network", "disk", "vm", "public_ip", "zone_link", "backup_schedule")
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


@dataclass
class DeclaredHost:
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
    ) -> DeclaredHost:
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
    def from_hostvars(cls, host: str, hostvars: Mapping[str, Any]) -> DeclaredHost:
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


class DriftCheck:
    """Compares one host's declaration with the host, read once."""

    def __init__(self, declaration: DeclaredHost, only: Sequence[str] = ()) -> None:
        self.declaration = declaration
        self.only = set(only)
        self.backup_read: dict[str, Any] | None = None

    def observe(self) -> tuple[Host, Ledger, dict[str, TenantInventory]]:
        # The backup units are read by a command on the host: it runs while libvirt is listed.
        with ThreadPoolExecutor(1) as pool:
            backup_read = pool.submit(self.read_backups)
            host = Host(self.declaration.uri)
            inventories = host.inventories()
            ledger = Ledger.open(self.declaration.ledger_url)
            self.backup_read = backup_read.result()
        return host, ledger, inventories

    def read_backups(self) -> dict[str, Any] | None:
        try:
            where = parse_backup_host({**self.declaration.shared, "uri": self.declaration.uri})
            return read_host_schedules(where)
        except VceError:
            return None  # each tenant's own read then reports why

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
            inventory = inventories[tenant]
            if tenant not in self.declaration.tenants and self.is_tenant(tenant, ledger, inventory):
                cases.extend(self.orphan_tenant_cases(tenant, host, ledger, inventory))
        if not self.only:
            cases.extend(self.guard_cases(host, ledger))
        return cases

    def guard_cases(self, host: Host, ledger: Ledger) -> list[DriftCase]:
        """The host's guard table (one case, no tenant): missing, altered (drifted: a rule
        removed or changed by hand) or in sync; none where the host's nft is out of reach."""
        shared = self.declaration.shared
        case = DriftCase(self.declaration.host, "", firewall.KIND, firewall.TABLE)
        try:
            uplink = firewall.run_uplink(shared, ledger, host.uri)
            guard = firewall.GuardPlanner(host, host_shell(shared), uplink)
            if not guard.kept:
                return []
            plan = guard.plan_present()
        except VceError as error:
            case.status, case.message = ERROR, str(error)
            return [case]
        if plan.changed:
            created = plan.changes[0].action == "create"
            case.status = MISSING if created else DRIFTED
            case.differences = evidence(plan.changes)
        return [case]

    @staticmethod
    def is_tenant(name: str, ledger: Ledger, inventory: TenantInventory) -> bool:
        """Whether an undeclared prefix is a tenant's: it has objects of theirs here, or the
        ledger knows it. Any other name with an underscore (an image "debian_12.qcow2") is
        nobody's business here."""
        if inventory.domains or inventory.networks or inventory.volumes:
            return True
        try:
            with ledger.store.read() as connection:
                return ledger.tenant(connection, name) is not None
        except VceError:
            return True  # better a case too many than an intruder not shown

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
        return self.compare(tenant, params, spec, objects, host, ledger, inventory)

    def orphan_tenant_cases(
        self, tenant: str, host: Host, ledger: Ledger, inventory: TenantInventory
    ) -> list[DriftCase]:
        """A tenant with objects on the host and no declaration here: all of them orphans."""
        params = self.params(tenant, "absent")
        return self.compare(tenant, params, None, [], host, ledger, inventory)

    def compare(
        self,
        tenant: str,
        params: dict[str, Any],
        spec: EnvironmentSpec | None,
        objects: list[tuple[str, str]],
        host: Host,
        ledger: Ledger,
        inventory: TenantInventory,
    ) -> list[DriftCase]:
        """The tenant's plan (`spec` None: its removal), never applied, as cases."""
        failures: Failures = {}
        images = image_sources(params, ledger, host.is_local)
        engine = EnvironmentPlanner(
            host, tenant, DRIFT_OPTIONS, shell=host_shell(params), images=images
        )
        try:
            _public_ips, plan = plan_environment(
                params, spec, ledger, engine, inventory, failures, self.backup_read
            )
        except VceError as error:
            failures[("tenant", "*")] = error
            plan = Plan()
        return self.classify(tenant, objects, plan, failures) + self.intruder_cases(inventory)

    def intruder_cases(self, inventory: TenantInventory) -> list[DriftCase]:
        """One case per object named like the tenant's that is not theirs, by its libvirt
        name (a volume's as pool/name): the plans above never touched or counted it."""
        return [
            DriftCase(
                self.declaration.host,
                inventory.tenant,
                intruder.kind,
                intruder.libvirt_name,
                intruder.problem,
                [],
                f"{intruder.reason}; vce.kvm never touches it: remove or rename it by hand",
            )
            for intruder in inventory.intruders
        ]

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
