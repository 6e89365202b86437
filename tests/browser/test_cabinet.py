"""A customer's day in the personal cabinet, in Debian's chromium against a real `vce serve`
on loopback, with the private libvirtd and the tiny guest: log in, create a network and a VM
from the catalogue, watch the action end, see the VM running with its address, reboot it,
read this month's usage, ask for more vCPUs and see the request's clock, report an outage,
create and revoke an API token, log out. Every page on the way is checked with axe-core (no
serious or critical violation) and saved as a screenshot (test artifacts)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from playwright.sync_api import Page, expect
from vce_server.identity import Identity

from tests.integration.conftest import base_image_path, conn, image_dir, libvirtd, pool
from tests.server.conftest import HOST, ZONE, next_subnet
from tests.support.browser import axe_violations, screenshot
from tests.support.images import register_image
from tests.support.ledger import forget_stores, register
from tests.support.server import Server, backup_settings, register_host, running_server
from tools.cleanup import remove_guard, remove_prefixed

__all__ = ["base_image_path", "conn", "image_dir", "libvirtd", "pool"]

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.guest]
TENANT = "webshop"
LOGIN = "ann"
PASSWORD = "a long browser passphrase"
IMAGE = "tinyguest"
ACTION_MS = 180_000  # a VM's creation under TCG on a loaded machine
PAGE_MS = 30_000


class Journey:
    """The browser page, and what every step does on the way: screenshot, axe check."""

    def __init__(self, page: Page, server: Server, artifacts: Path) -> None:
        self.page = page
        self.server = server
        self.artifacts = artifacts
        self.step = 0
        self.violations: dict[str, list] = {}
        page.set_default_timeout(PAGE_MS)

    def open(self, path: str) -> None:
        self.page.goto(f"{self.server.url}{path}")

    def check(self, name: str) -> None:
        """The page as it is now: screenshot `NN-name.png`, its serious violations kept."""
        self.step += 1
        screenshot(self.page, f"cabinet-{self.step:02d}-{name}", self.artifacts)
        found = axe_violations(self.page)
        if found:
            self.violations[f"{name} ({self.page.url})"] = found

    def button(self, name: str) -> None:
        self.page.get_by_role("button", name=name, exact=True).click()

    def action_ends(self, name: str) -> str:
        """Wait on the action page (it refreshes itself) until the action succeeded."""
        status = self.page.locator("#action-status")
        expect(status).to_have_text(re.compile(r"succeeded|failed|interrupted"), timeout=ACTION_MS)
        self.check(name)
        assert status.inner_text() == "succeeded", self.page.locator("main").inner_text()
        return self.page.url.rsplit("/", 1)[1]


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    libvirtd,
    pool: str,
    base_image_path: Path,
    conn: libvirt.virConnect,
) -> Iterator[Server]:
    """A fleet of one host with the tiny guest in its catalogue, a tenant and its user."""
    directory = tmp_path_factory.mktemp("cabinet")
    url = f"sqlite:///{directory / 'ledger.sqlite3'}"
    register_host(url, HOST, ZONE, libvirtd.uri, backup_settings(directory / "host"))
    register_image(url, base_image_path, name=IMAGE, zone=ZONE)
    register(url, TENANT)
    Identity(Ledger.open(url)).create_user(LOGIN, PASSWORD, "customer", TENANT)
    try:
        with running_server(url, directory / "serve.log") as started:
            yield started
    finally:
        remove_prefixed(conn, f"{TENANT}_")
        remove_guard()
        forget_stores()


def test_a_customer_builds_and_runs_a_vm_in_the_cabinet(
    server: Server, page: Page, conn: libvirt.virConnect, tmp_path: Path
) -> None:
    journey = Journey(page, server, tmp_path)
    subnet = next_subnet()
    address = f"{subnet}.10"

    # Log in: a page of the cabinet sends an anonymous browser to the login form first.
    journey.open("/panel/")
    expect(page).to_have_url(re.compile(r"/panel/login\?next=/panel/$"))
    journey.check("login")
    page.get_by_label("Login").fill(LOGIN)
    page.get_by_label("Password").fill(PASSWORD)
    journey.button("Log in")
    expect(page.get_by_role("heading", name="Your environment")).to_be_visible()
    journey.check("empty-environment")

    # A network, planned then applied.
    journey.open("/panel/objects")
    page.get_by_label("Network name").fill("lan")
    page.get_by_label("Addresses (CIDR)").fill(f"{subnet}.0/24")
    journey.button("Show the plan for the network")
    journey.check("network-plan")
    journey.button("Apply the plan")
    journey.action_ends("network-created")

    # A VM from the catalogue: the quota left beside each field, the plan, the action.
    journey.open("/panel/vms/new")
    journey.check("vm-form")
    page.get_by_label("Name").fill("web")
    page.get_by_label("Image").select_option(IMAGE)
    page.get_by_label("vCPUs").fill("1")
    page.get_by_label("Memory (MiB)").fill("192")
    page.get_by_label("Boot disk size (GiB)").fill("1")
    page.get_by_label("Network").select_option("lan")
    page.get_by_label("Fixed IP address (optional)").fill(address)
    journey.button("Show the plan")
    expect(page.get_by_text("create vm web")).to_be_visible()
    journey.check("vm-plan")
    journey.button("Apply the plan")
    journey.action_ends("vm-created")

    # Running, with its address, on the environment page; libvirt agrees.
    journey.open("/panel/")
    row = page.get_by_role("row", name=re.compile(r"^web "))
    expect(row).to_contain_text("running")
    expect(row).to_contain_text(address)
    journey.check("vm-running")
    domain = conn.lookupByName(f"{TENANT}_web")
    assert domain.isActive()

    # Reboot through its button.
    journey.button("Reboot web")
    journey.action_ends("vm-rebooted")
    assert domain.isActive()

    # This month's usage shows the VM.
    journey.open("/panel/billing")
    expect(
        page.get_by_role("heading", name=re.compile(r"^Usage in \d{4}-\d{2} so far"))
    ).to_be_visible()
    expect(page.locator("main")).to_contain_text("web")
    journey.check("usage")

    # More vCPUs than the plan allows: a request with its 20-minute clock.
    journey.open("/panel/quotas")
    journey.check("quotas")
    page.locator("#limit-vcpus").fill("5000")
    page.locator("form.ask", has=page.locator("#limit-vcpus")).get_by_role("button").click()
    expect(page.get_by_role("heading", name="Waiting for support")).to_be_visible()
    expect(page.get_by_text("Time left")).to_be_visible()
    journey.check("quota-request")
    journey.open("/panel/requests")
    expect(page.locator("main table")).to_contain_text("vCPUs to 5000")
    expect(page.locator("main table")).to_contain_text("min left")
    journey.check("requests")

    # An outage report (terms 5.11), listed with the outages.
    page.get_by_label("Which VM").select_option("web")
    page.get_by_label("What is wrong").fill("web answers no ping since the reboot")
    journey.button("Report the outage")
    expect(page.get_by_text(re.compile(r"Outage #\d+ is reported"))).to_be_visible()
    journey.check("outage-reported")

    # An API token: shown once, then revoked.
    journey.open("/panel/tokens")
    page.get_by_label("Name (what uses it)").fill("ci")
    page.get_by_label("Scope").select_option("read")
    journey.button("Create the token")
    token = page.get_by_role("textbox", name="Token", exact=True).input_value()
    assert re.fullmatch(r"vce_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", token)
    journey.check("token-created")
    assert server.client(token).get("/v1/vms").status_code == 200
    journey.open("/panel/tokens")
    assert token not in page.content()
    page.get_by_role("link", name="Revoke token ci").click()
    journey.check("token-revoke-confirm")
    page.get_by_role("button", name=re.compile(r"^Revoke")).click()
    journey.check("token-revoked")
    assert server.client(token).get("/v1/vms").status_code == 401

    # Log out: the cabinet asks for a login again.
    journey.open("/panel/")
    journey.button("Log out")
    expect(page).to_have_url(re.compile(r"/panel/login$"))
    journey.open("/panel/")
    expect(page).to_have_url(re.compile(r"/panel/login\?next="))

    assert not journey.violations, journey.violations
