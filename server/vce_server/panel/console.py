# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The VM's serial console in the browser (terms 3.8).

`GET /panel/vms/{name}/console` draws the page; its button posts the form (CSRF-checked) to
`.../console/ticket`, which answers a single-use ticket valid 30 s; the page's script
(static/console.js, xterm.js) then opens the websocket `/panel/console/ws?ticket=...`. The
socket is admitted only from this origin, with a live session of the ticket's tenant and a
ticket redeemed now; anything else is closed with the policy code 1008 and opens nothing.
Then keystrokes go to the VM's console stream and its output comes back as binary frames;
notices (taken over, ended) are text frames. Opening, taking over and closing are audit rows
(method "WS"), each session's rows sharing one request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Coroutine
from typing import Any

import anyio
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import VceError
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import audit
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import utcnow
from fastapi import APIRouter, Depends, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.websockets import WebSocketDisconnect, WebSocketState

from ..api.deps import Context, context
from ..errors import conflict
from ..service.console import TICKET_LIFETIME, Consoles, Ticket, Tickets, Viewer
from .guard import COOKIE_PATH, SESSION_COOKIE, csrf_checked, customer, posted
from .render import HEADERS, page
from .sessions import Session

router = APIRouter(prefix=COOKIE_PATH, include_in_schema=False)
WS_PATH = f"{COOKIE_PATH}/console/ws"
# Websocket close codes: 1008 a refused ticket, origin or session (or the session ended);
# 4001 (ours) another viewer took the console over; 1000 the console ended; 1011 it could not
# be opened; 1001 the browser went away.
POLICY = 1008
TAKEN_OVER = 4001
ENDED = 1000
FAILED = 1011
TOO_BIG = 1009
GONE = 1001
# How often an open console checks that its session still lives.
SESSION_CHECK_S = 30.0
# A keystroke or a paste: one message is at most this much.
MAX_INPUT = 4096
# Output waiting for a slow browser: beyond this many chunks, newer output is dropped rather
# than held (a serial console at 115200 baud fills it only when the browser stalls).
MAX_PENDING = 1024
HOST_HEADER = re.compile(r"[A-Za-z0-9.\-\[\]:]{1,262}")
# xterm.js draws its rows' sizes and colours with <style> elements it creates: this page's
# styles may be inline; scripts, frames and everything else stay this origin's only.
CONSOLE_STYLES = "style-src 'self' 'unsafe-inline'"


# -- the page and its ticket -----------------------------------------------------------------


