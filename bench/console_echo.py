"""The cabinet's VM console: a keystroke's echo through the server against `virsh console` (the
floor) and against the engine's libvirt stream in-process, on the same VM in the same run.

Issue 20: "Console: keystroke echo round trip through the server under 50 ms p50 on loopback,
measured against a direct `virsh console` on the same VM."

Set-up (bench/api_common.py): a private libvirtd (tools.libvirtd) in a temp dir under /tmp, a
SQLite ledger with the tenant ``bench`` and its host record, the tiny guest (tools.tinyguest)
in the zone's catalogue, ``vce serve`` on a free loopback port. Through the API: an isolated
network and the VM ``box`` (1 vCPU, 160 MiB) booting the tiny guest; a cabinet user of the
tenant logs in over HTTP. The server's viewer waits for the guest's last boot line
(``VCE-GUEST: ready``): after it the guest prints nothing, and what comes back is the echo of
its console's tty.

Measured: ``--rounds`` rounds (default 3); in each, the three paths in turn, each opening the
console anew (with force: it takes the console over from the previous one) and typing
``--keys`` letters (default 50), one at a time, each timed from the send until the letter
comes back:

- VIRSH: ``virsh -c <uri> console --force box`` on a pseudo-terminal (the floor: libvirt's own
  client; the letter written to the terminal, read back from it);
- STREAM: the engine's ``ConsoleStream`` (what the server opens per viewer) in this process;
- SERVER: the cabinet's websocket (a ticket from the console page, the session's cookie), as
  the page's xterm.js uses it, over loopback.

Prints a table; writes bench/results/console_echo.json and a section of docs/benchmarks.md
(between markers; not with --no-doc). Exit 0 when the server's median is under 50 ms, 1 when
not, 2 when the set-up or a measurement failed.

``--quick`` (for CI): 1 round of 5 keys; nothing written; exit 0 unless something broke.

    .venv/bin/python bench/console_echo.py [--rounds 3] [--keys 50] [--no-doc] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pty
import queue
import select
import string
import subprocess
import sys
import time
import tty
from collections.abc import Callable, Iterator
from typing import Any

import api_common as common

TARGET_MS = 50.0
BOOT_SECONDS = 120
ECHO_SECONDS = 10
VM = "box"
MEMORY_MIB = 160
CIDR = "10.243.0"
IMAGE = "tinyguest"
LOGIN = "bench-user"
QUICK_ROUNDS, QUICK_KEYS = 1, 5
# The guest's tty keeps an unread line of at most 4095 characters: every key typed must fit.
MAX_KEYS = 4000
VIRSH_ESCAPE = b"\x1d"  # Ctrl-]
SETTLE_EVERY_S = 0.25
SETTLE_TRIES = 40

Send = Callable[[bytes], None]
Receive = Callable[[float], bytes]


def settle(send: Send, receive: Receive) -> float:
    """Seconds until a freshly opened console echoes: a dot every SETTLE_EVERY_S until one
    comes back (virsh drops what was typed before it made its terminal raw; QEMU notices a new
    client of the console within its 1 s timer)."""
    start = time.perf_counter()
    for _attempt in range(SETTLE_TRIES):
        send(b".")
        deadline = time.perf_counter() + SETTLE_EVERY_S
        seen = b""
        while b"." not in seen and time.perf_counter() < deadline:
            seen += receive(deadline - time.perf_counter())
        if b"." in seen:
            return time.perf_counter() - start
    raise RuntimeError(f"the console echoed nothing in {SETTLE_TRIES * SETTLE_EVERY_S:.0f} s")


def echo_seconds(send: Send, receive: Receive, keys: int) -> list[float]:
    """Each of `keys` letters sent alone and timed until it comes back."""
    letters = string.ascii_lowercase
    times = []
    for number in range(keys):
        letter = letters[number % len(letters)].encode()
        start = time.perf_counter()
        send(letter)
        deadline = start + ECHO_SECONDS
        seen = b""
        while letter not in seen:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise RuntimeError(f"no echo of {letter!r} in {ECHO_SECONDS} s (got {seen!r})")
            seen += receive(left)
        times.append(time.perf_counter() - start)
    return times


@contextlib.contextmanager
def virsh_console(uri: str, domain: str) -> Iterator[tuple[Send, Receive]]:
    """`virsh console --force` on a pseudo-terminal, once it says it is connected."""
    master, slave = pty.openpty()
    # Raw from the start: the terminal itself must not echo a key before virsh takes it (virsh
    # makes it raw too, but only once it is connected).
    tty.setraw(slave)
    argv = ["virsh", "-c", uri, "console", "--force", domain]
    process = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)

    def receive(seconds: float) -> bytes:
        ready, _w, _x = select.select([master], [], [], seconds)
        return os.read(master, 4096) if ready else b""

    try:
        deadline = time.monotonic() + ECHO_SECONDS
        said = b""
        while b"Escape character" not in said and time.monotonic() < deadline:
            said += receive(deadline - time.monotonic())
        if b"Escape character" not in said:
            raise RuntimeError(f"virsh console did not connect: {said!r}")
        yield (lambda data: os.write(master, data)), receive
    finally:
        with contextlib.suppress(OSError):
            os.write(master, VIRSH_ESCAPE)
        try:
            process.wait(timeout=ECHO_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        os.close(master)


@contextlib.contextmanager
def stream_console(uri: str, domain: str) -> Iterator[tuple[Send, Receive]]:
    """The engine's console stream in this process, as the server opens one per viewer."""
    from ansible_collections.vce.kvm.plugins.module_utils.engine.console import ConsoleStream

    output: queue.Queue[bytes | None] = queue.Queue()
    stream = ConsoleStream(uri, common.TENANT, domain, output.put)

    def receive(seconds: float) -> bytes:
        try:
            data = output.get(timeout=seconds)
        except queue.Empty:
            return b""
        if data is None:
            raise RuntimeError("the console stream ended")
        return data

    stream.open()
    try:
        yield stream.send, receive
    finally:
        stream.close()


