# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who may see a page and send a form: the session cookie, its CSRF token, its rate limit.

As api/deps.py does for tokens, this is the one place pages are authorized: a route asks for
`customer` (or `login_form` before a session exists) and gets the session whose Principal
scopes every service call.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from urllib.parse import quote

from fastapi import Depends, Request

from ..api.deps import Context, context
from ..errors import ApiError, not_found, too_many
from .sessions import Session

SESSION_COOKIE = "vce_session"
LOGIN_COOKIE = "vce_login_csrf"
# A login whose password was right, waiting for its second factor's code (identity.py).
PENDING_COOKIE = "vce_login_pending"
COOKIE_PATH = "/panel"
# A form of the cabinet is a few fields; a bigger body is refused before it is parsed.
MAX_FORM_BYTES = 64 * 1024
MAX_FIELDS = 50


class LoginNeeded(Exception):
    """No live session: the browser is sent to the login page, then back."""

    def __init__(self, back: str) -> None:
        super().__init__(back)
        self.back = back


def login_url(back: str) -> str:
    return f"{COOKIE_PATH}/login?next={quote(back, safe='/')}"


def safe_back(value: str | None) -> str:
    """Where to go after logging in: a page of the cabinet, never another site."""
    local = value and value.startswith(f"{COOKIE_PATH}/")
    if local and "\\" not in value and "//" not in value:
        return value
    return f"{COOKIE_PATH}/"


def source_of(request: Request) -> str:
    return request.client.host if request.client else ""


def session_of(request: Request, ctx: Context) -> Session | None:
    session = ctx.sessions.find(request.cookies.get(SESSION_COOKIE))
    request.state.session = session
    if session is not None:
        # The audit trail and the action queue read who acts from here, as for a token.
        request.state.principal = session.principal
    return session


def signed_in(request: Request, ctx: Context = Depends(context)) -> Session:  # noqa: B008
    """The live session of anyone logged in, counted against its rate limit."""
    session = session_of(request, ctx)
    if session is None:
        raise LoginNeeded(request.url.path)
    wait = ctx.limiter.take(session.principal.token)
    if wait:
        raise too_many(wait)
    return session


def customer(session: Session = Depends(signed_in)) -> Session:  # noqa: B008
    """A customer's session; an operator's gets 404 (these pages show one tenant's own)."""
    if session.principal.tenant is None:
        raise not_found("page")
    return session


def operator(session: Session = Depends(signed_in)) -> Session:  # noqa: B008
    """An operator's session; a customer's gets 404, as the pages do not exist for it."""
    if not session.principal.is_operator:
        raise not_found("page")
    return session


async def posted(request: Request) -> dict[str, str]:
    """The form's fields, one value each (the last when repeated; files are refused), read
    before the route runs (a dependency): the route is then a plain function, which FastAPI
    runs in a worker thread with its ledger, libvirt and argon2 calls. An async route would
    make them on the event loop, where every other page, API call and open console waits."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_FORM_BYTES):
        raise ApiError(413, "too_large", f"a form is at most {MAX_FORM_BYTES} bytes")
    form = await request.form(max_files=0, max_fields=MAX_FIELDS)
    fields = {}
    for key, value in form.multi_items():
        if not isinstance(value, str):
            raise ApiError(422, "invalid", f"{key}: a file is not accepted here", [(key, "a file")])
        fields[key] = value
    return fields


def csrf_checked(session: Session, fields: dict[str, str]) -> dict[str, str]:
    """The form of a logged-in page without its CSRF token, refused (403, nothing done) when
    the token is not the session's."""
    fields = dict(fields)
    if not session.accepts(fields.pop("csrf", None)):
        raise ApiError(403, "forbidden", "the form's security token is missing or stale: reload")
    return fields


def login_token(request: Request) -> str:
    """The login form's CSRF token: the one the browser already holds, else a new one."""
    held = request.cookies.get(LOGIN_COOKIE, "")
    return held if len(held) == 43 else secrets.token_urlsafe(32)


def login_form_accepted(request: Request, fields: Mapping[str, str]) -> bool:
    """Double submit: the form's hidden token equals the cookie the login page set (another
    site can make the browser post, not read or set our cookie)."""
    held = request.cookies.get(LOGIN_COOKIE, "")
    given = fields.get("csrf", "")
    return len(held) == 43 and secrets.compare_digest(held.encode(), given.encode())
