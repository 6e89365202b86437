"""What the multi-host tests share beyond fixtures: booting guests on a lab host."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tools.multihost import LabHost

BOOT_TIMEOUT = 90  # seconds; the tiny guest answers after ~7 s under TCG


@contextmanager
def console_logs_on(host: LabHost) -> Iterator[None]:
    """VMs defined inside the block log their console where the host's libvirtd can write."""
    previous = os.environ.get("VCE_CONSOLE_LOG_DIR")
    os.environ["VCE_CONSOLE_LOG_DIR"] = str(host.log_dir / "qemu")
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("VCE_CONSOLE_LOG_DIR", None)
        else:
            os.environ["VCE_CONSOLE_LOG_DIR"] = previous


def wait_until_answers(host: LabHost, ip: str) -> None:
    """Ping `ip` from inside the host until it answers (the guest has booted), bounded."""
    deadline = time.monotonic() + BOOT_TIMEOUT
    while host.run(["ping", "-c", "1", "-W", "1", ip]).returncode != 0:
        assert time.monotonic() < deadline, f"{ip} did not answer on {host.name}"
        time.sleep(1)
