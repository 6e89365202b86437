"""What every call shares: one error shape (unknown route, wrong method, a body that is not
JSON), the request id echoed, 429 with Retry-After past a token's rate, and an audit row of
every call that may change something, whatever its outcome, which a tenant reads only for its
own calls."""

from __future__ import annotations

import collections
import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.server.conftest import Fleet
from tests.support.server import (
    Server,
    audit_rows,
    create_token,
    error_of,
    send,
    token_prefix,
    token_secret,
    wait_action,
)

pytestmark = pytest.mark.server
GENERATED_ID = re.compile(r"[0-9a-f]{32}")
RATE_BURST = 100  # settings.py's default burst
RATE_CALLS = 400
RATE_THREADS = 8


def test_an_unknown_route_answers_404_in_the_error_shape(server: Server, fleet: Fleet, new_tenant):
    token = create_token(fleet.ledger_url, new_tenant(fleet))
    with server.client(token) as client:
        for path in ("/v1/nothing-here", "/v2/vms", "/nothing-here"):
            reply = client.get(path)
            assert reply.status_code == 404, (path, reply.text)
            assert error_of(reply)["code"] == "not_found"
        # The root is the personal cabinet's door.
        home = client.get("/")
        assert (home.status_code, home.headers["location"]) == (303, "/panel/")


def test_a_wrong_method_answers_405_in_the_error_shape(server: Server, fleet: Fleet, new_tenant):
    token = create_token(fleet.ledger_url, new_tenant(fleet))
    with server.client(token) as client:
        for method, path in (("delete", "/v1/zones"), ("patch", "/v1/quotas"), ("put", "/v1/vms")):
            reply = client.request(method, path)
            assert reply.status_code == 405, (method, path, reply.text)
            assert error_of(reply)["code"] == "method_not_allowed"


def test_a_body_that_is_not_json_answers_422(server: Server, fleet: Fleet, new_tenant):
    token = create_token(fleet.ledger_url, new_tenant(fleet))
    headers = {"Content-Type": "application/json"}
    with server.client(token) as client:
        for content in (b"not json", b'{"size_gib": 1', b"\xff\xfe", b""):
            reply = client.put("/v1/disks/data", content=content, headers=headers)
            assert reply.status_code == 422, (content, reply.text)
            assert error_of(reply)["code"] == "invalid"
        assert client.get("/v1/actions").json()["actions"] == []


def test_the_request_id_is_echoed_or_generated(server: Server, fleet: Fleet, new_tenant):
    token = create_token(fleet.ledger_url, new_tenant(fleet))
    with server.client(token) as client:
        given = client.get("/v1/vms", headers={"X-Request-Id": "trace-42.a_b"})
        assert given.headers["x-request-id"] == "trace-42.a_b"
        made = client.get("/v1/vms")
        assert GENERATED_ID.fullmatch(made.headers["x-request-id"])
        refused = client.get("/v1/vms/missing", headers={"X-Request-Id": "trace-43"})
        assert refused.status_code == 404
        assert refused.headers["x-request-id"] == error_of(refused)["request_id"] == "trace-43"
        # A hostile id (a newline, a header's worth of text) is replaced, not echoed.
        for hostile in ("a\tb", "x" * 500):
            reply = client.get("/v1/vms", headers={"X-Request-Id": hostile})
            assert GENERATED_ID.fullmatch(reply.headers["x-request-id"]), hostile


