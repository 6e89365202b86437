"""Foundation benchmark: a fresh 10-VM environment, vce.kvm against its floor and its peer.

One invocation, one private libvirtd (tools.libvirtd), one dir storage pool named ``default``
and the tiny guest base image (tools.tinyguest). Measured, in this order:

1. ANSIBLE START-UP: ``ansible-playbook`` running one ``ansible.builtin.debug`` task on
   localhost (connection local, no facts): the fixed cost of any playbook (median of 3).
2. FLOOR: ``python bench/floor.py`` in a subprocess: the minimal libvirt calls that make the
   network (10 static DHCP hosts), 10 qcow2 overlays on the base image and 10 started domains.
3. VCE: one generated playbook with one ``vce.kvm.environment`` task for the same 10 VMs:
   the fresh run, a no-op re-run right away (guests still booting), then, once the guests are
   idle, the no-op re-run that counts; then ``state: absent``.
4. PEER community.libvirt (from the ``ansible`` package, in bench/.venv-peer, installed on
   first use): virt_net define/active/autostart, then per VM virt_volume (or ``virsh
   vol-create-as``), ``virt command=define`` and ``virt state=running``; the same three runs.

Every phase starts from an empty host and is cleaned up after, in finally blocks; the
private libvirtd is stopped (and with it every QEMU it started) whatever happens.

The tenant is registered first (untimed) with ``vce.kvm.tenant`` in a SQLite ledger in the
temp dir (never the user's default ledger), on a plan whose quotas hold exactly its VMs.

Prints a table, the ratios and PASS/MISS per target; writes bench/results/env10-<UTC>.json
and the latest figures into docs/benchmarks.md (between markers). Exit 0 unless a phase
errored.

``--quick`` (for CI): 2 VMs, no peer, one start-up sample, no waiting for a quiet machine or
for the guests to idle; nothing written; a missed speed target is no error, but a no-op that
reports changes is.

    .venv/bin/python bench/env10.py [--count 10] [--skip-peer] [--no-doc] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import ipaddress
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import libvirt
import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
sys.path.insert(0, str(ROOT))
# The checkout's engine, not the copy installed in the venv (it may be an older layout).
sys.path.insert(0, str(ROOT / "collections"))

from tools.cleanup import remove_guard, remove_prefixed  # noqa: E402
from tools.labhost import ensure_pool  # noqa: E402
from tools.libvirtd import MNTNS_FILE, PrivateLibvirtd, domain_type  # noqa: E402
from tools.tinyguest import build_base_image  # noqa: E402

# The virtualenv running this script (normally .venv): its ansible-playbook, its Python.
MAIN_VENV = Path(sys.prefix)
PEER_VENV = BENCH / ".venv-peer"
PEER_REQUIREMENTS = ("ansible>=12,<13", "libvirt-python==12.8.0", "lxml")
RESULTS_DIR = BENCH / "results"
DOC = ROOT / "docs" / "benchmarks.md"
DOC_BEGIN = "<!-- env10:latest:begin (written by bench/env10.py) -->"
DOC_END = "<!-- env10:latest:end -->"

POOL = "default"
CIDR = ipaddress.IPv4Network("10.214.0.0/24")
MEMORY_MIB = 128
SIZE_GIB = 1
TENANT = "bench"  # vce.kvm names its objects bench_<name>
PLAN = "bench"
IMAGE_NAME = "tinyguest"  # the base image, by its name in the catalogue of IMAGE_ZONE
IMAGE_ZONE = "bench"
QUICK_COUNT = 2
FLOOR_PREFIX = "floor"
PEER_PREFIX = "peer"

TARGET_FIRST_RATIO = 1.5
TARGET_NOOP_S = 4.0
STARTUP_REPEATS = 3

PLAYBOOK_TIMEOUT = 900
FLOOR_TIMEOUT = 600
PIP_TIMEOUT = 900
CLK_TCK = os.sysconf("SC_CLK_TCK")
SETTLE_TIMEOUT = 300.0
SETTLE_INTERVAL = 2.0
SETTLE_CORES = 0.3  # the guests together use less than this many cores once idle
QUIET_BUSY = 0.25  # fraction of all CPUs busy that still counts as a quiet machine
QUIET_TIMEOUT = 30.0


# --------------------------------------------------------------------------------------------
# small helpers


def log(message: str) -> None:
    stamp = time.strftime("%H:%M:%S")
    print(f"[{stamp}] {message}", file=sys.stderr, flush=True)


def wait_quiet() -> tuple[float, float]:
    """Wait (at most QUIET_TIMEOUT) for the machine to be nearly idle before a measurement:
    other sessions' tests share it. Returns (seconds waited, last busy fraction)."""
    start = time.monotonic()
    busy = host_busy()
    while busy > QUIET_BUSY and time.monotonic() - start < QUIET_TIMEOUT:
        busy = host_busy()
    return time.monotonic() - start, busy


def host_busy(seconds: float = 1.0) -> float:
    """Fraction of all CPUs busy (any process) over the next `seconds`."""

    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields), idle

    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


