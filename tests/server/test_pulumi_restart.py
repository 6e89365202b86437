"""A `vce serve` restart in the middle of a Pulumi Create: the plugin (started as the CLI starts
it, driven over gRPC) waits for the server to come back at its address, the action resumes
(one restart) or, abandoned as often as the server runs an action again, is interrupted and
the Create fails with a clear error; either way a second `up` (the same Create again, as when the first one's
result never reached the state) converges with nothing created twice: one domain and its
volumes in libvirt, the ledger's open usage rows what libvirt holds, one action that created
the VM.

The kill falls inside the VM's create as in tests/server/test_restart.py: `kill -9` a moment
after a worker claimed the action (varied; the same again sooner, under another name, when
the create was done before the kill); the server is started again on the same ledger and
port with a short `--stale-after`, so it takes up the abandoned action within seconds.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grpc
import libvirt
import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import actions
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from pulumi.runtime.proto import provider_pb2
from vce_server.actions import MAX_ATTEMPTS

from tests.server.conftest import Fleet
from tests.server.test_restart import (
    KILL_WITHIN,
    STALE,
    changed,
    check_libvirt_holds_exactly,
    check_usage_matches_libvirt,
)
from tests.support.pulumi_plugin import Plugin, plain, running_plugin, struct, urn
from tests.support.server import Server, create_token, free_port

pytestmark = pytest.mark.server
# The plugin waits out an unreachable server for 120 s (pulumi_resource_vce.client); the
# restarted server takes up the abandoned action within about 2 x STALE s and runs it again.
CREATE_SECONDS = 180
CLAIM_SECONDS = 60
VM = "vce:index:Vm"
LAN = urn("vce:index:Network", "lan")


def vm_inputs(image: str, name: str) -> dict[str, Any]:
    """A small running VM on the catalogue's image, as a program declares it."""
    return {
        "name": name,
        "vcpus": 1,
        "memoryMib": 64,
        "state": "running",
        "bootDisk": {"image": image, "sizeGib": 1},
        "nics": [{"network": "lan"}],
    }


