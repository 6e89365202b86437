"""One description of each resource's fields (core.fields): the spec parsers, the Ansible
modules' argument_spec and DOCUMENTATION, and the Pulumi property tables agree with it, with
the differences the description states."""

from __future__ import annotations

import importlib
import ipaddress
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_collections.vce.kvm.plugins.doc_fragments.common import ModuleDocFragment
from ansible_collections.vce.kvm.plugins.module_utils.core import fields
from ansible_collections.vce.kvm.plugins.module_utils.core.backup_spec import (
    parse_retention,
    parse_schedule,
)
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.core.spec import (
    parse_boot_disk,
    parse_cloud_init,
    parse_disk,
    parse_lease,
    parse_network,
    parse_nic,
    parse_vm,
    parse_zone_links,
)
from ansible_collections.vce.kvm.plugins.module_utils.core.zones import (
    Pool,
    PublicZone,
    parse_link_end,
    parse_public_ip,
    parse_public_zone,
    zone_uplink,
)
from pulumi_resource_vce.props import Prop, camel
from pulumi_resource_vce.resources import KINDS as PULUMI_KINDS

MODULES_DIR = Path(fields.__file__).resolve().parents[2] / "modules"
MODULES = sorted(m.name for m in pkgutil.iter_modules([str(MODULES_DIR)]))
PULUMI_TYPES = {
    "str": "string",
    "path": "string",
    "int": "integer",
    "bool": "boolean",
    "list": "array",
    "dict": "object",
}
PULUMI_RESOURCES = {
    "vm": "Vm",
    "disk": "Disk",
    "network": "Network",
    "public_ip": "PublicIp",
    "zone_link": "ZoneLink",
    "backup_schedule": "BackupSchedule",
}

# -- Ansible ----------------------------------------------------------------------------------


class Captured(Exception):
    """Raised in place of AnsibleModule(): its keyword arguments are what the module declares."""


def module_arguments(name: str) -> dict[str, Any]:
    """What the module passes to AnsibleModule (argument_spec, required_if, ...)."""
    module = importlib.import_module(f"ansible_collections.vce.kvm.plugins.modules.{name}")
    found: dict[str, Any] = {}

    def capture(**arguments: Any) -> None:
        found.update(arguments)
        raise Captured

    original = module.AnsibleModule
    module.AnsibleModule = capture
    try:
        with pytest.raises(Captured):
            module.main()
    finally:
        module.AnsibleModule = original
    return found


@pytest.mark.parametrize("kind", sorted(fields.KINDS))
def test_module_argument_spec_is_the_description(kind):
    assert module_arguments(kind)["argument_spec"] == fields.ansible_options(fields.KINDS[kind])


@pytest.mark.parametrize("kind", sorted(fields.KINDS))
def test_ansible_requires_only_what_names_the_object(kind):
    """state=absent needs only the name: other required fields say why they are not required
    in the module (required_if or the parser asks for them)."""
    for field in fields.on(fields.ANSIBLE, fields.KINDS[kind]):
        option = fields.ansible_option(field)
        if field.required and not option.get("required"):
            assert field.ansible is fields.NOT_FOR_ABSENT, field.name


def fragment_options(reference: str) -> dict[str, Any]:
    """The options a documentation fragment of this collection adds."""
    _namespace, _collection, *rest = reference.split(".")
    attribute = "DOCUMENTATION" if len(rest) == 1 else rest[1].upper()
    assert rest[0] == "common", f"unknown fragment {reference}"
    return yaml.safe_load(getattr(ModuleDocFragment, attribute)).get("options") or {}


def documented_options(name: str) -> dict[str, Any]:
    module = importlib.import_module(f"ansible_collections.vce.kvm.plugins.modules.{name}")
    doc = yaml.safe_load(module.DOCUMENTATION)
    options: dict[str, Any] = {}
    for reference in doc.get("extends_documentation_fragment") or []:
        options.update(fragment_options(reference))
    # As Ansible merges them: a module's own keys of a fragment's option replace the fragment's.
    for name, option in (doc.get("options") or {}).items():
        options[name] = {**options.get(name, {}), **option}
    return options


