"""The Pulumi provider over its real gRPC protocol: the plugin started as the CLI starts it,
every step read back from the private libvirtd and the ledger."""

from __future__ import annotations

import json

import grpc
import libvirt
import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.tenant import run_quota
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import runs, usage_intervals
from pulumi.runtime.proto import provider_pb2

from tests.support.ledger import forget_stores
from tests.support.pulumi_plugin import (
    SECRET_SIG,
    SIG_KEY,
    UNKNOWN,
    running_plugin,
    secret,
    struct,
    urn,
)

pytestmark = pytest.mark.integration
VM = "vce:index:Vm"
DIFF_SOME = provider_pb2.DiffResponse.DIFF_SOME
DIFF_NONE = provider_pb2.DiffResponse.DIFF_NONE


@pytest.fixture
def plugin(uri, tenant, ledger_url):
    with running_plugin() as running:
        running.configure(
            {
                "tenant": tenant,
                "ledgerUrl": ledger_url,
                "zones": json.dumps({"zone-a": {"uri": uri}}),
            }
        )
        yield running
    assert running.process.poll() is not None  # no plugin process left behind


def vm_inputs(image: str, **extra) -> dict:
    return {
        "memoryMib": 128,
        "state": "stopped",
        "bootDisk": {"image": image, "sizeGib": 1},
        **extra,
    }


def domain(conn, tenant: str, name: str):
    try:
        return conn.lookupByName(f"{tenant}_{name}")
    except libvirt.libvirtError:
        return None


def test_check_config_names_the_bad_setting(uri, tenant, ledger_url):
    with running_plugin() as plugin:
        response = plugin.stub.CheckConfig(
            provider_pb2.CheckRequest(
                urn=urn("pulumi:providers:vce", "default"),
                news=struct({"tenant": "Bad Name", "zones": {"zone-a": {"uri": uri}}}),
            )
        )
        assert [(f.property, f.reason[:12]) for f in response.failures] == [
            ("tenant", "invalid name")
        ]
        with pytest.raises(grpc.RpcError) as raised:
            plugin.configure({"tenant": tenant, "zones": json.dumps({"zone-a": {}})})
        assert "zones.zone-a.uri: the libvirt URI" in raised.value.details()
        assert "Traceback" not in raised.value.details()


def test_a_vm_from_check_to_delete(plugin, conn, tenant, ledger_url, blank_image):
    vm = urn(VM, "web")
    inputs, failures = plugin.check(
        vm, vm_inputs(blank_image, cloudInit={"userData": secret("#cloud-config\n")})
    )
    assert failures == []
    assert inputs["name"] == "web" and inputs["vcpus"] == 1 and inputs["state"] == "stopped"
    assert inputs["cloudInit"]["userData"] == secret("#cloud-config\n")

    resource_id, preview = plugin.create(vm, inputs, preview=True)
    assert resource_id == "" and preview["libvirtName"] == UNKNOWN
    assert domain(conn, tenant, "web") is None  # a preview creates nothing

    resource_id, created = plugin.create(vm, inputs)
    assert resource_id == "zone-a/web"
    dom = domain(conn, tenant, "web")
    assert dom is not None and dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG) == 1
    assert created["libvirtName"] == f"{tenant}_web" and created["powerState"] == "shutoff"
    assert created["cloudInit"]["userData"][SIG_KEY] == SECRET_SIG  # still secret

    # Unchanged: Diff says so, and Read gives the same inputs back.
    assert plugin.diff(vm, resource_id, created, inputs).changes == DIFF_NONE
    read_id, read_state, read_inputs = plugin.read(vm, resource_id, created, inputs)
    assert read_id == resource_id and read_inputs["vcpus"] == 1
    assert read_state["libvirtName"] == created["libvirtName"]

    # Drift made outside Pulumi shows in refresh, then as a diff of the declared inputs.
    dom.setVcpusFlags(2, libvirt.VIR_DOMAIN_AFFECT_CONFIG | libvirt.VIR_DOMAIN_VCPU_MAXIMUM)
    dom.setVcpusFlags(2, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
    _id, drifted, drifted_inputs = plugin.read(vm, resource_id, created, inputs)
    assert drifted_inputs["vcpus"] == 2 and "maxVcpus" not in drifted_inputs
    diff = plugin.diff(vm, resource_id, drifted, inputs)
    assert diff.changes == DIFF_SOME and list(diff.diffs) == ["vcpus"]
    assert diff.detailedDiff["vcpus"].kind == provider_pb2.PropertyDiff.UPDATE

    # Update: a preview changes nothing, the update does.
    grown = {**inputs, "memoryMib": 192}
    plugin.update(vm, resource_id, drifted, grown, preview=True)
    assert dom.maxMemory() == 128 * 1024
    updated = plugin.update(vm, resource_id, drifted, grown)
    assert dom.maxMemory() == 192 * 1024 and updated["memoryMib"] == 192
    assert dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG) == 1  # declared again

    # A new base image replaces the VM (its name is its identity: delete first).
    rebased = {**grown, "bootDisk": {**grown["bootDisk"], "image": "other-image"}}
    diff = plugin.diff(vm, resource_id, updated, rebased)
    assert list(diff.replaces) == ["bootDisk.image"] and diff.deleteBeforeReplace
    assert diff.detailedDiff["bootDisk.image"].kind == provider_pb2.PropertyDiff.UPDATE_REPLACE

    plugin.delete(vm, resource_id, updated)
    assert domain(conn, tenant, "web") is None
    gone_id, _props, _inputs = plugin.read(vm, resource_id, updated, grown)
    assert gone_id == ""

    # The ledger has the run, as an Ansible run would have written it, and the VM's usage.
    forget_stores()
    engine = sa.create_engine(ledger_url)
    with engine.connect() as connection:
        sources = {row.source for row in connection.execute(sa.select(runs))}
        states = [
            row.state
            for row in connection.execute(
                sa.select(usage_intervals)
                .where(usage_intervals.c.tenant == tenant, usage_intervals.c.name == "web")
                .order_by(usage_intervals.c.started_at)
            )
        ]
    engine.dispose()
    assert "pulumi" in sources
    assert states[0] == "stopped" and states[-1] == "absent"