def checked(plugin: Plugin, resource_urn: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs as Check returns them (through the server's check), which must pass."""
    found, failures = plugin.check(resource_urn, inputs)
    assert failures == [], failures
    return found


def create(plugin: Plugin, resource_urn: str, properties: Mapping[str, Any]):
    """The engine's Create of a checked resource; its id and state."""
    response = plugin.stub.Create(
        provider_pb2.CreateRequest(urn=resource_urn, properties=struct(properties)),
        timeout=CREATE_SECONDS,
    )
    return response.id, plain(response.properties)


def actions_of(ledger_url: str, tenant: str, target: str) -> list[Any]:
    """The tenant's actions on `target` (e.g. `vms/web0`), oldest first."""
    with Ledger.open(ledger_url).store.read() as connection:
        return connection.execute(
            sa.select(actions)
            .where(actions.c.tenant == tenant, actions.c.target == target)
            .order_by(actions.c.seq)
        ).fetchall()


def wait_claimed(ledger_url: str, tenant: str, target: str, attempt: int) -> Any:
    """The action of the Create once a worker has it for the `attempt`th time (or it has
    ended)."""
    deadline = time.monotonic() + CLAIM_SECONDS
    while time.monotonic() < deadline:
        found = [
            row
            for row in actions_of(ledger_url, tenant, target)
            if row.status != "queued" and row.attempts >= attempt
        ]
        if found:
            return found[-1]
        time.sleep(0.005)
    raise AssertionError(f"no worker took the action on {target} in {CLAIM_SECONDS} s")


def action_row(ledger_url: str, action_id: str) -> Any:
    with Ledger.open(ledger_url).store.read() as connection:
        return connection.execute(sa.select(actions).where(actions.c.id == action_id)).one()


def outcome_of(created: Future) -> tuple[str, str]:
    """How the Create that waited across the restart ended: ("created", id) or ("failed",
    the error the user reads)."""
    try:
        resource_id, _state = created.result(timeout=CREATE_SECONDS + 10)
    except grpc.RpcError as error:
        return "failed", error.details()
    return "created", resource_id


@pytest.mark.parametrize("kills", [1, MAX_ATTEMPTS], ids=["resumed", "interrupted"])
def test_a_restart_during_a_create_is_waited_out_and_a_second_up_converges(
    fleet: Fleet, conn: libvirt.virConnect, new_tenant, subnet: str, kills: int
):
    """`kills` times the server dies while the action runs: once, and the restarted server
    runs it again to its end; as often as the server runs an abandoned action, and it is
    marked interrupted."""
    tenant = new_tenant(fleet)
    token = create_token(fleet.ledger_url, tenant)
    port = free_port()

    def start() -> Server:
        log = fleet.logs / "pulumi-restart.log"
        return Server(fleet.ledger_url, log, ["--stale-after", STALE], port).start()

    # Into the create at a moment that varies (a re-run at once); when the create was done
    # before a kill, again sooner, under another name.
    delays = [random.Random().uniform(0, KILL_WITHIN), 0.1, 0.0]
    creates: dict[str, dict[str, Any]] = {}
    # The plugin stops first: a Create still waiting then ends, and the pool with it.
    with ThreadPoolExecutor(max_workers=1) as pool, running_plugin() as plugin:
        server = start()
        try:
            plugin.configure({"endpoint": server.url, "token": token})
            network = {"cidr": f"{subnet}.0/24", "mode": "isolated"}
            create(plugin, LAN, checked(plugin, LAN, network))
            for trial, delay in enumerate(delays):
                name = f"web{trial}"
                creates[name] = checked(plugin, urn(VM, name), vm_inputs(fleet.image, name))
                created = pool.submit(create, plugin, urn(VM, name), creates[name])
                statuses = []
                for attempt in range(1, kills + 1):
                    action = wait_claimed(fleet.ledger_url, tenant, f"vms/{name}", attempt)
                    time.sleep(delay if attempt == 1 else 0.0)
                    server.kill()
                    statuses.append(action_row(fleet.ledger_url, action.id).status)
                    server = start()
                    if statuses[-1] != "running":
                        break
                outcome, detail = outcome_of(created)
                print(f"\nkilled the server {delay:.2f} s into the create: the action was "
                      f"{statuses}; the Create that waited: {outcome} ({detail})")  # fmt: skip
                if statuses == ["running"] * kills:
                    break
            assert statuses == ["running"] * kills, "a create ended before a kill every time"
            expected = "interrupted" if kills >= MAX_ATTEMPTS else "succeeded"
            check_waited_out(fleet, action.id, f"{VM} {name}", expected, (outcome, detail))

            # A second `pulumi up`: every Create again, with the same inputs.
            for vm, inputs in creates.items():
                resource_id, state = create(plugin, urn(VM, vm), inputs)
                assert resource_id == f"{fleet.zone}/{vm}" and state["powerState"] == "running"
        finally:
            server.stop()
    check_libvirt_holds_exactly(conn, tenant, {"lan"}, set(creates))
    check_usage_matches_libvirt(fleet.ledger_url, fleet.uri, tenant)
    for vm in creates:
        check_created_once(fleet.ledger_url, tenant, vm)


def check_waited_out(
    fleet: Fleet, action_id: str, resource: str, expected: str, outcome: tuple[str, str]
) -> None:
    """The action the restarts cut into ended as `expected` (finished by the restarted server,
    or interrupted), and the Create that waited across them with the VM or an error saying
    so."""
    row = action_row(fleet.ledger_url, action_id)
    assert row.status == expected and row.attempts <= MAX_ATTEMPTS, row
    ended, detail = outcome
    if expected == "interrupted":
        # Clear: the resource, what became of its action, no stack.
        assert ended == "failed", outcome
        assert resource in detail and action_id in detail and "interrupted" in detail, detail
        assert "Traceback" not in detail, detail
    else:
        assert outcome == ("created", f"{fleet.zone}/{resource.rsplit(' ', 1)[1]}"), outcome


def check_created_once(ledger_url: str, tenant: str, vm: str) -> None:
    """Of the VM's actions, at most one changed anything; each one after the first that
    succeeded found nothing to do."""
    rows = actions_of(ledger_url, tenant, f"vms/{vm}")
    results = [(row.status, json.loads(row.result or "{}")) for row in rows]
    assert results[-1][0] == "succeeded", results
    changing = [result for status, result in results if status == "succeeded" and changed(result)]
    assert len(changing) <= 1, changing
    first = next(i for i, (status, _result) in enumerate(results) if status == "succeeded")
    assert not any(changed(result) for _status, result in results[first + 1 :]), results
