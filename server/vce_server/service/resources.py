# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A tenant's resources through the engine: declarations checked with the engine's own
parsers, changes run by the engine's entry points (so quotas, blocks, suspension and usage
recording happen as for Ansible and Pulumi), objects read back from the hosts.

Every call names the tenant of the caller's principal; nothing a customer sends names a host,
a URI, a host command, a ledger or a path: the server adds them from the ledger's host
records (fleet.py). A customer's fields are the tenant-facing front's (the Pulumi resources'
fields of core/fields.py, in snake_case), less the host (the server places) and host paths.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core import fields
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError, VceError
from ansible_collections.vce.kvm.plugins.module_utils.core.result import Result
from ansible_collections.vce.kvm.plugins.module_utils.core.spec import (
    parse_disk,
    parse_network,
    parse_vm,
)
from ansible_collections.vce.kvm.plugins.module_utils.core.validation import (
    as_list,
    as_mapping,
    at,
    check_choice,
    check_image_name,
    check_int,
    check_line,
    check_name,
    check_pool,
)
from ansible_collections.vce.kvm.plugins.module_utils.core.zones import (
    parse_public_zone,
    parse_zone_link,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.facade import (
    read_object,
    run_disk,
    run_environment,
    run_info,
    run_network,
    run_vm,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.gate import HOST_KINDS
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.backup_restore import (
    MODES as RESTORE_MODES,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.backup_restore import (
    run_backup_restore,
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
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.tenant import run_block
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.zone_link import (
    read_zone_link,
    recorded_zone_link,
    run_zone_link,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.metering import UsageChange
from ansible_collections.vce.kvm.plugins.module_utils.ledger.recorder import Recorder
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import (
    actions,
    backup_schedules,
    images,
    public_ips,
    zone_links,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.spool import RunRecord
from ansible_collections.vce.kvm.plugins.module_utils.ledger.store import default_url
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger, utcnow

from ..errors import ApiError, conflict, from_engine, not_found
from .fleet import Fleet, HostPlace, scrubbed

log = logging.getLogger("vce.serve.resources")

# Where run records wait when the ledger cannot take them (as the Pulumi provider's).
SPOOL_ENV = "VCE_SPOOL_DIR"
DEFAULT_SPOOL = "~/.local/state/vce-kvm/spool"
RUN_SOURCE = "api"
# The worker names each attempt of an action a run `api-<action id>-<attempt>`
# (ledger.tenants.acting_as).
RUN_PREFIX = "api-"
# What the server decides, never the customer: the host (placement) and host paths.
SERVER_FIELDS = frozenset({"host", "target"})
# What the engine's facts say of the host rather than of the object: libvirt's name of it
# (with the tenant prefix) and the network's bridge on the host.
HOST_DETAILS = frozenset({"libvirt_name", "bridge"})
VM_ACTIONS = ("start", "stop", "reboot")
ENVIRONMENT_KEYS = ("zone", "networks", "disks", "vms", "public_ips", "zone_links",
                    "backup_schedules")  # fmt: skip
RESTORE_KEYS = frozenset({"mode", "new_disk", "disk", "confirm", "start", "pool"})
Scrub = Callable[[str], str]
Handler = Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], dict[str, Any]]


def customer_fields(kind_fields: Iterable[fields.Field]) -> frozenset[str]:
    """The keys a customer's declaration of a kind may have."""
    return frozenset(f.name for f in fields.on(fields.PULUMI, kind_fields)) - SERVER_FIELDS


@dataclass(frozen=True)
class Kind:
    plural: str  # the API's path segment
    singular: str  # the engine's kind
    keys: frozenset[str]

    def what(self, name: str) -> str:
        return f"{self.singular.replace('_', ' ')} {name}"


KINDS: dict[str, Kind] = {
    kind.plural: kind
    for kind in (
        Kind("networks", "network", customer_fields(fields.NETWORK)),
        Kind("disks", "disk", customer_fields(fields.DISK)),
        Kind("vms", "vm", customer_fields(fields.VM)),
        Kind("public_ips", "public_ip", customer_fields(fields.PUBLIC_IP)),
        Kind("zone_links", "zone_link", customer_fields(fields.ZONE_LINK)),
        Kind("backup_schedules", "backup_schedule", customer_fields(fields.BACKUP_SCHEDULE)),
    )
}
# Sections of the engine's tenant facts.
LIBVIRT_SECTIONS = {"networks": "networks", "disks": "disks", "vms": "vms"}
BOOT_DISK_KEYS = frozenset(f.name for f in fields.on(fields.PULUMI, fields.BOOT_DISK))
# 96 bits of a SHA-256: unique among the backups of one tenant.
BACKUP_ID_LENGTH = 24
RUN_OPTIONS = {"allow_restart": bool, "allow_replace": bool, "purge_backups": bool}


def kind_of(plural: str) -> Kind:
    kind = KINDS.get(plural)
    if kind is None:
        raise not_found(f"resource kind {plural}")
    return kind


def check_customer_keys(kind: Kind, raw: Mapping[str, Any], path: str) -> None:
    """Refuse what a customer may not declare: unknown keys (the engine's own keys for hosts,
    URIs, ledgers and paths among them), an image path's format, and the run options' types."""
    for key in sorted(raw, key=str):
        if key not in kind.keys:
            raise SpecError(at(path, str(key)), f"unknown field of a {kind.what('declaration')}")
    boot = raw.get("boot_disk")
    if kind.singular == "vm" and isinstance(boot, Mapping):
        for key in sorted(boot, key=str):
            if key not in BOOT_DISK_KEYS:
                raise SpecError(at(path, f"boot_disk.{key}"), "unknown field of a boot disk")
    for key, wanted in RUN_OPTIONS.items():
        if key in raw and not isinstance(raw[key], wanted):
            raise SpecError(at(path, key), f"must be true or false, got {raw[key]!r}")
    if "shutdown_timeout" in raw:
        check_int(raw["shutdown_timeout"], at(path, "shutdown_timeout"), 1, 3600, "s")


def without(raw: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k not in keys}


def check_images(kind: Kind, raw: Mapping[str, Any], path: str) -> None:
    """A customer names catalogue images or its own disks, never a host path."""
    if kind.singular == "vm" and isinstance(raw.get("boot_disk"), Mapping):
        check_image_name(raw["boot_disk"].get("image"), at(path, "boot_disk.image"))
    if kind.singular == "disk" and raw.get("backing_image") is not None:
        check_image_name(raw["backing_image"], at(path, "backing_image"))


@dataclass(frozen=True)
class Parsed:
    """A declaration as a PUT accepts it: the action's payload, the engine's reading of the
    declaration (None for a zone link) and the host it runs on (None for a zone link)."""

    payload: dict[str, Any]
    spec: Any
    host: HostPlace | None


class Resources:
    """The resources of the tenants, as the API serves them."""

    def __init__(self, ledger_url: str | None) -> None:
        self.ledger_url = ledger_url
        self.ledger = Ledger.open(ledger_url)
        self.fleet = Fleet(self.ledger)

    def scrub(self, text: str) -> str:
        return self.fleet.scrub(text)

    def refusal(self, error: VceError) -> ApiError:
        return from_engine(error, self.scrub)

    # -- the catalogue ---------------------------------------------------------------------

    def zones(self) -> list[str]:
        return self.fleet.zones()

    def images(self) -> list[dict[str, Any]]:
        """The base images of every zone's catalogue; where they lie on the hosts is not the
        customer's business."""
        columns = (images.c.zone, images.c.name, images.c.format, images.c.virtual_size,
                   images.c.sha256)  # fmt: skip
        with self.ledger.store.read() as connection:
            rows = connection.execute(
                sa.select(*columns).order_by(images.c.zone, images.c.name)
            ).all()
        return [dict(row._mapping) for row in rows]

    def catalogue_names(self, zone: str) -> dict[str, str]:
        """The zone's catalogue by the image's path on the hosts: the name the tenant knows it
        by (the first by name when two names share a file)."""
        with self.ledger.store.read() as connection:
            rows = connection.execute(
                sa.select(images.c.path, images.c.name)
                .where(images.c.zone == zone)
                .order_by(images.c.name.desc())
            ).all()
        return {row.path: row.name for row in rows}

    # -- declarations ----------------------------------------------------------------------

    def validate(self, tenant: str, plural: str, name: str, body: Any) -> dict[str, Any]:
        """The payload of a PUT: the declaration checked by the engine's parsers, without
        libvirt. Raises ApiError 422 naming the field."""
        kind = kind_of(plural)
        try:
            return self.declaration(tenant, kind, name, body)
        except SpecError as error:
            raise self.refusal(error) from None

    def declaration(self, tenant: str, kind: Kind, name: str, body: Any) -> dict[str, Any]:
        return self.parsed(tenant, kind, name, body).payload

    def parsed(self, tenant: str, kind: Kind, name: str, body: Any) -> Parsed:
        """A declaration checked as its PUT checks it: the payload, with the engine's reading
        of it and the host it would run on (that of a first change when none is placed)."""
        check_name(name, "name")
        raw = dict(as_mapping(body, "body"))
        if "name" in raw and raw["name"] != name:
            raise SpecError("name", f"must be the name in the path ({name}), got {raw['name']!r}")
        raw["name"] = name
        check_customer_keys(kind, raw, "")
        check_images(kind, raw, "")
        if kind.singular == "zone_link":
            zones = self.link_zones(raw.get("zones"), "zones")
            ends = [self.fleet.preview(tenant, z, f"zones[{i}]") for i, z in enumerate(zones)]
            parse_zone_link(link_params(raw, ends), "")
            payload = {"tenant": tenant, "kind": kind.plural, "name": name, "zones": zones,
                       "body": without(raw, "zones")}  # fmt: skip
            return Parsed(payload, None, None)
        host = self.fleet.preview(tenant, raw.get("zone"))
        declared = without(raw, "zone")
        spec = parse_declared(kind, tenant, declared, host)
        payload = {"tenant": tenant, "kind": kind.plural, "name": name, "zone": host.zone,
                   "body": declared}  # fmt: skip
        return Parsed(payload, spec, host)

    def link_zones(self, raw: Any, path: str) -> list[str]:
        zones = as_list(raw, path)
        if len(zones) != 2:
            raise SpecError(path, f"a zone link joins exactly two zones, got {len(zones)}")
        names = [self.fleet.zone_name(z, f"{path}[{i}]") for i, z in enumerate(zones)]
        if names[0] == names[1]:
            raise SpecError(f"{path}[1]", "a zone link joins two different zones")
        return names

    # -- reading ---------------------------------------------------------------------------

    def read(self, tenant: str, plural: str, name: str, zone: str | None = None) -> dict[str, Any]:
        """The object as its host has it now; 404 when absent, as for another tenant's (every
        read names the caller's tenant)."""
        kind = kind_of(plural)
        try:
            check_name(name, "name")
            found = self.observe(tenant, kind, name, zone)
        except VceError as error:
            raise self.refusal(error) from None
        if found is None:
            raise not_found(kind.what(name))
        return found

    def observe(
        self, tenant: str, kind: Kind, name: str, zone: str | None = None
    ) -> dict[str, Any] | None:
        if kind.plural == "zone_links":
            return self.observe_link(tenant, name)
        if kind.plural == "backup_schedules":
            row = self.schedule_row(tenant, name)
            host = self.fleet.host_at(row.host) if row is not None else None
            return self.observe_on(tenant, kind, name, host, row.vm) if host else None
        hosts = self.fleet.placed(tenant)
        for host in hosts:
            if zone is not None and host.zone != zone:
                continue
            found = self.observe_on(tenant, kind, name, host)
            if found is not None:
                return found
        return None

    def observe_on(
        self, tenant: str, kind: Kind, name: str, host: HostPlace, vm: str | None = None
    ) -> dict[str, Any] | None:
        params = {**self.params(tenant, host), "name": name}
        if kind.plural in LIBVIRT_SECTIONS:
            found = read_object(params, LIBVIRT_SECTIONS[kind.plural])
            if found:
                found = named_images(found, ImageNames(self, tenant, host))
        elif kind.plural == "public_ips":
            if not host.has_public_ips():
                return None
            found = read_public_ip(public_ip_params(params, host, {}))
        else:
            found = read_backup_schedule({**params, **host.backup_host(), "vm": vm})
        return self.shown(found, name, host.zone)

    def observe_link(self, tenant: str, name: str) -> dict[str, Any] | None:
        recorded = recorded_zone_link(
            {"tenant": tenant, "ledger_url": self.ledger_url, "name": name}
        )
        if recorded is None:
            return None
        ends = [self.fleet.where(tenant, z) for z in recorded["zones"]]
        if None in ends:
            return None
        params = {"tenant": tenant, "ledger_url": self.ledger_url,
                  **link_params({"name": name, "network": recorded["network"]}, ends)}  # fmt: skip
        found = read_zone_link(params)
        if not found:
            return None
        # The ends' hosts and underlay are the operator's: a customer sees the zones.
        shown = {k: v for k, v in found.items() if k != "ends"}
        return {**scrubbed(shown, self.fleet.scrubber()), "zones": recorded["zones"]}

    def shown(
        self, found: Mapping[str, Any] | None, name: str, zone: str, scrub: Scrub | None = None
    ) -> dict[str, Any] | None:
        """An object as a customer sees it: named, in its zone, without host details."""
        if not found:
            return None
        kept = {key: value for key, value in found.items() if key not in HOST_DETAILS}
        return {"name": name, **scrubbed(kept, scrub or self.fleet.scrubber()), "zone": zone}

    def list(self, tenant: str, plural: str) -> list[dict[str, Any]]:
        """The tenant's objects of a kind in every zone it was placed in."""
        kind = kind_of(plural)
        try:
            return self.listed(tenant, kind)
        except VceError as error:
            raise self.refusal(error) from None

    def listed(self, tenant: str, kind: Kind) -> list[dict[str, Any]]:
        if kind.plural in LIBVIRT_SECTIONS:
            found = []
            for host in self.fleet.placed(tenant):
                facts = run_info(self.params(tenant, host))
                scrub = self.fleet.scrubber()
                names = ImageNames(self, tenant, host, facts["disks"])
                objects = facts[LIBVIRT_SECTIONS[kind.plural]]
                for name in sorted(objects):
                    shown = named_images(with_boot_disk(facts, kind, name), names)
                    found.append(self.shown(shown, name, host.zone, scrub))
            return found
        objects = (self.observe(tenant, kind, name) for name in self.recorded(tenant, kind))
        return [found for found in objects if found is not None]

    def recorded(self, tenant: str, kind: Kind) -> list[str]:
        """The names the ledger records of a kind it counts (public IPs, links, schedules)."""
        table = {"public_ips": public_ips, "zone_links": zone_links,
                 "backup_schedules": backup_schedules}[kind.plural]  # fmt: skip
        with self.ledger.store.read() as connection:
            rows = connection.execute(
                sa.select(table.c.name).where(table.c.tenant == tenant).distinct()
            ).all()
        return sorted(row.name for row in rows)

    def schedule_row(self, tenant: str, name: str) -> Any:
        """The tenant's schedule `name`: the API names schedules by name alone, so a name is
        one VM's (put refuses a second)."""
        with self.ledger.store.read() as connection:
            return connection.execute(
                sa.select(backup_schedules).where(
                    backup_schedules.c.tenant == tenant, backup_schedules.c.name == name
                )
            ).first()

    def backups(self, tenant: str, vm: str | None = None) -> list[dict[str, Any]]:
        """The tenant's backups (of one VM), oldest first; `id` names one for a restore."""
        if vm is not None:
            try:
                check_name(vm, "vm")
            except SpecError as error:
                raise self.refusal(error) from None
        rows = self.ledger.backup_records(tenant, vm)
        return [backup_view(row) for row in rows]

    # -- plans -----------------------------------------------------------------------------

    def plan(self, tenant: str, declaration: Any) -> list[dict[str, Any]]:
        """The plan of a whole environment declaration: what vce.kvm.environment's check mode
        shows for it on the tenant's host of the zone, scrubbed. Changes nothing."""
        try:
            params = self.environment_params(tenant, declaration)
            result = run_environment(params, check_mode=True)
        except VceError as error:
            raise self.refusal(error) from None
        return customer_plan(result.plan, self.fleet.scrubber())

    def environment_params(self, tenant: str, declaration: Any) -> dict[str, Any]:
        raw = as_mapping(declaration, "body")
        for key in sorted(raw, key=str):
            if key not in ENVIRONMENT_KEYS:
                raise SpecError(str(key), "unknown field of an environment declaration")
        host = self.fleet.preview(tenant, raw.get("zone"))
        lists = {}
        for plural in ENVIRONMENT_KEYS[1:]:
            items = as_list(raw.get(plural), plural)
            for i, item in enumerate(items):
                path = f"{plural}[{i}]"
                item = as_mapping(item, path)
                check_customer_keys(KINDS[plural], {**item, "name": item.get("name")}, path)
                check_images(KINDS[plural], item, path)
                if "zone" in item:
                    raise SpecError(f"{path}.zone", "the environment's zone is its own `zone`")
            lists[plural] = [dict(item) for item in items]
        lists["zone_links"] = [
            self.environment_link(tenant, item, f"zone_links[{i}]", host)
            for i, item in enumerate(lists["zone_links"])
        ]
        params = {**self.params(tenant, host), **host.backup_host(), **lists,
                  "zone": host.zone, "image_dirs": []}  # fmt: skip
        if host.has_public_ips():
            params["zone_config"] = host.zone_config("zone")
        elif lists["public_ips"]:
            raise SpecError("public_ips", f"zone {host.zone} has no public IPs")
        return params

    def environment_link(
        self, tenant: str, item: Mapping[str, Any], path: str, host: HostPlace
    ) -> dict[str, Any]:
        """An environment's link names its two zones; the first is the environment's."""
        zones = self.link_zones(item.get("zones"), f"{path}.zones")
        if zones[0] != host.zone:
            raise SpecError(f"{path}.zones[0]", f"must be the environment's zone {host.zone}")
        ends = [host, self.fleet.preview(tenant, zones[1], f"{path}.zones[1]")]
        return link_params(without(item, "zones"), ends)

    # -- changes ---------------------------------------------------------------------------

    def params(self, tenant: str, host: HostPlace) -> dict[str, Any]:
        return {**host.base(), "tenant": tenant, "ledger_url": self.ledger_url}

    def handlers(self) -> dict[str, Handler]:
        return {
            "put": self.put,
            "delete": self.delete,
            "vm_action": self.vm_action,
            "restore": self.restore,
            "block": self.block,
        }

    def put(self, payload: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> dict:
        """The declaration made true (the engine's present), on the tenant's host."""
        tenant, kind, name = payload["tenant"], kind_of(payload["kind"]), payload["name"]
        body = dict(payload["body"])
        if kind.plural == "zone_links":
            zones = payload["zones"]
            ends = [self.fleet.place(tenant, z, f"zones[{i}]") for i, z in enumerate(zones)]
            params = {"tenant": tenant, "ledger_url": self.ledger_url, **link_params(body, ends)}
            report({"step": "run", "zones": payload["zones"]})
            result = self.recorded_run(tenant, [lambda: run_zone_link(params)])
            return self.outcome(result, self.observe_link(tenant, name))
        host = self.fleet.place(tenant, payload["zone"])
        if kind.plural == "backup_schedules":
            self.refuse_schedule_of_another_vm(tenant, name, body["vm"])
        body = self.with_disks_kept(tenant, kind, name, body, host)
        params = {**self.params(tenant, host), **body}
        report({"step": "run", "zone": host.zone})
        result = self.recorded_run(tenant, [lambda: put_run(kind, params, host)])
        return self.outcome(result, self.observe_on(tenant, kind, name, host, body.get("vm")))

    def with_disks_kept(
        self, tenant: str, kind: Kind, name: str, body: dict[str, Any], host: HostPlace
    ) -> dict[str, Any]:
        """A VM declared without `disks` keeps the extra disks it has, as a disk declared
        without `attach_to` keeps its attachments: a disk's own `attach_to` attaches it too,
        and resizing the VM must not detach it. With `disks` (even `[]`) the list is the VM's
        whole set of extra disks, as in the modules."""
        if kind.plural != "vms" or "disks" in body:
            return body
        found = self.observe_on(tenant, kind, name, host) or {}
        kept = [
            disk["serial"]
            for disk in found.get("disks") or []
            if disk.get("device") == "disk" and disk.get("serial") not in (None, "", "boot")
        ]
        return {**body, "disks": kept}

    def refuse_schedule_of_another_vm(self, tenant: str, name: str, vm: str) -> None:
        row = self.schedule_row(tenant, name)
        if row is not None and row.vm != vm:
            raise conflict(f"backup schedule {name} is VM {row.vm}'s: choose another name")

    def delete(self, payload: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> dict:
        """The object removed (the engine's absent); nothing to do when it is not there."""
        tenant, kind, name = payload["tenant"], kind_of(payload["kind"]), payload["name"]
        runs = self.removal(tenant, kind, name, payload.get("zone"))
        report({"step": "run", "runs": len(runs)})
        result = self.recorded_run(tenant, runs) if runs else None
        return self.outcome(result, None)

    def removal(
        self, tenant: str, kind: Kind, name: str, zone: str | None
    ) -> list[Callable[[], Result]]:
        if kind.plural == "zone_links":
            recorded = recorded_zone_link(
                {"tenant": tenant, "ledger_url": self.ledger_url, "name": name}
            )
            if recorded is None:
                return []
            ends = [self.fleet.where(tenant, z) for z in recorded["zones"]]
            if None in ends:
                return []  # the tenant has nothing in one of the zones: read says 404 too
            body = {"name": name, "network": recorded["network"]}
            params = {"tenant": tenant, "ledger_url": self.ledger_url,
                      **link_params(body, ends), "state": "absent"}  # fmt: skip
            return [lambda: run_zone_link(params)]
        if kind.plural == "backup_schedules":
            row = self.schedule_row(tenant, name)
            host = self.fleet.host_at(row.host) if row is not None else None
            if host is None:
                return []
            # Whether its backups go with it is part of the schedule's declaration.
            declared = self.declared(tenant, kind.plural, name) or {}
            purge = bool(declared.get("body", {}).get("purge_backups"))
            params = {**self.params(tenant, host), **host.backup_host(), "name": name,
                      "vm": row.vm, "state": "absent", "purge_backups": purge}  # fmt: skip
            return [lambda: run_backup_schedule(params)]
        host = self.holder(tenant, kind, name, zone)
        if host is None:
            return []
        params = {**self.params(tenant, host), "name": name}
        if kind.plural == "public_ips":
            absent = public_ip_params(params, host, {"state": "absent"})
            return [lambda: run_public_ip(absent)]
        if kind.plural == "disks":
            return self.disk_removal(tenant, name, host, params)
        runner = {"networks": run_network, "vms": run_vm}[kind.plural]
        return [lambda: runner({**params, "state": "absent"})]

    def disk_removal(
        self, tenant: str, name: str, host: HostPlace, params: dict[str, Any]
    ) -> list[Callable[[], Result]]:
        """A disk attached through its own `attach_to` is detached first (a Pulumi Disk with
        attachTo deletes cleanly); the engine refuses to remove any other attached disk (a
        VM's `disks` declaration holds it)."""
        absent = {**params, "state": "absent"}
        found = read_object(params, "disks")
        vm = found.get("attached_to") if found else None
        if vm is None or not self.attached_by_itself(tenant, name, vm, host.zone):
            return [lambda: run_disk(absent)]
        declared = self.declared(tenant, "disks", name, host.zone) or {}
        detached = {**params, **declared.get("body", {}), "zone": host.zone, "image_dirs": [],
                    "state": "detached"}  # fmt: skip
        return [lambda: run_disk(detached), lambda: run_disk(absent)]

    def attached_by_itself(self, tenant: str, name: str, vm: str, zone: str) -> bool:
        """Whether the disk's last declaration attaches it to `vm` and no declaration of that
        VM names it among its disks."""
        disk = self.declared(tenant, "disks", name, zone)
        if disk is None or disk["body"].get("attach_to") != vm:
            return False
        holder = self.declared(tenant, "vms", vm, zone)
        return holder is None or name not in (holder["body"].get("disks") or [])

    def holder(self, tenant: str, kind: Kind, name: str, zone: str | None) -> HostPlace | None:
        """The tenant's host that has the object (the first zone's when several have one)."""
        for host in self.fleet.placed(tenant):
            if zone is not None and host.zone != zone:
                continue
            if self.observe_on(tenant, kind, name, host) is not None:
                return host
        return None

    def validate_vm_action(self, tenant: str, name: str, action: str) -> dict[str, Any]:
        try:
            check_name(name, "name")
            check_choice(action, "action", VM_ACTIONS)
        except SpecError as error:
            raise self.refusal(error) from None
        self.read(tenant, "vms", name)
        return {"tenant": tenant, "name": name, "action": action}

    def vm_action(self, payload: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> dict:
        """Start, stop or reboot: the VM's last declaration with its state changed, so the
        engine's gate refuses a blocked VM or a suspended tenant as for any run. The engine
        restarts a VM only for a change that needs it: a reboot is a stop and a start."""
        tenant, name, action = payload["tenant"], payload["name"], payload["action"]
        declared = self.last_declaration(tenant, name)
        host = self.fleet.where(tenant, declared["zone"])
        if host is None:
            raise not_found(f"vm {name}")
        body = self.with_disks_kept(tenant, KINDS["vms"], name, declared["body"], host)
        params = {**self.params(tenant, host), **vm_params(body, host)}
        states = {"start": ["running"], "stop": ["stopped"], "reboot": ["stopped", "running"]}
        runs = [
            (lambda state=state: run_vm({**params, "state": state})) for state in states[action]
        ]
        report({"step": "run", "action": action})
        result = self.recorded_run(tenant, runs)
        return self.outcome(result, self.observe_on(tenant, KINDS["vms"], name, host))

    def last_declaration(self, tenant: str, name: str) -> dict[str, Any]:
        """The VM's declaration as its last successful PUT gave it."""
        declared = self.declared(tenant, "vms", name)
        if declared is None:
            raise conflict(f"vm {name} was not declared through the API: PUT /v1/vms/{name} first")
        return declared

    def declared(
        self, tenant: str, plural: str, name: str, zone: str | None = None
    ) -> dict[str, Any] | None:
        """The payload of the object's last successful PUT (in `zone` when given), or None."""
        with self.ledger.store.read() as connection:
            rows = connection.execute(
                sa.select(actions.c.request)
                .where(
                    actions.c.tenant == tenant,
                    actions.c.kind == "put",
                    actions.c.target == f"{plural}/{name}",
                    actions.c.status == "succeeded",
                )
                .order_by(actions.c.seq.desc())
            )
            for row in rows:
                request = json.loads(row.request)
                if zone is None or request.get("zone") == zone:
                    return request
        return None

    def validate_restore(self, tenant: str, backup_id: str, body: Any) -> dict[str, Any]:
        """The payload of a restore; 404 for another tenant's backup."""
        try:
            raw = dict(as_mapping(body if body is not None else {}, "body"))
            for key in sorted(raw, key=str):
                if key not in RESTORE_KEYS:
                    raise SpecError(str(key), "unknown field of a restore")
            mode = check_choice(raw.get("mode") or "new_disk", "mode", RESTORE_MODES)
            if mode == "new_disk":
                check_name(raw.get("new_disk"), "new_disk")
            if raw.get("disk") is not None:
                check_name(raw["disk"], "disk")
            if raw.get("pool") is not None:
                check_pool(raw["pool"], "pool")
            for key in ("confirm", "start"):
                if key in raw and not isinstance(raw[key], bool):
                    raise SpecError(key, f"must be true or false, got {raw[key]!r}")
        except SpecError as error:
            raise self.refusal(error) from None
        self.backup_row(tenant, backup_id)
        return {"tenant": tenant, "backup": backup_id, **raw, "mode": mode}

    def backup_row(self, tenant: str, backup_id: str) -> Any:
        """The tenant's backup of this id (`backup_view`'s: a digest of the ledger's key)."""
        rows = self.ledger.backup_records(tenant)
        row = next((r for r in rows if backup_public_id(r.key) == backup_id), None)
        if row is None or row.status != "ok" or row.pruned_at is not None:
            raise not_found(f"backup {backup_id}")
        return row

    def restore(self, payload: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> dict:
        """A VM's disk restored from one of its backups, as a new disk or in place."""
        tenant = payload["tenant"]
        row = self.backup_row(tenant, payload["backup"])
        host = self.fleet.host_at(row.host)
        if host is None:
            raise not_found(f"backup {payload['backup']}")
        restore = without(payload, "tenant", "backup")
        # The engine records each restore under its `request` and does not repeat one: a second
        # attempt of this action finds the first one's done, a new action restores again.
        action = action_of(Ledger.open(self.ledger_url).run_id)["action"]
        params = {**self.params(tenant, host), **host.backup_host(), **restore, "vm": row.vm,
                  "schedule": row.schedule, "backup": row.backup_id,
                  "request": f"api-{action}"}  # fmt: skip
        report({"step": "run", "vm": row.vm})
        result = self.recorded_run(tenant, [lambda: run_backup_restore(params)])
        if payload["mode"] == "new_disk":
            found = self.observe_on(tenant, KINDS["disks"], payload["new_disk"], host)
        else:
            found = self.observe_on(tenant, KINDS["vms"], row.vm, host)
        return self.outcome(result, found)

    def validate_block(self, tenant: str, name: str, blocked: Any, reason: Any) -> dict[str, Any]:
        """The payload of an operator's block or unblock of a tenant's VM; 404 when the tenant
        has no such VM."""
        try:
            check_name(tenant, "tenant")
            check_name(name, "vm")
            if not isinstance(blocked, bool):
                raise SpecError("blocked", f"must be true or false, got {blocked!r}")
            check_line(reason if reason is not None else "", "reason")
        except SpecError as error:
            raise self.refusal(error) from None
        self.read(tenant, "vms", name)
        return {"tenant": tenant, "name": name, "blocked": blocked, "reason": reason or ""}

    def block(self, payload: dict[str, Any], report: Callable[[dict[str, Any]], None]) -> dict:
        """The operator's block (or unblock) of one of a tenant's VMs."""
        tenant, name = payload["tenant"], payload["name"]
        host = self.holder(tenant, KINDS["vms"], name, None)
        if host is None:
            raise not_found(f"vm {name}")
        params = {**self.params(tenant, host), "name": name, "blocked": bool(payload["blocked"]),
                  "reason": payload.get("reason") or ""}  # fmt: skip
        report({"step": "run", "blocked": params["blocked"]})
        result = self.recorded_run(tenant, [lambda: run_block(params)])
        return self.outcome(result, self.observe_on(tenant, KINDS["vms"], name, host))

    # -- records ---------------------------------------------------------------------------

    def outcome(self, result: Result | None, found: dict[str, Any] | None) -> dict[str, Any]:
        plan = result.plan if result is not None else []
        warnings = result.warnings if result is not None else []
        scrub = self.fleet.scrubber()
        return {
            "plan": customer_plan(plan, scrub),
            "warnings": scrubbed(warnings, scrub),
            "object": found,
        }

    def recorded_run(self, tenant: str, runs: list[Callable[[], Result]]) -> Result:
        """The engine's runs of one action, recorded as one run of source `api` with their
        usage changes (the engine's, never a client's), through the recorder every front end
        uses. The worker names the run and its actor (acting_as); the last run's result is
        the action's, with the plans of all."""
        acting = Ledger.open(self.ledger_url)
        detail = {"tenant": tenant, **action_of(acting.run_id)}
        record = RunRecord(acting.run_id, acting.actor, RUN_SOURCE, utcnow(), detail)
        url = self.ledger_url or default_url()
        spool_dir = os.path.expanduser(os.environ.get(SPOOL_ENV) or DEFAULT_SPOOL)
        recorder = Recorder(record, url, spool_dir, log.warning, log.debug)
        recorder.start()
        plan: list[dict[str, Any]] = []
        try:
            for run in runs:
                result = run()
                plan += result.plan
                changes = [
                    UsageChange.from_dict(item, f"usage_changes[{i}]")
                    for i, item in enumerate(result.usage_changes)
                ]
                if changes:
                    recorder.record(url, changes)
        except Exception:
            recorder.finish("failed", {})
            raise
        recorder.finish("ok", {})
        result.plan = plan
        return result


# -- engine parameters ---------------------------------------------------------------------


def parse_declared(kind: Kind, tenant: str, raw: Mapping[str, Any], host: HostPlace) -> Any:
    """The engine's parser of the kind, as its run would read the declaration: its reading."""
    if kind.singular == "network":
        uplink = host.uplink if raw.get("mode") == "routed" else None
        return parse_network(fields.declared(fields.NETWORK, raw), "", uplink)
    if kind.singular == "disk":
        return parse_disk(fields.declared(fields.DISK, raw), "", "default")
    if kind.singular == "vm":
        return parse_vm(fields.declared(fields.VM, raw), "", tenant, "default")
    if kind.singular == "public_ip":
        zone = parse_public_zone(host.zone, host.zone_config("zone"))
        return declared_public_ip(raw, zone)
    return declared_schedule(raw)


def vm_params(body: Mapping[str, Any], host: HostPlace) -> dict[str, Any]:
    """A VM's base images come from the zone's catalogue or the tenant's disks: no image
    directory, so the engine takes no host path."""
    return {**body, "zone": host.zone, "image_dirs": []}


def public_ip_params(
    params: Mapping[str, Any], host: HostPlace, body: Mapping[str, Any]
) -> dict[str, Any]:
    return {**params, **body, "zone": host.zone, "zone_config": host.zone_config("zone")}


def link_params(body: Mapping[str, Any], ends: list[HostPlace]) -> dict[str, Any]:
    return {
        **body,
        "ends": [host.link_end(f"zones[{i}]") for i, host in enumerate(ends)],
    }


def put_run(kind: Kind, params: dict[str, Any], host: HostPlace) -> Result:
    if kind.plural == "networks":
        return run_network({**params, **host.network_zone(), "state": "present"})
    if kind.plural == "disks":
        # Without attach_to the disk stays as it is: a VM's `disks` attach it too.
        state = "attached" if params.get("attach_to") else "present"
        return run_disk({**params, "zone": host.zone, "image_dirs": [], "state": state})
    if kind.plural == "vms":
        return run_vm(vm_params(params, host))
    if kind.plural == "public_ips":
        return run_public_ip(public_ip_params(params, host, {"state": "present"}))
    return run_backup_schedule({**params, **host.backup_host(), "state": "present"})


def action_of(run_id: str) -> dict[str, Any]:
    """The action (and attempt) a run's id names."""
    action, _dash, attempt = run_id.removeprefix(RUN_PREFIX).rpartition("-")
    if action and attempt.isdigit():
        return {"action": action, "attempt": int(attempt)}
    return {"action": run_id.removeprefix(RUN_PREFIX)}


def with_boot_disk(facts: Mapping[str, Any], kind: Kind, name: str) -> dict[str, Any]:
    """An object of the tenant's facts; a VM's with its boot disk's, as read_object gives it."""
    found = facts[LIBVIRT_SECTIONS[kind.plural]][name]
    if kind.plural != "vms":
        return found
    return {**found, "boot_disk": facts["disks"].get(f"{name}.boot", {})}


class ImageNames:
    """The names a tenant's base images are known by on one host, from their paths: the zone's
    catalogue, else the tenant's own disks there (read only when a path is not in the
    catalogue, or given by a caller that read them). A path of neither stays, to be scrubbed."""

    def __init__(
        self,
        resources: Resources,
        tenant: str,
        host: HostPlace,
        disks: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.resources = resources
        self.tenant = tenant
        self.host = host
        self.disks = disks
        self.catalogue: dict[str, str] | None = None

    def __call__(self, path: str | None) -> str | None:
        if path is None:
            return None
        if self.catalogue is None:
            self.catalogue = self.resources.catalogue_names(self.host.zone)
        if path in self.catalogue:
            return self.catalogue[path]
        if self.disks is None:
            self.disks = run_info(self.resources.params(self.tenant, self.host))["disks"]
        owned = {disk.get("path"): name for name, disk in self.disks.items()}
        return owned.get(path, path)


def named_images(found: Mapping[str, Any], names: ImageNames) -> dict[str, Any]:
    """A disk's (or a VM's boot disk's) `backing_image` as the image's name, never a path."""
    if "backing_image" in found:
        return {**found, "backing_image": names(found["backing_image"])}
    boot = found.get("boot_disk")
    if isinstance(boot, Mapping) and "backing_image" in boot:
        return {**found, "boot_disk": {**boot, "backing_image": names(boot["backing_image"])}}
    return dict(found)


def backup_public_id(key: str) -> str:
    """What names a backup to its customer: a digest of its ledger key, which holds the URI of
    its host (`backup:<uri>:...`, with an SSH host's address, socket and ssh command)."""
    return hashlib.sha256(key.encode()).hexdigest()[:BACKUP_ID_LENGTH]


def backup_view(row: Any) -> dict[str, Any]:
    return {
        "id": backup_public_id(row.key),
        "vm": row.vm,
        "schedule": row.schedule,
        "backup": row.backup_id,
        "kind": row.kind,
        "status": row.status,
        "started_at": row.started_at.isoformat(),
        "finished_at": row.finished_at.isoformat(),
        "size_bytes": row.size_bytes,
        "pruned": row.pruned_at is not None,
    }


def customer_plan(plan: list[dict[str, Any]], scrub: Any) -> list[dict[str, Any]]:
    """A plan as its tenant sees it: without the host's own tables, which a tenant's run keeps
    too (the guard lists every tenant network of the host), and scrubbed."""
    return scrubbed([change for change in plan if change.get("kind") not in HOST_KINDS], scrub)