@contextlib.contextmanager
def server_console(browser: Any, wait_for_boot: bool) -> Iterator[tuple[Send, Receive]]:
    """The cabinet's websocket, with a fresh ticket; optionally after the guest's boot."""
    with browser.open(browser.ticket_url(VM)) as console:
        if wait_for_boot:
            console.read_until(b"VCE-GUEST: ready", BOOT_SECONDS)

        def receive(seconds: float) -> bytes:
            try:
                frame = console.socket.recv(timeout=seconds)
            except TimeoutError:
                return b""
            return frame if isinstance(frame, bytes) else b""

        yield (lambda data: console.socket.send(data)), receive


def boot_guest(lab: common.Lab, vce: Any) -> None:
    """The tiny guest in the catalogue, a network and the VM through the API, a cabinet user."""
    from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
    from vce_server.identity import Identity

    from tests.support.cabinet import PASSWORD
    from tests.support.images import register_image
    from tests.support.server import succeeded
    from tools.tinyguest import build_base_image

    image = lab.base / "tinyguest.qcow2"
    image.write_bytes(build_base_image().read_bytes())
    register_image(lab.ledger_url, image, name=IMAGE, zone=common.ZONE)
    Identity(Ledger.open(lab.ledger_url)).create_user(LOGIN, PASSWORD, "customer", common.TENANT)
    with common.client(vce, lab.tokens, timeout=60) as api:
        succeeded(api, "/v1/networks/lan", {"cidr": f"{CIDR}.0/24", "mode": "isolated"})
        vm = {
            "vcpus": 1,
            "memory_mib": MEMORY_MIB,
            "boot_disk": {"image": IMAGE, "size_gib": 1},
            "nics": [{"network": "lan", "ip": f"{CIDR}.42"}],
        }
        succeeded(api, f"/v1/vms/{VM}", vm)


