"""The personal cabinet's dashboard (``GET /panel/``) of a tenant with 50 VMs, rendered
server-side, beside the API's own ``GET /v1/vms`` of the same tenant in the same run.

Issue 20: "The dashboard of a tenant with 50 VMs renders server-side in under 150 ms (p50) on
this machine, measured beside the API's own GET /v1/vms in the same run."

Set-up (bench/api_common.py and bench/api_read.py's): a private libvirtd (tools.libvirtd) with
a dir pool and an empty 64 MiB qcow2 base image in the catalogue of zone ``bench``; a SQLite
ledger with the tenant ``bench``, the host record of zone ``bench`` on that daemon, a
read-write token and a cabinet user of the tenant (its password hashed with argon2 as ``vce
admin user create`` does). The tenant's 50 VMs (1 vCPU, 128 MiB, a 1 GiB overlay boot disk,
one NIC on an isolated network, stopped) are defined by ONE ``engine.run_environment`` call
after the tenant was placed on the host as the server's first PUT places it. Then a real
``vce serve`` on a free loopback port with its default options: the dashboard is measured as
a browser meets it (uvicorn, HTTP, the session cookie, the libvirt socket), not in the
benchmark's own interpreter. A private libvirtd rather than ``test:///default``: the VMs are
defined in this process and read by the server's, which only a daemon shares; and reading a
real daemon's socket is what the page costs on a host.

The user logs in once through the login form (its CSRF cookie and field, then the session
cookie), untimed. Measured, N times each (default 30) after 3 warm-ups, alternating so that
background load hits both alike, median and p95 (nearest rank), over keep-alive loopback
connections (httpx):

- DASHBOARD: ``GET /panel/`` with the session cookie; the page must be 200 and list the 50
  VMs (one row each);
- API: ``GET /v1/vms`` with the tenant's token; the reply must hold the 50 VMs.

Then Lighthouse (npm, pinned in bench/browser; Debian's chromium) audits the same dashboard
with the session's cookie, in its default mobile emulation (issue 20: performance >= 90,
accessibility >= 95).

Prints a table; writes bench/results/panel_dashboard.json and a section of docs/benchmarks.md
(between markers; not with --no-doc). Exit 0 when the dashboard's median is under 150 ms and
Lighthouse's scores reach theirs, 1 when not, 2 when the set-up or a measurement failed.

``--quick`` (for CI): 5 VMs, 3 samples after 1 warm-up; nothing written; exit 0 unless
something broke.

    .venv/bin/python bench/panel_dashboard.py [--vms 50] [--repeats 30] [--no-doc] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import api_common as common
import httpx
from api_read import declaration, placed_params, sample
from browser.lighthouse import lighthouse_scores

TARGET_MS = 150.0
TARGET_PERFORMANCE = 90
TARGET_ACCESSIBILITY = 95
LOGIN = "bench-user"
PASSWORD = "bench correct horse battery"
VM_ROW = re.compile(r'<th scope="row">(?:<a [^>]*>)?vm\d{3}<')
QUICK_VMS, QUICK_REPEATS, QUICK_WARMUPS = 5, 3, 1


def add_user(lab: common.Lab) -> None:
    """The tenant's cabinet user, as `vce admin user create` makes one."""
    from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
    from vce_server.identity import Identity

    Identity(Ledger.open(lab.ledger_url)).create_user(LOGIN, PASSWORD, "customer", common.TENANT)


def logged_in(server: Any) -> httpx.Client:
    """A browser's client, logged in through the login form: it holds the session cookie."""
    from tests.support.cabinet import hidden_fields

    browser = httpx.Client(base_url=server.url, timeout=60, follow_redirects=False)
    token = hidden_fields(browser.get("/panel/login").text)["csrf"]
    answer = browser.post(
        "/panel/login",
        data={"csrf": token, "login": LOGIN, "password": PASSWORD, "next": "/panel/"},
    )
    if answer.status_code != 303 or answer.headers.get("location") != "/panel/":
        browser.close()
        raise RuntimeError(f"log in: {answer.status_code} {answer.text[:200]}")
    return browser


