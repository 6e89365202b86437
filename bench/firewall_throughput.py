"""Tenant throughput with and without the project's firewall tables, interleaved in one run.

Issue 17: "The firewall costs nothing visible: throughput between two VMs of a tenant over its
bridge and over the zone link, and to a public IP, within 5% of the same without the new rules,
measured in one run (iperf3 from Debian's packages between namespaces plugged into the bridges,
as the tests do)."

One invocation, one multi-host lab (tools.multihost: hosts ``kvm-a`` in zone-a and ``kvm-b``
in zone-b, each a network namespace with its own libvirtd) in a temp dir under /tmp, a SQLite
ledger there. Untimed set-up, through the engine as a user would run it:

* tenant ``bench``: on kvm-a a routed network ``lan`` (10.72.0.0/24, gateway .1, uplink
  ``up0``) with one stopped VM ``pub`` (fixed IP 10.72.0.12) holding a public IP of zone-a's
  pool; on kvm-b an isolated network ``lan`` (same range, gateway .2); a zone link joining the
  two ``lan`` networks over the underlay (VXLAN). These runs install the firewall tables
  ``inet vce_guard`` on both hosts and ``inet vce_vxlan`` on both ends of the link.
* endpoints plugged into the bridges like VMs (tools.attacker.plugged): ``a1`` 10.72.0.11 and
  ``a2`` 10.72.0.12 (the address the public IP is bound to; the VM ``pub`` is never started)
  on kvm-a's bridge, ``b1`` 10.72.0.21 on kvm-b's; an iperf3 server in ``a2`` and in ``b1``.

Three paths, each one TCP stream of ``iperf3 -c ... -t SECONDS -O 1 -J`` (client to server):

1. ``bridge``: a1 -> a2, two endpoints of the tenant on its bridge on one host.
2. ``zone_link``: a1 -> b1, over the zone link (VXLAN on the underlay between the hosts).
3. ``public_ip``: the internet namespace -> the public IP (DNAT on kvm-a to a2).

Two states: WITH the tables (as the engine installed them) and WITHOUT them (deleted on every
host; libvirt's own chains stay in both). Their listings are read once after the set-up and
put back with ``NftTable.replace`` (one ``nft -f`` per table); after every switch the hosts'
listings are checked against the state. Per round and path, a pair of runs back to back, one
per state; the pairs' order alternates (WITH first, then WITHOUT first, ...: A B B A), so a
drift in the machine's speed weighs on both states alike. Figures: the median throughput per
path and state, their ratio WITH/WITHOUT, the median of the pairs' ratios (on a shared machine
the load moves between two runs back to back far less than across the whole run) with a 95%
bootstrap interval, and for information the pairs' ratio of Gbit per CPU-second of the two
iperf3 processes (as iperf3 reports their CPU). The target is a ratio of at least 0.95: PASS
when the interval's low end meets it, MISS when its high end misses it, else "not resolved"
(the machine's noise is wider than the 5% asked about); under 5 pairs, none. Each path is
probed (ping) in both states before the first round: the firewall must let all three through.
The rounds start after waiting (at most 30 s) for a quiet machine; each round records the
machine's load.

Every iperf3 run is bounded (``--connect-timeout``, the process timeout SECONDS + 20 s; the
servers get ``--idle-timeout``). The servers, the plugged namespaces, the tenant's objects,
the lab (its daemons and namespaces, which hold the tables) and the temp dir are removed in
finally blocks, also on SIGTERM.

Prints a table, writes bench/results/firewall_throughput.json. Exit 1 when a path's verdict is
MISS, 2 when a set-up step, a probe or a measurement failed, else 0.

``--quick`` (for CI): 1 round of 1-second runs, no warm-up, no waiting for a quiet machine,
nothing written; exit 2 on a failure, else 0 (one round of 1 s says nothing about 5%). It
exits 0 with a note when the firewall or the attacker tooling is not in this checkout.

    .venv/bin/python bench/firewall_throughput.py [--rounds 30] [--seconds 1] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The checkout's engine, not the copy installed in the venv (it may be an older layout).
sys.path.insert(0, str(ROOT / "collections"))
sys.path.insert(0, str(ROOT / "bench"))

from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine  # noqa: E402
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.zone_link import (  # noqa: E402
    run_zone_link,
)
from ansible_collections.vce.kvm.plugins.module_utils.host.shell import HostShell  # noqa: E402
from env10 import code_version, host_busy, log, machine_facts, machine_line, wait_quiet  # noqa: E402
from firewall_install import MISSING as GUARD_MISSING  # noqa: E402
from firewall_install import rule_lines  # noqa: E402
from quota_check import make_image  # noqa: E402

from tests.support.ledger import forget_stores, register  # noqa: E402
from tools.cleanup import remove_prefixed  # noqa: E402
from tools.libvirtd import domain_type  # noqa: E402
from tools.multihost import LabHost, MultiHostLab, new_lab_dir  # noqa: E402

try:  # the firewall (issue 17) and its test tooling; a checkout without them skips --quick
    from ansible_collections.vce.kvm.plugins.module_utils.host import vxlan_filter  # noqa: F401
    from ansible_collections.vce.kvm.plugins.module_utils.host.firewall import NftTable

    from tools.attacker import Attacker, ping, plugged
except ImportError as missing:
    MISSING: str | None = str(missing)
else:
    MISSING = GUARD_MISSING  # the guard's renderer: the engine installs vce_guard

RESULTS = ROOT / "bench" / "results" / "firewall_throughput.json"
TENANT = "bench"
NET = "10.72.0"
CIDR = f"{NET}.0/24"
PUBLIC_VM_IP = f"{NET}.12"
PUBLIC_IP = "203.0.113.70"  # in zone-a's pool (tools.multihost: 203.0.113.64/27)
TABLES = (("inet", "vce_guard"), ("inet", "vce_vxlan"))
PORT = "5201"
TARGET = 0.95  # WITH / WITHOUT, the "within 5%"
RESAMPLES = 2000  # bootstrap of the pairs' median ratio
MIN_PAIRS = 5  # fewer pairs than this get no verdict
CONNECT_TIMEOUT_MS = 3000
RUN_GRACE_S = 20.0
SERVER_IDLE_S = 600
STATES = ("with", "without")


@dataclass(frozen=True)
class Route:
    """One measured path: the client's namespace, the server's address (and where it runs)."""

    name: str
    label: str
    client_netns: str
    server_ip: str


# --------------------------------------------------------------------------------------------
# the tenant: networks, the public IP's VM, the zone link


def zone_config(lab: MultiHostLab, zone: str) -> dict[str, Any]:
    pool = lab.zones[zone]
    return {
        "uplink": pool["uplink"],
        "public_pools": [{"name": "pool", "cidr": pool["pool"], "gateway": pool["gateway"]}],
    }


def on_host(host: LabHost, lab: MultiHostLab) -> dict[str, Any]:
    """What every engine run on `host` names: where it is, whose, and its zone."""
    return {
        "uri": host.uri,
        "tenant": TENANT,
        "zone": host.zone,
        "zone_config": zone_config(lab, host.zone),
        "host_command": host.command_prefix,
    }


def side_a(host: LabHost, lab: MultiHostLab, image: Path) -> dict[str, Any]:
    """kvm-a: the routed network and the stopped VM whose public IP the bench reaches."""
    return {
        **on_host(host, lab),
        "image_dirs": [str(image.parent)],
        "networks": [
            {
                "name": "lan",
                "cidr": CIDR,
                "mode": "routed",
                "gateway": f"{NET}.1",
                "dhcp_start": f"{NET}.100",
                "dhcp_end": f"{NET}.149",
            }
        ],
        "vms": [
            {
                "name": "pub",
                "memory_mib": 96,
                "boot_disk": {"image": str(image), "size_gib": 1},
                "nics": [{"network": "lan", "ip": PUBLIC_VM_IP}],
                "state": "stopped",
            }
        ],
        "public_ips": [{"name": "pub", "vm": "pub", "address": PUBLIC_IP}],
    }


def side_b(host: LabHost, lab: MultiHostLab) -> dict[str, Any]:
    """kvm-b: the other half of the tenant's segment, joined by the zone link."""
    return {
        **on_host(host, lab),
        "networks": [
            {
                "name": "lan",
                "cidr": CIDR,
                "mode": "isolated",
                "gateway": f"{NET}.2",
                "dhcp_start": f"{NET}.150",
                "dhcp_end": f"{NET}.199",
            }
        ],
    }


