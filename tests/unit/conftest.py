"""Unit fixtures: a fresh SQLite ledger per test (a real database, in the test's folder)."""

from __future__ import annotations

import pytest

from tests.support.files import with_umask
from tests.support.ledger import forget_stores


@pytest.fixture
def ledger_url(tmp_path, monkeypatch) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    monkeypatch.setenv("VCE_LEDGER_URL", url)
    yield url
    forget_stores()


@pytest.fixture(params=[0o022, 0o000], ids=["umask022", "umask000"])
def umask(request):
    """The test runs under systemd's default umask, then under none at all."""
    yield from with_umask(request.param)
