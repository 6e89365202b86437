"""A 10-VM environment over qemu+ssh against the same over the host's local socket, same run.

Issue 21: "A 10-VM environment over `qemu+ssh` at most 1.3x the same over the local socket,
same run."

One invocation, one multi-host lab (tools.multihost) with a single host (``fleet_hosts(1)``:
kvm-a1 in zone-a, its sshd on the management network, base dir under /var/lib/vce-kvm/labs),
a SQLite ledger in the lab dir with the tiny guest in the zone's catalogue, and the tenant
``t1`` (tests/support/fleet.py: an isolated network and 10 VMs of 96 MiB on the tiny guest).
The VMs stay stopped: what differs between the two sides is the transport of the engine's
libvirt calls and host commands, and booting guests would add the same QEMU time to both.

The engine runs in this process (``engine.run_environment``, as the module does on the
host), alternately through the two ways to reach the same libvirtd:

* SOCKET: ``qemu:///system?socket=<the daemon's socket>``, host commands with
  ``ip netns exec <host>`` (the host's own console);
* SSH: ``LabHost.ssh_uri`` (``qemu+ssh://root@<mgmt>/system?...&command=<lab ssh>``), host
  commands through the lab's ``ssh`` (``LabHost.ssh_command``), as a controller reaches it.

Per repetition (default 3; the side going first alternates) and side: the FRESH apply of the
10 VMs, the NO-OP re-run, then ``state: absent`` (untimed). Fresh runs must change, no-op runs
must not. Median and min wall per side and the ratio SSH / SOCKET of the medians. The lab is
removed in a finally block. Prints a table; writes bench/results/ssh_vs_socket.json. Exit 0
when the fresh apply's ratio is within the target, 1 when not, 2 when a run failed.

``--quick`` (for CI): 3 VMs, 1 repetition, nothing written; exit 2 on a failure, else 0.

    .venv/bin/python bench/ssh_vs_socket.py [--vms 10] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
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
from env10 import code_version, log, machine_facts, machine_line  # noqa: E402
from fleet_apply import conclude  # noqa: E402

from tests.support.fleet import declaration, make_fleet, start_fleet, stop_fleet  # noqa: E402
from tests.support.ledger import forget_stores, register  # noqa: E402
from tools.multihost import LabHost  # noqa: E402

VMS = 10
QUICK_VMS = 3
REPEATS = 3
TARGET_RATIO = 1.3
TENANT = "t1"
SIDES = ("socket", "ssh")
RESULTS = ROOT / "bench" / "results" / "ssh_vs_socket.json"


def side_params(host: LabHost, side: str) -> dict[str, Any]:
    if side == "ssh":
        return {"uri": host.ssh_uri, "host_command": host.ssh_command}
    return {"uri": host.uri, "host_command": host.command_prefix}


def timed(params: dict[str, Any], expect_change: bool) -> float:
    start = time.perf_counter()
    result = engine.run_environment(params)
    wall = time.perf_counter() - start
    if result.changed != expect_change:
        raise RuntimeError(f"{'fresh' if expect_change else 'no-op'} run: changed={result.changed}")
    return wall


def measure(host: LabHost, shared: dict[str, Any], repeats: int) -> list[dict[str, Any]]:
    samples = []
    for repeat in range(repeats):
        order = SIDES if repeat % 2 == 0 else SIDES[::-1]
        for side in order:
            params = {**shared, **side_params(host, side)}
            fresh = timed(params, expect_change=True)
            noop = timed(params, expect_change=False)
            engine.run_environment({**params, "tenant": TENANT, "state": "absent"})
            log(f"round {repeat + 1} {side}: fresh {fresh:.2f} s, no-op {noop:.2f} s")
            samples.append({"round": repeat + 1, "side": side, "fresh_s": fresh, "noop_s": noop})
    return samples


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for side in SIDES:
        mine = [s for s in samples if s["side"] == side]
        summary[side] = {
            run: {
                "median": statistics.median(s[run] for s in mine),
                "min": min(s[run] for s in mine),
            }
            for run in ("fresh_s", "noop_s")
        }
    for run in ("fresh_s", "noop_s"):
        summary[f"ratio_{run}"] = summary["ssh"][run]["median"] / summary["socket"][run]["median"]
    return summary


def report(summary: dict[str, Any], vms: int) -> list[str]:
    lines = [f"{vms} stopped VMs, engine in process", "| run | socket | qemu+ssh | ratio |"]
    lines.append("|---|---|---|---|")
    for run, label in (("fresh_s", "fresh apply"), ("noop_s", "no-op re-run")):
        socket, ssh = summary["socket"][run]["median"], summary["ssh"][run]["median"]
        lines.append(f"| {label} | {socket:.2f} s | {ssh:.2f} s | {summary[f'ratio_{run}']:.2f}x |")
    ratio = summary["ratio_fresh_s"]
    verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
    lines.append(
        f"{verdict} fresh apply over qemu+ssh: {ratio:.2f}x the socket (target {TARGET_RATIO}x)"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=VMS)
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke run: 3 VMs, 1 round, nothing written"
    )
    args = parser.parse_args(argv)
    vms, repeats = (QUICK_VMS, 1) if args.quick else (args.vms, args.repeats)
    results: dict[str, Any] = {
        "benchmark": "ssh_vs_socket",
        "started_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "code": code_version(),
        "vms": vms,
        "repeats": repeats,
    }
    errors: list[str] = []
    saved = {k: os.environ.get(k) for k in ("VCE_LEDGER_URL",)}
    lab = None
    try:
        lab = start_fleet(1)
        fleet = make_fleet(lab)
        (host,) = lab.hosts.values()
        os.environ["VCE_LEDGER_URL"] = fleet.ledger_url
        conn = host.connect()
        results["machine"] = machine_facts(conn)
        conn.close()
        log(machine_line(results["machine"]))
        register(fleet.ledger_url, TENANT)
        declared = {k: v for k, v in declaration(1, vms).items() if k not in ("customer", "plan")}
        shared = {
            **declared,
            "tenant": TENANT,
            "ledger_url": fleet.ledger_url,
            "zone": host.zone,
            "zone_config": lab.inventory(sys.executable)["all"]["vars"]["vce_zones"][host.zone],
            "default_pool": "default",
        }
        results["samples"] = measure(host, shared, repeats)
        results["summary"] = summarize(results["samples"])
    except Exception as error:
        errors.append(f"{type(error).__name__}: {error}")
        log(f"FAILED: {error}\n{traceback.format_exc()}")
    finally:
        forget_stores()
        if lab is not None:
            stop_fleet(lab)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    met = args.quick
    if "summary" in results:
        print("\n".join(report(results["summary"], vms)))
        met = met or results["summary"]["ratio_fresh_s"] <= TARGET_RATIO
    return conclude(results, errors, RESULTS if not args.quick else None, met)


if __name__ == "__main__":
    sys.exit(main())
