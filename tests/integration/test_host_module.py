"""vce.kvm.host against a real libvirtd and the session's ledger: check, record, read back,
idempotence, update, refusals, absent.

What Ansible adds (argument checks, check and diff mode, the result) goes through the module;
the other cases call its engine entry point in-process (an ansible call costs about two seconds).
"""

from __future__ import annotations

import itertools
import json
import os

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.engine.facade import run_network
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources import host as host_record
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.host import run_host
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import hosts
from ansible_collections.vce.kvm.plugins.module_utils.ledger.store import open_store

from tests.support.ansible_runner import run_module

pytestmark = pytest.mark.integration

_numbers = itertools.count(1)
POOLS = [
    {"name": "main", "cidr": "203.0.113.0/28", "gateway": "203.0.113.1", "exclude": ["203.0.113.2"]}
]


@pytest.fixture
def host_name(ledger_url):
    """A host name no other test uses; its record is removed afterwards."""
    name = f"kvm-{os.getpid() % 10000}-{next(_numbers)}.lab"
    yield name
    with open_store(ledger_url).read() as connection:
        connection.execute(hosts.delete().where(hosts.c.name == name))


def record(ledger_url, name):
    with open_store(ledger_url).read() as connection:
        return connection.execute(sa.select(hosts).where(hosts.c.name == name)).first()


def test_host_lifecycle(uri, conn, ledger_url, host_name):
    args = {
        "name": host_name,
        "zone": "zone-a",
        "uri": uri,
        "uplink": "eth1",
        "public_pools": POOLS,
    }

    checked = run_module("host", args, check=True, diff=True)
    assert checked["changed"] is True, checked
    assert checked["plan"][0]["action"] == "create"
    after = checked["diff"]["after"][f"host/{host_name}"]["create"]
    assert (after["zone"], after["cpus"]) == ("zone-a", conn.getInfo()[2])
    assert checked["host"] == {} and record(ledger_url, host_name) is None

    created = run_module("host", args)
    assert created["changed"] is True, created
    row = record(ledger_url, host_name)
    info = conn.getInfo()
    assert (row.zone, row.uri, row.uplink) == ("zone-a", uri, "eth1")
    assert (row.cpus, row.memory_mib) == (info[2], info[1])
    version = conn.getLibVersion()
    assert row.libvirt_version == f"{version // 1000000}.{version // 1000 % 1000}.{version % 1000}"
    assert row.registered_at.utcoffset() is not None and row.run_id and row.actor
    assert created["host"]["public_pools"] == [{**POOLS[0]}]

    again = run_module("host", args, diff=True)
    assert again["changed"] is False, again["plan"]
    assert record(ledger_url, host_name) == row

    moved = run_host({**args, "uplink": "eth2", "public_pools": []})
    assert moved.plan[0]["before"] == {"uplink": "eth1", "public_pools": POOLS}
    assert moved.plan[0]["after"] == {"uplink": "eth2", "public_pools": []}
    updated = record(ledger_url, host_name)
    assert updated.uplink == "eth2" and updated.registered_at == row.registered_at

    absent = {"name": host_name, "state": "absent"}
    assert run_host(absent, check_mode=True).changed is True
    assert record(ledger_url, host_name) is not None
    removed = run_module("host", absent, diff=True)
    assert removed["changed"] is True and removed["host"] == {}
    assert removed["diff"]["before"][f"host/{host_name}"]["delete"]["uplink"] == "eth2"
    assert record(ledger_url, host_name) is None
    assert run_host(absent).changed is False


def test_absent_is_refused_while_tenants_remain(uri, tenant, subnet, ledger_url, host_name):
    run_host({"name": host_name, "zone": "zone-a", "uri": uri})
    run_network(
        {"uri": uri, "tenant": tenant, "name": "lan", "cidr": f"{subnet}.0/24", "mode": "isolated"}
    )
    with pytest.raises(
        SpecError, match=rf"still has 1 object\(s\) of tenants .*{tenant}/"
    ) as refused:
        run_host({"name": host_name, "state": "absent"})
    assert refused.value.field == "state"
    assert record(ledger_url, host_name) is not None


def test_bad_host_input_changes_nothing(uri, ledger_url, host_name):
    bad_pool = {**POOLS[0], "cidr": "203.0.113.1/28"}
    args = {"name": host_name, "zone": "zone-a", "uri": uri, "uplink": "eth1"}
    refused = run_module("host", {**args, "public_pools": [bad_pool]})
    assert refused["failed"] is True and refused["field"] == "public_pools[0].cidr"
    assert "invalid IPv4 CIDR" in refused["msg"] and "Traceback" not in refused["msg"]
    with pytest.raises(SpecError, match="uplink interface is required") as no_uplink:
        run_host({**args, "uplink": None, "public_pools": POOLS})
    assert no_uplink.value.field == "uplink"
    with pytest.raises(SpecError, match="invalid host name") as bad_name:
        run_host({**args, "name": "KVM_01"})
    assert bad_name.value.field == "name"
    assert record(ledger_url, host_name) is None


def test_how_the_control_plane_reaches_the_host(uri, ledger_url, host_name):
    """host_command and the settings through Ansible: check and diff, record, no change on the
    second run, and a bad value refused naming its option."""
    args = {
        "name": host_name,
        "zone": "zone-a",
        "uri": uri,
        "host_command": ["ssh", "-o", "BatchMode=yes", f"root@{host_name}"],
        "underlay_ip": "172.31.250.10",
        "underlay_dev": "ul0",
        "backup_root": "/srv/vce/backups",
        "unit_dir": "/etc/systemd/system",
        "config_dir": "/etc/vce-kvm/backup",
        "runner": "/usr/local/bin/vce-backup",
    }
    settings = {key: args[key] for key in host_record.SETTINGS}

    checked = run_module("host", args, check=True, diff=True)
    after = checked["diff"]["after"][f"host/{host_name}"]["create"]
    assert (after["host_command"], after["settings"]) == (args["host_command"], settings)
    assert record(ledger_url, host_name) is None

    created = run_module("host", args)
    assert created["changed"] is True, created
    row = record(ledger_url, host_name)
    assert json.loads(row.host_command) == args["host_command"]
    assert json.loads(row.settings) == settings
    assert created["host"]["settings"] == settings

    again = run_module("host", args, check=True, diff=True)
    assert again["changed"] is False and again["plan"] == [], again
    assert run_module("host", args)["changed"] is False
    assert record(ledger_url, host_name) == row

    refused = run_module("host", {**args, "underlay_ip": "172.31.250.300", "runner": "/usr/bin"})
    assert refused["failed"] is True and refused["field"] == "underlay_ip", refused
    assert "Traceback" not in refused["msg"]
    refused = run_module("host", {**args, "backup_root": "/srv/vce backups"})
    assert refused["failed"] is True and refused["field"] == "backup_root", refused
    assert record(ledger_url, host_name) == row
