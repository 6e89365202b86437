# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A KVM host's record in the ledger: its zone, how runs reach it (libvirt URI and host command),
the zone's public pools on it, its zone-link underlay and backup paths, and the capacity libvirt
reports. The control plane reaches the host with nothing but this record.

The record is planned like any other object (check and diff mode show the changes) and written
in one ledger transaction under the host's lock. A record whose values are unchanged is not
written again; each write records the idempotency key of its values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ...core.errors import SpecError, libvirt_action
from ...core.plan import Change, Plan
from ...core.result import Result
from ...core.validation import as_list, check_ipv4, check_name, check_prefix, is_interface
from ...core.zones import Pool, parse_public_zone
from ...host.connection import DEFAULT_URI, Host
from ...ledger.tenants import Ledger, iso, key_of
from ..run import Run, conclude, noting_new_ledger
from .backup_schedule import check_host_path

try:
    import sqlalchemy as sa

    from ...ledger.schema import hosts
except ImportError:  # reported by the ledger's Store()
    sa = None

KIND = "host"
STATES = ("present", "absent")
# A DNS-style name in lowercase: the inventory's name of the host.
LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
# Matched with fullmatch; the length look-ahead ends at \Z, as `$` would allow a trailing newline.
HOST_NAME_PATTERN = re.compile(rf"(?=.{{1,253}}\Z){LABEL}(?:\.{LABEL})*")
MAX_URI = 255
# Fields of the record that a registration declares or reads from libvirt, in diff order.
VALUES = (
    "zone", "uri", "uplink", "public_pools", "host_command", "settings", "cpus", "memory_mib",
    "libvirt_version", "qemu_version",
)  # fmt: skip
# The host's settings (the record's `settings` object), each optional: the underlay a zone link
# runs over, and where backup schedules keep their units, configurations and backups. Checked as
# the zone_link and backup_schedule modules check them.
UNDERLAY_SETTINGS = ("underlay_ip", "underlay_dev")
PATH_SETTINGS = ("backup_root", "unit_dir", "config_dir", "runner")
SETTINGS = (*UNDERLAY_SETTINGS, *PATH_SETTINGS)

ZONE_CONFIG = "zone_config."
# How many objects a refusal names; the count says how many there are in all.
SHOWN_OBJECTS = 5


@dataclass(frozen=True)
class HostValues:
    """What a host's record holds besides its name and bookkeeping."""

    zone: str
    uri: str
    uplink: str | None
    public_pools: tuple[dict[str, Any], ...]
    host_command: tuple[str, ...] | None  # None: commands run where the run runs
    settings: dict[str, str]
    cpus: int
    memory_mib: int
    libvirt_version: str
    qemu_version: str

    def as_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["public_pools"] = [dict(pool) for pool in self.public_pools]
        values["host_command"] = None if self.host_command is None else list(self.host_command)
        values["settings"] = dict(self.settings)
        return values

    def key(self, name: str) -> str:
        return key_of(KIND, name, self.as_dict())


@dataclass(frozen=True)
class HostRecordSpec:
    name: str
    zone: str
    uri: str
    uplink: str | None
    public_pools: tuple[dict[str, Any], ...]
    host_command: tuple[str, ...] | None
    settings: dict[str, str]


def check_host_name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not HOST_NAME_PATTERN.fullmatch(value):
        raise SpecError(
            field,
            f"invalid host name {value!r}: use a lowercase DNS name (letters, digits, '-' and "
            "'.' between labels, up to 253 characters)",
        )
    return value


def pool_record(pool: Pool) -> dict[str, Any]:
    return {
        "name": pool.name,
        "cidr": str(pool.cidr),
        "gateway": str(pool.gateway),
        "exclude": sorted(str(address) for address in pool.exclude),
    }


def check_pools(zone: str, uplink: Any, raw: Any) -> tuple[dict[str, Any], ...]:
    """The public pools, checked exactly as a zone's configuration is (parse_public_zone), with the
    errors naming this module's options."""
    try:
        parsed = parse_public_zone(zone, {"uplink": uplink, "public_pools": raw})
    except SpecError as error:
        field = error.field.removeprefix(ZONE_CONFIG)
        raise SpecError(field, error.reason) from None
    return tuple(pool_record(pool) for pool in parsed.pools)