def test_import_reads_a_network_and_a_disk_by_id(plugin, tenant, subnet):
    network = urn("vce:index:Network", "lan")
    inputs, failures = plugin.check(network, {"cidr": f"{subnet}.0/24", "mode": "isolated"})
    assert failures == []
    network_id, _state = plugin.create(network, inputs)
    disk = urn("vce:index:Disk", "data")
    disk_inputs, failures = plugin.check(disk, {"sizeGib": 1})
    disk_id, _state = plugin.create(disk, disk_inputs)

    # `pulumi import` sends the id alone.
    found, state, imported = plugin.read(network, network_id)
    assert found == "zone-a/lan"
    assert imported["cidr"] == f"{subnet}.0/24" and imported["mode"] == "isolated"
    assert state["libvirtName"] == f"{tenant}_lan"
    found, _state, imported = plugin.read(disk, disk_id)
    assert found == "zone-a/data" and imported["sizeGib"] == 1 and imported["format"] == "qcow2"

    _id, _state, missing = plugin.read(disk, "zone-a/nothing")
    assert _id == "" and missing == {}
    with pytest.raises(grpc.RpcError) as raised:
        plugin.read(disk, "zone-b/data")
    assert "unknown zone 'zone-b'" in raised.value.details()


def test_bad_input_gives_property_scoped_failures(plugin, tenant, blank_image):
    vm = urn(VM, "web")
    _inputs, failures = plugin.check(
        vm, {"vcpus": 1.5, "memoryMib": "lots", "bootDisk": {"sizeGib": 1}, "colour": "red"}
    )
    assert dict(failures) == {
        "colour": dict(failures)["colour"],
        "vcpus": "must be an integer, got number 1.5",
        "memoryMib": "must be an integer, got string 'lots'",
        "bootDisk.image": "is required",
    }
    _inputs, failures = plugin.check(vm, vm_inputs(blank_image, zone="zone-b"))
    assert failures == [("zone", "unknown zone 'zone-b'; the provider has zone-a")]
    _inputs, failures = plugin.check(
        vm, vm_inputs(blank_image, nics=[{"network": "lan", "mac": "x"}])
    )
    assert failures and failures[0][0] == "nics[0].mac"


def test_another_owners_object_is_refused_without_a_traceback(plugin, conn, tenant, blank_image):
    """A domain with the tenant's prefix that the engine did not create (no ownership
    metadata) belongs to nobody: the provider refuses to take it over."""
    conn.defineXML(
        f"<domain type='qemu'><name>{tenant}_intruder</name><memory unit='MiB'>64</memory>"
        "<os><type arch='x86_64'>hvm</type></os></domain>"
    )
    vm = urn(VM, "intruder")
    inputs, _failures = plugin.check(vm, vm_inputs(blank_image))
    with pytest.raises(grpc.RpcError) as raised:
        plugin.create(vm, inputs)
    assert "intruder" in raised.value.details() and "Traceback" not in raised.value.details()
    assert 'File "' not in raised.value.details()


def test_quota_breaches_stop_the_preview(plugin, tenant, ledger_url, blank_image):
    run_quota({"ledger_url": ledger_url, "tenant": tenant, "quotas": {"vms": 2}})
    checked = []
    for name in ("a", "b", "c"):
        _inputs, failures = plugin.check(urn(VM, name), vm_inputs(blank_image))
        checked.append(failures)
    # Each checked VM counts for the next: the third of a new stack is over the quota.
    assert checked[0] == [] and checked[1] == []
    assert checked[2][0][0] == "name" and "vms (VMs): limit 2, used 2" in checked[2][0][1]
