"""Concurrent requests against one server, on a SQLite and on a PostgreSQL ledger:

- 10 PUTs at once with one Idempotency-Key make one action, named in all 10 replies (the 9
  that replay it with `Idempotent-Replayed: true`); the same key with another body is refused
  (422).
- A tenant one VM below its VM quota sends 8 creates of 8 different VMs at once: exactly one
  VM is made, the 7 others are refused with code quota_exceeded, and libvirt, the ledger and
  GET /v1/quotas agree.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import libvirt
import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import actions
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.server.conftest import Fleet
from tests.support.server import (
    Server,
    action_error_code,
    create_token,
    error_of,
    succeeded,
    vm_body,
    wait_action,
)

pytestmark = pytest.mark.server
CLIENTS = 10
RACERS = 8


def at_once(count: int, request: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """`count` requests released together by a barrier, each on its own connection."""
    barrier = threading.Barrier(count, timeout=60)

    def one(i: int) -> httpx.Response:
        barrier.wait()
        return request(i)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_ten_concurrent_puts_with_one_key_make_one_action(
    any_server: Server, any_fleet: Fleet, new_tenant
):
    tenant = new_tenant(any_fleet)
    token = create_token(any_fleet.ledger_url, tenant)
    key = f"create-data-{tenant}"

    def put(_i: int) -> httpx.Response:
        with any_server.client(token) as client:
            return client.put(
                "/v1/disks/data", json={"size_gib": 1}, headers={"Idempotency-Key": key}
            )

    replies = at_once(CLIENTS, put)
    assert [r.status_code for r in replies] == [202] * CLIENTS, [r.text for r in replies]
    ids = {r.json()["action"]["id"] for r in replies}
    assert len(ids) == 1, ids
    # The one that made the action says nothing; the nine that answered it say so.
    replayed = [r.headers.get("Idempotent-Replayed") for r in replies]
    assert sorted(replayed, key=str) == [None] + ["true"] * (CLIENTS - 1), replayed
    assert actions_with_key(any_fleet.ledger_url, tenant, key) == 1
    with any_server.client(token) as client:
        assert wait_action(client, ids.pop())["status"] == "succeeded"
        other = client.put("/v1/disks/data", json={"size_gib": 2}, headers={"Idempotency-Key": key})
        assert other.status_code == 422, other.text
        assert error_of(other)["code"] == "idempotency_mismatch"
        # The refused retry made no action of its own.
        assert len(client.get("/v1/actions").json()["actions"]) == 1
    assert actions_with_key(any_fleet.ledger_url, tenant, key) == 1


def actions_with_key(ledger_url: str, tenant: str, key: str) -> int:
    query = sa.select(sa.func.count()).where(
        actions.c.tenant == tenant, actions.c.idempotency_key == key
    )
    with Ledger.open(ledger_url).store.read() as connection:
        return connection.execute(query).scalar()


def test_eight_creates_one_below_the_vm_quota_make_exactly_one_vm(
    any_server: Server, any_fleet: Fleet, conn: libvirt.virConnect, new_tenant
):
    tenant = new_tenant(any_fleet, vms=2)
    token = create_token(any_fleet.ledger_url, tenant)
    with any_server.client(token) as client:
        succeeded(client, "/v1/vms/first", vm_body(any_fleet.image))

    def put(i: int) -> httpx.Response:
        with any_server.client(token) as client:
            return client.put(f"/v1/vms/racer{i}", json=vm_body(any_fleet.image))

    replies = at_once(RACERS, put)
    outcomes = []
    with any_server.client(token) as client:
        for reply in replies:
            if reply.status_code == 202:
                action = wait_action(client, reply.json()["action"]["id"])
                outcomes.append(
                    action["status"]
                    if action["status"] == "succeeded"
                    else action_error_code(action)
                )
            else:
                assert reply.status_code == 409, reply.text
                outcomes.append(error_of(reply)["code"])
        reply = client.get("/v1/quotas").json()
        quotas = reply.get("quotas", reply)
    refused_at_once = sum(r.status_code == 409 for r in replies)
    print(f"\nquota race: {refused_at_once} refused at submission, the rest as actions")
    assert sorted(outcomes) == ["quota_exceeded"] * (RACERS - 1) + ["succeeded"], outcomes
    domains = [d.name() for d in conn.listAllDomains(0) if d.name().startswith(f"{tenant}_")]
    assert len(domains) == 2, domains
    assert quotas["vms"]["used"] == 2 and quotas["vms"]["limit"] == 2, quotas