def parse_host(params: Mapping[str, Any]) -> HostRecordSpec:
    name = check_host_name(params.get("name"), "name")
    if params.get("zone") is None:
        raise SpecError("zone", "the host's zone is required when state=present")
    zone = check_name(params.get("zone"), "zone")
    uri = params.get("uri") or DEFAULT_URI
    if not isinstance(uri, str) or len(uri) > MAX_URI or "://" not in uri:
        raise SpecError("uri", f"must be a libvirt URI of at most {MAX_URI} characters")
    uplink = params.get("uplink")
    pools: tuple[dict[str, Any], ...] = ()
    if as_list(params.get("public_pools"), "public_pools"):
        pools = check_pools(zone, uplink, params["public_pools"])
    elif uplink is not None and not is_interface(uplink):
        raise SpecError(
            "uplink", f"invalid interface name {uplink!r}: 1-15 of a-z, 0-9, '.', '_', '-'"
        )
    host_command = check_prefix(params.get("host_command")) or None
    return HostRecordSpec(name, zone, uri, uplink, pools, host_command, parse_settings(params))


def parse_settings(params: Mapping[str, Any]) -> dict[str, str]:
    """The settings given (None: not recorded); a zone link needs both underlay values."""
    given = {name: params[name] for name in SETTINGS if params.get(name) is not None}
    settings = {}
    if "underlay_ip" in given:
        settings["underlay_ip"] = str(check_ipv4(given["underlay_ip"], "underlay_ip"))
    if "underlay_dev" in given:
        if not is_interface(given["underlay_dev"]):
            raise SpecError(
                "underlay_dev", f"an interface name is required, got {given['underlay_dev']!r}"
            )
        settings["underlay_dev"] = given["underlay_dev"]
    missing = [name for name in UNDERLAY_SETTINGS if name not in settings]
    if len(missing) == 1:
        raise SpecError(
            missing[0], "a zone link's underlay needs both underlay_ip and underlay_dev"
        )
    for name in PATH_SETTINGS:
        if name in given:
            settings[name] = check_host_path(given[name], name)
    return settings


def version_text(number: int) -> str:
    """libvirt's encoded version (major * 1000000 + minor * 1000 + release) as text."""
    return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"


def read_values(declared: HostRecordSpec, host: Host) -> HostValues:
    """The declaration completed with the capacity and versions libvirt reports."""
    with libvirt_action("read the capacity of", f"host {declared.uri}"):
        info = host.conn.getInfo()
        libvirt_version = version_text(host.conn.getLibVersion())
        qemu_version = version_text(host.conn.getVersion())
    return HostValues(
        zone=declared.zone,
        uri=declared.uri,
        uplink=declared.uplink,
        public_pools=declared.public_pools,
        host_command=declared.host_command,
        settings=declared.settings,
        cpus=int(info[2]),
        memory_mib=int(info[1]),
        libvirt_version=libvirt_version,
        qemu_version=qemu_version,
    )


class HostRecords:
    """The ledger's `hosts` table."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def get(self, connection: Any, name: str) -> Any:
        return connection.execute(sa.select(hosts).where(hosts.c.name == name)).first()

    def put(self, connection: Any, name: str, values: HostValues) -> None:
        now = self.ledger.now()
        row = {
            **values.as_dict(),
            "public_pools": json.dumps(values.as_dict()["public_pools"], sort_keys=True),
            # NULL, not "[]" or "{}", when there is nothing: what rows before migration 0009 hold.
            "host_command": json_or_null(values.as_dict()["host_command"]),
            "settings": json_or_null(values.settings),
            "updated_at": now,
            "key": values.key(name),
            "run_id": self.ledger.run_id,
            "actor": self.ledger.actor,
        }
        updated = connection.execute(hosts.update().where(hosts.c.name == name).values(**row))
        if updated.rowcount == 0:
            connection.execute(hosts.insert().values(name=name, registered_at=now, **row))

    def drop(self, connection: Any, name: str) -> None:
        connection.execute(hosts.delete().where(hosts.c.name == name))


def json_or_null(value: Any) -> str | None:
    return json.dumps(value, sort_keys=True) if value else None


def recorded_values(row: Any) -> HostValues:
    return HostValues(
        zone=row.zone,
        uri=row.uri,
        uplink=row.uplink,
        public_pools=tuple(json.loads(row.public_pools)),
        host_command=tuple(json.loads(row.host_command)) if row.host_command else None,
        settings=json.loads(row.settings) if row.settings else {},
        cpus=row.cpus,
        memory_mib=row.memory_mib,
        libvirt_version=row.libvirt_version,
        qemu_version=row.qemu_version,
    )


def host_facts(row: Any) -> dict[str, Any]:
    if row is None:
        return {}
    return {
        "name": row.name,
        **recorded_values(row).as_dict(),
        "registered_at": iso(row.registered_at),
        "updated_at": iso(row.updated_at),
        "run_id": row.run_id,
        "actor": row.actor,
    }


def tenant_objects(host: Host) -> list[str]:
    """The tenants' objects on the host (those carrying vce ownership), as tenant/name."""
    found = []
    for tenant, inventory in sorted(host.inventories().items()):
        owned = {**inventory.domains, **inventory.networks}
        found += [f"{tenant}/{name}" for name, state in sorted(owned.items()) if state.owner]
    return found


