# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every router needs: the server's context, who is calling and may they, and the 202
answer of a change.

Authorization happens here and nowhere else: a router declares which of `reader`, `writer`,
`operator_reader` or `operator_writer` it needs, and receives the caller's Principal, whose
tenant scopes every lookup the service layer makes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from ..errors import ApiError, forbidden, too_many, unauthorized
from ..principal import WRITE, Principal
from ..settings import Settings

IDEMPOTENCY_HEADER = "Idempotency-Key"
# On a 202 that answers a retried request with the action its first request made.
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_IDEMPOTENCY_KEY = 200

# auto_error off: a missing token gets the API's own error shape, not FastAPI's.
bearer = HTTPBearer(auto_error=False, description="An API token: `vce_<prefix>_<secret>`.")


class ErrorField(BaseModel):
    path: str
    reason: str


class ErrorDetail(BaseModel):
    code: str
    message: str
    fields: list[ErrorField]
    request_id: str


class ErrorReply(BaseModel):
    """The one shape of every failure (errors.ApiError.body)."""

    error: ErrorDetail


RETRY_AFTER = {"description": "Seconds to wait.", "schema": {"type": "integer"}}
WWW_AUTHENTICATE = {"description": "Bearer", "schema": {"type": "string"}}
# Every operation lists these (app.py includes each router with them): OpenAPI clients learn
# the error shape, and 422 is the API's shape, not FastAPI's default validation error.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {
        "model": ErrorReply,
        "description": "No token, or an unknown, expired or revoked one.",
        "headers": {"WWW-Authenticate": WWW_AUTHENTICATE},
    },
    403: {
        "model": ErrorReply,
        "description": "A read token on a change, or a customer's token on an operator path.",
    },
    404: {"model": ErrorReply, "description": "No such object, or another tenant's."},
    409: {
        "model": ErrorReply,
        "description": "Refused: a quota, a name taken, a blocked VM, a suspended tenant.",
    },
    422: {
        "model": ErrorReply,
        "description": "A bad body, path, query or header: `fields` names each, with the reason.",
    },
    429: {
        "model": ErrorReply,
        "description": "Too many requests for this token.",
        "headers": {"Retry-After": RETRY_AFTER},
    },
    503: {
        "model": ErrorReply,
        "description": "`host_unavailable`: the zone's host cannot be reached now (an outage, "
        "not a refusal); the same request again after `Retry-After` seconds.",
        "headers": {"Retry-After": RETRY_AFTER},
    },
}


# What every change answers (routes answering with accepted() list it).
ACCEPTED_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {
        "description": 'The action that makes the change (`{"action": {...}}`).',
        "headers": {
            "Location": {"description": "/v1/actions/{id}", "schema": {"type": "string"}},
            REPLAYED_HEADER: {
                "description": "`true` when this answers a retried request (the same "
                "Idempotency-Key and request) with the action its first request made.",
                "schema": {"type": "string", "enum": ["true"]},
            },
        },
    }
}


@dataclass
class Context:
    """The service objects of one server process, built once at start-up (app.py)."""

    settings: Settings
    ledger: Any  # ledger.tenants.Ledger
    identity: Any  # identity.Identity
    actions: Any  # actions.ActionQueue
    resources: Any  # service.resources.Resources
    terms: Any  # service.terms.Terms
    operator: Any  # service.operator.Operator
    limiter: Any  # limits.RateLimiter
    checks: Any = None  # service.checks.Checks
    sessions: Any = None  # panel.sessions.Sessions
    logins: Any = None  # limits.RateLimiter, per client address


def context(request: Request) -> Context:
    return request.app.state.context


def caller(
    request: Request,
    credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
) -> Principal:
    """The token's principal, counted against its rate limit; 401 for anything else."""
    ctx = context(request)
    if credentials is None:
        raise unauthorized("this call needs a token: Authorization: Bearer <token>")
    principal = ctx.identity.authenticate(credentials.credentials)
    if principal is None:
        raise unauthorized("the token is not valid: unknown, expired or revoked")
    request.state.principal = principal
    wait = ctx.limiter.take(principal.token)
    if wait:
        raise too_many(wait)
    return principal


def reader(who: Principal = Depends(caller)) -> Principal:  # noqa: B008
    return who


def writer(who: Principal = Depends(caller)) -> Principal:  # noqa: B008
    if not who.may(WRITE):
        raise forbidden("this token may only read: a change needs a token with the write scope")
    return who


def operator_reader(who: Principal = Depends(caller)) -> Principal:  # noqa: B008
    if not who.is_operator:
        raise forbidden("only the provider's operators may do this")
    return who


def operator_writer(who: Principal = Depends(operator_reader)) -> Principal:  # noqa: B008
    return writer(who)


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not key or len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise ApiError(
            422,
            "invalid",
            f"{IDEMPOTENCY_HEADER}: 1-{MAX_IDEMPOTENCY_KEY} printable characters",
            [(f"header.{IDEMPOTENCY_HEADER}", "1-200 printable characters")],
        )
    return key


def accepted(
    ctx: Context,
    who: Principal,
    request: Request,
    kind: str,
    target: str,
    payload: dict[str, Any],
    tenant: str | None = None,
) -> JSONResponse:
    """The 202 answer of a change: the action queued for it (or, for a retried request with the
    same Idempotency-Key, the action the first request made)."""
    view, created = ctx.actions.submit(
        who,
        kind,
        target,
        payload,
        idempotency_key=idempotency_key(request),
        tenant=tenant,
        request_id=request.state.request_id,
    )
    request.state.action = view["id"]
    # An operator's change of a tenant's object is in that tenant's audit trail too.
    request.state.audit_tenant = tenant
    headers = {"Location": f"/v1/actions/{view['id']}"}
    if not created:
        headers[REPLAYED_HEADER] = "true"
    return JSONResponse({"action": view}, status_code=202, headers=headers)
