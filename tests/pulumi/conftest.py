"""The provider's in-process tests share the unit tier's fresh SQLite ledger."""

from tests.unit.conftest import ledger_url

__all__ = ["ledger_url"]
