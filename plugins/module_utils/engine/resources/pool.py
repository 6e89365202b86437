# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host storage pools: the directories that hold the tenants' disks, as libvirt pools.

A pool is the host's, not a tenant's: it carries no ownership metadata and has no tenant
prefix. Its target path is never changed under the volumes it holds, and a pool that still
holds volumes is never removed.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ...core.errors import SpecError, libvirt_action
from ...core.plan import Change, Plan
from ...core.result import Result
from ...core.validation import check_absolute_path, check_pool
from ...host.connection import DEFAULT_URI, Host
from ...host.xml import sub, to_string
from ..run import Run, conclude

KIND = "storage_pool"
POOL_TYPES = ("dir",)
STATES = ("present", "absent")
GIB = 1024**3
# How many volume names a refusal shows; the count says how many there are in all.
SHOWN_VOLUMES = 5


@dataclass(frozen=True)
class PoolSpec:
    name: str
    path: str
    type: str = "dir"
    autostart: bool = True


@dataclass(frozen=True)
class PoolState:
    name: str
    type: str
    path: str
    active: bool
    autostart: bool
    capacity: int | None  # bytes; None while the pool is inactive
    available: int | None
    volumes: tuple[str, ...] | None  # None while the pool is inactive


def check_path(value: Any, field: str) -> str:
    if value is None or value == "":
        raise SpecError(field, "the pool's directory is required when state=present")
    return os.path.normpath(check_absolute_path(value, field))


def parse_pool(params: dict[str, Any]) -> PoolSpec:
    name = check_pool(params.get("name"), "name")
    pool_type = params.get("type") or "dir"
    if pool_type not in POOL_TYPES:
        raise SpecError("type", f"must be one of {', '.join(POOL_TYPES)}, got {pool_type!r}")
    autostart = params.get("autostart")
    if autostart is not None and not isinstance(autostart, bool):
        raise SpecError("autostart", f"must be true or false, got {autostart!r}")
    path = check_path(params.get("path"), "path")
    return PoolSpec(name, path, pool_type, True if autostart is None else autostart)


def change(name: str, action: str, run: Callable[[], None], **values: Any) -> Change:
    return Change(KIND, name, action, run=run, **values)


def pool_xml(spec: PoolSpec) -> str:
    root = ET.Element("pool", {"type": spec.type})
    sub(root, "name", spec.name)
    sub(sub(root, "target"), "path", spec.path)
    return to_string(root)


def gib(value: int | None) -> float | None:
    return None if value is None else round(value / GIB, 2)


def pool_facts(state: PoolState | None) -> dict[str, Any]:
    if state is None:
        return {}
    return {
        "name": state.name,
        "path": state.path,
        "type": state.type,
        "active": state.active,
        "autostart": state.autostart,
        "capacity_gib": gib(state.capacity),
        "available_gib": gib(state.available),
        "volumes": None if state.volumes is None else len(state.volumes),
    }


