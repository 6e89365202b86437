"""Every page of the cabinet, as a customer and as an operator, checked by axe-core in Debian's
chromium: no serious or critical violation. The pages are found as a person finds them, by
following the cabinet's own links from the navigation (GET only: a link changes nothing), on
the app in this process with its host on libvirt's test driver, holding a VM, a network, a
request, an outage and a token."""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlsplit

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.finance.requests import RequestLog
from ansible_collections.vce.kvm.plugins.module_utils.finance.sla import Incidents
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from playwright.sync_api import Browser, Page

from tests.support.app import in_process_app, on_loopback
from tests.support.browser import axe_violations, screenshot
from tests.support.cabinet import PASSWORD, Cabinet
from tests.support.host_records import closing_connections
from tests.unit.conftest import ledger_url
from tests.unit.server.panel.test_routes import declare

__all__ = ["ledger_url"]

pytestmark = pytest.mark.browser
MAX_PAGES = 80  # per user: the cabinet has fewer; a loop in its links cannot run on
PAGE_MS = 30_000


@pytest.fixture
def connections(monkeypatch):
    yield from closing_connections(monkeypatch)


@pytest.fixture
def served(connections, ledger_url: str, tmp_path: Path) -> Iterator[tuple[Cabinet, str]]:
    with in_process_app(ledger_url, tmp_path) as app, on_loopback(app.app) as url:
        cabinet = Cabinet(app.app, ledger_url)
        cabinet.customer("acme")
        declare(cabinet, "acme")
        ledger = Ledger.open(ledger_url)
        now = ledger.now()
        RequestLog(ledger).log("acme", "password", "R-1", now - dt.timedelta(minutes=5))
        Incidents(ledger).report("acme", "web", "", now - dt.timedelta(minutes=10), note="down")
        cabinet.context.identity.create_token("customer", "acme", "read", "ci", "acme-user")
        cabinet.context.identity.create_user("op", PASSWORD, "operator")
        yield cabinet, url


def log_in(page: Page, url: str, login: str) -> None:
    page.goto(f"{url}/panel/login")
    page.get_by_label("Login").fill(login)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()


def cabinet_links(page: Page, url: str) -> list[str]:
    """The page's links to other pages of the cabinet (same origin, under /panel/)."""
    found = []
    for href in page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)"):
        target, _fragment = urldefrag(urljoin(page.url, href))
        parts = urlsplit(target)
        if f"{parts.scheme}://{parts.netloc}" == url and parts.path.startswith("/panel/"):
            found.append(target)
    return found


def visit_all(page: Page, url: str, start: str, tmp_path: Path, who: str) -> dict[str, list]:
    """Every page reachable from `start` by the cabinet's links: each one's serious and
    critical violations (empty lists for clean pages)."""
    seen: dict[str, list] = {}
    queue = deque([f"{url}{start}"])
    while queue and len(seen) < MAX_PAGES:
        target = queue.popleft()
        if target in seen:
            continue
        answer = page.goto(target)
        assert answer is not None and answer.status < 400, (target, answer and answer.status)
        seen[target] = axe_violations(page)
        screenshot(page, f"a11y-{who}-{len(seen):02d}", tmp_path)
        queue.extend(link for link in cabinet_links(page, url) if link not in seen)
    assert len(seen) < MAX_PAGES, "the cabinet's links did not end"
    return seen


@pytest.mark.parametrize(("login", "start"), [("acme-user", "/panel/"), ("op", "/panel/operator/")])
def test_no_page_has_a_serious_accessibility_fault(
    served: tuple[Cabinet, str], browser: Browser, tmp_path: Path, login: str, start: str
) -> None:
    _cabinet, url = served
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(PAGE_MS)
        log_in(page, url, login)
        visited = visit_all(page, url, start, tmp_path, login)
    finally:
        context.close()
    faults = {target: found for target, found in visited.items() if found}
    assert len(visited) >= 8, sorted(visited)
    assert not faults, faults
