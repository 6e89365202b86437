"""vce.kvm.network against a real libvirtd: check, apply, read back, idempotence, drift, absent;
what a tenant must not take (another tenant's range, the host's own, the whole space, an
uplink of its choosing) refused with nothing made."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator

import libvirt
import pytest
from ansible_collections.vce.kvm.plugins.module_utils.host import xml

from tests.support.ansible_runner import run_module
from tests.support.ledger import register
from tools.cleanup import remove_prefixed

pytestmark = pytest.mark.integration


def read_network(conn, name):
    try:
        net = conn.networkLookupByName(name)
    except libvirt.libvirtError:
        return None
    return xml.read_network(
        net.XMLDesc(libvirt.VIR_NETWORK_XML_INACTIVE), net.isActive(), net.autostart()
    )


def lease_args(uri, tenant, subnet, **extra):
    args = {
        "uri": uri,
        "tenant": tenant,
        "name": "lan",
        "cidr": f"{subnet}.0/24",
        "mode": "isolated",
        "static_leases": [{"mac": "52:54:00:00:aa:01", "ip": f"{subnet}.5", "hostname": "printer"}],
    }
    args.update(extra)
    return args


def test_network_lifecycle(uri, conn, tenant, subnet):
    args = lease_args(uri, tenant, subnet)
    name = f"{tenant}_lan"

    checked = run_module("network", args, check=True, diff=True)
    assert checked["changed"] is True
    assert checked["plan"][0]["action"] == "create"
    assert "network/lan" in checked["diff"]["after"]
    assert read_network(conn, name) is None

    created = run_module("network", args)
    assert created["changed"] is True, created
    state = read_network(conn, name)
    assert state.active and state.autostart
    assert str(state.cidr) == f"{subnet}.0/24"
    assert state.mode == "isolated"
    assert (
        state.owner.tenant == tenant and state.owner.kind == "network" and state.owner.name == "lan"
    )
    assert str(state.hosts["52:54:00:00:aa:01"].ip) == f"{subnet}.5"
    assert created["network"]["libvirt_name"] == name

    again = run_module("network", args)
    assert again["changed"] is False, again["plan"]

    # Out of band: someone deletes the static lease from the running network.
    net = conn.networkLookupByName(name)
    host_xml = f"<host mac='52:54:00:00:aa:01' ip='{subnet}.5' name='printer'/>"
    net.update(
        libvirt.VIR_NETWORK_UPDATE_COMMAND_DELETE,
        libvirt.VIR_NETWORK_SECTION_IP_DHCP_HOST,
        -1,
        host_xml,
        libvirt.VIR_NETWORK_UPDATE_AFFECT_LIVE | libvirt.VIR_NETWORK_UPDATE_AFFECT_CONFIG,
    )
    assert "52:54:00:00:aa:01" not in read_network(conn, name).hosts
    drift = run_module("network", args, check=True)
    assert drift["changed"] is True
    assert drift["plan"][0]["field"] == "lease 52:54:00:00:aa:01 on lan"
    fixed = run_module("network", args)
    assert fixed["changed"] is True
    assert "52:54:00:00:aa:01" in read_network(conn, name).hosts
    assert run_module("network", args)["changed"] is False

    # DHCP range changes live, without replacing the network.
    bridge_before = read_network(conn, name).bridge
    ranged = run_module(
        "network", {**args, "dhcp_start": f"{subnet}.50", "dhcp_end": f"{subnet}.60"}
    )
    assert ranged["changed"] is True
    state = read_network(conn, name)
    assert (str(state.dhcp_start), str(state.dhcp_end)) == (f"{subnet}.50", f"{subnet}.60")
    assert state.bridge == bridge_before and state.active

    removed = run_module("network", {**args, "state": "absent"})
    assert removed["changed"] is True
    assert read_network(conn, name) is None
    assert run_module("network", {**args, "state": "absent"})["changed"] is False


def test_mode_change_needs_allow_replace(uri, conn, tenant, subnet):
    args = lease_args(uri, tenant, subnet)
    run_module("network", args)
    refused = run_module("network", {**args, "mode": "nat"})
    assert refused["failed"] is True
    assert refused["field"] == "mode"
    assert "allow_replace" in refused["msg"]
    assert read_network(conn, f"{tenant}_lan").mode == "isolated"
    replaced = run_module("network", {**args, "mode": "nat", "allow_replace": True})
    assert replaced["changed"] is True
    assert replaced["plan"][0]["class"] == "replace"
    assert read_network(conn, f"{tenant}_lan").mode == "nat"


def test_bad_network_input_changes_nothing(uri, conn, tenant, subnet):
    run_module("network", lease_args(uri, tenant, subnet))
    overlapping = run_module(
        "network", {"uri": uri, "tenant": tenant, "name": "other", "cidr": f"{subnet}.128/25"}
    )
    assert overlapping["failed"] is True
    assert overlapping["field"] == "cidr"
    assert "overlaps network 'lan'" in overlapping["msg"]
    outside = run_module(
        "network",
        lease_args(
            uri, tenant, subnet, static_leases=[{"mac": "52:54:00:00:aa:02", "ip": "10.99.99.5"}]
        ),
    )
    assert outside["failed"] is True
    assert outside["field"] == "static_leases[0].ip"
    assert "outside the network's CIDR" in outside["msg"]
    bad_name = run_module("network", {**lease_args(uri, tenant, subnet), "name": "lan<&'>"})
    assert bad_name["failed"] is True and bad_name["field"] == "name"
    assert "Traceback" not in bad_name["msg"]
    names = {n.name() for n in conn.listAllNetworks(0) if n.name().startswith(tenant)}
    assert names == {f"{tenant}_lan"}


def test_network_of_nobody_is_not_touched(uri, conn, tenant, subnet):
    xml = f"<network><name>{tenant}_lan</name><ip address='{subnet}.1' prefix='24'/></network>"
    net = conn.networkDefineXML(xml)
    try:
        result = run_module("network", lease_args(uri, tenant, subnet))
        assert result["failed"] is True
        assert "not created by vce.kvm" in result["msg"]
        deleted = run_module("network", {**lease_args(uri, tenant, subnet), "state": "absent"})
        assert deleted["failed"] is True
        assert conn.networkLookupByName(f"{tenant}_lan").XMLDesc(0).count("<host") == 0
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            net.undefine()


@pytest.fixture
def rival(conn, tenant, ledger_url) -> Iterator[str]:
    """A second tenant on the same host; its objects removed afterwards."""
    name = f"{tenant}r"
    register(ledger_url, name)
    try:
        yield name
    finally:
        remove_prefixed(conn, f"{name}_")


@pytest.fixture
def host_address() -> Iterator[str]:
    """A private /24 on a link without ports (a bridge) of this machine, which is the private
    libvirtd's host, given as '10.216.N'."""
    link = f"vced{os.getpid() % 100000}"
    prefix = f"10.216.{os.getpid() % 250}"
    subprocess.run(["ip", "link", "add", link, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "addr", "add", f"{prefix}.1/24", "dev", link], check=True)
        yield prefix
    finally:
        subprocess.run(["ip", "link", "del", link], check=False)


