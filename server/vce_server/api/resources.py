# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The tenant's resources: zones, the image catalogue, networks, disks, VMs, public IPs, zone
links, backup schedules and backups. Reads answer from the hosts; changes answer 202 with the
action that makes them. Every call is scoped to the token's tenant.

Each kind has its own routes (not one `{kind}` parameter), so the OpenAPI document lists every
path and an unknown kind is a plain 404."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ..errors import forbidden
from ..principal import Principal
from .deps import ACCEPTED_RESPONSES, Context, accepted, context, reader, writer

router = APIRouter(tags=["resources"])

KINDS = ("networks", "disks", "vms", "public_ips", "zone_links", "backup_schedules")
VM_ACTIONS = ("start", "stop", "reboot")


def tenant_of(who: Principal) -> str:
    """A customer's resources are its tenant's; an operator has none of its own."""
    if who.tenant is None:
        raise forbidden("resources belong to a tenant: call with a customer's token")
    return who.tenant


@router.get("/v1/zones")
def list_zones(
    who: Principal = Depends(reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """The zones' names."""
    tenant_of(who)
    return {"zones": ctx.resources.zones()}


@router.get("/v1/images")
def list_images(
    who: Principal = Depends(reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """The base images of every zone's catalogue (zone, name, format, size, checksum)."""
    tenant_of(who)
    return {"images": ctx.resources.images()}


@router.post("/v1/plan")
def plan(
    declaration: Any = Body(...),  # noqa: B008
    who: Principal = Depends(reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """What a whole environment declaration would change: exactly the plan check mode shows.
    Changes nothing."""
    return {"plan": ctx.resources.plan(tenant_of(who), declaration)}


@router.get("/v1/backups")
def list_backups(
    vm: str | None = None,
    who: Principal = Depends(reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """The tenant's backups (of one VM with `vm`), oldest first."""
    return {"backups": ctx.resources.backups(tenant_of(who), vm)}


@router.post("/v1/backups/{backup_id}/restore", status_code=202, responses=ACCEPTED_RESPONSES)
def restore_backup(
    backup_id: str,
    request: Request,
    body: Any = Body(None),  # noqa: B008
    who: Principal = Depends(writer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> JSONResponse:
    """Restore a VM's disk from a backup: as a new disk (`new_disk`) or in place
    (`mode: in_place`, `confirm: true`)."""
    payload = ctx.resources.validate_restore(tenant_of(who), backup_id, body)
    return accepted(ctx, who, request, kind="restore", target=f"backups/{backup_id}",
                    payload=payload)  # fmt: skip


def vm_action_route(action: str) -> Callable[..., JSONResponse]:
    def vm_action(
        name: str,
        request: Request,
        who: Principal = Depends(writer),  # noqa: B008
        ctx: Context = Depends(context),  # noqa: B008
    ) -> JSONResponse:
        payload = ctx.resources.validate_vm_action(tenant_of(who), name, action)
        return accepted(ctx, who, request, kind="vm_action", target=f"vms/{name}",
                        payload=payload)  # fmt: skip

    vm_action.__doc__ = f"{action.capitalize()} the VM."
    return vm_action


def list_route(plural: str) -> Callable[..., dict[str, Any]]:
    def list_objects(
        who: Principal = Depends(reader),  # noqa: B008
        ctx: Context = Depends(context),  # noqa: B008
    ) -> dict[str, Any]:
        return {plural: ctx.resources.list(tenant_of(who), plural)}

    list_objects.__doc__ = f"The tenant's {plural.replace('_', ' ')}, as their hosts have them."
    return list_objects


def read_route(plural: str) -> Callable[..., dict[str, Any]]:
    def read_object(
        name: str,
        zone: str | None = Query(None, description="The zone, when several hold the name."),
        who: Principal = Depends(reader),  # noqa: B008
        ctx: Context = Depends(context),  # noqa: B008
    ) -> dict[str, Any]:
        return {"object": ctx.resources.read(tenant_of(who), plural, name, zone)}

    read_object.__doc__ = "The object as its host has it now (404 when there is none)."
    return read_object


def put_route(plural: str) -> Callable[..., JSONResponse]:
    def put_object(
        name: str,
        request: Request,
        body: Any = Body(...),  # noqa: B008
        who: Principal = Depends(writer),  # noqa: B008
        ctx: Context = Depends(context),  # noqa: B008
    ) -> JSONResponse:
        payload = ctx.resources.validate(tenant_of(who), plural, name, body)
        return accepted(ctx, who, request, kind="put", target=f"{plural}/{name}",
                        payload=payload)  # fmt: skip

    put_object.__doc__ = (
        "Declare the object in full (the engine's snake_case fields, and `zone`): the action "
        "makes it so; the same declaration again changes nothing."
    )
    return put_object


CHECK_EXAMPLE = {
    "declaration": {
        "vcpus": 2,
        "memory_mib": 2048,
        "boot_disk": {"image": "debian-12", "size_gib": 20},
    },
    "pending": {"vcpus": 2, "ram_gib": "2"},
}


class CheckReply(BaseModel):
    """What a declaration adds to the tenant's usage: quota kind to amount, counts as integers,
    GiB as decimal strings (the units of /v1/quotas); {} when it adds nothing."""

    usage: dict[str, int | str]


def check_route(plural: str) -> Callable[..., dict[str, Any]]:
    def check_object(
        name: str,
        body: Any = Body(..., examples=[CHECK_EXAMPLE]),  # noqa: B008
        who: Principal = Depends(reader),  # noqa: B008
        ctx: Context = Depends(context),  # noqa: B008
    ) -> dict[str, Any]:
        return ctx.checks.check(tenant_of(who), plural, name, body)

    check_object.__doc__ = (
        "Check a declaration (`declaration`: the body of its PUT) without applying it: 422 as "
        'its PUT, 409 `quota_exceeded` naming the field of each breach, else `{"usage": {...}}`, '
        "what it adds to the tenant's usage (the units of /v1/quotas). `pending`: usage the "
        "client's other declarations will add. Changes nothing."
    )
    return check_object


def delete_route(plural: str) -> Callable[..., JSONResponse]:
    def delete_object(
        name: str,
        request: Request,
        zone: str | None = Query(None, description="The zone, when several hold the name."),
        who: Principal = Depends(writer),  # noqa: B008
        ctx: Context = Depends(context),  # noqa: B008
    ) -> JSONResponse:
        tenant = tenant_of(who)
        ctx.resources.read(tenant, plural, name, zone)
        payload = {"tenant": tenant, "kind": plural, "name": name, "zone": zone}
        return accepted(ctx, who, request, kind="delete", target=f"{plural}/{name}",
                        payload=payload)  # fmt: skip

    delete_object.__doc__ = "Remove the object; the action answers when it is gone."
    return delete_object


for _kind in KINDS:
    router.add_api_route(f"/v1/{_kind}", list_route(_kind), methods=["GET"], name=f"list_{_kind}")
    router.add_api_route(
        f"/v1/{_kind}/{{name}}", read_route(_kind), methods=["GET"], name=f"read_{_kind}"
    )
    router.add_api_route(
        f"/v1/{_kind}/{{name}}", put_route(_kind), methods=["PUT"], status_code=202,
        responses=ACCEPTED_RESPONSES, name=f"put_{_kind}",
    )  # fmt: skip
    router.add_api_route(
        f"/v1/{_kind}/{{name}}", delete_route(_kind), methods=["DELETE"], status_code=202,
        responses=ACCEPTED_RESPONSES, name=f"delete_{_kind}",
    )  # fmt: skip
    router.add_api_route(
        f"/v1/{_kind}/{{name}}/check", check_route(_kind), methods=["POST"],
        response_model=CheckReply, name=f"check_{_kind}",
    )  # fmt: skip
for _action in VM_ACTIONS:
    router.add_api_route(
        f"/v1/vms/{{name}}/actions/{_action}", vm_action_route(_action), methods=["POST"],
        status_code=202, responses=ACCEPTED_RESPONSES, name=f"{_action}_vm",
    )  # fmt: skip
