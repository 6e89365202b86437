"""The vce Pulumi provider's Check + Diff on a no-change preview of 100 resources, against
the bare gRPC round trip of a provider that does nothing.

Issue 7: "Provider overhead per resource for Check + Diff on a no-change preview of a
100-resource stack: within 2x the bare gRPC round trip of a provider that does nothing
(about 3 ms here), plus the libvirt reads it needs."

Set-up (not measured), in a temp dir under /tmp: a SQLite ledger with the tenant ``bench``
registered on a roomy plan (tests.support.ledger.register); one zone ``zone-a`` on libvirt's
``test:///default`` driver. Two plugins, each started exactly as the Pulumi CLI's Python
language host starts a plugin directory (``python -u <dir> 127.0.0.1:1``, the port read from
its first stdout line) and configured over gRPC:

- VCE: the checkout's plugin directory ``pulumi/provider`` (tenant, zones, ledgerUrl);
- FLOOR: a provider that does nothing, written by this script to a temp dir as
  ``__main__.py``: a ``pulumi.provider.experimental.provider.Provider`` whose ``check``
  returns the inputs and whose ``diff`` returns ``DiffResponse(changes=False)``, served by
  ``pulumi.provider.experimental.server.main`` (the same SDK servicer the vce plugin uses).

The stack: 40 Vm (1 vCPU, 512 MiB, a 10 GiB boot disk over a base image, one NIC), 30 Disk
(20 GiB) and 30 Network (10.20.N.0/24). Each resource's checked inputs come from one Check
with empty olds (defaults filled, quotas checked: libvirt and ledger reads); its state is
those inputs plus plausible outputs.

Measured, as the engine previews an unchanged stack: per resource Check(olds = news = the
checked inputs), then Diff(olds = the state, news = the inputs Check returned), with the
SDK's sync gRPC stubs over loopback; every Check must return the same inputs and no
failures and every Diff DIFF_NONE, or the benchmark stops (exit 2). One full pass warms
each plugin up, then N passes (default 7) of the 100 resources one after another (the
figure: the median pass's time / 100 = ms per resource, a Check + Diff pair), and N passes
with 10 concurrent callers (the engine's default parallelism; wall time / 100, for
information). The passes alternate between the two plugins so that background load hits
both alike.

In-process, for the explanation (not part of the verdict): the same pairs through the SDK's
servicer without gRPC (``Servicer.Check`` / ``Diff`` awaited directly), for the vce provider
(``pulumi_resource_vce.provider.VceProvider``) and the do-nothing one, with every libvirt
call (each public method of the libvirt module's classes, and ``libvirt.open*``) and every
SQL statement (SQLAlchemy's ``before_cursor_execute``) counted: first during the initial
Checks (which must read, to show the counters work), then during a no-change pass (the
libvirt reads the preview needs). ``--cprofile`` profiles in-process no-change passes,
worker threads included (``asyncio.to_thread`` work is profiled in its thread and merged).

Prints a table; exit 0 when the vce provider's median is at most 2x the floor's, 1 when
not, 2 when the set-up, a check or a measurement failed. Plugins and temp files are removed
in finally blocks.

``--quick`` (for CI): 1 pass; a missed ratio is no error (exit 0), a failed check still is.

    .venv/bin/python bench/pulumi_provider.py [--passes 7] [--cprofile] [--quick]   # about 15 s
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import io
import json
import os
import platform
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_DIR = ROOT / "pulumi" / "provider"
# The checkout's engine first (an older copy is installed in the venv), as the plugin's own
# __main__ does; then the provider package; then the repository (tests.support, plugins).
for _path in (ROOT, PLUGIN_DIR, ROOT / "collections"):
    sys.path.insert(0, str(_path))

from google.protobuf import struct_pb2  # noqa: E402
from pulumi.runtime.proto import provider_pb2  # noqa: E402

from tests.support.ledger import register  # noqa: E402
from tests.support.pulumi_plugin import Plugin, plain, struct, urn  # noqa: E402

TENANT = "bench"
ZONE_URI = "test:///default"
COUNTS = {"Vm": 40, "Disk": 30, "Network": 30}
PARALLELISM = 10  # the engine's default
TARGET_RATIO = 2.0
RPC_TIMEOUT = 30.0  # seconds, per call
DIFF_NONE = provider_pb2.DiffResponse.DIFF_NONE
DIFF_NAMES = {
    provider_pb2.DiffResponse.DIFF_UNKNOWN: "DIFF_UNKNOWN",
    provider_pb2.DiffResponse.DIFF_NONE: "DIFF_NONE",
    provider_pb2.DiffResponse.DIFF_SOME: "DIFF_SOME",
}

FLOOR_PROVIDER = '''
"""A provider that does nothing: Check returns the inputs, Diff says nothing changed."""

from pulumi.provider.experimental.provider import (
    CheckRequest,
    CheckResponse,
    DiffRequest,
    DiffResponse,
    Provider,
)


class Nothing(Provider):
    async def check(self, request: CheckRequest) -> CheckResponse:
        return CheckResponse(inputs=request.new_inputs)

    async def diff(self, request: DiffRequest) -> DiffResponse:
        return DiffResponse(changes=False)
'''
FLOOR_MAIN = (
    FLOOR_PROVIDER
    + """

