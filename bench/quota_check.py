"""Quota check for a tenant with 500 resources: the gate's own work against its libvirt floor.

Issue 5: "A quota check (usage + delta + decision) for a tenant with 500 resources: under
20 ms on SQLite, measured against the time of the libvirt listing it needs (the floor)."

One invocation, one private libvirtd (tools.libvirtd) in a temp dir under /tmp, one dir pool
``default`` and a 64 MiB empty qcow2 base image (``qemu-img create``). The tenant ``bench`` is
registered in a SQLite ledger in the same temp dir with roomy quotas
(tests.support.ledger.register), then given 500 objects by ONE ``engine.run_environment``
call: 30 isolated networks (10.233.N.0/24), 220 standalone 1 GiB qcow2 disks and 250 VMs
(1 vCPU, 128 MiB, 1 GiB overlay boot disk, one NIC without a fixed IP), ``state: stopped``,
never started. Volumes are sparse, so this costs seconds, not disk space.

Measured, each N times (default 30) after 3 warm-ups, median and p95 (nearest rank) in ms,
the declaration being the same 500 objects plus one VM (so the delta is not zero):

1. FLOOR: ``Host(uri).inventory("bench")``, the libvirt listing the check needs (list +
   read the XML of every domain, network and volume of the tenant).
2. CHECK PROPER, without the listing: ``Gate(ledger, host, tenant, declaration)`` (reads the
   tenant, its plan's limits, the other hosts' usage and the reservations from SQLite) +
   ``observed_objects(inventory)`` + ``gate.check(observed, gate.others)``.
3. ADMISSION AT APPLY: ``with gate.reservation(plan)`` for a one-change plan: the ledger's
   write lock, a fresh listing, the check, the reservation written; released after each
   sample (outside the timing, as ``Gate.settle`` does after the changes).
4. CHECK MODE END TO END: ``engine.run_environment(params, check_mode=True)``, for context.

Also, for context: the names-only listing (listAll* without any XML), the one-call create.
Next to each figure: this process's CPU per sample (median), the private libvirtd's CPU per
sample (its mount namespace, mean) and the cores other processes used during the samples;
in the JSON also the garbage collector's time per sample and its full passes.

Every object, the pool, the private daemon and the temp dir are removed in finally blocks.
Prints a table; writes bench/results/quota_check.json and the latest figures into
docs/benchmarks.md (between markers; not with --no-doc). Exit 1 when the check proper's median
is 20 ms or more, 2 when the set-up or a measurement failed.

``--quick`` (for CI): 50 objects (3 networks, 22 disks, 25 VMs), 3 samples after 1 warm-up,
no waiting for a quiet machine, nothing written; exit 2 on a failure, else 0.

    .venv/bin/python bench/quota_check.py [--repeats 30] [--warmups 3] [--cprofile] [--no-doc]
        [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime as dt
import gc
import io
import json
import math
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import libvirt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The checkout's engine, not the copy installed in the venv (it may be an older layout).
sys.path.insert(0, str(ROOT / "collections"))
sys.path.insert(0, str(ROOT / "bench"))

from ansible_collections.vce.kvm.plugins.module_utils.core.plan import Change, Plan  # noqa: E402
from ansible_collections.vce.kvm.plugins.module_utils.core.spec import parse_environment  # noqa: E402
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine  # noqa: E402
from ansible_collections.vce.kvm.plugins.module_utils.engine.gate import (  # noqa: E402
    Gate,
    declare_environment,
    observed_objects,
)
from ansible_collections.vce.kvm.plugins.module_utils.host.connection import Host  # noqa: E402
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger  # noqa: E402
from env10 import (  # noqa: E402
    DOC,
    CpuMeter,
    code_version,
    host_busy,
    log,
    machine_facts,
    machine_line,
    remove_pool,
    wait_quiet,
    write_doc_block,
)

from tests.support.images import register_image  # noqa: E402
from tests.support.ledger import forget_stores, register  # noqa: E402
from tools.cleanup import remove_guard, remove_prefixed  # noqa: E402
from tools.labhost import ensure_pool  # noqa: E402
from tools.libvirtd import MNTNS_FILE, PrivateLibvirtd, domain_type  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "quota_check.json"
IMAGE_NAME = "base"  # the empty base image, in the catalogue of IMAGE_ZONE
IMAGE_ZONE = "bench"
TENANT = "bench"
POOL = "default"
DOC_BEGIN = "<!-- quota_check:latest:begin (written by bench/quota_check.py) -->"
DOC_END = "<!-- quota_check:latest:end -->"
CIDR_SECOND_OCTET = 233  # 10.233.N.0/24: clear of the 10.x ranges the tests and env10 use
MEMORY_MIB = 128
SIZE_GIB = 1
TARGET_MS = 20.0


@dataclass(frozen=True)
class Size:
    """The tenant's objects: the issue's 500, or a tenth of them for a quick run."""

    networks: int = 30
    disks: int = 220
    vms: int = 250

    @property
    def total(self) -> int:
        return self.networks + self.disks + self.vms


FULL = Size()
QUICK = Size(networks=3, disks=22, vms=25)
QUICK_REPEATS = 3
QUICK_WARMUPS = 1


# --------------------------------------------------------------------------------------------
# the declaration


def declaration_params(uri: str, image: Path, size: Size, extra_vms: int = 0) -> dict[str, Any]:
    """The tenant's environment: `networks` isolated /24s, `disks` standalone disks, `vms`
    (+ `extra_vms`) stopped VMs with one NIC each (networks in turn, fixed MAC, no fixed IP)."""
    networks, disks, vms = size.networks, size.disks, size.vms + extra_vms
    return {
        "uri": uri,
        "tenant": TENANT,
        "zone": IMAGE_ZONE,
        "state": "present",
        "default_pool": POOL,
        "networks": [
            {"name": f"net{n:02d}", "cidr": f"10.{CIDR_SECOND_OCTET}.{n}.0/24", "mode": "isolated"}
            for n in range(networks)
        ],
        "disks": [{"name": f"disk{d:03d}", "size_gib": SIZE_GIB} for d in range(disks)],
        "vms": [
            {
                "name": f"vm{v:03d}",
                "vcpus": 1,
                "memory_mib": MEMORY_MIB,
                "state": "stopped",
                "boot_disk": {"image": IMAGE_NAME, "size_gib": SIZE_GIB},
                "nics": [
                    {
                        "network": f"net{v % networks:02d}",
                        "mac": f"52:54:00:e9:{v >> 8:02x}:{v & 0xFF:02x}",
                    }
                ],
            }
            for v in range(vms)
        ],
    }


def create_tenant(uri: str, image: Path, size: Size) -> dict[str, Any]:
    """All objects in one engine call (a failure ends the bench: the engine must manage it)."""
    start = time.perf_counter()
    run = engine.run_environment(declaration_params(uri, image, size))
    return {
        "mode": "one call",
        "changes": len(run.plan),
        "warnings": run.warnings,
        "wall_s": time.perf_counter() - start,
    }


def count_resources(host: Host) -> dict[str, int]:
    kinds = Counter(kind for kind, _name in observed_objects(host.inventory(TENANT)))
    counts = {"vms": kinds["vm"], "disks": kinds["disk"], "networks": kinds["network"]}
    counts["total"] = sum(counts.values())
    counts["other"] = sum(kinds.values()) - counts["total"]
    return counts


# --------------------------------------------------------------------------------------------
# measuring


def nearest_rank(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


def summary_ms(samples: list[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    ms = 1000.0
    return {
        "n": len(samples),
        "median_ms": statistics.median(ordered) * ms,
        "p95_ms": nearest_rank(ordered, 0.95) * ms,
        "min_ms": ordered[0] * ms,
        "max_ms": ordered[-1] * ms,
        "samples_ms": [round(s * ms, 4) for s in samples],
    }


class GcClock:
    """Time spent in Python's garbage collector while active; full (generation 2) passes."""

    def __init__(self) -> None:
        self.spent = 0.0
        self.full = 0
        self.started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            self.full += info["generation"] == 2
        else:
            self.spent += time.perf_counter() - self.started

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


