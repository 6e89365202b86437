# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The six resources as the API has them: their properties, the API path and body of a
declaration, how an id names an object, and how the API's view of an object reads back as
the resource's inputs and outputs."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .props import Prop, camel, to_engine

PACKAGE = "vce"
# A name of the tenant's objects, as the API checks it (ids are parsed before any call).
NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?")

ZONE = Prop(
    "zone",
    "string",
    "The zone (`GET /v1/zones`); optional when the control plane has one zone.",
    replace=True,
)


def name_prop(what: str) -> Prop:
    return Prop(
        "name",
        "string",
        f"The {what}'s name within the tenant (1-32 of a-z, 0-9 and "
        "'-'); the resource's name when omitted.",
        replace=True,
    )


RETENTION = tuple(
    Prop(rule, "integer", f"Backups kept by the `{rule}` rule.")
    for rule in ("keepLast", "keepHourly", "keepDaily", "keepWeekly", "keepMonthly")
)
NIC = (
    Prop("network", "string", "The tenant network the NIC joins.", required=True),
    Prop(
        "mac",
        "string",
        "A fixed MAC address (52:54:00:xx:xx:xx); when omitted, a stable one derived from the "
        "tenant, the VM and the NIC's position.",
    ),
    Prop("ip", "string", "A fixed IPv4 address (a static DHCP lease on the network)."),
)
LEASE = (
    Prop("mac", "string", "The MAC address.", required=True),
    Prop("ip", "string", "The address leased to it.", required=True),
    Prop("hostname", "string", "The host name DHCP gives it."),
)
NIC_ADDRESS = (
    Prop("network", "string", "The network."),
    Prop("mac", "string", "The MAC address."),
    Prop("ip", "string", "The IPv4 address (reserved or leased); empty when unknown."),
)

VM_INPUTS = (
    name_prop("VM"),
    ZONE,
    Prop("state", "string", "running or stopped.", default="running"),
    Prop("vcpus", "integer", "vCPUs.", default=1),
    Prop("maxVcpus", "integer", "The vCPU ceiling for live growth (defaults to vcpus)."),
    Prop("memoryMib", "integer", "RAM in MiB.", required=True),
    Prop("maxMemoryMib", "integer", "The RAM ceiling for live growth, in MiB."),
    Prop(
        "bootDisk",
        "object",
        "The boot disk: a copy-on-write qcow2 over a base image.",
        type_name="VmBootDisk",
        required=True,
        fields=(
            Prop(
                "image",
                "string",
                "The base image: an image of the zone's catalogue or one of the tenant's disks "
                "(a name; never a host path).",
                required=True,
                replace=True,
            ),
            Prop("sizeGib", "integer", "Size in GiB (grows live, never shrinks).", required=True),
            Prop("pool", "string", "The storage pool (defaults to `default`).", replace=True),
        ),
    ),
    Prop(
        "disks",
        "array",
        "Names of the tenant's extra disks to attach, in order: the VM's whole set (`[]` detaches "
        "them all); left out, the VM keeps the disks it has (a Disk's attachTo attaches them).",
        items="string",
        kept=True,
    ),
    Prop("nics", "array", "Network interfaces.", type_name="VmNic", items=NIC),
    Prop(
        "cloudInit",
        "object",
        "First-boot configuration (a NoCloud seed).",
        type_name="VmCloudInit",
        fields=(
            Prop("hostname", "string", "The guest's host name."),
            Prop(
                "sshAuthorizedKeys", "array", "Public SSH keys of the default user.", items="string"
            ),
            Prop("userData", "string", "Extra cloud-config user data (kept secret).", secret=True),
        ),
    ),
    Prop(
        "allowRestart", "boolean", "Let changes that need a restart restart the VM.", default=False
    ),
    Prop("shutdownTimeout", "integer", "Seconds to wait for a clean shutdown.", default=60),
)
VM_OUTPUTS = (
    Prop("powerState", "string", "The domain's state as libvirt reports it.", output_only=True),
    Prop(
        "nicAddresses",
        "array",
        "Each NIC's network, MAC and IPv4 address.",
        type_name="VmNicAddress",
        items=NIC_ADDRESS,
        output_only=True,
    ),
)

