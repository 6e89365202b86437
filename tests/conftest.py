"""Shared test set-up: the repository on sys.path so tests import the engine and tools, and
the ledger databases (SQLite files, a private PostgreSQL server)."""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# The Pulumi SDK and provider from the checkout, ahead of an installed copy (the repository's
# own pulumi/ directory has no __init__.py, so `import pulumi` still finds the real SDK).
# The provider imports the engine as ansible_collections.vce.kvm: the checkout's too.
# The control plane's package (server/vce_server) likewise.
for _path in (ROOT / "pulumi" / "sdk" / "python", ROOT / "pulumi" / "provider", ROOT / "server"):
    if str(_path) not in sys.path:
        sys.path.insert(1, str(_path))
if str(ROOT / "collections") not in sys.path:
    sys.path.insert(1, str(ROOT / "collections"))

_databases = itertools.count(1)


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """A private PostgreSQL server on loopback for the session (started on first use)."""
    from tools.postgres import PrivatePostgres

    # Not pytest's tmp_path: the server runs as the postgres user, who cannot enter it.
    base = Path(tempfile.mkdtemp(prefix="vce-pg-", dir="/tmp"))
    server = PrivatePostgres(base)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def fresh_database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """An empty ledger database of `backend`: a SQLite file, or a new PostgreSQL database."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / f'ledger{next(_databases)}.sqlite3'}"
    server = request.getfixturevalue("postgres")
    return server.create_database(f"ledger{os.getpid()}x{next(_databases)}")


@pytest.fixture(params=["sqlite", "postgresql"])
def any_ledger_url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch) -> Iterator[str]:
    """A fresh ledger on each back end in turn; the engine finds it through VCE_LEDGER_URL."""
    from tests.support.ledger import forget_stores

    url = fresh_database_url(request.param, tmp_path, request)
    monkeypatch.setenv("VCE_LEDGER_URL", url)
    yield url
    forget_stores()
