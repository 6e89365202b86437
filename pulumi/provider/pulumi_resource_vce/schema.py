# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The package schema, built from the property tables (`python -m pulumi_resource_vce.schema`
writes schema.json; a test keeps the file and the tables in step)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from . import VERSION
from .config import CONFIG
from .functions import FUNCTIONS
from .props import Prop
from .resources import KINDS, PACKAGE

SCHEMA_FILE = Path(__file__).with_name("schema.json")


def build() -> dict[str, Any]:
    types: dict[str, Any] = {}
    config_props = properties(CONFIG, types)
    resources = {}
    for token, kind in KINDS.items():
        inputs = tuple(p for p in kind.inputs if not p.output_only)
        outputs = (*inputs, *kind.outputs)
        resources[token] = {
            "description": kind.description,
            "properties": properties(outputs, types),
            "required": sorted(p.name for p in outputs if p.required or p.output_only),
            "inputProperties": properties(inputs, types),
            "requiredInputs": sorted(p.name for p in inputs if p.required),
        }
    functions = {
        function.token: {
            "description": function.description,
            "inputs": object_spec(function.inputs, types),
            "outputs": object_spec(function.outputs, types),
        }
        for function in FUNCTIONS
    }
    return {
        "name": PACKAGE,
        "displayName": "vce.kvm",
        "version": VERSION,
        "description": "Tenant environments on the provider's KVM hosts: VMs, disks, networks, "
        "public IPs, cross-zone links and backup schedules, within the tenant's quotas.",
        "keywords": ["pulumi", "vce", "kvm", "libvirt", "category/infrastructure"],
        "license": "GPL-3.0-or-later",
        "config": {
            "variables": config_props,
            "defaults": sorted(p.name for p in CONFIG if p.required),
        },
        "provider": {
            "description": "The vce provider: a client of the control plane (its URL, a token).",
            "inputProperties": config_props,
            "requiredInputs": sorted(p.name for p in CONFIG if p.required),
        },
        "types": dict(sorted(types.items())),
        "resources": resources,
        "functions": functions,
        "language": {"python": {"packageName": "pulumi_vce"}},
    }


def object_spec(props: tuple[Prop, ...], types: dict[str, Any]) -> dict[str, Any]:
    """A function's inputs or outputs: an object type written in place."""
    return {
        "properties": properties(props, types),
        "required": sorted(p.name for p in props if p.required),
    }


def properties(props: tuple[Prop, ...], types: dict[str, Any]) -> dict[str, Any]:
    return {p.name: property_spec(p, types) for p in props}


def property_spec(prop: Prop, types: dict[str, Any]) -> dict[str, Any]:
    spec = {**type_spec(prop, types), "description": prop.description}
    if prop.default is not None:
        spec["default"] = prop.default
    if prop.replace:
        spec["replaceOnChanges"] = True
    if prop.secret:
        spec["secret"] = True
    return spec


def type_spec(prop: Prop, types: dict[str, Any]) -> dict[str, Any]:
    if prop.type == "object":
        return {"$ref": object_type(prop.type_name, prop.fields, types)}
    if prop.type in ("array", "map"):
        if isinstance(prop.items, str):
            items: dict[str, Any] = {"type": prop.items}
        else:
            items = {"$ref": object_type(prop.type_name, prop.items, types)}
        key = "items" if prop.type == "array" else "additionalProperties"
        return {"type": "array" if prop.type == "array" else "object", key: items}
    return {"type": prop.type}


def object_type(name: str, fields: tuple[Prop, ...], types: dict[str, Any]) -> str:
    token = f"{PACKAGE}:index:{name}"
    if token not in types:
        types[token] = {
            "type": "object",
            "properties": properties(fields, types),
            "required": sorted(p.name for p in fields if p.required),
        }
    return f"#/types/{token}"


def text() -> str:
    return json.dumps(build(), indent=2, sort_keys=False) + "\n"


if __name__ == "__main__":
    SCHEMA_FILE.write_text(text())
    sys.stdout.write(f"wrote {SCHEMA_FILE}\n")
