"""The `hosts` table on SQLite and PostgreSQL: registered once, unchanged on a re-run, updated
with only what changed, nothing written in check mode, removed, refused while tenants remain."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import xml.etree.ElementTree as ET

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources import host as host_record
from ansible_collections.vce.kvm.plugins.module_utils.host import connection as host
from ansible_collections.vce.kvm.plugins.module_utils.host.connection import Host
from ansible_collections.vce.kvm.plugins.module_utils.host.ownership import Owner, owner_element
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import hosts
from ansible_collections.vce.kvm.plugins.module_utils.ledger.store import open_store
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from hypothesis import given
from hypothesis import strategies as st

URI = "test:///default"
PARAMS = {
    "name": "kvm-01.lab",
    "zone": "zone-a",
    "uri": URI,
    "uplink": "eth1",
    "public_pools": [{"name": "main", "cidr": "203.0.113.0/28", "gateway": "203.0.113.1"}],
}


@pytest.fixture(autouse=True)
def testdriver(monkeypatch):
    """Test-driver state from the driver's defaults: the driver keeps its objects while any
    connection to it is open, so this test's connections are closed afterwards."""
    connections = {}
    monkeypatch.setattr(host, "_connections", connections)
    yield
    for conn in connections.values():
        conn.close()


def rows(url: str) -> list:
    with open_store(url).read() as connection:
        return list(connection.execute(sa.select(hosts)))


def test_a_host_is_recorded_once_with_what_libvirt_reports(any_ledger_url, monkeypatch):
    monkeypatch.setenv("VCE_ACTOR", "operator-a")
    monkeypatch.setenv("VCE_RUN_ID", "run-1")
    checked = host_record.run_host(PARAMS, check_mode=True)
    assert checked.changed and checked.plan[0]["action"] == "create"
    assert checked.diff["after"]["host/kvm-01.lab"]["create"]["zone"] == "zone-a"
    assert rows(any_ledger_url) == []

    created = host_record.run_host(PARAMS)
    info = Host(URI).conn.getInfo()
    [row] = rows(any_ledger_url)
    assert (row.cpus, row.memory_mib) == (info[2], info[1])
    assert (row.run_id, row.actor, row.uplink) == ("run-1", "operator-a", "eth1")
    assert row.registered_at.utcoffset() == dt.timedelta(0)
    assert created.facts["host"]["public_pools"][0]["cidr"] == "203.0.113.0/28"

    monkeypatch.setenv("VCE_RUN_ID", "run-2")
    again = host_record.run_host(PARAMS)
    assert again.changed is False and again.plan == []
    assert rows(any_ledger_url) == [row]


def test_an_update_writes_only_when_values_change(any_ledger_url, monkeypatch):
    host_record.run_host(PARAMS)
    [first] = rows(any_ledger_url)
    moved = host_record.run_host({**PARAMS, "zone": "zone-b"}, check_mode=True)
    assert moved.plan[0]["before"] == {"zone": "zone-a"}
    assert moved.plan[0]["after"] == {"zone": "zone-b"}
    assert rows(any_ledger_url) == [first]

    # The host got more memory: the next registration records it, and only it.
    read = host_record.read_values

    def grown(declared, host):
        return dataclasses.replace(read(declared, host), memory_mib=first.memory_mib * 2)

    monkeypatch.setattr(host_record, "read_values", grown)
    updated = host_record.run_host(PARAMS)
    assert [(c["field"], c["before"], c["after"]) for c in updated.plan] == [
        ("record", {"memory_mib": first.memory_mib}, {"memory_mib": first.memory_mib * 2})
    ]
    [row] = rows(any_ledger_url)
    assert row.memory_mib == first.memory_mib * 2
    assert row.registered_at == first.registered_at and row.key != first.key


def test_absent_removes_the_record_unless_tenants_remain(any_ledger_url):
    host_record.run_host(PARAMS)
    conn = Host(URI).conn
    domain = conn.defineXML(owned_domain_xml())
    try:
        with pytest.raises(SpecError, match=r"still has 1 object\(s\) of tenants .*acme/acme_web"):
            host_record.run_host({"name": PARAMS["name"], "state": "absent"})
    finally:
        domain.undefine()
    assert len(rows(any_ledger_url)) == 1
    assert host_record.run_host({"name": PARAMS["name"], "state": "absent"}, True).changed
    assert len(rows(any_ledger_url)) == 1
    removed = host_record.run_host({"name": PARAMS["name"], "state": "absent"})
    assert removed.changed and removed.facts["host"] == {}
    assert rows(any_ledger_url) == []
    assert host_record.run_host({"name": PARAMS["name"], "state": "absent"}).changed is False


def test_a_replayed_write_keeps_its_run(any_ledger_url):
    """The idempotency key is the values': the same values from another run write nothing."""
    declared = host_record.parse_host(PARAMS)
    values = host_record.read_values(declared, Host(URI))
    for run_id in ("run-a", "run-b"):
        # The host module's path, which creates the ledger (run_host opens it so).
        ledger = Ledger.open(any_ledger_url, create=True, run_id=run_id)
        with ledger.store.locked("(host test)") as connection:
            engine = host_record.HostRecordPlanner(host_record.HostRecords(ledger), connection)
            engine.plan_present(declared.name, values, engine.observe(declared.name)).apply()
    [row] = rows(any_ledger_url)
    assert row.run_id == "run-a" and row.key == values.key(declared.name)


