"""`kill -9` of the server while it creates a VM, then a restart: the action is finished (the
restarted server resumed it) or marked interrupted, never lost or left running; the same PUT
again converges; libvirt holds exactly what was declared (no orphan domain or volume) and the
ledger's open usage rows are what libvirt holds."""

from __future__ import annotations

import random
import time
import xml.etree.ElementTree as ET

import httpx
import libvirt
import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.host.connection import Host
from ansible_collections.vce.kvm.plugins.module_utils.ledger.metering import host_meters, meter_of
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import (
    actions,
    usage_intents,
    usage_intervals,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.server.conftest import Fleet, next_subnet
from tests.support.server import (
    Server,
    create_token,
    running_server,
    succeeded,
    vm_body,
    wait_action,
)

pytestmark = pytest.mark.server
# The restarted server finds an abandoned action once its heartbeat is older than the stale
# limit (STALE seconds; 30 by default) at its next sweep (as often): about 2 x STALE, plus the
# re-run.
STALE = "5"
RECOVERY_SECONDS = 60
RUNNING_SECONDS = 60
# A create of this VM lasts about half a second once a worker has it.
KILL_WITHIN = 0.4


def wait_running(client: httpx.Client, action_id: str) -> str:
    """Poll the action until a worker has it (or it has ended); its status then."""
    deadline = time.monotonic() + RUNNING_SECONDS
    while time.monotonic() < deadline:
        status = client.get(f"/v1/actions/{action_id}").json()["action"]["status"]
        if status != "queued":
            return status
        time.sleep(0.005)
    raise AssertionError(f"action {action_id} still queued after {RUNNING_SECONDS} s")


def killed_during_create(
    fleet: Fleet, log, token: str, name: str, declaration: dict, delay: float
) -> tuple[str, str]:
    """A server that takes the VM's PUT and is killed `delay` s after a worker claimed it:
    the action's id and its status in the ledger once the server is dead."""
    server = Server(fleet.ledger_url, log).start()
    try:
        with server.client(token) as client:
            reply = client.put(f"/v1/vms/{name}", json=declaration)
            assert reply.status_code == 202, reply.text
            action_id = reply.json()["action"]["id"]
            wait_running(client, action_id)
            time.sleep(delay)
    finally:
        server.kill()
    return action_id, status_in_ledger(fleet.ledger_url, action_id)


def status_in_ledger(ledger_url: str, action_id: str) -> str:
    with Ledger.open(ledger_url).store.read() as connection:
        return connection.execute(
            sa.select(actions.c.status).where(actions.c.id == action_id)
        ).scalar_one()


def test_kill_9_during_a_vm_create_then_restart_finishes_or_marks_it_and_a_retry_converges(
    fleet: Fleet, conn: libvirt.virConnect, new_tenant
):
    tenant = new_tenant(fleet)
    token = create_token(fleet.ledger_url, tenant)
    network = {"cidr": f"{next_subnet()}.0/24", "mode": "isolated"}
    # Each trial's VM its own: a data disk belongs to one VM.
    declaration = {**vm_body(fleet.image, network="lan"), "state": "running"}
    log = fleet.logs / "restart.log"
    with running_server(fleet.ledger_url, log) as first, first.client(token) as client:
        succeeded(client, "/v1/networks/lan", network)
    # Into the create (its volumes, the define, the start) at a moment that varies; when the
    # create was done before the kill, again sooner, under another name.
    delays = [random.Random().uniform(0, KILL_WITHIN), 0.1, 0.0]
    vms = set()
    for trial, delay in enumerate(delays):
        name = f"web{trial}"
        vms.add(name)
        action_id, status = killed_during_create(fleet, log, token, name, declaration, delay)
        print(f"\nkilled the server {delay:.2f} s into the create: the action was {status}")
        if status == "running":
            break
    assert status == "running", "every create ended before the kill"

    restarted = running_server(fleet.ledger_url, log, ["--stale-after", STALE])
    with restarted as second, second.client(token) as client:
        ended = wait_action(client, action_id, RECOVERY_SECONDS)
        assert ended["status"] in ("succeeded", "interrupted"), (ended["error"], ended["progress"])
        assert ended["attempts"] <= 2
        print(f"after the restart the action is {ended['status']} (attempts {ended['attempts']})")
        for vm in sorted(vms):
            retried = succeeded(client, f"/v1/vms/{vm}", declaration)
            assert retried["id"] != action_id
            again = succeeded(client, f"/v1/vms/{vm}", declaration)
            assert not changed(again), again
    check_libvirt_holds_exactly(conn, tenant, {"lan"}, vms)
    check_usage_matches_libvirt(fleet.ledger_url, fleet.uri, tenant)


def changed(action: dict) -> bool:
    """Whether an action's result reports a change (the engine's `changed`)."""
    result = action.get("result") or {}
    return bool(result.get("changed", bool(result.get("plan"))))


def check_libvirt_holds_exactly(
    conn: libvirt.virConnect, tenant: str, networks: set[str], vms: set[str]
) -> None:
    prefix = f"{tenant}_"
    domains = {d.name(): d for d in conn.listAllDomains(0) if d.name().startswith(prefix)}
    assert set(domains) == {prefix + name for name in vms}
    assert {n.name() for n in conn.listAllNetworks(0) if n.name().startswith(prefix)} == {
        prefix + name for name in networks
    }
    used = {path for domain in domains.values() for path in disk_sources(domain)}
    volumes = set()
    for pool in conn.listAllStoragePools(libvirt.VIR_CONNECT_LIST_STORAGE_POOLS_ACTIVE):
        pool.refresh(0)
        volumes |= {v.path() for v in pool.listAllVolumes(0) if v.name().startswith(prefix)}
    assert volumes == used, f"orphans {volumes - used}, missing {used - volumes}"


def disk_sources(domain: libvirt.virDomain) -> set[str]:
    root = ET.fromstring(domain.XMLDesc(0))
    return {
        source.get("file")
        for source in root.findall("./devices/disk[@device='disk']/source")
        if source.get("file")
    }


def check_usage_matches_libvirt(ledger_url: str, uri: str, tenant: str) -> None:
    """As tests/integration/test_usage_intents.py checks it: the open usage rows are libvirt's
    objects with their meters, and no intent is left unresolved."""
    with Ledger.open(ledger_url).store.read() as connection:
        rows = connection.execute(
            sa.select(usage_intervals).where(usage_intervals.c.tenant == tenant)
        ).fetchall()
        pending = connection.execute(
            sa.select(sa.func.count()).where(
                usage_intents.c.tenant == tenant, usage_intents.c.resolved_at.is_(None)
            )
        ).scalar()
    latest = {
        (row.kind, row.name): meter_of(row)
        for row in rows
        if row.ended_at is None and row.state != "absent"
    }
    assert latest == host_meters(Host(uri).inventory(tenant))
    assert pending == 0
