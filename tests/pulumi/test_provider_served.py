"""The whole provider against the real control plane app in this process (its action queue,
the engine, libvirt's test driver): what Pulumi's Create, Read, Diff, Update, Delete and
Invoke do, read back from libvirt after each step."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import hosts
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from pulumi_resource_vce import client as client_module
from pulumi_resource_vce.adapter import UNKNOWN
from pulumi_resource_vce.provider import ProviderError
from vce_server.errors import HOST_RETRY_AFTER

from tests.pulumi.served import Served, plain, run
from tests.support.app import IMAGE, ZONE
from tests.support.server import token_secret

VM = {
    "name": "web",
    "state": "stopped",
    "vcpus": 1,
    "memoryMib": 128,
    "bootDisk": {"image": IMAGE, "sizeGib": 1},
    "allowRestart": False,
    "shutdownTimeout": 60,
}
NETWORK = {"name": "lan", "cidr": "10.40.0.0/24", "mode": "nat", "allowReplace": False}
DISK = {"name": "data", "sizeGib": 1, "pool": "default", "format": "qcow2"}


def memory_mib(served: Served, tenant: str, name: str) -> int:
    root = ET.fromstring(served.domain(tenant, name).XMLDesc(0))
    return int(root.findtext("memory")) // 1024


def set_memory(served: Served, tenant: str, name: str, mib: int) -> None:
    """The domain changed behind the control plane's back (drift)."""
    root = ET.fromstring(served.domain(tenant, name).XMLDesc(0))
    for tag in ("memory", "currentMemory"):
        element = root.find(tag)
        element.text, element.attrib["unit"] = str(mib * 1024), "KiB"
    served.libvirt().defineXML(ET.tostring(root, encoding="unicode"))


def test_a_vm_created_read_drifted_updated_and_deleted(served):
    served.tenant("acme")

    async def scenario() -> None:
        acme = served.provider("acme")
        preview_id, preview = await acme.create("Vm", "web", VM, preview=True)
        assert preview_id == "" and plain(preview)["powerState"] == UNKNOWN
        assert served.domain("acme", "web") is None  # a preview changes nothing

        vm_id, state = await acme.create("Vm", "web", VM)
        state = plain(state)
        assert vm_id == f"{ZONE}/web"
        assert state["powerState"] == "shutoff" and state["nicAddresses"] == []
        assert memory_mib(served, "acme", "web") == 128

        found_id, live, inputs = await acme.read("Vm", "web", vm_id, state, VM)
        assert found_id == vm_id and inputs == VM  # the declared inputs, read back
        assert not (await acme.diff("Vm", "web", vm_id, live, VM)).changes

        set_memory(served, "acme", "web", 256)
        _id, drifted, inputs = await acme.read("Vm", "web", vm_id, live, VM)
        assert inputs["memoryMib"] == 256 and drifted["memoryMib"] == 256
        change = await acme.diff("Vm", "web", vm_id, drifted, VM)
        assert list(change.detailed_diff) == ["memoryMib"] and change.replaces == []

        grown = {**VM, "vcpus": 2}
        updated = plain(await acme.update("Vm", "web", vm_id, drifted, grown))
        assert updated["vcpus"] == 2 and updated["memoryMib"] == 128
        assert memory_mib(served, "acme", "web") == 128
        assert served.domain("acme", "web").vcpusFlags(0) == 2

        await acme.close()

    run(scenario())


def volumes(served: Served) -> list[str]:
    pool = served.libvirt().storagePoolLookupByName("default")
    pool.refresh(0)
    return sorted(pool.listVolumes())


def test_a_disk_deleted_is_gone_and_deleting_it_again_is_no_error(served):
    # (The test driver cannot undefine a domain with the engine's flags: VMs are deleted in
    # tests/server/test_pulumi_provider.py, on a real libvirtd.)
    served.tenant("acme")

    async def scenario() -> None:
        acme = served.provider("acme")
        disk_id, state = await acme.create("Disk", "data", DISK)
        assert disk_id == f"{ZONE}/data" and plain(state)["volume"] in volumes(served)
        await acme.delete("Disk", "data", disk_id, plain(state))
        assert volumes(served) == []
        await acme.delete("Disk", "data", disk_id, plain(state))  # gone already: nothing to do
        assert await acme.read("Disk", "data", disk_id, plain(state), DISK) == (None, {}, {})
        await acme.close()

    run(scenario())


def test_import_reads_an_object_by_id_alone(served):
    served.tenant("acme")

    async def scenario() -> None:
        acme = served.provider("acme")
        await acme.create("Network", "lan", NETWORK)
        disk_id, _state = await acme.create("Disk", "data", DISK)
        fresh = served.provider("acme")  # `pulumi import`: no state, no inputs
        found_id, state, inputs = await fresh.read("Disk", "data", disk_id)
        assert found_id == f"{ZONE}/data"
        assert inputs == {"name": "data", "zone": ZONE, "sizeGib": 1, "pool": "default",
                          "format": "qcow2"}  # fmt: skip
        assert state["volume"] and "path" not in state
        # A program that names no zone (the only one) imports it without a replacement.
        assert not (await fresh.diff("Disk", "data", disk_id, state, DISK)).changes
        _id, state, inputs = await fresh.read("Network", "lan", f"{ZONE}/lan")
        assert inputs["cidr"] == "10.40.0.0/24" and state["active"] is True
        # `pulumi import` writes the program from what Read gives: no change to make.
        assert not (await fresh.diff("Network", "lan", f"{ZONE}/lan", state, inputs)).changes
        with pytest.raises(ProviderError, match=r"expected <zone>/<name>, got 'lan'"):
            await fresh.read("Network", "lan", "lan")
        for tenant in (acme, fresh):
            await tenant.close()

    run(scenario())


