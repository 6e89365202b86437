"""vce.kvm.vm against a real libvirtd: check, create, read back, idempotence, live and restart
changes, drift corrected, power state, absent; bad input changes nothing."""

from __future__ import annotations

import libvirt
import pytest

from tests.integration.helpers import domain, network_hosts, tenant_objects, volume
from tests.support.ansible_runner import run_module

pytestmark = pytest.mark.integration
GIB = 1024**3


@pytest.fixture
def lan(uri, tenant, subnet):
    result = run_module(
        "network",
        {"uri": uri, "tenant": tenant, "name": "lan", "cidr": f"{subnet}.0/24", "mode": "isolated"},
    )
    assert result["changed"], result
    return subnet


def vm_args(uri, tenant, image, subnet, **extra):
    args = {
        "uri": uri,
        "tenant": tenant,
        "name": "web1",
        "vcpus": 1,
        "max_vcpus": 2,
        "memory_mib": 96,
        "max_memory_mib": 128,
        "boot_disk": {"image": image, "size_gib": 1},
        "nics": [{"network": "lan", "ip": f"{subnet}.10"}],
        "shutdown_timeout": 2,
    }
    args.update(extra)
    return args


def test_vm_lifecycle(uri, conn, tenant, lan, blank_image, blank_image_path):
    args = vm_args(uri, tenant, blank_image, lan)
    name = f"{tenant}_web1"
    before = tenant_objects(conn, tenant)

    checked = run_module("vm", args, check=True, diff=True)
    assert checked["changed"] is True
    assert [c["action"] for c in checked["plan"]] == ["create", "update"]
    assert (
        checked["plan"][1]["field"].startswith("lease ")
        and checked["plan"][1]["after"] == f"{lan}.10"
    )
    assert checked["diff"]["after"]["vm/web1"]["create"]["vcpus"] == 1
    assert tenant_objects(conn, tenant) == before

    created = run_module("vm", args)
    assert created["changed"] is True, created
    state = domain(conn, name)
    assert state.state == "running" and state.autostart
    assert (state.vcpus, state.max_vcpus, state.memory_mib, state.max_memory_mib) == (1, 2, 96, 128)
    assert (state.owner.tenant, state.owner.kind, state.owner.name) == (tenant, "vm", "web1")
    mac = state.nics[0].mac
    assert state.nics[0].network == f"{tenant}_lan"
    assert str(network_hosts(conn, f"{tenant}_lan")[mac].ip) == f"{lan}.10"
    boot = volume(conn, "default", f"{tenant}_web1.boot.qcow2")
    assert boot["backing"] == str(blank_image_path) and boot["capacity"] == GIB
    assert created["vm"]["nics"][0]["ip"] == f"{lan}.10"

    again = run_module("vm", args)
    assert again["changed"] is False, again["plan"]

    # Drift: someone changes the saved vCPU count and drops the DHCP reservation.
    dom = conn.lookupByName(name)
    dom.setVcpusFlags(2, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    net = conn.networkLookupByName(f"{tenant}_lan")
    net.update(
        libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE,
        libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
        -1,
        f"<host mac='{mac}' ip='{lan}.10'/>",
        libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE | libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG,
    )
    drift = run_module("vm", args, check=True)
    fields = {c["field"] for c in drift["plan"]}
    assert {"vcpus", f"lease {mac} on lan"} <= fields, drift["plan"]
    assert domain(conn, name).vcpus == 2
    fixed = run_module("vm", args)
    assert fixed["changed"] is True
    assert domain(conn, name).vcpus == 1
    assert mac in network_hosts(conn, f"{tenant}_lan")
    assert run_module("vm", args)["changed"] is False

    # vCPUs within the maximum are hot-plugged into the running VM.
    grown = run_module("vm", {**args, "vcpus": 2})
    assert [(c["field"], c["class"]) for c in grown["plan"] if c["field"] == "vcpus"] == [
        ("vcpus", "live")
    ]
    state = domain(conn, name)
    assert (state.vcpus, state.live_vcpus) == (2, 2)
    args["vcpus"] = 2

    # Beyond the maximum: written to the definition, reported, applied only on restart.
    bigger = {**args, "memory_mib": 160, "max_memory_mib": 160}
    pending = run_module("vm", bigger)
    assert pending["changed"] is True
    assert {
        c["class"] for c in pending["plan"] if c["field"] in ("memory_mib", "max_memory_mib")
    } == {"restart"}
    assert pending["pending_restart"]
    state = domain(conn, name)
    assert state.max_memory_mib == 160 and state.live_max_memory_mib == 128
    still = run_module("vm", bigger)
    assert still["changed"] is False and still["pending_restart"]
    restarted = run_module("vm", {**bigger, "allow_restart": True})
    assert restarted["changed"] is True
    assert [c["action"] for c in restarted["plan"]] == ["restart"]
    state = domain(conn, name)
    assert state.state == "running" and state.live_max_memory_mib == 160
    assert run_module("vm", bigger)["pending_restart"] == []

    # The boot disk grows live; it never shrinks.
    run_module("vm", {**bigger, "boot_disk": {"image": blank_image, "size_gib": 2}})
    assert volume(conn, "default", f"{tenant}_web1.boot.qcow2")["capacity"] == 2 * GIB
    shrink = run_module("vm", {**bigger, "boot_disk": {"image": blank_image, "size_gib": 1}})
    assert shrink["failed"] and shrink["field"] == "boot_disk.size_gib"
    assert "shrinking" in shrink["msg"]
    assert volume(conn, "default", f"{tenant}_web1.boot.qcow2")["capacity"] == 2 * GIB

    stopped = run_module(
        "vm", {**bigger, "boot_disk": {"image": blank_image, "size_gib": 2}, "state": "stopped"}
    )
    assert stopped["changed"] is True
    state = domain(conn, name)
    assert state.state == "shutoff" and not state.autostart

    removed = run_module("vm", {"uri": uri, "tenant": tenant, "name": "web1", "state": "absent"})
    assert removed["changed"] is True
    assert domain(conn, name) is None
    assert volume(conn, "default", f"{tenant}_web1.boot.qcow2") is None
    assert mac not in network_hosts(conn, f"{tenant}_lan")
    assert tenant_objects(conn, tenant) == {f"network:{tenant}_lan"}
    assert (
        run_module("vm", {"uri": uri, "tenant": tenant, "name": "web1", "state": "absent"})[
            "changed"
        ]
        is False
    )


def test_cloud_init_seed_is_attached(uri, conn, tenant, lan, blank_image):
    keys = ["ssh-ed25519 AAAAC3Nza test<&>'key"]
    args = vm_args(
        uri, tenant, blank_image, lan, state="stopped", cloud_init={"ssh_authorized_keys": keys}
    )
    assert run_module("vm", args)["changed"] is True
    seed = volume(conn, "default", f"{tenant}_web1.seed.iso")
    assert seed is not None
    with open(seed["path"], "rb") as handle:
        payload = handle.read()
    assert b"cidata" in payload
    assert b"test<&>'key" in payload
    state = domain(conn, f"{tenant}_web1")
    assert any(d.device == "cdrom" and d.path == seed["path"] for d in state.disks)
    assert run_module("vm", args)["changed"] is False
    changed = run_module(
        "vm", {**args, "cloud_init": {"ssh_authorized_keys": keys, "hostname": "other"}}
    )
    assert "cloud_init" in [c["field"] for c in changed["plan"]]
    with open(seed["path"], "rb") as handle:
        assert b"other" in handle.read()


def test_bad_vm_input_changes_nothing(uri, conn, tenant, lan, blank_image):
    before = tenant_objects(conn, tenant)
    cases = [
        ({"memory_mib": 0}, "memory_mib", "must be"),
        ({"vcpus": -1}, "vcpus", "must be positive"),
        ({"name": "web 1"}, "name", "invalid name"),
        ({"name": "a/b"}, "name", "invalid name"),
        ({"name": "<x>"}, "name", "invalid name"),
        ({"nics": [{"network": "wan"}]}, "nics[0].network", "unknown network 'wan'"),
        (
            {"nics": [{"network": "lan", "ip": "10.250.0.4"}]},
            "nics[0].ip",
            "outside the network's CIDR",
        ),
        (
            {"boot_disk": {"image": blank_image, "size_gib": 1, "pool": "nope"}},
            "boot_disk.pool",
            "unknown storage pool",
        ),
        (
            {"boot_disk": {"image": "/nonexistent.qcow2", "size_gib": 1}},
            "boot_disk.image",
            "No such file or directory",
        ),
        (
            {"boot_disk": {"image": "ghost", "size_gib": 1}},
            "boot_disk.image",
            "nor an image of the catalogue",
        ),
        ({"disks": ["ghost"]}, "disks[0]", "unknown disk 'ghost'"),
    ]
    for extra, field, reason in cases:
        result = run_module("vm", vm_args(uri, tenant, blank_image, lan, **extra))
        assert result["failed"], (extra, result)
        assert result["field"] == field, (extra, result["msg"])
        assert reason in result["msg"], (extra, result["msg"])
    assert tenant_objects(conn, tenant) == before


def test_duplicate_mac_or_ip_with_existing_vm_is_refused(uri, conn, tenant, lan, blank_image):
    first = vm_args(
        uri,
        tenant,
        blank_image,
        lan,
        state="stopped",
        nics=[{"network": "lan", "mac": "52:54:00:00:bb:01", "ip": f"{lan}.10"}],
    )
    assert run_module("vm", first)["changed"]
    same_mac = run_module(
        "vm", {**first, "name": "web2", "nics": [{"network": "lan", "mac": "52:54:00:00:bb:01"}]}
    )
    assert same_mac["failed"] and "already used by VM" in same_mac["msg"]
    same_ip = run_module(
        "vm", {**first, "name": "web2", "nics": [{"network": "lan", "ip": f"{lan}.10"}]}
    )
    assert same_ip["failed"] and "already leased" in same_ip["msg"]
    assert domain(conn, f"{tenant}_web2") is None


def test_vm_of_another_tenant_or_nobody_is_refused(uri, conn, tenant, lan, blank_image):
    owned_by_other = (
        f"<domain type='qemu'><name>{tenant}_web1</name>"
        "<metadata><o:owner xmlns:o='https://vce-kvm.dev/xmlns/owner/1' tenant='someone' kind='vm' name='web1'/></metadata>"
        "<memory unit='MiB'>64</memory><os><type arch='x86_64'>hvm</type></os></domain>"
    )
    conn.defineXML(owned_by_other)
    result = run_module("vm", vm_args(uri, tenant, blank_image, lan))
    assert result["failed"] and "belongs to tenant 'someone'" in result["msg"]
    deleted = run_module("vm", {"uri": uri, "tenant": tenant, "name": "web1", "state": "absent"})
    assert deleted["failed"] and "belongs to tenant 'someone'" in deleted["msg"]
    conn.lookupByName(f"{tenant}_web1").undefine()
    conn.defineXML(
        f"<domain type='qemu'><name>{tenant}_web1</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )
    nobody = run_module("vm", {"uri": uri, "tenant": tenant, "name": "web1", "state": "absent"})
    assert nobody["failed"] and "not created by vce.kvm" in nobody["msg"]
    assert domain(conn, f"{tenant}_web1") is not None