def run(args: argparse.Namespace, results: dict[str, Any]) -> None:
    from ansible_collections.vce.kvm.plugins.module_utils.host.ownership import object_name

    from tests.support.console import Browser

    seconds: dict[str, list[float]] = {"virsh": [], "stream": [], "server": []}
    first: dict[str, list[float]] = {name: [] for name in seconds}
    with common.lab(private_libvirtd=True) as lab, common.serve(lab) as vce:
        results["domain_type"] = os.environ.get("VCE_DOMAIN_TYPE", "")
        start = time.perf_counter()
        boot_guest(lab, vce)
        browser = Browser(vce.url, LOGIN)
        domain = object_name(common.TENANT, VM)
        paths = {
            "virsh": lambda: virsh_console(lab.uri, domain),
            "stream": lambda: stream_console(lab.uri, VM),
            "server": lambda: server_console(browser, wait_for_boot=False),
        }
        with contextlib.closing(browser):
            with server_console(browser, wait_for_boot=True):
                results["boot_s"] = time.perf_counter() - start
            common.log(f"guest ready through the server's console in {results['boot_s']:.1f} s")
            for _round in range(args.rounds):
                for name, opened in paths.items():
                    with opened() as (send, receive):
                        first[name].append(settle(send, receive))
                        seconds[name] += echo_seconds(send, receive, args.keys)
    results["figures"] = {name: common.summary_ms(values) for name, values in seconds.items()}
    results["first_echo_ms"] = {
        name: common.summary_ms(values)["median_ms"] for name, values in first.items()
    }


LABELS = {
    "virsh": "`virsh console` on a pseudo-terminal (the floor)",
    "stream": "the engine's console stream in-process",
    "server": "the cabinet's websocket through `vce serve`",
}


def report_lines(results: dict[str, Any]) -> list[str]:
    columns = {"median_ms": "median", "p95_ms": "p95", "p99_ms": "p99", "max_ms": "max"}
    return common.percentile_table(results["figures"], LABELS, columns)


def verdict(results: dict[str, Any]) -> str:
    server, floor = results["figures"]["server"], results["figures"]["virsh"]
    met = "PASS" if results["target_met"] else "MISS"
    return (
        f"Echo through the server: median {server['median_ms']:.2f} ms, p99 "
        f"{server['p99_ms']:.2f} ms, against `virsh console`'s {floor['median_ms']:.2f} ms "
        f"({server['median_ms'] - floor['median_ms']:+.2f} ms); target under "
        f"{TARGET_MS:.0f} ms: **{met}**."
    )


def setup(results: dict[str, Any]) -> str:
    return (
        f"The tiny guest (domain type {results['domain_type'] or 'default'}), "
        f"booted in {results['boot_s']:.1f} s; {results['rounds']} rounds of {results['keys']} "
        "keys on each path in turn, each opening the console anew; p95/p99 are nearest ranks. "
        "Before the keys, each opening waits for its first echo (a dot every 0.25 s: virsh "
        "drops what is typed before its terminal is raw, QEMU's pty notices a new client "
        "within its 1 s timer), median: "
        + ", ".join(f"{name} {ms:.0f} ms" for name, ms in results["first_echo_ms"].items())
        + "."
    )


def main(argv: list[str] | None = None) -> int:
    parser = common.arguments(__doc__, "1 round of 5 keys")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keys", type=int, default=50)
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.keys = QUICK_ROUNDS, QUICK_KEYS
    if args.rounds * (args.keys + SETTLE_TRIES) * 3 > MAX_KEYS:
        parser.error(f"at most {MAX_KEYS} keys in all (the guest's tty line)")
    bench = common.Bench(
        name="console_echo",
        run=lambda results: run(args, results),
        target_met=lambda results: results["figures"]["server"]["median_ms"] < TARGET_MS,
        table=report_lines,
        verdict=verdict,
        setup=setup,
    )
    return common.execute(
        bench, {"rounds": args.rounds, "keys": args.keys}, args.quick, args.no_doc
    )


if __name__ == "__main__":
    sys.exit(main())
