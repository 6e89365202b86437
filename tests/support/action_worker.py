# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A second process for the action queue's tests: another server instance on the same ledger.

    action_worker.py run URL OUTDIR INSTANCE [--workers N] [--stale-after S]
        runs an ActionQueue until its stdin closes (or it is killed); prints "ready" once
        started. Kinds: "append" writes "<n> <instance>" to OUTDIR/runs; "sleep" writes
        OUTDIR/started-<n> and sleeps payload["seconds"].
    action_worker.py submit URL TENANT KEY THREADS AT
        submits one request with Idempotency-Key KEY from THREADS threads at once, at the
        moment AT (seconds since the epoch: processes started one after the other submit
        together), and prints each answer as "<id> <created>".

Started by `start()` below with the checkout on PYTHONPATH, as `vce serve` would run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
# A sleeping handler never outlives a test by much.
MAX_SLEEP_SECONDS = 60.0


def start(*args: str, stdin: int | None = subprocess.PIPE) -> subprocess.Popen:
    """This script in a new process, importing vce_server and the engine from the checkout."""
    path = os.pathsep.join(str(ROOT / part) for part in ("server", "collections", ""))
    return subprocess.Popen(
        [sys.executable, "-u", str(Path(__file__)), *args],
        stdin=stdin,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )


def principal(tenant: str) -> Any:
    from vce_server.principal import Principal

    return Principal("vce_0000test", "test", "customer", tenant, frozenset({"read", "write"}))


def append_handler(outdir: Path, instance: str) -> Any:
    def handler(payload: dict, report: Any) -> dict:
        with open(outdir / "runs", "a", encoding="utf-8") as runs:
            runs.write(f"{payload['n']} {instance}\n")
        time.sleep(min(float(payload.get("seconds", 0)), MAX_SLEEP_SECONDS))
        return {"n": payload["n"], "instance": instance}

    return handler


def sleep_handler(outdir: Path) -> Any:
    def handler(payload: dict, report: Any) -> dict:
        (outdir / f"started-{payload['n']}").touch()
        time.sleep(min(float(payload["seconds"]), MAX_SLEEP_SECONDS))
        return {}

    return handler


def run(args: argparse.Namespace) -> None:
    from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
    from vce_server.actions import ActionQueue
    from vce_server.settings import Settings

    outdir = Path(args.outdir)
    settings = Settings(
        ledger_url=args.url,
        workers=args.workers,
        instance=args.instance,
        stale_after=args.stale_after,
    )
    queue = ActionQueue(Ledger.open(args.url), settings)
    queue.register("append", append_handler(outdir, args.instance))
    queue.register("sleep", sleep_handler(outdir))
    queue.start()
    print("ready", flush=True)
    sys.stdin.read()
    queue.stop(10.0)


def submit(args: argparse.Namespace) -> None:
    from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
    from vce_server.actions import ActionQueue
    from vce_server.settings import Settings

    queue = ActionQueue(Ledger.open(args.url), Settings(ledger_url=args.url))
    queue.register("append", append_handler(Path(os.devnull), "none"))
    barrier = threading.Barrier(args.threads)
    answers: list[str] = []

    def one() -> None:
        barrier.wait(timeout=30)
        time.sleep(max(0.0, min(args.at - time.time(), MAX_SLEEP_SECONDS)))
        action, created = queue.submit(
            principal(args.tenant), "append", "things/one", {"n": 1}, idempotency_key=args.key
        )
        answers.append(f"{action['id']} {created}")

    threads = [threading.Thread(target=one) for _thread in range(args.threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    print("\n".join(answers), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run")
    runner.add_argument("url")
    runner.add_argument("outdir")
    runner.add_argument("instance")
    runner.add_argument("--workers", type=int, default=2)
    runner.add_argument("--stale-after", type=float, default=30.0)
    submitter = commands.add_parser("submit")
    submitter.add_argument("url")
    submitter.add_argument("tenant")
    submitter.add_argument("key")
    submitter.add_argument("threads", type=int)
    submitter.add_argument("at", type=float)
    args = parser.parse_args()
    if args.command == "run":
        run(args)
    else:
        submit(args)


if __name__ == "__main__":
    main()
