"""Ping one address from several network namespaces on one clock, to count what a move loses.

A guest migrating between two lab hosts is reached through the host it is on: before the move
from the source host's namespace, after it from the destination's. A pinger runs in each (as
the host's own administrator at its console would ping), and every pinger sends its echo
number k at ``start + k * interval``; echo k is answered when any pinger got its reply. What
the move loses is the longest run of unanswered echoes between the first and the last answer.

Unlike ping(8), a send refused by the kernel (ENOBUFS while the host has no neighbour entry
for the address: the guest is not behind it yet) neither slows the pinger down nor stops it.

CLI (run inside a namespace; prints the answered echo numbers as JSON)::

    python -m tests.support.pinger ADDRESS --start EPOCH --interval 0.05 --count N
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

ECHO_REQUEST, ECHO_REPLY = 8, 0
REPLY_WAIT = 1.0  # seconds: a reply later than this is a lost echo (ping -W 1)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq)
    payload = b"vce-migration-ping"
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, checksum(header + payload), ident, seq) + payload


def ping(address: str, start: float, interval: float, count: int) -> dict[str, list]:
    """The echo numbers answered in time (REPLY_WAIT) and when replies arrived, sending echo k
    at start + k * interval.
    A late reply is a lost echo: the address queued on the host while the guest could not
    answer is delivered all at once when it can."""
    ident = os.getpid() & 0xFFFF
    answered: set[int] = set()
    arrivals: list[float] = []
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.setblocking(False)
        end = start + count * interval + REPLY_WAIT
        k = 0
        while time.time() < end:
            due = start + k * interval
            if k < count and time.time() >= due:
                # No neighbour (yet) refuses the send: the echo is lost, as it is to a peer.
                with contextlib.suppress(OSError):
                    sock.sendto(echo(ident, k), (address, 0))
                k += 1
                continue
            wait = max(0.0, min(due if k < count else end, end) - time.time())
            if select.select([sock], [], [], wait)[0]:
                packet = sock.recv(2048)
                icmp = packet[(packet[0] & 0x0F) * 4 :]
                kind, _code, _sum, got_ident, seq = struct.unpack("!BBHHH", icmp[:8])
                late = time.time() > start + seq * interval + REPLY_WAIT
                if kind == ECHO_REPLY and got_ident == ident:
                    arrivals.append(time.time())
                    if not late:
                        answered.add(seq)
    return {"answered": sorted(answered), "arrivals": arrivals}


@dataclass(frozen=True)
class PingLoss:
    """What the pingers saw: echoes sent, answered, and the longest unanswered run."""

    sent: int
    answered: int
    lost: int  # the longest run of unanswered echoes between the first and last answer
    interval: float
    silence_seconds: float  # the longest time without any reply arriving

    @property
    def outage_seconds(self) -> float:
        return round(self.lost * self.interval, 3)


def loss(results: Iterable[Mapping[str, list]], count: int, interval: float) -> PingLoss:
    """What pingers of one address saw together (each pinger's `ping` result)."""
    results = list(results)
    merged = sorted(set().union(*(set(r["answered"]) for r in results)))
    longest = max((b - a - 1 for a, b in itertools.pairwise(merged)), default=0)
    arrivals = sorted(t for r in results for t in r["arrivals"])
    silence = max((b - a for a, b in itertools.pairwise(arrivals)), default=0.0)
    return PingLoss(count, len(merged), longest, interval, round(silence, 3))


class Pingers:
    """Pingers of `address` in each of `command_prefixes` (e.g. ``ip netns exec NS``), started
    together: `lead` seconds from now, for `seconds`."""

    def __init__(
        self,
        address: str,
        command_prefixes: Sequence[Sequence[str]],
        seconds: float,
        interval: float = 0.05,
        lead: float = 0.5,
    ) -> None:
        self.interval = interval
        self.count = int(seconds / interval)
        start = time.time() + lead
        self.start = start
        self.answers: list[dict[str, list]] = []
        argv = [sys.executable, "-m", "tests.support.pinger", address, "--start", str(start)]
        argv += ["--interval", str(interval), "--count", str(self.count)]
        self.procs = [
            subprocess.Popen([*prefix, *argv], stdout=subprocess.PIPE, text=True, cwd=ROOT)
            for prefix in command_prefixes
        ]

    def result(self) -> PingLoss:
        timeout = self.count * self.interval + 30
        outputs = [proc.communicate(timeout=timeout)[0] for proc in self.procs]
        self.answers = [json.loads(out) for out in outputs]
        return loss(self.answers, self.count, self.interval)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.pinger")
    parser.add_argument("address")
    parser.add_argument("--start", type=float, required=True)
    parser.add_argument("--interval", type=float, default=0.05)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(ping(args.address, args.start, args.interval, args.count)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
