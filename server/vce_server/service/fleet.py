# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a tenant's objects live: the zones (the ledger's host records), the one host of each
zone that holds a tenant's objects there, each host's parameters for the engine, and the
scrubbing of host details from every text a customer sees.

A tenant's objects in a zone live on one host, chosen at first use (the host with the fewest
placed tenants, then by name) and kept in `placements`: a zone link, a public IP and the VM
it binds must meet on one host, and the engine plans a tenant's objects host by host.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError, VceError
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import hosts, placements
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

PLACEMENT_LOCK = "(placements)"
HOST_PATH = "<host path>"
# An absolute path: segments of file-name characters after a slash that follows no word,
# dot, colon or slash (so CIDRs such as 10.0.0.0/24 and URIs stay). A first segment starting
# with a digit is a prefix length or a ratio, not a path.
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/[A-Za-z_.][\w.@+=,~-]*(?:/[\w.@+=,~-]+)*/?")
# The API's own paths, which messages name on purpose (POST /v1/requests).
API_PATH = "/v1/"
BARE_NAME = re.compile(r"[\w.-]+")
BACKUP_KEYS = ("backup_root", "unit_dir", "config_dir", "runner")


@dataclass(frozen=True)
class HostPlace:
    """One host record, as the engine's parameters need it."""

    name: str
    zone: str
    uri: str
    host_command: list[str] | None = None
    uplink: str | None = None
    public_pools: list[dict[str, Any]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, row: Any) -> HostPlace:
        return cls(
            name=row.name,
            zone=row.zone,
            uri=row.uri,
            host_command=json.loads(row.host_command) if row.host_command else None,
            uplink=row.uplink,
            public_pools=json.loads(row.public_pools or "[]"),
            settings=json.loads(row.settings) if row.settings else {},
        )

    def base(self) -> dict[str, Any]:
        """How the engine reaches the host."""
        return {"uri": self.uri, "host_command": self.host_command}

    def network_zone(self) -> dict[str, Any]:
        """A routed network is routed to the zone's uplink (the operator's, never the
        tenant's); without one the engine refuses a routed network."""
        return {"zone_config": {"uplink": self.uplink}} if self.uplink else {}

    def has_public_ips(self) -> bool:
        return bool(self.uplink and self.public_pools)

    def zone_config(self, path: str) -> dict[str, Any]:
        """The zone's uplink and public pools, for public IPs."""
        if not self.has_public_ips():
            raise SpecError(path, f"zone {self.zone} has no public IPs")
        return {"uplink": self.uplink, "public_pools": self.public_pools}

    def link_end(self, path: str) -> dict[str, Any]:
        """This host as one end of a zone link."""
        if not self.settings.get("underlay_ip") or not self.settings.get("underlay_dev"):
            raise SpecError(path, f"zone {self.zone} has no underlay for zone links")
        return {
            "zone": self.zone,
            "uri": self.uri,
            "underlay_ip": self.settings["underlay_ip"],
            "underlay_dev": self.settings["underlay_dev"],
            "host_command": self.host_command,
        }

    def backup_host(self) -> dict[str, Any]:
        """Where the host keeps backup schedules and backups (the engine's defaults where the
        record names none)."""
        found = {k: self.settings[k] for k in BACKUP_KEYS if self.settings.get(k)}
        return {"host_command": self.host_command, **found}

    def secrets(self) -> list[str]:
        """Every text that names this host or how it is reached, longest first."""
        texts = {self.uri, self.name}
        host = urlsplit(self.uri).hostname
        if host:
            texts.add(host)
        if self.host_command:
            command = self.host_command
            texts |= {shlex.join(command), " ".join(command), repr(command), json.dumps(command)}
            texts |= {repr(tuple(command))}
            # user@host and host names in the command; options and the program stay.
            texts |= {part for part in command if "@" in part or "." in part}
            # `ssh kvm1`, or an ssh of the server's own (a wrapper with its config and key).
            ssh = os.path.basename(command[0]) == "ssh"
            if ssh and len(command) > 1 and not command[-1].startswith("-"):
                texts.add(command[-1])
        return sorted((t for t in texts if t), key=len, reverse=True)


