# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The provider's configuration: the tenant, the ledger, and each zone's host(s)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.core.validation import check_name

from .props import Prop, check_types, to_engine

POOL = (
    Prop("name", "string", "The pool's name.", required=True),
    Prop("cidr", "string", "The public subnet.", required=True),
    Prop("gateway", "string", "The upstream gateway.", required=True),
    Prop("exclude", "array", "Addresses never allocated.", items="string"),
)
ZONE_FIELDS = (
    Prop("uri", "string", "The libvirt URI of the zone's host (when it has one)."),
    Prop(
        "hosts",
        "map",
        "The zone's hosts by name, each a libvirt URI (when it has several).",
        items="string",
    ),
    Prop("uplink", "string", "The host interface towards the public network (public IPs)."),
    Prop(
        "publicPools",
        "array",
        "The zone's public IPv4 pools.",
        type_name="ZonePublicPool",
        items=POOL,
    ),
    Prop("underlayIp", "string", "The host's underlay address (zone links)."),
    Prop("underlayDev", "string", "The host's underlay interface (zone links)."),
    Prop(
        "hostCommand",
        "array",
        "A command prefix that runs host commands (e.g. ssh or nsenter); local when omitted.",
        items="string",
    ),
    Prop("backupRoot", "string", "Where backups live on the host."),
    Prop("unitDir", "string", "Where backup timers are written."),
    Prop("configDir", "string", "Where backup schedules' configuration is written."),
    Prop("runner", "string", "The backup runner's path on the host."),
)
CONFIG = (
    Prop(
        "endpoint",
        "string",
        "The control plane's URL, e.g. https://panel.example.net (VCE_ENDPOINT when unset).",
    ),
    Prop("token", "string", "An API token of your tenant (VCE_TOKEN when unset).", secret=True),
)


@dataclass(frozen=True)
class Zone:
    name: str
    hosts: dict[str, str]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def host_command(self) -> list[str] | None:
        return self.settings.get("host_command")

    def public_ip_config(self, path: str) -> dict[str, Any]:
        if not self.settings.get("uplink") or not self.settings.get("public_pools"):
            raise SpecError(
                path, f"zone {self.name} has no public IPs: set its uplink and publicPools"
            )
        return {"uplink": self.settings["uplink"], "public_pools": self.settings["public_pools"]}

    def link_end(self, path: str) -> dict[str, Any]:
        if len(self.hosts) != 1:
            raise SpecError(path, f"zone {self.name} must have one host to hold a zone link end")
        if not self.settings.get("underlay_ip") or not self.settings.get("underlay_dev"):
            raise SpecError(
                path, f"zone {self.name} has no underlay: set its underlayIp and underlayDev"
            )
        return {
            "zone": self.name,
            "uri": next(iter(self.hosts.values())),
            "underlay_ip": self.settings["underlay_ip"],
            "underlay_dev": self.settings["underlay_dev"],
            "host_command": self.host_command,
        }

    def backup_host(self) -> dict[str, Any]:
        keys = ("host_command", "backup_root", "unit_dir", "config_dir", "runner")
        return {k: self.settings[k] for k in keys if self.settings.get(k) is not None}


@dataclass(frozen=True)
class Where:
    zone: str
    host: str
    uri: str


@dataclass(frozen=True)
class ProviderConfig:
    tenant: str
    ledger_url: str | None
    zones: dict[str, Zone]

    def zone(self, name: Any, path: str = "zone") -> Zone:
        if name is None:
            if len(self.zones) == 1:
                return next(iter(self.zones.values()))
            raise SpecError(path, f"name one of the provider's zones: {', '.join(self.zones)}")
        if name not in self.zones:
            raise SpecError(
                path, f"unknown zone {name!r}; the provider has {', '.join(sorted(self.zones))}"
            )
        return self.zones[name]

    def hosted(self, zone: str) -> bool:
        """Whether ids in the zone name their host (the zone declares several by name)."""
        return len(self.zones[zone].hosts) > 1

    def where(self, zone_name: Any, host: Any = None) -> Where:
        zone = self.zone(zone_name)
        if host is None:
            if len(zone.hosts) != 1:
                raise SpecError(
                    "host", f"name one of zone {zone.name}'s hosts: {', '.join(sorted(zone.hosts))}"
                )
            host = next(iter(zone.hosts))
        if host not in zone.hosts:
            raise SpecError("host", f"unknown host {host!r} in zone {zone.name}")
        return Where(zone.name, host, zone.hosts[host])


def parse_config(values: Mapping[str, Any]) -> ProviderConfig:
    """The configuration from Configure's values (objects may arrive as JSON text)."""
    values = {k: decoded(v) for k, v in values.items()}
    failures = check_types(CONFIG, values)
    if failures:
        path, reason = failures[0]
        raise SpecError(path, reason)
    tenant = check_name(values["tenant"], "tenant")
    zones = {}
    for name, raw in values["zones"].items():
        check_name(name, f"zones.{name}")
        settings = to_engine(ZONE_FIELDS, raw)
        hosts = dict(settings.pop("hosts", None) or {})
        uri = settings.pop("uri", None)
        if uri and hosts:
            raise SpecError(f"zones.{name}", "set uri (one host) or hosts (several), not both")
        if uri:
            hosts = {"host": uri}
        if not hosts:
            raise SpecError(f"zones.{name}.uri", "the libvirt URI of the zone's host is required")
        zones[name] = Zone(name, hosts, settings)
    return ProviderConfig(tenant, values.get("ledgerUrl") or None, zones)


def decoded(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
