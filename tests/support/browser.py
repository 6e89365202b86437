"""The browser tier's tools: Debian's chromium driven by Playwright (sync API), screenshots kept
as test artifacts, and axe-core's accessibility check.

Playwright never downloads a browser here: it launches `/usr/bin/chromium` (Debian's package,
installed by `scripts/lab.sh test`), with flags that keep every connection on loopback. axe-core
comes from npm, pinned by `tests/browser/package-lock.json` (`npm ci` in `tests/browser`, which
`scripts/lab.sh test` runs)."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from playwright.sync_api import Browser, Page, Playwright, sync_playwright

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
# Headless, no sandbox (the tests run as root), and none of Chromium's own connections
# (background networking, component updates, sync, QUIC): on this machine's closed network they
# are refused or fail to resolve, and the network rule keeps traffic on loopback anyway.
# With those flags alone Chromium still looks up Google's hosts (autofill, accounts, updates:
# seen with strace), so no name but localhost resolves (127.0.0.1 stays reachable): not even a
# DNS query leaves the machine.
LOOPBACK_ONLY_RESOLVER = "MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    f"--host-resolver-rules={LOOPBACK_ONLY_RESOLVER}",
)
LAUNCH_TIMEOUT_MS = 30_000
ARTIFACTS_ENV = "VCE_TEST_ARTIFACTS"
AXE_SCRIPT = ROOT / "tests" / "browser" / "node_modules" / "axe-core" / "axe.min.js"
SERIOUS_IMPACTS = ("serious", "critical")
# A screenshot's name becomes a file name: nothing that could leave the artifacts directory.
SCREENSHOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@contextlib.contextmanager
def launched_browser(
    profile_parent: Path | None = None, playwright: Playwright | None = None
) -> Iterator[Browser]:
    """Debian's chromium with the loopback-only flags, on a fresh profile directory (in
    `profile_parent`, else the system's temporary directory) that is removed afterwards, also
    when the block raises. Each `browser.new_context()` (or `browser.new_page()`) is a user of
    its own: cookies are not shared between contexts.

    `playwright`: a running Playwright driver to launch from; else the block has one of its own.
    A thread runs one sync driver at a time, so a second browser beside a running one needs the
    first one's driver."""
    if not CHROMIUM.exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: scripts/lab.sh test installs chromium")
    with contextlib.ExitStack() as stack:
        profile = stack.enter_context(
            tempfile.TemporaryDirectory(prefix="vce-chromium-", dir=profile_parent)
        )
        driver = playwright or stack.enter_context(sync_playwright())
        # A persistent context is the only way to give Playwright our own profile directory;
        # its browser hands out the isolated contexts the tests use.
        profile_context = driver.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=list(CHROMIUM_ARGS),
            timeout=LAUNCH_TIMEOUT_MS,
        )
        stack.callback(profile_context.close)
        browser = profile_context.browser
        if browser is None:
            raise RuntimeError("Playwright gave no browser for chromium's persistent context")
        yield browser


def artifacts_dir(tmp_dir: Path) -> Path:
    """Where a test keeps its screenshots: $VCE_TEST_ARTIFACTS when set (kept after the run),
    else `tmp_dir` (the test's pytest tmp_path)."""
    configured = os.environ.get(ARTIFACTS_ENV)
    directory = Path(configured) if configured else tmp_dir
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def screenshot(page: Page, name: str, tmp_dir: Path) -> Path:
    """The whole page as `<name>.png` in the artifacts directory; its path. With
    $VCE_TEST_ARTIFACTS set, every test writes to that one directory: names say which test."""
    if not SCREENSHOT_NAME.fullmatch(name):
        raise ValueError(
            f"screenshot name {name!r}: letters, digits, '.', '_' and '-' only, at most 100"
        )
    path = artifacts_dir(tmp_dir) / f"{name}.png"
    page.screenshot(path=path, full_page=True)
    return path


@dataclass(frozen=True)
class Violation:
    """One axe-core rule a page breaks: the rule, how bad, what it asks, and where: a CSS
    selector per element (inside a frame or shadow root: one per level, joined by ' >>> ')."""

    id: str
    impact: str
    help: str
    targets: tuple[str, ...]


def axe_violations(page: Page, impacts: Sequence[str] = SERIOUS_IMPACTS) -> list[Violation]:
    """axe-core's violations of the page as it is now, those of the given impacts only.

    axe is evaluated through the DevTools protocol rather than added as a <script>: the panel's
    Content-Security-Policy (default-src 'self') would refuse an inline script, and the check
    must run on the page exactly as a customer gets it."""
    if not AXE_SCRIPT.exists():
        raise FileNotFoundError(f"{AXE_SCRIPT} is missing: run `npm ci` in tests/browser")
    page.evaluate(AXE_SCRIPT.read_text(encoding="utf-8"))
    results = page.evaluate(
        "async () => (await axe.run(document, { resultTypes: ['violations'] })).violations"
    )
    return [
        Violation(
            id=found["id"],
            impact=found["impact"],
            help=found["help"],
            targets=tuple(" >>> ".join(map(str, node["target"])) for node in found["nodes"]),
        )
        for found in results
        if found["impact"] in impacts
    ]
