"""File modes in tests: what the product makes must not depend on the process umask."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def with_umask(value: int):
    """Set the process umask (a fixture's generator body), restoring it after."""
    previous = os.umask(value)
    try:
        yield value
    finally:
        os.umask(previous)
