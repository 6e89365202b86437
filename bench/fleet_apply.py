"""Fleet apply: playbooks/tenant.yml over 2, 4 and 8 KVM hosts reached over SSH, 5 stopped VMs
each, with Ansible's forks; and the no-op re-run of the fleet.

Issue 21: "Fleet apply of 2, 4 and 8 hosts (5 stopped VMs each): the wall time of 8 hosts at
most 2x that of 2 hosts with forks >= 8 (the curve printed), no-op re-run of the fleet under
10 s."

Per fleet size, one multi-host lab (tools.multihost, ``fleet_hosts(N)``: hosts over zone-a and
zone-b in turn, base dir under /var/lib/vce-kvm/labs), its inventory as
``MultiHostLab.write_inventory`` writes it (Ansible over SSH with pipelining, the engine through
each host's qemu+ssh URI, host commands through ssh), a SQLite ledger in the lab dir shared by
the modules and the controller's callback, and one tenant per host (tests/support/fleet.py:
an isolated network and 5 VMs of 96 MiB on the tiny guest, stopped). Measured, for each size:

1. FIRST: ``ansible-playbook -i <inventory> playbooks/tenant.yml`` on fresh hosts (forks from
   ansible.cfg: 10); every host must report changes and no failure.
2. NO-OP: the same playbook again; every host must report changed=0.

The labs are started and removed untimed, one size after the other (never two at once); all
namespaces, daemons and files go in finally blocks. Prints the curve (wall per size, ratio to
2 hosts) and PASS/MISS per target; writes bench/results/fleet_apply.json. Exit 0 when both
targets are met, 1 when one is not, 2 when a set-up or a run failed.

``--quick`` (for CI): 1 and 2 hosts with 1 VM each, nothing written; exit 2 on a failure,
else 0 (the targets are for 2, 4 and 8 hosts).

    .venv/bin/python bench/fleet_apply.py [--sizes 2 4 8] [--vms 5] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "collections"))
sys.path.insert(0, str(ROOT / "bench"))

from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine  # noqa: E402
from env10 import code_version, host_busy, log, machine_facts, machine_line, wait_quiet  # noqa: E402

from tests.support.fleet import (  # noqa: E402
    Fleet,
    apply,
    declaration,
    make_fleet,
    recap,
    start_fleet,
    stop_fleet,
)
from tests.support.ledger import forget_stores  # noqa: E402

SIZES = (2, 4, 8)
QUICK_SIZES = (1, 2)
VMS = 5
QUICK_VMS = 1
REPEATS = 2
TARGET_RATIO = 2.0  # wall of the largest fleet / wall of 2 hosts
TARGET_NOOP_S = 10.0
RESULTS = ROOT / "bench" / "results" / "fleet_apply.json"


def forks() -> int:
    """Ansible's forks as ansible.cfg sets them for the playbook."""
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("ansible-config")), "dump", "--only-changed"],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=True,
    )  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith("DEFAULT_FORKS("):
            return int(line.rsplit("=", 1)[1])
    return 5  # Ansible's default


