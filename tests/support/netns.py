"""A scratch network namespace for tests that run the real nft or ip: named, reached through a
command prefix like a lab host, and removed even when the test fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

needs_netns = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("nft") or not shutil.which("unshare"),
    reason="needs root, nft and unshare (a scratch network namespace)",
)


@contextmanager
def scratch_netns(prefix: str = "vce-fw") -> Iterator[list[str]]:
    """A new network namespace; yields the command prefix that runs a command in it."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        yield ["ip", "netns", "exec", name]
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, timeout=10)
