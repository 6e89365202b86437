"""Authorization across tenants, generated from the server's own OpenAPI document so that no
endpoint escapes it.

Tenant A owns a network, a disk, a stopped VM and the actions that made them. With tenant B's
write token every operation whose path names something gets A's names and ids and answers 404
or 403 (a declaration without a body: 422), every list leaves A out, every operator operation
answers 403 to customers, and afterwards the ledger's rows (but the audit trail and B's own
rows) and libvirt's domains, networks and volumes are exactly as before. Every operation also
answers 401 to a missing, malformed, wrong, expired or revoked token, and 403 to a read token
on a change."""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import libvirt
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import utcnow

from tests.server.conftest import Fleet, next_subnet
from tests.support.ledger import register
from tests.support.server import (
    Server,
    admin_token,
    audit_rows,
    changes,
    create_token,
    error_of,
    revoke_token,
    send,
    set_token_times,
    state_of,
    succeeded,
    token_prefix,
    token_secret,
    vm_body,
    wait_action,
)
from tools.cleanup import remove_guard, remove_prefixed
from tools.libvirtd import PrivateLibvirtd

pytestmark = pytest.mark.server
METHODS = ("get", "put", "post", "patch", "delete")
CHANGES = ("put", "post", "patch", "delete")
PARAMETER = re.compile(r"\{([^}]+)\}")
KINDS = ("networks", "disks", "vms", "public_ips", "zone_links", "backup_schedules")
_numbers = itertools.count(1)
# Path parameters that name no object of a tenant: a month is everyone's.
NOT_OBJECTS = frozenset({"month"})
# The POSTs that change nothing: the plan of a declaration (check mode), the check of one.
READ_POSTS = frozenset({"/v1/plan", *(f"/v1/{kind}/{{name}}/check" for kind in KINDS)})
AUDIT = "/v1/audit"
SCHEDULE = {"vm": "avm", "calendar": "*-*-* 02:30", "retention": {"keep_daily": 7}}
# Another instance (here: the admin command) revokes; the server's token cache keeps a token
# at most 5 s.
REVOCATION_SECONDS = 10


@dataclass
class World:
    """Tenant A's objects and the tokens of A and B."""

    tenant_a: str
    tenant_b: str
    token_a: str
    read_a: str
    token_b: str
    names: dict[str, str]  # kind -> A's object of that kind
    secrets: list[str]  # strings only A's objects hold: no reply to B may contain them
    action_id: str
    request_id: str | None = None
    incident_id: str | None = None
    revoked: str = ""
    expired: str = ""
    # What B sends where a body matters (by path template): a plan with a network of its
    # own, whose firewall plan must not show A's network; a restore that names its new disk,
    # so that the backup is looked up.
    bodies_b: dict[str, dict] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    method: str
    template: str
    parameters: dict  # name -> its OpenAPI parameter object

    @property
    def label(self) -> str:
        return f"{self.method.upper()} {self.template}"


def operations(document: dict) -> list[Operation]:
    found = []
    for template, item in sorted(document["paths"].items()):
        for method in METHODS:
            if method in item:
                params = {
                    p["name"]: p
                    for p in [*item.get("parameters", []), *item[method].get("parameters", [])]
                    if p.get("in") == "path"
                }
                found.append(Operation(method, template, params))
    return found


def enum_of(parameter: dict) -> list[str]:
    schema = parameter.get("schema", {})
    if "enum" in schema:
        return list(schema["enum"])
    for option in schema.get("anyOf", []) + schema.get("allOf", []):
        if "enum" in option:
            return list(option["enum"])
    ref = schema.get("$ref")
    return [] if ref is None else [ref]


def concrete_paths(operation: Operation, world: World, document: dict) -> list[str]:
    """The operation's path with A's names and ids, once per value of an enumerated parameter
    (e.g. every kind)."""
    paths = [operation.template]
    for name in PARAMETER.findall(operation.template):
        values = values_for(name, operation, world, document)
        paths = [p.replace(f"{{{name}}}", value, 1) for p in paths for value in values]
    # A {name} after a {kind} becomes A's object of that kind.
    return [substitute_names(p, world) for p in paths]


