"""playbooks/tenant.yml and `vce drift` over a fleet of three KVM hosts in two zones, reached
over SSH only (Ansible's ssh connection, the engine through each host's qemu+ssh URI, host
commands through ssh): one run applies every host's tenant with Ansible's forks, a re-run
changes nothing, and drift finds every host in sync."""

from __future__ import annotations

import libvirt
import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.support.fleet import apply, declaration, recap, vce_drift

pytestmark = [pytest.mark.multihost]
FLEET_SIZE = 3
VMS = 2


@pytest.fixture(scope="module")
def applied(fleet):
    for index, host in enumerate(fleet.lab.hosts, start=1):
        fleet.declare(host, declaration(index, VMS))
    return apply(fleet)


def test_one_run_applies_every_host(fleet, applied):
    code, out = applied
    assert code == 0, out[-4000:]
    counts = recap(out)
    assert set(counts) == set(fleet.lab.hosts), out[-2000:]
    assert all(c["changed"] > 0 and c["failed"] == c["unreachable"] == 0 for c in counts.values())
    for host in fleet.lab.hosts.values():
        tenant = fleet.tenant_of(host.name)
        conn = libvirt.open(host.ssh_uri)  # as the operator looks: over SSH
        try:
            domains = {d.name(): d.isActive() for d in conn.listAllDomains()}
            assert domains == {f"{tenant}_vm{n}": 0 for n in range(1, VMS + 1)}, host.name
            assert conn.networkLookupByName(f"{tenant}_lan").isActive()
        finally:
            conn.close()


def test_usage_is_recorded_per_host_by_its_ssh_uri(fleet, applied):
    ledger = Ledger.open(fleet.ledger_url)
    with ledger.store.read() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT host, tenant, name, state FROM usage_intervals"
                " WHERE kind = 'vm' AND ended_at IS NULL"
            )
        ).all()
    expected = {
        (host.ssh_uri, fleet.tenant_of(host.name), f"vm{n}", "stopped")
        for host in fleet.lab.hosts.values()
        for n in range(1, VMS + 1)
    }
    assert set(map(tuple, rows)) == expected
    assert len(rows) == len(expected)


def test_a_rerun_changes_nothing(fleet, applied):
    code, out = apply(fleet)
    assert code == 0, out[-4000:]
    counts = recap(out)
    assert set(counts) == set(fleet.lab.hosts)
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in counts.values()), counts


def test_drift_over_the_fleet_is_clean(fleet, applied, tmp_path):
    code, report, out = vce_drift(fleet, tmp_path / "drift.json")
    assert code == 0, out
    hosts = {case["host"] for case in report["cases"]}
    assert hosts == set(fleet.lab.hosts), report["cases"]
    assert {case["status"] for case in report["cases"]} == {"in_sync"}
    assert f"on {FLEET_SIZE} host(s)" in out