class HostRecordPlanner:
    """Observe, plan and apply one host's record in the ledger, inside one transaction."""

    def __init__(self, records: HostRecords, connection: Any) -> None:
        self.records = records
        self.connection = connection

    def observe(self, name: str) -> Any:
        return self.records.get(self.connection, name)

    def plan_present(self, name: str, values: HostValues, row: Any) -> Plan:
        plan = Plan()
        if row is None:
            plan.add(
                Change(
                    KIND,
                    name,
                    "create",
                    before=None,
                    after=values.as_dict(),
                    run=lambda: self.records.put(self.connection, name, values),
                )
            )
            return plan
        recorded = recorded_values(row)
        if recorded == values:
            return plan
        before = recorded.as_dict()
        after = values.as_dict()
        changed = [field for field in VALUES if before[field] != after[field]]
        plan.add(
            Change(
                KIND,
                name,
                "update",
                field="record",
                before={field: before[field] for field in changed},
                after={field: after[field] for field in changed},
                run=lambda: self.records.put(self.connection, name, values),
            )
        )
        return plan

    def plan_absent(self, name: str, row: Any, objects_on: Callable[[str], list[str]]) -> Plan:
        plan = Plan()
        if row is None:
            return plan
        objects = objects_on(row.uri)
        if objects:
            shown = ", ".join(objects[:SHOWN_OBJECTS])
            more = ", ..." if len(objects) > SHOWN_OBJECTS else ""
            raise SpecError(
                "state",
                f"host {name} still has {len(objects)} object(s) of tenants at {row.uri} "
                f"({shown}{more}); remove the tenants' environments from it first",
            )
        plan.add(
            Change(
                KIND,
                name,
                "delete",
                before=recorded_values(row).as_dict(),
                after=None,
                run=lambda: self.records.drop(self.connection, name),
            )
        )
        return plan


def lock_name(name: str) -> str:
    return f"(host {name})"


def objects_on(uri: str) -> list[str]:
    return tenant_objects(Host(uri))


def run_host(params: Mapping[str, Any], check_mode: bool = False) -> Result:
    state = params.get("state") or "present"
    if state not in STATES:
        raise SpecError("state", f"must be one of {', '.join(STATES)}, got {state!r}")
    name = check_host_name(params.get("name"), "name")
    if state == "absent":
        return record_run(
            params, name, check_mode, lambda engine, row: engine.plan_absent(name, row, objects_on)
        )
    declared = parse_host(params)
    values = read_values(declared, Host(declared.uri))
    return record_run(
        params, name, check_mode, lambda engine, row: engine.plan_present(name, values, row)
    )


def record_run(
    params: Mapping[str, Any],
    name: str,
    check_mode: bool,
    planner: Callable[[HostRecordPlanner, Any], Plan],
) -> Result:
    """Plan against the record in the ledger and apply under the host's lock unless checking."""
    # Registering a host is how a ledger comes to be (store.py).
    ledger = Ledger.open(params.get("ledger_url") or None, create=True)
    transaction = ledger.store.read() if check_mode else ledger.store.locked(lock_name(name))
    with transaction as connection:
        engine = HostRecordPlanner(HostRecords(ledger), connection)
        row = engine.observe(name)
        plan = planner(engine, row)

        def facts(_after: object, _applied: bool) -> dict[str, Any]:
            return {"host": host_facts(row if check_mode else engine.observe(name))}

        return noting_new_ledger(conclude(Run(plan, facts), check_mode), ledger.store)
