"""Drift check over 200 declared resources on one host with nothing drifted, against its floor.

Issue 8: "`vce drift` over 200 declared resources on one host with nothing drifted: under 2 s
wall, measured against the bare libvirt listing it needs (the floor) in the same run; the drift
playbook over the same: under 6 s."

One invocation, one private libvirtd (tools.libvirtd) in a temp dir under /tmp, a dir pool
``default`` and a 64 MiB empty qcow2 base image. Ten tenants (``drift00`` .. ``drift09``),
registered in a SQLite ledger in the same temp dir, each declared in an inventory written to
the temp dir (``kvm_hosts`` -> ``bench-kvm`` with ``vce_tenants``) and applied by one
``engine.run_environment`` each: 1 isolated network, 9 standalone 1 GiB disks, 9 stopped VMs
(1 vCPU, 128 MiB, overlay boot disk, one NIC with a fixed MAC and IP on the network, one of
the disks attached) and 1 backup schedule (a runner script in the temp dir, unit and config
directories in the temp dir): 20 declared resources per tenant, 200 in all, 280 libvirt
objects (VMs, networks, standalone disks and boot disks).

Measured, N times each (default 7) after one warm-up, alternating, median and min wall:

1. FLOOR, as a process: ``python -c`` that imports libvirt, connects and lists + reads the XML
   of every domain (inactive and, for running ones, live), network and volume of the host:
   what ``Host.inventories()`` reads, with nothing else.
2. FLOOR, in process: the same listing timed inside one Python process (no start-up).
3. ``vce drift -i <inventory> --json F --junit F --quiet``, as a process (the console script's
   code: ``python -m ansible_collections.vce.kvm.cli.vce`` with the checkout on PYTHONPATH).
4. ``ansible-playbook -i <inventory> playbooks/drift.yml`` (check mode, reports written).

Every run must report 200 cases, all in sync, exit 0, or the bench stops. Every object, the
pool, the daemon and the temp dir are removed in finally blocks. Prints a table; writes
bench/results/drift.json. Exit 0 when both targets are met, 1 when one is not, 2 when the
set-up or a run failed.

``--quick`` (for CI): 2 tenants (40 declared resources), 1 measured round after the warm-up,
nothing written; exit 2 on a failure, else 0 (the targets are for 200 resources).

    .venv/bin/python bench/drift.py [--repeats 7] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import libvirt
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The checkout's engine, not the copy installed in the venv (it may be an older layout).
sys.path.insert(0, str(ROOT / "collections"))
sys.path.insert(0, str(ROOT / "bench"))

from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine  # noqa: E402
from env10 import code_version, host_busy, log, machine_facts, machine_line, remove_pool  # noqa: E402
from quota_check import make_image  # noqa: E402

from tests.support.backups import runner_script  # noqa: E402
from tests.support.images import register_image  # noqa: E402
from tests.support.ledger import forget_stores, register  # noqa: E402
from tools.cleanup import remove_guard, remove_prefixed  # noqa: E402
from tools.labhost import ensure_pool  # noqa: E402
from tools.libvirtd import PrivateLibvirtd, domain_type  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "drift.json"
TENANTS = 10
QUICK_TENANTS = 2
DISKS = 9
VMS = 9
PER_TENANT = 1 + DISKS + VMS + 1
POOL = "default"
IMAGE_NAME = "base"  # the empty base image, in the catalogue of zone "bench"
CLI_TARGET_S = 2.0
PLAYBOOK_TARGET_S = 6.0
PYTHON = sys.executable
ANSIBLE_PLAYBOOK = str(Path(sys.executable).with_name("ansible-playbook"))

FLOOR_SCRIPT = """
import sys, libvirt
libvirt.registerErrorHandler(lambda _c, _e: None, None)
conn = libvirt.open(sys.argv[1])
n = 0
for dom in conn.listAllDomains(0):
    dom.state(); dom.autostart(); dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE); n += 1
    if dom.isActive():
        dom.XMLDesc(0)
for net in conn.listAllNetworks(0):
    net.isActive(); net.autostart(); net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE); n += 1
    if net.isActive():
        net.XMLDesc(0)
for pool in conn.listAllStoragePools(0):
    pool.XMLDesc(0)
    if pool.isActive():
        for vol in pool.listAllVolumes(0):
            vol.XMLDesc(0); n += 1
