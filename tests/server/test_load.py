"""50 concurrent clients for 60 s of mixed reads (GET /v1/vms, /v1/quotas, /v1/networks) and a
few writes (disk declarations): not one error. The latencies' p50 and p99 are printed for the
record; the speed claims are the benches' (bench/)."""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from tests.server.conftest import Fleet
from tests.support.server import Server, create_token, wait_action

pytestmark = pytest.mark.server
CLIENTS = 50
TENANTS = 5
SECONDS = 60
READS = ("/v1/vms", "/v1/quotas", "/v1/networks")
# One client in ten writes, once every WRITE_EVERY of its calls.
WRITE_EVERY = 40


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    actions: list[tuple[str, str]] = field(default_factory=list)  # (token, action id)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, seconds: float, error: str = "", action: tuple[str, str] | None = None) -> None:
        with self.lock:
            self.latencies.append(seconds)
            if error:
                self.errors.append(error)
            if action:
                self.actions.append(action)


def client_loop(server: Server, token: str, number: int, tally: Tally, until: float) -> None:
    writer = number % 10 == 0
    calls = 0
    with server.client(token) as client:
        while time.monotonic() < until:
            calls += 1
            began = time.perf_counter()
            try:
                if writer and calls % WRITE_EVERY == 0:
                    reply = client.put(f"/v1/disks/load{number}x{calls}", json={"size_gib": 1})
                    expected = 202
                else:
                    reply = client.get(READS[calls % len(READS)])
                    expected = 200
            except Exception as error:
                tally.add(time.perf_counter() - began, f"{type(error).__name__}: {error}")
                continue
            elapsed = time.perf_counter() - began
            if reply.status_code != expected:
                tally.add(elapsed, f"{reply.request.method} {reply.request.url.path}: "
                          f"{reply.status_code} {reply.text[:200]}")  # fmt: skip
            elif expected == 202:
                tally.add(elapsed, action=(token, reply.json()["action"]["id"]))
            else:
                tally.add(elapsed)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def test_fifty_clients_for_a_minute_see_no_error(server: Server, fleet: Fleet, new_tenant):
    tenants = [new_tenant(fleet) for _tenant in range(TENANTS)]
    # A token per client: each stays under its own rate limit, as separate customers would.
    tokens = [create_token(fleet.ledger_url, tenants[i % TENANTS]) for i in range(CLIENTS)]
    tally = Tally()
    until = time.monotonic() + SECONDS
    with ThreadPoolExecutor(CLIENTS) as pool:
        for future in [
            pool.submit(client_loop, server, token, i, tally, until)
            for i, token in enumerate(tokens)
        ]:
            future.result(timeout=SECONDS + 120)
    calls = len(tally.latencies)
    p50 = percentile(tally.latencies, 0.50) * 1000
    p99 = percentile(tally.latencies, 0.99) * 1000
    print(
        f"\nload: {CLIENTS} clients, {SECONDS} s: {calls} calls ({calls / SECONDS:.0f}/s), "
        f"{len(tally.actions)} writes, {len(tally.errors)} errors; "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, mean {statistics.fmean(tally.latencies) * 1000:.1f} ms"
    )
    assert tally.errors == []
    assert tally.actions, "no write was made"
    for token, action_id in tally.actions:
        with server.client(token) as client:
            assert wait_action(client, action_id)["status"] == "succeeded"