def option_differences(documented: Mapping, declared: Mapping, where: str = "") -> Iterator[str]:
    """How DOCUMENTATION's options and an argument_spec differ, by option path."""
    for key in sorted(set(documented) ^ set(declared)):
        side = "DOCUMENTATION" if key in documented else "argument_spec"
        yield f"{where}{key}: only in {side}"
    for key in sorted(set(documented) & set(declared)):
        doc, spec = documented[key], declared[key]
        for attribute, absent in (
            ("type", "str"),
            ("elements", None),
            ("required", False),
            ("default", None),
            ("choices", None),
        ):
            if doc.get(attribute, absent) != spec.get(attribute, absent):
                yield (
                    f"{where}{key}.{attribute}: {doc.get(attribute, absent)!r} documented, "
                    f"{spec.get(attribute, absent)!r} declared"
                )
        # A dict option without suboptions in both is free-form (the engine parses it).
        if doc.get("suboptions") or spec.get("options"):
            yield from option_differences(
                doc.get("suboptions") or {}, spec.get("options") or {}, f"{where}{key}."
            )


@pytest.mark.parametrize("name", MODULES)
def test_module_documentation_matches_argument_spec(name):
    declared = module_arguments(name)["argument_spec"]
    assert list(option_differences(documented_options(name), declared)) == []


# -- Pulumi -----------------------------------------------------------------------------------


def prop_differences(
    described: tuple[fields.Field, ...], props: tuple[Prop, ...], where: str = ""
) -> Iterator[str]:
    """How the Pulumi inputs and the fields the description gives Pulumi differ."""
    wanted = {camel(f.name): fields.pulumi_view(f) for f in fields.on(fields.PULUMI, described)}
    inputs = {p.name: p for p in props if not p.output_only}
    for name in sorted(set(wanted) ^ set(inputs)):
        yield f"{where}{name}: only in {'the description' if name in wanted else 'Pulumi'}"
    for name in sorted(set(wanted) & set(inputs)):
        field, prop = wanted[name], inputs[name]
        if PULUMI_TYPES[field.type] != prop.type:
            yield f"{where}{name}: type {field.type} described, {prop.type} in Pulumi"
        if field.required != prop.required:
            yield f"{where}{name}: required {field.required} described, {prop.required} in Pulumi"
        if field.default != prop.default:
            yield f"{where}{name}: default {field.default!r} described, {prop.default!r} in Pulumi"
        if field.type == "dict":
            yield from prop_differences(field.fields, prop.fields, f"{where}{name}.")
        elif field.type == "list" and field.fields:
            yield from prop_differences(field.fields, prop.items, f"{where}{name}[].")
        elif field.type == "list" and PULUMI_TYPES[field.elements] != prop.items:
            yield f"{where}{name}: elements {field.elements} described, {prop.items} in Pulumi"


@pytest.mark.parametrize("kind", sorted(fields.KINDS))
def test_pulumi_inputs_are_the_description(kind):
    resource = PULUMI_KINDS[f"vce:index:{PULUMI_RESOURCES[kind]}"]
    assert list(prop_differences(fields.KINDS[kind], resource.inputs)) == []


def test_prop_differences_are_found():
    """The comparison itself: a default changed in the description is reported."""
    changed = tuple(
        fields.Field("vcpus", "int", default=2) if f.name == "vcpus" else f for f in fields.VM
    )
    resource = PULUMI_KINDS["vce:index:Vm"]
    assert list(prop_differences(changed, resource.inputs)) == [
        "vcpus: default 2 described, 1 in Pulumi"
    ]


# -- the spec parsers -------------------------------------------------------------------------

ZONE = PublicZone(
    "zone-a",
    "eth0",
    (Pool("pub-a", ipaddress.IPv4Network("203.0.113.0/28"), ipaddress.IPv4Address("203.0.113.1")),),
)


def parse_link(raw: Mapping[str, Any]) -> Any:
    """A zone link as the environment declares it."""
    return parse_zone_links({"zone_links": [raw]})


