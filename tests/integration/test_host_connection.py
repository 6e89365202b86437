"""The engine's kept libvirt connection outlives a restart of the daemon: a long-lived process
(the control plane) must not keep failing with a broken pipe after libvirtd restarted."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.host.connection import Host, connect

from tools.libvirtd import PrivateLibvirtd

pytestmark = pytest.mark.integration


def test_a_kept_connection_is_reopened_after_the_daemon_restarts():
    base = Path(tempfile.mkdtemp(prefix="vce-restart-", dir="/tmp"))
    daemon = PrivateLibvirtd(base)
    daemon.start()
    try:
        first = connect(daemon.uri)
        assert Host(daemon.uri).conn.listAllDomains() == []
        daemon.restart_libvirtd()
        host = Host(daemon.uri)
        assert host.conn is not first
        assert host.conn.listAllDomains() == []
        assert connect(daemon.uri) is host.conn  # kept again, once it answers
    finally:
        daemon.stop()
        shutil.rmtree(base, ignore_errors=True)