class Fleet:
    """The hosts of the ledger and the placements of tenants on them."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.compiled: tuple[tuple[Any, ...], Scrubber] | None = None

    def hosts(self) -> list[HostPlace]:
        with self.ledger.store.read() as connection:
            rows = connection.execute(sa.select(hosts).order_by(hosts.c.name)).all()
        return [HostPlace.of(row) for row in rows]

    def zones(self) -> list[str]:
        return sorted({host.zone for host in self.hosts()})

    def host_at(self, uri: str) -> HostPlace | None:
        return next((h for h in self.hosts() if h.uri == uri), None)

    def zone_name(self, zone: Any, path: str) -> str:
        """The zone a request names, or the only one when it names none."""
        zones = self.zones()
        if zone is None:
            if len(zones) == 1:
                return zones[0]
            shown = ", ".join(zones) or "none yet"
            raise SpecError(path, f"name one of the zones ({shown})")
        if not isinstance(zone, str) or zone not in zones:
            shown = ", ".join(zones) or "none yet"
            raise SpecError(path, f"unknown zone {zone!r}; the zones are: {shown}")
        return zone

    def place(self, tenant: str, zone: Any, path: str = "zone") -> HostPlace:
        """The host of the zone that holds the tenant's objects: the one recorded, else the
        zone's host with the fewest placed tenants (then by name), recorded now."""
        name = self.zone_name(zone, path)
        with self.ledger.store.locked(PLACEMENT_LOCK) as connection:
            placed = self.placed_host(connection, tenant, name)
            if placed is not None:
                return placed
            chosen = self.least_placed(connection, name)
            connection.execute(
                sa.insert(placements).values(
                    tenant=tenant, zone=name, host=chosen.name, placed_at=self.ledger.now()
                )
            )
            return chosen

    def where(self, tenant: str, zone: Any, path: str = "zone") -> HostPlace | None:
        """The tenant's host in the zone, without placing: None when the tenant was never
        placed there (it has nothing there)."""
        name = self.zone_name(zone, path)
        with self.ledger.store.read() as connection:
            return self.placed_host(connection, tenant, name)

    def preview(self, tenant: str, zone: Any, path: str = "zone") -> HostPlace:
        """The host a placement would give, without recording it (plans)."""
        name = self.zone_name(zone, path)
        with self.ledger.store.read() as connection:
            return self.placed_host(connection, tenant, name) or self.least_placed(connection, name)

    def placed(self, tenant: str) -> list[HostPlace]:
        """The tenant's hosts, one per zone it was placed in, by zone."""
        with self.ledger.store.read() as connection:
            rows = connection.execute(
                sa.select(placements.c.zone)
                .where(placements.c.tenant == tenant)
                .order_by(placements.c.zone)
            ).all()
            found = (self.placed_host(connection, tenant, row.zone) for row in rows)
            return [host for host in found if host is not None]

    def placed_host(self, connection: Any, tenant: str, zone: str) -> HostPlace | None:
        # One statement: with two, a placement committed between them (a first change of
        # the tenant running meanwhile) read as a placement whose host was removed.
        row = connection.execute(
            sa.select(placements.c.host.label("placed_on"), hosts)
            .select_from(placements.outerjoin(hosts, placements.c.host == hosts.c.name))
            .where(placements.c.tenant == tenant, placements.c.zone == zone)
        ).first()
        if row is None:
            return None
        if row.name is None:
            # The operator removed the host record: the tenant's objects are still there.
            raise VceError(f"the tenant's host in zone {zone} is not available; ask support")
        return HostPlace.of(row)

    def least_placed(self, connection: Any, zone: str) -> HostPlace:
        count = sa.func.count(placements.c.tenant)
        rows = connection.execute(
            sa.select(hosts, count.label("placed"))
            .outerjoin(placements, placements.c.host == hosts.c.name)
            .where(hosts.c.zone == zone)
            .group_by(*hosts.c)
            .order_by(count, hosts.c.name)
        ).all()
        return HostPlace.of(rows[0])

    def scrub(self, text: str) -> str:
        """`text` without the fleet's host URIs, host names and host commands (each becomes
        `zone <name>`) and without absolute paths (`<host path>`)."""
        return self.scrubber()(text)

    def scrubber(self) -> Scrubber:
        """The scrubbing of the fleet as the ledger has it now: one read of the hosts for all
        the texts of a reply (compiled once for each fleet seen)."""
        fleet = self.hosts()
        key = tuple((h.name, h.zone, h.uri, tuple(h.host_command or ())) for h in fleet)
        known = self.compiled
        if known is None or known[0] != key:
            known = (key, Scrubber(fleet))
            self.compiled = known
        return known[1]


class Scrubber:
    """Every secret of the fleet replaced by its host's zone in one pass, then the paths."""

    def __init__(self, fleet: Sequence[HostPlace]) -> None:
        zones = {host.zone for host in fleet}
        self.zone_of: dict[str, str] = {}
        for host in fleet:
            for secret in host.secrets():
                if secret not in zones:
                    self.zone_of.setdefault(secret, f"zone {host.zone}")
        alternatives = [
            # A bare name is replaced as a whole word only ("kvm1", not inside "kvm10").
            rf"(?<![\w.-]){re.escape(secret)}(?![\w-])"
            if BARE_NAME.fullmatch(secret)
            else re.escape(secret)
            for secret in sorted(self.zone_of, key=len, reverse=True)
        ]
        self.pattern = re.compile("|".join(alternatives)) if alternatives else None

    def __call__(self, text: str) -> str:
        if self.pattern is not None:
            text = self.pattern.sub(lambda match: self.zone_of[match.group(0)], text)
        return ABSOLUTE_PATH.sub(keep_api_paths, text)


def keep_api_paths(match: re.Match[str]) -> str:
    found = match.group(0)
    return found if found.startswith(API_PATH) else HOST_PATH


def scrubbed(value: Any, scrub: Any) -> Any:
    """Every string in a JSON value scrubbed (plans, objects read back)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {k: scrubbed(v, scrub) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrubbed(v, scrub) for v in value]
    return value
