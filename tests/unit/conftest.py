"""Unit fixtures: a fresh SQLite ledger per test (a real database, in the test's folder)."""

from __future__ import annotations

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core import fields

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


@pytest.fixture(autouse=True)
def image_dir(tmp_path_factory, monkeypatch) -> str:
    """The operator's image directory is the session's temporary root: the base images the
    tests make in their folders are operator paths (tests of the rule give image_dirs)."""
    root = str(tmp_path_factory.getbasetemp())
    monkeypatch.setattr(fields, "IMAGE_DIR", root)
    return root
