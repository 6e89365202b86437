"""Drift checks on a lab KVM host: a tenant applied from an inventory, then changed by hand in
every way an operator could - vCPU, RAM, power state, a disk resized and one removed, a NIC and
a DHCP lease removed, an nft rule and a public address removed, a timer deleted - plus objects
no declaration mentions. `vce drift` and playbooks/drift.yml must both see every one of them,
in their JSON and JUnit reports and in their exit status, and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest
import yaml
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine

from tests.support.ansible_runner import ANSIBLE_PLAYBOOK, ROOT, ansible_env
from tests.support.backups import runner_script
from tests.support.images import TINY_GUEST
from tests.support.ledger import register
from tools.cleanup import remove_prefixed
from tools.multihost import LabHost, MultiHostLab

pytestmark = [pytest.mark.multihost]
TENANT, STRAY = "drifty", "stray"
ZONE = {
    "uplink": "up0",
    "public_pools": [{"name": "pub-a", "cidr": "203.0.113.64/27", "gateway": "203.0.113.1"}],
}


def declaration(image: str) -> dict:
    vm = {"vcpus": 1, "max_vcpus": 2, "memory_mib": 96, "max_memory_mib": 128, "state": "stopped"}
    boot = {"image": image, "size_gib": 1}
    return {
        "customer": "drift-customer",
        "plan": "lab",
        "networks": [{"name": "lan", "cidr": "10.62.1.0/24", "mode": "routed"}],
        "disks": [{"name": "data1", "size_gib": 1}, {"name": "data2", "size_gib": 1}],
        "vms": [
            {**vm, "name": "vm1", "boot_disk": boot, "disks": ["data1"],
             "nics": [{"network": "lan", "ip": "10.62.1.10", "mac": "52:54:00:00:00:01"}]},
            {**vm, "name": "vm2", "boot_disk": boot, "nics": [{"network": "lan", "ip": "10.62.1.11", "mac": "52:54:00:00:00:02"}]},
            {**vm, "name": "vm3", "boot_disk": boot, "disks": ["data2"],
             "nics": [{"network": "lan", "ip": "10.62.1.12", "mac": "52:54:00:00:00:03"}]},
            {**vm, "name": "vm4", "boot_disk": boot, "nics": [{"network": "lan", "ip": "10.62.1.13"}]},
        ],
        "public_ips": [{"name": "web", "vm": "vm1"}, {"name": "api", "vm": "vm2"}],
        "backup_schedules": [
            {"vm": "vm1", "name": "nightly", "calendar": "*-*-* 02:30",
             "retention": {"keep_daily": 7}},
            {"vm": "vm2", "name": "nightly", "calendar": "*-*-* 03:30",
             "retention": {"keep_daily": 7}},
        ],
    }  # fmt: skip


@pytest.fixture(scope="module")
def kvm_a(lab: MultiHostLab) -> LabHost:
    return lab.hosts["kvm-a"]


@pytest.fixture(scope="module")
def inventory(lab, kvm_a, ledger_url, tmp_path_factory) -> Iterator[Path]:
    """An inventory declaring tenant `drifty` on kvm-a, applied to the host."""
    base = tmp_path_factory.mktemp("drift")
    runner = base / "bin" / "vce-backup"
    runner.parent.mkdir()
    runner.write_text(runner_script(ROOT))
    runner.chmod(0o755)
    host_vars = {
        "vce_uri": kvm_a.ssh_uri,
        "vce_ledger_url": ledger_url,
        "vce_zone": "zone-a",
        "vce_zones": {"zone-a": ZONE},
        "vce_host_command": kvm_a.ssh_command,
        "vce_pool": "default",
        "vce_backup_root": str(base / "backups"),
        "vce_backup_runner": str(runner),
        "vce_backup_unit_dir": str(base / "units"),
        "vce_backup_config_dir": str(base / "config"),
        "vce_tenants": {TENANT: declaration(TINY_GUEST)},
    }
    path = base / "hosts.yml"
    # Reached as a zone host is: Ansible over SSH, libvirt over qemu+ssh, host commands by ssh.
    hosts = {"kvm-a": {**kvm_a.ansible_vars(sys.executable), **host_vars}}
    path.write_text(yaml.safe_dump({"all": {"children": {"kvm_hosts": {"hosts": hosts}}}}))
    register(ledger_url, TENANT, public_ips=4, backup_frequencies=["daily"])
    register(ledger_url, STRAY)
    shared = {
        "uri": kvm_a.ssh_uri, "ledger_url": ledger_url, "zone": "zone-a", "zone_config": ZONE,
        "host_command": kvm_a.ssh_command, "backup_root": host_vars["vce_backup_root"],
        "runner": str(runner), "unit_dir": host_vars["vce_backup_unit_dir"],
        "config_dir": host_vars["vce_backup_config_dir"], "shutdown_timeout": 5,
    }  # fmt: skip
    declared = {
        k: v for k, v in host_vars["vce_tenants"][TENANT].items() if k not in ("customer", "plan")
    }
    try:
        applied = engine.run_environment({**shared, **declared, "tenant": TENANT})
        PUBLIC_IPS.update(
            {n: ip["address"] for n, ip in applied.facts["environment"]["public_ips"].items()}
        )
        yield path
    finally:
        engine.run_environment({**shared, "tenant": TENANT, "state": "absent"})
        conn = libvirt.open(kvm_a.ssh_uri)
        remove_prefixed(conn, f"{TENANT}_")
        remove_prefixed(conn, f"{STRAY}_")
        conn.close()


def vce_drift(inventory: Path, out: Path) -> tuple[int, dict, ET.Element, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "ansible_collections.vce.kvm.cli.vce", "drift", "-i", str(inventory),
         "--json", str(out / "cli.json"), "--junit", str(out / "cli.xml")],
        capture_output=True, text=True, timeout=120, check=False,
        env={**ansible_env(), "PYTHONPATH": str(ROOT / "collections")},
    )  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    report = json.loads((out / "cli.json").read_text())
    return proc.returncode, report, ET.parse(out / "cli.xml").getroot(), proc.stdout


def drift_playbook(inventory: Path, out: Path) -> tuple[int, dict, ET.Element, str]:
    proc = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), "playbooks/drift.yml",
         "-e", f"drift_report_dir={out}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
        env=ansible_env({"ANSIBLE_STDOUT_CALLBACK": "default"}),
    )  # fmt: skip
    if not (out / "drift-report.json").exists():
        raise AssertionError(f"no report:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    report = json.loads((out / "drift-report.json").read_text())
    return proc.returncode, report, ET.parse(out / "drift-report.xml").getroot(), proc.stdout


def statuses(report: dict) -> dict[tuple[str, str, str], str]:
    return {(c["tenant"], c["kind"], c["name"]): c["status"] for c in report["cases"]}


def kvm_a_vars(inventory: Path) -> dict:
    return yaml.safe_load(inventory.read_text())["all"]["children"]["kvm_hosts"]["hosts"]["kvm-a"]


def units_of(inventory: Path) -> Path:
    return Path(kvm_a_vars(inventory)["vce_backup_unit_dir"])


def fields(report: dict, kind: str, name: str) -> set[str]:
    (case,) = [c for c in report["cases"] if (c["kind"], c["name"]) == (kind, name)]
    return {d["field"] or d["action"] for d in case["differences"]}


def junit_outcomes(root: ET.Element) -> dict[str, str]:
    """test case classname/name -> 'passed', 'failure' or 'error'."""
    outcomes = {}
    for case in root.iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error")]
        outcomes[f"{case.get('classname')}/{case.get('name')}"] = kinds[0] if kinds else "passed"
    return outcomes


PUBLIC_IPS: dict[str, str] = {}  # name -> address, as the apply allocated them
DECLARED = {
    (TENANT, "network", "lan"), (TENANT, "disk", "data1"), (TENANT, "disk", "data2"),
    (TENANT, "vm", "vm1"), (TENANT, "vm", "vm2"), (TENANT, "vm", "vm3"), (TENANT, "vm", "vm4"),
    (TENANT, "public_ip", "web"), (TENANT, "public_ip", "api"),
    (TENANT, "backup_schedule", "vm1/nightly"), (TENANT, "backup_schedule", "vm2/nightly"),
}  # fmt: skip
GUARD = ("", "firewall", "vce_guard")  # the host's guard table: a case of the host's own


def test_nothing_drifted_after_apply(inventory, tmp_path):
    code, report, junit, _out = vce_drift(inventory, tmp_path)
    assert code == 0, report
    assert statuses(report) == dict.fromkeys([*DECLARED, GUARD], "in_sync")
    assert junit.get("tests") == str(len(DECLARED) + 1) and junit.get("failures") == "0"
    assert set(junit_outcomes(junit).values()) == {"passed"}

    code, playbook_report, junit, out = drift_playbook(inventory, tmp_path)
    assert code == 0, out[-3000:]
    assert playbook_report["cases"] == report["cases"]


def change_by_hand(kvm_a: LabHost, inventory: Path) -> None:
    conn = libvirt.open(kvm_a.ssh_uri)
    try:
        vm1 = conn.lookupByName(f"{TENANT}_vm1")
        vm1.setVcpusFlags(2, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        vm2 = conn.lookupByName(f"{TENANT}_vm2")
        vm2.setMemoryFlags(128 * 1024, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        vm4 = conn.lookupByName(f"{TENANT}_vm4")
        vm4.create()  # declared stopped
        pool = conn.storagePoolLookupByName("default")
        pool.refresh(0)
        pool.storageVolLookupByName(f"{TENANT}_data1.qcow2").resize(2 * 1024**3, 0)
        vm3 = conn.lookupByName(f"{TENANT}_vm3")
        for target in ET.fromstring(vm3.XMLDesc(0)).iter("disk"):
            if target.find("source") is not None and "data2" in target.find("source").get("file"):
                vm3.detachDeviceFlags(ET.tostring(target, encoding="unicode"), 0)
        pool.storageVolLookupByName(f"{TENANT}_data2.qcow2").delete(0)
        (nic,) = ET.fromstring(vm3.XMLDesc(0)).iter("interface")
        vm3.detachDeviceFlags(ET.tostring(nic, encoding="unicode"), 0)
        lan = conn.networkLookupByName(f"{TENANT}_lan")
        (lease,) = [
            h for h in ET.fromstring(lan.XMLDesc(0)).iter("host") if h.get("ip") == "10.62.1.11"
        ]
        lan.update(
            libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE, libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST, -1,
            ET.tostring(lease, encoding="unicode"),
            libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE | libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG,
        )  # fmt: skip
    finally:
        conn.close()
    # The public IP "web": its DNAT rule removed; "api": its address taken off the uplink.
    rules = json.loads(
        kvm_a.ssh(["nft", "-a", "-j", "list", "table", "ip", "vce_nat"], check=True).stdout
    )
    web = PUBLIC_IPS["web"]
    handles = [
        (i["rule"]["chain"], i["rule"]["handle"]) for i in rules["nftables"]
        if "rule" in i and i["rule"]["chain"] == "prerouting" and web in json.dumps(i["rule"]["expr"])
    ]  # fmt: skip
    assert handles
    for chain, handle in handles:
        kvm_a.ssh(
            ["nft", "delete", "rule", "ip", "vce_nat", chain, "handle", str(handle)], check=True
        )
    kvm_a.ssh(["ip", "addr", "del", f"{PUBLIC_IPS['api']}/32", "dev", "up0"], check=True)
    hostvars = kvm_a_vars(inventory)
    (units_of(inventory) / f"vce-backup-{TENANT}_vm2_nightly.timer").unlink()
    # Objects no declaration mentions: a VM of the declared tenant, a network of another.
    shared = {
        "uri": kvm_a.ssh_uri,
        "ledger_url": hostvars["vce_ledger_url"],
        "host_command": kvm_a.ssh_command,
    }
    boot = {"image": TINY_GUEST, "size_gib": 1}
    engine.run_vm(
        {
            **shared,
            "tenant": TENANT,
            "name": "extra",
            "memory_mib": 64,
            "boot_disk": boot,
            "state": "stopped",
        }
    )
    engine.run_network(
        {**shared, "tenant": STRAY, "name": "side", "cidr": "10.62.9.0/24", "mode": "isolated"}
    )


def test_every_hand_change_is_seen(kvm_a, inventory, tmp_path):
    change_by_hand(kvm_a, inventory)
    code, report, junit, out = vce_drift(inventory, tmp_path)
    assert code == 1, out
    expected = {
        **dict.fromkeys(DECLARED, "drifted"),
        (TENANT, "network", "lan"): "in_sync",  # its lease is vm2's: reported there
        (TENANT, "disk", "data2"): "missing",
        (TENANT, "vm", "extra"): "orphan",
        (STRAY, "network", "side"): "orphan",
        (TENANT, "backup_schedule", "vm1/nightly"): "in_sync",
        GUARD: "in_sync",  # the network run kept it
    }
    assert statuses(report) == expected, json.dumps(report["cases"], indent=1)
    assert fields(report, "vm", "vm1") == {"vcpus"}
    assert fields(report, "vm", "vm2") == {"memory_mib", "lease 52:54:00:00:00:02 on lan"}
    assert fields(report, "vm", "vm3") == {"disk data2", "nic 52:54:00:00:00:03"}
    assert fields(report, "vm", "vm4") == {"state"}
    assert fields(report, "public_ip", "web") == fields(report, "public_ip", "api") == {"binding"}
    assert fields(report, "backup_schedule", "vm2/nightly") == {"files"}
    (schedule,) = [c for c in report["cases"] if c["name"] == "vm2/nightly"]
    timer = str(units_of(inventory) / f"vce-backup-{TENANT}_vm2_nightly.timer")
    assert schedule["differences"][0]["actual"]["missing"] == [timer]
    outcomes = junit_outcomes(junit)
    assert len(outcomes) == len(expected)
    assert list(outcomes.values()).count("failure") == sum(
        s != "in_sync" for s in expected.values()
    )
    assert f"vce drift: {len(expected)} objects" in out

    code, playbook_report, junit, playbook_out = drift_playbook(inventory, tmp_path)
    assert code != 0, playbook_out[-3000:]
    assert "Drift on" in playbook_out and "vm4" in playbook_out
    assert statuses(playbook_report) == expected


def test_a_scheduled_backup_runs_on_the_host_over_ssh(kvm_a, inventory):
    """vm1's nightly backup, run as its timer's service runs it on the host, there over SSH:
    the runner reaches libvirt through the qemu+ssh URI its configuration was written with."""
    hostvars = kvm_a_vars(inventory)
    config = Path(hostvars["vce_backup_config_dir"]) / f"vce-backup-{TENANT}_vm1_nightly.json"
    assert kvm_a.ssh_uri in config.read_text()
    argv = [hostvars["vce_backup_runner"], "run", "--config", str(config)]
    proc = kvm_a.ssh([*argv, "--now", "2026-11-01T02:30:00+00:00"], timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip(), proc.stderr
    run = json.loads(proc.stdout)
    assert run["status"] == "ok", run
    backup = Path(hostvars["vce_backup_root"]) / TENANT / "vm1" / "nightly" / run["backup_id"]
    assert (backup / "manifest.json").exists()