def owned_networks(conn, tenant: str) -> set[str]:
    return {n.name() for n in conn.listAllNetworks(0) if n.name().startswith(f"{tenant}_")}


def test_what_a_tenant_must_not_take_is_refused_and_nothing_is_made(
    uri, conn, tenant, rival, subnet, host_address
):
    assert run_module("network", lease_args(uri, tenant, subnet))["changed"] is True
    base = {"uri": uri, "tenant": rival, "name": "lan"}
    refused = {
        "another tenant's range": {**base, "cidr": f"{subnet}.0/25"},
        "the host's own address": {**base, "cidr": f"{host_address}.0/24"},
        "the whole space": {**base, "cidr": "0.0.0.0/0"},
        "loopback": {**base, "cidr": "127.0.0.0/24"},
    }
    for what, args in refused.items():
        for check in (True, False):
            result = run_module("network", args, check=check)
            assert result["failed"] is True, (what, result)
            assert result["field"] == "cidr", (what, result)
            assert tenant not in result["msg"] and "Traceback" not in result["msg"], what
    taken = run_module("network", refused["another tenant's range"])
    assert "overlaps a network already in use on this host" in taken["msg"]
    # The module has no uplink option; the environment's networks refuse one by name.
    chosen = run_module(
        "network", {**base, "cidr": "10.217.0.0/24", "mode": "routed", "uplink": "lo"}
    )
    assert chosen["failed"] is True and "uplink" in chosen["msg"]
    declared = {
        "uri": uri,
        "tenant": rival,
        "networks": [{"name": "lan", "cidr": "10.217.0.0/24", "mode": "routed", "uplink": "lo"}],
    }
    environment = run_module("environment", declared)
    assert environment["failed"] is True and environment["field"] == "networks[0].uplink"
    assert "a tenant does not choose the uplink" in environment["msg"]
    assert owned_networks(conn, rival) == set()
    assert owned_networks(conn, tenant) == {f"{tenant}_lan"}
