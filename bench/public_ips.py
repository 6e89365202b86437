"""Public IPs, 50 bindings in one run: the engine's nft batch against its floor and a loop.

Issue 3: "Binding 50 public IPs in one run: the nftables changes applied as one atomic batch
per host (`nft -f`), not one command per rule; measured against a loop of single `nft add
rule` commands for the same 50 bindings (the floor is one batch), in the same run."

One invocation, one multi-host lab (tools.multihost) with the single host ``kvm-a`` (zone
``zone-a``, uplink ``up0``) in a temp dir under /tmp. Every rule and address lives in the
lab's own network namespaces; the documentation range 203.0.113.0/24 is used only there. The
zone gets two public pools (203.0.113.64/27 and 203.0.113.128/26: a /27 alone has 29
assignable addresses). The tenant ``bench`` is registered in a SQLite ledger in the temp dir
(public_ips quota 100); ONE untimed ``engine.run_environment`` call makes a routed network
``lan`` (10.70.0.0/24, uplink up0) and 50 stopped VMs (96 MiB, 1 GiB overlay on a 64 MiB empty
qcow2, one NIC with a fixed IP 10.70.0.11-60), never started.

Then, per repetition (default 5, after 1 untimed warm-up repetition), in this order:

1. VCE BIND: ``run_environment`` with the same VMs plus 50 ``public_ips`` (allocate + bind
   50: 150 nft rules, 50 /32 addresses on up0): the "one run". Checked: 150 rules, 50
   addresses. Split, by wrapping ``HostShell.run`` and three ``PublicIpPlanner`` methods in
   this process (plugins/ untouched): each host command by kind (``nft -f``, ``nft list``,
   ``ip addr add/del/show``), the ledger allocations, the flush (nft batch + addresses).
2. VCE NO-OP: the same call again; checked: nothing changed.
3. VCE RELEASE: the same VMs without ``public_ips`` and with ``prune: true`` (only the 50
   public IPs are undeclared): unbind + release 50. Checked: no rule, no address left.
4. FLOOR: the very text the engine piped into ``nft -f -`` in the bind run (captured from
   the first bind), its table renamed ``vce_bench``, in one ``ip netns exec kvm-a nft -f -``.
   Checked: 150 rules; the table is deleted afterwards (untimed). And the same text unchanged
   into the engine's own table ``vce_nat`` (empty base chains, as the bind run finds it);
   checked, then flushed (untimed); and, to show what the table definition at the head of the
   batch costs when the table exists, only its 150 ``add rule`` lines, the same way.
5. LOOP (the peer): the table and its three base chains made first (untimed), then the same
   150 rules as 150 ``ip netns exec kvm-a nft '<rule>'`` commands; per-command cost too.
6. Context: the 50 addresses as 50 ``ip addr add`` commands (what the engine did before it used
   ``ip -batch``) and as
   one ``ip -batch -``; and ``ip netns exec kvm-a true`` (the prefix alone), 20 times.

Median, p95 (nearest rank), min and max in ms. Per sample also this process's CPU, its
children's CPU (nft, ip), the lab libvirtd's CPU (its mount namespace) and the cores other
processes used. Everything (domains, volumes, network, nft tables, addresses, the lab's
namespaces and daemons, the temp dir) is removed in finally blocks, also on SIGTERM.

Prints a table; writes bench/results/public_ips.json. Exit 0 when the bind run applied its
rules in exactly one ``nft -f`` every time, 1 when not, 2 when a set-up, engine call,
check or measurement failed.

``--quick`` (for CI): 1 repetition, no warm-up, no waiting for a quiet machine, nothing
written; the exit status is the same (one ``nft -f`` per bind run is a design property, not a
speed target).

    .venv/bin/python bench/public_ips.py [--repeats 5] [--warmups 1] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The checkout's engine, not the copy installed in the venv (it may be an older layout).
sys.path.insert(0, str(ROOT / "collections"))
sys.path.insert(0, str(ROOT / "bench"))

from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine  # noqa: E402
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.public_ip import (  # noqa: E402
    TABLE,
    TABLE_DEFINITION,
    PublicIpPlanner,
)
from ansible_collections.vce.kvm.plugins.module_utils.host.shell import HostShell  # noqa: E402
from env10 import CpuMeter, code_version, host_busy, log, machine_facts, machine_line, wait_quiet  # noqa: E402
from quota_check import make_image, summary_ms  # noqa: E402

from tests.support.images import register_image  # noqa: E402
from tests.support.ledger import forget_stores, register  # noqa: E402
from tools.cleanup import remove_prefixed  # noqa: E402
from tools.libvirtd import MNTNS_FILE, domain_type  # noqa: E402
from tools.multihost import LabHost, MultiHostLab, new_lab_dir  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "public_ips.json"
TENANT = "bench"
COUNT = 50
RULES = 3 * COUNT
BENCH_TABLE = "vce_bench"
HOST = "kvm-a"
ZONE = "zone-a"
IMAGE_NAME = "base"  # the empty base image, in the catalogue of ZONE
UPLINK = "up0"
ZONE_CONFIG = {
    "uplink": UPLINK,
    "public_pools": [
        {"name": "p1", "cidr": "203.0.113.64/27", "gateway": "203.0.113.1"},
        {"name": "p2", "cidr": "203.0.113.128/26", "gateway": "203.0.113.1"},
    ],
}
LAN = "10.70.0"
PREFIX_SAMPLES = 20
COMMAND_TIMEOUT = 60


# --------------------------------------------------------------------------------------------
# the declaration


def environment_params(
    host: LabHost, image: Path, public_ips: bool, prune: bool = False
) -> dict[str, Any]:
    """The routed network, the 50 stopped VMs and, when asked, one public IP per VM."""
    params: dict[str, Any] = {
        "uri": host.uri,
        "tenant": TENANT,
        "networks": [{"name": "lan", "cidr": f"{LAN}.0/24", "mode": "routed"}],
        "vms": [
            {
                "name": f"vm{v:02d}",
                "memory_mib": 96,
                "boot_disk": {"image": IMAGE_NAME, "size_gib": 1},
                "nics": [{"network": "lan", "ip": f"{LAN}.{11 + v}"}],
                "state": "stopped",
            }
            for v in range(COUNT)
        ],
        "zone": ZONE,
        "zone_config": ZONE_CONFIG,
        "host_command": host.command_prefix,
    }
    if public_ips:
        params["public_ips"] = [{"name": f"ip{v:02d}", "vm": f"vm{v:02d}"} for v in range(COUNT)]
    if prune:
        params["prune"] = True
    return params


# --------------------------------------------------------------------------------------------
# what the engine does on the host, recorded in this process (plugins/ unchanged)


def command_kind(argv: tuple[str, ...] | list[str]) -> str:
    if argv[:2] == ["nft", "-f"]:
        return "nft -f"
    if argv[0] == "nft":
        return "nft list" if "list" in argv else "nft other"
    if argv[0] == "ip":
        words = [w for w in argv[1:] if not w.startswith("-")]
        return "ip " + " ".join(words[:2])
    return argv[0]


class Recorder:
    """Wraps HostShell.run and PublicIpPlanner.allocate/release/flush: count and seconds of
    each, and the stdin of every `nft -f` (the batch text), while active."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        self.batches: list[str] = []
        self.active = False

    def reset(self) -> None:
        self.calls.clear()
        self.batches.clear()

    @contextlib.contextmanager
    def installed(self) -> Iterator[Recorder]:
        originals = {
            (HostShell, "run"): HostShell.run,
            (PublicIpPlanner, "allocate"): PublicIpPlanner.allocate,
            (PublicIpPlanner, "release"): PublicIpPlanner.release,
            (PublicIpPlanner, "flush"): PublicIpPlanner.flush,
        }
        recorder = self
        shell_run = HostShell.run

        def run(shell: HostShell, argv: Any, action: str, obj: str, stdin: str | None = None):
            start = time.perf_counter()
            try:
                return shell_run(shell, argv, action, obj, stdin)
            finally:
                kind = command_kind(list(argv))
                recorder.calls.append((kind, time.perf_counter() - start))
                if kind == "nft -f" and stdin is not None:
                    recorder.batches.append(stdin)

        def timed(label: str, method: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return method(*args, **kwargs)
                finally:
                    recorder.calls.append((label, time.perf_counter() - start))

            return wrapper

        HostShell.run = run  # type: ignore[method-assign]
        PublicIpPlanner.allocate = timed("engine allocate (ledger)", PublicIpPlanner.allocate)  # type: ignore[method-assign]
        PublicIpPlanner.release = timed("engine release (flush + ledger)", PublicIpPlanner.release)  # type: ignore[method-assign]
        PublicIpPlanner.flush = timed("engine flush (nft batch + addresses)", PublicIpPlanner.flush)  # type: ignore[method-assign]
        try:
            yield self
        finally:
            for (owner, name), method in originals.items():
                setattr(owner, name, method)

    def totals(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for kind, seconds in self.calls:
            entry = out.setdefault(kind, {"count": 0, "seconds": 0.0})
            entry["count"] += 1
            entry["seconds"] += seconds
        return out


# --------------------------------------------------------------------------------------------
# the host's state


def host_cmd(host: LabHost, argv: list[str], stdin: str | None = None) -> str:
    proc = host.run(argv, input=stdin, timeout=COMMAND_TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def rules_in(host: LabHost, table: str) -> int:
    items = json.loads(host_cmd(host, ["nft", "-j", "list", "ruleset", "ip"]))["nftables"]
    return sum(1 for i in items if "rule" in i and i["rule"]["table"] == table)


def has_table(host: LabHost, table: str) -> bool:
    items = json.loads(host_cmd(host, ["nft", "-j", "list", "tables", "ip"]))["nftables"]
    return any(i.get("table", {}).get("name") == table for i in items)


def pool_addresses(host: LabHost) -> set[str]:
    """The /32 addresses of the zone's pools on the uplink."""
    shown = json.loads(host_cmd(host, ["ip", "-j", "-4", "addr", "show", "dev", UPLINK]))
    return {
        a["local"]
        for link in shown
        for a in link["addr_info"]
        if a.get("prefixlen") == 32 and int(a["local"].rsplit(".", 1)[1]) >= 64
    }


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise RuntimeError(f"check failed: {what}")


def actions(result: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for change in result.plan:
        key = f"{change['kind']} {change['action']}"
        counts[key] = counts.get(key, 0) + 1
    return counts


# --------------------------------------------------------------------------------------------
# one sample of each measurement


class Bench:
    def __init__(self, host: LabHost, image: Path, recorder: Recorder, quiet: bool = True) -> None:
        self.host = host
        self.image = image
        self.recorder = recorder
        self.quiet = quiet  # wait (bounded) for a quiet machine before each repetition
        self.batch_text = ""  # the engine's nft -f input of the first bind run
        self.rule_lines: list[str] = []
        self.addresses: list[str] = []
        self.samples: dict[str, list[dict[str, Any]]] = {}
        self.observed: dict[str, Any] = {}

    def timed(self, name: str, action: Callable[[], dict[str, Any] | None], keep: bool) -> None:
        """One sample of `action`: wall, CPU (own, children, lab libvirtd), host commands."""
        self.recorder.reset()
        cpu0 = time.process_time()
        with CpuMeter() as meter:
            start = time.perf_counter()
            extra = action()
            wall = time.perf_counter() - start
        sample = {
            "wall_s": wall,
            "own_cpu_s": time.process_time() - cpu0,
            "children_cpu_s": meter.figures["client_cpu_s"] - (time.process_time() - cpu0),
            "libvirtd_cpu_s": meter.figures["libvirt_side_cpu_s"],
            "background_cores": meter.figures["background_cores"],
            "host_calls": self.recorder.totals(),
            **(extra or {}),
        }
        if keep:
            self.samples.setdefault(name, []).append(sample)

    # ---- vce

    def vce_bind(self) -> dict[str, Any]:
        result = engine.run_environment(environment_params(self.host, self.image, True))
        return {"changed": result.changed, "plan": actions(result)}

    def check_bound(self, sample: dict[str, Any] | None = None) -> None:
        expect(rules_in(self.host, TABLE) == RULES, f"{RULES} rules in {TABLE} after the bind")
        addresses = pool_addresses(self.host)
        expect(len(addresses) == COUNT, f"{COUNT} addresses on {UPLINK}, got {len(addresses)}")
        batches = list(self.recorder.batches)
        if not self.batch_text:
            expect(len(batches) == 1, f"one nft batch in the first bind, got {len(batches)}")
            self.batch_text = batches[0]
            self.rule_lines = [
                line.replace(f" ip {TABLE} ", f" ip {BENCH_TABLE} ")
                for line in self.batch_text.splitlines()
                if line.startswith("add rule ")
            ]
            expect(len(self.rule_lines) == RULES, f"{RULES} add-rule lines in the batch")
            self.addresses = sorted(addresses, key=lambda a: tuple(map(int, a.split("."))))

    def vce_noop(self) -> dict[str, Any]:
        result = engine.run_environment(environment_params(self.host, self.image, True))
        expect(not result.changed, f"no-op re-run changed nothing, plan {actions(result)}")
        return {"changed": result.changed, "plan": actions(result)}

    def vce_release(self) -> dict[str, Any]:
        params = environment_params(self.host, self.image, False, prune=True)
        result = engine.run_environment(params)
        return {"changed": result.changed, "plan": actions(result)}

    def check_released(self) -> None:
        expect(rules_in(self.host, TABLE) == 0, f"no rule left in {TABLE} after the release")
        expect(not pool_addresses(self.host), f"no pool address left on {UPLINK}")

    # ---- floor and loop

    def floor_text(self) -> str:
        return self.batch_text.replace(f"table ip {TABLE} ", f"table ip {BENCH_TABLE} ").replace(
            f" ip {TABLE} ", f" ip {BENCH_TABLE} "
        )

    def floor(self) -> None:
        host_cmd(self.host, ["nft", "-f", "-"], stdin=self.floor_text())

    def floor_same_table(self) -> None:
        host_cmd(self.host, ["nft", "-f", "-"], stdin=self.batch_text)

    def floor_rules_only(self) -> None:
        rules = "".join(
            f"{line}\n" for line in self.batch_text.splitlines() if line.startswith("add ")
        )
        host_cmd(self.host, ["nft", "-f", "-"], stdin=rules)

    def check_and_flush_engine_table(self) -> None:
        expect(rules_in(self.host, TABLE) == RULES, f"{RULES} rules in {TABLE} (floor)")
        host_cmd(self.host, ["nft", "flush", "table", "ip", TABLE])
        expect(rules_in(self.host, TABLE) == 0, f"{TABLE} flushed after the floor")

    def make_bench_table(self) -> None:
        definition = TABLE_DEFINITION.replace(f"table ip {TABLE} ", f"table ip {BENCH_TABLE} ")
        host_cmd(self.host, ["nft", "-f", "-"], stdin=definition)

    def loop(self) -> dict[str, Any]:
        per: list[float] = []
        for line in self.rule_lines:
            start = time.perf_counter()
            host_cmd(self.host, ["nft", line])
            per.append(time.perf_counter() - start)
        return {"per_command_s": per}

    def check_and_drop_bench_table(self) -> None:
        expect(rules_in(self.host, BENCH_TABLE) == RULES, f"{RULES} rules in {BENCH_TABLE}")
        host_cmd(self.host, ["nft", "delete", "table", "ip", BENCH_TABLE])

    # ---- context: the addresses, the prefix

    def addr_loop(self) -> None:
        for address in self.addresses:
            host_cmd(self.host, ["ip", "addr", "add", f"{address}/32", "dev", UPLINK])

    def addr_batch(self) -> None:
        lines = "".join(f"addr add {a}/32 dev {UPLINK}\n" for a in self.addresses)
        host_cmd(self.host, ["ip", "-batch", "-"], stdin=lines)

    def drop_addresses(self) -> None:
        expect(len(pool_addresses(self.host)) == COUNT, f"{COUNT} addresses added")
        lines = "".join(f"addr del {a}/32 dev {UPLINK}\n" for a in self.addresses)
        host_cmd(self.host, ["ip", "-batch", "-"], stdin=lines)
        expect(not pool_addresses(self.host), "addresses removed")

    def prefix_only(self) -> dict[str, Any]:
        per: list[float] = []
        for _ in range(PREFIX_SAMPLES):
            start = time.perf_counter()
            host_cmd(self.host, ["true"])
            per.append(time.perf_counter() - start)
        return {"per_command_s": per}

    # ---- one repetition

    def repetition(self, keep: bool) -> None:
        waited, busy = wait_quiet() if self.quiet else (0.0, host_busy(0.2))
        self.observed.setdefault("quiet_waits", []).append([round(waited, 2), round(busy, 3)])
        self.timed("vce_bind", self.vce_bind, keep)
        self.check_bound()
        self.timed("vce_noop", self.vce_noop, keep)
        self.check_bound()
        self.timed("vce_release", self.vce_release, keep)
        self.check_released()
        self.timed("floor", self.floor, keep)
        self.check_and_drop_bench_table()
        self.timed("floor_same_table", self.floor_same_table, keep)
        self.check_and_flush_engine_table()
        self.timed("floor_rules_only", self.floor_rules_only, keep)
        self.check_and_flush_engine_table()
        self.make_bench_table()
        self.timed("loop", self.loop, keep)
        self.check_and_drop_bench_table()
        self.timed("addr_loop", self.addr_loop, keep)
        self.drop_addresses()
        self.timed("addr_batch", self.addr_batch, keep)
        self.drop_addresses()
        self.timed("prefix_only", self.prefix_only, keep)


# --------------------------------------------------------------------------------------------
# summary and report


HOST_PARTS = (
    "nft -f",
    "nft list",
    "ip addr add",
    "ip addr del",
    "ip addr show",
    "engine allocate (ledger)",
    "engine release (flush + ledger)",
    "engine flush (nft batch + addresses)",
)


def summarise(samples: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, series in samples.items():
        entry = summary_ms([s["wall_s"] for s in series])
        entry["own_cpu_median_ms"] = statistics.median(s["own_cpu_s"] for s in series) * 1000
        entry["children_cpu_median_ms"] = (
            statistics.median(s["children_cpu_s"] for s in series) * 1000
        )
        entry["libvirtd_cpu_mean_ms"] = statistics.mean(s["libvirtd_cpu_s"] for s in series) * 1000
        entry["background_cores_mean"] = statistics.mean(s["background_cores"] for s in series)
        parts: dict[str, Any] = {}
        kinds = {kind for s in series for kind in s["host_calls"]}
        for kind in sorted(kinds):
            seconds = [s["host_calls"].get(kind, {}).get("seconds", 0.0) for s in series]
            counts = [s["host_calls"].get(kind, {}).get("count", 0) for s in series]
            parts[kind] = {**summary_ms(seconds), "counts": counts}
        if parts:
            shell = [
                sum(v["seconds"] for k, v in s["host_calls"].items() if not k.startswith("engine"))
                for s in series
            ]
            parts["all host commands"] = summary_ms(shell)
            rest = [s["wall_s"] - h for s, h in zip(series, shell, strict=True)]
            parts["rest (libvirt, ledger, planning, Python)"] = summary_ms(rest)
        entry["parts"] = parts
        if "per_command_s" in series[0]:
            per = [p for s in series for p in s["per_command_s"]]
            entry["per_command"] = summary_ms(per)
            head = [p for s in series for p in s["per_command_s"][:10]]
            tail = [p for s in series for p in s["per_command_s"][-10:]]
            entry["per_command_first10_median_ms"] = statistics.median(head) * 1000
            entry["per_command_last10_median_ms"] = statistics.median(tail) * 1000
        if "plan" in series[0]:
            entry["plans"] = [s["plan"] for s in series]
            entry["changed"] = [s["changed"] for s in series]
        out[name] = entry
    return out


def fmt_ms(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "n/a"
    return (
        f"{entry['median_ms']:.1f} ms | {entry['min_ms']:.1f}-{entry['max_ms']:.1f} ms "
        f"| {entry['p95_ms']:.1f} ms"
    )


ROWS = (
    ("vce_bind", "vce bind run: `run_environment` adding 50 public IPs (allocate + bind)"),
    ("vce_noop", "vce no-op re-run"),
    ("vce_release", "vce release run (`prune: true`, VMs kept): unbind + release 50"),
    ("floor", "floor: the engine's 150-rule batch text, one `nft -f -`, own new table"),
    ("floor_same_table", "floor: the same text into the engine's (empty) table `vce_nat`"),
    ("floor_rules_only", "the same, without the table definition (150 `add rule` lines only)"),
    ("loop", "peer: 150 x `nft add rule`, one command per rule"),
    ("addr_loop", "context: 50 x `ip addr add` (one command per address)"),
    ("addr_batch", "context: the 50 addresses in one `ip -batch -`"),
    ("prefix_only", f"context: {PREFIX_SAMPLES} x `ip netns exec {HOST} true`"),
)


# host commands of the measurements not run through the engine
FIXED_COMMANDS = {
    "floor": 1,
    "floor_same_table": 1,
    "floor_rules_only": 1,
    "loop": RULES,
    "addr_loop": COUNT,
    "addr_batch": 1,
    "prefix_only": PREFIX_SAMPLES,
}


def report_lines(m: dict[str, Any]) -> list[str]:
    lines = [
        "| measurement | median | min-max | p95 | commands | children CPU | background |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, label in ROWS:
        if key not in m:
            continue
        f = m[key]
        parts = f.get("parts", {})
        commands = FIXED_COMMANDS.get(key) or sum(
            statistics.median(p["counts"])
            for k, p in parts.items()
            if "counts" in p and not k.startswith("engine")
        )
        lines.append(
            f"| {label} | {fmt_ms(f)} | {commands:.0f} | {f['children_cpu_median_ms']:.0f} ms "
            f"| {f['background_cores_mean']:.2f} |"
        )
        for part in (*HOST_PARTS, "rest (libvirt, ledger, planning, Python)"):
            if part not in parts:
                continue
            p = parts[part]
            count = f"{statistics.median(p['counts']):.0f}" if "counts" in p else ""
            lines.append(f"| of which {part} | {fmt_ms(p)} | {count} | | |")
        if "per_command" in f:
            lines.append(f"| per command | {fmt_ms(f['per_command'])} | | | |")
    return lines


def figures(m: dict[str, Any]) -> dict[str, Any]:
    """The ratios the issue asks about (medians)."""
    out: dict[str, Any] = {}
    floor = m.get("floor", {}).get("median_ms")
    loop = m.get("loop", {}).get("median_ms")
    bind = m.get("vce_bind", {})
    nft = bind.get("parts", {}).get("nft -f", {})
    if floor and loop:
        out["loop_over_floor"] = loop / floor
    if floor and nft:
        out["vce_nft_batch_ms"] = nft["median_ms"]
        out["vce_nft_batch_over_floor"] = nft["median_ms"] / floor
        out["vce_nft_batches_per_bind_run"] = nft["counts"]
    same = m.get("floor_same_table", {}).get("median_ms")
    if same and nft:
        out["vce_nft_batch_over_floor_same_table"] = nft["median_ms"] / same
    if loop and same:
        out["loop_over_floor_same_table"] = loop / same
    if loop and nft:
        out["loop_over_vce_nft_batch"] = loop / nft["median_ms"]
    release = m.get("vce_release", {}).get("parts", {}).get("nft -f", {})
    if release:
        out["vce_nft_batches_per_release_run"] = release["counts"]
    return out


# --------------------------------------------------------------------------------------------
# main


def changed_plugins() -> list[str]:
    """plugins/ files that differ from the commit measured (other work may be in progress)."""
    proc = subprocess.run(
        ["git", "status", "--porcelain", "plugins"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return [line[3:] for line in proc.stdout.splitlines()]


def stop_on_sigterm() -> None:
    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmups", type=int, default=1)
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke run: 1 repetition, nothing written"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.warmups = 1, 0
    if not 1 <= args.repeats <= 50 or not 0 <= args.warmups <= 5:
        parser.error("--repeats 1-50, --warmups 0-5")
    stop_on_sigterm()

    started = dt.datetime.now(dt.UTC)
    begin = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": "public_ips",
        "started_utc": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "repeats": args.repeats,
        "warmups": args.warmups,
        "bindings": COUNT,
        "rules": RULES,
        "zone_config": ZONE_CONFIG,
        "code": code_version(),
        "plugins_changed_since_commit": changed_plugins(),
    }
    errors: list[str] = []
    base = new_lab_dir("vce-pip-")  # sshd refuses keys below /tmp
    lab = MultiHostLab(base / "lab", hosts=[(HOST, ZONE)])
    url = f"sqlite:///{base / 'ledger.sqlite3'}"
    saved_env = {k: os.environ.get(k) for k in ("VCE_LEDGER_URL", "VCE_DOMAIN_TYPE")}
    saved_env["VCE_CONSOLE_LOG_DIR"] = os.environ.get("VCE_CONSOLE_LOG_DIR")
    recorder = Recorder()
    bench: Bench | None = None
    host = lab.hosts[HOST]
    try:
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        lab.start()
        CpuMeter.namespace = (base / "lab" / HOST / MNTNS_FILE).read_text().strip()
        conn = host.connect()
        try:
            results["machine"] = machine_facts(conn)
        finally:
            conn.close()
        results["nft"] = host_cmd(host, ["nft", "--version"]).strip()
        results["lab"] = {"prefix": lab.prefix, "host_netns": host.netns}
        log(f"lab {lab.prefix} up; {machine_line(results['machine'])}")
        os.environ["VCE_DOMAIN_TYPE"] = domain_type()
        os.environ["VCE_CONSOLE_LOG_DIR"] = str(host.log_dir / "qemu")
        os.environ["VCE_LEDGER_URL"] = url
        register(url, TENANT, public_ips=100)
        image = make_image(base / "base.qcow2")
        register_image(url, image, name=IMAGE_NAME, zone=ZONE)  # the zone's catalogue

        log(f"creating the routed network and {COUNT} stopped VMs (untimed) ...")
        t0 = time.perf_counter()
        created = engine.run_environment(environment_params(host, image, False))
        results["create"] = {"wall_s": time.perf_counter() - t0, "plan": actions(created)}
        log(f"created in {results['create']['wall_s']:.1f} s: {results['create']['plan']}")

        bench = Bench(host, image, recorder, quiet=not args.quick)
        with recorder.installed():
            for i in range(args.warmups + args.repeats):
                keep = i >= args.warmups
                bench.repetition(keep)
                if keep:
                    s = {k: v[-1]["wall_s"] for k, v in bench.samples.items()}
                    log(
                        f"repetition {i - args.warmups + 1}/{args.repeats}: "
                        + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in s.items())
                    )
                else:
                    log(f"warm-up {i + 1}/{args.warmups} done")
        results["batch_text_head"] = bench.batch_text.splitlines()[:8]
        results["batch_text_lines"] = len(bench.batch_text.splitlines())
        results["loop_command_example"] = [*host.command_prefix, "nft", bench.rule_lines[0]]
    except BaseException as error:  # the report must still be written
        errors.append(f"{type(error).__name__}: {error}")
        results["traceback"] = traceback.format_exc()
        log(f"FAILED: {error}\n{traceback.format_exc()}")
    finally:
        cleanup_start = time.perf_counter()
        with contextlib.suppress(Exception):
            if host.run(["true"]).returncode == 0:
                host.run(["nft", "delete", "table", "ip", BENCH_TABLE])
                if bench is not None and bench.addresses:
                    lines = "".join(f"addr del {a}/32 dev {UPLINK}\n" for a in bench.addresses)
                    host.run(["ip", "-force", "-batch", "-"], input=lines)
        with contextlib.suppress(Exception):
            conn = host.connect()
            try:
                results["removed"] = len(remove_prefixed(conn, f"{TENANT}_"))
            finally:
                conn.close()
        forget_stores()
        try:
            lab.stop()
        except Exception as error:
            errors.append(f"lab stop: {type(error).__name__}: {error}")
        shutil.rmtree(base, ignore_errors=True)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        results["cleanup_s"] = time.perf_counter() - cleanup_start
        results["leftover_netns"] = [
            n
            for n in subprocess.run(
                ["ip", "netns", "list"], capture_output=True, text=True, check=False, timeout=30
            ).stdout.split()
            if n.startswith(f"{lab.prefix}-")
        ]

    results["host_busy_after"] = host_busy(0.5)
    results["total_s"] = time.perf_counter() - begin
    results["errors"] = errors
    if bench is not None and bench.samples:
        results["samples"] = bench.samples
        results["measurements"] = summarise(bench.samples)
        results["figures"] = figures(results["measurements"])
        results["observed"] = bench.observed
    if not args.quick:  # a smoke run's figures are no results
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")

    if "machine" in results:
        print(f"Machine: {machine_line(results['machine'])}; {results.get('nft', '')}")
    print(f"Code: {results['code']} {results['plugins_changed_since_commit'] or ''}")
    if "create" in results:
        print(
            f"{COUNT} stopped VMs + routed network created in {results['create']['wall_s']:.1f} s"
        )
    m = results.get("measurements", {})
    if m:
        print(f"{args.repeats} samples after {args.warmups} warm-up repetition(s); wall clock")
        print("\n".join(report_lines(m)))
        f = results["figures"]
        if "loop_over_floor" in f:
            print(f"loop / floor (medians): {f['loop_over_floor']:.1f}x")
        if "vce_nft_batch_over_floor" in f:
            print(
                f"vce's nft -f in the bind run: {f['vce_nft_batch_ms']:.1f} ms median, "
                f"{f['vce_nft_batch_over_floor']:.2f}x the floor; batches per bind run "
                f"{f['vce_nft_batches_per_bind_run']}"
            )
        if "vce_nft_batch_over_floor_same_table" in f:
            print(
                f"vce's nft -f / the same text into {TABLE}: "
                f"{f['vce_nft_batch_over_floor_same_table']:.2f}x; loop / that: "
                f"{f['loop_over_floor_same_table']:.1f}x"
            )
        if "vce_nft_batches_per_release_run" in f:
            print(f"nft batches per release run: {f['vce_nft_batches_per_release_run']}")
    print(f"total {results['total_s']:.1f} s (clean-up {results['cleanup_s']:.1f} s)")
    if not args.quick:
        print(f"results: {RESULTS}")
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    if errors:
        return 2
    batches = results.get("figures", {}).get("vce_nft_batches_per_bind_run", [])
    return 0 if batches and all(b == 1 for b in batches) else 1


if __name__ == "__main__":
    sys.exit(main())