class CpuMeter:
    """Where the machine's CPU went during one measurement: ours or someone else's.

    Ours = this process and its reaped children (ansible-playbook, its workers and modules,
    floor.py) + every process of the private libvirtd's mount namespace (libvirtd, QEMU,
    dnsmasq). The rest of the machine's busy time is background from other work.
    """

    namespace: str | None = None  # the private libvirtd's mount namespace, set at start

    def __enter__(self) -> CpuMeter:
        self.start = time.perf_counter()
        self.host0 = self.host_busy_s()
        self.own0 = self.own_s()
        self.ns0 = self.namespace_ticks()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self.start
        host = self.host_busy_s() - self.host0
        ns1 = self.namespace_ticks()
        ns = sum(t - self.ns0.get(pid, 0) for pid, t in ns1.items()) / CLK_TCK
        children = self.own_s() - self.own0
        own = children + ns
        self.figures = {
            "host_cores": host / wall,
            "own_cores": own / wall,
            "background_cores": max(0.0, host - own) / wall,
            "client_cpu_s": children,  # ansible-playbook + workers + modules, or floor.py
            "libvirt_side_cpu_s": ns,  # libvirtd, QEMU, dnsmasq
        }

    @staticmethod
    def host_busy_s() -> float:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return (sum(fields[:8]) - fields[3] - fields[4]) / CLK_TCK

    @staticmethod
    def own_s() -> float:
        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            total += usage.ru_utime + usage.ru_stime
        return total

    @classmethod
    def namespace_ticks(cls) -> dict[int, int]:
        ticks: dict[int, int] = {}
        if not cls.namespace:
            return ticks
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "ns" / "mnt") != cls.namespace:
                    continue
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            ticks[int(entry.name)] = int(fields[11]) + int(fields[12])
        return ticks


def vm_table(prefix: str, count: int, mac_byte: int) -> list[dict[str, str]]:
    """name, MAC and fixed IP (.11 upwards) of each VM of a phase."""
    hosts = list(CIDR.hosts())
    return [
        {
            "name": f"{prefix}_vm{i}" if prefix else f"vm{i}",
            "mac": f"52:54:00:{mac_byte:02x}:{i >> 8:02x}:{i & 0xFF:02x}",
            "ip": str(hosts[9 + i]),
        }
        for i in range(1, count + 1)
    ]


@dataclass
class PlaybookRun:
    """One ansible-playbook invocation as the benchmark saw it."""

    wall_s: float
    rc: int
    changed_results: int  # task results and loop items that reported changed
    changed_tasks: int  # the recap's 'changed' (a loop task counts once)
    failed: int
    plan: list[str] = field(default_factory=list)  # vce.kvm's reported plan, if any
    change_reasons: list[str] = field(default_factory=list)
    host_busy_before: float = 0.0
    quiet_wait_s: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    # seconds before the first task started, inside tasks, after the last task ended
    timeline: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def run_playbook(
    ansible_playbook: Path, playbook: Path, env: dict[str, str], cwd: Path, quiet: bool = True
) -> PlaybookRun:
    """Run and time one playbook; with quiet, first wait (bounded) for an idle machine."""
    waited, busy = wait_quiet() if quiet else (0.0, host_busy(0.2))
    argv = [str(ansible_playbook), "-i", "localhost,", "-c", "local", str(playbook)]
    start = time.perf_counter()
    epoch0 = time.time()
    with CpuMeter() as meter:
        proc = subprocess.run(
            argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=PLAYBOOK_TIMEOUT
        )
    wall = time.perf_counter() - start
    epoch1 = time.time()
    events = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
    run = PlaybookRun(wall, proc.returncode, 0, 0, 0, host_busy_before=busy, quiet_wait_s=waited)
    run.cpu = meter.figures
    tasks = [e for e in events if e["event"] == "task"]
    if tasks:
        first = min(e["t_start"] for e in tasks)
        last = max(e["t_end"] for e in tasks)
        run.timeline = {
            "before_tasks_s": first - epoch0,
            "in_tasks_s": sum(e["t_end"] - e["t_start"] for e in tasks),
            "after_tasks_s": epoch1 - last,
        }
    for event in events:
        if event["event"] == "recap":
            for summary in event["hosts"].values():
                run.changed_tasks += summary.get("changed", 0)
                run.failed += summary.get("failures", 0) + summary.get("unreachable", 0)
            continue
        if event["event"] == "item" or "items" not in event:
            run.changed_results += int(event["changed"])
        run.plan.extend(event.get("plan", []))
        if event.get("change_reason"):
            run.change_reasons.append(event["change_reason"])
        if event["status"] in ("failed", "unreachable"):
            run.errors.append(f"{event['task']}: {event.get('msg', '')}")
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip())[-3000:]
        run.errors.append(f"ansible-playbook exited {proc.returncode}: {tail}")
    return run


def require_ok(run: PlaybookRun, what: str) -> PlaybookRun:
    if run.rc != 0 or run.failed or run.errors:
        raise RuntimeError(f"{what} failed: " + "; ".join(run.errors))
    return run


