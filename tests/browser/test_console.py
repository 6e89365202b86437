"""The VM console in Debian's chromium against a real `vce serve` with the tiny guest: the
console page's button opens it, xterm.js shows the guest's boot lines, a typed word comes back
as the guest's echo, and a second browser takes the console over (the first one's page says
so). The page passes axe-core (no serious or critical violation) before and after the console
opens, and each step is saved as a screenshot (test artifacts)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.integration.conftest import (
    base_image_path,
    blank_image_path,
    conn,
    image_dir,
    libvirtd,
    pool,
)
from tests.server.conftest import fleet, new_tenant, server, subnet
from tests.server.test_console import booting, guest_tenant
from tests.support.browser import axe_violations, screenshot
from tests.support.cabinet import PASSWORD
from tests.support.server import Server

__all__ = [
    "base_image_path", "blank_image_path", "booting", "conn", "fleet", "guest_tenant",
    "image_dir", "libvirtd", "new_tenant", "pool", "server", "subnet",
]  # fmt: skip
pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.guest]
BOOT_MS = 90_000
ECHO_MS = 10_000


def log_in(page: Page, server: Server, login: str) -> None:
    page.goto(f"{server.url}/panel/login")
    page.get_by_label("Login").fill(login)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", level=1)).to_be_visible()


def open_console(page: Page, server: Server) -> None:
    page.goto(f"{server.url}/panel/vms/box/console")
    page.get_by_role("button", name="Open the console").click()
    expect(page.locator("#console-status")).to_contain_text("Connected")


def test_the_console_in_a_browser(
    server: Server,
    booting: tuple[str, httpx.Client],
    page: Page,
    browser: Browser,
    tmp_path: Path,
) -> None:
    tenant, _api = booting
    log_in(page, server, f"{tenant}-user")
    page.goto(f"{server.url}/panel/vms/box/console")
    expect(page.get_by_role("heading", level=1)).to_have_text("Console of box")
    assert axe_violations(page) == []
    screenshot(page, "console-1-page", tmp_path)

    open_console(page, server)
    screen = page.locator(".xterm-rows")
    expect(screen).to_contain_text("VCE-GUEST: ready", timeout=BOOT_MS)
    page.keyboard.type("hello")
    expect(screen).to_contain_text("hello", timeout=ECHO_MS)
    assert axe_violations(page) == []
    screenshot(page, "console-2-open", tmp_path)

    other = browser.new_context()
    try:
        second = other.new_page()
        log_in(second, server, f"{tenant}-user")
        open_console(second, server)
        expect(page.locator("#console-status")).to_have_text(
            "The console was taken over by another viewer.", timeout=ECHO_MS
        )
        screenshot(page, "console-3-taken-over", tmp_path)
        second.keyboard.type("again")
        expect(second.locator(".xterm-rows")).to_contain_text("again", timeout=ECHO_MS)
    finally:
        other.close()
