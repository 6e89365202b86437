# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a page shows, computed from what the service layer returns: rows and bars as plain
values, so templates only loop over them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

# The quota kinds as a customer reads them, in the order the dashboard shows them.
QUOTA_LABELS = {
    "vms": "VMs",
    "vcpus": "vCPUs",
    "ram_gib": "Memory",
    "disk_gib": "Disk space",
    "public_ips": "Public IPs",
    "networks": "Networks",
    "zone_links": "Zone links",
    "backup_schedules": "Backup schedules",
    "backup_storage_gib": "Backup storage",
}
ENDED = frozenset({"succeeded", "failed", "interrupted"})
# An action's kind as a verb of its title: "Apply vms/web".
ACTION_VERBS = {
    "put": "Apply",
    "delete": "Remove",
    "vm_action": "Power",
    "restore": "Restore",
    "block": "Block",
}


@dataclass(frozen=True)
class VmRow:
    name: str
    zone: str
    state: str
    vcpus: int
    memory_mib: int
    addresses: tuple[str, ...]
    public_ips: tuple[str, ...]

    @property
    def running(self) -> bool:
        return self.state == "running"


@dataclass(frozen=True)
class QuotaBar:
    kind: str
    label: str
    unit: str
    limit: Decimal
    used: Decimal
    reserved: Decimal

    @property
    def left(self) -> Decimal:
        return max(self.limit - self.used - self.reserved, Decimal(0))

    @property
    def taken(self) -> Decimal:
        """Used and reserved together: what the bar fills."""
        return min(self.used + self.reserved, self.limit)

    @property
    def high(self) -> Decimal:
        """Where the bar turns to a warning: 80% of the limit."""
        return self.limit * Decimal("0.8")


@dataclass(frozen=True)
class ActionRow:
    id: str
    kind: str
    target: str
    status: str
    created_at: str
    finished_at: str | None

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    @property
    def title(self) -> str:
        return f"{ACTION_VERBS.get(self.kind, self.kind.replace('_', ' '))} {self.target}"


@dataclass(frozen=True)
class ActionDetail:
    row: ActionRow
    steps: tuple[str, ...]
    plan: tuple[str, ...]
    error: str
    fields: tuple[tuple[str, str], ...]


def vm_rows(vms: Iterable[Mapping[str, Any]], public_ips: Iterable[Mapping[str, Any]]) -> list:
    bound: dict[str, list[str]] = {}
    for item in public_ips:
        if item.get("vm"):
            bound.setdefault(item["vm"], []).append(str(item.get("address", "")))
    return [
        VmRow(
            name=vm["name"],
            zone=vm.get("zone", ""),
            state=vm.get("state", "unknown"),
            vcpus=int(vm.get("vcpus", 0)),
            memory_mib=int(vm.get("memory_mib", 0)),
            addresses=tuple(nic["ip"] for nic in vm.get("nics", ()) if nic.get("ip")),
            public_ips=tuple(sorted(bound.get(vm["name"], ()))),
        )
        for vm in vms
    ]


def quota_bars(quotas: Mapping[str, Mapping[str, Any]]) -> list[QuotaBar]:
    ordered = [kind for kind in QUOTA_LABELS if kind in quotas]
    ordered += sorted(kind for kind in quotas if kind not in QUOTA_LABELS)
    return [
        QuotaBar(
            kind=kind,
            label=QUOTA_LABELS.get(kind, kind.replace("_", " ")),
            unit=str(quotas[kind].get("unit", "")),
            limit=Decimal(str(quotas[kind]["limit"])),
            used=Decimal(str(quotas[kind]["used"])),
            reserved=Decimal(str(quotas[kind]["reserved"])),
        )
        for kind in ordered
    ]


def action_row(view: Mapping[str, Any]) -> ActionRow:
    return ActionRow(
        id=view["id"],
        kind=view["kind"],
        target=view["target"],
        status=view["status"],
        created_at=view["created_at"],
        finished_at=view.get("finished_at"),
    )


def action_detail(view: Mapping[str, Any]) -> ActionDetail:
    error = view.get("error") or {}
    inner = error.get("error", error) if isinstance(error, Mapping) else {}
    return ActionDetail(
        row=action_row(view),
        steps=tuple(progress_lines(view.get("progress"))),
        plan=tuple(plan_lines(((view.get("result") or {}).get("plan")) or ())),
        error=str(inner.get("message", "")) if inner else "",
        fields=tuple((f["path"], f["reason"]) for f in inner.get("fields", ()) if inner),
    )


def progress_lines(progress: Any) -> list[str]:
    """The handler's last report as a line: "run (zone: zone-a)"."""
    if not isinstance(progress, Mapping):
        return []
    details = ", ".join(
        f"{key}: {value}" for key, value in sorted(progress.items()) if key != "step"
    )
    step = str(progress.get("step", "working"))
    return [f"{step} ({details})" if details else step]


def plan_lines(plan: Iterable[Mapping[str, Any]]) -> list[str]:
    """A plan as sentences: "create vm web", "update vm web: memory_mib 256 → 512"."""
    lines = []
    for change in plan:
        what = f"{change.get('action', '?')} {change.get('kind', '')} {change.get('name', '')}"
        if change.get("field"):
            what += f": {change['field']} {change.get('before')!s} → {change.get('after')!s}"
        lines.append(what.strip())
    return lines