print(n)
"""


def tenant_declaration(index: int, image: str) -> dict[str, Any]:
    net = f"10.234.{index}"
    return {
        "customer": f"bench-customer-{index}",
        "plan": "lab",
        "networks": [{"name": "lan", "cidr": f"{net}.0/24", "mode": "isolated"}],
        "disks": [{"name": f"data{d}", "size_gib": 1} for d in range(DISKS)],
        "vms": [
            {
                "name": f"vm{v}",
                "vcpus": 1,
                "memory_mib": 128,
                "state": "stopped",
                "boot_disk": {"image": image, "size_gib": 1},
                "disks": [f"data{v}"],
                "nics": [
                    {
                        "network": "lan",
                        "ip": f"{net}.{10 + v}",
                        "mac": f"52:54:00:ea:{index:02x}:{v:02x}",
                    }
                ],
            }
            for v in range(VMS)
        ],
        "backup_schedules": [
            {
                "vm": "vm0",
                "name": "nightly",
                "calendar": "*-*-* 02:30",
                "retention": {"keep_daily": 7},
            }
        ],
    }


def host_variables(uri: str, url: str, base: Path, tenants: int) -> dict[str, Any]:
    runner = base / "bin" / "vce-backup"
    runner.parent.mkdir(exist_ok=True)
    runner.write_text(runner_script(ROOT))
    runner.chmod(0o755)
    return {
        "ansible_connection": "local",
        "ansible_python_interpreter": PYTHON,
        "vce_uri": uri,
        "vce_ledger_url": url,
        "vce_pool": POOL,
        "vce_backup_root": str(base / "backups"),
        "vce_backup_runner": str(runner),
        "vce_backup_unit_dir": str(base / "units"),
        "vce_backup_config_dir": str(base / "config"),
        "vce_tenants": {f"drift{i:02d}": tenant_declaration(i, IMAGE_NAME) for i in range(tenants)},
    }


def apply(hostvars: dict[str, Any]) -> float:
    start = time.perf_counter()
    shared = {
        "uri": hostvars["vce_uri"],
        "ledger_url": hostvars["vce_ledger_url"],
        "default_pool": POOL,
        "backup_root": hostvars["vce_backup_root"],
        "runner": hostvars["vce_backup_runner"],
        "unit_dir": hostvars["vce_backup_unit_dir"],
        "config_dir": hostvars["vce_backup_config_dir"],
    }
    for tenant, declared in hostvars["vce_tenants"].items():
        register(hostvars["vce_ledger_url"], tenant, backup_frequencies=["daily"])
        environment = {k: v for k, v in declared.items() if k not in ("customer", "plan")}
        engine.run_environment({**shared, **environment, "tenant": tenant})
    return time.perf_counter() - start


def timed(argv: list[str], env: dict[str, str], cwd: Path = ROOT) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=120, check=False
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(
            f"{argv[:4]} exited {proc.returncode}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    return wall, proc.stdout


def floor_in_process(uri: str) -> float:
    scope: dict[str, Any] = {}
    code = compile(
        FLOOR_SCRIPT.replace("sys.argv[1]", repr(uri)).replace("print(n)", ""), "floor", "exec"
    )
    start = time.perf_counter()
    exec(code, scope)
    return time.perf_counter() - start


# The host's own case beside the tenants': its guard table (kind firewall, name vce_guard).
HOST_CASES = 1


def check_report(path: Path, tenants: int) -> None:
    report = json.loads(path.read_text())
    expected = tenants * PER_TENANT + HOST_CASES
    if report["summary"]["resources"] != expected or report["summary"]["in_sync"] != expected:
        raise RuntimeError(f"expected {expected} cases in sync, got {report['summary']}")


def measure(
    uri: str, inventory: Path, out: Path, repeats: int, tenants: int
) -> dict[str, list[float]]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "collections"),
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
    }
    runs = {
        "floor_process": [PYTHON, "-c", FLOOR_SCRIPT, uri],
        "vce_drift": [PYTHON, "-m", "ansible_collections.vce.kvm.cli.command", "drift",
                      "-i", str(inventory), "--json", str(out / "cli.json"),
                      "--junit", str(out / "cli.xml"), "--quiet"],
        "drift_playbook": [ANSIBLE_PLAYBOOK, "-i", str(inventory), "playbooks/drift.yml",
                           "-e", f"drift_report_dir={out}"],
    }  # fmt: skip
    samples: dict[str, list[float]] = {name: [] for name in (*runs, "floor_in_process")}
    for round_ in range(repeats + 1):
        for name, argv in runs.items():
            wall, _stdout = timed(argv, env)
            if round_:
                samples[name].append(wall)
        wall = floor_in_process(uri)
        if round_:
            samples["floor_in_process"].append(wall)
        check_report(out / "cli.json", tenants)
        check_report(out / "drift-report.json", tenants)
        log(f"round {round_}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in samples.items() if v))
    return samples


def summarize(samples: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    return {
        name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "n": len(v)}
        for name, v in samples.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke run: 2 tenants, 1 round, nothing written"
    )
    args = parser.parse_args(argv)
    tenants = QUICK_TENANTS if args.quick else TENANTS
    if args.quick:
        args.repeats = 1
    started = dt.datetime.now(dt.UTC)
    results: dict[str, Any] = {
        "benchmark": "drift",
        "started_utc": started.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "repeats": args.repeats,
        "declared": {
            "tenants": tenants,
            "per_tenant": PER_TENANT,
            "resources": tenants * PER_TENANT,
        },
        "code": code_version(),
    }
    errors: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="vce-drift-", dir="/tmp"))
    daemon = PrivateLibvirtd(base / "d")
    conn = None
    url = f"sqlite:///{base / 'ledger.sqlite3'}"
    try:
        daemon.start()
        conn = daemon.connect()
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        ensure_pool(conn, POOL, daemon.base_dir / "pool")
        image = make_image(base / "base.qcow2")
        register_image(url, image, name=IMAGE_NAME, zone="bench")  # the zone's catalogue
        os.environ["VCE_DOMAIN_TYPE"] = domain_type()
        os.environ["VCE_CONSOLE_LOG_DIR"] = str(daemon.log_dir / "qemu")
        results["machine"] = machine_facts(conn)
        log(f"private libvirtd at {daemon.uri}; {machine_line(results['machine'])}")
        hostvars = host_variables(daemon.uri, url, base, tenants)
        inventory = base / "hosts.yml"
        hosts = {"all": {"children": {"kvm_hosts": {"hosts": {"bench-kvm": hostvars}}}}}
        inventory.write_text(yaml.safe_dump(hosts))
        log(f"applying {tenants} tenants x {PER_TENANT} declared resources ...")
        results["apply_s"] = apply(hostvars)
        objects = len(conn.listAllDomains(0)) + len(conn.listAllNetworks(0))
        objects += len(conn.storagePoolLookupByName(POOL).listAllVolumes(0))
        results["libvirt_objects"] = objects
        log(f"applied in {results['apply_s']:.1f} s; {objects} libvirt objects on the host")
        out = base / "reports"
        out.mkdir()
        results["samples"] = measure(daemon.uri, inventory, out, args.repeats, tenants)
        results["summary"] = summarize(results["samples"])
    except Exception as error:
        errors.append(f"{type(error).__name__}: {error}")
        log(f"FAILED: {error}\n{traceback.format_exc()}")
    finally:
        if conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                for i in range(tenants):
                    remove_prefixed(conn, f"drift{i:02d}_")
            remove_pool(conn)
            with contextlib.suppress(libvirt.libvirtError):
                conn.close()
        forget_stores()
        daemon.stop()
        remove_guard()
        shutil.rmtree(base, ignore_errors=True)
    results["host_busy_after"] = host_busy(0.5)
    results["errors"] = errors
    if not args.quick:  # a smoke run's figures are no results
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    if errors:
        return 2
    s = results["summary"]
    cli, playbook = s["vce_drift"]["median_s"], s["drift_playbook"]["median_s"]
    print(f"\n{'measure':<18}{'median s':>10}{'min s':>10}{'max s':>10}")
    for name, row in s.items():
        print(f"{name:<18}{row['median_s']:>10.3f}{row['min_s']:>10.3f}{row['max_s']:>10.3f}")
    floor, in_process = s["floor_process"]["median_s"], s["floor_in_process"]["median_s"]
    print(
        f"\nvce drift {cli:.3f} s (target < {CLI_TARGET_S} s, floor process {floor:.3f} s, "
        f"in process {in_process:.3f} s); playbook {playbook:.3f} s "
        f"(target < {PLAYBOOK_TARGET_S} s)"
    )
    passed = cli < CLI_TARGET_S and playbook < PLAYBOOK_TARGET_S
    print(
        "PASS" if passed else "FAIL (a quick run's targets are no error)" if args.quick else "FAIL"
    )
    return 0 if passed or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
