"""Backups, 2 GiB disk with 1.5 GiB of data: the runner against `qemu-img convert` (the floor).

Issue 4: "Backup throughput of a 2 GiB disk with 1.5 GiB of data written: within 1.5x of
copying the same allocated data with `qemu-img convert` on the same machine (the floor), in
the same run; an incremental after 64 MiB of changes moves roughly those 64 MiB, not the disk."

One invocation, one private libvirtd (tools.libvirtd) in a temp dir under /tmp.

Preparation, untimed (its time is reported): 1.5 GiB of random bytes (``openssl rand``, or
``os.urandom`` without openssl) in a raw file extended to 2 GiB (a sparse tail), the MBR boot
signature cleared so the firmware never boots random code, converted into a 2 GiB qcow2
(``qemu-img convert -O qcow2 -o compat=1.1``: v3, which persistent bitmaps need; the zero
tail stays unallocated); the raw file is deleted. A transient domain (``domain_type()``,
64 MiB, 1 vCPU, no OS: the firmware finds nothing to boot and idles) gets that file as virtio
``vda`` with ``<serial>data</serial>`` and is started.

Then a warm-up pair (``--warmups``, default 1: floor + full backup, reported apart and kept
out of the medians: it holds the first backup job of a fresh QEMU process and the ledger's
first open) and the runs (``--runs``, default 3; the floor first in odd runs, the backup
first in even ones). Each step is preceded by ``sync`` and ``echo 3 >
/proc/sys/vm/drop_caches`` (a cold page cache for every step alike; ``--warm`` only syncs) and
by a wait (at most 10 s) for a quiet machine; the cores other processes used during each step,
and the hypervisor's steal, are recorded:

1. FLOOR: ``qemu-img convert -U -f qcow2 -O qcow2 <disk> <out>`` (``-U``: the running VM holds
   the image's lock; the guest writes nothing). Wall time; then, timed apart, ``fsync`` of
   the output (qemu-img's default output cache mode is ``unsafe``: it never flushes).
2. FULL BACKUP: ``BackupRun(config).run()`` in this process, ``config.disks = ("data",)`` (by
   serial), a SQLite ledger file in the temp dir, no tenant registered. Wall time, the
   runner's ``duration_s``, and its steps, timed by wrapping the runner's methods and
   ``qemu_img`` in this process (plugins/ untouched); the libvirt job's own
   ``time_elapsed`` is read by asking ``jobStats`` to keep the completed job's figures.
   Between runs (untimed) the backup directory and the domain's checkpoints are removed, so
   each run is a full backup; the last one is kept.

After the runs: 64 MiB of changes written into the running disk through QEMU's HMP
``qemu-io -d <qdev>/virtio-backend`` (16 writes of 4 MiB, 128 MiB apart, patterns 0x30-0x3f),
then the INCREMENTAL backup by the runner (kind must be ``incremental``): wall time, its
file's allocated bytes (``st_blocks * 512``), the data its qcow2 layer holds (``qemu-img
map``), the runner's ``bytes_processed``. Verification: the domain is paused (QEMU flushes),
``qemu-io -U -r`` re-reads the 16 written patterns, and ``qemu-img compare -U`` compares the
live disk with the incremental backup file (read through its backing chain, the full backup).
Before that, one more run through the CLI (``python -m ansible_collections.vce.kvm.cli.backup
run --config``, as the schedule's service runs it) with nothing changed: the fixed cost of a
run in a fresh process.
The ledger's records are listed. For context: the CLI's ``list`` (interpreter + imports).

The domain, the files, the ledger and the daemon are removed in finally blocks (also on
SIGTERM). Prints a table and a JSON summary; writes bench/results/backup.json. Exit 1 when a
target is missed, 2 when the set-up, a run or the verification failed.

``--quick`` (for CI): a 256 MiB disk with 192 MiB of data, 8 MiB of changes, 1 run, no
warm-up, the page cache kept (dropping it would slow every other process on the machine), no
waiting for a quiet machine, nothing written. A missed throughput ratio is no error there; a
failed run or verification still exits 2, an incremental that moved too much still exits 1.

    .venv/bin/python bench/backup.py [--runs 3] [--warmups 1] [--warm] [--quick]
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
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import libvirt
import libvirt_qemu

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The checkout's engine, not the copy installed in the venv (it may be an older layout).
sys.path.insert(0, str(ROOT / "collections"))
sys.path.insert(0, str(ROOT / "bench"))

from ansible_collections.vce.kvm.plugins.module_utils.core.backup_spec import Retention  # noqa: E402
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger  # noqa: E402
from ansible_collections.vce.kvm.plugins.module_utils.runner import backup as backup_runner  # noqa: E402
from ansible_collections.vce.kvm.plugins.module_utils.runner.backup import BackupRun, RunnerConfig  # noqa: E402
from env10 import CpuMeter, host_busy, log, machine_facts, machine_line  # noqa: E402

from tests.support.ledger import forget_stores  # noqa: E402
from tools.libvirtd import MNTNS_FILE, PrivateLibvirtd, domain_type  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "backup.json"
MIB = 1024 * 1024
TENANT = "bench"
VM = "bk"
DOMAIN = "bench_bk"
SCHEDULE = "nightly"
SERIAL = "data"
MEMORY_MIB = 64
TARGET_RATIO = 1.5
INCREMENTAL_SLACK = 1.5  # "roughly 64 MiB": at most 1.5x what was written
RUNNER_TIMEOUT_S = 600
CMD_TIMEOUT_S = 600


@dataclass(frozen=True)
class Sizes:
    """The disk and the changes. The writes land at 32 MiB + n * stride: across the data and
    the unallocated tail."""

    disk_mib: int = 2048
    data_mib: int = 1536
    change_mib: int = 64
    change_writes: int = 16
    change_stride_mib: int = 128


FULL = Sizes()
QUICK = Sizes(disk_mib=256, data_mib=192, change_mib=8, change_stride_mib=12)
QUIET_BUSY = 0.25  # fraction of both CPUs busy that still counts as a quiet machine
QUIET_WAIT_S = 10.0  # at most this long per measured step (the bench must stay near 3 min)
DROP_CACHES = Path("/proc/sys/vm/drop_caches")
HMP = libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP
QDEV = "virtio-disk0/virtio-backend"  # libvirt's alias for vda + the virtio-blk backend
CLI_MODULE = "ansible_collections.vce.kvm.cli.backup"  # the runner's command line, `vce-backup`


# --------------------------------------------------------------------------------------------
# small helpers


def run_cmd(argv: list[str], timeout: float = CMD_TIMEOUT_S) -> str:
    # PYTHONPATH: the checkout's collection, not an older installed copy, runs the CLI.
    env = {**os.environ, "PYTHONPATH": str(ROOT / "collections")}
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def allocated(path: Path) -> int:
    """Bytes the file takes on disk."""
    return path.stat().st_blocks * 512


def data_bytes(path: Path, top_only: bool = False) -> int:
    """Bytes of data `qemu-img map` reports (only the file's own layer with `top_only`)."""
    extents = json.loads(run_cmd(["qemu-img", "map", "-U", "--output=json", str(path)]))
    return sum(
        e["length"] for e in extents if e.get("data") and (not top_only or e.get("depth") == 0)
    )


def wait_quiet() -> tuple[float, float]:
    """Wait (at most QUIET_WAIT_S) for a nearly idle machine: other sessions share it.
    Returns (seconds waited, last busy fraction)."""
    start = time.monotonic()
    busy = host_busy(0.5)
    while busy > QUIET_BUSY and time.monotonic() - start < QUIET_WAIT_S:
        busy = host_busy(0.5)
    return time.monotonic() - start, busy


def steal_s() -> float:
    """CPU time the hypervisor under this VM took from its vCPUs (/proc/stat `steal`)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def dirty_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Dirty:"):
            return int(line.split()[1])
    return -1


def mib_s(size: int, seconds: float | None) -> float | None:
    return size / MIB / seconds if seconds else None


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


class Caches:
    """Before each measured step: sync, then (cold mode) drop the page cache."""

    def __init__(self, cold: bool, quiet: bool = True) -> None:
        self.cold = cold
        self.quiet = quiet
        self.note = "cold: sync + drop_caches before each step" if cold else "warm: sync only"

    def quiet_wait(self) -> tuple[float, float]:
        """wait_quiet(), unless quick: a CI run would only get slower, not more exact."""
        return wait_quiet() if self.quiet else (0.0, host_busy(0.2))

    def settle(self) -> dict[str, float]:
        start = time.perf_counter()
        os.sync()
        synced = time.perf_counter()
        if self.cold:
            try:
                DROP_CACHES.write_text("3\n")
            except OSError as error:
                self.cold = False
                self.note = f"warm: could not drop the page cache ({error}); sync only"
                log(self.note)
        return {"sync_s": synced - start, "drop_s": time.perf_counter() - synced}


# --------------------------------------------------------------------------------------------
# the disk and the domain


def random_raw(path: Path, data: int, size: int) -> str:
    """`data` random bytes, extended to `size` (a hole), MBR signature cleared."""
    if shutil.which("openssl"):
        run_cmd(["openssl", "rand", "-out", str(path), str(data)])
        how = "openssl rand"
    else:
        chunk = 16 * MIB
        with path.open("wb") as handle:
            for _ in range(data // chunk):  # bounded: data / 16 MiB writes
                handle.write(os.urandom(chunk))
            handle.write(os.urandom(data % chunk))
        how = "os.urandom"
    with path.open("r+b") as handle:
        handle.seek(510)  # no 0x55AA boot signature: the firmware must not run random bytes
        handle.write(b"\0\0")
        handle.truncate(size)
    return how


def prepare_disk(base: Path, sizes: Sizes) -> tuple[Path, dict[str, Any]]:
    raw = base / "data.raw"
    disk = base / "disk.qcow2"
    t0 = time.perf_counter()
    how = random_raw(raw, sizes.data_mib * MIB, sizes.disk_mib * MIB)
    t1 = time.perf_counter()
    run_cmd(
        [
            "qemu-img",
            "convert",
            "-q",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "compat=1.1",
            str(raw),
            str(disk),
        ]
    )
    raw.unlink()
    t2 = time.perf_counter()
    info = json.loads(run_cmd(["qemu-img", "info", "--output=json", str(disk)]))
    prep = {
        "random_data": how,
        "random_s": t1 - t0,
        "convert_in_s": t2 - t1,
        "virtual_size": info["virtual-size"],
        "compat": info.get("format-specific", {}).get("data", {}).get("compat"),
        "cluster_size": info.get("cluster-size"),
        "data_bytes": data_bytes(disk),
        "file_allocated": allocated(disk),
    }
    if prep["data_bytes"] != sizes.data_mib * MIB or prep["virtual_size"] != sizes.disk_mib * MIB:
        raise RuntimeError(f"unexpected disk: {prep}")
    return disk, prep


def domain_xml(disk: Path) -> str:
    return f"""<domain type='{domain_type()}'>
  <name>{DOMAIN}</name>
  <memory unit='MiB'>{MEMORY_MIB}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{escape(str(disk))}'/>
      <target dev='vda' bus='virtio'/>
      <serial>{SERIAL}</serial>
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>"""


def hmp(domain: libvirt.virDomain, command: str) -> str:
    return libvirt_qemu.qemuMonitorCommand(domain, command, HMP)


def change_offsets(sizes: Sizes) -> list[int]:
    return [(32 + n * sizes.change_stride_mib) * MIB for n in range(sizes.change_writes)]


def write_changes(domain: libvirt.virDomain, sizes: Sizes) -> dict[str, Any]:
    """64 MiB in 16 writes of 4 MiB (full sizes) through the guest's own block backend (so
    the checkpoint's bitmap sees them, as it would a guest's writes)."""
    size = sizes.change_mib * MIB // sizes.change_writes
    start = time.perf_counter()
    replies = []
    for n, offset in enumerate(change_offsets(sizes)):
        reply = hmp(domain, f'qemu-io -d {QDEV} "write -P {0x30 + n:#x} {offset} {size}"')
        if reply.strip():  # success prints nothing on the monitor
            raise RuntimeError(f"qemu-io write at {offset}: {reply.strip()}")
        replies.append(reply)
    return {
        "writes": sizes.change_writes,
        "bytes": sizes.change_writes * size,
        "wall_s": time.perf_counter() - start,
    }


def verify_changes(disk: Path, sizes: Sizes) -> list[str]:
    """Re-read the written patterns from the (paused, flushed) image; returns mismatches."""
    size = sizes.change_mib * MIB // sizes.change_writes
    commands = []
    for n, offset in enumerate(change_offsets(sizes)):
        commands += ["-c", f"read -q -P {0x30 + n:#x} {offset} {size}"]
    proc = subprocess.run(
        ["qemu-io", "-U", "-r", "-f", "qcow2", *commands, str(disk)],
        capture_output=True,
        text=True,
        timeout=CMD_TIMEOUT_S,
        check=False,
    )
    output = (proc.stdout + proc.stderr).strip()
    return [line for line in output.splitlines() if line.strip()] or (
        [f"exit {proc.returncode}"] if proc.returncode else []
    )


# --------------------------------------------------------------------------------------------
# timing the runner's steps


class JobStatsKeeper:
    """The domain as the runner sees it, but `jobStats` keeps the completed job's figures."""

    def __init__(self, domain: Any, sink: dict[str, Any]) -> None:
        self._domain = domain
        self._sink = sink

    def __getattr__(self, name: str) -> Any:
        return getattr(self._domain, name)

    def jobStats(self, flags: int = 0) -> dict[str, Any]:
        stats = self._domain.jobStats(flags | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED)
        self._sink.update(stats)
        return stats


