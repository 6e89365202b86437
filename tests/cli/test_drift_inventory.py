"""`vce drift` reads its declarations from an Ansible inventory: group_vars, host_vars and
templates as a playbook would see them, under the same variables the roles use; bad input is
refused with exit status 2 and the field named."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import yaml
from ansible_collections.vce.kvm.cli.drift import inventory_declarations
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError

from tests.support.ansible_runner import ROOT, ansible_env
from tests.support.ledger import forget_stores, register


@pytest.fixture
def inventory(tmp_path):
    (tmp_path / "group_vars" / "kvm_hosts").mkdir(parents=True)
    (tmp_path / "host_vars").mkdir()
    hosts = {"all": {"children": {"kvm_hosts": {"hosts": {"kvm1": {}, "kvm2": {}}}}}}
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(hosts))
    shared = {
        "vce_pool": "fast",
        "vce_base_image": "/images/base.qcow2",
        "vce_zones": {"ala": {"uplink": "up0", "public_pools": []}},
        "vce_tenants": {
            "acme": {
                "customer": "c1",
                "plan": "small",
                "networks": [{"name": "lan", "cidr": "10.1.0.0/24"}],
                "vms": [{"name": "web", "boot_disk": {"image": "{{ vce_base_image }}"}}],
            }
        },
    }
    (tmp_path / "group_vars" / "kvm_hosts" / "main.yml").write_text(yaml.safe_dump(shared))
    (tmp_path / "host_vars" / "kvm1.yml").write_text(
        yaml.safe_dump({"vce_uri": "qemu+ssh://root@kvm1/system", "vce_zone": "ala"})
    )
    return tmp_path


def test_declarations_come_templated_from_group_and_host_vars(inventory):
    kvm1, kvm2 = sorted(inventory_declarations([str(inventory)], "kvm_hosts"), key=lambda d: d.host)
    assert (kvm1.host, kvm1.uri) == ("kvm1", "qemu+ssh://root@kvm1/system")
    assert kvm2.uri == "qemu:///system"
    assert kvm1.shared["default_pool"] == "fast"
    assert kvm1.shared["zone"] == "ala" and kvm1.shared["zone_config"]["uplink"] == "up0"
    assert "zone" not in kvm2.shared
    # Only the environment's options are compared; customer and plan are the tenant module's.
    assert set(kvm1.tenants["acme"]) == {"networks", "vms"}
    assert kvm1.tenants["acme"]["vms"][0]["boot_disk"]["image"] == "/images/base.qcow2"
    # A plain str, not one of Ansible's tagged subclasses (the engine hashes declarations).
    assert kvm1.tenants["acme"]["vms"][0]["boot_disk"]["image"].__class__ is str


@pytest.mark.parametrize(
    ("sources", "pattern", "field", "reason"),
    [
        (["/nonexistent/inventory"], "kvm_hosts", "--inventory", "does not exist"),
        (None, "web_servers", "--hosts", "no host of the inventory matches"),
    ],
)
def test_bad_inventory_input_is_refused(inventory, sources, pattern, field, reason):
    with pytest.raises(SpecError) as raised:
        inventory_declarations(sources or [str(inventory)], pattern)
    assert raised.value.field == field and reason in raised.value.reason


def test_vce_drift_exits_2_naming_the_field(inventory):
    proc = subprocess.run(
        [sys.executable, "-m", "ansible_collections.vce.kvm.cli.command", "drift",
         "-i", str(inventory), "--hosts", "nowhere"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**ansible_env(), "PYTHONPATH": str(ROOT / "collections")},
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "vce: --hosts: no host of the inventory matches 'nowhere'" in proc.stderr
    assert "Traceback" not in proc.stderr


HOST_WITH_INTRUDERS = """<node>
  <domain type='test'><name>acme_web1</name><memory>131072</memory>
    <metadata>{tag}</metadata><os><type>hvm</type></os></domain>
  <domain type='test'><name>acme_copy</name><memory>131072</memory>
    <metadata>{tag}</metadata><os><type>hvm</type></os></domain>
  <domain type='test'><name>acme_extra</name><memory>131072</memory>
    <os><type>hvm</type></os></domain>
</node>
""".format(
    tag="<vce:owner xmlns:vce='https://vce-kvm.dev/xmlns/owner/1' tenant='acme' kind='vm' "
    "name='web1' spec-hash=''/>"
)


def test_vce_drift_reports_intruders_in_json_and_junit_and_exits_1(tmp_path):
    """A host read by libvirt's test driver from a file: acme's web1, a copy of its tag on
    acme_copy, and acme_extra without one."""
    ledger_url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    register(ledger_url, "acme")
    forget_stores()
    node = tmp_path / "node.xml"
    node.write_text(HOST_WITH_INTRUDERS)
    hosts = {"all": {"hosts": {"kvm1": {
        "vce_uri": f"test://{node}", "vce_ledger_url": ledger_url, "vce_tenants": {"acme": {}},
    }}}}  # fmt: skip
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(hosts))
    report, junit = tmp_path / "drift.json", tmp_path / "drift.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "ansible_collections.vce.kvm.cli.command", "drift",
         "-i", str(tmp_path / "hosts.yml"), "--hosts", "all", "--json", str(report),
         "--junit", str(junit)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**ansible_env(), "PYTHONPATH": str(ROOT / "collections")},
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "kvm1 acme vm acme_copy: duplicated" in proc.stdout
    assert "1 orphan, 1 unowned, 1 duplicated, 0 error" in proc.stdout
    statuses = {c["name"]: c["status"] for c in json.loads(report.read_text())["cases"]}
    assert statuses == {"web1": "orphan", "acme_copy": "duplicated", "acme_extra": "unowned"}
    failures = {
        case.get("name"): case.find("failure").get("type")
        for case in ET.parse(junit).getroot().iter("testcase")
    }
    assert failures == statuses
