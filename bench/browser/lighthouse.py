"""Lighthouse's performance and accessibility scores of a page on loopback, measured by the
Lighthouse CLI pinned in bench/browser/package-lock.json (`npm ci` in bench/browser, which
`scripts/lab.sh test` runs) driving Debian's chromium with the browser tier's flags.

    .venv/bin/python bench/browser/lighthouse.py http://127.0.0.1:8000/panel/ \\
        [--header 'Cookie: vce_session=...']

prints the two scores (0-100, as Lighthouse's report shows them) and the time it took.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

LIGHTHOUSE = ROOT / "bench" / "browser" / "node_modules" / ".bin" / "lighthouse"
CATEGORIES = ("performance", "accessibility")
TIMEOUT_S = 180.0
KILL_GRACE_S = 10.0


class LighthouseError(RuntimeError):
    """Lighthouse could not score the page: what it said."""


@dataclass(frozen=True)
class LighthouseScores:
    """A page's scores, 0-100, as Lighthouse's report shows them."""

    performance: int
    accessibility: int


def chrome_flags() -> str:
    """The browser tier's chromium flags as the one string the CLI parses (its own argv
    parser): a value with spaces in double quotes."""
    quoted = []
    for flag in CHROMIUM_ARGS:
        name, separator, value = flag.partition("=")
        quoted.append(f'{name}="{value}"' if separator and " " in value else flag)
    return " ".join(quoted)


def lighthouse_argv(url: str, headers: Mapping[str, str]) -> list[str]:
    """The CLI's arguments: both categories only, the JSON report on stdout, our chromium flags;
    `headers` (a session's Cookie, say) go with every request Lighthouse's page makes."""
    argv = [
        str(LIGHTHOUSE),
        url,
        f"--only-categories={','.join(CATEGORIES)}",
        "--output=json",
        "--output-path=stdout",
        "--quiet",
        f"--chrome-flags={chrome_flags()}",
    ]
    if headers:
        argv.append(f"--extra-headers={json.dumps(dict(headers))}")
    return argv


def browser_groups_in(scratch: str) -> set[int]:
    """The process groups of the processes whose command line names `scratch` (chromium's,
    through its --user-data-dir), this process's own group left out."""
    groups = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):  # gone meanwhile
            if scratch.encode() in cmdline.read_bytes():
                groups.add(os.getpgid(int(cmdline.parent.name)))
    return groups - {os.getpgrp()}


def kill_browsers_in(scratch: str) -> None:
    """Kill the chromium of a run that was cut short: chrome-launcher starts it detached, in a
    process group of its own, so ending the CLI's group leaves it running."""
    deadline = time.monotonic() + KILL_GRACE_S
    while (groups := browser_groups_in(scratch)) and time.monotonic() < deadline:
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
        time.sleep(0.1)


def run_lighthouse(argv: list[str], timeout_s: float) -> str:
    """The CLI's stdout. Its process group and the chromium it started are killed when it
    takes longer than `timeout_s`; its temporary files (chromium's profile) go in a directory
    of its own, removed afterwards in every case."""
    with (
        tempfile.TemporaryDirectory(prefix="vce-lighthouse-") as scratch,
        subprocess.Popen(
            argv,
            env={**os.environ, "CHROME_PATH": str(CHROMIUM), "TMPDIR": scratch},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        ) as process,
    ):
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.communicate(timeout=KILL_GRACE_S)
            kill_browsers_in(scratch)
            raise LighthouseError(f"lighthouse took over {timeout_s:.0f} s on {argv[1]}") from None
    if process.returncode != 0:
        raise LighthouseError(
            f"lighthouse exited {process.returncode} on {argv[1]}: {stderr.strip()[-2000:]}"
        )
    return stdout


def scores_of(report_json: str) -> LighthouseScores:
    """The two scores of a JSON report; an error naming the category Lighthouse did not score
    (a page that failed to load gets no score) and the reason it gives."""
    report = json.loads(report_json)
    problem = report.get("runtimeError")
    if problem:
        raise LighthouseError(f"lighthouse could not load the page: {problem.get('message')}")
    values = {}
    for category in CATEGORIES:
        score = report["categories"][category]["score"]
        if score is None:
            raise LighthouseError(f"lighthouse gave no {category} score")
        values[category] = round(score * 100)
    return LighthouseScores(**values)


def lighthouse_scores(
    url: str, headers: Mapping[str, str] | None = None, timeout_s: float = TIMEOUT_S
) -> LighthouseScores:
    """Lighthouse's performance and accessibility scores of `url` (on loopback), in its default
    mobile emulation, with `headers` sent on every request (for a session: {"Cookie": ...})."""
    if not LIGHTHOUSE.exists():
        raise LighthouseError(f"{LIGHTHOUSE} is missing: run `npm ci` in bench/browser")
    if not CHROMIUM.exists():
        raise LighthouseError(f"{CHROMIUM} is missing: scripts/lab.sh test installs chromium")
    return scores_of(run_lighthouse(lighthouse_argv(url, headers or {}), timeout_s))


def parse_header(text: str) -> tuple[str, str]:
    name, separator, value = text.partition(":")
    if not separator or not name.strip():
        raise argparse.ArgumentTypeError(f"--header {text!r}: expected 'Name: value'")
    return name.strip(), value.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("url", help="a page on loopback")
    parser.add_argument(
        "--header", type=parse_header, action="append", default=[], help="'Name: value'"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    try:
        scores = lighthouse_scores(args.url, dict(args.header))
    except LighthouseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    print(
        f"performance {scores.performance}, accessibility {scores.accessibility} ({elapsed:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