WAIT_LABEL = "live backup: wait for the job"


class Probe:
    """Wraps the runner's steps in this process and adds up their wall time by label."""

    METHODS = (
        ("check_storage_quota", "ledger: quota check"),
        ("abort_stale_job", "stale job check"),
        ("drop_checkpoints", "checkpoints: list + delete"),
        ("selected_disks", "read the domain XML, select disks"),
        ("begin_backup", "live backup: backupBegin"),
        ("finish", "finish: check, info, manifest, rename, fsync"),
        ("record", "ledger: record the run"),
        ("apply_retention", "retention"),
    )

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []
        self.job: dict[str, Any] = {}

    @contextlib.contextmanager
    def installed(self) -> Iterator[Probe]:
        probe = self
        saved: list[tuple[Any, str, Any]] = []

        def timed(label: str, function: Callable[..., Any]) -> Callable[..., Any]:
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    probe.calls.append((label, time.perf_counter() - start))

            return wrapper

        def patch(owner: Any, name: str, replacement: Any) -> None:
            saved.append((owner, name, owner.__dict__[name]))
            setattr(owner, name, replacement)

        qemu_img = backup_runner.qemu_img

        def timed_qemu_img(args: list[str], action: str, obj: str) -> str:
            start = time.perf_counter()
            try:
                return qemu_img(args, action, obj)
            finally:
                label = f"qemu-img {args[0]}"
                if args[0] in ("check", "info"):
                    label = f"finish > {label}"
                probe.calls.append((label, time.perf_counter() - start))

        wait_for_job = BackupRun.wait_for_job

        def timed_wait(run: BackupRun, domain: Any) -> int | None:
            start = time.perf_counter()
            try:
                return wait_for_job(run, JobStatsKeeper(domain, probe.job))
            finally:
                probe.calls.append((WAIT_LABEL, time.perf_counter() - start))

        patch(backup_runner, "qemu_img", timed_qemu_img)
        patch(backup_runner, "connect", timed("connect", backup_runner.connect))
        patch(BackupRun, "wait_for_job", timed_wait)
        for name, label in self.METHODS:
            patch(BackupRun, name, timed(label, getattr(BackupRun, name)))
        try:
            yield self
        finally:
            for owner, name, original in reversed(saved):
                setattr(owner, name, original)

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for label, seconds in self.calls:
            out[label] = out.get(label, 0.0) + seconds
        return out


