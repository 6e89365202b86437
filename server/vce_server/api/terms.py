# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the terms give the customer: quotas, requests (5.1), outage reports (5.11), the trial
(3.12), usage, invoices, SLA statements, and the audit trail of its own calls."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse

from ..principal import Principal
from .deps import Context, context, reader, writer

router = APIRouter(tags=["terms"])
MONTH = Query(None, description="YYYY-MM in the provider's time zone; default: this month.")
LIMIT = Query(100, ge=1, le=1000)
REQUEST_BODY = Body(
    openapi_examples={
        "quota increase": {
            "value": {"kind": "quota_increase", "quotas": {"vcpus": 16}, "note": "batch job"}
        },
        "reboot": {"value": {"kind": "reboot", "vm": "web", "note": "the console hangs"}},
    },
    description="kind: quota_increase (with quotas), password, reboot or unblock (with vm), "
    "zone_link, critical_fault, minor_fault; note: free text.",
)
INCIDENT_BODY = Body(
    openapi_examples={"outage": {"value": {"vm": "web", "note": "no answer on port 443"}}},
    description="vm (default: every VM), started_at (ISO 8601 with offset, for support), note.",
)


@router.get("/v1/quotas")
def read_quotas(
    who: Principal = Depends(reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """Each quota kind: limit, used, and reserved by changes in flight (GiB for sizes)."""
    return ctx.terms.quotas(who)


@router.post("/v1/requests", status_code=201)
def file_request(
    body: Any = REQUEST_BODY,
    who: Principal = Depends(writer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> JSONResponse:
    """A request of the terms (5.1), logged with its clock. A quota increase within the plan
    and the zone's free capacity is granted at once; anything else waits for an operator."""
    view = ctx.terms.file_request(who, body)
    return JSONResponse(
        {"request": view}, status_code=201, headers={"Location": f"/v1/requests/{view['id']}"}
    )


@router.get("/v1/requests")
def list_requests(
    limit: int = LIMIT,
    who: Principal = Depends(reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """The tenant's requests, newest first, each with its clock."""
    return {"requests": ctx.terms.requests(who, limit)}


@router.get("/v1/requests/{request_id}")
def read_request(
    request_id: str,
    who: Principal = Depends(reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """One request: logged_at, due_at, fulfilled_at, overdue."""
    return {"request": ctx.terms.request(who, request_id)}


@router.post("/v1/incidents", status_code=201)
def report_incident(
    body: Any = INCIDENT_BODY,
    who: Principal = Depends(writer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> JSONResponse:
    """Report an outage (5.11): it counts from now once support confirms it."""
    return JSONResponse({"incident": ctx.terms.report_incident(who, body)}, status_code=201)


@router.get("/v1/incidents")
def list_incidents(
    who: Principal = Depends(reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """The tenant's incidents, reported or found by the provider's probes."""
    return {"incidents": ctx.terms.incidents(who)}


@router.get("/v1/trial")
def read_trial(
    who: Principal = Depends(reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """The trial's state (3.12), and whether the tenant may have one and why not."""
    return {"trial": ctx.terms.trial(who)}


@router.post("/v1/trial")
def ask_trial(
    who: Principal = Depends(writer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """Ask for the trial: once per customer, before any use (3.12.5); 409 when refused."""
    return {"trial": ctx.terms.ask_trial(who)}


@router.get("/v1/usage")
def read_usage(
    month: str | None = MONTH,
    who: Principal = Depends(reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """The tenant's metered usage in the month, so far for this one."""
    return ctx.terms.usage(who, month)


@router.get("/v1/invoices")
def list_invoices(
    who: Principal = Depends(reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """This month's invoice so far and every closed month's, newest first."""
    return {"invoices": ctx.terms.invoices(who)}


@router.get(
    "/v1/invoices/{month}",
    responses={200: {"content": {"application/json": {}, "text/html": {}}}},
)
def read_invoice(
    month: str,
    request: Request,
    who: Principal = Depends(reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Any:
    """The month's invoice with its SLA statement; `Accept: text/html` gives the statement
    as a page."""
    if "text/html" in request.headers.get("accept", ""):
        return HTMLResponse(ctx.terms.invoice_html(who, month))
    return {"invoice": ctx.terms.invoice(who, month)}


@router.get("/v1/sla")
def read_sla(
    month: str | None = MONTH,
    who: Principal = Depends(reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """The month's availability per VM (5.5), the incidents counted, and the credit (5.6)."""
    return {"sla": ctx.terms.sla(who, month)}


@router.get("/v1/audit")
def read_audit(
    tenant: str | None = Query(None, description="Operators: one tenant's trail."),
    limit: int = LIMIT,
    who: Principal = Depends(reader),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> dict[str, Any]:
    """Calls that changed something, newest first: the tenant's own (operators: all)."""
    return {"audit": ctx.terms.audit(who, tenant, limit)}
