"""Fixtures of the resource tests: libvirt's test driver as the KVM host, a fresh SQLite ledger.

`test:///default` keeps its objects while any connection to it is open in the process, and
starts again from the driver's defaults (network 'default', pool 'default-pool' at
/default-pool, domain 'test') once every connection is closed: so each test closes the
connections it opened.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.host import connection as host
from ansible_collections.vce.kvm.plugins.module_utils.host.connection import Host

from tests.support.ledger import register

URI = "test:///default"


@pytest.fixture(autouse=True)
def host_python(tmp_path, monkeypatch):
    """The host's `python3` (the engine reads and writes backup schedule files with it, standard
    library only; every environment run reads them) is this interpreter without site
    packages: a pyenv shim and the virtualenv's site set-up cost a quarter of a second a call."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python3 = bin_dir / "python3"
    python3.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')
    python3.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


@pytest.fixture
def connections(monkeypatch):
    """The engine's connection cache, emptied for the test and closed after it."""
    opened = {}
    monkeypatch.setattr(host, "_connections", opened)
    yield opened
    for conn in opened.values():
        with contextlib.suppress(Exception):  # already closed by the test
            conn.close()
    # libvirt objects in a failed run's traceback (streams, domains) hold their connection
    # until freed; a traceback is a reference cycle, so test:///default would keep this
    # test's objects for the next test until the collector runs.
    gc.collect()


@pytest.fixture
def test_host(connections):
    """A fresh test-driver host."""
    return Host(URI)


@pytest.fixture
def acme(ledger_url, connections):
    """Tenant 'acme' (and 'other') registered in a fresh ledger, with roomy quotas."""
    register(ledger_url, "acme")
    register(ledger_url, "other")
    return ledger_url
