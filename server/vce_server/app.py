# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ASGI application of `vce serve`: the routers, one error shape, request ids, the audit
trail of every change, and the service objects built once at start-up."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import (
    HostUnreachable,
    VceError,
    host_unreachable,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import audit
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger, utcnow
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __doc__ as about
from .actions import ActionQueue
from .api import actions as actions_api
from .api import operator as operator_api
from .api import resources as resources_api
from .api import terms as terms_api
from .api.deps import ERROR_RESPONSES, Context
from .errors import ApiError, from_engine
from .identity import Identity
from .limits import RateLimiter
from .panel import account as panel_account
from .panel import console as panel_console
from .panel import objects as panel_objects
from .panel import operator as panel_operator
from .panel import routes as panel_routes
from .panel import terms as panel_terms
from .panel.guard import COOKIE_PATH, LoginNeeded, login_url
from .panel.render import STATIC, error_page
from .panel.sessions import Sessions
from .service.checks import Checks
from .service.operator import Operator
from .service.resources import Resources
from .service.terms import Terms
from .settings import Settings

log = logging.getLogger("vce.serve")
VERSION = "1"
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
READS = frozenset({"GET", "HEAD", "OPTIONS"})
# Calls audited when they may change something: the API's and the cabinet's.
AUDITED = ("/v1/", f"{COOKIE_PATH}/")
# Logins per client address: 10 at once, then one every 5 s (argon2 costs a core each).
LOGIN_RATE = 0.2
LOGIN_BURST = 10
STATUS_TEXT = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
}


def build_context(settings: Settings) -> Context:
    # `vce serve` on a fresh machine starts on an empty SQLite ledger (a read command would
    # refuse a missing one; a server that registers users and records runs is a creator).
    ledger = Ledger.open(settings.ledger_url, create=True)
    note = ledger.store.creation_note()
    if note:
        log.warning("%s", note)
    resources = Resources(settings.ledger_url)
    actions = ActionQueue(ledger, settings, scrub=resources.scrub)
    for kind, handler in resources.handlers().items():
        actions.register(kind, handler)
    return Context(
        settings=settings,
        ledger=ledger,
        identity=Identity(ledger),
        actions=actions,
        resources=resources,
        terms=Terms(settings.ledger_url),
        operator=Operator(settings.ledger_url),
        limiter=RateLimiter(settings.rate_per_second, settings.rate_burst),
        checks=Checks(resources),
        sessions=Sessions(ledger),
        logins=RateLimiter(LOGIN_RATE, LOGIN_BURST),
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context = build_context(settings)
        app.state.context = context
        context.actions.start()
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(context.actions.stop, 30.0)

    app = FastAPI(
        title="vce.kvm control plane",
        description=about or "",
        version=VERSION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(RequestIds)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(VceError, engine_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, internal_error)
    app.add_exception_handler(LoginNeeded, login_needed)
    for router in (actions_api, resources_api, terms_api, operator_api):
        app.include_router(router.router, responses=ERROR_RESPONSES)
    # The objects' routes before the others: /panel/vms/new/apply is theirs, not the power
    # verb "apply" of a VM named "new".
    for panel in (
        panel_objects,
        panel_routes,
        panel_account,
        panel_operator,
        panel_terms,
        panel_console,
    ):
        app.include_router(panel.router)
    app.mount(f"{COOKIE_PATH}/static", StaticFiles(directory=STATIC), name="panel-static")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse(f"{COOKIE_PATH}/", status_code=303)

    @app.get("/healthz", include_in_schema=False)
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "") or uuid.uuid4().hex


def reply(request: Request, error: ApiError) -> Response:
    """The error in the API's JSON shape; a page of the cabinet gets it as a page."""
    if request.url.path.startswith(f"{COOKIE_PATH}/"):
        return error_page(request, error)
    return JSONResponse(
        error.body(request_id(request)), status_code=error.status, headers=error.headers
    )


async def login_needed(request: Request, error: Exception) -> RedirectResponse:
    return RedirectResponse(login_url(error.back), status_code=303)  # type: ignore[attr-defined]


async def api_error(request: Request, error: Exception) -> Response:
    return reply(request, error)  # type: ignore[arg-type]


async def engine_error(request: Request, error: Exception) -> Response:
    ctx = getattr(request.app.state, "context", None)
    scrub = ctx.resources.scrub if ctx is not None else str
    return reply(request, from_engine(error, scrub))  # type: ignore[arg-type]


async def validation_error(request: Request, error: Exception) -> Response:
    """FastAPI's own checks (path, query, a body that is not JSON) in the API's shape."""
    fields = []
    for item in error.errors():  # type: ignore[attr-defined]
        location = [str(part) for part in item.get("loc", ())]
        fields.append((".".join(location), str(item.get("msg", "invalid"))))
    message = "; ".join(f"{path}: {reason}" for path, reason in fields) or "invalid request"
    return reply(request, ApiError(422, "invalid", message, fields))


async def http_error(request: Request, error: Exception) -> Response:
    status = error.status_code  # type: ignore[attr-defined]
    code = STATUS_TEXT.get(status, "error")
    return reply(request, ApiError(status, code, str(error.detail)))  # type: ignore[attr-defined]


async def internal_error(request: Request, error: Exception) -> Response:
    if host_unreachable(error):  # a libvirt call outside the engine's mapping
        return await engine_error(request, HostUnreachable(str(error)))
    log.exception("request %s failed", request_id(request), exc_info=error)
    return reply(request, ApiError(500, "internal", "the server failed; the request id says which"))


class RequestIds:
    """Pure ASGI middleware: every request gets an id (the caller's X-Request-Id when it is a
    sane one), echoed in the reply; every call that may change something is audited."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        status = [500]

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if scope["method"] not in READS and scope["path"].startswith(AUDITED):
                await anyio.to_thread.run_sync(record_call, scope, state, status[0])


def record_call(scope: dict, state: dict, status: int) -> None:
    """One audit row, whatever the outcome; a ledger that cannot take it is logged, not raised
    (the reply has gone)."""
    app = scope.get("app")
    ctx = getattr(getattr(app, "state", None), "context", None)
    if ctx is None:
        return
    principal = state.get("principal")
    client = scope.get("client") or ("", 0)
    outcome = "accepted" if status < 400 else "refused" if status < 500 else "failed"
    row = {
        "at": utcnow(),
        "request_id": state["request_id"],
        "token": principal.token if principal else "",
        "actor": principal.actor if principal else "",
        "tenant": state.get("audit_tenant") or (principal.tenant if principal else None),
        "method": scope["method"],
        "path": scope["path"][:512],
        "source": str(client[0])[:64],
        "status": status,
        "outcome": outcome,
        "action": state.get("action"),
    }
    try:
        with ctx.ledger.store.write() as connection:
            connection.execute(sa.insert(audit).values(**row))
    except VceError as error:
        log.error("audit of request %s not recorded: %s", state["request_id"], error)
