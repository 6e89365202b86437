# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Quota rules: the kinds, what a tenant's objects use, and the decision with its message.

Plain Python with no store and no libvirt: the ledger and the engine feed it numbers.
Usage is counted in base units (counts, MiB) so sums stay exact; limits are in the units
users write (GiB), converted once here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .errors import SpecError, VceError
from .validation import whole_number


@dataclass(frozen=True)
class QuotaKind:
    name: str
    label: str
    unit: str  # the unit of limits, as users write them
    base_per_unit: int  # base units (counts or MiB) in one limit unit


KINDS: dict[str, QuotaKind] = {
    kind.name: kind
    for kind in (
        QuotaKind("vms", "VMs", "", 1),
        QuotaKind("vcpus", "vCPUs", "", 1),
        QuotaKind("ram_gib", "RAM", "GiB", 1024),
        QuotaKind("disk_gib", "disk", "GiB", 1024),
        QuotaKind("public_ips", "public IPs", "", 1),
        QuotaKind("networks", "networks", "", 1),
        QuotaKind("zone_links", "zone links", "", 1),
        QuotaKind("backup_schedules", "backup schedules", "", 1),
        QuotaKind("backup_storage_gib", "backup storage", "GiB", 1024),
    )
}
MAX_LIMIT = 1_000_000

Usage = dict[str, int]  # quota kind -> amount in base units (counts, MiB)


def zero_usage() -> Usage:
    return dict.fromkeys(KINDS, 0)


def add(*usages: Mapping[str, int]) -> Usage:
    total = zero_usage()
    for usage in usages:
        for kind, amount in usage.items():
            total[kind] = total.get(kind, 0) + amount
    return total


def subtract(a: Mapping[str, int], b: Mapping[str, int]) -> Usage:
    return {kind: a.get(kind, 0) - b.get(kind, 0) for kind in KINDS}


def in_units(kind: str, amount: int) -> Decimal | int:
    """A base-unit amount in the kind's limit unit (GiB as an exact Decimal)."""
    per = KINDS[kind].base_per_unit
    return amount if per == 1 else (Decimal(amount) / per).normalize()


def plain(kind: str, amount: int) -> int | str:
    """A base-unit amount in the kind's unit as plain data: GiB as an exact decimal string."""
    value = in_units(kind, amount)
    return value if isinstance(value, int) else f"{value:f}"


def show(kind: str, amount: int) -> str:
    value = in_units(kind, amount)
    unit = KINDS[kind].unit
    text = f"{value:f}" if isinstance(value, Decimal) else str(value)
    return f"{text} {unit}" if unit else text


def check_quotas(raw: Any, path: str, complete: bool = False) -> dict[str, int]:
    """Validate {kind: limit}; limits are whole numbers of the kind's unit, zero or more."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SpecError(path, f"must be a mapping of quota kind to limit, got {type(raw).__name__}")
    limits: dict[str, int] = {}
    for kind, value in raw.items():
        field = f"{path}.{kind}"
        if kind not in KINDS:
            raise SpecError(field, f"unknown quota kind; known kinds: {', '.join(KINDS)}")
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise SpecError(field, f"must be a whole number, got {value!r}")
        number = value if isinstance(value, int) else whole_number(value, field)
        if number < 0:
            raise SpecError(field, f"must be zero or more, got {number}")
        if number > MAX_LIMIT:
            raise SpecError(field, f"must be at most {MAX_LIMIT}, got {number}")
        limits[kind] = number
    missing = [kind for kind in KINDS if kind not in limits]
    if complete and missing:
        raise SpecError(path, f"every quota kind needs a limit; missing: {', '.join(missing)}")
    return limits


@dataclass(frozen=True)
class Breach:
    kind: str
    limit: int  # in the kind's unit
    used: int  # base units, before the change
    requested: int  # base units the change adds

    def describe(self) -> str:
        kind = KINDS[self.kind]
        after = self.used + self.requested
        limit = show(self.kind, self.limit * kind.base_per_unit)
        return (
            f"{self.kind} ({kind.label}): limit {limit}, "
            f"used {show(self.kind, self.used)}, requested {show(self.kind, self.requested)} "
            f"(would be {show(self.kind, after)})"
        )

    def needed_limit(self) -> int:
        per = KINDS[self.kind].base_per_unit
        return -(-(self.used + self.requested) // per)


class QuotaExceeded(VceError):
    """A change that would take a tenant over a quota; nothing was changed."""

    def __init__(self, tenant: str, breaches: list[Breach]) -> None:
        self.tenant = tenant
        self.breaches = breaches
        lines = "; ".join(breach.describe() for breach in breaches)
        asks = ", ".join(f"{b.kind}: {b.needed_limit()}" for b in breaches)
        super().__init__(
            f"Quota exceeded for tenant {tenant}: {lines}. Nothing was changed. To ask for more, "
            f"file a quota increase request (the operator applies it with vce.kvm.quota, "
            f"tenant={tenant}, quotas={{{asks}}}) or declare less."
        )


def breaches(
    limits: Mapping[str, int], used: Mapping[str, int], delta: Mapping[str, int]
) -> list[Breach]:
    """The quotas a change would exceed. A change that adds nothing to a kind never breaches it,
    so a tenant already above a lowered limit can still shrink or stay as it is."""
    found = []
    for kind, quota in KINDS.items():
        requested = delta.get(kind, 0)
        if requested <= 0:
            continue
        limit = limits.get(kind, 0)
        if used.get(kind, 0) + requested > limit * quota.base_per_unit:
            found.append(Breach(kind, limit, used.get(kind, 0), requested))
    return found


def below_usage(limits: Mapping[str, int], used: Mapping[str, int]) -> list[str]:
    """Kinds whose new limit is below what the tenant already uses, described."""
    return [
        f"{kind}: limit {limit} is below current usage {show(kind, used.get(kind, 0))}"
        for kind, limit in limits.items()
        if used.get(kind, 0) > limit * KINDS[kind].base_per_unit
    ]


def mib_of_bytes(size: int) -> int:
    return -(-size // (1024 * 1024))