def measure(
    name: str,
    action: Callable[[], dict[str, float] | None],
    repeats: int,
    warmups: int,
    after: Callable[[], None] | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Time `action` (bounded: warmups + repeats calls); `after` runs untimed after each call.
    An action may return its own parts (seconds by label), summarised alongside its total.
    CPU over the timed calls: this process, the private libvirtd's namespace, the rest.
    With quiet, first wait (bounded) for the machine to be nearly idle."""
    waited, busy = wait_quiet() if quiet else (0.0, host_busy(0.2))
    for _ in range(warmups):
        action()
        if after is not None:
            after()
    walls: list[float] = []
    cpus: list[float] = []
    gc_s: list[float] = []
    parts: dict[str, list[float]] = {}
    collector = GcClock()
    with CpuMeter() as meter, collector:
        for _ in range(repeats):
            collector.spent = 0.0
            cpu0 = time.process_time()
            start = time.perf_counter()
            split = action()
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu0)
            gc_s.append(collector.spent)
            for label, seconds in (split or {}).items():
                parts.setdefault(label, []).append(seconds)
            if after is not None:
                after()
    result = summary_ms(walls)
    result["own_cpu_median_ms"] = statistics.median(cpus) * 1000.0
    result["libvirtd_cpu_mean_ms"] = meter.figures["libvirt_side_cpu_s"] / repeats * 1000.0
    result["parts"] = {label: summary_ms(values) for label, values in parts.items()}
    result["gc_ms"] = [round(g * 1000.0, 4) for g in gc_s]
    result["full_collections"] = collector.full
    result["cpu"] = meter.figures
    result["host_busy_before"] = busy
    result["quiet_wait_s"] = waited
    log(
        f"{name}: median {result['median_ms']:.2f} ms, p95 {result['p95_ms']:.2f} ms, "
        f"background {meter.figures['background_cores']:.2f} cores"
    )
    return result


def bare_listing(conn: libvirt.virConnect) -> Callable[[], None]:
    """Names only: what listing costs before any XML is read (context for the floor)."""
    prefix = f"{TENANT}_"

    def action() -> None:
        names = [d.name() for d in conn.listAllDomains(0)]
        names += [n.name() for n in conn.listAllNetworks(0)]
        for pool in conn.listAllStoragePools(0):
            names += [v.name() for v in pool.listAllVolumes(0)]
        assert any(n.startswith(prefix) for n in names)

    return action


@dataclass(frozen=True)
class Series:
    """How each figure is sampled."""

    repeats: int
    warmups: int
    quiet: bool = True  # wait for a quiet machine first


def run_measurements(uri: str, url: str, image: Path, size: Size, series: Series) -> dict[str, Any]:
    params = declaration_params(uri, image, size, extra_vms=1)  # one VM more than exists
    repeats, warmups, quiet = series.repeats, series.warmups, series.quiet
    declaration = declare_environment(parse_environment(params, POOL), prune=False)
    host = Host(uri)
    ledger = Ledger.open(url)
    inventory = host.inventory(TENANT)
    out: dict[str, Any] = {}

    out["bare_listing"] = measure(
        "names-only listing", bare_listing(host.conn), repeats, warmups, quiet=quiet
    )

    def floor() -> None:
        host.inventory(TENANT)

    out["floor"] = measure("floor", floor, repeats, warmups, quiet=quiet)

    delta: dict[str, int] = {}

    def check() -> dict[str, float]:
        t0 = time.perf_counter()
        gate = Gate(ledger, host, TENANT, declaration)
        t1 = time.perf_counter()
        observed = observed_objects(inventory)
        t2 = time.perf_counter()
        delta.update(gate.check(observed, gate.others))
        t3 = time.perf_counter()
        return {
            "Gate() (ledger reads, reservation key)": t1 - t0,
            "observed_objects": t2 - t1,
            "check": t3 - t2,
        }

    out["check"] = measure("check proper", check, repeats, warmups, quiet=quiet)
    out["check"]["delta"] = dict(delta)
    out["check"]["observed_objects"] = len(observed_objects(inventory))

    gate = Gate(ledger, host, TENANT, declaration)
    plan = Plan([Change("vm", "x", "create")])

    def admission() -> None:
        with gate.reservation(plan):
            pass

    def release() -> None:  # what Gate.settle does once the changes are made
        with ledger.store.read() as connection:
            ledger.release(connection, gate.key)

    out["admission"] = measure("admission at apply", admission, repeats, warmups, release, quiet)

    def check_mode() -> None:
        result = engine.run_environment(params, check_mode=True)
        assert [(c["kind"], c["action"]) for c in result.plan] == [("vm", "create")], result.plan

    out["check_mode_run"] = measure("check-mode run", check_mode, repeats, warmups, quiet=quiet)
    return out


def profile_check(uri: str, url: str, image: Path, size: Size, loops: int = 200) -> str:
    """cProfile of the check proper (`loops` times), top functions by cumulative time."""
    params = declaration_params(uri, image, size, extra_vms=1)
    declaration = declare_environment(parse_environment(params, POOL), prune=False)
    host = Host(uri)
    ledger = Ledger.open(url)
    inventory = host.inventory(TENANT)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(loops):
        gate = Gate(ledger, host, TENANT, declaration)
        gate.check(observed_objects(inventory), gate.others)
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(30)
    return text.getvalue()


# --------------------------------------------------------------------------------------------
# report


ROWS = (
    ("floor", "floor: `host.inventory()`, the listing the check needs"),
    ("check", "check proper: Gate() + observed_objects + check"),
    ("admission", "admission at apply: `gate.reservation()` (lock + listing + check + write)"),
    ("check_mode_run", "check-mode run, `run_environment(check_mode=True)`, end to end"),
    ("bare_listing", "names-only listing (listAll*, no XML), context"),
)


def report_lines(results: dict[str, Any]) -> list[str]:
    m = results.get("measurements", {})
    lines = [
        "| measurement | median | p95 | client CPU | libvirtd CPU | background cores |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, label in ROWS:
        if key not in m:
            continue
        f = m[key]
        lines.append(
            f"| {label} | {f['median_ms']:.2f} ms | {f['p95_ms']:.2f} ms "
            f"| {f['own_cpu_median_ms']:.1f} ms | {f['libvirtd_cpu_mean_ms']:.0f} ms "
            f"| {f['cpu']['background_cores']:.2f} |"
        )
        for part, figures in f.get("parts", {}).items():
            lines.append(
                f"| of which {part} | {figures['median_ms']:.2f} ms "
                f"| {figures['p95_ms']:.2f} ms | | | |"
            )
    return lines


def update_doc(results: dict[str, Any]) -> None:
    """The latest figures into docs/benchmarks.md, with when, what and where they were made."""
    check = results["measurements"]["check"]
    verdict = "PASS" if results["target_met"] else "MISS"
    lines = [
        f"Latest run: {results['started_utc']} at commit {results['code']} "
        f"(`{RESULTS.relative_to(ROOT)}`, not committed).",
        "",
        f"Machine: {machine_line(results['machine'])}.",
        f"Tenant {TENANT}: {results['resources']['total']} resources, created by one call in "
        f"{results['create']['wall_s']:.1f} s; {results['repeats']} samples after "
        f"{results['warmups']} warm-ups; p95 is the nearest rank.",
        "",
        *report_lines(results),
        "",
        f"Check proper median {check['median_ms']:.2f} ms, target < {TARGET_MS:.0f} ms: "
        f"**{verdict}**; {results['check_over_floor']:.3f}x the floor.",
    ]
    write_doc_block(DOC_BEGIN, DOC_END, lines)


def make_image(path: Path) -> Path:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmups", type=int, default=3)
    parser.add_argument("--cprofile", action="store_true", help="also profile the check proper")
    parser.add_argument("--no-doc", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke run: 50 objects, 3 samples, nothing written"
    )
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    if args.quick:
        args.repeats, args.warmups = QUICK_REPEATS, QUICK_WARMUPS
    series = Series(args.repeats, args.warmups, quiet=not args.quick)

    started = dt.datetime.now(dt.UTC)
    begin = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": "quota_check",
        "started_utc": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "repeats": args.repeats,
        "warmups": args.warmups,
        "declared": asdict(size),
        "code": code_version(),
    }
    errors: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="vce-quota-", dir="/tmp"))
    daemon = PrivateLibvirtd(base / "d")
    conn = None
    url = f"sqlite:///{base / 'ledger.sqlite3'}"
    try:
        daemon.start()
        CpuMeter.namespace = (daemon.base_dir / MNTNS_FILE).read_text().strip()
        conn = daemon.connect()
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        ensure_pool(conn, POOL, daemon.base_dir / "pool")
        image = make_image(base / "base.qcow2")
        os.environ["VCE_DOMAIN_TYPE"] = domain_type()
        os.environ["VCE_CONSOLE_LOG_DIR"] = str(daemon.log_dir / "qemu")
        os.environ["VCE_LEDGER_URL"] = url
        results["machine"] = machine_facts(conn)
        results["ledger"] = "SQLite file in the temp dir under /tmp"
        log(f"private libvirtd at {daemon.uri}; {machine_line(results['machine'])}")
        register(url, TENANT)
        register_image(url, image, name=IMAGE_NAME, zone=IMAGE_ZONE)  # the zone's catalogue

        log(f"creating {size.networks} networks, {size.disks} disks, {size.vms} stopped VMs ...")
        results["create"] = create_tenant(daemon.uri, image, size)
        log(f"created in {results['create']['wall_s']:.1f} s ({results['create']['mode']})")
        results["resources"] = count_resources(Host(daemon.uri))
        log(f"resources of tenant {TENANT}: {results['resources']}")
        if results["resources"]["total"] != size.total:
            raise RuntimeError(f"expected {size.total} resources, found {results['resources']}")
        results["measurements"] = run_measurements(daemon.uri, url, image, size, series)
        if args.cprofile:
            results["cprofile"] = profile_check(daemon.uri, url, image, size)
    except Exception as error:
        errors.append(f"{type(error).__name__}: {error}")
        log(f"FAILED: {error}\n{traceback.format_exc()}")
    finally:
        cleanup_start = time.perf_counter()
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                results["removed"] = len(remove_prefixed(conn, f"{TENANT}_"))
            remove_pool(conn)
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
        forget_stores()
        remove_guard()
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)
        results["cleanup_s"] = time.perf_counter() - cleanup_start

    results["host_busy_after"] = host_busy(0.5)
    results["total_s"] = time.perf_counter() - begin
    results["errors"] = errors
    check = results.get("measurements", {}).get("check")
    floor = results.get("measurements", {}).get("floor")
    if check and floor:
        results["check_over_floor"] = check["median_ms"] / floor["median_ms"]
        results["target_met"] = check["median_ms"] < TARGET_MS
    if not args.quick:  # a smoke run's figures are no results
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")

    if "machine" in results:
        print(f"Machine: {machine_line(results['machine'])}")
    print(f"Code: {results['code']}")
    if "resources" in results:
        r = results["resources"]
        print(
            f"Tenant {TENANT}: {r['total']} resources ({r['vms']} VMs, {r['disks']} disks, "
            f"{r['networks']} networks), created in {results['create']['wall_s']:.1f} s "
            f"({results['create']['mode']})"
        )
        if "one_call_error" in results["create"]:
            print(f"one-call create failed: {results['create']['one_call_error']}")
    print(f"{args.repeats} samples after {args.warmups} warm-ups; p95 is the nearest rank")
    print("\n".join(report_lines(results)))
    if check and floor:
        verdict = "PASS" if results["target_met"] else "MISS"
        print(
            f"check proper median {check['median_ms']:.2f} ms, target < {TARGET_MS:.0f} ms: "
            f"{verdict}; {results['check_over_floor']:.3f}x the floor "
            f"({floor['median_ms']:.1f} ms); delta {check['delta']}"
        )
    if check:
        slowest = max(range(len(check["samples_ms"])), key=check["samples_ms"].__getitem__)
        print(
            f"slowest check sample: #{slowest} {check['samples_ms'][slowest]:.2f} ms, of which "
            f"garbage collection {check['gc_ms'][slowest]:.2f} ms; full GC passes during the "
            f"samples: {check['full_collections']}"
        )
    if "cprofile" in results:
        print(results["cprofile"])
    print(f"total {results['total_s']:.1f} s (clean-up {results['cleanup_s']:.1f} s)")
    if not args.quick:
        print(f"results: {RESULTS}")
    if check and floor and not (args.quick or args.no_doc or errors):
        update_doc(results)
        print(f"updated: {DOC}")
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    if errors:
        return 2
    return 0 if results.get("target_met") or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
