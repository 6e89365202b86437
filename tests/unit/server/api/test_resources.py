"""The resources router over HTTP (an in-process client) with the real service, the real action
queue and libvirt's test driver: only the token check is replaced by a fixed principal."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import VceError
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from vce_server.actions import ActionQueue
from vce_server.api import resources as resources_api
from vce_server.api.deps import Context, caller
from vce_server.errors import ApiError, from_engine
from vce_server.principal import Principal
from vce_server.service.checks import Checks
from vce_server.service.resources import Resources
from vce_server.settings import Settings

from tests.support.host_records import add_host, closing_connections, private_host
from tests.support.images import make_image, register_image
from tests.support.ledger import register

KINDS = ("networks", "disks", "vms", "public_ips", "zone_links", "backup_schedules")


def principal(tenant: str, *scopes: str) -> Principal:
    return Principal("vce_0000test", f"user-{tenant}", "customer", tenant, frozenset(scopes))


@pytest.fixture
def connections(monkeypatch):
    yield from closing_connections(monkeypatch)


@pytest.fixture
def served(connections, ledger_url, tmp_path) -> Iterator[tuple[FastAPI, Context]]:
    register(ledger_url, "acme")
    register(ledger_url, "other")
    add_host(ledger_url, "kvm1", "zone-a", private_host(tmp_path / "kvm1.xml"))
    ledger = Ledger.open(ledger_url)
    resources = Resources(ledger_url)
    queue = ActionQueue(ledger, Settings(ledger_url=ledger_url, workers=1), resources.scrub)
    for kind, handler in resources.handlers().items():
        queue.register(kind, handler)
    ctx = Context(Settings(ledger_url=ledger_url), ledger, None, queue, resources, None, None, None,
                  Checks(resources))  # fmt: skip
    app = FastAPI()
    app.include_router(resources_api.router)
    app.state.context = ctx

    async def api_error(_request: Request, error: Exception) -> JSONResponse:
        if isinstance(error, VceError):
            error = from_engine(error, resources.scrub)
        return JSONResponse(error.body("test"), status_code=error.status)  # type: ignore[attr-defined]

    @app.middleware("http")
    async def request_ids(request: Request, call_next):  # app.py's RequestIds does this
        request.state.request_id = "test"
        return await call_next(request)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(VceError, api_error)
    queue.start()
    try:
        yield app, ctx
    finally:
        queue.stop(10.0)


def client_as(app: FastAPI, who: Principal) -> TestClient:
    app.dependency_overrides[caller] = lambda: who
    return TestClient(app)


def finished(client: TestClient, answer) -> dict:
    assert answer.status_code == 202, answer.text
    action = answer.json()["action"]
    ctx = client.app.state.context
    view = ctx.actions.wait(action["id"], "acme", 30)
    assert view["status"] == "succeeded", view["error"]
    return view


def test_every_kind_has_its_own_paths():
    paths = {route.path for route in resources_api.router.routes}
    for kind in KINDS:
        assert {f"/v1/{kind}", f"/v1/{kind}/{{name}}"} <= paths
    assert {f"/v1/vms/{{name}}/actions/{a}" for a in ("start", "stop", "reboot")} <= paths


def test_a_network_through_the_api(served):
    app, _ctx = served
    acme = client_as(app, principal("acme", "read", "write"))
    assert acme.get("/v1/zones").json() == {"zones": ["zone-a"]}
    view = finished(acme, acme.put("/v1/networks/lan", json={"cidr": "10.40.0.0/24"}))
    assert view["result"]["object"]["cidr"] == "10.40.0.0/24"
    assert [c["action"] for c in view["plan"]][:1] == ["create"]
    assert acme.get("/v1/networks/lan").json()["object"]["zone"] == "zone-a"
    assert [n["name"] for n in acme.get("/v1/networks").json()["networks"]] == ["lan"]
    again = finished(acme, acme.put("/v1/networks/lan", json={"cidr": "10.40.0.0/24"}))
    assert again["plan"] == []
    planned = acme.post("/v1/plan", json={"networks": [{"name": "lan2", "cidr": "10.41.0.0/24"}]})
    assert planned.status_code == 200
    assert [(c["kind"], c["name"]) for c in planned.json()["plan"]][:1] == [("network", "lan2")]

    other = client_as(app, principal("other", "read", "write"))
    assert other.get("/v1/networks/lan").status_code == 404
    assert other.delete("/v1/networks/lan").status_code == 404
    assert other.get("/v1/networks").json() == {"networks": []}

    acme = client_as(app, principal("acme", "read", "write"))
    finished(acme, acme.delete("/v1/networks/lan"))
    assert acme.get("/v1/networks/lan").status_code == 404


def test_refusals_have_the_field_path(served):
    app, _ctx = served
    acme = client_as(app, principal("acme", "read", "write"))
    answer = acme.put("/v1/networks/lan", json={"cidr": "10.40.0.0/24", "uri": "qemu:///system"})
    assert answer.status_code == 422
    assert answer.json()["error"]["fields"] == [{"path": "uri", "reason": answer.json()["error"]
                                                 ["fields"][0]["reason"]}]  # fmt: skip
    overlap = acme.post("/v1/plan", json={"networks": [{"name": "l", "cidr": "192.168.122.0/24"}]})
    assert overlap.status_code == 422
    assert overlap.json()["error"]["fields"][0]["path"] == "networks[0].cidr"
    assert "test:" not in overlap.text
    assert acme.get("/v1/hosts").status_code == 404
    assert acme.post("/v1/vms/web/actions/explode").status_code == 404
    assert acme.post("/v1/vms/web/actions/stop").status_code == 404


def test_backups_images_and_actions_of_nothing(served):
    app, _ctx = served
    acme = client_as(app, principal("acme", "read", "write"))
    assert acme.get("/v1/images").json() == {"images": []}
    assert acme.get("/v1/backups", params={"vm": "web"}).json() == {"backups": []}
    assert acme.get("/v1/backups", params={"vm": "../web"}).status_code == 422
    assert (
        acme.post("/v1/backups/" + "a" * 40 + "/restore", json={"new_disk": "x"}).status_code == 404
    )
    assert acme.post("/v1/vms/web/actions/reboot").status_code == 404
    assert acme.delete("/v1/disks/nothing").status_code == 404


def test_the_openapi_document_lists_every_path(served):
    app, _ctx = served
    paths = app.openapi()["paths"]
    assert set(paths["/v1/vms/{name}"]) == {"get", "put", "delete"}
    assert "/v1/backup_schedules" in paths and "/v1/plan" in paths


def test_an_operator_token_has_no_resources(served):
    app, _ctx = served
    operator = Principal("vce_0000oper", "op", "operator", None, frozenset({"read", "write"}))
    assert client_as(app, operator).get("/v1/vms").status_code == 403


def test_a_read_token_may_not_change(served):
    app, _ctx = served
    reader = client_as(app, principal("acme", "read"))
    assert reader.put("/v1/disks/d", json={"size_gib": 1}).status_code == 403
    assert reader.get("/v1/disks").status_code == 200


# -- checks, replays, image names, disks attached by their own attach_to -----------------------

VM = {"memory_mib": 128, "state": "stopped",
      "boot_disk": {"image": "base", "size_gib": 1, "pool": "default-pool"}}  # fmt: skip


@pytest.fixture
def imaged(served, ledger_url, tmp_path) -> tuple[FastAPI, Context]:
    """The served zone with the image `base` in its catalogue."""
    register_image(ledger_url, make_image(tmp_path / "base.qcow2"), name="base", zone="zone-a")
    return served


def test_a_check_through_the_api_with_a_read_token(served):
    app, ctx = served
    reader = client_as(app, principal("acme", "read"))
    answer = reader.post("/v1/disks/data/check", json={"declaration": {"size_gib": 2}})
    assert (answer.status_code, answer.json()) == (200, {"usage": {"disk_gib": "2"}})
    bad = reader.post("/v1/disks/data/check", json={"declaration": {"size_gib": "big"}})
    assert bad.status_code == 422
    assert bad.json()["error"]["fields"][0]["path"] == "size_gib"
    over = reader.post(
        "/v1/disks/data/check",
        json={"declaration": {"size_gib": 2}, "pending": {"disk_gib": "999"}},
    )
    assert over.status_code == 409
    error = over.json()["error"]
    assert error["code"] == "quota_exceeded"
    assert [f["path"] for f in error["fields"]] == ["size_gib"]
    assert error["fields"][0]["reason"].startswith("disk_gib (disk): limit 1000")
    assert "test:" not in over.text and "kvm1" not in over.text
    assert reader.post("/v1/hosts/kvm1/check", json={}).status_code == 404
    assert ctx.resources.fleet.placed("acme") == []


def test_a_replayed_change_says_so(served):
    app, _ctx = served
    acme = client_as(app, principal("acme", "read", "write"))
    headers = {"Idempotency-Key": "replay-1"}
    first = acme.put("/v1/networks/lan", json={"cidr": "10.42.0.0/24"}, headers=headers)
    finished(acme, first)
    again = acme.put("/v1/networks/lan", json={"cidr": "10.42.0.0/24"}, headers=headers)
    assert again.status_code == 202
    assert again.json()["action"]["id"] == first.json()["action"]["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    unkeyed = acme.put("/v1/networks/lan", json={"cidr": "10.42.0.0/24"})
    assert "Idempotent-Replayed" not in unkeyed.headers
    finished(acme, unkeyed)


def test_backing_images_are_shown_by_name(imaged):
    app, _ctx = imaged
    acme = client_as(app, principal("acme", "read", "write"))
    finished(acme, acme.put("/v1/vms/web", json=VM))
    disk = {"size_gib": 1, "pool": "default-pool", "backing_image": "base"}
    finished(acme, acme.put("/v1/disks/data", json=disk))
    finished(acme, acme.put("/v1/disks/copy", json={**disk, "backing_image": "data"}))
    vm = acme.get("/v1/vms/web").json()["object"]
    assert vm["boot_disk"]["backing_image"] == "base"
    assert acme.get("/v1/disks/data").json()["object"]["backing_image"] == "base"
    assert acme.get("/v1/disks/copy").json()["object"]["backing_image"] == "data"
    listed = {d["name"]: d["backing_image"] for d in acme.get("/v1/disks").json()["disks"]}
    assert listed == {"web.boot": "base", "data": "base", "copy": "data"}
    [listed_vm] = acme.get("/v1/vms").json()["vms"]
    assert listed_vm["boot_disk"]["backing_image"] == "base"


def test_a_disk_attached_by_its_own_attach_to_is_detached_before_its_removal(imaged):
    """The test driver attaches and detaches nothing (tests/server does it on a real libvirtd):
    the VM is defined with the disk by the engine, as an operator's playbook would, the disk is
    declared attached to it through the API, and its removal starts with the detach."""
    app, ctx = imaged
    acme = client_as(app, principal("acme", "read", "write"))
    finished(acme, acme.put("/v1/disks/data", json={"size_gib": 1, "pool": "default-pool"}))
    host = ctx.resources.fleet.hosts()[0]
    facade.run_vm({**ctx.resources.params("acme", host), **VM, "name": "web", "zone": "zone-a",
                   "image_dirs": [], "disks": ["data"]})  # fmt: skip
    attached = {"size_gib": 1, "pool": "default-pool", "attach_to": "web"}
    assert finished(acme, acme.put("/v1/disks/data", json=attached))["plan"] == []
    answer = acme.delete("/v1/disks/data")
    view = ctx.actions.wait(answer.json()["action"]["id"], "acme", 30)
    assert view["status"] == "failed"
    assert "failed: disk data detach" in view["error"]["message"]
    assert "not supported" in view["error"]["message"]
    assert acme.get("/v1/disks/data").json()["object"]["attached_to"] == "web"


def test_a_disk_a_vms_declaration_holds_is_still_refused(imaged):
    app, ctx = imaged
    acme = client_as(app, principal("acme", "read", "write"))
    finished(acme, acme.put("/v1/disks/data", json={"size_gib": 1, "pool": "default-pool"}))
    finished(acme, acme.put("/v1/vms/web", json={**VM, "disks": ["data"]}))
    answer = acme.delete("/v1/disks/data")
    assert answer.status_code == 202
    view = ctx.actions.wait(answer.json()["action"]["id"], "acme", 30)
    assert view["status"] == "failed"
    assert "attached to VM 'web'" in view["error"]["message"]
    assert acme.get("/v1/disks/data").json()["object"]["attached_to"] == "web"