def runner_config(uri: str, root: Path, url: str) -> RunnerConfig:
    return RunnerConfig(
        tenant=TENANT,
        vm=VM,
        domain=DOMAIN,
        schedule=SCHEDULE,
        uri=uri,
        root=str(root),
        disks=(SERIAL,),
        retention=Retention(keep_last=10),
        ledger_url=url,
        timeout_s=RUNNER_TIMEOUT_S,
    )


def backup_file(config: RunnerConfig, backup_id: str) -> Path:
    return Path(config.root) / TENANT / VM / SCHEDULE / backup_id / "vda.qcow2"


# --------------------------------------------------------------------------------------------
# measurements


def measure_floor(disk: Path, out: Path, caches: Caches) -> dict[str, Any]:
    settle = caches.settle()
    waited, busy = caches.quiet_wait()
    steal0 = steal_s()
    with CpuMeter() as meter:
        start = time.perf_counter()
        run_cmd(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "qcow2", str(disk), str(out)])
        wall = time.perf_counter() - start
    steal = steal_s() - steal0
    dirty = dirty_kib()
    fd = os.open(out, os.O_RDONLY)
    try:
        start = time.perf_counter()
        os.fsync(fd)
        fsync = time.perf_counter() - start
    finally:
        os.close(fd)
    result = {
        "wall_s": wall,
        "steal_cores": steal / wall,
        "fsync_s": fsync,
        "dirty_kib_after": dirty,
        "out_allocated": allocated(out),
        "out_data_bytes": data_bytes(out),
        "cpu": meter.figures,
        "quiet_wait_s": waited,
        "busy_before": busy,
        "settle": settle,
    }
    out.unlink()
    return result


