"""The cabinet's security, over every route the app has when the test runs (so pages added
later are covered, or fail the matrix until it knows how to fill their paths):

- tenant B's session reaches none of tenant A's objects: every route and method, its path
  filled with A's names and ids, answers 404, 403 or a redirect to the login page, never a
  page with A's names or addresses (the console's websocket, opened with A's ticket, is closed
  with the policy code), and the ledger (but the audit trail and B's own rows) and libvirt are
  as they were;
- every POST refuses a form without its CSRF token, or with another session's, changing
  nothing;
- a session ends after 30 idle minutes, after 12 hours, when its user is disabled, at logout,
  when an operator sets the password; its cookie is HttpOnly, SameSite=Lax, Path=/panel;
- hostile text in the login and account forms gets no 500 and comes back escaped; logins are
  rate-limited per address.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx
import libvirt
import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import hosts
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from fastapi.routing import APIRoute, APIWebSocketRoute, iter_route_contexts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Mount
from starlette.websockets import WebSocketDisconnect
from vce_server.app import LOGIN_BURST, LOGIN_RATE
from vce_server.limits import RateLimiter
from vce_server.panel.console import POLICY
from vce_server.service.console import Ticket, Tickets

from tests.support.cabinet import PASSWORD, Cabinet, Visitor, hidden_fields
from tests.support.server import changes, ledger_digest, libvirt_digest

PARAMETER = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")
TENANT_A = "tenaq7"
TENANT_B = "tenbq7"
LOGIN_A = f"{TENANT_A}-user"
LOGIN_B = f"{TENANT_B}-user"
VM_A = "avmq7"
NETWORK_A = "alanq7"
DISK_A = "adiskq7"
ADDRESS_A = "10.9.77.10"
NOTE_A = "tenant A's own note q7"
# An object kind in a path, as the segment before its {name}: A's object of that kind.
# Path parameters that name nothing of a tenant's: B may get its own page for them.
NOT_OBJECTS = frozenset({"month", "plural", "kind"})
# What a refusal looks like: not found (or another tenant's), forbidden, or the login page.
REFUSED = frozenset({403, 404})
VERBS = ("start", "stop", "reboot")
# Websockets the matrix knows how to try: B opens the socket with A's console ticket.
SOCKETS = frozenset({"/panel/console/ws"})
# A's object of each kind, by the path segment before its {name} (A has the first three; the
# others are names of A's style, which B must not reach either).
OBJECT_NAMES = {
    "vms": [VM_A], "networks": [NETWORK_A], "disks": [DISK_A], "public_ips": ["aipq7"],
    "zone_links": ["alinkq7"], "backup_schedules": ["anightlyq7"],
}  # fmt: skip
ACTION_END = {"succeeded", "failed", "interrupted"}


@dataclass
class World:
    """Tenant A's objects, B's browser, and the strings no page may show B."""

    cabinet: Cabinet
    a: Visitor
    b: Visitor
    action_id: str
    prefix: str
    request_id: str
    incident_id: str
    secrets: list[str] = field(default_factory=list)
    ticket: str = ""  # A's console ticket for its VM, unused

    def values(self, name: str, before: str) -> list[str] | None:
        """A's values for a path parameter, by its name and the path segment before it; None
        when the matrix does not know it (the test fails naming the route)."""
        by_segment = {
            **OBJECT_NAMES, "actions": [self.action_id], "tokens": [self.prefix],
            "requests": [self.request_id], "incidents": [self.incident_id],
            "backups": ["1", self.action_id], "tenants": [TENANT_A],
        }  # fmt: skip
        by_name = {
            "vm": [VM_A], "verb": list(VERBS), "action_id": [self.action_id],
            "prefix": [self.prefix], "request_id": [self.request_id],
            "incident_id": [self.incident_id], "number": [self.incident_id],
            "backup_id": ["1", self.action_id], "step": ["confirm", "restore"],
            "month": [dt.datetime.now(dt.UTC).strftime("%Y-%m")], "tenant": [TENANT_A],
            "login": [LOGIN_A], "secret": [secrets.token_urlsafe(32)],
            "kind": list(OBJECT_NAMES), "plural": list(OBJECT_NAMES),
        }  # fmt: skip
        if name in by_name:
            return by_name[name]
        if name in ("name", "id") and before in by_segment:
            return by_segment[before]
        return None


def declare(cabinet: Cabinet, tenant: str) -> str:
    """A's network, disk and running VM, through the service layer as the API declares
    them."""
    ctx = cabinet.context
    who = ctx.identity.verify_password(LOGIN_A, PASSWORD)
    vm = {"vcpus": 1, "memory_mib": 256, "boot_disk": {"image": "base", "size_gib": 1},
          "nics": [{"network": NETWORK_A, "ip": ADDRESS_A}]}  # fmt: skip
    action_id = ""
    for plural, name, body in (
        ("networks", NETWORK_A, {"cidr": "10.9.77.0/24"}),
        ("vms", VM_A, vm),
    ):
        payload = ctx.resources.validate(tenant, plural, name, body)
        view, _created = ctx.actions.submit(who, "put", f"{plural}/{name}", payload)
        action_id = view["id"]
        assert wait_ended(cabinet, action_id, tenant) == "succeeded"
    return action_id


def wait_ended(cabinet: Cabinet, action_id: str, tenant: str, seconds: float = 30) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        status = cabinet.context.actions.get(action_id, tenant)["status"]
        if status in ACTION_END:
            return status
        time.sleep(0.05)
    raise AssertionError(f"action {action_id} did not end in {seconds} s")


@pytest.fixture
def world(cabinet: Cabinet) -> World:
    a = cabinet.customer(TENANT_A, LOGIN_A)
    b = cabinet.customer(TENANT_B, LOGIN_B)
    ctx = cabinet.context
    who = ctx.identity.verify_password(LOGIN_A, PASSWORD)
    action_id = declare(cabinet, TENANT_A)
    text, token = ctx.identity.create_token("customer", TENANT_A, "read", "a-token-q7", LOGIN_A)
    request_id = ctx.terms.file_request(who, {"kind": "minor_fault", "note": NOTE_A})["id"]
    incident = ctx.terms.report_incident(who, {"vm": VM_A, "note": NOTE_A})
    built = World(cabinet, a, b, action_id, token.prefix, request_id, str(incident["id"]))
    zone = ctx.resources.read(TENANT_A, "vms", VM_A)["zone"]
    built.ticket = Tickets(ctx.ledger).issue(Ticket(TENANT_A, VM_A, zone, LOGIN_A))
    built.secrets = [TENANT_A, LOGIN_A, VM_A, NETWORK_A, DISK_A, ADDRESS_A, NOTE_A, action_id,
                     token.prefix, text, request_id, "a-token-q7"]  # fmt: skip
    return built


@dataclass(frozen=True)
class Route:
    method: str
    path: str

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"


def panel_routes(cabinet: Cabinet) -> tuple[list[Route], list[str]]:
    """Every method of every route under /panel (the static files are everyone's), and the
    routes that are neither an HTTP route nor static files (a websocket: the matrix must be
    taught how to try it)."""
    found, unknown = [], []
    # FastAPI keeps included routers as they were included: its own walk gives each route
    # with its full path.
    for context in iter_route_contexts(cabinet.app.routes):
        path, route = context.path or "", context.original_route
        if not path.startswith("/panel") or isinstance(route, Mount):
            continue
        if isinstance(route, APIWebSocketRoute) and path in SOCKETS:
            found.append(Route("WS", path))
            continue
        if not isinstance(route, APIRoute):
            unknown.append(f"{type(route).__name__} {path}: the matrix does not know this route")
            continue
        found += [Route(method, path) for method in sorted(context.methods - {"HEAD"})]
    # Logging out ends B's session: last.
    found.sort(key=lambda route: route.path == "/panel/logout")
    return found, unknown


def concrete(route: Route, world: World) -> list[str] | None:
    """The route's paths with A's values, one per value of each parameter; a {name} after a
    {kind} takes A's object of each kind."""
    paths = [route.path]
    for name in PARAMETER.findall(route.path):
        filled = []
        for path in paths:
            before = path.split("{" + name)[0].rstrip("/").rsplit("/", 1)[-1]
            values = world.values(name, before)
            if values is None:
                return None
            pattern = r"\{" + name + r"(?::[^}]*)?\}"
            filled += [re.sub(pattern, value, path, count=1) for value in values]
        paths = filled
    return paths


def names_objects(route: Route) -> bool:
    return bool(set(PARAMETER.findall(route.path)) - NOT_OBJECTS)


def send(visitor: Visitor, route: Route, path: str, world: World) -> tuple[httpx.Response, str]:
    """B's request, and all B sent in it (B may see again what it sent itself)."""
    if route.method == "GET":
        return visitor.get(path), path
    if route.method == "WS":
        # Refused with the policy code: as a 403 for the judge; anything else is a failure.
        code = socket_close_code(visitor, f"{path}?ticket={world.ticket}")
        return httpx.Response(403 if code == POLICY else 500, text=f"closed {code}"), path
    # B's own valid token and a fresh key, and A's objects wherever a form may name one.
    form = {"csrf": visitor.form_token(), "key": secrets.token_hex(16), "vm": VM_A,
            "network": NETWORK_A, "disk": DISK_A, "prefix": world.prefix, "request": world.request_id,
            "action": world.action_id, "backup": "1"}  # fmt: skip
    return visitor.client.request(route.method, path, data=form), " ".join([path, *form.values()])


def socket_close_code(visitor: Visitor, path: str) -> int:
    """How the server closed the socket B opened from the cabinet's own origin."""
    with visitor.client.websocket_connect(path, headers={"origin": "http://testserver"}) as socket:
        try:
            while True:
                socket.receive_text()
        except WebSocketDisconnect as closed:
            return closed.code


def refused(reply: httpx.Response) -> bool:
    if reply.status_code == 303:
        return reply.headers["location"].startswith("/panel/login")
    return reply.status_code in REFUSED


def judge(route: Route, sent: str, reply: httpx.Response, world: World) -> str | None:
    if reply.status_code >= 500:
        return f"status {reply.status_code}"
    shown = [s for s in world.secrets if s in reply.text and s not in sent]
    if shown:
        return f"shows A's {shown}"
    if route.path.startswith("/panel/operator") and reply.status_code != 404:
        return f"an operator's page answered {reply.status_code} to a customer"
    if names_objects(route) and not refused(reply):
        return f"answered {reply.status_code} to another tenant's object"
    return None


def state(cabinet: Cabinet, connections: dict) -> dict:
    """The ledger's rows (but the audit trail and B's own) and libvirt's objects (but B's);
    the host has no files of its own here (test driver)."""
    with Ledger.open(cabinet.ledger_url).store.read() as connection:
        uris = [row.uri for row in connection.execute(sa.select(hosts.c.uri))]
    objects = {}
    for uri in uris:
        conn = connections.get(uri) or libvirt.open(uri)
        objects.update({k: v for k, v in libvirt_digest(conn).items() if TENANT_B not in k})
    ledger = ledger_digest(cabinet.ledger_url, own_tenant=TENANT_B)
    return {"ledger": ledger, "libvirt": objects, "files": {}}


def settle(cabinet: Cabinet, tenant: str) -> None:
    for action in cabinet.context.actions.list(tenant, limit=200):
        wait_ended(cabinet, action["id"], tenant)


# -- the cross-tenant matrix -----------------------------------------------------------------


def test_tenant_b_reaches_nothing_of_tenant_a_on_any_route(world: World, connections) -> None:
    cabinet = world.cabinet
    routes, unknown = panel_routes(cabinet)
    before = state(cabinet, connections)
    wrong, seen = [], {}
    for route in routes:
        paths = concrete(route, world)
        if paths is None:
            unknown.append(f"{route.label}: no value for its path parameters")
            continue
        for path in paths:
            reply, sent = send(world.b, route, path, world)
            seen[f"{route.method} {path}"] = reply.status_code
            problem = judge(route, sent, reply, world)
            if problem:
                wrong.append(f"{route.method} {path}: {problem}")
    settle(cabinet, TENANT_B)
    print(f"panel routes: {len(routes)}, calls with B's session: {len(seen)}")
    moved = changes(before, state(cabinet, connections))
    # A route the matrix cannot fill fails it: teach World.values its parameters.
    assert {"unknown": unknown, "wrong": wrong, "changed": moved} == {
        "unknown": [],
        "wrong": [],
        "changed": {},
    }
    assert sum(status == 404 for status in seen.values()) >= 5, seen


def test_the_matrix_knows_every_route_of_the_base(world: World) -> None:
    routes, unknown = panel_routes(world.cabinet)
    labels = {route.label for route in routes}
    assert unknown == []
    for expected in ("GET /panel/", "POST /panel/vms/{name}/{verb}", "GET /panel/actions/{action_id}",
                     "GET /panel/account", "POST /panel/login/code", "GET /panel/reset/{secret}"):  # fmt: skip
        assert expected in labels


def test_the_matrix_fills_names_by_kind_and_refuses_what_it_does_not_know() -> None:
    world = World(None, None, None, "act-a", "vce_0000000a", "req-a", "7")  # type: ignore[arg-type]
    assert concrete(Route("POST", "/panel/objects/{kind}/{name}/delete"), world) == [
        f"/panel/objects/{plural}/{names[0]}/delete" for plural, names in OBJECT_NAMES.items()
    ]
    assert concrete(Route("GET", "/panel/incidents/{id}"), world) == ["/panel/incidents/7"]
    assert concrete(Route("GET", "/panel/gadgets/{name}"), world) is None
    assert concrete(Route("GET", "/panel/vms/{name}/{colour}"), world) is None


# -- CSRF ------------------------------------------------------------------------------------


def post_paths(world: World) -> list[tuple[Route, str]]:
    found = []
    for route in panel_routes(world.cabinet)[0]:
        if route.method != "POST":
            continue
        paths = concrete(route, world)
        assert paths is not None, f"{route.label}: no value for its path parameters"
        found += [(route, path) for path in paths]
    return found


def test_every_post_refuses_a_form_without_its_token_or_with_another_sessions(
    world: World, connections
) -> None:
    cabinet = world.cabinet
    operator = cabinet.operator("opq7")
    # Each form sent by its owner (an operator's pages by an operator), refused for the token
    # alone. The clock stands still, so that no session is even marked as seen.
    cabinet.context.ledger.fixed_now = dt.datetime.now(dt.UTC)
    before = state(cabinet, connections)
    others = world.b.form_token()
    wrong = []
    for route, path in post_paths(world):
        owner = operator if route.path.startswith("/panel/operator") else world.a
        # A page for each kind of object may not exist for every kind: its 404 refuses too.
        refusals = {403, 404} if {"plural", "kind"} & set(PARAMETER.findall(route.path)) else {403}
        for label, token in (("no token", None), ("B's token", others), ("empty", "")):
            form = {"key": secrets.token_hex(16), "vm": VM_A}
            if token is not None:
                form["csrf"] = token
            reply = owner.client.post(path, data=form)
            if reply.status_code not in refusals:
                wrong.append(f"POST {path} with {label}: {reply.status_code}")
    # A's session is alive (logout refused too) and nothing moved.
    assert world.a.get("/panel/").status_code == 200
    assert operator.get("/panel/operator/").status_code == 200
    assert wrong == []
    assert changes(before, state(cabinet, connections)) == {}


def test_a_login_form_with_another_browsers_token_is_refused(cabinet: Cabinet) -> None:
    cabinet.customer("acme")
    mine, theirs = Visitor(cabinet.app), Visitor(cabinet.app)
    mine.get("/panel/login")
    token = hidden_fields(theirs.get("/panel/login").text)["csrf"]
    answer = mine.client.post(
        "/panel/login", data={"csrf": token, "login": "acme-user", "password": PASSWORD}
    )
    assert answer.status_code == 403
    assert "vce_session" not in mine.client.cookies


# -- the session's life ----------------------------------------------------------------------


@pytest.fixture
def moved(cabinet: Cabinet) -> Iterator[callable]:
    """Move the ledger's clock (the sessions' time) by some minutes from now."""
    start = dt.datetime.now(dt.UTC)

    def to(minutes: float) -> None:
        cabinet.context.ledger.fixed_now = start + dt.timedelta(minutes=minutes)

    yield to
    cabinet.context.ledger.fixed_now = None


def test_a_session_ends_after_30_idle_minutes(cabinet: Cabinet, moved) -> None:
    moved(0)
    visitor = cabinet.customer("acme")
    moved(29)
    assert visitor.get("/panel/account").status_code == 200  # seen: the idle clock restarts
    moved(29 + 29)
    assert visitor.get("/panel/account").status_code == 200
    moved(29 + 29 + 31)
    answer = visitor.get("/panel/account")
    assert answer.status_code == 303 and answer.headers["location"].startswith("/panel/login")


def test_a_session_ends_after_12_hours_however_busy(cabinet: Cabinet, moved) -> None:
    moved(0)
    visitor = cabinet.customer("acme")
    for minutes in range(20, 12 * 60, 20):
        moved(minutes)
        assert visitor.get("/panel/account").status_code == 200, minutes
    moved(12 * 60 + 1)
    assert visitor.get("/panel/account").status_code == 303


def test_a_disabled_users_sessions_end(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    cabinet.context.identity.disable_user("acme-user")
    assert visitor.get("/panel/").status_code == 303
    assert Visitor(cabinet.app).log_in("acme-user").status_code == 401


def test_logout_ends_the_session_for_good(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    cookie = visitor.client.cookies["vce_session"]
    answer = visitor.submit("/panel/logout")
    assert answer.status_code == 303
    assert 'vce_session=""' in answer.headers["set-cookie"]
    replay = Visitor(cabinet.app)
    replay.client.cookies.set("vce_session", cookie, path="/panel")
    assert replay.get("/panel/account").status_code == 303


def test_a_password_set_by_an_operator_ends_the_sessions(cabinet: Cabinet) -> None:
    visitor = cabinet.customer("acme")
    text, _view = cabinet.context.identity.create_token("operator", None, "write", None, "t")
    answer = Visitor(cabinet.app).client.put(
        "/v1/operator/users/acme-user/password",
        json={"password": "an operator's new passphrase"},
        headers={"Authorization": f"Bearer {text}"},
    )
    assert answer.status_code == 200, answer.text
    assert visitor.get("/panel/").status_code == 303


def test_the_session_cookie_is_httponly_lax_and_for_the_panel_only(cabinet: Cabinet) -> None:
    cabinet.customer("acme")
    for scheme, secure in (("http", False), ("https", True)):
        visitor = Visitor(cabinet.app)
        visitor.client.base_url = httpx.URL(f"{scheme}://testserver")
        answer = visitor.log_in("acme-user")
        cookie = next(c for c in answer.headers.get_list("set-cookie") if "vce_session=" in c)
        flags = {part.strip().lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite=lax", "path=/panel"} <= flags, cookie
        assert ("secure" in flags) is secure, cookie


# -- hostile input ---------------------------------------------------------------------------

PIECES = ["<", ">", "&", '"', "'", "/", "\\", " ", "\t", "\n", "\x00", "\u202e", "\ufeff", "a", "1",
          "é", "漢", "<script>", "%00", "{{", "}}"]  # fmt: skip
HOSTILE = st.lists(st.sampled_from(PIECES), max_size=20).map("".join) | st.text(max_size=60)
# Appended to every hostile value: markup no page has of its own, so finding it raw in a reply
# means a value came back unescaped.
MARKER = "<x-q7 onmouseover=alert(1)>"
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def unescaped(replies: list[httpx.Response]) -> list[str]:
    return [
        f"{reply.request.method} {reply.request.url.path}: {reply.status_code}"
        for reply in replies
        if reply.status_code >= 500 or MARKER in reply.text or "<x-q7" in reply.text
    ]


@pytest.fixture
def roomy(cabinet: Cabinet) -> Cabinet:
    cabinet.context.logins = RateLimiter(10_000, 10_000)
    cabinet.customer("acme")
    return cabinet


@SETTINGS
@given(login=HOSTILE, password=HOSTILE, back=HOSTILE)
def test_the_login_form_takes_any_text(roomy: Cabinet, login, password, back) -> None:
    login, password, back = login + MARKER, password + MARKER, back + MARKER
    visitor = Visitor(roomy.app)
    token = hidden_fields(visitor.get(f"/panel/login?next={quote(back)}").text)["csrf"]
    reply = visitor.client.post(
        "/panel/login", data={"csrf": token, "login": login, "password": password, "next": back}
    )
    assert reply.status_code == 401, reply.text
    # The code step, without a password step before it: the same answer, escaped.
    code = visitor.client.post(
        "/panel/login/code", data={"csrf": token, "code": password, "next": back}
    )
    assert code.status_code == 401, code.text
    assert unescaped([reply, code]) == []


@SETTINGS
@given(current=HOSTILE, new=HOSTILE, code=HOSTILE, secret=HOSTILE, login=HOSTILE)
def test_the_account_and_reset_forms_take_any_text(
    roomy: Cabinet, current, new, code, secret, login
) -> None:
    current, new, code, secret, login = (v + MARKER for v in (current, new, code, secret, login))
    visitor = roomy.logged_in("acme-user")
    replies = [
        visitor.submit("/panel/account/password", {"current": current, "new": new, "again": new}),
        visitor.submit("/panel/account/totp", {"secret": secret, "code": code}),
        visitor.submit("/panel/account/totp/off", {"code": code}),
    ]
    stranger = Visitor(roomy.app)
    token = hidden_fields(stranger.get("/panel/reset").text)["csrf"]
    replies.append(stranger.client.post("/panel/reset", data={"csrf": token, "login": login}))
    replies.append(
        stranger.client.post(
            "/panel/reset/password",
            data={"csrf": token, "secret": secret, "new": new, "again": new},
        )
    )
    replies.append(stranger.get(f"/panel/reset/{quote(secret, safe='')}"))
    assert unescaped(replies) == []
    assert roomy.context.identity.verify_password("acme-user", PASSWORD) is not None


def test_logins_are_rate_limited_per_address(cabinet: Cabinet) -> None:
    # The server's own limit, on a clock that stands still: no refill while argon2 works.
    cabinet.context.logins = RateLimiter(LOGIN_RATE, LOGIN_BURST, clock=lambda: 1000.0)
    cabinet.customer("acme")  # its login is the first of the burst
    guesser = Visitor(cabinet.app)
    statuses = [guesser.log_in("acme-user", f"guess number {n:04d}").status_code for n in range(10)]
    assert statuses == [401] * (LOGIN_BURST - 1) + [429]
    limited = guesser.log_in("acme-user")
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    # Another address is not held back by this one's guesses.
    elsewhere = Visitor(cabinet.app)
    elsewhere.client = type(elsewhere.client)(
        cabinet.app, base_url="http://testserver", follow_redirects=False,
        client=("192.0.2.7", 50000),
    )  # fmt: skip
    assert elsewhere.log_in("acme-user").status_code == 303
