# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The provider's pages: tenants and their plans (suspend, resume), a tenant's VMs (block,
unblock), the request queue by time left, incidents to confirm, restore and classify,
maintenance windows, hosts with their probe state, the image catalogue, the audit log.

Every page calls what /v1/operator calls (ctx.operator, ctx.resources, ctx.terms) with the
session's Principal, and only an operator's session reaches them: a customer's gets 404. A
change is first shown on its own page with a button that says what it does (works without
JavaScript); only that page's POST, with its CSRF token, changes anything.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ..api.deps import Context, context
from ..errors import not_found
from .guard import COOKIE_PATH, csrf_checked, operator, posted
from .render import page
from .routes import form_key, see_other, submit
from .sessions import Session

router = APIRouter(prefix=COOKIE_PATH, include_in_schema=False)
HOME = f"{COOKIE_PATH}/operator"
# The queue must hold every open request to sort them by time left: the service's most.
QUEUE_SIZE = 1000
AUDIT_PAGE_SIZES = (50, 100, 200, 500)
EXCLUSIONS_SHOWN = 200
# A maintenance window's times as the form's datetime-local fields send them: UTC, no offset.
WINDOW_FIELDS = ("started_at", "ended_at", "announced_at")
TENANT_STATES = {"suspend": "suspended", "resume": "active"}
BLOCK_VERBS = {"block": True, "unblock": False}
INCIDENT_STEPS = ("confirm", "restore")


@dataclass(frozen=True)
class Confirmation:
    """What a confirmation page asks: the change in words, where its form posts, the button."""

    heading: str
    question: str
    action: str
    button: str
    back: str
    reason: bool = False
    key: str = ""


def confirm_page(request: Request, confirmation: Confirmation) -> Response:
    return page(request, "operator_confirm.html.j2", ask=confirmation)


# -- tenants and plans ------------------------------------------------------------------------