@router.get("/vms/{name}/console")
def console_page(
    name: str,
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    vm = ctx.resources.read(session.principal.tenant, "vms", name)
    response = page(request, "console_page.html.j2", vm=vm, running=vm.get("state") == "running")
    response.headers["Content-Security-Policy"] = console_policy(request.headers.get("host", ""))
    return response


def console_policy(host: str) -> str:
    """The pages' policy, with inline styles for xterm.js and the websocket to this host named
    (older browsers do not count ws: as 'self')."""
    sockets = f" ws://{host} wss://{host}" if HOST_HEADER.fullmatch(host) else ""
    return f"{HEADERS['Content-Security-Policy']}; {CONSOLE_STYLES}; connect-src 'self'{sockets}"


@router.post("/vms/{name}/console/ticket")
async def console_ticket(
    name: str,
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    csrf_checked(session, fields)
    tenant = session.principal.tenant
    vm = await anyio.to_thread.run_sync(ctx.resources.read, tenant, "vms", name)
    if vm.get("state") != "running":
        raise conflict(f"vm {name} is not running: start it first")
    ticket = Ticket(tenant, name, vm["zone"], session.login)
    secret = await anyio.to_thread.run_sync(Tickets(ctx.ledger).issue, ticket)
    return JSONResponse(
        {"url": f"{WS_PATH}?ticket={secret}", "expires_in": TICKET_LIFETIME.seconds},
        headers={"Cache-Control": "no-store"},
    )


# -- the socket ------------------------------------------------------------------------------


@router.websocket("/console/ws")
async def console_socket(websocket: WebSocket) -> None:
    ctx: Context = websocket.app.state.context
    call = Call(websocket, ctx)
    await websocket.accept()
    ticket = await anyio.to_thread.run_sync(call.admit)
    if ticket is None:
        await call.close(POLICY, "refused: open the console again from its page")
        return
    output: asyncio.Queue[bytes | None] = asyncio.Queue()
    loop = asyncio.get_running_loop()

    def deliver(data: bytes | None) -> None:
        # In libvirt's event loop thread; a server shutting down has closed its loop.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(enqueue, output, data)

    try:
        viewer, took_over, key = await anyio.to_thread.run_sync(
            Consoles(ctx.resources.fleet).open, ticket, deliver
        )
    except VceError as error:
        await call.record(f"/panel/vms/{ticket.vm}/console/open", FAILED, "failed")
        await notify(websocket, sentence(str(error)))
        await call.close(FAILED, "not opened")
        return
    await call.record(f"/panel/vms/{ticket.vm}/console/open", 101, "accepted")
    if took_over:
        await call.record(f"/panel/vms/{ticket.vm}/console/takeover", 101, "accepted")
    try:
        code = await bridge(
            to_browser(websocket, viewer, output),
            to_console(websocket, viewer),
            session_watch(ctx, websocket.cookies.get(SESSION_COOKIE)),
        )
    finally:
        await anyio.to_thread.run_sync(Consoles.close, viewer, key)
    if code == POLICY:
        await notify(websocket, "The session has ended: log in again to reopen the console.")
    await call.record(f"/panel/vms/{ticket.vm}/console/close", code, "accepted")
    await call.close(code, "console closed")


def sentence(text: str) -> str:
    return f"{text[:1].upper()}{text[1:]}."


def enqueue(output: asyncio.Queue[bytes | None], data: bytes | None) -> None:
    if data is None or output.qsize() < MAX_PENDING:
        output.put_nowait(data)


async def bridge(*directions: Coroutine[Any, Any, int]) -> int:
    """Run until the first of them ends (the stream, the browser, the session): its close code
    for the socket. A browser gone in the middle of a send ends it as "going away"."""
    tasks = [asyncio.ensure_future(direction) for direction in directions]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    try:
        return next(iter(done)).result()
    except (WebSocketDisconnect, OSError, RuntimeError):
        return GONE


async def session_watch(ctx: Context, cookie: str | None) -> int:
    """Every SESSION_CHECK_S, whether the session still lives (a console in use keeps it
    alive; logging out, a password change or its 12 hours end it, and the console with it)."""
    while True:
        await asyncio.sleep(SESSION_CHECK_S)
        if await anyio.to_thread.run_sync(ctx.sessions.find, cookie) is None:
            return POLICY


async def to_browser(websocket: WebSocket, viewer: Viewer, output: asyncio.Queue) -> int:
    """The console's output to the browser until the stream ends."""
    while True:
        data = await output.get()
        if data is None:
            break
        await websocket.send_bytes(data)
    if viewer.taken_over:
        await notify(websocket, "The console was taken over by another viewer.")
        return TAKEN_OVER
    await notify(
        websocket, "The console closed: the VM stopped, or its console was opened elsewhere."
    )
    return ENDED


async def to_console(websocket: WebSocket, viewer: Viewer) -> int:
    """The browser's keystrokes to the console until the browser leaves."""
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return int(message.get("code") or ENDED)
        data = message.get("bytes") or (message.get("text") or "").encode()
        if len(data) > MAX_INPUT:
            await notify(websocket, f"At most {MAX_INPUT} bytes at once.")
            return TOO_BIG
        if data:
            await anyio.to_thread.run_sync(viewer.stream.send, data)


async def notify(websocket: WebSocket, text: str) -> None:
    with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
        await websocket.send_text(text)


class Call:
    """One websocket's admission and its audit rows."""

    def __init__(self, websocket: WebSocket, ctx: Context) -> None:
        self.websocket = websocket
        self.ctx = ctx
        self.request_id = uuid.uuid4().hex
        self.session: Session | None = None

    def admit(self) -> Ticket | None:
        """The ticket, redeemed now, its session kept; None (recorded as refused) for another
        origin, no live customer session, or a ticket that is not good now."""
        ticket = None
        if same_origin(self.websocket):
            self.session = self.ctx.sessions.find(self.websocket.cookies.get(SESSION_COOKIE))
        tenant = self.session.principal.tenant if self.session is not None else None
        if tenant is not None:
            given = self.websocket.query_params.get("ticket")
            ticket = Tickets(self.ctx.ledger).redeem(given, tenant)
        if ticket is None:
            self.write(WS_PATH, POLICY, "refused")
        return ticket

    async def record(self, path: str, status: int, outcome: str) -> None:
        await anyio.to_thread.run_sync(self.write, path, status, outcome)

    def write(self, path: str, status: int, outcome: str) -> None:
        """One audit row of this socket, in the shape app.record_call writes for a request."""
        principal = self.session.principal if self.session is not None else None
        client = self.websocket.client
        row = {
            "at": utcnow(), "request_id": self.request_id,
            "token": principal.token if principal else "",
            "actor": principal.actor if principal else "",
            "tenant": principal.tenant if principal else None,
            "method": "WS", "path": path[:512], "source": (client.host if client else "")[:64],
            "status": status, "outcome": outcome, "action": None,
        }  # fmt: skip
        with self.ctx.ledger.store.write() as connection:
            connection.execute(sa.insert(audit).values(**row))

    async def close(self, code: int, reason: str) -> None:
        states = (self.websocket.application_state, self.websocket.client_state)
        if WebSocketState.DISCONNECTED not in states:
            with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
                await self.websocket.close(code, reason)


def same_origin(websocket: WebSocket) -> bool:
    """The page that opens the socket is this server's: a page of another site can make the
    browser open one with our cookie, but its Origin names that site."""
    origin = websocket.headers.get("origin", "")
    host = websocket.headers.get("host", "")
    scheme = "https" if websocket.url.scheme == "wss" else "http"
    return bool(host) and origin == f"{scheme}://{host}"