def link_params(lab: MultiHostLab, state: str = "present") -> dict[str, Any]:
    return {
        "tenant": TENANT,
        "name": "lan-ab",
        "network": "lan",
        "state": state,
        "ends": [
            {
                "zone": host.zone,
                "uri": host.uri,
                "underlay_ip": host.underlay_ip,
                "underlay_dev": host.underlay_dev,
                "host_command": host.command_prefix,
            }
            for host in lab.hosts.values()
        ],
    }


def bridge_of(host: LabHost) -> str:
    conn = host.connect()
    try:
        return conn.networkLookupByName(f"{TENANT}_lan").bridgeName()
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# the firewall tables: read once, removed and put back


class Firewall:
    """The project's tables on every lab host, as the engine installed them."""

    def __init__(self, lab: MultiHostLab) -> None:
        self.tables = {
            (host.name, family, name): NftTable(HostShell(host.command_prefix), family, name)
            for host in lab.hosts.values()
            for family, name in TABLES
        }
        self.listings: dict[tuple[str, str, str], str] = {}

    def capture(self) -> dict[str, int]:
        """Read every table; each must be there. Returns the rule lines per table."""
        for key, table in self.tables.items():
            listing = table.observed()
            if listing is None:
                raise RuntimeError(f"{key[0]}: table {key[1]} {key[2]} is absent after set-up")
            self.listings[key] = listing
        return {" ".join(k): rule_lines(v) for k, v in self.listings.items()}

    def put(self, state: str) -> None:
        """Install (state with) or delete (state without) every table, then check the hosts."""
        for key, table in self.tables.items():
            if state == "with":
                table.replace(body_of(self.listings[key]))
            else:
                table.remove()
        for key, table in self.tables.items():
            want = self.listings[key] if state == "with" else None
            if table.observed() != want:
                raise RuntimeError(f"{key[0]}: table {key[1]} {key[2]} not as in state {state}")


