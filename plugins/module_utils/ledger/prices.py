# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A plan's price list: one price per unit and hour for each metered resource, as Decimal.

Prices are read from strings (numbers in YAML are read through their text, never through a
float's binary value), so "12.30" is exactly 12.30.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import cached_property
from typing import Any

from ..core.errors import SpecError

DEFAULT_CURRENCY = "KZT"
CURRENCY_PATTERN = re.compile(r"[A-Z]{3}")  # matched whole, with fullmatch


@dataclass(frozen=True)
class MeterDef:
    """How one metered quantity is priced: its price key, its unit, and its base units (the
    ledger's counts, MiB or bytes) in one priced unit."""

    name: str
    price: str
    unit: str
    column: str
    per_unit: int
    compute: bool  # part of a VM's compute cost (5.6)
    while_holding: bool  # billed only while the VM holds it (running or paused)


METERS = (
    MeterDef("vcpu", "vcpu_hour", "vCPU-hour", "vcpus", 1, True, True),
    MeterDef("ram", "ram_gib_hour", "GiB-hour", "ram_mib", 1024, True, True),
    MeterDef("disk", "disk_gib_hour", "GiB-hour", "disk_mib", 1024, True, False),
    MeterDef("public_ip", "public_ip_hour", "IP-hour", "public_ips", 1, False, False),
    MeterDef("zone_link", "zone_link_hour", "link-hour", "zone_links", 1, False, False),
    MeterDef("backup", "backup_gib_hour", "GiB-hour", "size_bytes", 1024**3, False, False),
)
PRICE_KEYS = tuple(m.price for m in METERS)
MAX_PLACES = 6


@dataclass(frozen=True)
class PriceList:
    currency: str
    rates: tuple[tuple[str, Decimal], ...]  # (price key, per unit-hour), every key

    @cached_property
    def by_key(self) -> dict[str, Decimal]:
        return dict(self.rates)

    def rate(self, price_key: str) -> Decimal:
        return self.by_key[price_key]

    def as_dict(self) -> dict[str, str]:
        return {"currency": self.currency, **{k: str(v) for k, v in self.rates}}


FREE = PriceList(DEFAULT_CURRENCY, tuple((k, Decimal(0)) for k in PRICE_KEYS))


def money(value: Any, path: str) -> Decimal:
    """A non-negative amount from a string or an int (or a YAML number, through its text)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise SpecError(path, f"must be a decimal amount such as '12.50', got {value!r}")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise SpecError(path, f"must be a decimal amount such as '12.50', got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise SpecError(path, f"must be a finite amount ≥ 0, got {value!r}")
    if -amount.as_tuple().exponent > MAX_PLACES:
        raise SpecError(path, f"has more than {MAX_PLACES} decimal places: {value!r}")
    return amount


def parse_prices(raw: Any, path: str = "prices") -> PriceList:
    """{currency, vcpu_hour, ram_gib_hour, ...}: every price unit-hour; a missing one is 0."""
    if not isinstance(raw, Mapping):
        raise SpecError(path, f"must be a mapping of {', '.join(PRICE_KEYS)} (and currency)")
    unknown = sorted(set(raw) - {"currency", *PRICE_KEYS})
    if unknown:
        raise SpecError(
            f"{path}.{unknown[0]}", f"unknown price; known: currency, {', '.join(PRICE_KEYS)}"
        )
    currency = raw.get("currency") or DEFAULT_CURRENCY
    if not isinstance(currency, str) or not CURRENCY_PATTERN.fullmatch(currency):
        raise SpecError(
            f"{path}.currency", f"must be an ISO 4217 code such as KZT, got {currency!r}"
        )
    rates = tuple((key, money(raw.get(key, "0"), f"{path}.{key}")) for key in PRICE_KEYS)
    return PriceList(currency, rates)