def values_for(name: str, operation: Operation, world: World, document: dict) -> list[str]:
    enumerated = enum_of(operation.parameters.get(name, {}))
    if enumerated and not enumerated[0].startswith("#/"):
        return enumerated
    if enumerated:  # a $ref to an enum schema
        schema = document["components"]["schemas"][enumerated[0].rsplit("/", 1)[1]]
        return list(schema.get("enum", [])) or ["vms"]
    before = operation.template.split(f"{{{name}}}")[0].rstrip("/").rsplit("/", 1)[-1]
    if name == "kind":
        return list(KINDS)
    if before in world.names and name in ("name", "vm"):
        return [world.names[before]]
    if before == "actions" or name == "action_id":
        return [world.action_id]
    if before == "requests" and world.request_id:
        return [world.request_id]
    if before == "incidents" and world.incident_id:
        return [world.incident_id]
    if name == "tenant":
        return [world.tenant_a]
    if name == "vm":
        return [world.names["vms"]]
    if name == "month":
        return [dt.datetime.now(dt.UTC).strftime("%Y-%m")]
    if name in ("verb", "operation", "vm_action"):
        return ["start", "stop", "reboot"]
    if name in ("id", "backup_id", "request_id", "incident_id"):
        return ["1", world.action_id]
    return [world.names["vms"]]


def substitute_names(path: str, world: World) -> str:
    """A name placeholder left by a {kind} expansion ("/v1/disks/{name}" after kind=disks)."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if part == "{name}" and i and parts[i - 1] in world.names:
            parts[i] = world.names[parts[i - 1]]
    return "/".join(parts)


# -- the world ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(
    server: Server, fleet: Fleet, conn: libvirt.virConnect, libvirtd: PrivateLibvirtd
) -> Iterator[World]:
    number = next(_numbers)
    tenant_a = f"s{os.getpid() % 10000}a{number}"
    tenant_b = f"s{os.getpid() % 10000}b{number}"
    for tenant in (tenant_a, tenant_b):
        register(fleet.ledger_url, tenant, backup_frequencies=["daily", "weekly"])
    try:
        built = build_world(server, fleet, tenant_a, tenant_b)
        # The host's own details: no customer ever reads them (service/fleet.py scrubs).
        built.secrets += [fleet.uri, str(libvirtd.base_dir)]
        yield built
    finally:
        for tenant in (tenant_a, tenant_b):
            remove_prefixed(conn, f"{tenant}_")
        remove_guard()


def build_world(server: Server, fleet: Fleet, tenant_a: str, tenant_b: str) -> World:
    url = fleet.ledger_url
    token_a = admin_token(url, tenant_a)
    subnet = next_subnet()
    names = {"networks": "alan", "disks": "adata", "vms": "avm", "backup_schedules": "anightly"}
    with server.client(token_a) as client:
        succeeded(client, "/v1/networks/alan", {"cidr": f"{subnet}.0/24", "mode": "isolated"})
        succeeded(client, "/v1/disks/adata", {"size_gib": 1})
        action = succeeded(
            client, "/v1/vms/avm", vm_body(fleet.image, network="alan", disk="adata")
        )
        succeeded(client, "/v1/backup_schedules/anightly", SCHEDULE)
        world = World(
            tenant_a=tenant_a,
            tenant_b=tenant_b,
            token_a=token_a,
            read_a=create_token(url, tenant_a, "read"),
            token_b=create_token(url, tenant_b),
            names=names,
            secrets=[tenant_a, f"{subnet}.", action["id"]],
            action_id=action["id"],
        )
        world.request_id = created_id(
            send(client, "post", "/v1/requests", json={"kind": "minor_fault", "note": "A's"})
        )
        world.incident_id = created_id(
            send(client, "post", "/v1/incidents", json={"vm": "avm", "note": "A's outage"})
        )
    world.bodies_b["/v1/plan"] = {
        "networks": [{"name": "bnet", "cidr": f"{next_subnet()}.0/24", "mode": "isolated"}]
    }
    world.bodies_b["/v1/backups/{backup_id}/restore"] = {"new_disk": "brestored"}
    # B's checks of declarations under A's names: answered as B's own new objects.
    world.bodies_b["/v1/vms/{name}/check"] = {"declaration": vm_body(fleet.image)}
    world.bodies_b["/v1/disks/{name}/check"] = {"declaration": {"size_gib": 1}}
    world.revoked = revoked_in_use(server, url, tenant_b)
    # Made valid for a day, then the day has passed.
    world.expired = create_token(url, tenant_b, expires_at=utcnow() + dt.timedelta(days=1))
    set_token_times(url, world.expired, expires_at=utcnow() - dt.timedelta(seconds=1))
    return world


def revoked_in_use(server: Server, url: str, tenant: str) -> str:
    """A token that worked (so the server has it cached), revoked with `vce admin token
    revoke` in another process: refused within the cache's few seconds."""
    token = create_token(url, tenant)
    with server.client(token) as client:
        assert client.get("/v1/vms").status_code == 200
        revoke_token(url, token)
        deadline = time.monotonic() + REVOCATION_SECONDS
        while client.get("/v1/vms").status_code != 401:
            assert time.monotonic() < deadline, "a revoked token still works"
            time.sleep(0.2)
    return token


