"""The VM console through a real `vce serve`: the tiny guest booted on the private libvirtd,
a customer logged in to the cabinet over HTTP, a ticket from the console page, and the
websocket as a browser opens it. The guest's boot lines arrive through it, a typed key comes
back as the guest's echo, a second viewer takes the console over (the first is told and
closed), a ticket works once, the console ends when the VM stops, and the ledger's audit
trail has each step."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import audit
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from vce_server.identity import Identity

from tests.integration.conftest import base_image_path
from tests.server.conftest import Fleet
from tests.support.cabinet import PASSWORD
from tests.support.console import Browser
from tests.support.images import register_image
from tests.support.server import Server, admin_token, succeeded, wait_action

pytestmark = [pytest.mark.server, pytest.mark.integration, pytest.mark.guest]
__all__ = ["base_image_path"]
BOOT_SECONDS = 90  # the guest's first line; ~5 s is usual under TCG
ECHO_SECONDS = 10
IMAGE = "tinyguest"
POLICY = 1008
TAKEN_OVER = 4001


@pytest.fixture
def guest_tenant(fleet: Fleet, base_image_path: Path, new_tenant, subnet: str) -> str:
    """A tenant with a logged-in user and the tiny guest booting as its VM `box`."""
    register_image(fleet.ledger_url, base_image_path, name=IMAGE, zone=fleet.zone)
    tenant = new_tenant(fleet)
    Identity(Ledger.open(fleet.ledger_url)).create_user(
        f"{tenant}-user", PASSWORD, "customer", tenant
    )
    return tenant


@pytest.fixture
def booting(
    server: Server, fleet: Fleet, guest_tenant: str, subnet: str
) -> Iterator[tuple[str, httpx.Client]]:
    """The tenant, and its API client, once the server started the guest."""
    with httpx.Client(
        base_url=server.url,
        headers={"Authorization": f"Bearer {admin_token(fleet.ledger_url, guest_tenant)}"},
        timeout=60,
    ) as api:
        succeeded(api, "/v1/networks/lan", {"cidr": f"{subnet}.0/24", "mode": "isolated"})
        vm = {
            "vcpus": 1,
            "memory_mib": 160,
            "boot_disk": {"image": IMAGE, "size_gib": 1},
            "nics": [{"network": "lan", "ip": f"{subnet}.42"}],
        }
        succeeded(api, "/v1/vms/box", vm)
        yield guest_tenant, api


def socket_rows(ledger_url: str, tenant: str, count: int, seconds: float = 10) -> list[tuple]:
    """The tenant's console audit rows, once there are `count` (written as sockets end)."""
    deadline = time.monotonic() + seconds
    while True:
        with Ledger.open(ledger_url).store.read() as connection:
            found = connection.execute(
                sa.select(audit.c.path, audit.c.status, audit.c.outcome)
                .where(audit.c.method == "WS", audit.c.tenant == tenant)
                .order_by(audit.c.id)
            ).all()
        if len(found) >= count or time.monotonic() > deadline:
            return [tuple(row) for row in found]
        time.sleep(0.1)


def test_the_console_shows_the_guest_echoes_keys_and_can_be_taken_over(
    server: Server, fleet: Fleet, booting: tuple[str, httpx.Client]
) -> None:
    tenant, api = booting
    customer = Browser(server.url, f"{tenant}-user")
    first_url = customer.ticket_url("box")
    with contextlib.closing(customer), customer.open(first_url) as first:
        # The guest's boot lines, up to its last (then it is quiet: the echo stands alone).
        first.read_until(b"VCE-GUEST: ready", BOOT_SECONDS)
        first.socket.send("q")
        first.read_until(b"q", ECHO_SECONDS)
        first.socket.send(b"7z")
        assert first.read_until(b"q7z", ECHO_SECONDS).endswith(b"q7z")

        # The same ticket again opens nothing.
        with customer.open(first_url) as again:
            assert again.read_to_close(ECHO_SECONDS) == POLICY

        with customer.open(customer.ticket_url("box")) as second:
            assert first.read_to_close(ECHO_SECONDS) == TAKEN_OVER
            assert first.notices[-1] == "The console was taken over by another viewer."
            second.socket.send("k9")
            second.read_until(b"k9", ECHO_SECONDS)
            # The VM stops: its console ends, and the socket with it.
            stopped = api.post("/v1/vms/box/actions/stop")
            assert stopped.status_code == 202, stopped.text
            assert wait_action(api, stopped.json()["action"]["id"])["status"] == "succeeded"
            assert second.read_to_close(ECHO_SECONDS) == 1000
            assert second.notices[-1].startswith("The console closed: the VM stopped")

    box = "/panel/vms/box/console"
    # The first viewer's close and the second's open are written as they happen: either first.
    assert sorted(socket_rows(fleet.ledger_url, tenant, 6)) == sorted(
        [
            (f"{box}/open", 101, "accepted"),
            ("/panel/console/ws", POLICY, "refused"),
            (f"{box}/open", 101, "accepted"),
            (f"{box}/takeover", 101, "accepted"),
            (f"{box}/close", TAKEN_OVER, "accepted"),
            (f"{box}/close", 1000, "accepted"),
        ]
    )
