"""What the control plane's benchmarks (api_read, api_quotas, api_submit) share: a lab for a
`vce serve` process to stand on, the server process itself, and a keep-alive HTTP load
generator.

The lab, in a temp dir under /tmp: a SQLite ledger with the tenant ``bench`` on a roomy plan,
one host record ``bench-host`` in zone ``bench`` (as the kvm_host role registers it) whose
libvirt is either a private libvirtd (tools.libvirtd; shared with the benchmark's own
process, so the engine in-process and the server read the same objects) or libvirt's
``test:///default`` (each process its own in-memory host: enough when only the server
touches libvirt), and write tokens of the tenant.

The load generator (``python bench/api_common.py load ...``, run in a process of its own so
that it does not share the server's or the benchmark's interpreter) keeps N HTTP/1.1
connections alive and sends one GET after another on each, for a fixed time; it prints one
JSON object: requests completed, per second, latency percentiles and every status other
than 200. It speaks just enough HTTP for uvicorn's replies (status line, headers,
Content-Length body): the cost measured is the server's, not a client library's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The checkout's engine and server, not copies installed in the venv.
for _path in (ROOT, ROOT / "collections", ROOT / "server", ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from tests.support.server import Server, register_host, running_server  # noqa: E402

RESULTS_DIR = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
TENANT = "bench"
ZONE = "bench"
HOST = "bench-host"
POOL = "default"
IMAGE_NAME = "base"
TEST_URI = "test:///default"
# A token may make RATE_PER_TOKEN requests a second (the server's default limit); a benchmark
# that sends more spreads its requests over enough tokens that none meets its limit: the limit
# is what one customer meets, not the server's cost.
RATE_PER_TOKEN = 20
LOAD_TIMEOUT_MARGIN = 30.0  # seconds a load run may take beyond its duration


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# statistics


def summary_ms(seconds: list[float]) -> dict[str, Any]:
    """quota_check's summary (median, p95, min, max in ms), with p99, without the samples
    (a load run has thousands)."""
    from quota_check import nearest_rank
    from quota_check import summary_ms as summary

    figures = summary(seconds)
    del figures["samples_ms"]
    figures["p99_ms"] = nearest_rank(sorted(seconds), 0.99) * 1000.0
    return figures


def machine() -> str:
    """The machine in one line, as the other benchmarks give it (libvirt's version from its
    test driver: these benchmarks start no guest, so QEMU's is left out)."""
    import libvirt
    from env10 import machine_facts

    conn = libvirt.open(TEST_URI)
    try:
        m = machine_facts(conn)
    finally:
        conn.close()
    return (
        f"{m['nproc']} CPUs (`nproc`), {m['memory_gib']} GiB RAM, {m['cpu_model']}, "
        f"kernel {m['kernel']}, {m['os']}, libvirt {m['libvirt']}, Python {m['python']}"
    )


def percentile_table(
    figures: dict[str, dict[str, Any]], labels: dict[str, str], columns: dict[str, str]
) -> list[str]:
    """A Markdown table: a row per label (figures[name] from summary_ms), a column per
    summary key (e.g. {"median_ms": "median"})."""
    lines = [
        "| measurement | " + " | ".join(columns.values()) + " |",
        "| --- |" + " ---: |" * len(columns),
    ]
    for name, label in labels.items():
        cells = " | ".join(f"{figures[name][key]:.2f} ms" for key in columns)
        lines.append(f"| {label} | {cells} |")
    return lines


def arguments(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """A benchmark's command line: its own options go on top of --no-doc and --quick."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--no-doc", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument("--quick", action="store_true", help=f"CI smoke run: {quick_help}")
    return parser


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


# --------------------------------------------------------------------------------------------
# the lab


@dataclass
class Lab:
    base: Path  # the temp dir, removed on the way out
    ledger_url: str
    uri: str  # the host record's libvirt URI
    env: dict[str, str] = field(default_factory=dict)  # for the server process too
    tokens: list[str] = field(default_factory=list)  # the tenant's write tokens
    image: Path | None = None

    @property
    def token(self) -> str:
        return self.tokens[0]


def register_lab(lab: Lab, tokens: int) -> None:
    """The tenant, the host record of zone `bench`, the zone's catalogue and `tokens` write
    tokens, the way an operator sets them up (engine modules; `vce admin token create`'s
    own function, in this process: the command's start-up per token would dominate)."""
    from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
    from vce_server.identity import Identity

    from tests.support.images import register_image
    from tests.support.ledger import register

    register(lab.ledger_url, TENANT)
    register_host(lab.ledger_url, HOST, ZONE, lab.uri)
    if lab.image is not None:
        register_image(lab.ledger_url, lab.image, name=IMAGE_NAME, zone=ZONE)
    identity = Identity(Ledger.open(lab.ledger_url))
    lab.tokens = [
        identity.create_token("customer", TENANT, "read write", f"bench-{n}", "bench")[0]
        for n in range(tokens)
    ]


@contextlib.contextmanager
def lab(private_libvirtd: bool, tokens: int = 1) -> Iterator[Lab]:
    """The lab; with private_libvirtd, the daemon (its `default` pool, the base image) too.
    Every object of the tenant, the pool, the daemon and the temp dir go on the way out."""
    import libvirt
    from env10 import remove_pool
    from quota_check import make_image

    from tests.support.ledger import forget_stores
    from tools.cleanup import remove_guard, remove_prefixed
    from tools.labhost import ensure_pool
    from tools.libvirtd import PrivateLibvirtd, domain_type

    base = Path(tempfile.mkdtemp(prefix="vce-apibench-", dir="/tmp"))
    url = f"sqlite:///{base / 'ledger.sqlite3'}"
    daemon = PrivateLibvirtd(base / "d") if private_libvirtd else None
    conn = None
    saved = dict(os.environ)
    try:
        if daemon is None:
            here = Lab(base, url, TEST_URI)
        else:
            daemon.start()
            conn = daemon.connect()
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            ensure_pool(conn, POOL, daemon.base_dir / "pool")
            env = {
                "VCE_DOMAIN_TYPE": domain_type(),
                "VCE_CONSOLE_LOG_DIR": str(daemon.log_dir / "qemu"),
            }
            image = make_image(base / "base.qcow2")  # empty: VMs are defined, never booted
            here = Lab(base, url, daemon.uri, env, image=image)
        os.environ.update(here.env)
        os.environ["VCE_LEDGER_URL"] = url
        register_lab(here, tokens)
        yield here
    finally:
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                remove_prefixed(conn, f"{TENANT}_")
            remove_pool(conn)
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
        forget_stores()
        remove_guard()
        if daemon is not None:
            daemon.stop()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(base, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# the server process


@contextlib.contextmanager
def serve(here: Lab, *argv: str) -> Iterator[Server]:
    """`vce serve` on a free loopback port, one uvicorn process, its log in the lab's dir
    (the server tier's harness, tests/support/server.py); stopped on the way out."""
    with running_server(here.ledger_url, here.base / "serve.log", argv) as server:
        yield server


def client(server: Server, tokens: list[str], timeout: float) -> Any:
    """An httpx client of the server whose requests take the tokens in turn."""
    import httpx

    turn = itertools.cycle(tokens)

    class TokensInTurn(httpx.Auth):
        def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
            request.headers["Authorization"] = f"Bearer {next(turn)}"
            yield request

    return httpx.Client(base_url=server.url, auth=TokensInTurn(), timeout=timeout)


# --------------------------------------------------------------------------------------------
# one benchmark's run, report and verdict


@dataclass(frozen=True)
class Bench:
    """What differs between the benchmarks; `execute` does the rest alike."""

    name: str  # "api_read": bench/results/<name>.json, the doc's markers
    run: Callable[[dict[str, Any]], None]  # measures, filling the results
    target_met: Callable[[dict[str, Any]], bool]
    table: Callable[[dict[str, Any]], list[str]]  # a Markdown table of the figures
    verdict: Callable[[dict[str, Any]], str]  # one sentence, the verdict in **bold**
    setup: Callable[[dict[str, Any]], str]  # one sentence: what was measured how often


def execute(bench: Bench, settings: dict[str, Any], quick: bool, no_doc: bool) -> int:
    """Run, print, and (not quick) write bench/results/<name>.json and the doc's section.
    Exit status: 0 target met (or quick), 1 missed, 2 the set-up or a measurement failed."""
    from env10 import code_version, write_doc_block

    begin = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": bench.name,
        "started_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "code": code_version(),
        "machine": machine(),
        "load_average": load_average(),
        **settings,
    }
    errors: list[str] = []
    try:
        bench.run(results)
        results["load_average_after"] = load_average()
        results["target_met"] = bench.target_met(results)
    except Exception as error:
        errors.append(f"{type(error).__name__}: {error}")
        log(f"FAILED: {error}\n{traceback.format_exc()}")
    results["errors"] = errors
    results["total_s"] = time.perf_counter() - begin
    path = RESULTS_DIR / f"{bench.name}.json"
    if not quick:  # a smoke run's figures are no results
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
    if "target_met" in results:
        print(f"Machine: {results['machine']}; load average {results['load_average']}")
        print(bench.setup(results))
        print("\n".join(bench.table(results)).replace("**", ""))
        print(bench.verdict(results).replace("**", ""))
        if not (quick or no_doc):
            lines = [
                f"Latest run: {results['started_utc']} at commit {results['code']} "
                f"(`bench/results/{bench.name}.json`, not committed).",
                "",
                f"Machine: {results['machine']}; load average before: "
                f"{results['load_average']}, after: {results['load_average_after']}.",
                bench.setup(results),
                "",
                *bench.table(results),
                "",
                bench.verdict(results),
            ]
            marker = f"{bench.name}:latest"
            write_doc_block(
                f"<!-- {marker}:begin (written by bench/{bench.name}.py) -->",
                f"<!-- {marker}:end -->",
                lines,
            )
            print(f"updated: {DOC}")
    print(f"total {results['total_s']:.1f} s")
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    if errors:
        return 2
    return 0 if results["target_met"] or quick else 1


# --------------------------------------------------------------------------------------------
# the load generator


@dataclass
class Load:
    host: str
    port: int
    path: str
    tokens: list[str]  # each connection takes them in turn, from its own starting point
    clients: int
    seconds: float
    warmup: float


def request_bytes(load: Load, token: str) -> bytes:
    return (
        f"GET {load.path} HTTP/1.1\r\nHost: {load.host}:{load.port}\r\n"
        f"Authorization: Bearer {token}\r\nAccept: application/json\r\n\r\n"
    ).encode()


async def one_reply(reader: asyncio.StreamReader) -> int:
    """Read one reply; its status."""
    status = int((await reader.readline()).split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _sep, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


async def connection(
    load: Load, number: int, start: float, end: float, out: dict[str, Any]
) -> None:
    """One keep-alive connection sending requests one after another until `end`; only replies
    that arrive after `start` (the warm-up's end) are counted."""
    reader, writer = await asyncio.open_connection(load.host, load.port)
    requests = [request_bytes(load, token) for token in load.tokens]
    turn = itertools.count(number)
    try:
        while time.perf_counter() < end:
            sent = time.perf_counter()
            writer.write(requests[next(turn) % len(requests)])
            status = await one_reply(reader)
            done = time.perf_counter()
            if sent >= start and done <= end:
                out["latencies"].append(done - sent)
                out["statuses"][status] += 1
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def run_load(load: Load) -> dict[str, Any]:
    out: dict[str, Any] = {"latencies": [], "statuses": Counter()}
    start = time.perf_counter() + load.warmup
    end = start + load.seconds
    await asyncio.gather(*(connection(load, n, start, end, out) for n in range(load.clients)))
    latencies = out["latencies"]
    return {
        "clients": load.clients,
        "seconds": load.seconds,
        "requests": len(latencies),
        "per_second": len(latencies) / load.seconds,
        "statuses": {str(code): count for code, count in out["statuses"].items()},
        "latency": summary_ms(latencies) if latencies else None,
    }


def measure_load(url: str, path: str, tokens: list[str], clients: int, seconds: float) -> dict:
    """The load generator in a process of its own; its figures."""
    host, port = url.removeprefix("http://").split(":")
    argv = [sys.executable, str(Path(__file__)), "load", "--host", host, "--port", port]
    argv += ["--path", path, "--clients", str(clients), "--seconds", str(seconds)]
    # The tokens through the environment: they never show in a process listing.
    env = {**os.environ, "VCE_TOKENS": " ".join(tokens)}
    timeout = seconds + LOAD_TIMEOUT_MARGIN
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator exited {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load", help="keep-alive GET load; prints JSON")
    load.add_argument("--host", default="127.0.0.1")
    load.add_argument("--port", type=int, required=True)
    load.add_argument("--path", required=True)
    load.add_argument("--clients", type=int, default=8)
    load.add_argument("--seconds", type=float, default=10.0)
    load.add_argument("--warmup", type=float, default=1.0)
    args = parser.parse_args(argv)
    figures = asyncio.run(
        run_load(
            Load(
                args.host,
                args.port,
                args.path,
                os.environ["VCE_TOKENS"].split(),
                args.clients,
                args.seconds,
                args.warmup,
            )
        )
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