def measure_backup(config: RunnerConfig, caches: Caches) -> dict[str, Any]:
    settle = caches.settle()
    waited, busy = caches.quiet_wait()
    probe = Probe()
    steal0 = steal_s()
    with probe.installed(), CpuMeter() as meter:
        start = time.perf_counter()
        result = BackupRun(config).run()
        wall = time.perf_counter() - start
    steal = steal_s() - steal0
    dirty = dirty_kib()
    parts = probe.totals()
    top = [label for _name, label in Probe.METHODS] + [WAIT_LABEL, "connect", "qemu-img rebase"]
    parts["other (lock, ids, mkdir, rest)"] = wall - sum(parts.get(label, 0.0) for label in top)
    out: dict[str, Any] = {
        **result.as_dict(),
        "wall_s": wall,
        "steal_cores": steal / wall,
        "parts_s": parts,
        "job": {k: v for k, v in probe.job.items() if isinstance(v, int | float | str)},
        "dirty_kib_after": dirty,
        "cpu": meter.figures,
        "quiet_wait_s": waited,
        "busy_before": busy,
        "settle": settle,
    }
    if result.status == "ok":
        path = backup_file(config, result.backup_id)
        out["file_allocated"] = allocated(path)
        out["file_data_bytes"] = data_bytes(path, top_only=True)
    log(
        f"backup {result.kind} {result.status}: wall {wall:.2f} s, runner {result.duration_s:.2f}"
        f" s, size {result.size_bytes / MIB:.1f} MiB"
        + (f", error {result.error}" if result.error else "")
        + (f", warnings {result.warnings}" if result.warnings else "")
    )
    return out


