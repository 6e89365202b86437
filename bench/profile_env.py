"""Where a fresh 10-VM ``vce.kvm.environment`` run spends its time, without Ansible around it.

Runs the engine in-process against a private libvirtd (the steps of
``engine.run_environment``, each timed: parse, connect, observe, plan, every change of the
apply, facts), waits for the guests to idle, runs the same declaration again (the no-op path),
and prints the timings as JSON, with the libvirt calls inside them. Also reports what a fresh
interpreter pays to import the engine.

``--quick`` (for CI): 2 VMs, one import sample, no waiting for the guests; exit 1 when the
no-op path plans any change.

    .venv/bin/python bench/profile_env.py [--count 10] [--cprofile] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# The checkout's engine, not the copy installed in the venv (it may be an older layout).
sys.path.insert(0, str(ROOT / "collections"))
sys.path.insert(0, str(ROOT / "bench"))

import env10  # noqa: E402
from ansible_collections.vce.kvm.plugins.module_utils.core.spec import parse_environment  # noqa: E402
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine  # noqa: E402
from ansible_collections.vce.kvm.plugins.module_utils.engine.environment import EnvironmentPlanner  # noqa: E402
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.image import image_sources  # noqa: E402
from ansible_collections.vce.kvm.plugins.module_utils.host import connection as host  # noqa: E402
from ansible_collections.vce.kvm.plugins.module_utils.host import facts  # noqa: E402
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger  # noqa: E402

from tests.support.images import register_image  # noqa: E402


@contextlib.contextmanager
def timed(into: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        into[key] = into.get(key, 0.0) + time.perf_counter() - start


def ledger_url(ctx: env10.Context) -> str:
    """A private ledger (never the user's) with the base image in the zone's catalogue."""
    url = f"sqlite:///{ctx.work / 'profile-ledger.sqlite3'}"
    if not (ctx.work / "profile-ledger.sqlite3").exists():
        Ledger.open(url, create=True)
        register_image(url, ctx.image, name=env10.IMAGE_NAME, zone=env10.IMAGE_ZONE)
    return url


def params(ctx: env10.Context) -> dict[str, Any]:
    vms = [
        {
            "name": vm["name"],
            "memory_mib": env10.MEMORY_MIB,
            "boot_disk": {"image": env10.IMAGE_NAME, "size_gib": env10.SIZE_GIB},
            "nics": [{"network": "lan", "ip": vm["ip"]}],
        }
        for vm in env10.vm_table("", ctx.count, 0)
    ]
    return {
        "uri": ctx.daemon.uri,
        "ledger_url": ledger_url(ctx),
        "zone": env10.IMAGE_ZONE,
        "tenant": env10.TENANT,
        "state": "present",
        "default_pool": env10.POOL,
        "networks": [{"name": "lan", "cidr": str(env10.CIDR), "mode": "isolated"}],
        "vms": vms,
        "disks": [],
    }


def run_steps(p: dict[str, Any]) -> dict[str, Any]:
    """engine.run_environment's steps, each timed; every change of the apply timed too."""
    t: dict[str, float] = {}
    total = time.perf_counter()
    with timed(t, "parse"):
        spec = parse_environment(p, p["default_pool"])
    with timed(t, "connect"):
        h = host.Host(p["uri"])
    images = image_sources(p, Ledger.open(p["ledger_url"]), h.is_local)
    env = EnvironmentPlanner(h, spec.tenant, engine.options_from(p), images=images)
    with timed(t, "observe"):
        inventory = env.observe()
    with timed(t, "plan"):
        plan = env.plan_present(spec, inventory)
    per_change: dict[str, float] = {}
    with timed(t, "apply"):
        for change in plan.changes:
            if change.run is not None:
                with timed(per_change, f"{change.kind}:{change.action}"):
                    change.run()
    with timed(t, "facts"):
        facts.tenant_facts(h, spec.tenant)
    t["total"] = time.perf_counter() - total
    return {"steps_s": t, "apply_by_kind_s": per_change, "changes": len(plan.changes)}


def instrument_vm_create(calls: dict[str, float]) -> Callable[[], None]:
    """Time the libvirt calls inside a VM create (createXML, defineXML, create)."""
    import libvirt

    originals: list[tuple[type, str, Any]] = []

    def wrap(cls: type, name: str, label: str) -> None:
        original = getattr(cls, name)

        def timed_call(self: Any, *args: Any, **kwargs: Any) -> Any:
            with timed(calls, label):
                return original(self, *args, **kwargs)

        originals.append((cls, name, original))
        setattr(cls, name, timed_call)

    wrap(libvirt.virStoragePool, "createXML", "volume createXML")
    wrap(libvirt.virConnect, "defineXML", "domain defineXML")
    wrap(libvirt.virDomain, "setAutostart", "domain setAutostart")
    wrap(libvirt.virDomain, "create", "domain create (start)")
    wrap(libvirt.virConnect, "listAllDomains", "listAllDomains")
    wrap(libvirt.virDomain, "XMLDesc", "domain XMLDesc")
    wrap(libvirt.virNetwork, "create", "network create (start)")

    def restore() -> None:
        for cls, name, original in originals:
            setattr(cls, name, original)

    return restore


def import_time(samples: int = 5) -> dict[str, float]:
    """Wall time of a fresh interpreter importing the engine (what each module run pays):
    the median of `samples`."""
    python = env10.MAIN_VENV / "bin" / "python"
    code = "import ansible_collections.vce.kvm.plugins.module_utils.engine.facade"
    # The checkout's engine, not the copy installed in the venv.
    env = {**os.environ, "PYTHONPATH": str(ROOT / "collections")}
    out: dict[str, float] = {}
    for label, snippet in (("python -c pass", "pass"), ("import engine", code)):
        runs = []
        for _ in range(samples):
            start = time.perf_counter()
            subprocess.run([str(python), "-c", snippet], cwd=ROOT, env=env, check=True, timeout=60)
            runs.append(time.perf_counter() - start)
        out[label] = statistics.median(runs)
    proc = subprocess.run(
        [str(python), "-X", "importtime", "-c", code],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    rows = []
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            rows.append((int(parts[1].strip()), parts[2].rstrip()))
    for cumulative, name in sorted(rows, reverse=True)[:8]:
        out[f"importtime cumulative {name.strip()}"] = cumulative / 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--cprofile", action="store_true", help="cProfile the fresh run")
    parser.add_argument("--quick", action="store_true", help="CI smoke run: 2 VMs, no waiting")
    args = parser.parse_args(argv)
    if args.quick:
        args.count = env10.QUICK_COUNT
    out: dict[str, Any] = {"imports": import_time(1 if args.quick else 5)}
    with env10.private_host(args.count, args.quick) as ctx:
        os.environ["VCE_CONSOLE_LOG_DIR"] = str(ctx.console_dir)
        p = params(ctx)
        calls: dict[str, float] = {}
        restore = instrument_vm_create(calls)
        profiler = cProfile.Profile() if args.cprofile else None
        try:
            if profiler:
                profiler.enable()
            out["fresh"] = run_steps(p)
            if profiler:
                profiler.disable()
            out["fresh"]["libvirt_calls_s"] = dict(calls)
            if not args.quick:  # the no-op's figures only count with the guests idle
                out["fresh_settle"] = env10.wait_settled(ctx.conn, env10.TENANT)
            calls.clear()
            out["noop"] = run_steps(p)
            out["noop"]["libvirt_calls_s"] = dict(calls)
        finally:
            restore()
            env10.remove_prefixed(ctx.conn, env10.TENANT)
        if profiler:
            stream = io.StringIO()
            pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(25)
            out["cprofile_top"] = stream.getvalue().splitlines()[:60]
    print(json.dumps(out, indent=2))
    if args.quick and out["noop"]["changes"]:
        print(f"ERROR the no-op planned {out['noop']['changes']} changes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
