"""Authenticated ``GET /v1/quotas`` on one `vce serve` worker: requests per second with N
concurrent keep-alive clients, against a bare FastAPI app on the same uvicorn (the floor).

Issue 18: "Authenticated GET /v1/quotas on one worker: at least 500 requests/s on this
machine."

Set-up (bench/api_common.py): a SQLite ledger in a temp dir under /tmp with the tenant
``bench`` on a roomy plan, a host record of zone ``bench`` on ``test:///default`` (the
quotas read only the ledger), 50 read-write tokens of the tenant; ``vce serve`` on a free
loopback port as an operator starts it (one process, default options). Each connection takes
the tokens in turn, so that none meets the per-token rate limit (20 requests/s, bursts of
100): the limit is what one customer meets, not the server's cost.

The floor, started the same way (one uvicorn process on loopback): a FastAPI app with one
``def`` endpoint behind the same ``HTTPBearer`` dependency, comparing the token with a constant
and answering a constant JSON object of the quotas' size: what FastAPI + uvicorn cost with no
ledger, no token lookup, no rate limit.

Measured with bench/api_common.py's load generator, a process of its own keeping N
connections alive (default 16) and sending one request after another on each for S seconds
(default 10) after 1 s of warm-up: requests/s, latency median/p99, every status other than
200 (any is an error). The floor and the server are measured in turn, twice each (floor,
vce, floor, vce), so that background load hits both alike; the verdict takes the better of
the server's two runs. Also for context: one client (latency without queueing), and where a
request's own work goes, each part called in this process on the same ledger (500 times): the
token check, the rate limiter, the quota view as the service keeps it (a second) and the ledger
reads behind it (and how many SQL statements they are), the JSON reply.

Prints a table; writes bench/results/api_quotas.json and a section of docs/benchmarks.md
(between markers; not with --no-doc). Exit 0 when the target is met, 1 when it is missed,
2 when the set-up or a measurement failed (a status other than 200 included).

``--quick`` (for CI): 4 clients for 1 s, one run each, 20 calls of each part; nothing
written; exit 0 unless something broke.

    .venv/bin/python bench/api_quotas.py [--clients 16] [--seconds 10] [--no-doc] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import api_common as common

from tests.support.server import server_env

TARGET_PER_SECOND = 500.0
PATH = "/v1/quotas"
FLOOR_TOKEN = "vce_00000000_floorfloorfloorfloorfloorfloorfloorfloorfloo"
QUICK_CLIENTS, QUICK_SECONDS = 4, 1.0
CALLS, QUICK_CALLS = 500, 20  # in-process calls of each part of a request
# Enough of the tenant's tokens, taken in turn, that none meets the per-token rate limit
# below twice the target (their bursts cover the first seconds on top).
TOKENS = math.ceil(2 * TARGET_PER_SECOND / common.RATE_PER_TOKEN)

FLOOR_APP = """
import os, sys
import uvicorn
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

TOKEN = os.environ["VCE_TOKEN"]
QUOTAS = {kind: {"limit": 1000, "used": 0, "reserved": 0}
          for kind in ("vms", "vcpus", "memory_mib", "disks", "disk_gib", "networks",
                       "public_ips", "zone_links", "backup_schedules", "backup_gib")}
bearer = HTTPBearer(auto_error=False)
app = FastAPI()

