"""A real `vce serve` on the private libvirtd:

- POST /v1/{kind}/{name}/check answers what a declaration adds (only the growth of an existing
  VM), refuses it over the quota with the client's pending usage on the declaration's field,
  and leaves the ledger (but the audit trail) and libvirt exactly as they were;
- a VM's boot disk shows its base image by the catalogue's name;
- a disk attached through its own `attach_to` is detached then removed by its DELETE, while a
  disk a VM's `disks` declaration holds stays, refused by the engine.
"""

from __future__ import annotations

import libvirt
import pytest

from tests.server.conftest import Fleet
from tests.support.server import (
    Server,
    changes,
    create_token,
    send,
    state_of,
    succeeded,
    vm_body,
    wait_action,
)

pytestmark = pytest.mark.server


def disk_paths(conn: libvirt.virConnect, domain: str) -> list[str]:
    """The source files of the domain's disks, as its persistent definition has them."""
    xml = conn.lookupByName(domain).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    return [part.split("'")[1] for part in xml.split("<source file=")[1:]]


def test_a_check_counts_the_growth_and_the_pending_usage_and_changes_nothing(
    server: Server, fleet: Fleet, conn: libvirt.virConnect, new_tenant
):
    tenant = new_tenant(fleet, vcpus=3)
    token = create_token(fleet.ledger_url, tenant)
    with server.client(token) as client:
        succeeded(client, "/v1/vms/web", vm_body(fleet.image))
        before = state_of(fleet.ledger_url, conn, host_dir=fleet.host_dir)
        same = send(client, "post", "/v1/vms/web/check", json={"declaration": vm_body(fleet.image)})
        assert (same.status_code, same.json()) == (200, {"usage": {}})
        grown = {**vm_body(fleet.image), "vcpus": 2, "memory_mib": 128}
        answer = send(client, "post", "/v1/vms/web/check", json={"declaration": grown})
        assert answer.json() == {"usage": {"vcpus": 1, "ram_gib": "0.0625"}}
        new = send(client, "post", "/v1/vms/db/check", json={"declaration": vm_body(fleet.image)})
        assert new.json() == {"usage": {"vms": 1, "vcpus": 1, "ram_gib": "0.0625", "disk_gib": "1"}}
        over = send(
            client, "post", "/v1/vms/db/check",
            json={"declaration": vm_body(fleet.image), "pending": {"vcpus": 2}},
        )  # fmt: skip
        assert over.status_code == 409, over.text
        error = over.json()["error"]
        assert error["code"] == "quota_exceeded"
        assert [(f["path"], f["reason"]) for f in error["fields"]] == [
            ("vcpus", "vcpus (vCPUs): limit 3, used 3, requested 1 (would be 4)")
        ]
        assert fleet.uri not in over.text
        declaration = {**vm_body(fleet.image), "nics": [{"network": "lan", "ip": "10.0.0.300"}]}
        bad = send(client, "post", "/v1/vms/db/check", json={"declaration": declaration})
        put = send(client, "put", "/v1/vms/db", json=declaration)
        assert bad.status_code == put.status_code == 422, bad.text
        assert bad.json()["error"]["fields"] == put.json()["error"]["fields"]
        assert bad.json()["error"]["fields"][0]["path"] == "nics[0].ip"
        assert client.get("/v1/actions").json()["actions"][0]["target"] == "vms/web"
        shown = client.get("/v1/vms/web").json()["object"]
        assert shown["boot_disk"]["backing_image"] == fleet.image
    assert changes(before, state_of(fleet.ledger_url, conn, host_dir=fleet.host_dir)) == {}


def test_a_disk_attached_by_its_own_attach_to_is_detached_then_removed(
    server: Server, fleet: Fleet, conn: libvirt.virConnect, new_tenant
):
    tenant = new_tenant(fleet)
    token = create_token(fleet.ledger_url, tenant)
    with server.client(token) as client:
        succeeded(client, "/v1/vms/web", vm_body(fleet.image))
        succeeded(client, "/v1/disks/data", {"size_gib": 1, "attach_to": "web"})
        assert client.get("/v1/disks/data").json()["object"]["attached_to"] == "web"
        assert [p for p in disk_paths(conn, f"{tenant}_web") if p.endswith("_data.qcow2")]
        removed = client.delete("/v1/disks/data")
        assert removed.status_code == 202, removed.text
        gone = wait_action(client, removed.json()["action"]["id"])
        assert gone["status"] == "succeeded", gone
        assert [(c["name"], c["action"]) for c in gone["plan"]] == [
            ("data", "detach"),
            ("data", "delete"),
        ]
        assert client.get("/v1/disks/data").status_code == 404
    assert not [p for p in disk_paths(conn, f"{tenant}_web") if p.endswith("_data.qcow2")]
    volumes = [v.name() for p in conn.listAllStoragePools(0) for v in p.listAllVolumes(0)]
    assert f"{tenant}_data.qcow2" not in volumes


def test_a_disk_a_vms_declaration_holds_is_refused_and_stays(
    server: Server, fleet: Fleet, conn: libvirt.virConnect, new_tenant
):
    tenant = new_tenant(fleet)
    token = create_token(fleet.ledger_url, tenant)
    with server.client(token) as client:
        succeeded(client, "/v1/disks/data", {"size_gib": 1})
        succeeded(client, "/v1/vms/web", vm_body(fleet.image, disk="data"))
        removed = client.delete("/v1/disks/data")
        refused = wait_action(client, removed.json()["action"]["id"])
        assert refused["status"] == "failed", refused
        assert "attached to VM 'web'" in refused["error"]["message"]
        assert client.get("/v1/disks/data").json()["object"]["attached_to"] == "web"
    assert [p for p in disk_paths(conn, f"{tenant}_web") if p.endswith("_data.qcow2")]


def test_a_vm_declared_without_disks_keeps_a_disk_its_attach_to_attached(
    server: Server, fleet: Fleet, conn: libvirt.virConnect, new_tenant
):
    """A VM's update without `disks` (a Pulumi Vm beside a Disk with attachTo) leaves the
    disk attached; `disks: []` says the VM has no extra disk, and detaches it."""
    tenant = new_tenant(fleet)
    token = create_token(fleet.ledger_url, tenant)
    with server.client(token) as client:
        succeeded(client, "/v1/vms/web", vm_body(fleet.image))
        succeeded(client, "/v1/disks/data", {"size_gib": 1, "attach_to": "web"})
        resized = succeeded(client, "/v1/vms/web", {**vm_body(fleet.image), "memory_mib": 96})
        assert [c for c in resized["plan"] if c.get("action") == "detach"] == []
        assert client.get("/v1/disks/data").json()["object"]["attached_to"] == "web"
        assert [p for p in disk_paths(conn, f"{tenant}_web") if p.endswith("_data.qcow2")]
        emptied = succeeded(client, "/v1/vms/web", {**vm_body(fleet.image), "disks": []})
        assert [c["field"] for c in emptied["plan"] if c["action"] == "detach"] == ["disk data"]
        assert client.get("/v1/disks/data").json()["object"]["attached_to"] is None
    assert not [p for p in disk_paths(conn, f"{tenant}_web") if p.endswith("_data.qcow2")]
