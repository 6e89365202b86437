"""Installing the host firewall for 50 tenant networks in one nft batch, against its floor.

Issue 17: "rule installation for 50 tenant networks on a host in one nft batch under 100 ms."

One invocation. The table ``inet vce_guard`` is rendered by the engine's own renderer
(``render_guard``) for a host with 50 tenant networks (modes nat / routed / isolated in turn,
bridges ``virbr1`` .. ``virbr50``, 10.80.N.0/24 with gateway .1) and the uplink ``up0``. It is
installed into a scratch network namespace (``ip netns exec <ns>``, the way the multi-host
lab reaches its hosts; deleted at the end, also on failure), so nothing of the machine's own
firewall is touched. After waiting (at most 30 s) for a quiet machine, per round, interleaved,
after WARMUPS untimed rounds:

1. ``replace, new``: ``NftTable.replace(body)`` with the table absent (deleted, untimed): a
   host's first installation.
2. ``replace, present``: the same call with the same table in place: a repair or an update,
   the case of every later run.
3. ``floor, same text``: the very batch ``replace`` piped into nft (captured from it), as one
   bare ``ip netns exec <ns> nft -f -``, the table in place.
4. ``floor, empty table``: ``nft -f -`` of ``table inet vce_bench {}`` (then deleted,
   untimed): what any nft batch costs, whatever it holds.
5. ``prefix``: ``ip netns exec <ns> true``, the share of the namespace prefix in each figure
   (a production host runs nft without it).
6. ``observed`` and ``expected``: ``NftTable.observed()`` (one ``nft list tables`` + one
   ``nft -s list table``) and ``NftTable.expected(body)`` (the body loaded and listed in a
   ``unshare --net`` namespace): what a drift check and a plan cost per host.

Checked once: after ``replace`` the host's listing equals ``expected(body)``, and the table
holds the 50 bridges. Median, p95, min and max in ms; the target is the median of
``replace, new`` and of ``replace, present`` under 100 ms.

Prints a table; writes bench/results/firewall_install.json. Exit 0 when the target is met,
1 when not, 2 when a step failed. ``--quick`` (for CI): 3 rounds, no warm-up, no waiting for
a quiet machine, nothing written, exit 2 on a failure else 0; it exits 0 with a note when the
firewall is not in this checkout.

    .venv/bin/python bench/firewall_install.py [--rounds 20] [--warmups 2] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import secrets
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The checkout's engine, not the copy installed in the venv (it may be an older layout).
sys.path.insert(0, str(ROOT / "collections"))
sys.path.insert(0, str(ROOT / "bench"))

from ansible_collections.vce.kvm.plugins.module_utils.host.shell import HostShell  # noqa: E402
from env10 import code_version, host_busy, log, wait_quiet  # noqa: E402
from quota_check import summary_ms  # noqa: E402

try:  # the firewall (issue 17); a checkout without it skips --quick
    from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.firewall import (
        GuardModel,
        TenantBridge,
        render_guard,
    )
    from ansible_collections.vce.kvm.plugins.module_utils.host.firewall import NftTable
except ImportError as missing:
    MISSING: str | None = str(missing)
else:
    MISSING = None

RESULTS = ROOT / "bench" / "results" / "firewall_install.json"
NETWORKS = 50
MODES = ("nat", "routed", "isolated")
UPLINK = "up0"
TARGET_MS = 100.0
EMPTY_TABLE = "table inet vce_bench {\n}\n"
COMMAND_TIMEOUT = 60


# --------------------------------------------------------------------------------------------
# the table for 50 networks


def guard_body() -> str:
    """The engine's vce_guard body for a host with NETWORKS tenant networks and an uplink."""
    networks = tuple(
        TenantBridge(
            bridge=f"virbr{n + 1}",
            mode=MODES[n % len(MODES)],
            gateway=ipaddress.IPv4Address(f"10.80.{n}.1"),
            cidr=ipaddress.IPv4Network(f"10.80.{n}.0/24"),
        )
        for n in range(NETWORKS)
    )
    return render_guard(GuardModel(networks=networks, uplink=UPLINK))


def rule_lines(listing: str) -> int:
    """Rules in nft's listing of a table: the lines in chains other than a base chain's hook."""
    count, in_chain = 0, False
    for raw in listing.splitlines():
        line = raw.strip()
        if line.startswith("chain "):
            in_chain = True
        elif line == "}":
            in_chain = False
        elif in_chain and line and not line.startswith(("type ", "policy ")):
            count += 1
    return count


# --------------------------------------------------------------------------------------------
# the scratch namespace and the commands timed in it


