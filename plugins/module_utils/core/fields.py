# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One description of each resource's declared fields, for every front end.

The spec parsers read which keys they accept from here, the Ansible modules build their
argument_spec from here (`ansible_options`), and a test checks the Pulumi property tables,
the modules and the parsers against it.

A field exists for some front ends only, and says so in `fronts`:
  SPEC     the declaration the engine's parser reads (one object, or an entry of the
           environment's list of that kind);
  ANSIBLE  the module's argument_spec;
  PULUMI   the resource's input properties (camelCase).
Where a front end treats a field differently, the field says so in `ansible` (argument_spec
keys that differ) or `pulumi` (required or default that differ), each with the reason. The
differences that hold for a whole front end:
  - an Ansible module removes its object with state=absent, so it requires only the fields
    that name the object; the others are required by `required_if` or the parser;
  - an Ansible list defaults to [] where the parser reads a missing list as empty;
  - a Pulumi resource's `name` defaults to the resource's name, and its schema has no choices
    (the engine checks them);
  - the environment module takes its entries (vms, disks, ...) as free-form dicts: the parsers
    check them, and the environment's default_pool applies where an entry names no pool.
A nested object's fields exist wherever the field holding them does.

The Pulumi property tables keep what only they have (descriptions, replacement, secrets);
tests/unit/core/test_fields.py checks their names, types, required and defaults against this.

No I/O and no Ansible import: the engine and the Pulumi provider import this too.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

SPEC = "spec"
ANSIBLE = "ansible"
PULUMI = "pulumi"
EVERY = frozenset({SPEC, ANSIBLE, PULUMI})
ANSIBLE_ONLY = frozenset({ANSIBLE})
PULUMI_ONLY = frozenset({PULUMI})
RUN_OPTION = frozenset({ANSIBLE, PULUMI})  # how to run, not what is declared: no spec field
NOT_PULUMI = frozenset({SPEC, ANSIBLE})

NETWORK_MODES = ("nat", "isolated", "routed")
VM_STATES = ("running", "stopped")
DISK_FORMATS = ("qcow2", "raw")
# What a Pulumi resource's name does that no other front end's does.
NAMED_BY_RESOURCE = MappingProxyType({"required": False})
# A field the Ansible module cannot require, because state=absent needs only the name.
NOT_FOR_ABSENT = MappingProxyType({"required": False})
EMPTY_LIST = MappingProxyType({"default": []})


@dataclass(frozen=True)
class Field:
    name: str  # as the engine and the Ansible modules spell it (snake_case)
    type: str  # str | int | bool | path | list | dict (Ansible's names; path is a str)
    elements: str | None = None  # a list's element type
    required: bool = False  # to declare the object
    default: Any = None  # what the engine takes when it is absent; None: nothing, or computed
    choices: tuple[str, ...] = ()
    fields: tuple[Field, ...] = ()  # a dict's fields, or those of each dict of a list
    fronts: frozenset[str] = EVERY
    ansible: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    pulumi: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def on(front: str, fields: Iterable[Field]) -> tuple[Field, ...]:
    """The fields a front end has."""
    return tuple(f for f in fields if front in f.fronts)


def spec_keys(fields: Iterable[Field]) -> frozenset[str]:
    """The keys a spec parser accepts."""
    return frozenset(f.name for f in on(SPEC, fields))


def declared(fields: Iterable[Field], params: Mapping[str, Any]) -> dict[str, Any]:
    """The spec fields of a front end's parameters that are set: what its parser reads."""
    return {f.name: params[f.name] for f in on(SPEC, fields) if params.get(f.name) is not None}


def ansible_options(fields: Iterable[Field]) -> dict[str, dict[str, Any]]:
    """argument_spec entries of the fields an Ansible module has."""
    return {f.name: ansible_option(f) for f in on(ANSIBLE, fields)}


def ansible_option(field: Field) -> dict[str, Any]:
    option: dict[str, Any] = {"type": field.type}
    if field.elements:
        option["elements"] = field.elements
    if field.required:
        option["required"] = True
    if field.default is not None:
        option["default"] = field.default
    if field.choices:
        option["choices"] = list(field.choices)
    if field.fields:
        option["options"] = ansible_options(field.fields)
    option.update(copy.deepcopy(dict(field.ansible)))  # no default list shared between specs
    if not option.get("required"):
        option.pop("required", None)
    return option


