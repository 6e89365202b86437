"""The cabinet's tests: the real app in this process on the unit tier's fresh SQLite ledger,
its one zone's host on libvirt's test driver (tests.support.app)."""

from collections.abc import Iterator

import pytest

from tests.support.app import in_process_app
from tests.support.cabinet import Cabinet
from tests.support.host_records import closing_connections
from tests.unit.conftest import ledger_url

__all__ = ["ledger_url"]


@pytest.fixture
def connections(monkeypatch):
    yield from closing_connections(monkeypatch)


@pytest.fixture
def cabinet(connections, ledger_url, tmp_path) -> Iterator[Cabinet]:
    with in_process_app(ledger_url, tmp_path) as served:
        yield Cabinet(served.app, ledger_url)
