"""Every benchmark's quick mode in turn, for CI: so that no benchmark breaks unnoticed.

Runs ``bench/<script> --quick`` for each script below with this interpreter, its output
passed through, fastest first; stops at the first failure with a message naming the script
and its exit status. A quick run uses small counts, writes neither bench/results nor
docs/benchmarks.md, and fails only when something breaks, never on a missed speed target.

Each script gets at most PER_SCRIPT_TIMEOUT_S; then it is interrupted (SIGINT, so its
finally blocks remove its domains, networks, namespaces and daemons), and killed if it is
still there CLEANUP_GRACE_S later. Prints each script's time and the total.

    .venv/bin/python bench/quick.py [SCRIPT ...]    # e.g. env10 quota_check; default: all
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SCRIPTS = (
    "api_submit",
    "api_read",
    "api_quotas",
    "panel_dashboard",
    "console_echo",
    "pulumi_api",
    "floor",
    "firewall_install",
    "profile_env",
    "quota_check",
    "drift",
    "public_ips",
    "ssh_vs_socket",
    "migration",
    "firewall_throughput",
    "fleet_apply",
    "billing",
    "backup",
    "env10",
)
PER_SCRIPT_TIMEOUT_S = 240.0
CLEANUP_GRACE_S = 60.0


def run_one(script: str) -> tuple[int, float]:
    """Run one script's quick mode; its exit status (or a note of the timeout) and wall time."""
    argv = [sys.executable, str(BENCH / f"{script}.py"), "--quick"]
    print(f"==> bench/{script}.py --quick", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=BENCH.parent)
    try:
        status = proc.wait(timeout=PER_SCRIPT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f"==> {script}: over {PER_SCRIPT_TIMEOUT_S:.0f} s, interrupting", flush=True)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=CLEANUP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        status = 124  # as timeout(1) reports it
    return status, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scripts", nargs="*", metavar="SCRIPT", help=", ".join(SCRIPTS))
    args = parser.parse_args(argv)
    unknown = sorted(set(args.scripts) - set(SCRIPTS))
    if unknown:
        parser.error(f"no such benchmark: {', '.join(unknown)}")
    chosen = args.scripts or list(SCRIPTS)
    begin = time.perf_counter()
    times: list[str] = []
    for script in chosen:
        status, wall = run_one(script)
        times.append(f"{script} {wall:.0f} s")
        if status != 0:
            print(
                f"\nFAILED: bench/{script}.py --quick exited {status} after {wall:.0f} s "
                f"({', '.join(times)}; total {time.perf_counter() - begin:.0f} s)",
                file=sys.stderr,
            )
            return 1
    print(f"\nall {len(chosen)} quick runs passed: {', '.join(times)}")
    print(f"total {time.perf_counter() - begin:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