def owned_domain_xml() -> str:
    root = ET.Element("domain", {"type": "test"})
    ET.SubElement(root, "name").text = "acme_web"
    ET.SubElement(root, "memory").text = "65536"
    ET.SubElement(ET.SubElement(root, "os"), "type").text = "hvm"
    ET.SubElement(root, "metadata").append(owner_element(Owner("acme", "vm", "web")))
    return ET.tostring(root, encoding="unicode")


@pytest.mark.parametrize("name", ["kvm-01.lab\n", "kvm-01.lab\0", "kvm-01\n.lab", "", "a" * 254])
def test_a_host_name_with_a_newline_or_nul_is_refused(name):
    with pytest.raises(SpecError) as caught:
        host_record.check_host_name(name, "name")
    assert caught.value.field == "name"


def test_an_uplink_with_a_trailing_newline_is_refused():
    with pytest.raises(SpecError) as caught:
        host_record.parse_host({**PARAMS, "public_pools": [], "uplink": "eth1\n"})
    assert caught.value.field == "uplink"


@given(st.one_of(st.text(alphabet="ab09-.\n\0A\u0663", max_size=30), st.text(max_size=30)))
def test_a_host_name_is_a_lowercase_dns_name_or_refused_naming_the_field(value):
    try:
        name = host_record.check_host_name(value, "name")
    except SpecError as error:
        assert error.field == "name"
        return
    assert name.isascii() and name.isprintable() and name == name.lower()
    assert all(label and not label.startswith("-") for label in name.split("."))


REACH = {
    "host_command": ["ssh", "root@kvm-01.lab"],
    "underlay_ip": "10.0.0.11",
    "underlay_dev": "eth2",
    "backup_root": "/srv/backups/",
    "runner": "/opt/vce/bin/vce-backup",
}


def test_how_to_reach_the_host_is_recorded_planned_and_kept(any_ledger_url):
    checked = host_record.run_host({**PARAMS, **REACH}, check_mode=True)
    created = checked.diff["after"]["host/kvm-01.lab"]["create"]
    assert created["host_command"] == ["ssh", "root@kvm-01.lab"]
    # Paths as the backup module takes them: the trailing slash goes.
    assert created["settings"] == {
        "underlay_ip": "10.0.0.11",
        "underlay_dev": "eth2",
        "backup_root": "/srv/backups",
        "runner": "/opt/vce/bin/vce-backup",
    }
    assert rows(any_ledger_url) == []

    host_record.run_host({**PARAMS, **REACH})
    [row] = rows(any_ledger_url)
    assert json.loads(row.host_command) == ["ssh", "root@kvm-01.lab"]
    assert json.loads(row.settings) == created["settings"]
    assert host_record.run_host({**PARAMS, **REACH}).changed is False

    moved = host_record.run_host({**PARAMS, **REACH, "host_command": ["ssh", "root@10.1.1.1"]})
    assert [(c["before"], c["after"]) for c in moved.plan] == [
        ({"host_command": ["ssh", "root@kvm-01.lab"]}, {"host_command": ["ssh", "root@10.1.1.1"]})
    ]


def test_a_host_reached_locally_has_null_command_and_settings(any_ledger_url):
    """NULL as rows from before migration 0009 hold: the control plane runs commands locally."""
    host_record.run_host({**PARAMS, "host_command": []})
    [row] = rows(any_ledger_url)
    assert (row.host_command, row.settings) == (None, None)
    assert host_record.run_host(PARAMS).changed is False
    dropped = host_record.run_host({**PARAMS, **REACH})
    assert dropped.changed
    cleared = host_record.run_host(PARAMS)
    assert cleared.plan[0]["after"] == {"host_command": None, "settings": {}}
    assert rows(any_ledger_url)[0].settings is None


@pytest.mark.parametrize(
    ("bad", "field", "reason"),
    [
        ({"underlay_ip": "10.0.0.300"}, "underlay_ip", "invalid IPv4 address"),
        ({"underlay_dev": "eth 2"}, "underlay_dev", "interface name"),
        ({"underlay_dev": None}, "underlay_dev", "needs both underlay_ip and underlay_dev"),
        ({"underlay_ip": None}, "underlay_ip", "needs both"),
        ({"backup_root": "srv/backups"}, "backup_root", "absolute path"),
        ({"unit_dir": "/etc/systemd/../x"}, "unit_dir", "absolute path"),
        ({"config_dir": "/etc/vce kvm"}, "config_dir", "absolute path"),
        ({"runner": "/usr/bin/vce%i"}, "runner", "absolute path"),
        ({"host_command": ["ssh", ""]}, "host_command", "command prefix"),
        ({"host_command": {"ssh": 1}}, "host_command", "command prefix"),
    ],
)
def test_bad_reach_settings_are_refused_naming_the_field(bad, field, reason):
    with pytest.raises(SpecError, match=reason) as caught:
        host_record.parse_host({**PARAMS, **REACH, **bad})
    assert caught.value.field == field