def forget_backups(config: RunnerConfig, domain: libvirt.virDomain) -> None:
    """Untimed, between full runs: no backup, no checkpoint, so the next run is full again."""
    shutil.rmtree(Path(config.root) / TENANT / VM / SCHEDULE, ignore_errors=True)
    for checkpoint in domain.listAllCheckpoints():
        checkpoint.delete(0)


def cli_run(config_path: Path, caches: Caches) -> dict[str, Any]:
    """One more run through the CLI, as the schedule's service makes it, with nothing changed
    since the last backup: the fixed cost of a run in a fresh process (imports, ledger)."""
    caches.settle()
    caches.quiet_wait()
    start = time.perf_counter()
    out = run_cmd([sys.executable, "-m", CLI_MODULE, "run", "--config", str(config_path)])
    wall = time.perf_counter() - start
    lines = out.strip().splitlines()
    if not lines:
        raise RuntimeError(f"python -m {CLI_MODULE} run printed nothing")
    result = json.loads(lines[-1])
    log(f"CLI run, nothing changed: {result['kind']} {result['status']}, wall {wall:.2f} s")
    return {"wall_s": wall, **result}


def cli_startup(config_path: Path) -> float:
    """The runner's CLI (`list`): interpreter start, imports, reading the config, for context."""
    start = time.perf_counter()
    run_cmd([sys.executable, "-m", CLI_MODULE, "list", "--config", str(config_path)])
    return time.perf_counter() - start


def ledger_rows(url: str) -> list[dict[str, Any]]:
    rows = Ledger.open(url).backup_records(TENANT, VM)
    return [
        {
            "kind": r.kind,
            "status": r.status,
            "size_bytes": r.size_bytes,
            "duration_ms": r.duration_ms,
            "backup_id": r.backup_id,
        }
        for r in rows
    ]


def run_bench(
    daemon: PrivateLibvirtd,
    conn: libvirt.virConnect,
    base: Path,
    runs: int,
    warmups: int,
    caches: Caches,
    results: dict[str, Any],
    sizes: Sizes,
) -> None:
    """Every step; its figures go into `results` as they come (kept when a later step fails)."""
    log(f"preparing the disk ({sizes.data_mib} MiB of random data in {sizes.disk_mib} MiB) ...")
    disk, results["prep"] = prepare_disk(base, sizes)
    p = results["prep"]
    log(f"prepared in {p['random_s'] + p['convert_in_s']:.1f} s ({p['random_data']})")
    url = f"sqlite:///{base / 'ledger.sqlite3'}"
    # No tenant is registered, so nothing else creates the ledger the runner writes into.
    Ledger.open(url, create=True)
    config = runner_config(daemon.uri, base / "backups", url)
    config_path = base / "schedule.json"
    config_path.write_text(json.dumps(config.as_dict()))

    start = time.perf_counter()
    domain = conn.createXML(domain_xml(disk), 0)
    results["domain_start_s"] = time.perf_counter() - start
    results["floor"], results["full"], results["order"] = [], [], []
    results["warmup_floor"], results["warmup_full"] = [], []
    for n in range(-warmups, runs):  # n < 0: a warm-up pair, kept apart from the medians
        if n > -warmups:
            forget_backups(config, domain)
        order = ("floor", "full") if n % 2 == 0 else ("full", "floor")  # no order bias
        name = f"warm-up {n + warmups + 1}/{warmups}" if n < 0 else f"run {n + 1}/{runs}"
        if n >= 0:
            results["order"].append(" then ".join(order))
        for step in order:
            if step == "floor":
                floor = measure_floor(disk, base / "floor.qcow2", caches)
                log(f"{name}: floor {floor['wall_s']:.2f} s (+ fsync {floor['fsync_s']:.2f})")
                results["warmup_floor" if n < 0 else "floor"].append(floor)
            else:
                full = measure_backup(config, caches)
                results["warmup_full" if n < 0 else "full"].append(full)
                if full["status"] != "ok" or full["kind"] != "full":
                    raise RuntimeError(f"{name}: {full['kind']} backup, {full['error']}")

    results["changes"] = write_changes(domain, sizes)
    written = f"{sizes.change_mib} MiB in {sizes.change_writes} writes"
    log(f"wrote {written} ({results['changes']['wall_s']:.2f} s)")
    inc = measure_backup(config, caches)
    results["incremental"] = inc
    if inc["status"] != "ok":
        raise RuntimeError(f"incremental run failed: {inc['error']}")
    results["cli_noop"] = cli_run(config_path, caches)

    domain.suspend()  # QEMU drains and flushes its block devices on a pause
    verify: dict[str, Any] = {"mismatched_patterns": verify_changes(disk, sizes)}
    inc_file = backup_file(config, inc["backup_id"])
    verify["backing"] = json.loads(
        run_cmd(["qemu-img", "info", "--output=json", str(inc_file)])
    ).get("backing-filename")
    start = time.perf_counter()
    proc = subprocess.run(
        ["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", str(disk), str(inc_file)],
        capture_output=True,
        text=True,
        timeout=CMD_TIMEOUT_S,
        check=False,
    )
    verify["compare_s"] = time.perf_counter() - start
    verify["compare_exit"] = proc.returncode
    verify["compare_output"] = (proc.stdout + proc.stderr).strip()
    verify["identical"] = proc.returncode == 0
    results["verify"] = verify
    log(f"compare live disk vs incremental: {verify['compare_output']} (exit {proc.returncode})")
    results["ledger_rows"] = ledger_rows(url)
    results["cli_list_s"] = cli_startup(config_path)