@router.get("/operator/")
def tenants_page(
    request: Request,
    session: Session = Depends(operator),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    who = session.principal
    return page(
        request, "operator_tenants.html.j2",
        tenants=ctx.operator.tenants(who), plans=ctx.operator.plans(who),
    )  # fmt: skip


@router.get("/operator/tenants/{name}")
def tenant_page(
    name: str,
    request: Request,
    session: Session = Depends(operator),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    tenant = ctx.operator.tenant(session.principal, name)
    return page(
        request, "operator_tenant.html.j2", tenant=tenant,
        quotas=quota_rows(tenant["quotas"], tenant["usage"]),
        vms=ctx.resources.list(name, "vms"), blocked=set(tenant["blocked_vms"]),
    )  # fmt: skip


def quota_rows(limits: Mapping[str, Any], usage: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    return [(kind, limits.get(kind, 0), usage.get(kind, 0)) for kind in sorted(usage)]


@router.get("/operator/tenants/{name}/{verb}")
def tenant_state_confirmation(
    name: str,
    verb: str,
    request: Request,
    session: Session = Depends(operator),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    known_verb(request, verb, TENANT_STATES)
    ctx.operator.tenant(session.principal, name)
    suspend = verb == "suspend"
    return confirm_page(
        request,
        Confirmation(
            heading=f"{verb.capitalize()} tenant {name}",
            question=(
                f"Suspend {name}? Its running VMs are paused and it cannot change anything "
                "until it is resumed."
                if suspend
                else f"Resume {name}? Its paused VMs run again (except those blocked)."
            ),
            action=f"{HOME}/tenants/{name}/{verb}",
            button=f"{verb.capitalize()} {name}",
            back=f"{HOME}/tenants/{name}",
            reason=suspend,
        ),
    )


@router.post("/operator/tenants/{name}/{verb}")
def change_tenant_state(
    name: str,
    verb: str,
    request: Request,
    session: Session = Depends(operator),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    fields = csrf_checked(session, fields)
    known_verb(request, verb, TENANT_STATES)
    body = {"state": TENANT_STATES[verb]}
    if fields.get("reason"):
        body["reason"] = fields["reason"]
    request.state.audit_tenant = name
    ctx.operator.put_tenant(session.principal, name, body)
    return see_other(f"{HOME}/tenants/{name}")


def known_verb(request: Request, verb: str, verbs: Iterable[str]) -> None:
    if verb not in verbs:
        raise not_found(f"page {request.url.path}")


# -- blocks ------------------------------------------------------------------------------------


@router.get("/operator/tenants/{name}/vms/{vm}/{verb}")
def block_confirmation(
    name: str,
    vm: str,
    verb: str,
    request: Request,
    session: Session = Depends(operator),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    known_verb(request, verb, BLOCK_VERBS)
    ctx.resources.validate_block(name, vm, BLOCK_VERBS[verb], "")
    block = BLOCK_VERBS[verb]
    return confirm_page(
        request,
        Confirmation(
            heading=f"{verb.capitalize()} VM {vm} of {name}",
            question=(
                f"Block {vm}? It is paused and {name} cannot start or change it until it is "
                "unblocked."
                if block
                else f"Unblock {vm}? It runs again unless {name} is suspended."
            ),
            action=f"{HOME}/tenants/{name}/vms/{vm}/{verb}",
            button=f"{verb.capitalize()} {vm}",
            back=f"{HOME}/tenants/{name}",
            reason=block,
            key=form_key(),
        ),
    )


@router.post("/operator/tenants/{name}/vms/{vm}/{verb}")
def block_vm(
    name: str,
    vm: str,
    verb: str,
    request: Request,
    session: Session = Depends(operator),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    """As PUT or DELETE /v1/operator/blocks/{tenant}/{vm}: an action of kind block."""
    fields = csrf_checked(session, fields)
    known_verb(request, verb, BLOCK_VERBS)
    block = BLOCK_VERBS[verb]
    reason = ctx.operator.block_reason({"reason": fields.get("reason", "")}) if block else ""
    payload = ctx.resources.validate_block(name, vm, block, reason)
    action = submit(request, ctx, session, "block", f"vms/{vm}", payload, fields, tenant=name)
    return see_other(f"{COOKIE_PATH}/actions/{action}")


# -- the request queue (5.1) -----------------------------------------------------------------
# Support's references (`vce ledger request log`) may hold any printable text, "/" too: the
# id is quoted in links and read back whole (a `path` parameter).


@dataclass(frozen=True)
class QueuedRequest:
    """An open request and the time left on its clock (negative: overdue by that much)."""

    view: Mapping[str, Any]
    left: dt.timedelta

    @property
    def overdue(self) -> bool:
        return self.left < dt.timedelta(0)

    @property
    def left_text(self) -> str:
        minutes = int(abs(self.left).total_seconds() // 60)
        span = f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"
        return f"overdue by {span}" if self.overdue else f"{span} left"


def queue(views: Iterable[Mapping[str, Any]], now: dt.datetime) -> list[QueuedRequest]:
    """Open requests by time left: the most overdue first, then the least time left."""
    rows = [QueuedRequest(view, dt.datetime.fromisoformat(view["due_at"]) - now) for view in views]
    return sorted(rows, key=lambda row: (row.left, row.view["tenant"], row.view["id"]))


@router.get("/operator/requests")
def requests_page(
    request: Request,
    session: Session = Depends(operator),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    views = ctx.operator.requests(session.principal, open_only=True, limit=QUEUE_SIZE)
    return page(request, "operator_requests.html.j2", queue=queue(views, ctx.operator.clock()))


@router.get("/operator/requests/{tenant}/{request_id:path}/fulfil")
def fulfil_confirmation(
    tenant: str,
    request_id: str,
    request: Request,
    session: Session = Depends(operator),  # noqa: B008
) -> Response:
    return confirm_page(
        request,
        Confirmation(
            heading=f"Fulfil request {request_id} of {tenant}",
            question=(
                f"Fulfil {request_id}? Its clock stops now; a quota increase is applied first."
            ),
            action=f"{HOME}/requests/{tenant}/{quote(request_id, safe='')}/fulfil",
            button=f"Fulfil {request_id}",
            back=f"{HOME}/requests",
        ),
    )


@router.post("/operator/requests/{tenant}/{request_id:path}/fulfil")
def fulfil_request(
    tenant: str,
    request_id: str,
    request: Request,
    session: Session = Depends(operator),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    csrf_checked(session, fields)
    request.state.audit_tenant = tenant
    ctx.operator.fulfil(session.principal, request_id, {"tenant": tenant})
    return see_other(f"{HOME}/requests")


# -- incidents (5.11) --------------------------------------------------------------------------


@router.get("/operator/incidents")
def incidents_page(
    request: Request,
    session: Session = Depends(operator),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    found = ctx.operator.incidents(session.principal)
    # The ones still open first, newest first within each.
    ordered = sorted(found, key=lambda row: (row["ended_at"] is not None, row["started_at"]))
    ongoing = [row for row in ordered if row["ended_at"] is None][::-1]
    ended = [row for row in ordered if row["ended_at"] is not None][::-1]
    return page(request, "operator_incidents.html.j2", incidents=ongoing + ended,
                causes=ctx.operator.causes())  # fmt: skip


@router.get("/operator/incidents/{number}/{step}")
def incident_confirmation(
    number: int,
    step: str,
    request: Request,
    session: Session = Depends(operator),  # noqa: B008
) -> Response:
    known_verb(request, step, INCIDENT_STEPS)
    return confirm_page(
        request,
        Confirmation(
            heading=f"{step.capitalize()} incident #{number}",
            question=(
                f"Confirm incident #{number}? It counts against the SLA from the report."
                if step == "confirm"
                else f"Restore incident #{number}? Service is back: it ends now."
            ),
            action=f"{HOME}/incidents/{number}/{step}",
            button=f"{step.capitalize()} incident #{number}",
            back=f"{HOME}/incidents",
        ),
    )


@router.post("/operator/incidents/{number}/classify")
def classify_incident(
    number: int,
    request: Request,
    session: Session = Depends(operator),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    fields = csrf_checked(session, fields)
    body = {"cause": fields.get("cause", ""), "note": fields.get("note", "")}
    ctx.operator.classify_incident(session.principal, number, body)
    return see_other(f"{HOME}/incidents")


@router.post("/operator/incidents/{number}/{step}")
def incident_step(
    number: int,
    step: str,
    request: Request,
    session: Session = Depends(operator),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    csrf_checked(session, fields)
    known_verb(request, step, INCIDENT_STEPS)
    if step == "confirm":
        ctx.operator.confirm_incident(session.principal, number, {})
    else:
        ctx.operator.restore_incident(session.principal, number, {})
    return see_other(f"{HOME}/incidents")


# -- maintenance windows (5.8-5.10) ------------------------------------------------------------


@router.get("/operator/maintenance")
def maintenance_page(
    request: Request,
    session: Session = Depends(operator),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    return maintenance(request, session, ctx, {}, None)


@router.post("/operator/maintenance")
def add_maintenance(
    request: Request,
    session: Session = Depends(operator),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    fields = csrf_checked(session, fields)
    try:
        ctx.operator.exclude(session.principal, exclusion_body(fields))
    except SpecError as error:
        return maintenance(request, session, ctx, fields, error, status=422)
    return see_other(f"{HOME}/maintenance")


def maintenance(
    request: Request,
    session: Session,
    ctx: Context,
    fields: Mapping[str, str],
    error: SpecError | None,
    status: int = 200,
) -> Response:
    """The windows recorded, and the form (with what was typed and the refusal, if any)."""
    return page(
        request, "operator_maintenance.html.j2", status=status,
        windows=ctx.operator.exclusions(session.principal, EXCLUSIONS_SHOWN),
        causes=ctx.operator.excludable_causes(), typed=fields, error=error,
    )  # fmt: skip


def exclusion_body(fields: Mapping[str, str]) -> dict[str, str]:
    """The API's body from the form: the datetime-local fields are read as UTC."""
    body = {
        name: fields.get(name, "").strip()
        for name in ("cause", "tenant", "host", "vm", "note", *WINDOW_FIELDS)
    }
    for name in WINDOW_FIELDS:
        if body[name] and not has_offset(body[name]):
            body[name] += "+00:00"
    return body


def has_offset(text: str) -> bool:
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).tzinfo is not None
    except ValueError:
        return True  # the service names the field and why it is not a time


# -- the fleet and the audit log -------------------------------------------------------------


@router.get("/operator/hosts")
def hosts_page(
    request: Request,
    session: Session = Depends(operator),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    return page(request, "operator_hosts.html.j2", hosts=ctx.operator.hosts(session.principal))


@router.get("/operator/images")
def images_page(
    request: Request,
    session: Session = Depends(operator),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    return page(request, "operator_images.html.j2", images=ctx.operator.images(session.principal))


@router.get("/operator/audit")
def audit_page(
    request: Request,
    tenant: str = "",
    size: int = AUDIT_PAGE_SIZES[1],
    session: Session = Depends(operator),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    """The newest entries first, of every tenant or of one, at most the largest page size."""
    size = size if size in AUDIT_PAGE_SIZES else AUDIT_PAGE_SIZES[1]
    rows = ctx.terms.audit(session.principal, tenant or None, size)
    return page(
        request, "operator_audit.html.j2", rows=rows, tenant=tenant, size=size,
        sizes=AUDIT_PAGE_SIZES,
    )  # fmt: skip
