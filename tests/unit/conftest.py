"""Unit fixtures: a fresh SQLite ledger per test (a real database, in the test's folder)."""

from __future__ import annotations

import pytest

from tests.support.ledger import forget_stores


@pytest.fixture
def ledger_url(tmp_path, monkeypatch) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    monkeypatch.setenv("VCE_LEDGER_URL", url)
    yield url
    forget_stores()