# --------------------------------------------------------------------------------------------
# summary and report


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    floors = results.get("floor", [])
    fulls = results.get("full", [])
    inc = results.get("incremental")
    sizes = Sizes(**results["sizes"])
    data = results.get("prep", {}).get("data_bytes", sizes.data_mib * MIB)
    s: dict[str, Any] = {}
    if floors and fulls:
        floor = median([f["wall_s"] for f in floors])
        floor_sync = median([f["wall_s"] + f["fsync_s"] for f in floors])
        wall = median([f["wall_s"] for f in fulls])
        runner = median([f["duration_s"] for f in fulls])
        job = median([f["job"]["time_elapsed"] / 1000 for f in fulls if "time_elapsed" in f["job"]])
        s.update(
            runs=len(fulls),
            floor_s=floor,
            floor_fsync_s=floor_sync,
            full_wall_s=wall,
            full_runner_s=runner,
            full_job_s=job,
            floor_mib_s=mib_s(data, floor),
            full_mib_s=mib_s(data, wall),
            ratio=wall / floor,
            ratio_per_run=[b["wall_s"] / f["wall_s"] for f, b in zip(floors, fulls, strict=False)],
            ratio_vs_floor_fsync=wall / floor_sync,
            full_size_bytes=fulls[-1]["size_bytes"],
            full_data_bytes=fulls[-1].get("file_data_bytes"),
        )
        s["full_target_met"] = s["ratio"] <= TARGET_RATIO
        s["full_outside_job_s"] = median(
            [
                f["wall_s"] - f["job"]["time_elapsed"] / 1000
                for f in fulls
                if "time_elapsed" in f["job"]
            ]
        )
        s["full_bytes_processed"] = fulls[-1].get("bytes_processed")
        s["background_cores_floor"] = median([f["cpu"]["background_cores"] for f in floors])
        s["background_cores_full"] = median([f["cpu"]["background_cores"] for f in fulls])
        s["steal_cores_floor"] = median([f["steal_cores"] for f in floors])
        s["steal_cores_full"] = median([f["steal_cores"] for f in fulls])
    if inc:
        s.update(
            incremental_kind=inc["kind"],
            incremental_wall_s=inc["wall_s"],
            incremental_runner_s=inc["duration_s"],
            incremental_job_s=inc["job"].get("time_elapsed", 0) / 1000 or None,
            incremental_file_allocated=inc.get("file_allocated"),
            incremental_data_bytes=inc.get("file_data_bytes"),
            incremental_bytes_processed=inc.get("bytes_processed"),
            written_bytes=sizes.change_mib * MIB,
        )
        s["incremental_target_met"] = (
            inc["kind"] == "incremental"
            and inc.get("file_allocated", 0) <= INCREMENTAL_SLACK * sizes.change_mib * MIB
            and (inc.get("file_data_bytes") or 0) >= sizes.change_mib * MIB
        )
    cli = results.get("cli_noop")
    if cli:
        s.update(
            cli_noop_kind=cli.get("kind"),
            cli_noop_status=cli.get("status"),
            cli_noop_wall_s=cli["wall_s"],
            cli_noop_runner_s=cli.get("duration_s"),
        )
    verify = results.get("verify")
    if verify:
        s["compare_identical"] = verify["identical"]
        s["patterns_ok"] = not verify["mismatched_patterns"]
    return s