def require_no_changes(run: PlaybookRun) -> PlaybookRun:
    """A no-op that changes something is a fault, not a slow run: quick mode stops on it."""
    if run.changed_results or run.plan:
        raise RuntimeError(f"no-op reported {run.changed_results} changes, plan {run.plan}")
    return run


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text("---\n" + yaml.safe_dump(data, sort_keys=False, width=1000))
    return path


def ansible_cfg(path: Path, python: Path, collections: Path | None) -> Path:
    """The same settings for both sides; only vce.kvm needs a collections path."""
    lines = [
        "[defaults]",
        f"interpreter_python = {python}",
        "retry_files_enabled = false",
        "host_key_checking = false",
        "gathering = explicit",
        "stdout_callback = bench_json",
        f"callback_plugins = {BENCH / 'callback_plugins'}",
        "nocolor = true",
        "localhost_warning = false",
        "inventory_unparsed_warning = false",
    ]
    if collections is not None:
        lines.append(f"collections_path = {collections}")
    path.write_text("\n".join(lines) + "\n")
    return path


def ansible_env(cfg: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["ANSIBLE_CONFIG"] = str(cfg)
    env.update(extra or {})
    return env


# --------------------------------------------------------------------------------------------
# libvirt side: pool, settling, cleanup


def create_pool(conn: libvirt.virConnect, path: Path) -> libvirt.virStoragePool:
    ensure_pool(conn, POOL, path)
    return conn.storagePoolLookupByName(POOL)


def remove_pool(conn: libvirt.virConnect) -> None:
    with contextlib.suppress(libvirt.libvirtError):
        pool = conn.storagePoolLookupByName(POOL)
        pool.refresh(0)
        for vol in pool.listAllVolumes(0):
            with contextlib.suppress(libvirt.libvirtError):
                vol.delete(0)
        if pool.isActive():
            pool.destroy()
        pool.undefine()


def count_objects(conn: libvirt.virConnect, prefix: str) -> dict[str, int]:
    """How many running domains, volumes and active networks PREFIX_* has: the result check."""
    start = f"{prefix}_"
    pool = conn.storagePoolLookupByName(POOL)
    pool.refresh(0)
    return {
        "running_domains": sum(
            1 for d in conn.listAllDomains(0) if d.name().startswith(start) and d.isActive()
        ),
        "overlay_volumes": sum(
            1
            for v in pool.listAllVolumes(0)
            if v.name().startswith(start) and "<backingStore>" in v.XMLDesc(0)
        ),
        "active_networks": sum(
            1 for n in conn.listAllNetworks(0) if n.name().startswith(start) and n.isActive()
        ),
    }


def wait_settled(conn: libvirt.virConnect, prefix: str) -> dict[str, float]:
    """Wait (bounded) until the phase's guests have booted and idle: their summed CPU rate
    stays under SETTLE_CORES for two samples in a row. Under TCG ten booting guests keep both
    cores busy for ~30 s, which would slow any no-op run measured meanwhile."""
    doms = [d for d in conn.listAllDomains(0) if d.name().startswith(f"{prefix}_")]
    start = time.monotonic()
    quiet = 0
    rate = float("nan")
    previous = sum(d.info()[4] for d in doms)
    while time.monotonic() - start < SETTLE_TIMEOUT:
        time.sleep(SETTLE_INTERVAL)
        current = sum(d.info()[4] for d in doms)
        rate = (current - previous) / 1e9 / SETTLE_INTERVAL
        previous = current
        quiet = quiet + 1 if rate < SETTLE_CORES else 0
        if quiet >= 2:
            break
    return {"waited_s": time.monotonic() - start, "guest_cores": rate, "settled": quiet >= 2}


# --------------------------------------------------------------------------------------------
# the phases


@dataclass
class Context:
    daemon: PrivateLibvirtd
    conn: libvirt.virConnect
    image: Path
    count: int
    work: Path
    domain_type: str
    quick: bool = False  # CI smoke run: fewer samples, no waiting for quiet or idle

    @property
    def pool_dir(self) -> Path:
        return self.daemon.base_dir / "pool"

    @property
    def console_dir(self) -> Path:
        return self.daemon.log_dir / "qemu"


def phase_startup(ctx: Context, venv: Path, tag: str) -> dict[str, Any]:
    """ansible-playbook with one debug task (and, for reference, one module: ping)."""
    cfg = ansible_cfg(ctx.work / f"startup-{tag}.cfg", venv / "bin" / "python", None)
    env = ansible_env(cfg)
    play = {"name": "start-up", "hosts": "localhost", "gather_facts": False}
    debug = write_yaml(
        ctx.work / f"startup-debug-{tag}.yml",
        [{**play, "tasks": [{"ansible.builtin.debug": {"msg": "hello"}}]}],
    )
    ping = write_yaml(
        ctx.work / f"startup-ping-{tag}.yml", [{**play, "tasks": [{"ansible.builtin.ping": {}}]}]
    )
    playbook = venv / "bin" / "ansible-playbook"
    quiet = not ctx.quick
    repeats = 1 if ctx.quick else STARTUP_REPEATS
    require_ok(run_playbook(playbook, debug, env, ctx.work, quiet), "warm-up")  # page cache
    debug_runs = [
        require_ok(run_playbook(playbook, debug, env, ctx.work, quiet), "start-up").wall_s
        for _ in range(repeats)
    ]
    ping_runs = [
        require_ok(run_playbook(playbook, ping, env, ctx.work, quiet), "ping").wall_s
        for _ in range(repeats)
    ]
    return {
        "debug_s": statistics.median(debug_runs),
        "debug_runs_s": debug_runs,
        "ping_s": statistics.median(ping_runs),
        "ping_runs_s": ping_runs,
    }


def phase_floor(ctx: Context) -> dict[str, Any]:
    python = MAIN_VENV / "bin" / "python"
    common = [
        "--uri", ctx.daemon.uri, "--image", str(ctx.image), "--count", str(ctx.count),
        "--prefix", FLOOR_PREFIX, "--pool", POOL, "--cidr", str(CIDR),
        "--memory-mib", str(MEMORY_MIB), "--size-gib", str(SIZE_GIB),
        "--domain-type", ctx.domain_type, "--console-dir", str(ctx.console_dir),
    ]  # fmt: skip
    result: dict[str, Any] = {}
    try:
        if not ctx.quick:
            result["quiet_wait_s"], result["host_busy_before"] = wait_quiet()
        start = time.perf_counter()
        with CpuMeter() as meter:
            proc = subprocess.run(
                [str(python), str(BENCH / "floor.py"), *common],
                capture_output=True,
                text=True,
                timeout=FLOOR_TIMEOUT,
            )
        result["wall_s"] = time.perf_counter() - start
        result["cpu"] = meter.figures
        if proc.returncode != 0:
            raise RuntimeError(f"floor.py exited {proc.returncode}: {proc.stderr[-3000:]}")
        result["phases_s"] = json.loads(proc.stdout)
        result["objects"] = count_objects(ctx.conn, FLOOR_PREFIX)
    finally:
        start = time.perf_counter()
        result["removed"] = len(remove_prefixed(ctx.conn, f"{FLOOR_PREFIX}_"))
        result["cleanup_s"] = time.perf_counter() - start
    return result


def plan_for(count: int) -> dict[str, Any]:
    """A plan whose quotas hold the benchmark's environment exactly: the admission is real."""
    quotas = {
        "vms": count,
        "vcpus": count,
        "ram_gib": math.ceil(count * MEMORY_MIB / 1024),
        "disk_gib": count * SIZE_GIB,
        "networks": 1,
        "public_ips": 0,
        "zone_links": 0,
        "backup_schedules": 0,
        "backup_storage_gib": 0,
    }
    return {PLAN: {"quotas": quotas, "trial_hours": 0}}


def register_tenant(ctx: Context, playbook: Path, env: dict[str, str]) -> dict[str, Any]:
    """Register the tenant with vce.kvm.tenant and the base image in the zone's catalogue with
    vce.kvm.image, as an operator does before its first run."""
    args = {"name": TENANT, "customer": "vce.kvm benchmark", "plan": PLAN}
    image = {
        "name": IMAGE_NAME,
        "zone": IMAGE_ZONE,
        "path": str(ctx.image),
        "image_dirs": [str(ctx.image.parent)],
    }
    registered = {**args, "plans": plan_for(ctx.count)}
    tasks = [
        {"name": f"Tenant {TENANT} registered", "vce.kvm.tenant": registered},
        {"name": f"Image {IMAGE_NAME} in the catalogue", "vce.kvm.image": image},
    ]
    play = {"name": "vce.kvm bench tenant", "hosts": "localhost", "gather_facts": False}
    book = write_yaml(ctx.work / "vce-tenant.yml", [{**play, "tasks": tasks}])
    return asdict(require_ok(run_playbook(playbook, book, env, ROOT, quiet=False), "tenant"))


def vce_playbook(ctx: Context, path: Path, state: str) -> Path:
    args: dict[str, Any] = {"uri": ctx.daemon.uri, "tenant": TENANT}
    if state == "absent":
        args["state"] = "absent"
    else:
        args["default_pool"] = POOL
        args["networks"] = [{"name": "lan", "cidr": str(CIDR), "mode": "isolated"}]
        args["vms"] = [
            {
                "name": vm["name"],
                "memory_mib": MEMORY_MIB,
                "boot_disk": {"image": IMAGE_NAME, "size_gib": SIZE_GIB},
                "nics": [{"network": "lan", "ip": vm["ip"]}],
            }
            for vm in vm_table("", ctx.count, 0)
        ]
    task = {"name": f"Tenant {TENANT} {state}", "vce.kvm.environment": args}
    play = {"name": "vce.kvm bench", "hosts": "localhost", "gather_facts": False}
    return write_yaml(path, [{**play, "tasks": [task]}])


def phase_vce(ctx: Context) -> dict[str, Any]:
    cfg = ansible_cfg(ctx.work / "vce.cfg", MAIN_VENV / "bin" / "python", ROOT / "collections")
    # A private ledger: the benchmark must never touch the user's default one.
    ledger = f"sqlite:///{ctx.work / 'ledger.sqlite3'}"
    env = ansible_env(cfg, {"VCE_CONSOLE_LOG_DIR": str(ctx.console_dir), "VCE_LEDGER_URL": ledger})
    playbook = MAIN_VENV / "bin" / "ansible-playbook"
    present = vce_playbook(ctx, ctx.work / "vce-present.yml", "present")
    absent = vce_playbook(ctx, ctx.work / "vce-absent.yml", "absent")
    quiet = not ctx.quick
    result: dict[str, Any] = {}
    try:
        result["tenant"] = register_tenant(ctx, playbook, env)
        first = run_playbook(playbook, present, env, ROOT, quiet)
        result["first"] = asdict(require_ok(first, "vce"))
        result["objects"] = count_objects(ctx.conn, TENANT)
        noop = run_playbook(playbook, present, env, ROOT, quiet=False)
        require_ok(noop, "vce no-op (busy)")
        result["noop_busy"] = asdict(noop)
        if ctx.quick:  # the guests' booting slows it, but its plan must be empty all the same
            require_no_changes(noop)
        else:
            result["settle"] = wait_settled(ctx.conn, TENANT)
            noop = require_ok(run_playbook(playbook, present, env, ROOT), "vce no-op")
            result["noop"] = asdict(noop)
        gone = run_playbook(playbook, absent, env, ROOT, quiet)
        result["absent"] = asdict(require_ok(gone, "absent"))
    finally:
        start = time.perf_counter()
        result["leftovers_removed"] = remove_prefixed(ctx.conn, f"{TENANT}_")
        result["cleanup_s"] = time.perf_counter() - start
    return result


def ensure_peer_venv() -> dict[str, Any]:
    """bench/.venv-peer with the `ansible` package (community.libvirt inside) + bindings."""
    python = PEER_VENV / "bin" / "python"
    marker = PEER_VENV / ".bench-requirements"
    wanted = "\n".join(PEER_REQUIREMENTS)
    installed = False
    if not (python.exists() and marker.exists() and marker.read_text() == wanted):
        log(f"installing {', '.join(PEER_REQUIREMENTS)} into {PEER_VENV} ...")
        base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
        subprocess.run([str(base), "-m", "venv", str(PEER_VENV)], check=True, timeout=120)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *PEER_REQUIREMENTS],
            check=True,
            timeout=PIP_TIMEOUT,
        )
        marker.write_text(wanted)
        installed = True
    probe = (
        "import json, pathlib, ansible, ansible_collections.community.libvirt as c\n"
        "from ansible.release import __version__ as core\n"
        "root = pathlib.Path(c.__path__[0])\n"
        "meta = json.loads((root / 'MANIFEST.json').read_text())['collection_info']\n"
        "import importlib.metadata as m\n"
        "print(json.dumps({'ansible': m.version('ansible'), 'ansible_core': core,\n"
        "  'community_libvirt': meta['version'],\n"
        "  'has_virt_volume': (root / 'plugins/modules/virt_volume.py').exists()}))\n"
    )
    out = subprocess.run(
        [str(python), "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return {**json.loads(out.stdout), "installed_now": installed}


def peer_playbook(ctx: Context, path: Path, vms: list[dict[str, str]], volume_via: str) -> Path:
    hosts = list(CIDR.hosts())
    templates = BENCH / "templates"
    uri = "{{ uri }}"
    volume_task: dict[str, Any]
    if volume_via == "virt_volume":
        volume_task = {
            "name": "Boot volume (overlay on the base image)",
            "community.libvirt.virt_volume": {
                "uri": uri,
                "pool": "{{ pool }}",
                "state": "present",
                "xml": f"{{{{ lookup('template', '{templates}/volume.xml.j2') }}}}",
            },
            "loop": "{{ vms }}",
            "loop_control": {"label": "{{ item.name }}"},
        }
    else:  # what users of collections without virt_volume write
        argv = [
            "virsh", "-c", uri, "vol-create-as", "{{ pool }}", "{{ item.name }}.qcow2",
            f"{SIZE_GIB}G", "--format", "qcow2", "--backing-vol", "{{ base_image }}",
            "--backing-vol-format", "qcow2",
        ]  # fmt: skip
        volume_task = {
            "name": "Boot volume (overlay on the base image)",
            "ansible.builtin.command": {
                "argv": argv,
                "creates": "{{ pool_dir }}/{{ item.name }}.qcow2",
            },
            "loop": "{{ vms }}",
            "loop_control": {"label": "{{ item.name }}"},
        }
    tasks = [
        {
            "name": "Network defined",
            "community.libvirt.virt_net": {
                "uri": uri,
                "command": "define",
                "name": "{{ net_name }}",
                "xml": f"{{{{ lookup('template', '{templates}/network.xml.j2') }}}}",
            },
        },
        {
            "name": "Network active",
            "community.libvirt.virt_net": {"uri": uri, "name": "{{ net_name }}", "state": "active"},
        },
        {
            "name": "Network autostart",
            "community.libvirt.virt_net": {"uri": uri, "name": "{{ net_name }}", "autostart": True},
        },
        volume_task,
        {
            "name": "Domain defined",
            "community.libvirt.virt": {
                "uri": uri,
                "command": "define",
                "autostart": True,
                "xml": f"{{{{ lookup('template', '{templates}/domain.xml.j2') }}}}",
            },
            "loop": "{{ vms }}",
            "loop_control": {"label": "{{ item.name }}"},
        },
        {
            "name": "Domain running",
            "community.libvirt.virt": {"uri": uri, "name": "{{ item.name }}", "state": "running"},
            "loop": "{{ vms }}",
            "loop_control": {"label": "{{ item.name }}"},
        },
    ]
    play = {
        "name": "community.libvirt bench",
        "hosts": "localhost",
        "gather_facts": False,
        "vars": {
            "uri": ctx.daemon.uri,
            "pool": POOL,
            "pool_dir": str(ctx.pool_dir),
            "base_image": str(ctx.image),
            "size_gib": SIZE_GIB,
            "memory_mib": MEMORY_MIB,
            "domain_type": ctx.domain_type,
            "console_dir": str(ctx.console_dir),
            "net_name": f"{PEER_PREFIX}_lan",
            "net_gateway": str(hosts[0]),
            "net_prefix": CIDR.prefixlen,
            "dhcp_start": str(hosts[99]),
            "dhcp_end": str(hosts[199]),
            "vms": vms,
        },
        "tasks": tasks,
    }
    return write_yaml(path, [play])


def phase_peer(ctx: Context) -> dict[str, Any]:
    result: dict[str, Any] = {"versions": ensure_peer_venv()}
    volume_via = "virt_volume" if result["versions"]["has_virt_volume"] else "virsh vol-create-as"
    result["volume_via"] = volume_via
    python = PEER_VENV / "bin" / "python"
    cfg = ansible_cfg(ctx.work / "peer.cfg", python, None)
    env = ansible_env(cfg)
    playbook = PEER_VENV / "bin" / "ansible-playbook"
    vms = vm_table(PEER_PREFIX, ctx.count, 0xF2)
    book = peer_playbook(ctx, ctx.work / "peer.yml", vms, volume_via)
    try:
        result["startup"] = phase_startup(ctx, PEER_VENV, "peer")
        result["first"] = asdict(require_ok(run_playbook(playbook, book, env, ctx.work), "peer"))
        result["objects"] = count_objects(ctx.conn, PEER_PREFIX)
        noop = run_playbook(playbook, book, env, ctx.work, quiet=False)
        require_ok(noop, "peer no-op (busy)")
        result["noop_busy"] = asdict(noop)
        result["settle"] = wait_settled(ctx.conn, PEER_PREFIX)
        noop = require_ok(run_playbook(playbook, book, env, ctx.work), "peer no-op")
        result["noop"] = asdict(noop)
    finally:
        start = time.perf_counter()
        result["removed"] = len(remove_prefixed(ctx.conn, f"{PEER_PREFIX}_"))
        result["cleanup_s"] = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------------------------
# machine facts, report


def code_version() -> str:
    """The commit measured, marked dirty when plugins/ differs from it."""

    def git(*argv: str) -> str:
        proc = subprocess.run(
            ["git", *argv], cwd=ROOT, capture_output=True, text=True, check=False, timeout=30
        )
        return proc.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (
        " + uncommitted plugins/ changes" if git("status", "--porcelain", "plugins") else ""
    )


def machine_facts(conn: libvirt.virConnect) -> dict[str, Any]:
    def version(number: int) -> str:
        return f"{number // 1000000}.{number // 1000 % 1000}.{number % 1000}"

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
    nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    virt = domain_type()
    return {
        "nproc": int(nproc),
        "memory_gib": round(mem_kib / 1024**2, 1),
        "cpu_model": cpu,
        "kernel": platform.release(),
        "os": _os_name(),
        "libvirt": version(conn.getLibVersion()),
        "qemu": version(conn.getVersion()),
        "virtualisation": "KVM" if virt == "kvm" else "TCG (no usable KVM)",
        "python": platform.python_version(),
    }


def _os_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    return platform.system()


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def dig(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    startup = dig(results, "startup", "debug_s")
    floor = dig(results, "floor", "wall_s")
    vce_first = dig(results, "vce", "first", "wall_s")
    vce_noop = dig(results, "vce", "noop", "wall_s")
    noop_changed = dig(results, "vce", "noop", "changed_results")
    noop_plan = dig(results, "vce", "noop", "plan")
    peer_first = dig(results, "peer", "first", "wall_s")
    peer_noop = dig(results, "peer", "noop", "wall_s")
    summary: dict[str, Any] = {
        "first_ratio": ratio(vce_first, None if floor is None else floor + (startup or 0.0)),
        "first_minus_startup_over_floor": ratio(
            None if vce_first is None else vce_first - (startup or 0.0), floor
        ),
        "peer_first_over_vce_first": ratio(peer_first, vce_first),
        "peer_noop_over_vce_noop": ratio(peer_noop, vce_noop),
        "targets": {},
    }
    first_ratio = summary["first_ratio"]
    summary["targets"]["first_le_1.5x"] = (
        None if first_ratio is None else first_ratio <= TARGET_FIRST_RATIO
    )
    summary["targets"]["noop_lt_4s"] = None if vce_noop is None else vce_noop < TARGET_NOOP_S
    summary["targets"]["noop_zero_changes"] = (
        None if noop_changed is None else noop_changed == 0 and not noop_plan
    )
    return summary


def fmt(value: float | None, unit: str = " s") -> str:
    return "n/a" if value is None else f"{value:.2f}{unit}"


def verdict(ok: bool | None) -> str:
    return {True: "PASS", False: "MISS", None: "n/a"}[ok]


def report_lines(results: dict[str, Any]) -> list[str]:
    """The figures as a Markdown table plus the targets, for the console and the doc."""
    s = results["summary"]
    vce = results.get("vce", {})
    peer = results.get("peer", {})

    def bg(*keys: str) -> str:
        cores = dig(results, *keys, "cpu", "background_cores")
        return "" if cores is None else f"{cores:.2f}"

    def row(name: str, *keys: str) -> tuple[str, str, str]:
        return name, fmt(dig(results, *keys, "wall_s")), bg(*keys)

    samples = len(dig(results, "startup", "debug_runs_s") or []) or STARTUP_REPEATS
    rows = [
        (
            f"Ansible start-up (1 debug task, median of {samples})",
            fmt(dig(results, "startup", "debug_s")),
            "",
        ),
        (
            f"same with 1 module task (ping), median of {samples}, for reference",
            fmt(dig(results, "startup", "ping_s")),
            "",
        ),
        row("Floor: bare Python script (floor.py, subprocess)", "floor"),
        row("vce.kvm environment: fresh run", "vce", "first"),
        row("vce.kvm no-op re-run, guests still booting", "vce", "noop_busy"),
        row("vce.kvm no-op re-run, guests idle", "vce", "noop"),
        ("changes reported by that no-op", str(dig(vce, "noop", "changed_results")), ""),
        row("vce.kvm state=absent (teardown)", "vce", "absent"),
        row("community.libvirt: fresh run", "peer", "first"),
        row("community.libvirt no-op, guests still booting", "peer", "noop_busy"),
        row("community.libvirt no-op, guests idle", "peer", "noop"),
        (
            "results (tasks) reported changed by that no-op",
            f"{dig(peer, 'noop', 'changed_results')} ({dig(peer, 'noop', 'changed_tasks')})",
            "",
        ),
    ]
    lines = ["| measurement | wall | background cores |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {value} | {background} |" for name, value, background in rows]
    lines.append("")
    lines.append("| ratio / target | value | verdict |")
    lines.append("| --- | ---: | --- |")
    targets = s["targets"]
    lines.append(
        f"| vce fresh / (floor + start-up), target <= {TARGET_FIRST_RATIO} "
        f"| {fmt(s['first_ratio'], 'x')} | {verdict(targets['first_le_1.5x'])} |"
    )
    lines.append(
        "| (vce fresh - start-up) / floor, stricter reading, information "
        f"| {fmt(s['first_minus_startup_over_floor'], 'x')} | - |"
    )
    lines.append(
        f"| vce no-op (guests idle), target < {TARGET_NOOP_S:.0f} s "
        f"| {fmt(dig(vce, 'noop', 'wall_s'))} | {verdict(targets['noop_lt_4s'])} |"
    )
    lines.append(
        f"| vce no-op changes, target 0 | {dig(vce, 'noop', 'changed_results')} "
        f"| {verdict(targets['noop_zero_changes'])} |"
    )
    lines.append(
        f"| community.libvirt fresh / vce fresh | {fmt(s['peer_first_over_vce_first'], 'x')} | - |"
    )
    lines.append(
        f"| community.libvirt no-op / vce no-op | {fmt(s['peer_noop_over_vce_noop'], 'x')} | - |"
    )
    return lines


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['nproc']} CPUs (`nproc`), {m['memory_gib']} GiB RAM, {m['cpu_model']}, "
        f"kernel {m['kernel']}, {m['os']}, libvirt {m['libvirt']}, QEMU {m['qemu']}, "
        f"{m['virtualisation']}, Python {m['python']}"
    )


def update_doc(results: dict[str, Any], json_path: Path) -> None:
    peer = results.get("peer", {})
    versions = peer.get("versions", {})
    block = [
        f"Latest run: {results['started_utc']} at commit {results['code']} "
        f"(`{json_path.relative_to(ROOT)}`, not committed).",
        "",
        f"Machine: {machine_line(results['machine'])}.",
        f"{results['count']} VMs of {MEMORY_MIB} MiB, 1 vCPU, {SIZE_GIB} GiB qcow2 overlay on the "
        "tiny guest base image, one NIC with a fixed IP on one isolated network.",
    ]
    if versions:
        block.append(
            f"Peer: ansible {versions.get('ansible')} (ansible-core "
            f"{versions.get('ansible_core')}), community.libvirt "
            f"{versions.get('community_libvirt')}, volumes via {peer.get('volume_via')}."
        )
    block += ["", *report_lines(results)]
    write_doc_block(DOC_BEGIN, DOC_END, block)


def write_doc_block(begin: str, end: str, lines: list[str]) -> None:
    """Put lines between the markers begin and end of docs/benchmarks.md (appended, markers
    and all, when the doc lacks them): the rest of the doc is written by hand."""
    block = "\n".join([begin, *lines, end])
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)