def created_id(reply: httpx.Response) -> str | None:
    """The id of what a POST made (a request, an incident), wherever the reply nests it."""
    if reply.status_code not in (200, 201, 202):
        return None
    return find_id(reply.json())


def find_id(value: object) -> str | None:
    if isinstance(value, dict):
        if "id" in value:
            return str(value["id"])
        for item in value.values():
            found = find_id(item)
            if found:
                return found
    return None


@pytest.fixture(scope="module")
def document(server: Server) -> dict:
    reply = httpx.get(f"{server.url}/openapi.json", timeout=30)
    assert reply.status_code == 200
    assert reply.json()["openapi"].startswith("3.1")
    return reply.json()


def is_operator_path(template: str) -> bool:
    return template.startswith("/v1/operator")


def leaks(reply: httpx.Response, world: World, path: str) -> list[str]:
    """A's strings (and the host's) in a reply to B that B did not send itself in the path."""
    return [s for s in world.secrets if s in reply.text and s not in path]


# -- the matrix ---------------------------------------------------------------------------------


def test_the_matrix_covers_every_operation_of_the_openapi_document(document, world):
    ops = operations(document)
    covered = [op for op in ops if classify(op) is not None]
    print(f"OpenAPI operations: {len(ops)}, covered by the matrix: {len(covered)}")
    assert [op.label for op in ops if classify(op) is None] == []
    # The design's endpoints: zones, images, six kinds, actions, plan, terms, operator.
    assert len(ops) >= 30, [op.label for op in ops]
    assert any(
        p for op in ops for p in concrete_paths(op, world, document) if world.names["vms"] in p
    )


def classify(op: Operation) -> str | None:
    """operator: refused to customers; named: its path names an object (A's, here); list: a
    read of the caller's own; change: a change or plan of the caller's own."""
    if is_operator_path(op.template):
        return "operator"
    if set(PARAMETER.findall(op.template)) - NOT_OBJECTS:
        return "named"
    if op.method == "get":
        return "list"
    return "change"


def test_tenant_b_reaches_nothing_of_tenant_a_and_changes_nothing(
    server: Server, fleet: Fleet, conn, world: World, document: dict
):
    before = state_of(fleet.ledger_url, conn, own_tenant=world.tenant_b, host_dir=fleet.host_dir)
    wrong: list[str] = []
    actions: list[str] = []
    seen: collections.Counter = collections.Counter()
    audited: dict[str, int] = {}  # request id -> status, of every call that may change
    with server.client(world.token_b) as client:
        for op in operations(document):
            kind = classify(op)
            for path in concrete_paths(op, world, document):
                request_id = f"matrix-{uuid.uuid4().hex}"
                reply = call(client, op, path, world.bodies_b, request_id)
                seen[(kind, reply.status_code)] += 1
                if op.method in CHANGES:
                    audited[request_id] = reply.status_code
                problem = judge(kind, op, path, reply, world)
                if problem:
                    wrong.append(f"{op.method.upper()} {path}: {problem}")
                if reply.status_code == 202:
                    actions.append(reply.json()["action"]["id"])
        for action_id in actions:
            wait_action(client, action_id)
    print(f"cross-tenant calls with B's token (kind, status): {sorted(seen.items())}")
    print(f"A's request {world.request_id}, A's incident {world.incident_id}")
    assert seen[("named", 404)] >= 15, seen
    check_audited(fleet.ledger_url, world, audited)
    moved = changes(
        before, state_of(fleet.ledger_url, conn, own_tenant=world.tenant_b, host_dir=fleet.host_dir)
    )
    assert {"wrong answers": wrong, "changed": moved} == {"wrong answers": [], "changed": {}}


