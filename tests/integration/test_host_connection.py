"""The engine's kept libvirt connection outlives a restart of the daemon: a long-lived process
(the control plane) must not keep failing with a broken pipe after libvirtd restarted. A daemon
that went away is an unreachable host, for the open connection and for a new one; a URI the daemon
has no driver for is a refusal."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import HostUnreachable, VceError
from ansible_collections.vce.kvm.plugins.module_utils.host.connection import Host, connect

from tools.libvirtd import PrivateLibvirtd

pytestmark = pytest.mark.integration


@pytest.fixture
def daemon() -> Iterator[PrivateLibvirtd]:
    base = Path(tempfile.mkdtemp(prefix="vce-restart-", dir="/tmp"))
    started = PrivateLibvirtd(base)
    started.start()
    try:
        yield started
    finally:
        started.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_a_kept_connection_is_reopened_after_the_daemon_restarts(daemon):
    first = connect(daemon.uri)
    assert Host(daemon.uri).conn.listAllDomains() == []
    daemon.restart_libvirtd()
    host = Host(daemon.uri)
    assert host.conn is not first
    assert host.conn.listAllDomains() == []
    assert connect(daemon.uri) is host.conn  # kept again, once it answers


def test_a_daemon_killed_under_an_open_connection_is_an_unreachable_host(daemon):
    host = Host(daemon.uri)
    assert host.inventories() == {}
    os.kill(int(daemon.libvirtd_pid_file.read_text()), signal.SIGKILL)
    with pytest.raises(HostUnreachable) as lost:
        host.inventories()
    assert str(lost.value).startswith(f"Failed to list domains on {daemon.uri}: ")
    with pytest.raises(HostUnreachable) as gone:
        Host(daemon.uri)
    assert str(gone.value).startswith(f"Failed to connect to libvirt at {daemon.uri}: ")


def test_a_uri_the_daemon_has_no_driver_for_is_refused_not_unreachable(daemon):
    # The client hands a URI none of its own drivers takes to the daemon, which answers.
    uri = f"nosuchdriver:///system?socket={daemon.socket_path}"
    with pytest.raises(VceError, match="no connection driver available") as raised:
        connect(uri)
    assert not isinstance(raised.value, HostUnreachable)
