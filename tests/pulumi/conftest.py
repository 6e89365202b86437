"""The provider's in-process tests share the unit tier's fresh SQLite ledger; the ones that
need a control plane get the real app in this process (tests/pulumi/served.py)."""

from collections.abc import Iterator

import pytest

from tests.pulumi.served import Served, served_app
from tests.support.host_records import closing_connections
from tests.unit.conftest import ledger_url

__all__ = ["ledger_url"]


@pytest.fixture
def connections(monkeypatch):
    yield from closing_connections(monkeypatch)


@pytest.fixture
def served(connections, ledger_url, tmp_path) -> Iterator[Served]:
    with served_app(ledger_url, tmp_path) as app:
        yield app
