"""An action's submission: from the request leaving the client to a worker starting it, over
200 actions, p50 and p99.

Issue 18: "An action's submission (request to worker start): p50 under 50 ms."

Set-up (bench/api_common.py): a SQLite ledger in a temp dir under /tmp with the tenant
``bench``, a host record of zone ``bench`` on ``test:///default`` (the action's own work is
not what is measured; only the server touches libvirt), 8 write tokens taken in turn (so
that none meets the per-token rate limit); ``vce serve`` on a free loopback port as an
operator starts it (one process, its default 4 workers). One ``PUT /v1/networks/lan``
creates an isolated network first.

Measured, N times (default 200) one after another: the same ``PUT /v1/networks/lan``, a
declaration that changes nothing (the cheapest action there is: the engine reads, plans
nothing, ends), then ``GET /v1/actions/{id}?wait=30`` until it has ended (succeeded, or the
benchmark stops). Per action, on the one clock of this machine:

- SUBMISSION: the action's ``started_at`` minus the moment the client began sending the
  request (the figure of the target: the HTTP round, authentication, the queue's write in the
  ledger, the worker's wake-up and claim);
- of which ``created_at`` minus the send (request to the queue's row) and ``started_at`` minus
  ``created_at`` (row to worker);
- the 202 reply's round trip, and the whole action (send to ``finished_at``), for context.

One action runs at a time (the tenant's actions run one by one anyway), so no sample waits
behind another's work. The floor is the server's own 202 round trip in the same run.

Prints a table; writes bench/results/api_submit.json and a section of docs/benchmarks.md
(between markers; not with --no-doc). Exit 0 when the submission's p50 is under 50 ms, 1 when
not, 2 when the set-up or an action failed.

``--quick`` (for CI): 10 actions; nothing written; exit 0 unless something broke.

    .venv/bin/python bench/api_submit.py [--actions 200] [--no-doc] [--quick]
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from typing import Any

import api_common as common
import httpx

TARGET_P50_MS = 50.0
NETWORK = {"cidr": "10.241.0.0/24", "mode": "isolated", "zone": common.ZONE}
WAIT_S = 30
QUICK_ACTIONS = 10
# The tenant's tokens, taken in turn so that none meets the per-token rate limit (each action
# is a PUT and one or two long polls).
TOKENS = 8
FINAL = frozenset({"succeeded", "failed", "interrupted"})


def parse_time(text: str) -> float:
    """An ISO time of the API as seconds since the epoch."""
    return dt.datetime.fromisoformat(text).timestamp()


def finished(client: httpx.Client, action: dict[str, Any]) -> dict[str, Any]:
    """The action once it has ended (long polls, bounded); it must have succeeded."""
    deadline = time.monotonic() + 4 * WAIT_S
    while action["status"] not in FINAL and time.monotonic() < deadline:
        reply = client.get(f"/v1/actions/{action['id']}", params={"wait": WAIT_S})
        reply.raise_for_status()
        action = reply.json()["action"]
    if action["status"] != "succeeded":
        raise RuntimeError(f"action {action['id']} ended {action['status']}: {action['error']}")
    return action


def submit_once(client: httpx.Client) -> dict[str, float]:
    """One PUT that changes nothing, followed to its end; its times in seconds."""
    sent = time.time()
    start = time.perf_counter()
    reply = client.put("/v1/networks/lan", json=NETWORK)
    round_trip = time.perf_counter() - start
    if reply.status_code != 202:
        raise RuntimeError(f"PUT /v1/networks/lan answered {reply.status_code}: {reply.text}")
    action = finished(client, reply.json()["action"])
    created, started = parse_time(action["created_at"]), parse_time(action["started_at"])
    return {
        "submission": started - sent,
        "to_row": created - sent,
        "row_to_worker": started - created,
        "reply": round_trip,
        "whole": parse_time(action["finished_at"]) - sent,
    }


def run(args: argparse.Namespace, results: dict[str, Any]) -> None:
    with (
        common.lab(private_libvirtd=False, tokens=TOKENS) as lab,
        common.serve(lab) as vce,
        common.client(vce, lab.tokens, timeout=WAIT_S + 10) as client,
    ):
        first = submit_once(client)  # creates the network: not a sample
        common.log(f"network created in {first['whole'] * 1000:.0f} ms; {args.actions} PUTs")
        samples = [submit_once(client) for _action in range(args.actions)]
    results["figures"] = {
        part: common.summary_ms([sample[part] for sample in samples]) for part in samples[0]
    }


LABELS = {
    "submission": "**submission: send to worker start** (the target)",
    "to_row": "of which send to the action's row (`created_at`)",
    "row_to_worker": "of which row to worker start (`started_at`)",
    "reply": "the 202 reply's round trip (context)",
    "whole": "the whole action: send to `finished_at` (context)",
}


def report_lines(results: dict[str, Any]) -> list[str]:
    columns = {"median_ms": "p50", "p95_ms": "p95", "p99_ms": "p99", "max_ms": "max"}
    return common.percentile_table(results["figures"], LABELS, columns)


def verdict(results: dict[str, Any]) -> str:
    f = results["figures"]["submission"]
    met = "PASS" if results["target_met"] else "MISS"
    return (
        f"Submission p50 {f['median_ms']:.1f} ms (p99 {f['p99_ms']:.1f} ms) over {f['n']} "
        f"actions, target p50 < {TARGET_P50_MS:.0f} ms: **{met}**."
    )


def setup(results: dict[str, Any]) -> str:
    return f"{results['actions']} actions one after another; percentiles are nearest ranks."


def main(argv: list[str] | None = None) -> int:
    parser = common.arguments(__doc__, "10 actions")
    parser.add_argument("--actions", type=int, default=200)
    args = parser.parse_args(argv)
    if args.quick:
        args.actions = QUICK_ACTIONS
    bench = common.Bench(
        name="api_submit",
        run=lambda results: run(args, results),
        target_met=lambda results: results["figures"]["submission"]["median_ms"] < TARGET_P50_MS,
        table=report_lines,
        verdict=verdict,
        setup=setup,
    )
    return common.execute(bench, {"actions": args.actions}, args.quick, args.no_doc)


if __name__ == "__main__":
    sys.exit(main())
