# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The customer's pages: log in (with the second factor's code when the user has one, see
account.py) and out, the environment and its VMs' power, an action's progress. Each page
calls the service layer the API calls, with the session's Principal, so a page can do nothing
the API would refuse."""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response

from ..api.deps import Context, context
from ..errors import ApiError, not_found, too_many
from ..identity import PENDING_LIFE
from ..principal import Principal
from ..service.resources import VM_ACTIONS
from . import views
from .guard import (
    COOKIE_PATH,
    LOGIN_COOKIE,
    PENDING_COOKIE,
    SESSION_COOKIE,
    csrf_checked,
    customer,
    login_form_accepted,
    login_token,
    posted,
    safe_back,
    session_of,
    signed_in,
    source_of,
)
from .render import page
from .sessions import LIFETIME, Session

router = APIRouter(prefix=COOKIE_PATH, include_in_schema=False)
SEE_OTHER = 303
RECENT_ACTIONS = 10


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=SEE_OTHER)


def secure(request: Request) -> bool:
    return request.url.scheme == "https"


def form_key() -> str:
    """A form's idempotency key, drawn when the page is drawn: sent twice (a double click, a
    reload), the form makes one action."""
    return secrets.token_hex(16)


# -- log in, log out -----------------------------------------------------------------------


@router.get("/login")
def login_page(request: Request, next: str | None = None) -> Response:
    token = login_token(request)
    response = page(request, "login.html.j2", login_csrf=token, back=safe_back(next), error="")
    return with_login_cookie(request, response, token)


def with_login_cookie(request: Request, response: Response, token: str) -> Response:
    """The double-submit cookie of the forms sent before a session exists (login, its code,
    the password reset)."""
    response.set_cookie(
        LOGIN_COOKIE, token, httponly=True, samesite="strict", path=COOKIE_PATH,
        secure=secure(request),
    )  # fmt: skip
    return response


@router.post("/login")
def log_in(
    request: Request,
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    back = safe_back(fields.get("next"))
    if not login_form_accepted(request, fields):
        raise ApiError(403, "forbidden", "the login form's security token is missing: reload")
    # Password guessing is slowed per address before argon2 spends a core on it.
    wait = ctx.logins.take(f"login:{source_of(request)}")
    if wait:
        raise too_many(wait)
    principal = ctx.identity.verify_password(fields.get("login", ""), fields.get("password", ""))
    if principal is None:
        return page(
            request, "login.html.j2", status=401, login_csrf=fields.get("csrf", ""), back=back,
            error="Wrong login or password.",
        )  # fmt: skip
    if ctx.identity.has_second_factor(principal.actor):
        return ask_code(request, ctx, principal, back)
    cookie, _session = ctx.sessions.open(principal, source_of(request))
    return logged_in(request, principal, cookie, back)


def ask_code(request: Request, ctx: Context, principal: Principal, back: str) -> Response:
    """The password was right and the user has a second factor: the code form, with the
    pending login kept by the server (the browser holds its key, which opens nothing)."""
    pending = ctx.identity.begin_second_step(principal)
    response = see_other(f"{COOKIE_PATH}/login/code?next={quote(back, safe='/')}")
    response.set_cookie(
        PENDING_COOKIE, pending, max_age=int(PENDING_LIFE.total_seconds()), httponly=True,
        samesite="strict", path=COOKIE_PATH, secure=secure(request),
    )  # fmt: skip
    return response


def logged_in(request: Request, principal: Principal, cookie: str, back: str) -> Response:
    """The answer that completes a login: the session's cookie, and on to the page asked for
    (an operator's home is the operator's pages)."""
    request.state.principal = principal
    if principal.is_operator and back == f"{COOKIE_PATH}/":
        back = f"{COOKIE_PATH}/operator/"
    response = see_other(back)
    set_session_cookie(request, response, cookie)
    response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
    response.delete_cookie(PENDING_COOKIE, path=COOKIE_PATH)
    return response


def set_session_cookie(request: Request, response: Response, cookie: str) -> None:
    response.set_cookie(
        SESSION_COOKIE, cookie, max_age=int(LIFETIME.total_seconds()), httponly=True,
        samesite="lax", path=COOKIE_PATH, secure=secure(request),
    )  # fmt: skip


@router.post("/logout")
def log_out(
    request: Request,
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    session = session_of(request, ctx)
    if session is not None:
        csrf_checked(session, fields)
        ctx.sessions.close(session)
    response = see_other(f"{COOKIE_PATH}/login")
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    return response


# -- the environment -------------------------------------------------------------------------


@router.get("/")
def dashboard(
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    who = session.principal
    tenant = who.tenant
    return page(
        request,
        "dashboard.html.j2",
        vms=views.vm_rows(
            ctx.resources.list(tenant, "vms"), ctx.resources.list(tenant, "public_ips")
        ),
        quotas=views.quota_bars(ctx.terms.quotas(who)),
        actions=[views.action_row(row) for row in ctx.actions.list(tenant, limit=RECENT_ACTIONS)],
        key=form_key(),
    )


@router.post("/vms/{name}/{verb}")
def vm_power(
    name: str,
    verb: str,
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    fields = csrf_checked(session, fields)
    if verb not in VM_ACTIONS:
        raise not_found(f"page {request.url.path}")
    payload = ctx.resources.validate_vm_action(session.principal.tenant, name, verb)
    action = submit(request, ctx, session, "vm_action", f"vms/{name}", payload, fields)
    return see_other(f"{COOKIE_PATH}/actions/{action}")


def submit(
    request: Request,
    ctx: Context,
    session: Session,
    kind: str,
    target: str,
    payload: dict[str, Any],
    fields: dict[str, str],
    tenant: str | None = None,
) -> str:
    """Queue the change as the API's PUT/POST would, keyed by the form's key: the action id.
    `tenant`: the tenant an operator acts on (a customer acts on its own)."""
    key = fields.get("key") or None
    view, _created = ctx.actions.submit(
        session.principal, kind, target, payload,
        idempotency_key=f"panel-{key}" if key else None, tenant=tenant,
        request_id=request.state.request_id,
    )  # fmt: skip
    request.state.action = view["id"]
    # As the API does: an operator's change of a tenant's object is in that tenant's audit too.
    request.state.audit_tenant = tenant
    return view["id"]


@router.get("/actions/{action_id}")
def action_page(
    action_id: str,
    request: Request,
    session: Session = Depends(signed_in),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    # A customer's session sees its tenant's actions only; an operator's (tenant None), any.
    found = ctx.actions.get(action_id, session.principal.tenant)
    if found is None:
        raise not_found(f"action {action_id}")
    return page(request, "action.html.j2", action=views.action_detail(found))
