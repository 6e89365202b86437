"""Metering, reconciliation and the availability probe against the private libvirtd: the
usage a run reports is what libvirt holds; drift made by hand is recorded by `reconcile`; the
probe opens an incident when a VM the runs left running stops, and ends it when it runs again;
an unreachable host is downtime of its VMs."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine
from ansible_collections.vce.kvm.plugins.module_utils.finance.sla import Incidents, probe_host
from ansible_collections.vce.kvm.plugins.module_utils.host.connection import Host
from ansible_collections.vce.kvm.plugins.module_utils.host.ownership import object_name
from ansible_collections.vce.kvm.plugins.module_utils.ledger.metering import (
    Meter,
    Metering,
    UsageChange,
    observe_host,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

pytestmark = pytest.mark.integration
UNREACHABLE = "qemu+unix:///system?socket=/nonexistent/vce-test/libvirt-sock"


def vm_params(uri, tenant, image, **extra):
    return {
        "uri": uri, "tenant": tenant, "name": "web", "vcpus": 1, "memory_mib": 128,
        "boot_disk": {"image": image, "size_gib": 1}, "state": "running", **extra,
    }  # fmt: skip


def ledger_at(url, moment):
    return Ledger.open(url, now=moment, actor="test")


def record(url, result):
    changes = [UsageChange.from_dict(c) for c in result.usage_changes]
    return Metering(ledger_at(url, dt.datetime.now(dt.UTC))).record(changes)


def test_run_usage_reconcile_and_probe(conn, uri, tenant, ledger_url, blank_image):
    created = engine.run_vm(vm_params(uri, tenant, blank_image))
    [change] = [c for c in created.usage_changes if c["kind"] == "vm"]
    assert (change["action"], change["state"]) == ("created", "running")
    assert (change["vcpus"], change["ram_mib"], change["disk_mib"]) == (1, 128, 1024)
    # The run wrote its usage ahead: the callback's record of the same changes adds nothing.
    assert record(ledger_url, created) == 0
    assert engine.run_vm(vm_params(uri, tenant, blank_image)).usage_changes == []

    now = dt.datetime.now(dt.UTC)
    first = probe_host(ledger_at(ledger_url, now), uri)
    assert first["opened"] == [] and first["vms"] >= 1

    # Someone destroys the VM by hand: the probe opens the provider's incident.
    dom = conn.lookupByName(object_name(tenant, "web"))
    dom.destroy()
    down = probe_host(ledger_at(ledger_url, now + dt.timedelta(minutes=1)), uri)
    [opened] = [i for i in down["opened"] if i["tenant"] == tenant]
    assert (opened["vm"], opened["cause"], opened["source"]) == ("web", "provider", "probe")
    assert "destroyed" in opened["note"]
    again = probe_host(ledger_at(ledger_url, now + dt.timedelta(minutes=2)), uri)
    assert [i for i in again["opened"] if i["tenant"] == tenant] == []

    # Reconciliation bills what libvirt holds: the VM stopped outside any run.
    ledger = ledger_at(ledger_url, now + dt.timedelta(minutes=3))
    drift = Metering(ledger).reconcile(uri, observe_host(ledger, Host(uri), [tenant]))
    mine = [c for c in drift if c.tenant == tenant]
    assert [(c.kind, c.name, c.meter.state) for c in mine] == [("vm", "web", "stopped")]
    assert Metering(ledger).reconcile(uri, observe_host(ledger, Host(uri), [tenant])) == []

    # It runs again: the incident ends at the probe that saw it.
    dom.create()
    back = probe_host(ledger_at(ledger_url, now + dt.timedelta(minutes=4)), uri)
    [ended] = [i for i in back["ended"] if i["tenant"] == tenant]
    assert ended["id"] == opened["id"]
    assert ended["ended_at"] == (now + dt.timedelta(minutes=4)).isoformat()
    [incident] = Incidents(ledger).listing(tenant)
    assert incident["counts"] and incident["ended_at"] is not None

    # The customer stops it through a run: nothing is promised, nothing is opened.
    stopped = engine.run_vm(
        vm_params(uri, tenant, blank_image, state="stopped", shutdown_timeout=1)
    )
    record(ledger_url, stopped)
    quiet = probe_host(ledger_at(ledger_url, now + dt.timedelta(minutes=5)), uri)
    assert [i for i in quiet["opened"] if i["tenant"] == tenant] == []

    # Deleted by hand: reconciliation ends its billing.
    dom.undefine()
    ledger = ledger_at(ledger_url, now + dt.timedelta(minutes=6))
    gone = Metering(ledger).reconcile(uri, observe_host(ledger, Host(uri), [tenant]))
    assert ("vm", "web", "absent") in [
        (c.kind, c.name, c.meter.state) for c in gone if c.tenant == tenant
    ]


def test_an_unreachable_host_is_downtime_of_the_vms_left_running(tenant, ledger_url):
    now = dt.datetime.now(dt.UTC)
    ledger = ledger_at(ledger_url, now)
    Metering(ledger).record(
        [
            UsageChange(
                tenant, UNREACHABLE, "vm", "api", "created", now, Meter("running", "api", 1, 128)
            )
        ]
    )
    result = probe_host(ledger_at(ledger_url, now + dt.timedelta(minutes=1)), UNREACHABLE)
    assert "unreachable" in result
    [opened] = [i for i in result["opened"] if i["tenant"] == tenant]
    assert (opened["vm"], opened["cause"], opened["note"]) == (
        "api",
        "provider",
        "probe saw unreachable (host unreachable)",
    )


def test_the_timers_commands(uri, tenant, ledger_url):
    """What the host's timers run: `vce sla probe` and `vce ledger reconcile`, as commands."""
    from tests.cli.test_ledger_cli import vce

    probe = vce(ledger_url, "sla", "probe", "--uri", uri, now=None)
    assert probe.returncode == 0, probe.stderr
    [report] = json.loads(probe.stdout)
    assert report["host"] == uri and "unreachable" not in report
    reconcile = vce(ledger_url, "ledger", "reconcile", "--uri", uri, now=None)
    assert reconcile.returncode == 0, reconcile.stderr
    assert json.loads(reconcile.stdout)[0]["host"] == uri
    unreachable = vce(ledger_url, "ledger", "reconcile", "--uri", UNREACHABLE, now=None)
    assert unreachable.returncode == 1
    assert "Failed to connect to libvirt" in json.loads(unreachable.stdout)[0]["error"]