def dashboard_read(browser: httpx.Client) -> Callable[[], int]:
    def read() -> int:
        page = browser.get("/panel/")
        if page.status_code != 200:
            raise RuntimeError(f"GET /panel/: {page.status_code} {page.text[:200]}")
        return len(VM_ROW.findall(page.text))

    return read


def api_read(client: httpx.Client) -> Callable[[], int]:
    def read() -> int:
        reply = client.get("/v1/vms")
        reply.raise_for_status()
        return len(reply.json()["vms"])

    return read


def run(args: argparse.Namespace, results: dict[str, Any]) -> None:
    from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine

    with common.lab(private_libvirtd=True) as lab:
        placed_params(lab)
        add_user(lab)
        start = time.perf_counter()
        engine.run_environment(declaration(lab, args.vms))
        results["create_s"] = time.perf_counter() - start
        common.log(f"{args.vms} VMs defined in {results['create_s']:.1f} s")
        with (
            common.serve(lab) as vce,
            common.client(vce, lab.tokens, timeout=60) as client,
            contextlib.closing(logged_in(vce)) as browser,
        ):
            reads = {"dashboard": dashboard_read(browser), "api": api_read(client)}
            results["figures"] = sample(reads, args.vms, args.repeats, args.warmups)
            cookie = {"Cookie": f"vce_session={browser.cookies['vce_session']}"}
            scores = lighthouse_scores(f"{vce.url}/panel/", cookie)
            results["lighthouse"] = {
                "performance": scores.performance,
                "accessibility": scores.accessibility,
            }
            common.log(f"Lighthouse: {results['lighthouse']}")


LABELS = {
    "dashboard": "the dashboard `GET /panel/`, rendered server-side",
    "api": "`GET /v1/vms` over HTTP",
}


def report_lines(results: dict[str, Any]) -> list[str]:
    columns = {"median_ms": "p50", "p95_ms": "p95", "min_ms": "min", "max_ms": "max"}
    return common.percentile_table(results["figures"], LABELS, columns)


def verdict(results: dict[str, Any]) -> str:
    page, api = results["figures"]["dashboard"], results["figures"]["api"]
    scores = results["lighthouse"]
    met = "PASS" if results["target_met"] else "MISS"
    return (
        f"Dashboard p50 {page['median_ms']:.2f} ms (p95 {page['p95_ms']:.2f} ms) = "
        f"{page['median_ms'] / api['median_ms']:.2f}x the API's {api['median_ms']:.2f} ms "
        f"(target < {TARGET_MS:.0f} ms); Lighthouse performance {scores['performance']}, "
        f"accessibility {scores['accessibility']} (targets >= {TARGET_PERFORMANCE}, >= "
        f"{TARGET_ACCESSIBILITY}): **{met}**."
    )


def targets_met(results: dict[str, Any]) -> bool:
    scores = results["lighthouse"]
    return (
        results["figures"]["dashboard"]["median_ms"] < TARGET_MS
        and scores["performance"] >= TARGET_PERFORMANCE
        and scores["accessibility"] >= TARGET_ACCESSIBILITY
    )


def setup(results: dict[str, Any]) -> str:
    return (
        f"Tenant bench: {results['vms']} stopped VMs, defined in {results['create_s']:.1f} s; "
        f"a real `vce serve` on loopback; {results['repeats']} samples of each after "
        f"{results['warmups']} warm-ups, alternating; p95 is the nearest rank."
    )


def main(argv: list[str] | None = None) -> int:
    parser = common.arguments(__doc__, "5 VMs, 3 samples")
    parser.add_argument("--vms", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmups", type=int, default=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.vms, args.repeats, args.warmups = QUICK_VMS, QUICK_REPEATS, QUICK_WARMUPS
    bench = common.Bench(
        name="panel_dashboard",
        run=lambda results: run(args, results),
        target_met=targets_met,
        table=report_lines,
        verdict=verdict,
        setup=setup,
    )
    settings = {"vms": args.vms, "repeats": args.repeats, "warmups": args.warmups}
    return common.execute(bench, settings, args.quick, args.no_doc)


if __name__ == "__main__":
    sys.exit(main())
