# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Per-token rate limits: a token bucket per token, in this process.

Each instance limits on its own: behind a proxy spreading calls over n instances a token gets
up to n times the rate, which the operator sets knowing n. A shared counter in the ledger would
cost a write per call.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# Buckets idle this long are forgotten, so a stream of distinct tokens cannot grow the table.
IDLE_SECONDS = 600.0
SWEEP_EVERY = 1000


@dataclass
class Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.buckets: dict[str, Bucket] = {}
        self.lock = threading.Lock()
        self.calls = 0

    def take(self, key: str) -> int:
        """0 when the call may go ahead, else the whole seconds to wait before retrying."""
        now = self.clock()
        with self.lock:
            self.calls += 1
            if self.calls % SWEEP_EVERY == 0:
                self.sweep(now)
            bucket = self.buckets.get(key)
            if bucket is None:
                bucket = self.buckets[key] = Bucket(float(self.burst), now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.rate)
            bucket.stamp = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return 0
            return max(1, math.ceil((1 - bucket.tokens) / self.rate))

    def sweep(self, now: float) -> None:
        idle = [key for key, bucket in self.buckets.items() if now - bucket.stamp > IDLE_SECONDS]
        for key in idle:
            del self.buckets[key]