DISK_INPUTS = (
    name_prop("disk"),
    ZONE,
    Prop("sizeGib", "integer", "Size in GiB (grows live, never shrinks).", required=True),
    Prop("pool", "string", "The storage pool.", default="default", replace=True),
    Prop("format", "string", "qcow2 or raw.", default="qcow2", replace=True),
    Prop(
        "backingImage",
        "string",
        "A base image the disk starts as a copy of: an image of the zone's catalogue or another "
        "of the tenant's disks (a name; never a host path).",
        replace=True,
    ),
    Prop(
        "attachTo",
        "string",
        "The VM to attach the disk to; detached when the disk is deleted. Left out, the disk "
        "keeps its attachment (a Vm's disks attach it too).",
        kept=True,
    ),
)
DISK_OUTPUTS = (
    Prop("volume", "string", "The volume's name in its pool.", output_only=True),
    Prop("attachedTo", "string", "The VM the disk is attached to now.", output_only=True),
)

NETWORK_INPUTS = (
    name_prop("network"),
    ZONE,
    Prop("cidr", "string", "The IPv4 subnet, e.g. 10.10.0.0/24.", required=True),
    Prop("gateway", "string", "The host's address on it (defaults to the first)."),
    Prop("dhcpStart", "string", "First address of the DHCP range."),
    Prop("dhcpEnd", "string", "Last address of the DHCP range."),
    Prop("mode", "string", "nat, isolated or routed.", default="nat"),
    Prop("mtu", "integer", "The MTU."),
    Prop(
        "staticLeases", "array", "Fixed DHCP leases.", type_name="NetworkStaticLease", items=LEASE
    ),
    Prop(
        "allowReplace",
        "boolean",
        "Let changes that redefine the network (cidr, mode) do so.",
        default=False,
    ),
)
NETWORK_OUTPUTS = (Prop("active", "boolean", "Whether the network is active.", output_only=True),)

PUBLIC_IP_INPUTS = (
    name_prop("public IP"),
    ZONE,
    Prop("vm", "string", "The VM whose NIC the address is bound to (1:1 NAT).", required=True),
    Prop(
        "network",
        "string",
        "The VM's routed network with the NIC's fixed IP (the first when omitted).",
    ),
    Prop(
        "address",
        "string",
        "A particular address of the zone's pools (allocated when omitted).",
        replace=True,
    ),
)
PUBLIC_IP_OUTPUTS = (
    Prop("allocatedAddress", "string", "The public address.", output_only=True),
    Prop("pool", "string", "The zone pool it came from.", output_only=True),
    Prop("privateIp", "string", "The NIC address it is bound to.", output_only=True),
    Prop("bound", "boolean", "Whether the NAT binding is in place.", output_only=True),
)

ZONE_LINK_INPUTS = (
    name_prop("link"),
    Prop(
        "network",
        "string",
        "The tenant network joined across the two zones (declared with the same name in both).",
        required=True,
        replace=True,
    ),
    Prop(
        "zones",
        "array",
        "The two zones it joins; the first holds the network's gateway.",
        items="string",
        required=True,
        replace=True,
    ),
)
ZONE_LINK_OUTPUTS = (
    Prop("vni", "integer", "The VXLAN network identifier.", output_only=True),
    Prop("device", "string", "The VXLAN device on both hosts.", output_only=True),
)

BACKUP_INPUTS = (
    Prop("vm", "string", "The VM to back up.", required=True, replace=True),
    name_prop("schedule"),
    ZONE,
    Prop(
        "calendar",
        "string",
        "A systemd calendar expression among the plan's frequencies.",
        required=True,
    ),
    Prop(
        "retention",
        "object",
        "How many backups each rule keeps.",
        type_name="BackupScheduleRetention",
        required=True,
        fields=RETENTION,
    ),
    Prop(
        "disks",
        "array",
        "Disks to back up (boot and extra disk names; all when omitted).",
        items="string",
    ),
    Prop(
        "pool",
        "string",
        "A storage pool to keep the backups in instead of the host's backup directory.",
    ),
    Prop("timeoutMinutes", "integer", "How long one backup may take.", default=360),
    Prop(
        "purgeBackups",
        "boolean",
        "Delete the schedule's backups with it (kept by default).",
        default=False,
    ),
)
BACKUP_OUTPUTS = (
    Prop("frequency", "string", "The frequency the calendar was classed as.", output_only=True),
    Prop("timer", "string", "The systemd timer.", output_only=True),
    Prop("enabled", "boolean", "Whether the timer is enabled.", output_only=True),
    Prop(
        "backups",
        "array",
        "The schedule's backups, oldest first.",
        items="string",
        output_only=True,
    ),
)