def test_a_vm_imported_into_the_program_that_made_it_has_nothing_to_change(served):
    """The `import` resource option: Read by id, Check against the read inputs, Diff; the
    defaults and empty lists the program leaves out are no change."""
    served.tenant("acme")
    program = {"memoryMib": 128, "state": "stopped", "bootDisk": {"image": IMAGE, "sizeGib": 1}}

    async def scenario() -> None:
        acme = served.provider("acme")
        checked, _failures = await acme.check("Vm", "web", program)
        vm_id, _state = await acme.create("Vm", "web", checked)
        importer = served.provider("acme")
        _id, state, inputs = await importer.read("Vm", "web", vm_id)
        checked, failures = await importer.check("Vm", "web", program, inputs)
        assert failures == []
        answer = await importer.diff("Vm", "web", vm_id, state, checked)
        assert not answer.changes, answer.detailed_diff
        for tenant in (acme, importer):
            await tenant.close()

    run(scenario())


def test_a_tenant_never_reaches_another_tenants_objects(served):
    served.tenant("acme")
    served.tenant("other")

    async def scenario() -> None:
        acme, other = served.provider("acme"), served.provider("other")
        vm_id, state = await acme.create("Vm", "web", VM)
        before = served.domain("acme", "web").XMLDesc(0)
        assert await other.read("Vm", "web", vm_id, plain(state), VM) == (None, {}, {})
        assert await other.read("Vm", "web", vm_id) == (None, {}, {})  # import
        await other.delete("Vm", "web", vm_id, plain(state))  # not other's: gone for it
        # An update by name makes other's own VM of that name, never touches acme's.
        await other.update("Vm", "web", vm_id, plain(state), {**VM, "memoryMib": 64})
        assert served.domain("acme", "web").XMLDesc(0) == before
        assert memory_mib(served, "other", "web") == 64
        for tenant in (acme, other):
            await tenant.close()

    run(scenario())


def test_a_failed_action_is_the_users_error_in_the_programs_spelling(served):
    served.tenant("acme")

    async def scenario() -> None:
        acme = served.provider("acme")
        missing = {**VM, "bootDisk": {"image": "no-such-image", "sizeGib": 1}}
        with pytest.raises(ProviderError) as caught:
            await acme.create("Vm", "web", missing)
        assert str(caught.value).startswith("vce:index:Vm web: bootDisk.image: ")
        assert "boot_disk" not in str(caught.value) and "Traceback" not in str(caught.value)
        assert served.domain("acme", "web") is None
        await acme.close()

    run(scenario())


def test_a_refused_token_is_named_and_never_shown(served):
    token = served.tenant("acme")
    wrong = token[:-4] + ("aaaa" if not token.endswith("aaaa") else "bbbb")

    async def scenario() -> None:
        acme = served.provider("acme", wrong)
        with pytest.raises(ProviderError) as caught:
            await acme.create("Network", "lan", NETWORK)
        assert "the control plane refused the token" in str(caught.value)
        assert "check vce:token" in str(caught.value)
        assert token_secret(wrong) not in str(caught.value)
        await acme.close()

    run(scenario())


def test_quotas_and_images_through_invoke(served):
    served.tenant("acme", vms=3)

    async def scenario() -> None:
        acme = served.provider("acme")
        await acme.create("Vm", "web", VM)
        quotas = await acme.invoke("vce:index:getQuotas", {})
        assert quotas["quotas"]["vms"] == {"limit": 3, "used": 1, "reserved": 0, "unit": ""}
        assert quotas["quotas"]["ram_gib"]["unit"] == "GiB"
        images = await acme.invoke("vce:index:getImages", {})
        [image] = images["images"]
        assert (image["zone"], image["name"], image["format"]) == (ZONE, IMAGE, "qcow2")
        assert image["virtualSize"] == 16 * 1024 * 1024 and len(image["sha256"]) == 64
        assert await acme.invoke("vce:index:getImages", {"zone": "zone-z"}) == {"images": []}
        with pytest.raises(ProviderError, match="unknown function vce:index:getHosts"):
            await acme.invoke("vce:index:getHosts", {})
        await acme.close()

    run(scenario())


