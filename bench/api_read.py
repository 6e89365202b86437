"""``GET /v1/vms`` for a tenant with 100 VMs, against the engine's own in-process read of the
same VMs.

Issue 18: "GET /v1/vms for a tenant with 100 VMs: at most 1.5x the engine's own in-process
read of the same, plus 3 ms."

Set-up (bench/api_common.py): a private libvirtd (tools.libvirtd) in a temp dir under /tmp
with a dir pool ``default`` and an empty 64 MiB qcow2 base image in the catalogue of zone
``bench``; a SQLite ledger with the tenant ``bench`` and the host record ``bench-host`` of
zone ``bench`` on that daemon; a read-write token. The private daemon, not
``test:///default``: the server process and this one must read the same objects, and the
test driver's state lives in each process. The tenant's 100 VMs (1 vCPU, 128 MiB, a 1 GiB
overlay boot disk, one NIC on an isolated network) are defined by ONE
``engine.run_environment`` call, ``state: stopped``, never started, after the tenant was
placed on the host as the server's first PUT places it (the service layer's
``Fleet.place``, in this process). Then ``vce serve`` on a free loopback port as an
operator starts it (one process, default options).

Measured, N times each (default 30) after 3 warm-ups, alternating so that background load
hits both alike, median and p95 (nearest rank):

- ENGINE: the read the service layer makes for the listing, called in this process with the
  same parameters: ``engine.facade.run_info`` (the tenant's facts from libvirt, its ledger
  facts, the catalogue), which ``Resources.listed`` calls for each host the tenant is placed
  on;
- API: ``GET /v1/vms`` with the tenant's token over a keep-alive loopback connection
  (httpx), its reply checked to hold the 100 VMs.

Prints a table; writes bench/results/api_read.json and a section of docs/benchmarks.md
(between markers; not with --no-doc). Exit 0 when the API's median is at most 1.5x the
engine's + 3 ms, 1 when not, 2 when the set-up or a measurement failed.

``--quick`` (for CI): 5 VMs, 3 samples after 1 warm-up; nothing written; exit 0 unless
something broke.

    .venv/bin/python bench/api_read.py [--vms 100] [--repeats 30] [--no-doc] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import api_common as common
import httpx

TARGET_RATIO = 1.5
TARGET_PLUS_MS = 3.0
MEMORY_MIB = 128
SIZE_GIB = 1
CIDR = "10.242.0.0/24"
QUICK_VMS, QUICK_REPEATS, QUICK_WARMUPS = 5, 3, 1


def declaration(lab: common.Lab, vms: int) -> dict[str, Any]:
    return {
        "uri": lab.uri,
        "ledger_url": lab.ledger_url,
        "tenant": common.TENANT,
        "zone": common.ZONE,
        "state": "present",
        "default_pool": common.POOL,
        "networks": [{"name": "lan", "cidr": CIDR, "mode": "isolated"}],
        "vms": [
            {
                "name": f"vm{v:03d}",
                "vcpus": 1,
                "memory_mib": MEMORY_MIB,
                "state": "stopped",
                "boot_disk": {"image": common.IMAGE_NAME, "size_gib": SIZE_GIB},
                "nics": [{"network": "lan", "mac": f"52:54:00:ea:{v >> 8:02x}:{v & 0xFF:02x}"}],
            }
            for v in range(vms)
        ],
    }


def placed_params(lab: common.Lab) -> dict[str, Any]:
    """The tenant placed on the zone's host as the server's first PUT would place it (its
    service layer, in this process), and the engine parameters it reads that host with."""
    from vce_server.service.resources import Resources

    resources = Resources(lab.ledger_url)
    host = resources.fleet.place(common.TENANT, common.ZONE)
    return resources.params(common.TENANT, host)


def engine_read(params: dict[str, Any]) -> Callable[[], int]:
    """The engine's read behind the listing (`facade.run_info`, which
    `Resources.listed` calls per host: the tenant's facts from libvirt, its ledger facts and
    the catalogue); the VMs' count."""
    from ansible_collections.vce.kvm.plugins.module_utils.engine.facade import run_info

    def read() -> int:
        return len(run_info(params)["vms"])

    return read