if __name__ == "__main__":
    import sys

    from pulumi.provider.experimental.server import main

    main(sys.argv[1:], "0.0.1", Nothing())
"""
)


class BenchError(Exception):
    """The set-up, a check or a measurement failed."""


# -- the stack ------------------------------------------------------------------------------


@dataclass
class Resource:
    token: str
    name: str
    urn: str
    id: str
    inputs: dict[str, Any]  # as the program declares them
    checked: struct_pb2.Struct | None = None  # Check's answer with empty olds
    state: struct_pb2.Struct | None = None  # checked inputs + outputs

    @property
    def kind(self) -> str:
        return self.token.rsplit(":", 1)[-1]


def stack() -> list[Resource]:
    resources = []
    for kind, count in COUNTS.items():
        for i in range(count):
            name = f"{kind.lower()}-{i:02d}"
            if kind == "Vm":
                inputs: dict[str, Any] = {
                    "vcpus": 1,
                    "memoryMib": 512,
                    "bootDisk": {"image": "base", "sizeGib": 10},
                    "nics": [{"network": "lan"}],
                }
            elif kind == "Disk":
                inputs = {"sizeGib": 20}
            else:
                inputs = {"cidr": f"10.20.{i}.0/24"}
            token = f"vce:index:{kind}"
            resources.append(
                Resource(token, name, urn(token, name), f"zone-a/{name}", inputs=inputs)
            )
    return resources


def outputs_of(resource: Resource) -> dict[str, Any]:
    """Plausible outputs, as a Create would have stored them (Diff ignores them)."""
    libvirt_name = f"{TENANT}-{resource.name}"
    if resource.kind == "Vm":
        nic = {"network": "lan", "mac": "52:54:00:12:34:56", "ip": "10.20.0.17"}
        return {"libvirtName": libvirt_name, "powerState": "running", "nicAddresses": [nic]}
    if resource.kind == "Disk":
        path = f"/var/lib/libvirt/images/{libvirt_name}.qcow2"
        return {"path": path, "volume": f"{libvirt_name}.qcow2"}
    return {"libvirtName": libvirt_name, "bridge": f"vbr{resource.name[-2:]}", "active": True}


def check_request(resource: Resource, olds: struct_pb2.Struct) -> provider_pb2.CheckRequest:
    news = resource.checked if resource.checked is not None else struct(resource.inputs)
    return provider_pb2.CheckRequest(urn=resource.urn, name=resource.name, olds=olds, news=news)


def prepare(plugin: Plugin, resources: list[Resource]) -> None:
    """Each resource's checked inputs (one Check with empty olds) and its state."""
    for resource in resources:
        response = plugin.stub.Check(check_request(resource, struct({})), timeout=RPC_TIMEOUT)
        if response.failures:
            failures = [(f.property, f.reason) for f in response.failures]
            raise BenchError(f"initial Check of {resource.urn} failed: {failures}")
        resource.checked = response.inputs
        resource.state = struct({**plain(response.inputs), **outputs_of(resource)})


# -- one Check + Diff pair ------------------------------------------------------------------