def pulumi_view(field: Field) -> Field:
    """The field as the Pulumi resource has it."""
    return dataclasses.replace(field, **field.pulumi)


# -- nested objects ---------------------------------------------------------------------------

STATIC_LEASE = (
    Field("mac", "str", required=True),
    Field("ip", "str", required=True),
    Field("hostname", "str"),
)
NIC = (
    Field("network", "str", required=True),
    Field("mac", "str"),  # derived from tenant, VM and position when absent
    Field("ip", "str"),
)
BOOT_DISK = (
    Field("image", "str", required=True),
    # The format of an operator's path (qcow2 when absent); a catalogue image or a disk has its
    # own. Pulumi's tenants name images only.
    Field("image_format", "str", choices=DISK_FORMATS, fronts=NOT_PULUMI),
    Field("size_gib", "int", required=True),
    Field("pool", "str"),  # the run's default pool when absent
)
CLOUD_INIT = (
    Field("hostname", "str"),  # the VM's name when absent
    Field(
        "ssh_authorized_keys",
        "list",
        elements="str",
        # Public keys, shown in plans: not secret, whatever Ansible guesses from the name.
        ansible={**EMPTY_LIST, "no_log": False},
    ),
    Field("user_data", "str"),
)
RETENTION = tuple(
    Field(rule, "int")
    for rule in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly")
)

# -- what the Ansible modules share -----------------------------------------------------------

URI = Field("uri", "str", default="qemu:///system", fronts=ANSIBLE_ONLY)
TENANT = Field("tenant", "str", required=True, fronts=ANSIBLE_ONLY)  # Pulumi: the provider's
LEDGER_URL = Field("ledger_url", "str", fronts=ANSIBLE_ONLY)
CONNECTION = (URI, TENANT, LEDGER_URL)
HOST_COMMAND = Field("host_command", "list", elements="str", fronts=ANSIBLE_ONLY)
# The tenant-facing placement: a zone of the control plane (the server picks the host).
ZONE = Field("zone", "str", fronts=PULUMI_ONLY)
SHUTDOWN_TIMEOUT = Field("shutdown_timeout", "int", default=60, fronts=RUN_OPTION)
# Where a VM's or disk's base image comes from: the catalogue of the host's zone (a module's
# `zone`; Pulumi's placement) and, for an operator's paths, the host's image directories.
IMAGE_ZONE = Field("zone", "str", fronts=RUN_OPTION)
# The kvm_host role's image directory; Pulumi (tenant-facing) has none, so takes no paths.
IMAGE_DIR = "/var/lib/vce-kvm/images"
IMAGE_DIRS = Field(
    "image_dirs", "list", elements="path", fronts=ANSIBLE_ONLY, ansible={"default": [IMAGE_DIR]}
)


NAME = Field("name", "str", required=True, pulumi=NAMED_BY_RESOURCE)


def ansible_state(*choices: str, default: str = "present") -> Field:
    """Ansible's state: present or a power state, and absent to remove the object (Pulumi
    removes by deleting the resource)."""
    return Field("state", "str", default=default, choices=choices, fronts=ANSIBLE_ONLY)


# -- the resources ----------------------------------------------------------------------------

VM = (
    *CONNECTION,
    NAME,
    IMAGE_ZONE,
    Field(
        "state",
        "str",
        default="running",
        choices=VM_STATES,
        ansible={"choices": [*VM_STATES, "absent"]},
    ),
    Field("vcpus", "int", default=1),
    Field("max_vcpus", "int"),  # vcpus when absent
    Field("memory_mib", "int", required=True, ansible=NOT_FOR_ABSENT),
    Field("max_memory_mib", "int"),  # memory_mib when absent
    Field("boot_disk", "dict", required=True, fields=BOOT_DISK, ansible=NOT_FOR_ABSENT),
    Field("disks", "list", elements="str", ansible=EMPTY_LIST),
    Field("nics", "list", elements="dict", fields=NIC, ansible=EMPTY_LIST),
    Field("cloud_init", "dict", fields=CLOUD_INIT),
    # The pool of a boot disk that names none; Pulumi's is always `default`.
    Field("default_pool", "str", default="default", fronts=ANSIBLE_ONLY),
    Field("allow_restart", "bool", default=False, fronts=RUN_OPTION),
    SHUTDOWN_TIMEOUT,
    IMAGE_DIRS,
    # The operator's block of one VM: not the tenant's declaration.
    Field("blocked", "bool", fronts=ANSIBLE_ONLY),
    Field("requested_at", "str", fronts=ANSIBLE_ONLY),
    Field("reason", "str", fronts=ANSIBLE_ONLY),
)

