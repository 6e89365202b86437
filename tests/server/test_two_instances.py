"""Two `vce serve` instances on one PostgreSQL ledger, as behind a reverse proxy: 20 actions
submitted alternately to both are each claimed and run exactly once, and all succeed."""

from __future__ import annotations

import collections
import itertools
from pathlib import Path

import libvirt
import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import actions
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.conftest import fresh_database_url
from tests.server.conftest import Fleet, set_up_fleet
from tests.support.ledger import forget_stores
from tests.support.server import create_token, running_server, wait_action

pytestmark = pytest.mark.server
ACTIONS = 20
TENANTS = 4


@pytest.fixture
def shared_fleet(request, tmp_path: Path, libvirtd, pool, blank_image_path) -> Fleet:
    url = fresh_database_url("postgresql", tmp_path, request)
    yield set_up_fleet(url, libvirtd.uri, blank_image_path, tmp_path)
    forget_stores()


def test_two_instances_run_each_of_20_actions_exactly_once(
    shared_fleet: Fleet, conn: libvirt.virConnect, new_tenant
):
    fleet = shared_fleet
    tenants = [new_tenant(fleet) for _tenant in range(TENANTS)]
    tokens = {tenant: create_token(fleet.ledger_url, tenant) for tenant in tenants}
    submitted: list[tuple[int, str, str]] = []  # (instance, tenant, action id)
    with (
        running_server(fleet.ledger_url, tmp_log(fleet, "one")) as one,
        running_server(fleet.ledger_url, tmp_log(fleet, "two")) as two,
    ):
        servers = (one, two)
        for i in range(ACTIONS):
            tenant = tenants[i % TENANTS]
            with servers[i % 2].client(tokens[tenant]) as client:
                reply = client.put(f"/v1/disks/d{i}", json={"size_gib": 1})
                assert reply.status_code == 202, reply.text
                submitted.append((i % 2, tenant, reply.json()["action"]["id"]))
        for i, (_instance, tenant, action_id) in enumerate(submitted):
            # Read back through the other instance: the ledger is the one truth.
            with servers[(i + 1) % 2].client(tokens[tenant]) as client:
                assert wait_action(client, action_id)["status"] == "succeeded"
    rows = action_rows(fleet.ledger_url, [action_id for _i, _t, action_id in submitted])
    assert len(rows) == ACTIONS
    assert all(row.attempts == 1 for row in rows), [(r.id, r.attempts) for r in rows]
    assert all(row.status == "succeeded" and row.claimed_by for row in rows)
    check_one_running_per_tenant(rows)
    claims = collections.Counter(row.claimed_by for row in rows)
    print(f"actions claimed per instance: {dict(claims)}")
    assert len(claims) <= 2
    for tenant in tenants:
        volumes = {
            v.name()
            for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE)
            for v in pool.listAllVolumes(0)
            if v.name().startswith(f"{tenant}_")
        }
        assert len(volumes) == ACTIONS // TENANTS, volumes


def check_one_running_per_tenant(rows: list) -> None:
    """Across both instances, a tenant's actions ran one after another, in submission order."""
    by_tenant: dict[str, list] = collections.defaultdict(list)
    for row in rows:
        by_tenant[row.tenant].append(row)
    for tenant, runs in by_tenant.items():
        runs.sort(key=lambda row: row.seq)
        for earlier, later in itertools.pairwise(runs):
            assert earlier.finished_at <= later.started_at, (tenant, earlier.id, later.id)


def tmp_log(fleet: Fleet, name: str) -> Path:
    return fleet.logs / f"serve-{name}.log"


def action_rows(ledger_url: str, ids: list[str]) -> list:
    with Ledger.open(ledger_url).store.read() as connection:
        return connection.execute(sa.select(actions).where(actions.c.id.in_(ids))).fetchall()