def api_read(client: httpx.Client) -> Callable[[], int]:
    def read() -> int:
        reply = client.get("/v1/vms")
        reply.raise_for_status()
        return len(reply.json()["vms"])

    return read


def sample(reads: dict[str, Callable[[], int]], vms: int, repeats: int, warmups: int) -> dict:
    """Each read `warmups` + `repeats` times, in turn; each must see the `vms` VMs."""
    seconds: dict[str, list[float]] = {name: [] for name in reads}
    for round_number in range(warmups + repeats):
        for name, read in reads.items():
            start = time.perf_counter()
            seen = read()
            elapsed = time.perf_counter() - start
            if seen != vms:
                raise RuntimeError(f"{name} read {seen} VMs, {vms} expected")
            if round_number >= warmups:
                seconds[name].append(elapsed)
    return {name: common.summary_ms(values) for name, values in seconds.items()}


def run(args: argparse.Namespace, results: dict[str, Any]) -> None:
    from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine

    with common.lab(private_libvirtd=True) as lab:
        params = placed_params(lab)
        start = time.perf_counter()
        engine.run_environment(declaration(lab, args.vms))
        results["create_s"] = time.perf_counter() - start
        common.log(f"{args.vms} VMs defined in {results['create_s']:.1f} s")
        with common.serve(lab) as vce, common.client(vce, lab.tokens, timeout=60) as client:
            reads = {"engine": engine_read(params), "api": api_read(client)}
            results["figures"] = sample(reads, args.vms, args.repeats, args.warmups)


def bound_ms(results: dict[str, Any]) -> float:
    return TARGET_RATIO * results["figures"]["engine"]["median_ms"] + TARGET_PLUS_MS


LABELS = {
    "engine": "engine in-process: the tenant's facts from libvirt",
    "api": "`GET /v1/vms` over HTTP",
}


def report_lines(results: dict[str, Any]) -> list[str]:
    columns = {"median_ms": "median", "p95_ms": "p95", "min_ms": "min", "max_ms": "max"}
    return common.percentile_table(results["figures"], LABELS, columns)


def verdict(results: dict[str, Any]) -> str:
    api, engine = results["figures"]["api"], results["figures"]["engine"]
    met = "PASS" if results["target_met"] else "MISS"
    return (
        f"API median {api['median_ms']:.2f} ms = {api['median_ms'] / engine['median_ms']:.2f}x "
        f"the engine's {engine['median_ms']:.2f} ms; bound 1.5x + 3 ms = "
        f"{bound_ms(results):.2f} ms: **{met}**."
    )


def setup(results: dict[str, Any]) -> str:
    return (
        f"Tenant bench: {results['vms']} stopped VMs, defined in {results['create_s']:.1f} s; "
        f"{results['repeats']} samples of each read after {results['warmups']} warm-ups, "
        "alternating; p95 is the nearest rank."
    )


def main(argv: list[str] | None = None) -> int:
    parser = common.arguments(__doc__, "5 VMs, 3 samples")
    parser.add_argument("--vms", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmups", type=int, default=3)
    args = parser.parse_args(argv)
    if args.quick:
        args.vms, args.repeats, args.warmups = QUICK_VMS, QUICK_REPEATS, QUICK_WARMUPS
    bench = common.Bench(
        name="api_read",
        run=lambda results: run(args, results),
        target_met=lambda results: results["figures"]["api"]["median_ms"] <= bound_ms(results),
        table=report_lines,
        verdict=verdict,
        setup=setup,
    )
    settings = {"vms": args.vms, "repeats": args.repeats, "warmups": args.warmups}
    return common.execute(bench, settings, args.quick, args.no_doc)


if __name__ == "__main__":
    sys.exit(main())
