"""The control plane's resources service against a real libvirtd, called in-process as its
action workers call it: a host record pointing at the private libvirtd, a network, a disk and
a VM declared, read back from libvirt, declared again without change, planned as the
environment's check mode plans, powered, and removed; another tenant sees none of it."""

from __future__ import annotations

import json
import uuid

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import VceError
from ansible_collections.vce.kvm.plugins.module_utils.engine.facade import run_environment
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import (
    actions,
    hosts,
    runs,
    usage_intervals,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import (
    Ledger,
    acting_as,
    utcnow,
)
from vce_server.errors import ApiError, from_engine
from vce_server.service.fleet import scrubbed
from vce_server.service.resources import Resources

from tests.integration.helpers import domain, tenant_objects, volume
from tests.support.host_records import add_host
from tests.support.images import register_image
from tests.support.ledger import register

pytestmark = pytest.mark.integration
ZONE = "api-zone"  # a zone of this file's own: no other test's host is placed in it
HOST = "api-host"


@pytest.fixture
def resources(uri, ledger_url, blank_image_path):
    """The service on the session's ledger, whose one host in ZONE is the private libvirtd."""
    with Ledger.open(ledger_url).store.read() as connection:
        known = connection.execute(sa.select(hosts.c.name).where(hosts.c.name == HOST)).first()
    if known is None:
        add_host(ledger_url, HOST, ZONE, uri)
    register_image(ledger_url, blank_image_path, name="blank", zone=ZONE)
    return Resources(ledger_url)


class Worker:
    """What the action queue does for each action: a row, the handler run as that action's
    run, the row's end."""

    def __init__(self, resources: Resources, ledger_url: str) -> None:
        self.resources = resources
        self.ledger = Ledger.open(ledger_url)
        self.seq = 0

    def run(self, kind: str, target: str, payload: dict) -> dict:
        action = str(uuid.uuid4())
        self.seq += 1
        progress: list[dict] = []
        with acting_as(f"api-{action}-1", "api:vce_it"):
            result = self.resources.handlers()[kind](payload, progress.append)
        assert progress and progress[0]["step"] == "run"
        self.record(action, kind, target, payload)
        return result

    def record(self, action: str, kind: str, target: str, payload: dict) -> None:
        now = utcnow()
        row = {"id": action, "seq": int(now.timestamp() * 1e6) + self.seq,
               "tenant": payload["tenant"], "kind": kind, "target": target,
               "status": "succeeded", "request": json.dumps(payload, sort_keys=True),
               "request_hash": "-", "token": "vce_it", "request_id": "-", "attempts": 1,
               "created_at": now, "finished_at": now}  # fmt: skip
        with self.ledger.store.write() as connection:
            connection.execute(sa.insert(actions).values(**row))

    def put(self, tenant: str, kind: str, name: str, body: dict) -> dict:
        payload = self.resources.validate(tenant, kind, name, body)
        return self.run("put", f"{kind}/{name}", payload)


def declarations(subnet: str, image: str) -> dict[str, dict]:
    return {
        "networks": {"cidr": f"{subnet}.0/24", "mode": "isolated"},
        "disks": {"size_gib": 1},
        "vms": {
            "memory_mib": 64,
            "boot_disk": {"image": image, "size_gib": 1},
            "disks": ["data"],
            "nics": [{"network": "lan", "ip": f"{subnet}.10"}],
            "shutdown_timeout": 2,
        },
    }


NAMES = {"networks": "lan", "disks": "data", "vms": "web"}


def test_put_read_plan_power_and_delete(resources, ledger_url, uri, conn, tenant, subnet, pool):
    register(ledger_url, "other-api")
    worker = Worker(resources, ledger_url)
    declared = declarations(subnet, "blank")
    before = tenant_objects(conn, tenant)

    for kind in ("networks", "disks", "vms"):
        made = worker.put(tenant, kind, NAMES[kind], declared[kind])
        assert made["plan"], kind
        assert made["object"]["zone"] == ZONE
        assert uri not in json.dumps(made)
    web = domain(conn, f"{tenant}_web")
    assert web.state == "running"
    assert (web.memory_mib, web.nics[0].network) == (64, f"{tenant}_lan")
    assert volume(conn, pool, f"{tenant}_data.qcow2")["capacity"] == 1024**3
    assert conn.networkLookupByName(f"{tenant}_lan").isActive()
    read = resources.read(tenant, "vms", "web")
    assert (read["state"], read["memory_mib"], read["zone"]) == ("running", 64, ZONE)
    assert [vm["name"] for vm in resources.list(tenant, "vms")] == ["web"]

    for kind in ("networks", "disks", "vms"):
        assert worker.put(tenant, kind, NAMES[kind], declared[kind])["plan"] == [], kind

    for kind in ("networks", "disks", "vms"):
        with pytest.raises(ApiError) as error:
            resources.read("other-api", kind, NAMES[kind])
        assert error.value.status == 404
        assert resources.list("other-api", kind) == []

    # lan2's range: one no other test file uses (tests of other sessions run beside this one).
    environment = {
        "zone": ZONE,
        "networks": [{"name": "lan", **declared["networks"]},
                     {"name": "lan2", "cidr": f"10.219.{subnet.split('.')[-1]}.0/24",
                      "mode": "isolated"}],
        "disks": [{"name": "data", **declared["disks"]}],
        "vms": [{"name": "web", **without_timeout(declared["vms"]), "vcpus": 2,
                 "max_vcpus": 2}],
    }  # fmt: skip
    shown = resources.plan(tenant, environment)
    engine = run_environment(
        {
            "uri": uri,
            "tenant": tenant,
            "ledger_url": ledger_url,
            "image_dirs": [],
            **environment,
        },
        check_mode=True,
    )
    # What check mode shows, but the host's own tables (the guard names every tenant's networks).
    assert shown == scrubbed([c for c in engine.plan if c["kind"] != "firewall"], resources.scrub)
    assert uri not in json.dumps(shown)
    assert {(c["kind"], c["name"]) for c in shown} >= {("network", "lan2"), ("vm", "web")}
    assert f"network:{tenant}_lan2" not in tenant_objects(conn, tenant)

    block = resources.validate_block(tenant, "web", True, "abuse report")
    held = worker.run("block", "vms/web", block)
    assert [c["action"] for c in held["plan"]] == ["block"]
    assert held["object"]["state"] == "paused"
    stop = resources.validate_vm_action(tenant, "web", "stop")
    with pytest.raises(VceError) as refused:
        worker.run("vm_action", "vms/web", stop)
    answer = from_engine(refused.value, resources.scrub)
    assert (answer.status, answer.code) == (409, "refused")
    assert "blocked by the operator" in answer.message
    assert domain(conn, f"{tenant}_web").state != "shutoff"
    worker.run("block", "vms/web", resources.validate_block(tenant, "web", False, None))
    assert domain(conn, f"{tenant}_web").state == "running"

    stopped = worker.run(
        "vm_action", "vms/web", resources.validate_vm_action(tenant, "web", "stop")
    )
    assert "stop" in [c["action"] for c in stopped["plan"]]
    assert domain(conn, f"{tenant}_web").state == "shutoff"
    started = worker.run(
        "vm_action", "vms/web", resources.validate_vm_action(tenant, "web", "start")
    )
    assert domain(conn, f"{tenant}_web").state == "running"
    assert started["object"]["state"] == "running"
    rebooted = worker.run(
        "vm_action", "vms/web", resources.validate_vm_action(tenant, "web", "reboot")
    )
    assert [c["action"] for c in rebooted["plan"] if c["field"] == "state"] == ["stop", "start"]
    assert domain(conn, f"{tenant}_web").state == "running"
    with pytest.raises(ApiError) as error:
        resources.validate_vm_action("other-api", "web", "stop")
    assert error.value.status == 404

    for kind in ("vms", "disks", "networks"):
        payload = {"tenant": tenant, "kind": kind, "name": NAMES[kind], "zone": None}
        gone = worker.run("delete", f"{kind}/{NAMES[kind]}", payload)
        assert gone["plan"], kind
    assert tenant_objects(conn, tenant) == before

    with Ledger.open(ledger_url).store.read() as connection:
        recorded = connection.execute(
            sa.select(runs.c.source, runs.c.actor, runs.c.result, runs.c.detail).where(
                runs.c.id.like("api-%")
            )
        ).all()
        usage = connection.execute(
            sa.select(usage_intervals.c.kind, usage_intervals.c.run_id).where(
                usage_intervals.c.tenant == tenant
            )
        ).all()
    mine = [r for r in recorded if json.loads(r.detail)["tenant"] == tenant]
    # 6 puts, a block, a refused stop, an unblock, 3 VM actions, 3 deletes.
    assert len(mine) == 15
    results = sorted((r.source, r.actor, r.result) for r in mine)
    assert results == [("api", "api:vce_it", "failed")] + [("api", "api:vce_it", "ok")] * 14
    assert {row.kind for row in usage} >= {"vm", "disk"}
    assert all(row.run_id.startswith("api-") for row in usage)


def without_timeout(vm: dict) -> dict:
    return {k: v for k, v in vm.items() if k != "shutdown_timeout"}
