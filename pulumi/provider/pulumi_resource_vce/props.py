# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Property declarations: one table per resource gives its schema, its type checks, the
engine's parameter names and which changes force a replacement."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .adapter import UNKNOWN

SCALARS = {"string": str, "integer": int, "boolean": bool, "number": float}


@dataclass(frozen=True)
class Prop:
    name: str  # as Pulumi programs spell it (camelCase)
    type: str  # string | integer | boolean | number | array | object | map
    description: str
    required: bool = False
    default: Any = None
    replace: bool = False  # a change replaces the object
    secret: bool = False
    items: str | tuple[Prop, ...] = "string"  # array/map elements: a scalar or object fields
    fields: tuple[Prop, ...] = ()  # object fields
    output_only: bool = False
    type_name: str = ""  # the schema type of an object, or of an array's or map's objects
    # Left out of a declaration, the object keeps what it has (a VM's extra disks, a disk's
    # attachment): no change to show, as the API's PUT changes nothing there.
    kept: bool = False

    @property
    def key(self) -> str:
        """The engine's (and the Ansible modules') name for it."""
        return snake(self.name)


@functools.cache
def snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def camel_path(engine_path: str) -> str:
    """`boot_disk.size_gib` -> `bootDisk.sizeGib`; indexes stay as they are."""
    return re.sub(r"[a-z0-9]+(?:_[a-z0-9]+)+", lambda m: camel(m.group(0)), engine_path)


TypeFailures = list[tuple[str, str]]  # (property path, reason)


def check_types(props: tuple[Prop, ...], values: Mapping[str, Any], path: str = "") -> TypeFailures:
    """Every type mismatch, missing required property and unknown property, by path."""
    failures: TypeFailures = []
    known = {p.name for p in props}
    for key in values:
        if key not in known and not key.startswith("__"):
            failures.append(
                (f"{path}{key}", f"unknown property; known: {', '.join(sorted(known))}")
            )
    for prop in props:
        if prop.output_only:
            continue
        value = values.get(prop.name)
        where = f"{path}{prop.name}"
        if value is None:
            if prop.required:
                failures.append((where, "is required"))
            continue
        failures.extend(check_value(prop.type, prop, value, where))
    return failures


def check_value(kind: str, prop: Prop, value: Any, where: str) -> TypeFailures:
    if value == UNKNOWN:
        return []
    if kind in SCALARS:
        expected = SCALARS[kind]
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if kind == "number":
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok:
            return [(where, f"must be {article(kind)}, got {shown(value)}")]
        return []
    if kind == "object":
        if not isinstance(value, Mapping):
            return [(where, f"must be an object, got {shown(value)}")]
        return check_types(prop.fields, value, f"{where}.")
    if kind in ("array", "map"):
        container = list if kind == "array" else Mapping
        if not isinstance(value, container):
            return [(where, f"must be {article(kind)}, got {shown(value)}")]
        entries = enumerate(value) if kind == "array" else value.items()
        failures: TypeFailures = []
        for index, item in entries:
            at = f"{where}[{index}]" if kind == "array" else f"{where}.{index}"
            if isinstance(prop.items, str):
                failures.extend(check_value(prop.items, prop, item, at))
            elif not isinstance(item, Mapping):
                failures.append((at, f"must be an object, got {shown(item)}"))
            else:
                failures.extend(check_types(prop.items, item, f"{at}."))
        return failures
    raise ValueError(f"unknown property type {kind}")


def article(kind: str) -> str:
    return {"integer": "an integer", "array": "a list", "object": "an object"}.get(
        kind, f"a {kind}"
    )


def shown(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list"}
    name = kind.get(type(value), "object" if isinstance(value, Mapping) else type(value).__name__)
    text = repr(value)
    return f"{name} {text if len(text) <= 40 else text[:37] + '...'}"


def with_defaults(props: tuple[Prop, ...], values: Mapping[str, Any]) -> dict[str, Any]:
    """The values with each absent property's default (nested objects too)."""
    result = dict(values)
    for prop in props:
        value = result.get(prop.name)
        if value is None and prop.default is not None:
            result[prop.name] = prop.default
        elif prop.type == "object" and isinstance(value, Mapping):
            result[prop.name] = with_defaults(prop.fields, value)
        elif prop.type == "array" and not isinstance(prop.items, str) and isinstance(value, list):
            result[prop.name] = [
                with_defaults(prop.items, v) if isinstance(v, Mapping) else v for v in value
            ]
    return result


def to_engine(props: tuple[Prop, ...], values: Mapping[str, Any]) -> dict[str, Any]:
    """Engine parameters (snake_case, nested) of the declared input values."""
    result: dict[str, Any] = {}
    for prop in props:
        value = values.get(prop.name)
        if value is None or prop.output_only:
            continue
        result[prop.key] = engine_value(prop, value)
    return result


def engine_value(prop: Prop, value: Any) -> Any:
    if prop.type == "object" and isinstance(value, Mapping):
        return to_engine(prop.fields, value)
    if prop.type == "array" and not isinstance(prop.items, str) and isinstance(value, list):
        return [to_engine(prop.items, v) if isinstance(v, Mapping) else v for v in value]
    return value


def secret_paths(props: tuple[Prop, ...], values: Mapping[str, Any], path: str = "") -> set[str]:
    """The paths the schema declares secret, as present in `values`."""
    found: set[str] = set()
    for prop in props:
        value = values.get(prop.name)
        where = f"{path}{prop.name}"
        if value is None:
            continue
        if prop.secret:
            found.add(where)
        elif prop.type == "object" and isinstance(value, Mapping):
            found |= secret_paths(prop.fields, value, f"{where}.")
    return found