def call(
    client: httpx.Client,
    op: Operation,
    path: str,
    bodies: dict[str, dict] | None = None,
    request_id: str | None = None,
) -> httpx.Response:
    # A change without a body: whatever the declaration needs, nothing of B's is created.
    body = (bodies or {}).get(op.template, {})
    kwargs: dict = {"json": body} if op.method in ("put", "post", "patch") else {}
    if request_id:
        kwargs["headers"] = {"X-Request-Id": request_id}
    return send(client, op.method, path, **kwargs)


def check_audited(ledger_url: str, world: World, audited: dict[str, int]) -> None:
    """Each of B's calls that may change something left its audit row, refused or not."""
    rows = audit_rows(ledger_url, list(audited))
    found = {rid: (row.status, row.tenant, row.token) for rid, row in rows.items()}
    prefix = token_prefix(world.token_b)
    assert found == {rid: (status, world.tenant_b, prefix) for rid, status in audited.items()}


def judge(kind: str, op: Operation, path: str, reply: httpx.Response, world: World) -> str:
    """What is wrong with B's reply, or ''."""
    status = reply.status_code
    if status >= 500:
        return f"{status} {reply.text[:300]}"
    found = leaks(reply, world, path)
    if found:
        at = reply.text.index(found[0])
        return f"{status} names A's {found}: ...{reply.text[max(0, at - 300) : at + 100]}..."
    if status >= 400:
        error_of(reply)
    if kind == "operator" and status != 403:
        return f"{status}, not 403, to a customer on an operator path"
    if kind == "named":
        allowed = {403, 404}
        if op.method in ("put", "post", "patch"):
            allowed.add(422)  # the empty body refused before anything is looked up
        if op.method == "delete":
            allowed.add(202)  # an idempotent removal of B's own (missing) object
        if op.template in READ_POSTS:
            allowed.add(200)  # the check of B's own declaration of that name
        if status not in allowed:
            return f"{status} {reply.text[:300]}"
    return ""


def test_b_checks_names_of_a_as_its_own_new_objects(server: Server, world: World):
    """A's VM and disk count for nothing in B's checks of their names: B has none yet."""
    with server.client(world.token_b) as client:
        vm = send(client, "post", "/v1/vms/avm/check", json=world.bodies_b["/v1/vms/{name}/check"])
        disk = send(client, "post", "/v1/disks/adata/check", json={"declaration": {"size_gib": 1}})
    assert vm.status_code == 200, vm.text
    assert vm.json()["usage"] == {"vms": 1, "vcpus": 1, "ram_gib": "0.0625", "disk_gib": "1"}
    assert disk.json() == {"usage": {"disk_gib": "1"}}
    with server.client(world.token_a) as client:
        again = send(client, "post", "/v1/disks/adata/check", json={"declaration": {"size_gib": 1}})
    assert again.json() == {"usage": {}}


def test_lists_never_show_tenant_a(server: Server, world: World, document: dict):
    listed = 0
    with server.client(world.token_b) as client:
        for op in operations(document):
            if classify(op) != "list":
                continue
            reply = send(client, "get", op.template)
            listed += 1
            assert reply.status_code < 500, (op.label, reply.text)
            if op.template == AUDIT:
                # B's own calls named A's objects (the matrix): its rows, not A's.
                rows = reply.json()["audit"]
                assert {row["tenant"] for row in rows} <= {world.tenant_b}, rows
            else:
                assert leaks(reply, world, op.template) == [], (op.label, reply.text[:500])
    assert listed >= 5
    # ...while A sees its own: the check above is not vacuous.
    with server.client(world.token_a) as client:
        for kind, name in world.names.items():
            reply = send(client, "get", f"/v1/{kind}")
            assert reply.status_code == 200 and name in reply.text, reply.text


