# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The six resources as thin adapters over the engine: their properties, the engine entry
point each calls, how an id names an object, and how the live object reads back."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.vce.kvm.plugins.module_utils.core import fields
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.core.result import Result
from ansible_collections.vce.kvm.plugins.module_utils.core.spec import (
    parse_disk,
    parse_network,
    parse_vm,
)
from ansible_collections.vce.kvm.plugins.module_utils.core.validation import (
    check_image_name,
    check_name,
)
from ansible_collections.vce.kvm.plugins.module_utils.core.zones import (
    parse_public_zone,
    parse_zone_link,
    zone_uplink,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.facade import (
    read_object,
    run_disk,
    run_network,
    run_vm,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.gate import (
    Declaration,
    declare_disk,
    declare_network,
    declare_vm,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.backup_schedule import (
    declared_schedule,
    read_backup_schedule,
    run_backup_schedule,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.public_ip import (
    declared_public_ip,
    read_public_ip,
    run_public_ip,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.zone_link import (
    read_zone_link,
    recorded_zone_link,
    run_zone_link,
)

from .config import ProviderConfig
from .props import Prop, camel, to_engine

PACKAGE = "vce"

ZONE = Prop(
    "zone",
    "string",
    "The zone (a key of the provider's `zones`); optional when the provider has one zone.",
    replace=True,
)
HOST = Prop(
    "host",
    "string",
    "The zone's host (a key of the zone's `hosts`); optional when the zone has one host.",
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
    HOST,
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
        "disks", "array", "Names of the tenant's extra disks to attach, in order.", items="string"
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
    Prop("libvirtName", "string", "The domain's name in libvirt.", output_only=True),
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
    HOST,
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
    Prop("attachTo", "string", "The VM to attach the disk to; detached when removed."),
)
DISK_OUTPUTS = (
    Prop("path", "string", "The volume's path on the host.", output_only=True),
    Prop("volume", "string", "The volume's name in its pool.", output_only=True),
    Prop("attachedTo", "string", "The VM the disk is attached to now.", output_only=True),
)

NETWORK_INPUTS = (
    name_prop("network"),
    ZONE,
    HOST,
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
NETWORK_OUTPUTS = (
    Prop("libvirtName", "string", "The network's name in libvirt.", output_only=True),
    Prop("bridge", "string", "The host bridge.", output_only=True),
    Prop("active", "boolean", "Whether the network is active.", output_only=True),
)

PUBLIC_IP_INPUTS = (
    name_prop("public IP"),
    ZONE,
    HOST,
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
    HOST,
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
    Prop("target", "string", "A directory under the host's backup root."),
    Prop("pool", "string", "A storage pool to keep the backups in instead of `target`."),
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


@dataclass
class Observed:
    """A live object read back: its declared-shape inputs and computed outputs."""

    inputs: dict[str, Any]
    outputs: dict[str, Any]


@dataclass
class Kind:
    name: str
    description: str
    inputs: tuple[Prop, ...]
    outputs: tuple[Prop, ...]
    run: Callable[[dict[str, Any], bool], Result]
    params: Callable[[ProviderConfig, dict[str, Any]], dict[str, Any]]
    observe: Callable[[ProviderConfig, dict[str, Any]], Observed | None]
    # The computed outputs from the object's facts, as the engine's run returns them under
    # `facts_key` and as `observe` reads them.
    outputs_of: Callable[[Mapping[str, Any]], dict[str, Any]]
    facts_key: str
    # Check reads the engine parameters with the parsers the engine's run uses, so a preview
    # refuses what an apply would: `declare` (libvirt-counted usage) parses them, else `validate`.
    declare: Callable[[dict[str, Any]], Declaration] | None = None
    validate: Callable[[dict[str, Any]], Any] | None = None
    counted: str | None = None  # ledger-counted quota kind (one per object)
    # A disk attached by this resource is detached before it is deleted.
    detach_first: bool = False
    extra_ids: tuple[str, ...] = field(default_factory=tuple)
    # Whether the object lives in one zone (its id starts with the zone); a zone link spans two.
    zoned: bool = True

    @property
    def token(self) -> str:
        return f"{PACKAGE}:index:{self.name}"

    def id_of(self, config: ProviderConfig, values: Mapping[str, Any]) -> str:
        if not self.zoned:
            return str(values["name"])
        where = config.where(values.get("zone"), values.get("host"))
        parts = [where.zone, *([where.host] if config.hosted(where.zone) else [])]
        parts += [str(values[key]) for key in (*self.extra_ids, "name")]
        return "/".join(parts)

    def parse_id(self, config: ProviderConfig, resource_id: str) -> dict[str, Any]:
        """The identifying inputs an id stands for (import)."""
        parts = resource_id.split("/")
        if not self.zoned:
            if len(parts) != 1:
                raise SpecError("id", f"a zone link's id is its name, got {resource_id!r}")
            return {"name": check_name(parts[0], "id")}
        keys = ["zone", "host"] if len(parts) == 3 + len(self.extra_ids) else ["zone"]
        keys += [*self.extra_ids, "name"]
        if len(parts) != len(keys):
            raise SpecError(
                "id", f"expected {'/'.join(f'<{k}>' for k in keys)}, got {resource_id!r}"
            )
        values = dict(zip(keys, parts, strict=True))
        where = config.where(values["zone"], values.get("host"))
        for key in (*self.extra_ids, "name"):
            check_name(values[key], "id")
        return {**values, "zone": where.zone}


# -- engine parameters ----------------------------------------------------------------------


def base(config: ProviderConfig, values: Mapping[str, Any]) -> dict[str, Any]:
    where = config.where(values.get("zone"), values.get("host"))
    return {"uri": where.uri, "tenant": config.tenant, "ledger_url": config.ledger_url}


def tenant_images(config: ProviderConfig, values: Mapping[str, Any]) -> dict[str, Any]:
    """A tenant's base images come from the zone's catalogue or its own disks: no image
    directory, so the engine takes no host path."""
    return {"zone": config.where(values.get("zone"), values.get("host")).zone, "image_dirs": []}


def vm_params(config: ProviderConfig, values: dict[str, Any]) -> dict[str, Any]:
    return {
        **base(config, values),
        **engine_inputs(VM_INPUTS, values),
        **tenant_images(config, values),
    }


def disk_params(config: ProviderConfig, values: dict[str, Any]) -> dict[str, Any]:
    params = {
        **base(config, values),
        **engine_inputs(DISK_INPUTS, values),
        **tenant_images(config, values),
    }
    params["state"] = "attached" if values.get("attachTo") else "present"
    return params


def network_params(config: ProviderConfig, values: dict[str, Any]) -> dict[str, Any]:
    """A routed network is routed to its zone's uplink, from the provider's configuration."""
    zone = config.zone(values.get("zone"))
    params = {
        **base(config, values),
        **engine_inputs(NETWORK_INPUTS, values),
        "host_command": zone.host_command,
    }
    if zone.settings.get("uplink"):
        params["zone_config"] = {"uplink": zone.settings["uplink"]}
    return params


def public_ip_params(config: ProviderConfig, values: dict[str, Any]) -> dict[str, Any]:
    zone = config.zone(values.get("zone"))
    return {
        **base(config, values),
        **engine_inputs(PUBLIC_IP_INPUTS, values),
        "zone": zone.name,
        "zone_config": zone.public_ip_config("zone"),
        "host_command": zone.host_command,
    }


def zone_link_params(config: ProviderConfig, values: dict[str, Any]) -> dict[str, Any]:
    zones = values.get("zones") or []
    if len(zones) != 2:
        raise SpecError("zones", f"a zone link joins exactly two zones, got {len(zones)}")
    return {
        "tenant": config.tenant,
        "ledger_url": config.ledger_url,
        "name": values.get("name"),
        "network": values.get("network"),
        "ends": [
            config.zone(z, f"zones[{i}]").link_end(f"zones[{i}]") for i, z in enumerate(zones)
        ],
    }


def backup_params(config: ProviderConfig, values: dict[str, Any]) -> dict[str, Any]:
    zone = config.zone(values.get("zone"))
    return {
        **base(config, values),
        **engine_inputs(BACKUP_INPUTS, values),
        **zone.backup_host(),
    }


def engine_inputs(props: tuple[Prop, ...], values: Mapping[str, Any]) -> dict[str, Any]:
    declared = [p for p in props if p.name not in ("zone", "host")]
    return to_engine(tuple(declared), values)


# -- quota declarations (Check) -----------------------------------------------------------


def declare_vm_values(params: dict[str, Any]) -> Declaration:
    spec = parse_vm(fields.declared(fields.VM, params), "", params["tenant"], "default")
    check_image_name(spec.boot_disk.image, "boot_disk.image")
    key, usage = declare_vm(spec)
    return Declaration({key: usage})


def declare_disk_values(params: dict[str, Any]) -> Declaration:
    raw = fields.declared(fields.DISK, params)
    spec = parse_disk(raw, "", params.get("pool") or "default")
    if spec.backing_image is not None:
        check_image_name(spec.backing_image, "backing_image")
    key, usage = declare_disk(spec)
    return Declaration({key: usage})


def declare_network_values(params: dict[str, Any]) -> Declaration:
    spec = parse_network(fields.declared(fields.NETWORK, params), "", zone_uplink(params))
    key, usage = declare_network(spec)
    return Declaration({key: usage})


def validate_public_ip(params: dict[str, Any]) -> None:
    declared_public_ip(params, parse_public_zone(params.get("zone"), params.get("zone_config")))


def validate_zone_link(params: dict[str, Any]) -> None:
    parse_zone_link(params, "")


# -- reading back -----------------------------------------------------------------------------


def placement(config: ProviderConfig, values: Mapping[str, Any]) -> dict[str, Any]:
    where = config.where(values.get("zone"), values.get("host"))
    found = {"zone": where.zone}
    if config.hosted(where.zone):
        found["host"] = where.host
    return found


def read_params(config: ProviderConfig, values: Mapping[str, Any]) -> dict[str, Any]:
    return {**base(config, values), "name": values["name"]}


def declared_image(declared: Any, key: str, backing: str | None) -> str | None:
    """The base image as the tenant named it: libvirt shows only the file it resolved to, and
    the engine never lets that change under a declared name."""
    named = declared.get(key) if isinstance(declared, Mapping) else None
    return named if named and backing else backing


def observe_vm(config: ProviderConfig, values: dict[str, Any]) -> Observed | None:
    name = values["name"]
    vm = read_object(read_params(config, values), "vms")
    if vm is None:
        return None
    boot = vm["boot_disk"]
    boot_paths = {boot.get("path")}
    extra = [
        d["serial"] for d in vm["disks"] if d["device"] == "disk" and d["path"] not in boot_paths
    ]
    boot_disk = {
        "image": declared_image(values.get("bootDisk"), "image", boot.get("backing_image")),
        "sizeGib": round(boot.get("size_gib") or 0),
    }
    if boot.get("pool") and boot.get("pool") != "default":
        boot_disk["pool"] = boot["pool"]
    inputs = {
        "name": name,
        **placement(config, values),
        "state": "running" if vm["state"] in ("running", "paused") else "stopped",
        "vcpus": vm["vcpus"],
        "memoryMib": vm["memory_mib"],
        "bootDisk": boot_disk,
        "disks": [d for d in extra if d],
        "nics": [{"network": n["network"], "mac": n["mac"]} for n in vm["nics"]],
    }
    if vm["max_vcpus"] != vm["vcpus"]:
        inputs["maxVcpus"] = vm["max_vcpus"]
    if vm["max_memory_mib"] != vm["memory_mib"]:
        inputs["maxMemoryMib"] = vm["max_memory_mib"]
    return Observed(inputs, vm_outputs(vm))


def vm_outputs(vm: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "libvirtName": vm["libvirt_name"],
        "powerState": vm["state"],
        "nicAddresses": [
            {"network": n["network"], "mac": n["mac"], "ip": n["ip"] or ""} for n in vm["nics"]
        ],
    }


def observe_disk(config: ProviderConfig, values: dict[str, Any]) -> Observed | None:
    name = values["name"]
    disk = read_object(read_params(config, values), "disks")
    if disk is None:
        return None
    inputs = {
        "name": name,
        **placement(config, values),
        "sizeGib": round(disk["size_gib"]),
        "pool": disk["pool"],
        "format": disk["format"],
        "backingImage": declared_image(values, "backingImage", disk["backing_image"]),
        "attachTo": disk["attached_to"],
    }
    return Observed(inputs, disk_outputs(disk))


def disk_outputs(disk: Mapping[str, Any]) -> dict[str, Any]:
    return {"path": disk["path"], "volume": disk["volume"], "attachedTo": disk["attached_to"]}


def observe_network(config: ProviderConfig, values: dict[str, Any]) -> Observed | None:
    name = values["name"]
    net = read_object(read_params(config, values), "networks")
    if net is None:
        return None
    inputs = {
        "name": name,
        **placement(config, values),
        "cidr": net["cidr"],
        "gateway": net["gateway"],
        "dhcpStart": net["dhcp_range"][0],
        "dhcpEnd": net["dhcp_range"][1],
        "mode": net["mode"],
        "mtu": net["mtu"],
        "staticLeases": [
            {k: v for k, v in lease.items() if v is not None} for lease in net["static_leases"]
        ],
    }
    return Observed(inputs, network_outputs(net))


def network_outputs(net: Mapping[str, Any]) -> dict[str, Any]:
    return {"libvirtName": net["libvirt_name"], "bridge": net["bridge"], "active": net["active"]}


def observe_public_ip(config: ProviderConfig, values: dict[str, Any]) -> Observed | None:
    found = read_public_ip(public_ip_params(config, {**values, "vm": values.get("vm") or "-"}))
    if found is None:
        return None
    inputs = {"name": values["name"], **placement(config, values), "vm": found["vm"]}
    if values.get("network"):
        inputs["network"] = values["network"]
    if values.get("address"):
        inputs["address"] = found["address"]
    return Observed(inputs, public_ip_outputs(found))


def public_ip_outputs(found: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "allocatedAddress": found["address"],
        "pool": found["pool"],
        "privateIp": found["private_ip"],
        "bound": found["bound"],
    }


def observe_zone_link(config: ProviderConfig, values: dict[str, Any]) -> Observed | None:
    recorded = recorded_zone_link(
        {"tenant": config.tenant, "ledger_url": config.ledger_url, "name": values["name"]}
    )
    if recorded is None:
        return None
    zones = values.get("zones") or []
    if len(zones) != 2:
        zones = recorded["zones"]
    params = zone_link_params(config, {**values, "zones": zones, "network": recorded["network"]})
    facts = read_zone_link(params)
    if facts is None:
        return None
    inputs = {
        "name": values["name"],
        "network": facts["network"],
        "zones": [end["zone"] for end in facts["ends"]],
    }
    return Observed(inputs, zone_link_outputs(facts))


def zone_link_outputs(facts: Mapping[str, Any]) -> dict[str, Any]:
    return {"vni": facts["vni"], "device": facts["device"]}


def observe_backup(config: ProviderConfig, values: dict[str, Any]) -> Observed | None:
    found = read_backup_schedule(backup_params(config, values))
    if found is None:
        return None
    retention = {
        camel_key: value
        for key, value in (found.get("retention") or {}).items()
        if (camel_key := camel(key)) and value is not None
    }
    inputs = {
        "vm": values["vm"],
        "name": values["name"],
        **placement(config, values),
        "calendar": found["calendar"],
        "retention": retention,
    }
    if found.get("disks") not in (None, "all"):
        inputs["disks"] = list(found["disks"])
    return Observed(inputs, backup_outputs(found))


def backup_outputs(found: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "frequency": found.get("frequency"),
        "timer": found["timer"],
        "enabled": found["enabled"],
        "backups": found.get("backups") or [],
    }


KINDS: dict[str, Kind] = {
    kind.token: kind
    for kind in (
        Kind(
            "Vm",
            "A tenant VM on a KVM host.",
            VM_INPUTS,
            VM_OUTPUTS,
            run_vm,
            vm_params,
            observe_vm,
            vm_outputs,
            "vm",
            declare=declare_vm_values,
        ),
        Kind(
            "Disk",
            "A tenant disk (a volume in a storage pool).",
            DISK_INPUTS,
            DISK_OUTPUTS,
            run_disk,
            disk_params,
            observe_disk,
            disk_outputs,
            "disk",
            declare=declare_disk_values,
            detach_first=True,
        ),
        Kind(
            "Network",
            "A tenant L2 network with DHCP.",
            NETWORK_INPUTS,
            NETWORK_OUTPUTS,
            run_network,
            network_params,
            observe_network,
            network_outputs,
            "network",
            declare=declare_network_values,
        ),
        Kind(
            "PublicIp",
            "A public IPv4 address of the zone, bound 1:1 to a VM's NIC.",
            PUBLIC_IP_INPUTS,
            PUBLIC_IP_OUTPUTS,
            run_public_ip,
            public_ip_params,
            observe_public_ip,
            public_ip_outputs,
            "public_ip",
            validate=validate_public_ip,
            counted="public_ips",
        ),
        Kind(
            "ZoneLink",
            "One tenant network joined across two zones (VXLAN).",
            ZONE_LINK_INPUTS,
            ZONE_LINK_OUTPUTS,
            run_zone_link,
            zone_link_params,
            observe_zone_link,
            zone_link_outputs,
            "zone_link",
            validate=validate_zone_link,
            counted="zone_links",
            zoned=False,
        ),
        Kind(
            "BackupSchedule",
            "A VM's backup schedule: a systemd timer on its host and a retention policy.",
            BACKUP_INPUTS,
            BACKUP_OUTPUTS,
            run_backup_schedule,
            backup_params,
            observe_backup,
            backup_outputs,
            "backup_schedule",
            validate=declared_schedule,
            counted="backup_schedules",
            extra_ids=("vm",),
        ),
    )
}