def cpu_ticks() -> tuple[int, int]:
    """The machine's (busy, total) CPU ticks so far, every process."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def timed_apply(fleet: Fleet, noop: bool, wait: bool) -> dict[str, float]:
    """One run of tenant.yml over the fleet, checked: its wall, the controller's CPU (the
    ansible-playbook process tree) and the machine's busy cores (the lab hosts' work runs on
    this machine too, and so does other work). With `wait`, after waiting for a quiet machine."""
    if wait:
        wait_quiet()
    busy0, total0 = cpu_ticks()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    code, out = apply(fleet)
    wall = time.perf_counter() - start
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy1, total1 = cpu_ticks()
    counts = recap(out)
    if code != 0 or set(counts) != set(fleet.lab.hosts):
        raise RuntimeError(f"tenant.yml failed ({code}):\n{out[-3000:]}")
    bad = [host for host, c in counts.items() if (c["changed"] == 0) != noop]
    if bad:
        raise RuntimeError(f"{'no-op' if noop else 'first'} run: unexpected changes on {bad}")
    controller = (children1.ru_utime + children1.ru_stime) - (
        children0.ru_utime + children0.ru_stime
    )
    cores = os.cpu_count() or 1
    return {
        "wall_s": wall,
        "controller_cpu_s": controller,
        "busy_cores": cores * (busy1 - busy0) / max(1, total1 - total0),
    }


def remove_tenants(fleet: Fleet) -> None:
    """Every host's tenant removed (untimed), for the next round's first apply."""
    for host in fleet.lab.hosts.values():
        engine.run_environment(
            {"uri": host.ssh_uri, "host_command": host.ssh_command, "ledger_url": fleet.ledger_url,
             "tenant": fleet.tenant_of(host.name), "state": "absent"}
        )  # fmt: skip


def measure(size: int, vms: int, repeats: int, wait: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """One fleet of `size` hosts: `repeats` rounds of its first apply and no-op re-run (the
    fastest counts: other work shares the machine); and the machine."""
    lab = start_fleet(size)
    try:
        fleet = make_fleet(lab)
        for index, host in enumerate(lab.hosts, start=1):
            fleet.declare(host, declaration(index, vms))
        conn = next(iter(lab.hosts.values())).connect()
        machine = machine_facts(conn)
        conn.close()
        log(f"{size} host(s) up ({machine_line(machine)}); applying {size} x {vms} stopped VMs")
        rounds = []
        for repeat in range(repeats):
            if repeat:
                remove_tenants(fleet)
            first = timed_apply(fleet, noop=False, wait=wait)
            noop = timed_apply(fleet, noop=True, wait=wait)
            log(f"{size} host(s): first {first['wall_s']:.1f} s, no-op {noop['wall_s']:.1f} s")
            rounds.append({"first": first, "noop": noop})
        row = {
            "hosts": size,
            "vms_per_host": vms,
            "first_s": min(r["first"]["wall_s"] for r in rounds),
            "noop_s": min(r["noop"]["wall_s"] for r in rounds),
            "rounds": rounds,
        }
        return row, machine
    finally:
        forget_stores()
        stop_fleet(lab)


def report(results: dict[str, Any]) -> list[str]:
    rows = results["curve"]
    base = next((r for r in rows if r["hosts"] == 2), rows[0])
    lines = [
        f"forks {results['forks']}; {rows[0]['vms_per_host']} stopped VMs per host",
        "| hosts | first apply | vs 2 hosts | controller CPU | machine busy | no-op re-run |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = r["first_s"] / base["first_s"]
        first, noop = r["first_s"], r["noop_s"]
        (fastest,) = [x["first"] for x in r["rounds"] if x["first"]["wall_s"] == first][:1]
        cpu, busy = fastest["controller_cpu_s"], fastest["busy_cores"]
        lines.append(
            f"| {r['hosts']} | {first:.1f} s | {ratio:.2f}x | {cpu:.1f} s | {busy:.2f} cores "
            f"| {noop:.1f} s |"
        )
    largest = rows[-1]
    ratio = largest["first_s"] / base["first_s"]
    noop = max(r["noop_s"] for r in rows)
    results["targets"] = {
        "ratio": {"value": ratio, "target": TARGET_RATIO, "met": ratio <= TARGET_RATIO},
        "noop_s": {"value": noop, "target": TARGET_NOOP_S, "met": noop < TARGET_NOOP_S},
    }
    for name, target in results["targets"].items():
        verdict = "PASS" if target["met"] else "MISS"
        lines.append(f"{verdict} {name}: {target['value']:.2f} (target {target['target']})")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--vms", type=int, default=VMS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke run: 1 and 2 hosts, 1 VM, nothing written"
    )
    args = parser.parse_args(argv)
    sizes, vms = (QUICK_SIZES, QUICK_VMS) if args.quick else (sorted(args.sizes), args.vms)
    repeats = 1 if args.quick else args.repeats
    results: dict[str, Any] = {
        "benchmark": "fleet_apply",
        "started_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "code": code_version(),
        "forks": forks(),
        "curve": [],
    }
    errors: list[str] = []
    try:
        for size in sizes:
            row, results["machine"] = measure(size, vms, repeats, wait=not args.quick)
            results["curve"].append(row)
    except Exception as error:
        errors.append(f"{type(error).__name__}: {error}")
        log(f"FAILED: {error}\n{traceback.format_exc()}")
    if results["curve"]:
        print("\n".join(report(results)))
    met = all(t["met"] for t in results.get("targets", {}).values())
    return conclude(results, errors, RESULTS if not args.quick else None, met or args.quick)


def conclude(results: dict[str, Any], errors: list[str], path: Path | None, met: bool) -> int:
    """Record the results (at `path`; a quick run has none), print the errors; the exit
    status: 2 on an error, else 0 when the targets are met (or not judged), 1 when not."""
    results["host_busy_after"] = host_busy(0.5)
    results["errors"] = errors
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    return 2 if errors else 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