def body_of(listing: str) -> str:
    """The text between the braces of `table FAMILY NAME { ... }` (nft's own listing)."""
    lines = listing.strip().splitlines()
    if not lines[0].startswith("table ") or lines[-1] != "}":
        raise RuntimeError(f"not a table listing: {lines[0]!r} ... {lines[-1]!r}")
    return "\n".join(lines[1:-1])


# --------------------------------------------------------------------------------------------
# iperf3


def netns_argv(netns: str, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def start_server(netns: str) -> subprocess.Popen[bytes]:
    """One iperf3 server in `netns`, listening until stopped (or idle SERVER_IDLE_S)."""
    argv = ["iperf3", "-s", "-p", PORT, "--idle-timeout", str(SERVER_IDLE_S)]
    return subprocess.Popen(
        netns_argv(netns, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def wait_listening(netns: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = subprocess.run(
            netns_argv(netns, ["ss", "-Hltn", f"sport = :{PORT}"]),
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )
        if proc.stdout.strip():
            return
        time.sleep(0.1)
    raise RuntimeError(f"iperf3 server in {netns} not listening after {timeout:.0f} s")


def stop_servers(servers: list[subprocess.Popen[bytes]]) -> None:
    for server in servers:
        if server.poll() is None:
            server.terminate()
    for server in servers:
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def iperf(path: Route, seconds: int, omit: int) -> dict[str, Any]:
    """One bounded client run; its receiver throughput and the client's view of the run."""
    argv = ["iperf3", "-c", path.server_ip, "-p", PORT, "-t", str(seconds), "-J"]
    argv += ["--connect-timeout", str(CONNECT_TIMEOUT_MS)]
    if omit:
        argv += ["-O", str(omit)]
    try:
        proc = subprocess.run(
            netns_argv(path.client_netns, argv),
            capture_output=True,
            text=True,
            check=False,
            timeout=seconds + omit + RUN_GRACE_S,
        )
    except subprocess.TimeoutExpired:
        bound = seconds + omit + RUN_GRACE_S
        raise RuntimeError(f"iperf3 {path.name}: no end after {bound:.0f} s") from None
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        report = {"error": proc.stderr.strip() or proc.stdout[:200]}
    if proc.returncode != 0 or "error" in report:
        raise RuntimeError(f"iperf3 {path.name} failed ({proc.returncode}): {report.get('error')}")
    end = report["end"]
    return {
        "gbit_s": end["sum_received"]["bits_per_second"] / 1e9,
        "retransmits": end["sum_sent"].get("retransmits", 0),
        "cpu_sender_pct": end["cpu_utilization_percent"]["host_total"],
        "cpu_receiver_pct": end["cpu_utilization_percent"]["remote_total"],
    }


def probe(paths: list[Route], state: str) -> None:
    """Every path answers (a few tries: the first packet of a path may wait for ARP)."""
    for path in paths:
        client = Attacker(path.client_netns, "")
        if not any(ping(client, path.server_ip, timeout=2.0) for _try in range(3)):
            raise RuntimeError(f"{path.name}: {path.server_ip} does not answer, state {state}")


# --------------------------------------------------------------------------------------------
# the rounds


def pair_order(index: int) -> tuple[str, ...]:
    """WITH first in even pairs, WITHOUT first in odd ones (counterbalanced: A B B A ...)."""
    return STATES if index % 2 == 0 else STATES[::-1]


def measure(
    firewall: Firewall, paths: list[Route], rounds: int, seconds: int, omit: int
) -> list[dict[str, Any]]:
    """Per round and path one pair of runs, back to back, one WITH and one WITHOUT."""
    samples: list[dict[str, Any]] = []
    for index in range(rounds):
        busy, load = host_busy(0.2), os.getloadavg()[0]
        for number, path in enumerate(paths):
            for state in pair_order(index * len(paths) + number):
                firewall.put(state)
                sample = {"round": index, "state": state, "path": path.name, "load1": load}
                sample.update(iperf(path, seconds, omit))
                sample["busy_before_round"] = round(busy, 3)
                samples.append(sample)
                gbit = sample["gbit_s"]
                log(f"round {index + 1}/{rounds} {path.name:9} {state:7} {gbit:.2f} Gbit/s")
    firewall.put("with")
    return samples


def per_cpu(sample: dict[str, Any]) -> float:
    """Gbit per CPU-second of the two iperf3 processes: the rate with the load's share of the
    CPU divided out (softirq work the kernel charges elsewhere is not in it)."""
    return sample["gbit_s"] / ((sample["cpu_sender_pct"] + sample["cpu_receiver_pct"]) / 100)


def pair_ratios(samples: list[dict[str, Any]], figure: Any) -> list[float]:
    """WITH / WITHOUT of `figure` for each round's pair of one path."""
    by_round = {(s["round"], s["state"]): figure(s) for s in samples}
    rounds = sorted({r for r, _state in by_round})
    return [by_round[(r, "with")] / by_round[(r, "without")] for r in rounds]


def median_interval(values: list[float]) -> tuple[float, float]:
    """A 95% bootstrap interval of the median of `values` (seeded: the same data, the same
    interval)."""
    draw = random.Random(0)
    medians = sorted(
        statistics.median(draw.choices(values, k=len(values))) for _resample in range(RESAMPLES)
    )
    return medians[int(0.025 * RESAMPLES)], medians[int(0.975 * RESAMPLES) - 1]


def verdict(interval: tuple[float, float], pairs: int) -> str:
    """PASS when even the interval's low end meets the target, MISS when even its high end
    misses it; between the two the machine's noise is larger than 5% and hides the answer.
    A few pairs (a quick run) give no interval worth the name."""
    low, high = interval
    if pairs < MIN_PAIRS:
        return f"none ({pairs} pairs)"
    if low >= TARGET:
        return "PASS"
    return "MISS" if high < TARGET else "not resolved"


def summarise(samples: list[dict[str, Any]], paths: list[Route]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path in paths:
        mine = [s for s in samples if s["path"] == path.name]
        series = {state: [s["gbit_s"] for s in mine if s["state"] == state] for state in STATES}
        medians = {state: statistics.median(values) for state, values in series.items()}
        pairs = pair_ratios(mine, lambda s: s["gbit_s"])
        out[path.name] = {
            "label": path.label,
            "with_gbit_s": series["with"],
            "without_gbit_s": series["without"],
            "with_median": medians["with"],
            "without_median": medians["without"],
            "ratio_of_medians": medians["with"] / medians["without"],
            "median_pair_ratio": statistics.median(pairs),
            "median_pair_ratio_95": median_interval(pairs),
            "pair_ratios": pairs,
            "median_pair_ratio_per_cpu": statistics.median(pair_ratios(mine, per_cpu)),
            "retransmits": {
                state: sum(s["retransmits"] for s in mine if s["state"] == state)
                for state in STATES
            },
        }
    return out


def report_lines(summary: dict[str, Any]) -> list[str]:
    lines = [
        "| path | WITH, Gbit/s | WITHOUT, Gbit/s | ratio of the medians "
        "| **pairs' ratio**, median (min-max) | its 95% interval | target >= 0.95 "
        "| pairs' ratio per CPU-second |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for entry in summary.values():
        pairs = entry["pair_ratios"]
        low, high = entry["median_pair_ratio_95"]
        lines.append(
            f"| {entry['label']} | {entry['with_median']:.2f} ({min(entry['with_gbit_s']):.2f}-"
            f"{max(entry['with_gbit_s']):.2f}) | {entry['without_median']:.2f} "
            f"({min(entry['without_gbit_s']):.2f}-{max(entry['without_gbit_s']):.2f}) "
            f"| {entry['ratio_of_medians']:.3f} | **{entry['median_pair_ratio']:.3f}** "
            f"({min(pairs):.3f}-{max(pairs):.3f}) | {low:.3f}-{high:.3f} "
            f"| {verdict((low, high), len(pairs))} "
            f"| {entry['median_pair_ratio_per_cpu']:.3f} |"
        )
    return lines


# --------------------------------------------------------------------------------------------
# set-up and tear-down


@contextlib.contextmanager
def endpoints(lab: MultiHostLab, bridges: dict[str, str]) -> Iterator[dict[str, Attacker]]:
    """a1, a2 on kvm-a's bridge, b1 on kvm-b's, each with the gateway of its side."""
    a, b = lab.hosts["kvm-a"], lab.hosts["kvm-b"]
    layout = (
        ("a1", a, f"{NET}.11", f"{NET}.1"),
        ("a2", a, PUBLIC_VM_IP, f"{NET}.1"),
        ("b1", b, f"{NET}.21", f"{NET}.2"),
    )
    with contextlib.ExitStack() as stack:
        plugged_in = {
            name: stack.enter_context(
                plugged(host.netns, bridges[host.name], f"{ip}/24", gateway, f"{lab.prefix}-{name}")
            )
            for name, host, ip, gateway in layout
        }
        yield plugged_in


def sysctl(host: LabHost, key: str) -> str:
    proc = host.run(["sysctl", "-n", key])
    return proc.stdout.strip() if proc.returncode == 0 else "absent"


def set_up_tenant(lab: MultiHostLab, image: Path, results: dict[str, Any]) -> None:
    """The tenant's networks, VM, public IP and zone link."""
    a, b = lab.hosts["kvm-a"], lab.hosts["kvm-b"]
    applied = engine.run_environment(side_a(a, lab, image))
    engine.run_environment(side_b(b, lab))
    linked = run_zone_link(link_params(lab))
    results["setup_plans"] = {
        "kvm-a": [f"{c['kind']} {c['action']}" for c in applied.plan],
        "zone_link": [f"{c['kind']} {c['action']}" for c in linked.plan],
    }


def tear_down_tenant(lab: MultiHostLab) -> None:
    with contextlib.suppress(Exception):
        run_zone_link(link_params(lab, "absent"))
    for host in lab.hosts.values():
        with contextlib.suppress(Exception):
            conn = host.connect()
            try:
                remove_prefixed(conn, f"{TENANT}_")
            finally:
                conn.close()


def stop_on_sigterm() -> None:
    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def run(args: argparse.Namespace, results: dict[str, Any], base: Path) -> None:
    lab = MultiHostLab(base / "lab")
    url = f"sqlite:///{base / 'ledger.sqlite3'}"
    servers: list[subprocess.Popen[bytes]] = []
    saved_env = {k: os.environ.get(k) for k in ("VCE_LEDGER_URL", "VCE_DOMAIN_TYPE")}
    try:
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        lab.start()
        conn = lab.hosts["kvm-a"].connect()
        try:
            results["machine"] = machine_facts(conn)
        finally:
            conn.close()
        results["iperf3"] = subprocess.run(
            ["iperf3", "--version"], capture_output=True, text=True, check=False, timeout=10
        ).stdout.splitlines()[0]
        log(f"lab {lab.prefix} up; {machine_line(results['machine'])}")
        os.environ["VCE_DOMAIN_TYPE"] = domain_type()
        os.environ["VCE_LEDGER_URL"] = url
        register(url, TENANT, public_ips=4)
        set_up_tenant(lab, make_image(base / "base.qcow2"), results)
        firewall = Firewall(lab)
        results["rules"] = firewall.capture()
        results["bridge_nf_call_iptables"] = {
            h.name: sysctl(h, "net.bridge.bridge-nf-call-iptables") for h in lab.hosts.values()
        }
        bridges = {h.name: bridge_of(h) for h in lab.hosts.values()}
        with endpoints(lab, bridges) as ends:
            a1, a2, b1 = ends["a1"], ends["a2"], ends["b1"]
            paths = [
                Route("bridge", "a1 -> a2, on the tenant's bridge", a1.netns, a2.address),
                Route("zone_link", "a1 -> b1, over the zone link", a1.netns, b1.address),
                Route("public_ip", "internet -> public IP -> a2", lab.internet_netns, PUBLIC_IP),
            ]
            for name in ("a2", "b1"):
                servers.append(start_server(ends[name].netns))
                wait_listening(ends[name].netns)
            for state in STATES:
                firewall.put(state)
                probe(paths, state)
            seconds, omit = (1, 0) if args.quick else (args.seconds, 1)
            log(f"{args.rounds} round(s), {len(paths)} paths x {len(STATES)} states, {seconds} s")
            if not args.quick:
                results["quiet_wait_s"], results["busy_at_start"] = wait_quiet()
            results["samples"] = measure(firewall, paths, args.rounds, seconds, omit)
            results["summary"] = summarise(results["samples"], paths)
            stop_servers(servers)
    finally:
        stop_servers(servers)
        tear_down_tenant(lab)
        forget_stores()
        lab.stop()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seconds", type=int, default=1, help="each iperf3 run, after 1 s omitted")
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke run: 1 round, nothing written"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 1
    if not 1 <= args.rounds <= 50 or not 1 <= args.seconds <= 30:
        parser.error("--rounds 1-50, --seconds 1-30")
    if MISSING is not None:
        print(f"skipped: the firewall or its test tooling is not in this checkout ({MISSING})")
        return 0 if args.quick else 2
    stop_on_sigterm()
    begin = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": "firewall_throughput",
        "started_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "rounds": args.rounds,
        "seconds": args.seconds,
        "code": code_version(),
        "load_before": os.getloadavg(),
    }
    errors: list[str] = []
    base = new_lab_dir("vce-fwt-")  # sshd refuses keys below /tmp
    try:
        run(args, results, base)
    except BaseException as error:  # the report must still be written
        errors.append(f"{type(error).__name__}: {error}")
        results["traceback"] = traceback.format_exc()
        log(f"FAILED: {error}\n{traceback.format_exc()}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    results.update(load_after=os.getloadavg(), total_s=time.perf_counter() - begin, errors=errors)
    if not args.quick:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    if "machine" in results:
        print(f"Machine: {machine_line(results['machine'])}; {results.get('iperf3', '')}")
    loads = f"{results['load_before'][0]:.2f} before, {results['load_after'][0]:.2f} after"
    print(f"Code: {results['code']}; load average {loads}")
    if "rules" in results:
        print(f"Rules per table: {results['rules']}")
        print(f"bridge-nf-call-iptables: {results['bridge_nf_call_iptables']}")
    summary = results.get("summary", {})
    if summary:
        print(f"{args.rounds} round(s), iperf3 TCP, 1 stream; median (min-max)")
        print("\n".join(report_lines(summary)))
    print(f"total {results['total_s']:.1f} s")
    if not args.quick:
        print(f"results: {RESULTS}")
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    if errors:
        return 2
    if args.quick:
        return 0
    missed = [
        e
        for e in summary.values()
        if verdict(e["median_pair_ratio_95"], len(e["pair_ratios"])) == "MISS"
    ]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