def pair(stub: Any, resource: Resource) -> tuple[float, float]:
    """Check + Diff of an unchanged resource: seconds for each; verified after the timing."""
    request = check_request(resource, resource.checked)
    started = time.perf_counter()
    checked = stub.Check(request, timeout=RPC_TIMEOUT)
    middle = time.perf_counter()
    diff = stub.Diff(
        provider_pb2.DiffRequest(
            urn=resource.urn, id=resource.id, olds=resource.state, news=checked.inputs
        ),
        timeout=RPC_TIMEOUT,
    )
    ended = time.perf_counter()
    verify(resource, checked, diff)
    return middle - started, ended - middle


def verify(resource: Resource, checked: Any, diff: Any) -> None:
    if checked.failures:
        failures = [(f.property, f.reason) for f in checked.failures]
        raise BenchError(f"Check of unchanged {resource.urn} failed: {failures}")
    if checked.inputs != resource.checked:
        raise BenchError(
            f"Check of unchanged {resource.urn} changed its inputs: "
            f"{plain(resource.checked)} -> {plain(checked.inputs)}"
        )
    if diff.changes != DIFF_NONE:
        raise BenchError(
            f"Diff of unchanged {resource.urn}: {DIFF_NAMES.get(diff.changes, diff.changes)}, "
            f"diffs {list(diff.diffs)}, replaces {list(diff.replaces)}"
        )


@dataclass
class Pass:
    wall: float  # seconds for the 100 pairs
    check: float = 0.0  # summed seconds in Check (sequential passes)
    diff: float = 0.0
    per_pair: tuple[float, ...] = ()  # seconds per pair (sequential passes)


def sequential(stub: Any, resources: list[Resource]) -> Pass:
    times = []
    started = time.perf_counter()
    for resource in resources:
        times.append(pair(stub, resource))
    wall = time.perf_counter() - started
    return Pass(
        wall,
        check=sum(c for c, _ in times),
        diff=sum(d for _, d in times),
        per_pair=tuple(c + d for c, d in times),
    )


def concurrent(stub: Any, resources: list[Resource], pool: ThreadPoolExecutor) -> Pass:
    started = time.perf_counter()
    futures = [pool.submit(pair, stub, resource) for resource in resources]
    for future in futures:
        future.result(timeout=4 * RPC_TIMEOUT)
    return Pass(time.perf_counter() - started)


# -- plugins --------------------------------------------------------------------------------


