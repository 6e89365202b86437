# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The check of one declaration before it is applied (the Pulumi provider's Check, a preview):
refused as its PUT would be, and what it would add to the tenant's usage, against the quotas.

Usage the engine counts from libvirt (VMs, disks, networks) goes through the engine's gate on
the tenant's host of the zone, or the host a first change there would get: what the host will
use once the declaration holds, less what it uses now, on top of the other hosts' usage, the
reservations of runs in flight and `pending` (what the client's other declarations, checked but
not applied yet, will add). Kinds the ledger counts (public IPs, zone links, backup schedules)
add one when the ledger has no such object of the tenant yet. Nothing is changed or placed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core import quota
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError, VceError
from ansible_collections.vce.kvm.plugins.module_utils.core.validation import as_mapping
from ansible_collections.vce.kvm.plugins.module_utils.engine.gate import (
    Declaration,
    check_counted,
    checked_delta,
    declare_disk,
    declare_network,
    declare_vm,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import public_ips, zone_links

from ..errors import ApiError, quota_message
from .resources import Kind, Parsed, Resources, kind_of

CHECK_KEYS = ("declaration", "pending")
# How each libvirt-counted kind's declaration counts, as the engine's runs declare it.
DECLARE: dict[str, Callable[[Any], tuple[Any, quota.Usage]]] = {
    "networks": declare_network,
    "disks": declare_disk,
    "vms": declare_vm,
}
# The quota kind the ledger counts one of for each object of the kind.
COUNTED = {"public_ips": "public_ips", "zone_links": "zone_links",
           "backup_schedules": "backup_schedules"}  # fmt: skip
# The declaration field a breached quota is on; any other breach is on `name`.
BREACH_PATHS = {
    "vms": {"vcpus": "vcpus", "ram_gib": "memory_mib", "disk_gib": "boot_disk.size_gib"},
    "disks": {"disk_gib": "size_gib"},
}
# Far beyond any limit (quota.MAX_LIMIT): a pending amount above it is a client's mistake.
MAX_PENDING = Decimal(10**9)
MAX_PENDING_TEXT = 40


class Checks:
    """Checks of the tenants' declarations, on the resources' ledger and fleet."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources
        self.ledger = resources.ledger

    def check(self, tenant: str, plural: str, name: str, body: Any) -> dict[str, Any]:
        """{"usage": {quota kind: amount}}: what the declaration adds beyond what its object
        uses now, in the units of the quota view. 422 as its PUT; 409 quota_exceeded with the
        field each breach is on."""
        kind = kind_of(plural)
        try:
            raw = as_mapping(body, "body")
            for key in sorted(raw, key=str):
                if key not in CHECK_KEYS:
                    raise SpecError(str(key), "unknown field of a check: declaration, pending")
            pending = parse_pending(raw.get("pending"))
            if raw.get("declaration") is None:
                raise SpecError("declaration", "is required: the body its PUT would have")
            declaration = as_mapping(raw["declaration"], "declaration")
            parsed = self.resources.parsed(tenant, kind, name, declaration)
            added = self.added(tenant, kind, parsed, pending)
        except quota.QuotaExceeded as error:
            raise quota_refusal(error, kind, self.resources.scrub) from None
        except VceError as error:
            raise self.resources.refusal(error) from None
        return {"usage": {k: quota.plain(k, amount) for k, amount in added.items() if amount > 0}}

    def added(self, tenant: str, kind: Kind, parsed: Parsed, pending: quota.Usage) -> quota.Usage:
        if kind.plural in DECLARE:
            key, usage = DECLARE[kind.plural](parsed.spec)
            host = parsed.host
            return checked_delta(self.ledger, host.uri, tenant, Declaration({key: usage}), pending)
        if self.recorded(tenant, kind, parsed.payload):
            return {}
        added = {COUNTED[kind.plural]: 1}
        # Before the reading transaction: settling an ended trial takes the tenant's lock.
        record = self.ledger.current_tenant(tenant)
        with self.ledger.store.read() as connection:
            others = quota.add(self.ledger.reserved(connection, tenant), pending)
            check_counted(self.ledger, connection, record, added, others)
        return added

    def recorded(self, tenant: str, kind: Kind, payload: Mapping[str, Any]) -> bool:
        """Whether the ledger counts the object already (a change of it adds nothing)."""
        name = payload["name"]
        if kind.plural == "backup_schedules":
            return self.resources.schedule_row(tenant, name) is not None
        if kind.plural == "public_ips":
            query = sa.select(public_ips.c.name).where(
                public_ips.c.tenant == tenant,
                public_ips.c.zone == payload["zone"],
                public_ips.c.name == name,
            )
        else:
            query = sa.select(zone_links.c.name).where(
                zone_links.c.tenant == tenant, zone_links.c.name == name
            )
        with self.ledger.store.read() as connection:
            return connection.execute(query).first() is not None


def parse_pending(raw: Any) -> quota.Usage:
    """`pending` in the quota view's units (counts, GiB as a number or a decimal string), in
    base units (counts, MiB; a part of a MiB counts as a whole one)."""
    if raw is None:
        return {}
    usage: quota.Usage = {}
    for kind, value in as_mapping(raw, "pending").items():
        path = f"pending.{kind}"
        if kind not in quota.KINDS:
            raise SpecError(path, f"unknown quota kind; known kinds: {', '.join(quota.KINDS)}")
        amount = pending_amount(value, path)
        per = quota.KINDS[kind].base_per_unit
        if per == 1 and amount != amount.to_integral_value():
            raise SpecError(path, f"must be a whole number, got {value!r}")
        usage[kind] = int((amount * per).to_integral_value(rounding=ROUND_CEILING))
    return usage


def pending_amount(value: Any, path: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SpecError(path, f"must be a number or a decimal string, got {value!r}")
    if isinstance(value, str) and len(value) > MAX_PENDING_TEXT:
        raise SpecError(path, f"must be a decimal of at most {MAX_PENDING_TEXT} characters")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise SpecError(path, f"must be a number or a decimal string, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise SpecError(path, f"must be zero or more, got {value!r}")
    if amount > MAX_PENDING:
        raise SpecError(path, f"must be at most {MAX_PENDING}, got {value!r}")
    return amount


def quota_refusal(error: quota.QuotaExceeded, kind: Kind, scrub: Callable[[str], str]) -> ApiError:
    """409 quota_exceeded naming the declaration's field of each breach, first breach first."""
    paths = BREACH_PATHS.get(kind.plural, {})
    fields = [(paths.get(b.kind, "name"), scrub(b.describe())) for b in error.breaches]
    return ApiError(409, "quota_exceeded", scrub(quota_message(error)), fields)