class Scratch:
    """A network namespace of its own for the table; a context manager that deletes it."""

    def __init__(self) -> None:
        self.name = f"vce-fwi-{secrets.token_hex(3)}"
        self.prefix = ["ip", "netns", "exec", self.name]

    def __enter__(self) -> Scratch:
        subprocess.run(["ip", "netns", "add", self.name], check=True, timeout=COMMAND_TIMEOUT)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], check=False, timeout=COMMAND_TIMEOUT)

    def run(self, argv: list[str], stdin: str | None = None) -> str:
        proc = subprocess.run(
            [*self.prefix, *argv],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=COMMAND_TIMEOUT,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
        return proc.stdout


class RecordingShell(HostShell):
    """HostShell that keeps the stdin of its last command: the batch `replace` sends."""

    last_stdin: str | None = None

    def run(
        self,
        argv: Any,
        action: str,
        obj: str,
        stdin: str | None = None,
        timeout: float = COMMAND_TIMEOUT,
    ) -> str:
        self.last_stdin = stdin
        return super().run(argv, action, obj, stdin, timeout)


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


class Bench:
    def __init__(self, scratch: Scratch, body: str) -> None:
        self.scratch = scratch
        self.body = body
        self.shell = RecordingShell(scratch.prefix)
        self.table = NftTable(self.shell, "inet", "vce_guard")
        self.batch = ""
        self.samples: dict[str, list[float]] = {}

    def check(self) -> dict[str, Any]:
        """Install once; the host's listing is what `expected` says, all 50 bridges in it."""
        self.table.replace(self.body)
        self.batch = self.shell.last_stdin or ""
        listing = self.table.observed()
        if listing is None or listing != self.table.expected(self.body):
            raise RuntimeError("the installed table differs from expected(body)")
        missing = [n for n in range(1, NETWORKS + 1) if f'"virbr{n}"' not in listing]
        if missing:
            raise RuntimeError(f"bridges missing from the listing: virbr{missing}")
        return {
            "rules": rule_lines(listing),
            "listing_lines": len(listing.splitlines()),
            "batch_bytes": len(self.batch),
            "batch_lines": len(self.batch.splitlines()),
        }

    def round(self, keep: bool) -> None:
        self.table.remove()
        figures = {
            "replace_new": timed(lambda: self.table.replace(self.body)),
            "replace_present": timed(lambda: self.table.replace(self.body)),
            "floor_same_text": timed(lambda: self.scratch.run(["nft", "-f", "-"], self.batch)),
            "floor_empty_table": timed(lambda: self.scratch.run(["nft", "-f", "-"], EMPTY_TABLE)),
        }
        self.scratch.run(["nft", "delete", "table", "inet", "vce_bench"])
        figures["prefix"] = timed(lambda: self.scratch.run(["true"]))
        figures["observed"] = timed(self.table.observed)
        figures["expected"] = timed(lambda: self.table.expected(self.body))
        if keep:
            for name, seconds in figures.items():
                self.samples.setdefault(name, []).append(seconds)


ROWS = (
    ("replace_new", "`NftTable.replace`, table absent (first installation)"),
    ("replace_present", "`NftTable.replace`, table in place (repair, update)"),
    ("floor_same_text", "floor: the same batch, bare `nft -f -`"),
    ("floor_empty_table", "floor: `nft -f -` of an empty table"),
    ("prefix", "`ip netns exec <ns> true` (in every figure above)"),
    ("observed", "`NftTable.observed()` (2 x `nft list`)"),
    ("expected", "`NftTable.expected(body)` (load + list in `unshare --net`)"),
)


def report_lines(summary: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| measurement | median | min-max | p95 |", "| --- | ---: | ---: | ---: |"]
    for key, label in ROWS:
        s = summary[key]
        lines.append(
            f"| {label} | {s['median_ms']:.1f} ms | {s['min_ms']:.1f}-{s['max_ms']:.1f} ms "
            f"| {s['p95_ms']:.1f} ms |"
        )
    return lines


def measure(args: argparse.Namespace, results: dict[str, Any]) -> None:
    body = guard_body()
    with Scratch() as scratch:
        results["nft"] = scratch.run(["nft", "--version"]).strip()
        bench = Bench(scratch, body)
        results["table"] = bench.check()
        log(f"table for {NETWORKS} networks: {results['table']}")
        if args.quiet:
            results["quiet_wait_s"], results["busy_at_start"] = wait_quiet()
        busy: list[float] = []
        for index in range(args.warmups + args.rounds):
            busy.append(host_busy(0.1))
            bench.round(keep=index >= args.warmups)
        results["busy_before_rounds"] = [round(b, 3) for b in busy]
        results["batch_head"] = bench.batch.splitlines()[:12]
        results["samples_s"] = bench.samples
        results["summary"] = {k: summary_ms(v) for k, v in bench.samples.items()}


def stop(signum: int, _frame: Any) -> None:
    raise SystemExit(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmups", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke run: 3 rounds, nothing written"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.warmups = 3, 0
    if not 1 <= args.rounds <= 200 or not 0 <= args.warmups <= 10:
        parser.error("--rounds 1-200, --warmups 0-10")
    args.quiet = not args.quick
    if MISSING is not None:
        print(f"skipped: the firewall is not in this checkout ({MISSING})")
        return 0 if args.quick else 2
    signal.signal(signal.SIGTERM, stop)  # the scratch namespace goes also then
    begin = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": "firewall_install",
        "started_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "networks": NETWORKS,
        "rounds": args.rounds,
        "warmups": args.warmups,
        "code": code_version(),
    }
    errors: list[str] = []
    try:
        measure(args, results)
    except Exception as error:  # the report must still be written
        errors.append(f"{type(error).__name__}: {error}")
        results["traceback"] = traceback.format_exc()
        log(f"FAILED: {error}\n{traceback.format_exc()}")
    results.update(total_s=time.perf_counter() - begin, errors=errors)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"Code: {results['code']}; {results.get('nft', '')}; table: {results.get('table')}")
    summary = results.get("summary")
    if summary:
        print(f"{args.rounds} rounds after {args.warmups} warm-up(s); wall clock")
        print("\n".join(report_lines(summary)))
    print(f"total {results['total_s']:.1f} s")
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    if errors:
        return 2
    met = all(summary[k]["median_ms"] < TARGET_MS for k in ("replace_new", "replace_present"))
    verdict = "PASS" if met else "MISS"
    print(f"target: replace under {TARGET_MS:.0f} ms (median): {verdict}")
    if not args.quick:
        print(f"results: {RESULTS}")
    return 0 if met or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