DISK = (
    *CONNECTION,
    NAME,
    IMAGE_ZONE,
    # Pulumi attaches when attachTo is set and detaches when it is not.
    ansible_state("present", "attached", "detached", "absent"),
    Field("size_gib", "int", required=True, ansible=NOT_FOR_ABSENT),
    Field("pool", "str", default="default"),  # in an environment: its default_pool
    Field("format", "str", default="qcow2", choices=DISK_FORMATS),
    Field("backing_image", "str"),
    Field("attach_to", "str"),
    IMAGE_DIRS,
)

PUBLIC_POOL = (
    Field("name", "str", required=True),
    Field("cidr", "str", required=True),
    Field("gateway", "str", required=True),
    Field("exclude", "list", elements="str", ansible=EMPTY_LIST),
)
ZONE_CONFIG = (
    Field("uplink", "str", required=True),
    Field("public_pools", "list", elements="dict", required=True, fields=PUBLIC_POOL),
)

NETWORK = (
    *CONNECTION,
    NAME,
    ZONE,
    ansible_state("present", "absent"),
    Field("cidr", "str", required=True, ansible=NOT_FOR_ABSENT),
    Field("gateway", "str"),  # the first address when absent
    Field("dhcp_start", "str"),
    Field("dhcp_end", "str"),
    Field("mode", "str", default="nat", choices=NETWORK_MODES),
    Field("mtu", "int"),
    Field("static_leases", "list", elements="dict", fields=STATIC_LEASE, ansible=EMPTY_LIST),
    Field("allow_replace", "bool", default=False, fronts=RUN_OPTION),
    # The operator's zone: a routed network is routed to its uplink (never the tenant's
    # choice). Pulumi reads it from the provider's zones.
    Field("zone_config", "dict", fields=ZONE_CONFIG, fronts=ANSIBLE_ONLY),
    # How the host's own addresses and routes are read (a CIDR may not overlap them).
    HOST_COMMAND,
)

PUBLIC_IP = (
    *CONNECTION,
    NAME,
    ansible_state("present", "absent"),
    Field("vm", "str", required=True, ansible=NOT_FOR_ABSENT),
    Field("network", "str"),  # the VM's first NIC when absent
    Field("address", "str"),  # the pools' first free one when absent
    # The same zone name; Pulumi takes the provider's only zone when it is omitted and reads
    # the zone's uplink and pools from the provider's configuration.
    Field("zone", "str", required=True, fronts=RUN_OPTION, pulumi={"required": False}),
    Field("zone_config", "dict", required=True, fields=ZONE_CONFIG, fronts=ANSIBLE_ONLY),
    HOST_COMMAND,
)

LINK_END = (
    Field("zone", "str", required=True),
    Field("uri", "str", required=True),
    Field("underlay_ip", "str", required=True),
    Field("underlay_dev", "str", required=True),
    Field("host_command", "list", elements="str"),
)
ZONE_LINK = (
    # A link spans two hosts: no single uri.
    TENANT,
    LEDGER_URL,
    NAME,
    Field("network", "str", required=True),
    ansible_state("present", "absent"),
    # Ansible and the engine take both ends' hosts; the tenant-facing fronts name the two
    # zones and the control plane reads their hosts from its records.
    Field("ends", "list", elements="dict", required=True, fields=LINK_END, fronts=NOT_PULUMI),
    Field("zones", "list", elements="str", required=True, fronts=PULUMI_ONLY),
)

# Where the host keeps schedules and backups; the control plane reads them from the host's record.
BACKUP_HOST = (
    Field("backup_root", "path", default="/var/lib/vce-kvm/backups", fronts=ANSIBLE_ONLY),
    Field("unit_dir", "path", default="/etc/systemd/system", fronts=ANSIBLE_ONLY),
    Field("config_dir", "path", default="/etc/vce-kvm/backup", fronts=ANSIBLE_ONLY),
    Field("runner", "path", default="/usr/local/bin/vce-backup", fronts=ANSIBLE_ONLY),
)
BACKUP_SCHEDULE = (
    *CONNECTION,
    Field("vm", "str", required=True),
    NAME,
    ZONE,
    ansible_state("present", "absent"),
    Field("calendar", "str", required=True, ansible=NOT_FOR_ABSENT),
    Field("retention", "dict", required=True, fields=RETENTION, ansible=NOT_FOR_ABSENT),
    Field("disks", "list", elements="str"),  # every disk when absent
    # The backup root when absent; a host path, so never the tenant-facing fronts'.
    Field("target", "path", fronts=NOT_PULUMI),
    Field("pool", "str"),
    Field("timeout_minutes", "int", default=360),
    Field("purge_backups", "bool", default=False, fronts=RUN_OPTION),
    HOST_COMMAND,
    *BACKUP_HOST,
)

