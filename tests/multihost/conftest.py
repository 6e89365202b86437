"""Multi-host fixtures: a lab of two KVM hosts in two zones per test module, and a ledger in it
that the engine and the ansible processes the tests start both use. The tests reach the hosts
over SSH (LabHost.ssh_uri, ssh_command) as a controller does; a test that acts at a host's
console instead (LabHost.run: ip netns exec) says why."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import libvirt
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.engine.facade import run_firewall
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.support.images import catalogued_guest
from tests.support.ledger import forget_stores
from tools.multihost import MultiHostLab, new_lab_dir


@pytest.fixture(scope="module")
def lab() -> Iterator[MultiHostLab]:
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    base = new_lab_dir()
    started = MultiHostLab(base)
    try:
        guard(started.start())
        yield started
    finally:
        started.stop()
        shutil.rmtree(base, ignore_errors=True)


def guard(lab: MultiHostLab) -> None:
    """Each lab host's guard table, as the kvm_host role installs it on a production host
    (vce.kvm.firewall with the zone's uplink), over SSH as a controller reaches the host; the
    engine's runs keep it from then on. The tables go with the hosts' network namespaces."""
    for host in lab.hosts.values():
        run_firewall({"uri": host.ssh_uri, "host_command": host.ssh_command, "uplink": host.uplink})


@pytest.fixture(scope="module")
def ledger_url(lab: MultiHostLab) -> Iterator[str]:
    url = f"sqlite:///{lab.base_dir / 'ledger.sqlite3'}"
    Ledger.open(url, create=True)  # the operator's ledger exists before any test reads it
    catalogued_guest(url, "zone-a", "zone-b")  # the zones' base image, as the operator's
    previous = os.environ.get("VCE_LEDGER_URL")
    os.environ["VCE_LEDGER_URL"] = url
    yield url
    forget_stores()
    if previous is None:
        os.environ.pop("VCE_LEDGER_URL")
    else:
        os.environ["VCE_LEDGER_URL"] = previous
