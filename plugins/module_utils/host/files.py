# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files only root may read (the ledger, backups, restored images), whatever the umask.

The modes are set with chmod, not left to open() or mkdir(): the umask only takes bits away,
so it cannot make a file private, and a umask of 0 would leave it as asked anyway.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    # The umask is the process's: a thread creating a file meanwhile gets a narrower mode,
    # never a wider one.
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def make_private_dir(path: Path, exist_ok: bool = True) -> None:
    """`path` and its missing parents, each made 0700; directories that exist keep their mode."""
    for directory in (*reversed(path.parents), path):
        if directory.exists() and (directory != path or exist_ok):
            continue
        try:
            directory.mkdir()
        except FileExistsError:
            if directory == path and not exist_ok:
                raise
            continue  # made by another run meanwhile: its mode is that run's
        directory.chmod(DIR_MODE)  # mkdir's mode is cut by the umask: chmod is not


def open_private(path: Path, flags: int) -> int:
    """A descriptor on `path`, created 0600 when missing."""
    fd = os.open(path, flags | os.O_CREAT, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError:
        os.close(fd)
        raise
    return fd


def seal(directory: Path) -> None:
    """Every file under `directory` 0600 and every directory 0700, whoever wrote them (libvirt
    writes a live backup's files)."""
    directory.chmod(DIR_MODE)
    for entry in directory.rglob("*"):
        entry.chmod(DIR_MODE if entry.is_dir() else FILE_MODE)