class IdError(ValueError):
    """An id that names no object of the kind."""


@dataclass
class Observed:
    """A live object read back: its declared-shape inputs and computed outputs."""

    inputs: dict[str, Any]
    outputs: dict[str, Any]


View = Mapping[str, Any]  # an object as the API shows it (`{"object": ...}`)
Observe = Callable[[View, Mapping[str, Any]], Observed]


@dataclass(frozen=True)
class Kind:
    name: str
    description: str
    plural: str  # the API's path segment
    inputs: tuple[Prop, ...]
    outputs: tuple[Prop, ...]
    # The resource's inputs and outputs from the API's view, given what the program declared
    # (which names what the view cannot: an image the tenant named, the NIC's network).
    observe: Observe
    extra_ids: tuple[str, ...] = field(default_factory=tuple)
    # Whether the object lives in one zone (its id starts with the zone); a zone link spans two.
    zoned: bool = True

    @property
    def token(self) -> str:
        return f"{PACKAGE}:index:{self.name}"

    def path(self, name: str) -> str:
        return f"/v1/{self.plural}/{name}"

    def body(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The API's declaration (snake_case, as the engine's fields): every input but the
        name, which is the path's."""
        return to_engine(tuple(p for p in self.inputs if p.name != "name"), values)

    def id_of(self, values: Mapping[str, Any], zone: str | None) -> str:
        if not self.zoned:
            return str(values["name"])
        parts = [zone or "", *(str(values[key]) for key in (*self.extra_ids, "name"))]
        return "/".join(parts)

    def parse_id(self, resource_id: str) -> dict[str, Any]:
        """The identifying inputs an id stands for (import, read)."""
        parts = resource_id.split("/")
        keys = ["name"] if not self.zoned else ["zone", *self.extra_ids, "name"]
        if len(parts) != len(keys) or not all(parts):
            raise IdError(f"expected {'/'.join(f'<{k}>' for k in keys)}, got {resource_id!r}")
        for key, part in zip(keys, parts, strict=True):
            if key != "zone" and not NAME.fullmatch(part):
                raise IdError(f"{key} {part!r} is not a name (1-32 of a-z, 0-9 and '-')")
        return dict(zip(keys, parts, strict=True))


# -- reading back -----------------------------------------------------------------------------


def named_image(view_image: Any, declared: Any, key: str) -> str | None:
    """The base image by name: the API names it (catalogue image or the tenant's disk); the
    declared name stands in where the view has none to give."""
    if isinstance(view_image, str) and view_image and not view_image.startswith("<"):
        return view_image
    named = declared.get(key) if isinstance(declared, Mapping) else None
    return named if named and view_image else None


def observe_vm(view: View, declared: Mapping[str, Any]) -> Observed:
    boot = view.get("boot_disk") or {}
    extra = [
        d["serial"]
        for d in view.get("disks") or []
        if d.get("device") == "disk" and d.get("serial") and d["serial"] != "boot"
    ]
    boot_disk = {
        "image": named_image(boot.get("backing_image"), declared.get("bootDisk"), "image"),
        "sizeGib": round(boot.get("size_gib") or 0),
    }
    if boot.get("pool") and boot.get("pool") != "default":
        boot_disk["pool"] = boot["pool"]
    inputs = {
        "name": view["name"],
        "zone": view["zone"],
        "state": "running" if view["state"] in ("running", "paused") else "stopped",
        "vcpus": view["vcpus"],
        "memoryMib": view["memory_mib"],
        "bootDisk": {k: v for k, v in boot_disk.items() if v is not None},
        "disks": extra,
        "nics": [{"network": n["network"], "mac": n["mac"]} for n in view.get("nics") or []],
    }
    if view["max_vcpus"] != view["vcpus"]:
        inputs["maxVcpus"] = view["max_vcpus"]
    if view["max_memory_mib"] != view["memory_mib"]:
        inputs["maxMemoryMib"] = view["max_memory_mib"]
    return Observed(inputs, vm_outputs(view))


