# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Pulumi SDK's rough edges, handled here and nowhere else.

- Numbers arrive as floats: whole numbers become ints, and go back as floats.
- Unknown values (preview) arrive as the engine's sentinel string, or as `Computed`; both
  become UNKNOWN here, and UNKNOWN goes back as the sentinel (a `Computed` cannot be marshalled).
- Secrets arrive wrapped: values are unwrapped, and the paths that were secret are kept so the
  outputs wrap the same paths again.
- A resource's type arrives parent-qualified (`my:module:Parent$vce:index:Vm`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pulumi.provider.experimental.property_value import Computed, PropertyValue
from pulumi.runtime.rpc import UNKNOWN

__all__ = [
    "UNKNOWN",
    "contains_unknown",
    "from_values",
    "plain_values",
    "resource_type",
    "to_values",
]

Path = str  # "cloudInit.userData", "nics[0].ip"


def resource_type(type_or_urn: str) -> str:
    """`vce:index:Vm` from a URN's type part or a bare type, parent-qualified or not."""
    if "::" in type_or_urn:
        type_or_urn = type_or_urn.split("::")[-2]
    return type_or_urn.rsplit("$", 1)[-1]


def to_values(properties: Mapping[str, PropertyValue]) -> tuple[dict[str, Any], set[Path]]:
    """Plain Python values, and the paths that arrived secret."""
    secrets: set[Path] = set()
    values = {key: plain(item, key, secrets) for key, item in properties.items()}
    return values, secrets


def plain_values(properties: Mapping[str, PropertyValue]) -> dict[str, Any]:
    """Plain Python values where secrecy does not matter (comparisons)."""
    return to_values(properties)[0]


def plain(item: PropertyValue, path: Path, secrets: set[Path]) -> Any:
    if item.is_secret:
        secrets.add(path)
    value = item.value
    if isinstance(value, Computed) or value == UNKNOWN:
        return UNKNOWN
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        return {key: plain(sub, f"{path}.{key}", secrets) for key, sub in value.items()}
    if isinstance(value, tuple):
        return [plain(sub, f"{path}[{i}]", secrets) for i, sub in enumerate(value)]
    return value


def from_values(
    values: Mapping[str, Any], secrets: Iterable[Path] = ()
) -> dict[str, PropertyValue]:
    """PropertyValues of plain values, wrapping as secret each path in `secrets` (and a
    secret's parents are not wrapped: only the secret itself)."""
    wanted = set(secrets)
    return {key: wrap(value, key, wanted) for key, value in values.items() if value is not None}


def wrap(value: Any, path: Path, secrets: set[Path]) -> PropertyValue:
    if isinstance(value, Mapping):
        inner: Any = {
            key: wrap(sub, f"{path}.{key}", secrets)
            for key, sub in value.items()
            if sub is not None
        }
    elif isinstance(value, list | tuple):
        inner = [wrap(sub, f"{path}[{i}]", secrets) for i, sub in enumerate(value)]
    elif isinstance(value, bool) or value is None or isinstance(value, str):
        inner = value
    elif isinstance(value, int | float):
        inner = float(value)
    else:
        inner = str(value)
    return PropertyValue(inner, is_secret=path in secrets)


def contains_unknown(value: Any) -> bool:
    if value == UNKNOWN:
        return True
    if isinstance(value, Mapping):
        return any(contains_unknown(sub) for sub in value.values())
    if isinstance(value, list):
        return any(contains_unknown(sub) for sub in value)
    return False
