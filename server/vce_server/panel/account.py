# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The account: the password, the second factor (TOTP), the login's code step, and the reset
of a forgotten password as a request of 5.1 with its 20-minute clock.

The reset: the form at /panel/reset files a request of kind "password" for the login (the
answer is the same whether the login exists or not) and records its password_resets row. There
is no mail: support issues the link from the request queue (the operator's page, or `POST
/v1/operator/requests/{id}/password-link`; shown once), hands it to the customer, who sets a
new password at /panel/reset/{secret}; that uses the link and stops the request's clock.
"""

from __future__ import annotations

import logging
from typing import Any

from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError, VceError
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from ..api.deps import Context, context
from ..errors import ApiError, not_found, too_many
from ..identity import new_totp_secret, totp_uri
from ..principal import CUSTOMER, Principal
from .guard import (
    COOKIE_PATH,
    PENDING_COOKIE,
    csrf_checked,
    login_form_accepted,
    login_token,
    operator,
    posted,
    safe_back,
    signed_in,
    source_of,
)
from .render import page
from .routes import logged_in, see_other, set_session_cookie, with_login_cookie
from .sessions import Session

log = logging.getLogger("vce.serve")
router = APIRouter(prefix=COOKIE_PATH, include_in_schema=False)
RESET_NOTE = "password reset asked through the personal cabinet's form"


def refused_login_form(request: Request, ctx: Context, fields: dict[str, str]) -> None:
    """The checks every form before a session passes: its double-submit token, then the
    login rate limit of the address (a wrong code or a reset request costs as a password)."""
    if not login_form_accepted(request, fields):
        raise ApiError(403, "forbidden", "the form's security token is missing: reload")
    wait = ctx.logins.take(f"login:{source_of(request)}")
    if wait:
        raise too_many(wait)


# -- the login's second step -----------------------------------------------------------------


@router.get("/login/code")
def code_page(
    request: Request,
    next: str | None = None,
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    if ctx.identity.pending_login(request.cookies.get(PENDING_COOKIE)) is None:
        return see_other(f"{COOKIE_PATH}/login")
    token = login_token(request)
    response = page(request, "account_code.html.j2", login_csrf=token, back=safe_back(next),
                    error="")  # fmt: skip
    return with_login_cookie(request, response, token)


@router.post("/login/code")
def give_code(
    request: Request,
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    back = safe_back(fields.get("next"))
    refused_login_form(request, ctx, fields)
    pending = request.cookies.get(PENDING_COOKIE)
    done = ctx.identity.second_step(pending, fields.get("code", ""))
    if done is None:
        if ctx.identity.pending_login(pending) is None:
            error = "The login has expired or had too many wrong codes: log in again."
        else:
            error = "Wrong or used code: type the one your app shows now."
        return code_again(request, fields, back, error)
    cookie, _session = ctx.sessions.open(done, source_of(request))
    return logged_in(request, done, cookie, back)


def code_again(request: Request, fields: dict[str, str], back: str, error: str) -> Response:
    return page(request, "account_code.html.j2", status=401, login_csrf=fields.get("csrf", ""),
                back=back, error=error)  # fmt: skip


# -- the account page ------------------------------------------------------------------------


def account_view(
    request: Request, ctx: Context, session: Session, status: int = 200, **shown: Any
) -> Response:
    """The account page: the password form, and the second factor's state (on; or off, with
    a new secret to add to an app). `shown`: error (password), totp_error, done."""
    enabled = ctx.identity.has_second_factor(session.login)
    secret = "" if enabled else new_totp_secret()
    values = {"error": "", "totp_error": "", "done": "", **shown}
    return page(request, "account.html.j2", status=status, totp_enabled=enabled, totp_secret=secret,
                totp_uri=totp_uri(session.login, secret) if secret else "", **values)  # fmt: skip


@router.get("/account")
def account_page(
    request: Request,
    session: Session = Depends(signed_in),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    return account_view(request, ctx, session)


@router.post("/account/password")
def change_password(
    request: Request,
    session: Session = Depends(signed_in),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    fields = csrf_checked(session, fields)
    login = session.login
    if ctx.identity.verify_password(login, fields.get("current", "")) is None:
        return account_view(request, ctx, session, 401, error="The current password is wrong.")
    if fields.get("new", "") != fields.get("again", ""):
        return account_view(request, ctx, session, 422,
                            error="The new password and its repetition differ.")  # fmt: skip
    try:
        ctx.identity.set_password(login, fields.get("new", ""))
    except SpecError as error:
        return account_view(request, ctx, session, 422, error=f"New password: {error.reason}.")
    done = "The password is changed. Your other sessions have ended."
    return renewed(request, ctx, session, done)


@router.post("/account/totp")
def enable_totp(
    request: Request,
    session: Session = Depends(signed_in),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    return change_totp(request, ctx, session, fields, turn_on=True)


@router.post("/account/totp/off")
def disable_totp(
    request: Request,
    session: Session = Depends(signed_in),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    return change_totp(request, ctx, session, fields, turn_on=False)


def change_totp(
    request: Request, ctx: Context, session: Session, fields: dict[str, str], turn_on: bool
) -> Response:
    """Turn the second factor on (the secret shown, confirmed by its code: every session ends,
    this browser gets a new one) or off (a current code)."""
    fields = csrf_checked(session, fields)
    code = fields.get("code", "")
    try:
        if turn_on:
            ctx.identity.enable_totp(session.login, fields.get("secret", ""), code)
        else:
            ctx.identity.disable_totp(session.login, code)
    except SpecError as error:
        return account_view(request, ctx, session, 422,
                            totp_error=f"{error.field.capitalize()}: {error.reason}.")  # fmt: skip
    if not turn_on:
        return account_view(request, ctx, session, done="The second factor is off.")
    done = "The second factor is on: logins ask for its code. Your other sessions have ended."
    return renewed(request, ctx, session, done)


def renewed(request: Request, ctx: Context, session: Session, done: str) -> Response:
    """The account page after a change that ended every session of the user: this browser
    gets a new one (its page is drawn with the new session's CSRF token)."""
    cookie, fresh = ctx.sessions.open(session.principal, source_of(request))
    request.state.session = fresh
    response = account_view(request, ctx, fresh, done=done)
    set_session_cookie(request, response, cookie)
    return response


# -- a forgotten password ----------------------------------------------------------------------


@router.get("/reset")
def reset_page(request: Request) -> Response:
    token = login_token(request)
    response = page(request, "account_reset.html.j2", login_csrf=token, sent=False)
    return with_login_cookie(request, response, token)


@router.post("/reset")
def ask_reset(
    request: Request,
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    refused_login_form(request, ctx, fields)
    user = ctx.identity.resettable(fields.get("login"))
    if user is not None:
        # The request is the user's own, filed for them by the form (no session: no rights).
        who = Principal(token=f"reset:{user.login}", actor=user.login, role=CUSTOMER,
                        tenant=user.tenant, scopes=frozenset())  # fmt: skip
        try:
            filed = ctx.terms.file_request(who, {"kind": "password", "note": RESET_NOTE})
            ctx.identity.record_reset(user.login, filed["id"])
        except (VceError, ApiError) as error:  # e.g. a closed tenant: told to no one here
            log.warning("password reset of %s not filed: %s", user.login, error)
    # The same answer for any login, so that the form tells no one which logins exist.
    return page(request, "account_reset.html.j2", login_csrf=fields.get("csrf", ""), sent=True)


@router.get("/reset/{secret}")
def reset_link_page(
    secret: str,
    request: Request,
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    if not ctx.identity.reset_waiting(secret):
        raise not_found("password reset link (unknown, used or expired)")
    token = login_token(request)
    response = page(request, "account_reset_link.html.j2", login_csrf=token, secret=secret,
                    error="", done=False)  # fmt: skip
    return with_login_cookie(request, response, token)


@router.post("/reset/password")
def reset_password(
    request: Request,
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    """The link's form posts here, the secret in the form: a path holding it would be written
    to the audit trail, and a refused form leaves the link usable."""
    refused_login_form(request, ctx, fields)
    secret = fields.get("secret", "")
    if not ctx.identity.reset_waiting(secret):
        raise not_found("password reset link (unknown, used or expired)")
    again = {"login_csrf": fields.get("csrf", ""), "secret": secret, "done": False}
    if fields.get("new", "") != fields.get("again", ""):
        return page(request, "account_reset_link.html.j2", status=422,
                    error="The new password and its repetition differ.", **again)  # fmt: skip
    try:
        done = ctx.identity.use_reset(secret, fields.get("new", ""))
    except SpecError as error:
        return page(request, "account_reset_link.html.j2", status=422,
                    error=f"{error.field.capitalize()}: {error.reason}.", **again)  # fmt: skip
    ctx.terms.reset_done(done.tenant, done.request, done.at)
    return page(request, "account_reset_link.html.j2", login_csrf="", secret="", error="",
                done=True)  # fmt: skip


@router.post("/operator/requests/{request_id:path}/password-link")
def issue_reset_link(
    request_id: str,
    request: Request,
    session: Session = Depends(operator),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    """Support's side: the link of a reset waiting on the request, shown on this page only
    (issuing again voids it)."""
    csrf_checked(session, fields)
    reset = ctx.operator.password_link(ctx.identity, request_id)
    url = str(request.base_url).rstrip("/") + reset["link"]
    return page(request, "account_reset_issued.html.j2", reset=reset, url=url)
