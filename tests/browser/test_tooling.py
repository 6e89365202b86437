"""The browser tier's own tools, on pages served on loopback by the test itself: Debian's
chromium clicks and reads under the panel's Content-Security-Policy, screenshots land in the
artifacts directory, axe-core finds a page's faults and passes a clean page, the profile
directory is gone after the browser, also when the block raised, and Lighthouse (the browser
benches' helper) scores a page, and leaves neither a browser nor files when cut short."""

from __future__ import annotations

import http.server
import importlib.util
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from types import ModuleType

import pytest
from playwright.sync_api import Page, Playwright
from vce_server.panel.render import HEADERS as PANEL_HEADERS

from tests.support.browser import (
    ARTIFACTS_ENV,
    CHROMIUM,
    CHROMIUM_ARGS,
    ROOT,
    axe_violations,
    launched_browser,
    screenshot,
)

pytestmark = pytest.mark.browser

GOOD_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Greeting</title><script src="/greet.js" defer></script></head>
<body>
<main>
  <h1>Greeting</h1>
  <label for="who">Your name</label> <input id="who" name="who" value="Ada">
  <button id="greet" type="button">Greet</button>
  <p id="greeting" aria-live="polite">Not greeted yet</p>
  <img src="/logo.svg" alt="The company's logo" width="40" height="40">
</main>
</body>
</html>
"""
# Served as a file of its own: the Content-Security-Policy (default-src 'self') refuses inline
# scripts, as the panel's does.
GREET_JS = """document.getElementById("greet").addEventListener("click", () => {
  const who = document.getElementById("who").value;
  document.getElementById("greeting").textContent = `Hello, ${who}!`;
});
"""
LOGO_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="40" height="40">'
    '<rect width="40" height="40" fill="#246"/></svg>'
)
BAD_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Faults</title></head>
<body>
<main>
  <h1>Faults</h1>
  <img src="/logo.svg">
  <input id="nameless" name="nameless">
</main>
</body>
</html>
"""
PAGES = {"/": GOOD_PAGE, "/greet.js": GREET_JS, "/logo.svg": LOGO_SVG, "/bad": BAD_PAGE}
CONTENT_TYPES = {".js": "text/javascript", ".svg": "image/svg+xml"}
HTML = "text/html; charset=utf-8"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
START_LIMIT_S = 30


