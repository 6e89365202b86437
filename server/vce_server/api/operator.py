# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The provider's operators: tenants and plans, the requests of 5.1 to fulfil, outage reports
to confirm, and the fleet. Every path answers 403 to a customer's token."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse

from ..principal import Principal
from .deps import ACCEPTED_RESPONSES, Context, accepted, context, operator_reader, operator_writer

router = APIRouter(prefix="/v1/operator", tags=["operator"])
TENANT_BODY = Body(
    openapi_examples={
        "suspend": {"value": {"state": "suspended", "reason": "invoice 2026-10 unpaid"}},
        "quotas": {"value": {"quotas": {"vcpus": 32, "ram_gib": 64}}},
        "register": {"value": {"customer": "ACME LLP, BIN 123456789012", "plan": "standard"}},
    },
    description="customer and plan (to register), plan, quotas (the overrides, all of them), "
    "state (active, suspended, closed), reason.",
)
STEP_BODY = Body(None, description="at: the moment (ISO 8601 with offset); default now.")
FULFIL_BODY = Body(
    None,
    description="tenant (when two tenants share the id), at (default now), quotas (a quota "
    "increase granted with other limits than asked).",
)


@router.get("/tenants")
def list_tenants(
    who: Principal = Depends(operator_reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """Every tenant: state, plan, quotas, usage, trial, blocked VMs."""
    return {"tenants": ctx.operator.tenants(who)}


@router.get("/tenants/{name}")
def read_tenant(
    name: str,
    who: Principal = Depends(operator_reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    return {"tenant": ctx.operator.tenant(who, name)}


@router.put("/tenants/{name}")
def put_tenant(
    name: str,
    body: Any = TENANT_BODY,
    who: Principal = Depends(operator_writer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """Register a tenant or change its plan, quota overrides or state, as vce.kvm.tenant does
    (a limit below usage is refused; a suspension pauses its VMs)."""
    return ctx.operator.put_tenant(who, name, body)


@router.get("/plans")
def list_plans(
    who: Principal = Depends(operator_reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    return {"plans": ctx.operator.plans(who)}


@router.put("/blocks/{tenant}/{vm}", status_code=202, responses=ACCEPTED_RESPONSES)
def block_vm(
    tenant: str,
    vm: str,
    request: Request,
    body: Any = Body(None, description="reason: why, recorded in the ledger."),  # noqa: B008
    who: Principal = Depends(operator_writer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> JSONResponse:
    """Block a VM: paused, and its tenant cannot start or change it until it is unblocked.
    Answers with the action that does it, as every change on a host."""
    payload = ctx.resources.validate_block(tenant, vm, True, ctx.operator.block_reason(body))
    return accepted(ctx, who, request, "block", f"vms/{vm}", payload, tenant=tenant)


@router.delete("/blocks/{tenant}/{vm}", status_code=202, responses=ACCEPTED_RESPONSES)
def unblock_vm(
    tenant: str,
    vm: str,
    request: Request,
    who: Principal = Depends(operator_writer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> JSONResponse:
    """Unblock a VM: resumed unless its tenant is suspended."""
    payload = ctx.resources.validate_block(tenant, vm, False, "")
    return accepted(ctx, who, request, "block", f"vms/{vm}", payload, tenant=tenant)


@router.get("/requests")
def list_requests(
    tenant: str | None = None,
    open_only: bool = Query(False, alias="open", description="Only requests not fulfilled."),
    limit: int = Query(100, ge=1, le=1000),
    who: Principal = Depends(operator_reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """Every tenant's requests with their clocks: open ones oldest first with `open=true`."""
    return {"requests": ctx.operator.requests(who, tenant, open_only, limit)}


@router.post("/requests/{request_id}/fulfil")
def fulfil_request(
    request_id: str,
    body: Any = FULFIL_BODY,
    who: Principal = Depends(operator_writer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """Stop the request's clock; a queued quota increase is applied first."""
    return {"request": ctx.operator.fulfil(who, request_id, body)}


@router.post("/requests/{request_id}/password-link")
def password_link(
    request_id: str,
    who: Principal = Depends(operator_writer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """The link a customer who asked for a password reset in the cabinet sets a new password
    with: shown this once, valid 20 minutes and once; issuing again voids the earlier link.
    Using it stops the request's clock."""
    return {"reset": ctx.operator.password_link(ctx.identity, request_id)}


@router.get("/incidents")
def list_incidents(
    tenant: str | None = None,
    open_only: bool = Query(False, alias="open", description="Only incidents not ended."),
    who: Principal = Depends(operator_reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    return {"incidents": ctx.operator.incidents(who, tenant, open_only)}


@router.post("/incidents/{incident_id}/confirm")
def confirm_incident(
    incident_id: int,
    body: Any = STEP_BODY,
    who: Principal = Depends(operator_writer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """Support confirms a customer's outage report: it counts from the report (5.11)."""
    return {"incident": ctx.operator.confirm_incident(who, incident_id, body)}


@router.post("/incidents/{incident_id}/restore")
def restore_incident(
    incident_id: int,
    body: Any = STEP_BODY,
    who: Principal = Depends(operator_writer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """Service is back: the incident ends (5.11)."""
    return {"incident": ctx.operator.restore_incident(who, incident_id, body)}


@router.post("/incidents/{incident_id}/classify")
def classify_incident(
    incident_id: int,
    body: Any = Body(  # noqa: B008
        openapi_examples={"maintenance": {"value": {"cause": "maintenance", "note": "kernel"}}},
        description="cause (provider, maintenance, force_majeure, customer), note.",
    ),
    who: Principal = Depends(operator_writer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """Whose doing the downtime was: only the provider's counts against the SLA (5.8-5.10)."""
    return {"incident": ctx.operator.classify_incident(who, incident_id, body)}


@router.get("/exclusions")
def list_exclusions(
    limit: int = Query(100, ge=1, le=1000),
    who: Principal = Depends(operator_reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """Maintenance windows and other uncompensated intervals, latest start first."""
    return {"exclusions": ctx.operator.exclusions(who, limit)}


@router.post("/exclusions", status_code=201)
def add_exclusion(
    body: Any = Body(  # noqa: B008
        openapi_examples={
            "maintenance": {
                "value": {
                    "cause": "maintenance",
                    "started_at": "2026-12-10T02:00:00+00:00",
                    "ended_at": "2026-12-10T03:00:00+00:00",
                    "announced_at": "2026-12-03T09:00:00+00:00",
                    "note": "kernel update",
                }
            },
        },
        description="cause (maintenance, force_majeure, customer), started_at, ended_at, "
        "announced_at (maintenance: before it starts), tenant, host (a URI), vm, note; empty "
        "scope fields match everything.",
    ),
    who: Principal = Depends(operator_writer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """Record a maintenance window or another interval whose downtime is not compensated."""
    return {"exclusion": ctx.operator.exclude(who, body)}


@router.post("/tokens", status_code=201)
def create_token(
    body: Any = Body(  # noqa: B008
        openapi_examples={
            "ci": {"value": {"tenant": "acme", "scopes": "read write", "name": "ci"}},
        },
        description="tenant, scopes (read, or read write), name, expires_at (ISO 8601).",
    ),
    who: Principal = Depends(operator_writer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """A token for a tenant: `token` is its text, shown in this answer only."""
    return {"token": ctx.operator.create_token(ctx.identity, who, body)}


@router.get("/tokens")
def list_tokens(
    tenant: str | None = None,
    who: Principal = Depends(operator_reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """Every token (or a tenant's): prefix, name, scopes, expiry, revocation, last use."""
    return {"tokens": ctx.operator.tokens(ctx.identity, tenant)}


@router.delete("/tokens/{prefix}")
def revoke_token(
    prefix: str,
    who: Principal = Depends(operator_writer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """Revoke a token: refused at once by this instance, within seconds by the others."""
    return {"token": ctx.operator.revoke_token(ctx.identity, prefix)}


@router.get("/users")
def list_users(
    tenant: str | None = None,
    who: Principal = Depends(operator_reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """The personal cabinet's users (or a tenant's), disabled ones too; never a password."""
    return {"users": ctx.operator.users(ctx.identity, tenant)}


@router.post("/users", status_code=201)
def create_user(
    body: Any = Body(description="login, password, tenant: a customer's user."),  # noqa: B008
    who: Principal = Depends(operator_writer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    return {"user": ctx.operator.create_user(ctx.identity, body)}


@router.put("/users/{login}/password")
def set_password(
    login: str,
    body: Any = Body(description="password: the new one."),  # noqa: B008
    who: Principal = Depends(operator_writer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """Set a user's password (a reset the customer asked for)."""
    return {"user": ctx.operator.set_password(ctx.identity, login, body)}


@router.delete("/users/{login}")
def disable_user(
    login: str,
    who: Principal = Depends(operator_writer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """Disable a user: it can no longer log in; its records stay."""
    return {"user": ctx.operator.disable_user(ctx.identity, login)}


@router.get("/hosts")
def list_hosts(
    who: Principal = Depends(operator_reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """The registered hosts: zone, URI, capacity, versions, tenants placed."""
    return {"hosts": ctx.operator.hosts(who)}


@router.get("/images")
def list_images(
    who: Principal = Depends(operator_reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """The image catalogue with each image's path on the hosts."""
    return {"images": ctx.operator.images(who)}