def vm_outputs(view: View) -> dict[str, Any]:
    return {
        "powerState": view["state"],
        "nicAddresses": [
            {"network": n["network"], "mac": n["mac"], "ip": n.get("ip") or ""}
            for n in view.get("nics") or []
        ],
    }


def observe_disk(view: View, declared: Mapping[str, Any]) -> Observed:
    inputs = {
        "name": view["name"],
        "zone": view["zone"],
        "sizeGib": round(view["size_gib"]),
        "pool": view["pool"],
        "format": view["format"],
        "backingImage": named_image(view.get("backing_image"), declared, "backingImage"),
        "attachTo": view.get("attached_to"),
    }
    outputs = {"volume": view["volume"], "attachedTo": view.get("attached_to")}
    return Observed(inputs, outputs)


def observe_network(view: View, declared: Mapping[str, Any]) -> Observed:
    dhcp = view.get("dhcp_range") or [None, None]
    inputs = {
        "name": view["name"],
        "zone": view["zone"],
        "cidr": view["cidr"],
        "gateway": view["gateway"],
        "dhcpStart": dhcp[0],
        "dhcpEnd": dhcp[1],
        "mode": view["mode"],
        "mtu": view.get("mtu"),
        "staticLeases": [
            {k: v for k, v in lease.items() if v is not None}
            for lease in view.get("static_leases") or []
        ],
    }
    return Observed(inputs, {"active": view["active"]})


def observe_public_ip(view: View, declared: Mapping[str, Any]) -> Observed:
    inputs = {"name": view["name"], "zone": view["zone"], "vm": view["vm"]}
    if declared.get("network"):
        inputs["network"] = declared["network"]
    if declared.get("address"):
        inputs["address"] = view["address"]
    outputs = {
        "allocatedAddress": view["address"],
        "pool": view["pool"],
        "privateIp": view["private_ip"],
        "bound": view["bound"],
    }
    return Observed(inputs, outputs)


def observe_zone_link(view: View, declared: Mapping[str, Any]) -> Observed:
    inputs = {"name": view["name"], "network": view["network"], "zones": list(view["zones"])}
    return Observed(inputs, {"vni": view["vni"], "device": view["device"]})


def observe_backup(view: View, declared: Mapping[str, Any]) -> Observed:
    retention = {
        camel(key): value
        for key, value in (view.get("retention") or {}).items()
        if value is not None
    }
    inputs = {
        "vm": view.get("vm") or declared.get("vm"),
        "name": view["name"],
        "zone": view["zone"],
        "calendar": view["calendar"],
        "retention": retention,
    }
    if view.get("disks") not in (None, "all"):
        inputs["disks"] = list(view["disks"])
    outputs = {
        "frequency": view.get("frequency"),
        "timer": view["timer"],
        "enabled": view["enabled"],
        "backups": view.get("backups") or [],
    }
    return Observed(inputs, outputs)


KINDS: dict[str, Kind] = {
    kind.token: kind
    for kind in (
        Kind("Vm", "A tenant VM on a KVM host.", "vms", VM_INPUTS, VM_OUTPUTS, observe_vm),
        Kind(
            "Disk",
            "A tenant disk (a volume in a storage pool).",
            "disks",
            DISK_INPUTS,
            DISK_OUTPUTS,
            observe_disk,
        ),
        Kind(
            "Network",
            "A tenant L2 network with DHCP.",
            "networks",
            NETWORK_INPUTS,
            NETWORK_OUTPUTS,
            observe_network,
        ),
        Kind(
            "PublicIp",
            "A public IPv4 address of the zone, bound 1:1 to a VM's NIC.",
            "public_ips",
            PUBLIC_IP_INPUTS,
            PUBLIC_IP_OUTPUTS,
            observe_public_ip,
        ),
        Kind(
            "ZoneLink",
            "One tenant network joined across two zones (VXLAN).",
            "zone_links",
            ZONE_LINK_INPUTS,
            ZONE_LINK_OUTPUTS,
            observe_zone_link,
            zoned=False,
        ),
        Kind(
            "BackupSchedule",
            "A VM's backup schedule: a systemd timer on its host and a retention policy.",
            "backup_schedules",
            BACKUP_INPUTS,
            BACKUP_OUTPUTS,
            observe_backup,
            extra_ids=("vm",),
        ),
    )
}