class DirPlugin(Plugin):
    """The test harness's Plugin for another plugin directory (the floor)."""

    def __init__(self, directory: Path) -> None:
        import grpc
        from pulumi.runtime.proto import provider_pb2_grpc

        self.process = subprocess.Popen(
            [sys.executable, "-u", str(directory), "127.0.0.1:1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.port = self.read_port()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = provider_pb2_grpc.ResourceProviderStub(self.channel)


def config_variables(ledger_url: str) -> dict[str, str]:
    return {
        "tenant": TENANT,
        "zones": json.dumps({"zone-a": {"uri": ZONE_URI}}),
        "ledgerUrl": ledger_url,
    }


def cpu_of(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- in-process: counting libvirt calls and SQL, profiling ----------------------------------


class Counters:
    def __init__(self) -> None:
        self.libvirt: Counter[str] = Counter()
        self.sql = 0
        self.lock = threading.Lock()

    def snapshot(self) -> tuple[int, int, Counter[str]]:
        with self.lock:
            return sum(self.libvirt.values()), self.sql, Counter(self.libvirt)


def count_libvirt_and_sql(counters: Counters) -> Callable[[], None]:
    """Count every libvirt call and SQL statement of this process; returns the undo."""
    import libvirt
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    undo: list[Callable[[], None]] = []

    def counted(owner: Any, name: str) -> None:
        original = owner.__dict__[name]

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with counters.lock:
                counters.libvirt[f"{getattr(owner, '__name__', 'libvirt')}.{name}"] += 1
            return original(*args, **kwargs)

        setattr(owner, name, wrapper)
        undo.append(lambda: setattr(owner, name, original))

    for cls_name in ("virConnect", "virDomain", "virNetwork", "virStoragePool", "virStorageVol"):
        cls = getattr(libvirt, cls_name)
        for name, value in list(vars(cls).items()):
            if callable(value) and not name.startswith("_"):
                counted(cls, name)
    for name in ("open", "openReadOnly", "openAuth"):
        if name in vars(libvirt):
            counted(libvirt, name)

    def on_statement(*_args: Any) -> None:
        with counters.lock:
            counters.sql += 1

    event.listen(Engine, "before_cursor_execute", on_statement)
    undo.append(lambda: event.remove(Engine, "before_cursor_execute", on_statement))

    def restore() -> None:
        for step in reversed(undo):
            step()

    return restore


@dataclass
class InProcess:
    per_pair_ms: float  # median of the passes, vce
    floor_per_pair_ms: float
    check_ms: float
    diff_ms: float
    admit_ms: float  # VceProvider.admit's own time per Check
    initial: tuple[int, int]  # libvirt calls, SQL statements during the initial Checks
    preview: tuple[int, int]  # the same during the no-change passes
    initial_calls: Counter[str]
    preview_calls: Counter[str]
    profile: str = ""


def in_process(resources: list[Resource], ledger_url: str, passes: int, profile: bool):
    from pulumi_resource_vce.main import Servicer
    from pulumi_resource_vce.provider import VceProvider
    from pulumi_resource_vce.schema import VERSION

    namespace: dict[str, Any] = {}
    exec(compile(FLOOR_PROVIDER, "<floor provider>", "exec"), namespace)
    counters = Counters()
    restore = count_libvirt_and_sql(counters)
    try:
        return asyncio.run(
            run_in_process(
                resources,
                ledger_url,
                passes,
                profile,
                counters,
                Servicer([], VERSION, VceProvider(), engine_address=""),
                Servicer([], VERSION, namespace["Nothing"](), engine_address=""),
            )
        )
    finally:
        restore()


async def run_in_process(
    resources: list[Resource],
    ledger_url: str,
    passes: int,
    profile: bool,
    counters: Counters,
    vce: Any,
    floor: Any,
) -> InProcess:
    provider = vce._provider
    variables = {f"vce:config:{k}": v for k, v in config_variables(ledger_url).items()}
    await vce.Configure(
        provider_pb2.ConfigureRequest(variables=variables, acceptSecrets=True), None
    )
    admit_seconds: list[float] = []
    profiles: list[cProfile.Profile] = []
    original_admit = provider.admit

    async def admit(*args: Any) -> Any:
        # A coroutine on the event loop (its quota check alone goes to a worker thread):
        # timed, and profiled while it runs if asked.
        started = time.perf_counter()
        profiler = cProfile.Profile() if profiles else None
        if profiler is not None:
            profiler.enable()
        try:
            return await original_admit(*args)
        finally:
            if profiler is not None:
                profiler.disable()
                profiles.append(profiler)
            admit_seconds.append(time.perf_counter() - started)

    provider.admit = admit

    # The initial Checks with empty olds (the same answers as from the plugin process).
    before = counters.snapshot()
    for resource in resources:
        response = await vce.Check(check_request(resource, struct({})), None)
        if response.failures or response.inputs != resource.checked:
            raise BenchError(f"in-process initial Check of {resource.urn} differs")
    after = counters.snapshot()
    initial = (after[0] - before[0], after[1] - before[1])
    initial_calls = after[2] - before[2]
    if initial[0] == 0:
        raise BenchError("the libvirt counter saw no call during the initial Checks")

    async def one_pass(servicer: Any, split: list[float] | None = None) -> float:
        started = time.perf_counter()
        for resource in resources:
            t0 = time.perf_counter()
            checked = await servicer.Check(check_request(resource, resource.checked), None)
            t1 = time.perf_counter()
            diff = await servicer.Diff(
                provider_pb2.DiffRequest(
                    urn=resource.urn, id=resource.id, olds=resource.state, news=checked.inputs
                ),
                None,
            )
            if split is not None:
                split[0] += t1 - t0
                split[1] += time.perf_counter() - t1
            verify(resource, checked, diff)
        return time.perf_counter() - started

    await one_pass(vce)  # warm-up
    await one_pass(floor)
    admit_seconds.clear()
    before = counters.snapshot()
    vce_times, floor_times, split = [], [], [0.0, 0.0]
    for _ in range(passes):
        vce_times.append(await one_pass(vce, split))
        floor_times.append(await one_pass(floor))
    after = counters.snapshot()
    preview = (after[0] - before[0], after[1] - before[1])
    pairs = passes * len(resources)
    result = InProcess(
        per_pair_ms=statistics.median(vce_times) / len(resources) * 1000,
        floor_per_pair_ms=statistics.median(floor_times) / len(resources) * 1000,
        check_ms=split[0] / pairs * 1000,
        diff_ms=split[1] / pairs * 1000,
        admit_ms=sum(admit_seconds) / max(1, len(admit_seconds)) * 1000,
        initial=initial,
        preview=preview,
        initial_calls=initial_calls,
        preview_calls=after[2] - before[2],
    )
    if profile:
        main_profile = cProfile.Profile()
        profiles.append(main_profile)  # non-empty: admit profiles its thread too
        main_profile.enable()
        try:
            for _ in range(passes):
                await one_pass(vce)
        finally:
            main_profile.disable()
        stats = pstats.Stats(profiles[0], stream=(out := io.StringIO()))
        for other in profiles[1:]:
            stats.add(other)
        stats.strip_dirs().sort_stats("cumulative").print_stats(45)
        stats.sort_stats("tottime").print_stats(25)
        result.profile = f"{passes} passes x {len(resources)} pairs, worker threads merged\n"
        result.profile += out.getvalue()
    return result


# -- report ---------------------------------------------------------------------------------


def machine() -> str:
    mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    return (
        f"{os.cpu_count()} CPUs, {int(mem) / 1024**2:.1f} GiB RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]


@contextlib.contextmanager
def temp_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="vce-bench-pulumi-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run(passes: int, profile: bool, quick: bool = False) -> int:
    resources = stack()
    with temp_dir() as tmp, contextlib.ExitStack() as stack_:
        ledger_url = f"sqlite:///{tmp / 'ledger.sqlite'}"
        register(ledger_url, TENANT)
        floor_dir = tmp / "floor-plugin"
        floor_dir.mkdir()
        (floor_dir / "__main__.py").write_text(FLOOR_MAIN)

        started = time.perf_counter()
        vce = Plugin()
        stack_.callback(vce.close)
        vce_start = time.perf_counter() - started
        started = time.perf_counter()
        floor = DirPlugin(floor_dir)
        stack_.callback(floor.close)
        floor_start = time.perf_counter() - started
        pool = stack_.enter_context(ThreadPoolExecutor(max_workers=PARALLELISM))

        vce.configure(config_variables(ledger_url))
        floor.configure({})
        prepare(vce, resources)

        plugins = {"vce": vce, "floor": floor}
        for plugin in plugins.values():  # warm-up: one pass each way
            sequential(plugin.stub, resources)
            concurrent(plugin.stub, resources, pool)
        seq: dict[str, list[Pass]] = {name: [] for name in plugins}
        par: dict[str, list[Pass]] = {name: [] for name in plugins}
        cpu = dict.fromkeys(plugins, 0.0)
        for _ in range(passes):
            for name, plugin in plugins.items():
                cpu_before = cpu_of(plugin.process.pid)
                seq[name].append(sequential(plugin.stub, resources))
                cpu[name] += cpu_of(plugin.process.pid) - cpu_before
        for _ in range(passes):
            for name, plugin in plugins.items():
                par[name].append(concurrent(plugin.stub, resources, pool))

    # The plugins are stopped and the temp dir is gone; the in-process part has its own.
    with temp_dir() as tmp:
        ledger_url = f"sqlite:///{tmp / 'ledger.sqlite'}"
        register(ledger_url, TENANT)
        inproc = in_process(resources, ledger_url, passes, profile)

    n = len(resources)

    def ms(seconds: float) -> float:
        return seconds / n * 1000

    def median_pass(passes_: list[Pass]) -> Pass:
        return sorted(passes_, key=lambda p: p.wall)[len(passes_) // 2]

    figures = {}
    for name in plugins:
        mid = median_pass(seq[name])
        every_pair = [t for p in seq[name] for t in p.per_pair]
        figures[name] = {
            "seq": ms(statistics.median(p.wall for p in seq[name])),
            "seq_min": ms(min(p.wall for p in seq[name])),
            "seq_max": ms(max(p.wall for p in seq[name])),
            "check": ms(mid.check),
            "diff": ms(mid.diff),
            "pair_median": statistics.median(every_pair) * 1000,
            "pair_p95": p95(every_pair) * 1000,
            "cpu": cpu[name] / (passes * n) * 1000,
            "par": ms(statistics.median(p.wall for p in par[name])),
        }
    v, f = figures["vce"], figures["floor"]
    ratio = v["seq"] / f["seq"]
    verdict = "PASS" if ratio <= TARGET_RATIO else "FAIL"

    rows = [
        ("ms per resource (Check + Diff), median pass", "seq", "{:.3f}"),
        ("  fastest / slowest pass", None, None),
        ("  of which Check", "check", "{:.3f}"),
        ("  of which Diff", "diff", "{:.3f}"),
        ("  one pair: median / p95 over all pairs", None, None),
        ("plugin CPU per pair (ms)", "cpu", "{:.3f}"),
        (f"ms per resource, {PARALLELISM} concurrent callers (wall / 100)", "par", "{:.3f}"),
    ]
    print()
    print(f"Pulumi provider: Check + Diff on a no-change preview of {n} resources")
    print(f"  {', '.join(f'{c} {k}' for k, c in COUNTS.items())}; {passes} passes after 1 warm-up")
    print(f"  {machine()}; load average {os.getloadavg()[0]:.2f}")
    print(f"  plugin start-up: vce {vce_start:.2f} s, floor {floor_start:.2f} s")
    print()
    width = 62
    print(f"{'':<{width}} {'vce':>10} {'floor':>10} {'ratio':>7}")
    for label, key, fmt in rows:
        if key is None and "fastest" in label:
            a = f"{v['seq_min']:.2f}/{v['seq_max']:.2f}"
            b = f"{f['seq_min']:.2f}/{f['seq_max']:.2f}"
            print(f"{label:<{width}} {a:>10} {b:>10}")
            continue
        if key is None:
            a = f"{v['pair_median']:.2f}/{v['pair_p95']:.2f}"
            b = f"{f['pair_median']:.2f}/{f['pair_p95']:.2f}"
            print(f"{label:<{width}} {a:>10} {b:>10}")
            continue
        print(
            f"{label:<{width}} {fmt.format(v[key]):>10} {fmt.format(f[key]):>10} "
            f"{v[key] / f[key]:>7.2f}"
        )
    print()
    print("In-process (the SDK servicer awaited directly, no gRPC), ms per pair:")
    print(
        f"  vce {inproc.per_pair_ms:.3f} (Check {inproc.check_ms:.3f}, of which "
        f"VceProvider.admit {inproc.admit_ms:.3f}; Diff "
        f"{inproc.diff_ms:.3f}); floor {inproc.floor_per_pair_ms:.3f}"
    )
    print(
        f"  libvirt calls / SQL statements: initial Checks (empty olds) {inproc.initial[0]} / "
        f"{inproc.initial[1]}; no-change passes ({passes} x {n} pairs) "
        f"{inproc.preview[0]} / {inproc.preview[1]}"
    )
    top = ", ".join(f"{k} {c}" for k, c in inproc.initial_calls.most_common(6))
    print(f"  initial Checks' libvirt calls: {top}")
    if inproc.preview_calls:
        print(f"  no-change libvirt calls: {dict(inproc.preview_calls)}")
    print()
    print(
        f"Target: vce <= {TARGET_RATIO:g}x floor per resource, + {inproc.preview[0]} "
        f"libvirt reads: {v['seq']:.3f} ms vs {f['seq']:.3f} ms = {ratio:.2f}x -> {verdict}"
    )
    if inproc.profile:
        print()
        print(inproc.profile)
    return 0 if verdict == "PASS" or quick else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=7, help="measured passes (default 7)")
    parser.add_argument(
        "--cprofile", action="store_true", help="profile in-process no-change passes"
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke run: 1 pass, the ratio is no error"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.passes = 1
    if not 1 <= args.passes <= 100:
        parser.error("--passes must be 1-100")
    try:
        return run(args.passes, args.cprofile, args.quick)
    except Exception:
        traceback.print_exc()
        return 2


if __name__ == "__main__":
    sys.exit(main())
