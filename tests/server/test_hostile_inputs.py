"""The hardening issue's bad input (tests/cli/test_hostile_inputs.py, tests/unit/core/test_spec.py)
sent where a customer can send it, the API: names with '/', '..', NUL, a newline, a lookalike
letter, oversized and negative values, keys only an operator's run may set (uri, host_command,
ledger_url, tenant, image_dirs, host, pools), a host path as an image. Each answers 422 with the
field's path in error.fields, and the ledger and libvirt are exactly as before."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import libvirt
import pytest

from tests.server.conftest import Fleet, next_subnet
from tests.support.ledger import register
from tests.support.server import (
    Server,
    changes,
    create_token,
    error_of,
    send,
    state_of,
    succeeded,
    vm_body,
    wait_action,
)
from tools.cleanup import remove_prefixed

pytestmark = pytest.mark.server
HUGE = 10**30
IMAGE = "blank"  # the fleet's catalogue image (tests/server/conftest.py)


def vm(**changed: Any) -> dict[str, Any]:
    return {**vm_body(IMAGE), **changed}


def boot(**changed: Any) -> dict[str, Any]:
    return vm(boot_disk={"image": IMAGE, "size_gib": 1, **changed})


NETWORK = {"cidr": "10.214.250.0/24", "mode": "isolated"}

# (method, path, body or None, the field path error.fields must name). A name in the path is
# named "name" by the API, a query parameter by its name.
CASES: dict[str, tuple[str, str, Any, str]] = {
    "VM name '..'": ("put", "/v1/vms/%2e%2e", vm(), "name"),
    "VM name with a newline": ("put", "/v1/vms/" + quote("web\n"), vm(), "name"),
    "VM name with NUL": ("put", "/v1/vms/" + quote("web\0"), vm(), "name"),
    "VM name with a Cyrillic e": ("put", "/v1/vms/" + quote("w\u0435b"), vm(), "name"),
    "VM name with a fullwidth letter": ("put", "/v1/vms/" + quote("\uff57eb"), vm(), "name"),
    "VM name of 300 letters": ("put", "/v1/vms/" + "a" * 300, vm(), "name"),
    "VM name with an escape": ("put", "/v1/vms/" + quote("a\x1bb"), vm(), "name"),
    "disk name with a space": ("put", "/v1/disks/" + quote("a b"), {"size_gib": 1}, "name"),
    "network name with a quote": ("put", "/v1/networks/" + quote("it's"), NETWORK, "name"),
    "memory negative": ("put", "/v1/vms/ok", vm(memory_mib=-5), "memory_mib"),
    "memory oversized": ("put", "/v1/vms/ok", vm(memory_mib=HUGE), "memory_mib"),
    "memory as Arabic-Indic digits": ("put", "/v1/vms/ok", vm(memory_mib="\u0663"), "memory_mib"),
    "vcpus zero": ("put", "/v1/vms/ok", vm(vcpus=0), "vcpus"),
    "vcpus as text '--5'": ("put", "/v1/vms/ok", vm(vcpus="--5"), "vcpus"),
    "boot disk size negative": ("put", "/v1/vms/ok", boot(size_gib=-1), "boot_disk.size_gib"),
    "boot disk size oversized": ("put", "/v1/vms/ok", boot(size_gib=HUGE), "boot_disk.size_gib"),
    "image a host path": ("put", "/v1/vms/ok", boot(image="/etc/passwd"), "boot_disk.image"),
    "image climbing out": (
        "put",
        "/v1/vms/ok",
        boot(image="../../etc/shadow"),
        "boot_disk.image",
    ),
    "image with a newline": ("put", "/v1/vms/ok", boot(image="blank\n"), "boot_disk.image"),
    "image format unknown": (
        "put",
        "/v1/vms/ok",
        boot(image_format="vmdk"),
        "boot_disk.image_format",
    ),
    "NIC network with a slash": (
        "put",
        "/v1/vms/ok",
        vm(nics=[{"network": "a/b"}]),
        "nics[0].network",
    ),
    "NIC MAC multicast": (
        "put",
        "/v1/vms/ok",
        vm(nics=[{"network": "lan", "mac": "01:00:5e:00:00:01"}]),
        "nics[0].mac",
    ),
    "data disk '..'": ("put", "/v1/vms/ok", vm(disks=["../x"]), "disks[0]"),
    "state unknown": ("put", "/v1/vms/ok", vm(state="paused"), "state"),
    "cloud-init not YAML": (
        "put",
        "/v1/vms/ok",
        vm(cloud_init={"user_data": "#cloud-config\na: [b\n"}),
        "cloud_init.user_data",
    ),
    "VM key uri": ("put", "/v1/vms/ok", vm(uri="qemu:///system"), "uri"),
    "VM key host_command": (
        "put",
        "/v1/vms/ok",
        vm(host_command=["ssh", "root@h"]),
        "host_command",
    ),
    "VM key ledger_url": ("put", "/v1/vms/ok", vm(ledger_url="sqlite:////tmp/x"), "ledger_url"),
    "VM key tenant": ("put", "/v1/vms/ok", vm(tenant="other"), "tenant"),
    "VM key image_dirs": ("put", "/v1/vms/ok", vm(image_dirs=["/"]), "image_dirs"),
    "VM key host": ("put", "/v1/vms/ok", vm(host="kvm-s1"), "host"),
    "VM key default_pool": ("put", "/v1/vms/ok", vm(default_pool="default"), "default_pool"),
    "VM key unknown": ("put", "/v1/vms/ok", vm(colour="red"), "colour"),
    "disk size negative": ("put", "/v1/disks/ok", {"size_gib": -1}, "size_gib"),
    "disk size zero": ("put", "/v1/disks/ok", {"size_gib": 0}, "size_gib"),
    "disk size oversized": ("put", "/v1/disks/ok", {"size_gib": HUGE}, "size_gib"),
    "disk backing a host path": (
        "put",
        "/v1/disks/ok",
        {"size_gib": 1, "backing_image": "/etc/passwd"},
        "backing_image",
    ),
    "disk pool as a path": ("put", "/v1/disks/ok", {"size_gib": 1, "pool": "../x"}, "pool"),
    "disk key uri": ("put", "/v1/disks/ok", {"size_gib": 1, "uri": "qemu:///system"}, "uri"),
    "network CIDR public": ("put", "/v1/networks/ok", {**NETWORK, "cidr": "8.8.8.0/24"}, "cidr"),
    "network CIDR with a newline": (
        "put",
        "/v1/networks/ok",
        {**NETWORK, "cidr": "10.214.251.0/24\n"},
        "cidr",
    ),
    "network CIDR too large": ("put", "/v1/networks/ok", {**NETWORK, "cidr": "10.0.0.0/8"}, "cidr"),
    "network MTU negative": ("put", "/v1/networks/ok", {**NETWORK, "mtu": -1}, "mtu"),
    "network mode unknown": ("put", "/v1/networks/ok", {**NETWORK, "mode": "bridge"}, "mode"),
    "network key uplink": ("put", "/v1/networks/ok", {**NETWORK, "uplink": "eth0"}, "uplink"),
    "network key host_command": (
        "put",
        "/v1/networks/ok",
        {**NETWORK, "host_command": ["sh"]},
        "host_command",
    ),
    "request kind unknown": ("post", "/v1/requests", {"kind": "ip", "note": "x"}, "kind"),
    "request note of 100000 characters": (
        "post",
        "/v1/requests",
        {"kind": "password", "note": "x" * 100000},
        "note",
    ),
    "request note with an escape": (
        "post",
        "/v1/requests",
        {"kind": "password", "note": "\x1b[2J"},
        "note",
    ),
    "request key tenant": (
        "post",
        "/v1/requests",
        {"kind": "password", "note": "x", "tenant": "other"},
        "tenant",
    ),
    "incident VM as a path": ("post", "/v1/incidents", {"vm": "../../x", "note": "x"}, "vm"),
    "incident in year 0001": (
        "post",
        "/v1/incidents",
        {"started_at": "0001-01-01T00:00:00+14:00", "note": "x"},
        "started_at",
    ),
    "incident without an offset": (
        "post",
        "/v1/incidents",
        {"started_at": "2026-11-01T00:00:00", "note": "x"},
        "started_at",
    ),
    "incident note of 100000 characters": (
        "post",
        "/v1/incidents",
        {"note": "x" * 100000},
        "note",
    ),
    "incident key host": ("post", "/v1/incidents", {"note": "x", "host": "kvm-s1"}, "host"),
    "month 13": ("get", "/v1/usage?month=2026-13", None, "month"),
    "month with a newline": ("get", "/v1/usage?month=" + quote("2026-11\n"), None, "month"),
    "month in Arabic-Indic digits": (
        "get",
        "/v1/sla?month=" + quote("\u0662\u0660\u0662\u0666-\u0661\u0661"),
        None,
        "month",
    ),
    "month of an overflowing year": (
        "get",
        f"/v1/invoices/{HUGE}-01",
        None,
        "month",
    ),
    "plan with a VM named '../x'": (
        "post",
        "/v1/plan",
        {"vms": [{**vm(), "name": "../x"}]},
        "vms[0].name",
    ),
    "plan with a tenant key": ("post", "/v1/plan", {"tenant": "other", "vms": []}, "tenant"),
    "plan with a host path image": (
        "post",
        "/v1/plan",
        {"vms": [{**boot(image="/etc/shadow"), "name": "x"}]},
        "vms[0].boot_disk.image",
    ),
}


@pytest.fixture(scope="module")
def hostile(server: Server, fleet: Fleet, conn: libvirt.virConnect) -> Iterator[str]:
    """A customer's write token; its tenant owns the network "lan", so that a reference to it
    resolves and the refusal is about the field under test."""
    tenant = f"s{os.getpid() % 10000}h1"
    register(fleet.ledger_url, tenant)
    token = create_token(fleet.ledger_url, tenant)
    try:
        with server.client(token) as client:
            succeeded(
                client, "/v1/networks/lan", {"cidr": f"{next_subnet()}.0/24", "mode": "isolated"}
            )
        yield token
    finally:
        remove_prefixed(conn, f"{tenant}_")


def test_the_table_is_long_enough():
    assert len(CASES) >= 40


def field_named(fields: list[dict], expected: str) -> bool:
    """A field path is the expected one, perhaps under a prefix (the body's, `path.`)."""
    return any(f["path"] == expected or f["path"].endswith(f".{expected}") for f in fields)


@pytest.mark.parametrize(("method", "path", "body", "field"), CASES.values(), ids=CASES.keys())
def test_hostile_input_answers_422_naming_the_field_and_changes_nothing(
    server: Server, fleet: Fleet, conn, hostile: str, method, path, body, field
):
    before = state_of(fleet.ledger_url, conn, host_dir=fleet.host_dir)
    with server.client(hostile) as client:
        reply = send(client, method, path, **({} if body is None else {"json": body}))
    assert reply.status_code == 422, reply.text
    error = error_of(reply)
    assert field_named(error["fields"], field), error
    # Nothing of the host: its URI, its directories.
    assert fleet.uri not in reply.text and str(fleet.logs.parents[1]) not in reply.text
    assert changes(before, state_of(fleet.ledger_url, conn, host_dir=fleet.host_dir)) == {}


def test_a_body_that_is_not_an_object_answers_422(server: Server, hostile: str):
    with server.client(hostile) as client:
        for body in ([], "vm", 5, None):
            reply = send(client, "put", "/v1/vms/ok", json=body)
            assert reply.status_code == 422, (body, reply.text)
            error_of(reply)


def test_a_data_disk_of_another_vm_is_refused_and_changes_nothing(
    server: Server, fleet: Fleet, conn, hostile: str
):
    """One disk in two VMs would be written by two guests at once: the second VM's
    declaration is refused naming its disks (at once, or as its action's error)."""
    with server.client(hostile) as client:
        succeeded(client, "/v1/disks/shared", {"size_gib": 1})
        succeeded(client, "/v1/vms/owner", vm(disks=["shared"]))
        before = state_of(fleet.ledger_url, conn, host_dir=fleet.host_dir)
        reply = send(client, "put", "/v1/vms/intruder", json=vm(disks=["shared"]))
        if reply.status_code == 202:
            action = wait_action(client, reply.json()["action"]["id"])
            assert action["status"] == "failed", action
            error = action["error"]
        else:
            assert reply.status_code in (409, 422), reply.text
            error = error_of(reply)
    assert field_named(error["fields"], "disks[0]") or "shared" in error["message"], error
    moved = changes(before, state_of(fleet.ledger_url, conn, host_dir=fleet.host_dir))
    # The refusal's own records: its failed action, and the run that refused it.
    moved.pop("ledger:actions", None)
    moved.pop("ledger:runs", None)
    assert moved == {}