def test_a_reads_its_own_objects_by_the_same_paths(server: Server, world: World):
    """The paths B was refused lead somewhere for A: the 404s above are about the tenant."""
    with server.client(world.token_a) as client:
        for kind, name in world.names.items():
            reply = send(client, "get", f"/v1/{kind}/{name}")
            assert reply.status_code == 200, reply.text
        assert send(client, "get", f"/v1/actions/{world.action_id}").status_code == 200


def test_operator_paths_answer_403_to_every_customer_token(
    server: Server, world: World, document: dict
):
    ops = [op for op in operations(document) if is_operator_path(op.template)]
    assert ops, "no operator endpoint in the OpenAPI document"
    for token in (world.token_a, world.token_b, world.read_a):
        with server.client(token) as client:
            for op in ops:
                for path in concrete_paths(op, world, document):
                    reply = call(client, op, path)
                    assert reply.status_code == 403, (op.label, path, reply.text)
                    assert error_of(reply)["code"] == "forbidden"


def bad_tokens(world: World) -> dict[str, str | None]:
    wrong_secret = f"{token_prefix(world.token_b)}_{'A' * 43}"
    return {
        "missing": None,
        "malformed": "not-a-token",
        "wrong secret": wrong_secret,
        "unknown prefix": f"vce_00000000_{'B' * 43}",
        "expired": world.expired,
        "revoked": world.revoked,
    }


def test_bad_tokens_answer_401_on_every_operation(
    server: Server, fleet: Fleet, conn, world: World, document: dict
):
    before = state_of(fleet.ledger_url, conn, host_dir=fleet.host_dir)
    checked = 0
    for label, token in bad_tokens(world).items():
        with server.client(token) as client:
            for op in operations(document):
                path = concrete_paths(op, world, document)[0]
                reply = call(client, op, path)
                checked += 1
                assert reply.status_code == 401, (label, op.label, reply.text)
                assert reply.headers.get("www-authenticate", "").startswith("Bearer"), label
                error = error_of(reply)
                assert error["code"] == "unauthorized", (label, error)
                if token and token.count("_") >= 2:
                    assert token_secret(token) not in reply.text
    print(f"401 checks: {checked}")
    assert changes(before, state_of(fleet.ledger_url, conn, host_dir=fleet.host_dir)) == {}


def test_a_read_token_is_refused_every_change(
    server: Server, fleet: Fleet, conn, world: World, document: dict
):
    before = state_of(fleet.ledger_url, conn, host_dir=fleet.host_dir)
    refused = 0
    with server.client(world.read_a) as client:
        for op in operations(document):
            if op.method not in CHANGES or op.template in READ_POSTS:
                continue
            for path in concrete_paths(op, world, document):
                reply = call(client, op, path)
                refused += 1
                assert reply.status_code == 403, (op.label, path, reply.text)
                assert error_of(reply)["code"] == "forbidden"
        # ...and it may read.
        assert send(client, "get", "/v1/vms").status_code == 200
    assert refused >= 10
    assert changes(before, state_of(fleet.ledger_url, conn, host_dir=fleet.host_dir)) == {}


def test_what_b_sees_of_its_own_changes_shows_nothing_of_a(server: Server, world: World):
    """B's own network on the same host: its action's plan, progress and result (the firewall
    of the host is shared by every tenant there) name nothing of A's."""
    network = {"cidr": f"{next_subnet()}.0/24", "mode": "isolated"}
    with server.client(world.token_b) as client:
        made = succeeded(client, "/v1/networks/bown", network)
        read = send(client, "get", "/v1/networks/bown")
        removed = send(client, "delete", "/v1/networks/bown")
        assert removed.status_code == 202, removed.text
        gone = wait_action(client, removed.json()["action"]["id"])
    assert gone["status"] == "succeeded", gone
    for label, text in (("create", repr(made)), ("read", read.text), ("delete", repr(gone))):
        found = [s for s in world.secrets if s in text]
        assert found == [], (label, found, text[:2000])