Parser = Callable[[Mapping[str, Any]], Any]
# Each description of declared fields, with the parser that reads it.
PARSERS: dict[str, tuple[tuple[fields.Field, ...], Parser]] = {
    "vm": (fields.VM, lambda raw: parse_vm(raw, "", "acme", "default")),
    "vm.boot_disk": (fields.BOOT_DISK, lambda raw: parse_boot_disk(raw, "", "default")),
    "vm.nics[]": (fields.NIC, lambda raw: parse_nic(raw, "", "acme", "web1", 0)),
    "vm.cloud_init": (fields.CLOUD_INIT, lambda raw: parse_cloud_init(raw, "", "web1")),
    "disk": (fields.DISK, lambda raw: parse_disk(raw, "", "default")),
    "network": (fields.NETWORK, lambda raw: parse_network(raw, "")),
    "network.static_leases[]": (
        fields.STATIC_LEASE,
        lambda raw: parse_lease(raw, "", ipaddress.IPv4Network("10.0.0.0/24")),
    ),
    "network.zone_config": (fields.ZONE_CONFIG, lambda raw: zone_uplink({"zone_config": raw})),
    "public_ip": (fields.PUBLIC_IP, lambda raw: parse_public_ip(raw, "", ZONE)),
    "public_ip.zone_config": (fields.ZONE_CONFIG, lambda raw: parse_public_zone("zone-a", raw)),
    "public_ip.zone_config.public_pools[]": (
        fields.PUBLIC_POOL,
        lambda raw: parse_public_zone("zone-a", {"uplink": "eth0", "public_pools": [raw]}),
    ),
    "zone_link": (fields.ZONE_LINK, parse_link),
    "zone_link.ends[]": (fields.LINK_END, lambda raw: parse_link_end(raw, "end")),
    "backup_schedule": (fields.BACKUP_SCHEDULE, lambda raw: parse_schedule(raw, "")),
    "backup_schedule.retention": (fields.RETENTION, lambda raw: parse_retention(raw, "")),
}
NESTED = {"vm.boot_disk", "vm.nics[]", "vm.cloud_init", "network.static_leases[]"}
NESTED |= {"network.zone_config", "public_ip.zone_config", "public_ip.zone_config.public_pools[]"}
NESTED |= {"zone_link.ends[]", "backup_schedule.retention"}


def accepts(parser: Parser, key: str) -> bool:
    """Whether the parser takes `key`: every parser refuses unknown keys before it reads any."""
    try:
        parser({key: None})
    except SpecError as error:
        return not (error.reason == "unknown option" and error.field.endswith(key))
    return True


def accepted_keys(described: tuple[fields.Field, ...], parser: Parser) -> set[str]:
    candidates = {f.name for f in described} | {camel(f.name) for f in described} | {"bogus"}
    return {key for key in candidates if accepts(parser, key)}


@pytest.mark.parametrize("what", sorted(PARSERS))
def test_parser_accepts_the_described_spec_fields(what):
    described, parser = PARSERS[what]
    # A nested object's fields are all the parser's (its parent says which front ends have it).
    expected = {f.name for f in described} if what in NESTED else fields.spec_keys(described)
    assert accepted_keys(described, parser) == expected


def test_every_nested_description_has_a_parser():
    nested = {
        f"{kind}.{f.name}{'[]' if f.type == 'list' else ''}"
        for kind, described in fields.KINDS.items()
        for f in described
        if f.fields
    }
    nested |= {"public_ip.zone_config.public_pools[]"}
    assert nested == NESTED


MINIMAL: dict[str, tuple[Parser, dict[str, Any]]] = {
    "vm": (
        PARSERS["vm"][1],
        {"name": "web1", "memory_mib": 128, "boot_disk": {"image": "debian-12", "size_gib": 1}},
    ),
    "disk": (PARSERS["disk"][1], {"name": "data1", "size_gib": 1}),
    "network": (PARSERS["network"][1], {"name": "lan", "cidr": "10.10.0.0/24"}),
}


@pytest.mark.parametrize("what", sorted(MINIMAL))
def test_parser_defaults_are_the_described_defaults(what):
    parser, raw = MINIMAL[what]
    spec = parser(raw)
    described = {f.name: f.default for f in PARSERS[what][0] if f.default is not None}
    defaults = {name: default for name, default in described.items() if hasattr(spec, name)}
    assert defaults, "the spec has none of the described defaults"
    assert {name: getattr(spec, name) for name in defaults} == defaults


def test_declared_picks_what_the_parser_reads():
    params = {"tenant": "acme", "uri": "qemu:///system", "name": "web1", "vcpus": None}
    assert fields.declared(fields.VM, {**params, "allow_restart": True}) == {"name": "web1"}