class PoolPlanner:
    """Observe, plan and apply one storage pool on one host."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def observe(self, name: str) -> PoolState | None:
        """The pool as libvirt has it (volumes rescanned), None when there is none."""
        conn = self.host.conn
        with libvirt_action("list", f"storage pools on {self.host.uri}"):
            if name not in conn.listStoragePools() + conn.listDefinedStoragePools():
                return None
        with libvirt_action("read", f"storage pool {name}"):
            pool = conn.storagePoolLookupByName(name)
            active = bool(pool.isActive())
            if active:
                # Files copied into the directory by hand are volumes too.
                pool.refresh(0)
            root = ET.fromstring(pool.XMLDesc(0))
            volumes = tuple(sorted(pool.listVolumes())) if active else None
            return PoolState(
                name=name,
                type=root.get("type", ""),
                path=os.path.normpath(root.findtext("target/path", "")),
                active=active,
                autostart=bool(pool.autostart()),
                capacity=int(root.findtext("capacity", "0")) if active else None,
                available=int(root.findtext("available", "0")) if active else None,
                volumes=volumes,
            )

    def path_owner(self, path: str, name: str) -> str | None:
        """Another pool that already has `path` as its target."""
        with libvirt_action("list", f"storage pools on {self.host.uri}"):
            for pool in self.host.conn.listAllStoragePools(0):
                if pool.name() != name and os.path.normpath(self.host.pool_path(pool)) == path:
                    return pool.name()
        return None

    def plan_present(self, spec: PoolSpec, state: PoolState | None) -> Plan:
        plan = Plan()
        if state is None:
            other = self.path_owner(spec.path, spec.name)
            if other is not None:
                raise SpecError("path", f"{spec.path} is already the path of storage pool {other}")
            after = {"type": spec.type, "path": spec.path}
            plan.add(
                change(spec.name, "define", before=None, after=after, run=lambda: self.define(spec))
            )
        else:
            self.refuse_redefinition(spec, state)
        if state is None or not state.active:
            plan.add(
                change(
                    spec.name,
                    "build",
                    field="directory",
                    before=None,
                    after=spec.path,
                    run=lambda: self.build(spec.name),
                )
            )
            plan.add(
                change(
                    spec.name,
                    "start",
                    field="active",
                    before=False,
                    after=True,
                    run=lambda: self.start(spec.name),
                )
            )
        current = state.autostart if state is not None else False
        if current != spec.autostart:
            plan.add(
                change(
                    spec.name,
                    "autostart",
                    field="autostart",
                    before=current,
                    after=spec.autostart,
                    run=lambda: self.set_autostart(spec.name, spec.autostart),
                )
            )
        return plan

    @staticmethod
    def refuse_redefinition(spec: PoolSpec, state: PoolState) -> None:
        """A pool's volumes live in its directory: moving it would lose them from view."""
        if state.path != spec.path:
            raise SpecError(
                "path",
                f"storage pool {spec.name} exists with path {state.path}, declared {spec.path}; "
                "a pool is never redefined under another path (move its volumes and remove it "
                "first, or declare its current path)",
            )
        if state.type != spec.type:
            raise SpecError(
                "type",
                f"storage pool {spec.name} exists with type {state.type}, declared {spec.type}; "
                "a pool is never redefined with another type",
            )

    def plan_absent(self, name: str, state: PoolState | None) -> Plan:
        plan = Plan()
        if state is None:
            return plan
        if state.volumes is None:
            raise SpecError(
                "state",
                f"storage pool {name} is inactive, so its volumes cannot be counted; start it "
                "(state=present) and run again",
            )
        if state.volumes:
            shown = ", ".join(state.volumes[:SHOWN_VOLUMES])
            more = ", ..." if len(state.volumes) > SHOWN_VOLUMES else ""
            raise SpecError(
                "state",
                f"storage pool {name} still holds {len(state.volumes)} volume(s) ({shown}{more}); "
                "remove them first",
            )
        plan.add(
            change(
                name, "stop", field="active", before=True, after=False, run=lambda: self.stop(name)
            )
        )
        before = {"type": state.type, "path": state.path}
        plan.add(
            Change(
                KIND, name, "undefine", before=before, after=None, run=lambda: self.undefine(name)
            )
        )
        return plan

    def define(self, spec: PoolSpec) -> None:
        with libvirt_action("define", f"storage pool {spec.name}"):
            self.host.conn.storagePoolDefineXML(pool_xml(spec), 0)

    def build(self, name: str) -> None:
        with libvirt_action("build the directory of", f"storage pool {name}"):
            self.host.conn.storagePoolLookupByName(name).build(0)

    def start(self, name: str) -> None:
        with libvirt_action("start", f"storage pool {name}"):
            self.host.conn.storagePoolLookupByName(name).create(0)

    def set_autostart(self, name: str, enabled: bool) -> None:
        with libvirt_action("set autostart of", f"storage pool {name}"):
            self.host.conn.storagePoolLookupByName(name).setAutostart(int(enabled))

    def stop(self, name: str) -> None:
        with libvirt_action("stop", f"storage pool {name}"):
            self.host.conn.storagePoolLookupByName(name).destroy()

    def undefine(self, name: str) -> None:
        with libvirt_action("undefine", f"storage pool {name}"):
            self.host.conn.storagePoolLookupByName(name).undefine()


def run_storage_pool(params: dict[str, Any], check_mode: bool = False) -> Result:
    state = params.get("state") or "present"
    if state not in STATES:
        raise SpecError("state", f"must be one of {', '.join(STATES)}, got {state!r}")
    name = check_pool(params.get("name"), "name")
    spec = parse_pool(params) if state == "present" else None
    engine = PoolPlanner(Host(params.get("uri") or DEFAULT_URI))
    observed = engine.observe(name)
    plan = engine.plan_present(spec, observed) if spec else engine.plan_absent(name, observed)

    def facts(_after: object, applied: bool) -> dict[str, Any]:
        return {"pool": pool_facts(engine.observe(name) if applied else observed)}

    return conclude(Run(plan, facts), check_mode)