def test_check_validates_through_the_api_in_the_programs_spelling(served):
    served.tenant("acme")

    async def scenario() -> None:
        acme = served.provider("acme")
        inputs, failures = await acme.check("Network", "lan", {"cidr": "10.40.0.0/24"})
        assert failures == [] and inputs == {**NETWORK, "name": "lan"}
        _inputs, failures = await acme.check("Network", "lan", {"cidr": "10.40.0.0/33"})
        assert [path for path, _reason in failures] == ["cidr"]
        small = {**VM, "bootDisk": {"image": IMAGE, "sizeGib": 0}}
        _inputs, failures = await acme.check("Vm", "web", small)
        assert [path for path, _reason in failures] == ["bootDisk.sizeGib"]
        _inputs, failures = await acme.check("Vm", "Web", {**VM, "name": "Web"})
        assert [path for path, _reason in failures] == ["name"]
        assert served.domain("acme", "web") is None
        await acme.close()

    run(scenario())


def test_check_counts_the_stack_against_the_quotas(served):
    served.tenant("acme", vms=2, vcpus=5)

    async def scenario() -> None:
        acme = served.provider("acme")
        _inputs, failures = await acme.check("Vm", "big", {**VM, "name": "big", "vcpus": 6})
        [(path, reason)] = failures
        assert path == "vcpus" and reason.startswith("vcpus (vCPUs): limit 5, used 0"), reason
        # A preview of a whole stack: each check counts what the ones before it will add.
        for name in ("a", "b"):
            _inputs, failures = await acme.check("Vm", name, {**VM, "name": name, "vcpus": 2})
            assert failures == [], (name, failures)
        _inputs, failures = await acme.check("Vm", "c", {**VM, "name": "c"})
        [(path, reason)] = failures
        assert path == "name" and reason.startswith("vms ("), reason
        # Checked again with its inputs unchanged, a resource is not counted twice.
        _inputs, failures = await acme.check("Vm", "b", {**VM, "name": "b", "vcpus": 2})
        assert failures == []
        await acme.close()

    run(scenario())


def test_the_same_declaration_after_a_delete_is_made_again(served):
    """The second create (and delete) has the first's Idempotency-Key: the server replays
    the ended action, and the provider submits the change again under the next key."""
    served.tenant("acme")

    async def scenario() -> None:
        acme = served.provider("acme")
        disk_id, state = await acme.create("Disk", "data", DISK)
        await acme.delete("Disk", "data", disk_id, plain(state))
        assert volumes(served) == []
        again_id, state = await acme.create("Disk", "data", DISK)
        assert again_id == disk_id and volumes(served) == [plain(state)["volume"]]
        await acme.delete("Disk", "data", disk_id, plain(state))  # the first delete's key too
        assert volumes(served) == []
        await acme.close()

    run(scenario())


def test_a_change_the_quotas_cannot_hold_fails_clearly(served):
    """Applied without a Check first (a Check elsewhere, then the quotas filled): the
    action's refusal on the field, in the program's spelling."""
    served.tenant("acme", vms=0)

    async def scenario() -> None:
        acme = served.provider("acme")
        with pytest.raises(ProviderError) as caught:
            await acme.create("Vm", "web", VM)
        message = str(caught.value)
        assert message.startswith("vce:index:Vm web: ") and "vms (" in message, message
        assert "Traceback" not in message and served.domain("acme", "web") is None
        await acme.close()

    run(scenario())


def point_host_at(served: Served, uri: str) -> None:
    """The zone's host record names `uri` (the engine reaches the host there from now on)."""
    with Ledger.open(served.ledger_url).store.write() as connection:
        connection.execute(sa.update(hosts).where(hosts.c.zone == ZONE).values(uri=uri))


def test_a_host_that_cannot_be_reached_is_waited_for_as_the_server_says(
    served, monkeypatch, tmp_path: Path
):
    """The server answers 503 `host_unavailable` with Retry-After while the zone's host cannot
    be reached (its record names a socket no daemon listens on): the provider waits that long
    and asks again, a bounded number of times, and tells the outage, scrubbed, at the end."""
    served.tenant("acme")
    gone = f"qemu:///system?socket={tmp_path}/gone/libvirt-sock"
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        """The provider's wait, recorded and not waited for; the host is back after two."""
        waits.append(seconds)
        if len(waits) == 2:
            point_host_at(served, served.uri)
        await real_sleep(0)

    async def scenario() -> None:
        acme = served.provider("acme")
        lan_id, state = await acme.create("Network", "lan", NETWORK)
        point_host_at(served, gone)
        monkeypatch.setattr(client_module.asyncio, "sleep", sleep)
        found_id, _live, inputs = await acme.read("Network", "lan", lan_id, plain(state), NETWORK)
        assert (found_id, inputs) == (lan_id, NETWORK)
        assert waits == [float(HOST_RETRY_AFTER)] * 2

        waits.clear()
        point_host_at(served, gone)
        monkeypatch.setattr(client_module, "RETRY_TRIES", 1)  # for good, this time
        with pytest.raises(ProviderError) as caught:
            await acme.read("Network", "lan", lan_id, plain(state), NETWORK)
        assert waits == [float(HOST_RETRY_AFTER)]
        message = str(caught.value)
        assert message.startswith("vce:index:Network lan: the zone's host cannot be reached now")
        assert "zone-a" in message and str(tmp_path) not in message and "qemu" not in message
        point_host_at(served, served.uri)
        await acme.close()

    run(scenario())