# The operator's catalogue of base images (the vce.kvm.image module; no Pulumi resource: tenants
# only name the images).
IMAGE = (
    LEDGER_URL,
    HOST_COMMAND,
    Field("name", "str", required=True, fronts=ANSIBLE_ONLY),
    Field("zone", "str", required=True, fronts=ANSIBLE_ONLY),
    Field("path", "path", fronts=ANSIBLE_ONLY),  # required by required_if for state=present
    Field("format", "str", default="qcow2", choices=DISK_FORMATS, fronts=ANSIBLE_ONLY),
    Field("sha256", "str", fronts=ANSIBLE_ONLY),
    IMAGE_DIRS,
    ansible_state("present", "absent"),
)

# The host's guard table for tenant traffic (the vce.kvm.firewall module; the host's, not a
# tenant's: no Pulumi resource).
FIREWALL = (
    URI,
    LEDGER_URL,
    HOST_COMMAND,
    Field("uplink", "str", fronts=ANSIBLE_ONLY),
    Field("zone_config", "dict", fields=ZONE_CONFIG, fronts=ANSIBLE_ONLY),
    ansible_state("present", "absent"),
)

# A VM moved to another host of its zone (the vce.kvm.migration module): the operator's
# placement, not a tenant's declaration, so no Pulumi resource.
PEER_HOST = (
    Field("uri", "str", required=True, fronts=ANSIBLE_ONLY),
    Field("zone", "str", required=True, fronts=ANSIBLE_ONLY),
)
# A host a VM moves to: what a public IP (its nft and ip) and a zone link (its underlay) of the
# VM need there to follow it.
MOVE_TARGET = (
    *PEER_HOST,
    HOST_COMMAND,
    Field("underlay_ip", "str", fronts=ANSIBLE_ONLY),
    Field("underlay_dev", "str", fronts=ANSIBLE_ONLY),
)
MIGRATION = (
    *CONNECTION,
    NAME,
    Field("zone", "str", required=True, fronts=ANSIBLE_ONLY),
    Field("destination", "dict", required=True, fields=MOVE_TARGET, fronts=ANSIBLE_ONLY),
    # What a public IP bound to the VM needs to follow it: the zone, both hosts' nft and ip.
    Field("zone_config", "dict", fields=ZONE_CONFIG, fronts=ANSIBLE_ONLY),
    HOST_COMMAND,
)

# A host drained for maintenance (the vce.kvm.drain module): its VMs moved to the zone's
# other hosts, an announced window recorded for each VM that cannot move.
MAINTENANCE_WINDOW = (
    Field("announced_at", "str", required=True, fronts=ANSIBLE_ONLY),
    Field("starts_at", "str", fronts=ANSIBLE_ONLY),  # the run's time when absent
    Field("ends_at", "str", required=True, fronts=ANSIBLE_ONLY),
    Field("note", "str", fronts=ANSIBLE_ONLY),
)
DRAIN = (
    URI,
    LEDGER_URL,
    Field("zone", "str", required=True, fronts=ANSIBLE_ONLY),
    Field(
        "peers",
        "list",
        elements="dict",
        fields=MOVE_TARGET,
        fronts=ANSIBLE_ONLY,
        ansible=EMPTY_LIST,
    ),
    Field("maintenance", "dict", required=True, fields=MAINTENANCE_WINDOW, fronts=ANSIBLE_ONLY),
    Field("zone_config", "dict", fields=ZONE_CONFIG, fronts=ANSIBLE_ONLY),
    HOST_COMMAND,
)

KINDS: dict[str, tuple[Field, ...]] = {
    "vm": VM,
    "disk": DISK,
    "network": NETWORK,
    "public_ip": PUBLIC_IP,
    "zone_link": ZONE_LINK,
    "backup_schedule": BACKUP_SCHEDULE,
}