class _PagesHandler(http.server.BaseHTTPRequestHandler):
    """GET of one of PAGES with the panel's own headers, and the type its suffix says (nosniff
    refuses a script or an image served as HTML)."""

    server: ServedPages

    def do_GET(self) -> None:
        path = urllib.parse.urlsplit(self.path).path
        self.server.requests.append((path, dict(self.headers.items())))
        body = PAGES.get(path)
        if body is None:
            self.send_error(404)
            return
        data = body.encode("utf-8")
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPES.get(PurePosixPath(path).suffix, HTML))
        for header, value in PANEL_HEADERS.items():
            self.send_header(header, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class ServedPages(http.server.ThreadingHTTPServer):
    """PAGES on a free loopback port, and the requests they got: (path, headers) in order."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _PagesHandler)
        self.requests: list[tuple[str, dict[str, str]]] = []

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


@pytest.fixture(scope="module")
def site() -> Iterator[ServedPages]:
    server = ServedPages()
    thread = threading.Thread(target=server.serve_forever, name="served-pages", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's header (its IHDR chunk)."""
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def test_a_click_runs_the_pages_own_script_and_changes_its_text(page: Page, site: ServedPages):
    page.goto(f"{site.url}/")
    assert page.get_by_role("heading", level=1).inner_text() == "Greeting"

    page.get_by_label("Your name").fill("Grace")
    page.get_by_role("button", name="Greet").click()

    assert page.locator("#greeting").inner_text() == "Hello, Grace!"
    # Its image loaded as well: served with its type (nosniff would refuse it otherwise).
    assert page.get_by_role("img").evaluate("image => image.naturalWidth") == 40


def test_screenshot_goes_to_the_tests_tmp_dir(
    page: Page, site: ServedPages, tmp_path: Path, monkeypatch
):
    monkeypatch.delenv(ARTIFACTS_ENV, raising=False)
    page.set_viewport_size({"width": 800, "height": 600})
    page.goto(f"{site.url}/")

    path = screenshot(page, "greeting", tmp_path)

    assert path == tmp_path / "greeting.png"
    width, height = png_size(path)
    assert width == 800
    assert height >= 600


def test_screenshot_goes_to_the_artifacts_dir_when_set(
    page: Page, site: ServedPages, tmp_path: Path, monkeypatch
):
    artifacts = tmp_path / "artifacts" / "browser"
    monkeypatch.setenv(ARTIFACTS_ENV, str(artifacts))
    page.goto(f"{site.url}/bad")

    path = screenshot(page, "faults", tmp_path / "unused")

    assert path == artifacts / "faults.png"
    assert png_size(path)[0] > 0
    assert not (tmp_path / "unused").exists()


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden", "x" * 101])
def test_a_screenshot_name_that_is_no_plain_file_name_is_refused(
    page: Page, tmp_path: Path, name: str
):
    with pytest.raises(ValueError, match="screenshot name"):
        screenshot(page, name, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_axe_reports_an_image_without_alt_and_an_input_without_label(page: Page, site: ServedPages):
    page.goto(f"{site.url}/bad")

    violations = {found.id: found for found in axe_violations(page)}

    assert set(violations) == {"image-alt", "label"}
    assert violations["image-alt"].impact == "critical"
    assert violations["image-alt"].targets == ("img",)
    assert violations["label"].targets == ("#nameless",)
    assert violations["label"].help


def test_axe_passes_a_clean_page_under_the_panels_csp(page: Page, site: ServedPages):
    response = page.goto(f"{site.url}/")
    assert response is not None
    assert response.headers["content-security-policy"].startswith("default-src 'self'")

    assert axe_violations(page, impacts=("minor", "moderate", "serious", "critical")) == []


def test_the_impacts_filter_keeps_only_the_asked_ones(page: Page, site: ServedPages):
    page.goto(f"{site.url}/bad")

    assert axe_violations(page, impacts=("minor",)) == []


def test_the_profile_directory_is_removed_also_when_the_block_raises(
    playwright: Playwright, tmp_path: Path, site: ServedPages
):
    with (
        pytest.raises(RuntimeError, match="test failed"),
        launched_browser(tmp_path, playwright) as browser,
    ):
        (profile,) = tmp_path.iterdir()
        assert profile.name.startswith("vce-chromium-")
        browser.new_page().goto(f"{site.url}/")
        raise RuntimeError("test failed")

    assert list(tmp_path.iterdir()) == []


def bench_module(path: str, monkeypatch) -> ModuleType:
    """A helper module of bench/ (by its file: this package is `browser` too, for pytest)."""
    spec = importlib.util.spec_from_file_location(f"bench_{Path(path).stem}", ROOT / "bench" / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Its dataclasses look their module up in sys.modules.
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_lighthouse_scores_a_loopback_page_with_the_headers_it_is_given(
    site: ServedPages, monkeypatch
):
    lighthouse = bench_module("browser/lighthouse.py", monkeypatch)
    before = len(site.requests)

    scores = lighthouse.lighthouse_scores(f"{site.url}/", {"Cookie": "vce_session=tooling"})

    assert scores.accessibility == 100
    # A page this small scores 99-100 here; the floor only says the score is a real one.
    assert 50 <= scores.performance <= 100
    page_requests = [headers for path, headers in site.requests[before:] if path == "/"]
    assert page_requests
    assert all(headers.get("Cookie") == "vce_session=tooling" for headers in page_requests)


def test_a_lighthouse_run_cut_short_is_an_error_and_leaves_no_files(
    site: ServedPages, tmp_path: Path, monkeypatch
):
    lighthouse = bench_module("browser/lighthouse.py", monkeypatch)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    with pytest.raises(lighthouse.LighthouseError, match="took over 2 s"):
        lighthouse.lighthouse_scores(f"{site.url}/", timeout_s=2)

    assert not lighthouse.browser_groups_in(str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_the_chromium_of_a_run_cut_short_is_killed(tmp_path: Path, monkeypatch):
    """As chrome-launcher starts it: detached, in a session of its own, its profile in the run's
    scratch directory. (A run cut short within a test's time would seldom have started one.)"""
    lighthouse = bench_module("browser/lighthouse.py", monkeypatch)
    profile = tmp_path / "profile"
    argv = [CHROMIUM, *CHROMIUM_ARGS, f"--user-data-dir={profile}", "--remote-debugging-port=0"]
    chromium = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + START_LIMIT_S
        while not (profile / "DevToolsActivePort").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert lighthouse.browser_groups_in(str(tmp_path)) == {chromium.pid}

        lighthouse.kill_browsers_in(str(tmp_path))

        assert chromium.wait(timeout=10) == -signal.SIGKILL
        assert not lighthouse.browser_groups_in(str(tmp_path))
    finally:
        if chromium.poll() is None:
            os.killpg(chromium.pid, signal.SIGKILL)
            chromium.wait()