def caller(credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
    if credentials is None or credentials.credentials != TOKEN:
        raise HTTPException(401)
    return "bench"

@app.get("/v1/quotas")
def quotas(who: str = Depends(caller)) -> dict:
    return {"quotas": QUOTAS}

@app.get("/healthz")
def health() -> dict:
    return {"status": "ok"}

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False)
"""


class FloorServer(common.Server):
    """The floor app, started, waited for and stopped as the harness does `vce serve`."""

    def start(self) -> FloorServer:
        env = {**server_env(self.ledger_url), "VCE_TOKEN": FLOOR_TOKEN}
        with self.log.open("a") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-c", FLOOR_APP, str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.wait_healthy()
        return self


@contextlib.contextmanager
def floor_server(lab: common.Lab) -> Iterator[common.Server]:
    server = FloorServer(lab.ledger_url, lab.base / "floor.log")
    try:
        yield server.start()
    finally:
        server.stop()


def check_statuses(name: str, figures: dict[str, Any]) -> None:
    others = {code: n for code, n in figures["statuses"].items() if code != "200"}
    if others or not figures["requests"]:
        raise RuntimeError(f"{name}: replies other than 200: {others or 'none at all'}")


def measure(
    name: str, server: common.Server, tokens: list[str], clients: int, seconds: float
) -> dict:
    figures = common.measure_load(server.url, PATH, tokens, clients, seconds)
    figures["load_average_after"] = common.load_average()
    check_statuses(name, figures)
    latency = figures["latency"]
    common.log(
        f"{name}, {clients} clients: {figures['per_second']:.0f} req/s, median "
        f"{latency['median_ms']:.2f} ms, p99 {latency['p99_ms']:.2f} ms"
    )
    return figures


def timed(action: Callable[[], object], calls: int) -> dict[str, Any]:
    for _warmup in range(20):
        action()
    seconds = []
    for _call in range(calls):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return common.summary_ms(seconds)


def parts(lab: common.Lab, calls: int) -> dict[str, Any]:
    """Where a request's own work goes, each part called in this process on the same ledger
    (median of `calls` after 20 warm-ups): the token check (cached, as in the server after a
    token's first use), the rate limiter, the quota view as `Terms` keeps it and the ledger
    reads behind it, the JSON reply; and the SQL statements of those reads."""
    import sqlalchemy as sa
    from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
    from fastapi.responses import JSONResponse
    from vce_server.identity import Identity
    from vce_server.limits import RateLimiter
    from vce_server.service.terms import Terms

    identity = Identity(Ledger.open(lab.ledger_url))
    who = identity.authenticate(lab.token)
    terms = Terms(lab.ledger_url)
    limiter = RateLimiter(common.RATE_PER_TOKEN, calls * 10)
    answer = terms.quotas(who)
    actions = {
        "token check (`Identity.authenticate`, cached)": lambda: identity.authenticate(lab.token),
        "rate limiter (`RateLimiter.take`)": lambda: limiter.take(lab.token),
        "the quota view as kept (`Terms.quotas`, within a second)": lambda: terms.quotas(who),
        "its ledger reads (`Terms.read_quotas`, once a second a tenant)": lambda: terms.read_quotas(
            who, common.TENANT
        ),
        "JSON reply (`JSONResponse`)": lambda: JSONResponse(answer).body,
    }
    figures = {label: timed(action, calls) for label, action in actions.items()}
    statements: list[str] = []
    engine = Ledger.open(lab.ledger_url).store.engine
    sa.event.listen(engine, "before_cursor_execute", lambda *event: statements.append(event[2]))
    terms.read_quotas(who, common.TENANT)
    return {"figures": figures, "statements": len(statements)}


def run(args: argparse.Namespace, results: dict[str, Any]) -> None:
    with (
        common.lab(private_libvirtd=False, tokens=TOKENS) as lab,
        common.serve(lab) as vce,
        floor_server(lab) as floor,
    ):
        rounds = 1 if args.quick else 2
        runs: dict[str, list[dict[str, Any]]] = {"floor": [], "vce": []}
        for _round in range(rounds):
            runs["floor"].append(measure("floor", floor, [FLOOR_TOKEN], args.clients, args.seconds))
            runs["vce"].append(measure("vce", vce, lab.tokens, args.clients, args.seconds))
        results["runs"] = runs
        results["parts"] = parts(lab, QUICK_CALLS if args.quick else CALLS)
        if not args.quick:
            results["one_client"] = {
                "floor": measure("floor", floor, [FLOOR_TOKEN], 1, args.seconds),
                "vce": measure("vce", vce, lab.tokens, 1, args.seconds),
            }


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return max(runs, key=lambda figures: figures["per_second"])


def report_lines(results: dict[str, Any]) -> list[str]:
    lines = [
        "| server | clients | run | requests/s | median | p99 | statuses |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    rows = [(name, i + 1, f) for name, runs in results["runs"].items() for i, f in enumerate(runs)]
    rows += [(name, "1 client", f) for name, f in results.get("one_client", {}).items()]
    for name, number, figures in rows:
        latency = figures["latency"]
        statuses = ", ".join(f"{code}: {n}" for code, n in figures["statuses"].items())
        lines.append(
            f"| {name} | {figures['clients']} | {number} | {figures['per_second']:.0f} | "
            f"{latency['median_ms']:.2f} ms | {latency['p99_ms']:.2f} ms | {statuses} |"
        )
    return lines


def parts_lines(results: dict[str, Any]) -> list[str]:
    found = results["parts"]
    lines = [
        "",
        f"A request's own work, in-process (median; the quotas' read is {found['statements']} "
        "SQL statements, BEGIN included):",
        "",
        "| part | median | p95 |",
        "| --- | ---: | ---: |",
    ]
    for label, f in found["figures"].items():
        lines.append(f"| {label} | {f['median_ms']:.3f} ms | {f['p95_ms']:.3f} ms |")
    return lines


def verdict(results: dict[str, Any]) -> str:
    vce, floor = best(results["runs"]["vce"]), best(results["runs"]["floor"])
    met = "PASS" if results["target_met"] else "MISS"
    return (
        f"vce serve: {vce['per_second']:.0f} req/s with {vce['clients']} clients, target >= "
        f"{TARGET_PER_SECOND:.0f}: **{met}**; {vce['per_second'] / floor['per_second']:.2f}x "
        f"the floor ({floor['per_second']:.0f} req/s)."
    )


def setup(results: dict[str, Any]) -> str:
    return (
        f"{results['seconds']:.0f} s per run after 1 s of warm-up, floor and vce in turn; "
        "p99 is the nearest rank."
    )


def main(argv: list[str] | None = None) -> int:
    parser = common.arguments(__doc__, "4 clients, 1 s")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.seconds = QUICK_CLIENTS, QUICK_SECONDS
    bench = common.Bench(
        name="api_quotas",
        run=lambda results: run(args, results),
        target_met=lambda results: best(results["runs"]["vce"])["per_second"] >= TARGET_PER_SECOND,
        table=lambda results: report_lines(results) + parts_lines(results),
        verdict=verdict,
        setup=setup,
    )
    settings = {"clients": args.clients, "seconds": args.seconds}
    return common.execute(bench, settings, args.quick, args.no_doc)


if __name__ == "__main__":
    sys.exit(main())
