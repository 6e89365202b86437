"""The browser tier: Debian's chromium, one for the tier, and a fresh context (a user with
no cookies) per test. Skipped only where chromium is not installed, and never in CI, where
`scripts/lab.sh test` installs it: there a missing browser fails the tier."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.support.browser import CHROMIUM, launched_browser


@pytest.fixture(scope="package")
def playwright() -> Iterator[Playwright]:
    """The browser tier's Playwright driver (a thread runs one at a time): every browser's.
    Package-scoped: while it runs, its event loop is the main thread's, where asyncio.run()
    refuses to start (the tests after this tier, the Pulumi provider's, call it)."""
    if not CHROMIUM.exists() and not os.environ.get("CI"):
        pytest.skip(f"{CHROMIUM} is missing (Debian's chromium; scripts/lab.sh test installs it)")
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    with launched_browser(playwright=playwright) as launched:
        yield launched


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()