def fmt(value: float | None, spec: str = ".2f", unit: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{unit}"


def report_lines(results: dict[str, Any], s: dict[str, Any]) -> list[str]:
    lines = [
        "| | " + " | ".join(f"run {n + 1}" for n in range(len(results["floor"]))) + " | median |",
        "| --- |" + " ---: |" * (len(results["floor"]) + 1),
    ]

    def row(label: str, values: list[float | None], spec: str = ".2f") -> None:
        numbers = [v for v in values if v is not None]
        cells = [fmt(v, spec) for v in values] + [fmt(median(numbers), spec)]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    floors, fulls = results["floor"], results["full"]
    data = results["prep"]["data_bytes"]
    row("floor: `qemu-img convert`, s", [f["wall_s"] for f in floors])
    row("floor: then fsync of its output, s", [f["fsync_s"] for f in floors])
    row("full backup: runner wall, s", [f["wall_s"] for f in fulls])
    row("full backup: runner duration_s, s", [f["duration_s"] for f in fulls])
    row(
        "of which the libvirt job (time_elapsed), s",
        [f["job"].get("time_elapsed", 0) / 1000 or None for f in fulls],
    )
    row(
        "runner wall outside the libvirt job, s",
        [f["wall_s"] - f["job"].get("time_elapsed", 0) / 1000 for f in fulls],
        ".3f",
    )
    for label in fulls[0]["parts_s"]:
        row(f"of which {label}, s", [f["parts_s"].get(label) for f in fulls], ".3f")
    row("floor MiB/s (1536 MiB allocated)", [mib_s(data, f["wall_s"]) for f in floors], ".0f")
    row("full backup MiB/s", [mib_s(data, f["wall_s"]) for f in fulls], ".0f")
    row("ratio backup / floor", s["ratio_per_run"])
    row("dirty page cache after floor, MiB", [f["dirty_kib_after"] / 1024 for f in floors], ".0f")
    row("dirty page cache after backup, MiB", [f["dirty_kib_after"] / 1024 for f in fulls], ".0f")
    row("background cores, floor", [f["cpu"]["background_cores"] for f in floors])
    row("background cores, backup", [f["cpu"]["background_cores"] for f in fulls])
    row("of which steal (hypervisor), floor", [f["steal_cores"] for f in floors])
    row("of which steal (hypervisor), backup", [f["steal_cores"] for f in fulls])
    row("QEMU + libvirtd CPU during backup, s", [f["cpu"]["libvirt_side_cpu_s"] for f in fulls])
    row("qemu-img CPU during floor, s", [f["cpu"]["client_cpu_s"] for f in floors])
    inc = results.get("incremental")
    if inc:
        lines += ["", "| incremental after 64 MiB of changes | value |", "| --- | ---: |"]
        lines.append(f"| kind | {inc['kind']} |")
        lines.append(
            f"| runner wall / duration_s | {inc['wall_s']:.2f} s / {inc['duration_s']:.2f} s |"
        )
        lines.append(f"| libvirt job time_elapsed | {fmt(s['incremental_job_s'])} s |")
        lines.append(
            f"| file allocated (st_blocks*512) | "
            f"{fmt(inc.get('file_allocated', 0) / MIB, '.1f')} MiB |"
        )
        lines.append(
            f"| data in its own qcow2 layer (qemu-img map) | "
            f"{fmt((inc.get('file_data_bytes') or 0) / MIB, '.1f')} MiB |"
        )
        processed = inc.get("bytes_processed")
        lines.append(
            f"| runner bytes_processed | "
            f"{'-' if processed is None else f'{processed / MIB:.1f} MiB'} |"
        )
        lines.append(f"| manifest size_bytes | {inc['size_bytes'] / MIB:.1f} MiB |")
        changes = results["changes"]
        lines.append(
            f"| written | {changes['bytes'] / MIB:.0f} MiB in {changes['writes']} writes |"
        )
        for label, seconds in inc["parts_s"].items():
            lines.append(f"| of which {label} | {seconds:.3f} s |")
    cli = results.get("cli_noop")
    if cli:
        lines.append(
            f"| CLI `python -m {CLI_MODULE} run`, nothing changed: wall / duration_s "
            f"| {cli['wall_s']:.2f} s / {cli.get('duration_s', 0):.2f} s ({cli.get('kind')}, "
            f"{cli.get('size_bytes', 0) / MIB:.1f} MiB) |"
        )
    if "cli_list_s" in results:
        lines.append(
            f"| CLI `list` (interpreter + imports), context | {results['cli_list_s']:.2f} s |"
        )
    return lines


def stop_on_sigterm() -> None:
    def handler(signum: int, _frame: Any) -> None:
        raise SystemExit(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="floor + full backup pairs (1-9)")
    parser.add_argument(
        "--warmups", type=int, default=1, help="untimed floor + full pairs first (0-3)"
    )
    parser.add_argument(
        "--warm", action="store_true", help="only sync before each step, keep the page cache"
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke run: small disk, 1 run, nothing written"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.warmups, args.warm = 1, 0, True
    if not 1 <= args.runs <= 9 or not 0 <= args.warmups <= 3:
        parser.error("--runs 1-9, --warmups 0-3")
    sizes = QUICK if args.quick else FULL
    stop_on_sigterm()

    started = dt.datetime.now(dt.UTC)
    begin = time.perf_counter()
    caches = Caches(cold=not args.warm, quiet=not args.quick)
    results: dict[str, Any] = {
        "benchmark": "backup",
        "started_utc": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "runs": args.runs,
        "warmups": args.warmups,
        "sizes": asdict(sizes),
    }
    errors: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="vce-backup-", dir="/tmp"))
    daemon = PrivateLibvirtd(base / "d")
    conn = None
    try:
        results["tmp_fs"] = run_cmd(["df", "-T", str(base)]).splitlines()[-1].split()[1]
        daemon.start()
        CpuMeter.namespace = (daemon.base_dir / MNTNS_FILE).read_text().strip()
        conn = daemon.connect()
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        results["machine"] = machine_facts(conn)
        log(f"private libvirtd at {daemon.uri}; {machine_line(results['machine'])}")
        run_bench(daemon, conn, base, args.runs, args.warmups, caches, results, sizes)
    except (Exception, SystemExit) as error:
        errors.append(f"{type(error).__name__}: {error}")
        log(f"FAILED: {error}\n{traceback.format_exc()}")
    finally:
        cleanup_start = time.perf_counter()
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                for dom in conn.listAllDomains(0):
                    if dom.name() == DOMAIN and dom.isActive():
                        dom.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
        forget_stores()
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)
        results["cleanup_s"] = time.perf_counter() - cleanup_start
    results["caches"] = caches.note
    results["host_busy_after"] = host_busy(0.5)
    results["total_s"] = time.perf_counter() - begin
    results["errors"] = errors
    summary = summarise(results) if results.get("full") and results.get("floor") else {}
    results["summary"] = summary
    if not args.quick:  # a smoke run's figures are no results
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")

    if "machine" in results:
        print(f"Machine: {machine_line(results['machine'])}; /tmp on {results['tmp_fs']}")
    if "prep" in results:
        p = results["prep"]
        print(
            f"Disk: {p['virtual_size'] / MIB:.0f} MiB qcow2 (compat {p['compat']}, clusters "
            f"{p['cluster_size'] // 1024} KiB), {p['data_bytes'] / MIB:.0f} MiB of random data; "
            f"prepared in {p['random_s']:.1f} s + {p['convert_in_s']:.1f} s (not timed)"
        )
    print(f"Page cache: {caches.note}")
    if results.get("floor") and results.get("full") and summary:
        print("\n".join(report_lines(results, summary)))
    for floor, full in zip(
        results.get("warmup_floor", []), results.get("warmup_full", []), strict=False
    ):
        job = full["job"].get("time_elapsed", 0) / 1000
        ledger = full["parts_s"].get("ledger: quota check", 0)
        print(
            f"warm-up pair, not in the medians: floor {floor['wall_s']:.2f} s, full backup "
            f"{full['wall_s']:.2f} s (libvirt job {job:.2f} s, ledger first opened {ledger:.2f} s)"
        )
    if summary:
        print(
            json.dumps(
                {k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()},
                indent=1,
            )
        )
        if "ratio" in summary:
            verdict = "PASS" if summary["full_target_met"] else "MISS"
            print(
                f"full backup / floor {summary['ratio']:.2f}x, target <= {TARGET_RATIO}: {verdict}"
            )
        if "incremental_target_met" in summary:
            verdict = "PASS" if summary["incremental_target_met"] else "MISS"
            print(
                f"incremental {summary['incremental_kind']}, "
                f"{(summary['incremental_file_allocated'] or 0) / MIB:.1f} MiB on disk for "
                f"{sizes.change_mib} MiB written: {verdict}; compare identical: "
                f"{summary.get('compare_identical')}"
            )
    print(f"total {results['total_s']:.1f} s (clean-up {results['cleanup_s']:.1f} s)")
    if not args.quick:
        print(f"results: {RESULTS}")
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    if errors or not summary.get("compare_identical", False) or not summary.get("patterns_ok"):
        return 2
    met = summary.get("full_target_met") or args.quick  # a quick run's speed is no verdict
    return 0 if met and summary.get("incremental_target_met") else 1


if __name__ == "__main__":
    sys.exit(main())