# --------------------------------------------------------------------------------------------
# main


@contextlib.contextmanager
def private_host(count: int, quick: bool = False) -> Iterator[Context]:
    """A private libvirtd with the `default` pool; everything removed on the way out."""
    base = Path(tempfile.mkdtemp(prefix="vce-bench-", dir="/tmp"))
    work = base / "work"
    work.mkdir()
    daemon = PrivateLibvirtd(base / "d")
    conn = None
    try:
        daemon.start()
        CpuMeter.namespace = (daemon.base_dir / MNTNS_FILE).read_text().strip()
        conn = daemon.connect()
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        create_pool(conn, daemon.base_dir / "pool")
        image = build_base_image()
        yield Context(daemon, conn, image, count, work, domain_type(), quick)
    finally:
        if conn is not None:
            for prefix in (FLOOR_PREFIX, TENANT, PEER_PREFIX):
                with contextlib.suppress(libvirt.libvirtError):
                    remove_prefixed(conn, f"{prefix}_")
            remove_pool(conn)
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
        daemon.stop()
        remove_guard()
        shutil.rmtree(base, ignore_errors=True)


def run_phase(
    results: dict[str, Any], errors: list[str], name: str, action: Callable[[], dict[str, Any]]
) -> None:
    log(f"phase {name} ...")
    start = time.perf_counter()
    try:
        results[name] = action()
    except Exception as error:  # record it, clean up, go on with the other phases
        errors.append(f"{name}: {error}")
        log(f"phase {name} FAILED: {error}\n{traceback.format_exc()}")
    log(f"phase {name} done in {time.perf_counter() - start:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10, help="VMs per environment")
    parser.add_argument("--skip-peer", action="store_true", help="leave community.libvirt out")
    parser.add_argument("--no-doc", action="store_true", help="do not touch docs/benchmarks.md")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"CI smoke run: {QUICK_COUNT} VMs, no peer, nothing written, errors only fail",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.count, args.skip_peer, args.no_doc = QUICK_COUNT, True, True

    started = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {
        "benchmark": "env10",
        "started_utc": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "count": args.count,
        "code": code_version(),
    }
    errors: list[str] = []
    try:
        with private_host(args.count, args.quick) as ctx:
            results["machine"] = machine_facts(ctx.conn)
            results["base_image"] = str(ctx.image)
            log(f"private libvirtd at {ctx.daemon.uri}; {machine_line(results['machine'])}")
            run_phase(results, errors, "startup", lambda: phase_startup(ctx, MAIN_VENV, "main"))
            run_phase(results, errors, "floor", lambda: phase_floor(ctx))
            run_phase(results, errors, "vce", lambda: phase_vce(ctx))
            if not args.skip_peer:
                run_phase(results, errors, "peer", lambda: phase_peer(ctx))
    except Exception as error:
        errors.append(f"set-up: {error}")
        log(f"set-up FAILED: {error}\n{traceback.format_exc()}")

    results["summary"] = summarise(results)
    results["errors"] = errors
    results["finished_utc"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    json_path = RESULTS_DIR / f"env10-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    if not args.quick:  # a smoke run's figures are no results
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n")

    if "machine" in results:
        print(f"Machine: {machine_line(results['machine'])}")
    print("\n".join(report_lines(results)))
    peer = results.get("peer", {})
    if peer:
        print(f"peer volumes via: {peer.get('volume_via')}; versions: {peer.get('versions')}")
        reasons = sorted(set(dig(peer, "noop", "change_reasons") or []))
        if reasons:
            print(f"peer no-op change reasons: {', '.join(reasons)}")
    for label, keys in (
        ("floor", ("floor",)),
        ("vce fresh", ("vce", "first")),
        ("vce no-op", ("vce", "noop")),
        ("peer fresh", ("peer", "first")),
        ("peer no-op", ("peer", "noop")),
    ):
        cpu = dig(results, *keys, "cpu") or {}
        timeline = dig(results, *keys, "timeline") or {}
        if cpu:
            parts = [f"client CPU {cpu['client_cpu_s']:.2f} s"]
            parts.append(f"libvirt/QEMU CPU {cpu['libvirt_side_cpu_s']:.2f} s")
            parts += [f"{k.removesuffix('_s')} {v:.2f} s" for k, v in timeline.items()]
            print(f"{label}: {', '.join(parts)}")
    plan = dig(results, "vce", "noop", "plan")
    if plan:
        print(f"vce no-op plan (should be empty): {plan}")
    if not args.quick:
        print(f"results: {json_path}")
    if "machine" in results and not args.no_doc:
        update_doc(results, json_path)
        print(f"updated: {DOC}")
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