def test_a_token_past_its_rate_answers_429_with_retry_after(
    server: Server, fleet: Fleet, new_tenant
):
    """The default limit (20 calls/s, bursts of 100: `vce serve` has no option for it) passed
    by calls from 8 threads at once with one token."""
    token = create_token(fleet.ledger_url, new_tenant(fleet))
    other = create_token(fleet.ledger_url, new_tenant(fleet))
    with server.client(token) as client:

        def calls(_i: int) -> list[httpx.Response]:
            return [client.get("/v1/zones") for _call in range(RATE_CALLS // RATE_THREADS)]

        with ThreadPoolExecutor(RATE_THREADS) as pool:
            replies = [r for batch in pool.map(calls, range(RATE_THREADS)) for r in batch]
    statuses = collections.Counter(r.status_code for r in replies)
    assert set(statuses) == {200, 429}, statuses
    assert statuses[200] >= RATE_BURST, statuses
    limited = next(r for r in replies if r.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1
    assert error_of(limited)["code"] == "rate_limited"
    # The limit is the token's: another customer is not slowed down.
    with server.client(other) as client:
        assert client.get("/v1/zones").status_code == 200


def test_every_change_is_audited_whatever_its_outcome(server: Server, fleet: Fleet, new_tenant):
    tenant = new_tenant(fleet)
    token = create_token(fleet.ledger_url, tenant)
    reader = create_token(fleet.ledger_url, tenant, "read")
    ids = {name: f"audit-{name}-{uuid.uuid4().hex[:8]}" for name in (
        "accepted", "invalid", "read_only", "anonymous", "missing", "read")}  # fmt: skip

    def call(token_text: str | None, method: str, path: str, name: str, **kwargs) -> httpx.Response:
        with server.client(token_text) as client:
            return send(client, method, path, headers={"X-Request-Id": ids[name]}, **kwargs)

    accepted = call(token, "put", "/v1/disks/audited", "accepted", json={"size_gib": 1})
    assert accepted.status_code == 202, accepted.text
    assert call(token, "put", "/v1/disks/bad", "invalid", json={"size_gib": -1}).status_code == 422
    assert call(reader, "delete", "/v1/disks/audited", "read_only").status_code == 403
    assert call(None, "delete", "/v1/disks/audited", "anonymous").status_code == 401
    assert call(token, "delete", "/v1/networks/missing", "missing").status_code in (202, 404)
    assert call(token, "get", "/v1/disks", "read").status_code == 200
    with server.client(token) as client:
        wait_action(client, accepted.json()["action"]["id"])

    rows = audit_rows(fleet.ledger_url, list(ids.values()))
    assert ids["read"] not in rows, "a read is not a change: not audited"
    expected = {
        "accepted": (token, 202, "accepted"),
        "invalid": (token, 422, "refused"),
        "read_only": (reader, 403, "refused"),
    }
    for name, (used, status, outcome) in expected.items():
        row = rows[ids[name]]
        assert (row.token, row.tenant, row.status, row.outcome) == (
            token_prefix(used),
            tenant,
            status,
            outcome,
        ), row
        assert row.source == "127.0.0.1" and row.at.utcoffset() is not None
        assert token_prefix(used) != used and token_secret(used) not in repr(tuple(row))
    assert rows[ids["accepted"]].action == accepted.json()["action"]["id"]
    assert rows[ids["accepted"]].method == "PUT"
    assert rows[ids["accepted"]].path == "/v1/disks/audited"
    anonymous = rows[ids["anonymous"]]
    assert (anonymous.status, anonymous.outcome, anonymous.tenant) == (401, "refused", None)
    assert ids["missing"] in rows


def test_a_tenant_reads_only_its_own_audit(server: Server, fleet: Fleet, new_tenant):
    mine, theirs = new_tenant(fleet), new_tenant(fleet)
    token, other = create_token(fleet.ledger_url, mine), create_token(fleet.ledger_url, theirs)
    own_id, their_id = f"mine-{uuid.uuid4().hex}", f"theirs-{uuid.uuid4().hex}"
    with server.client(token) as client:
        client.put("/v1/disks/x", json={"size_gib": -1}, headers={"X-Request-Id": own_id})
    with server.client(other) as client:
        client.put("/v1/disks/x", json={"size_gib": -1}, headers={"X-Request-Id": their_id})
    with server.client(token) as client:
        reply = client.get("/v1/audit")
        assert reply.status_code == 200, reply.text
        assert own_id in reply.text and their_id not in reply.text
        assert theirs not in reply.text
        # A customer cannot ask for another tenant's trail either.
        asked = client.get("/v1/audit", params={"tenant": theirs})
        assert their_id not in asked.text
    operator = create_token(fleet.ledger_url, None)
    with server.client(operator) as client:
        everything = client.get("/v1/audit", params={"limit": 500})
        assert everything.status_code == 200, everything.text
        assert own_id in everything.text and their_id in everything.text
