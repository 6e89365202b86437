"""The Pulumi provider as a customer runs it: the plugin started as the Pulumi CLI starts it,
configured with nothing but the control plane's URL and a tenant's token, against a real
`vce serve` on loopback and the private libvirtd. Every step is read back from libvirt; the
token and cloud-init user data never leave a response in clear."""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import libvirt
import pytest
from google.protobuf import json_format
from pulumi.runtime.proto import engine_pb2, provider_pb2

from tests.server.conftest import Fleet
from tests.support.pulumi_plugin import (
    NO_ENGINE,
    SECRET_SIG,
    SIG_KEY,
    UNKNOWN,
    Plugin,
    running_engine,
    running_plugin,
    secret,
    urn,
)
from tests.support.server import Server, create_token, token_secret, volume_xml

pytestmark = pytest.mark.server
VM = "vce:index:Vm"
DISK = "vce:index:Disk"
NETWORK = "vce:index:Network"
SCHEDULE = "vce:index:BackupSchedule"
DIFF_SOME = provider_pb2.DiffResponse.DIFF_SOME
DIFF_NONE = provider_pb2.DiffResponse.DIFF_NONE
USER_DATA = "#cloud-config\nwrite_files: [{path: /etc/motd, content: kept-secret-8f3a}]\n"


@contextlib.contextmanager
def connected(server: Server, token: str, engine: str = NO_ENGINE) -> Iterator[Plugin]:
    with running_plugin(engine=engine) as plugin:
        plugin.connect(server.url, token)
        yield plugin
    assert plugin.process.poll() is not None  # no plugin process left behind


@pytest.fixture
def tenant_plugin(
    fleet: Fleet, server: Server, new_tenant: Callable[..., str]
) -> Iterator[Callable[..., tuple[str, str, Plugin]]]:
    """A new tenant (quotas as given), its token and a plugin configured with it."""
    with contextlib.ExitStack() as stack:

        def make(**quotas: int) -> tuple[str, str, Plugin]:
            tenant = new_tenant(fleet, **quotas)
            token = create_token(fleet.ledger_url, tenant)
            return tenant, token, stack.enter_context(connected(server, token))

        yield make


def vm_inputs(fleet: Fleet, **extra: Any) -> dict[str, Any]:
    return {
        "state": "stopped",
        "memoryMib": 64,
        "bootDisk": {"image": fleet.image, "sizeGib": 1},
        **extra,
    }


def domain(conn: libvirt.virConnect, tenant: str, name: str) -> libvirt.virDomain | None:
    try:
        return conn.lookupByName(f"{tenant}_{name}")
    except libvirt.libvirtError:
        return None


def network(conn: libvirt.virConnect, tenant: str, name: str) -> libvirt.virNetwork | None:
    try:
        return conn.networkLookupByName(f"{tenant}_{name}")
    except libvirt.libvirtError:
        return None


def memory_mib(dom: libvirt.virDomain) -> int:
    return int(ET.fromstring(dom.XMLDesc(0)).findtext("memory")) // 1024


def set_memory(conn: libvirt.virConnect, dom: libvirt.virDomain, mib: int) -> None:
    """The domain changed in libvirt behind the control plane's back (drift)."""
    root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    for tag in ("memory", "currentMemory"):
        element = root.find(tag)
        element.text, element.attrib["unit"] = str(mib * 1024), "KiB"
    conn.defineXML(ET.tostring(root, encoding="unicode"))


def failure_details(call: Callable[[], Any]) -> str:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    details = raised.value.details()
    assert "Traceback" not in details, details
    return details


# -- configuration ------------------------------------------------------------------------------


def test_check_config_and_configure_name_the_field(fleet, server, new_tenant):
    token = create_token(fleet.ledger_url, new_tenant(fleet))
    with running_plugin() as plugin:
        cases = [
            ({}, "endpoint", "is required (set vce:endpoint or VCE_ENDPOINT)"),
            (
                {"endpoint": server.url},
                "token",
                "is required (set vce:token as a secret or VCE_TOKEN)",
            ),
            ({"endpoint": "127.0.0.1:8080", "token": token}, "endpoint", "must be an http(s) URL"),
            ({"endpoint": server.url, "token": token + " x"}, "token", "must be an API token"),
            ({"endpoint": server.url, "token": token, "tenant": "x"}, "tenant", "unknown property"),
        ]
        for news, field, reason in cases:
            response = plugin.check_config(news)
            assert [f.property for f in response.failures] == [field], news
            assert response.failures[0].reason.startswith(reason), response.failures[0].reason
        good = plugin.check_config({"endpoint": server.url, "token": token})
        assert not good.failures
        returned = json_format.MessageToDict(good.inputs)
        assert returned["token"] == secret(token)  # a secret from the program to the state
        assert returned["endpoint"] == server.url

        details = failure_details(lambda: plugin.configure({"endpoint": server.url}))
        assert details.startswith("vce provider: token: is required")
        details = failure_details(lambda: plugin.connect("ftp://x", token))
        assert "endpoint: must be an http(s) URL" in details and token_secret(token) not in details
        assert token_secret(token) not in plugin.close()


def test_the_environment_configures_a_plugin(fleet, server, new_tenant):
    token = create_token(fleet.ledger_url, new_tenant(fleet))
    with running_plugin({"VCE_ENDPOINT": server.url, "VCE_TOKEN": token}) as plugin:
        assert not plugin.check_config({}).failures
        plugin.configure({})
        images, failures = plugin.invoke("vce:index:getImages")
        assert failures == []
        assert [(i["zone"], i["name"]) for i in images["images"]] == [(fleet.zone, fleet.image)]


def test_a_wrong_token_is_refused_clearly(fleet, server, new_tenant):
    token = create_token(fleet.ledger_url, new_tenant(fleet))
    wrong = token[:-6] + ("x" * 6 if not token.endswith("x" * 6) else "y" * 6)
    with connected(server, wrong) as plugin:
        details = failure_details(lambda: plugin.invoke("vce:index:getQuotas"))
        assert "the control plane refused the token" in details and "check vce:token" in details
        assert token_secret(wrong) not in details


# -- a whole lifecycle --------------------------------------------------------------------------


def leaks(value: Any, text: str) -> list[str]:
    """Where `text` shows in clear in a response: anywhere but inside a secret's wrapper."""
    if isinstance(value, dict):
        if value.get(SIG_KEY) == SECRET_SIG:
            return []
        return [where for item in value.values() for where in leaks(item, text)]
    if isinstance(value, list):
        return [where for item in value for where in leaks(item, text)]
    return [repr(value)[:80]] if isinstance(value, str) and text in value else []


def response_values(response: Any) -> Any:
    if isinstance(response, str):  # an error's details, as the user reads them
        return response
    return json_format.MessageToDict(response)


def test_a_stack_from_check_to_delete(fleet, server, conn, tenant_plugin, subnet):
    tenant, token, plugin = tenant_plugin()
    lan_urn, data_urn, web_urn = urn(NETWORK, "lan"), urn(DISK, "data"), urn(VM, "web")
    assert not plugin.check_config({"endpoint": server.url, "token": token}).failures

    # Check: the server's validation and defaults; user data comes back secret.
    lan, failures = plugin.check(lan_urn, {"cidr": f"{subnet}.0/24"})
    assert failures == [] and lan["name"] == "lan" and lan["mode"] == "nat"
    data, failures = plugin.check(data_urn, {"sizeGib": 1})
    assert failures == [] and data["pool"] == "default"
    web_news = vm_inputs(
        fleet,
        disks=["data"],
        nics=[{"network": "lan"}],
        cloudInit={"hostname": "web", "userData": secret(USER_DATA)},
    )
    web, failures = plugin.check(web_urn, web_news)
    assert failures == []
    assert web["cloudInit"]["userData"] == secret(USER_DATA)

    # Create, previewed: nothing in libvirt, outputs unknown.
    preview_id, preview = plugin.create(web_urn, web, preview=True)
    assert preview_id == "" and preview["powerState"] == UNKNOWN
    assert domain(conn, tenant, "web") is None

    lan_id, lan_state = plugin.create(lan_urn, lan)
    assert lan_id == f"{fleet.zone}/lan" and lan_state["active"] is True
    assert network(conn, tenant, "lan").isActive()
    data_id, data_state = plugin.create(data_urn, data)
    assert data_id == f"{fleet.zone}/data" and data_state["volume"]
    web_id, web_state = plugin.create(web_urn, web)
    assert web_id == f"{fleet.zone}/web"
    assert web_state["powerState"] == "shutoff"
    assert web_state["cloudInit"]["userData"] == secret(USER_DATA)
    [nic] = web_state["nicAddresses"]
    assert nic["network"] == "lan" and nic["mac"].startswith("52:54:00:")
    dom = domain(conn, tenant, "web")
    assert memory_mib(dom) == 64
    assert "data" in dom.XMLDesc(0) and f"{tenant}_lan" in dom.XMLDesc(0)

    # Read, live: the declared inputs as they are; Diff: nothing to do.
    found_id, live, inputs = plugin.read(web_urn, web_id, web_state, web)
    assert found_id == web_id and inputs["memoryMib"] == 64
    assert inputs["cloudInit"]["userData"] == secret(USER_DATA)
    assert plugin.diff(web_urn, web_id, live, web).changes == DIFF_NONE

    # Drift: memory changed in libvirt; Read shows it, Diff wants it back.
    set_memory(conn, dom, 96)
    _id, drifted, inputs = plugin.read(web_urn, web_id, live, web)
    assert inputs["memoryMib"] == 96 and drifted["memoryMib"] == 96
    change = plugin.diff(web_urn, web_id, drifted, web)
    assert change.changes == DIFF_SOME and list(change.detailedDiff) == ["memoryMib"]
    assert not change.replaces

    # Update: back to the program's memory, and two vCPUs.
    grown = {**web, "vcpus": 2}
    updated = plugin.update(web_urn, web_id, drifted, grown)
    assert updated["vcpus"] == 2 and updated["memoryMib"] == 64
    dom = domain(conn, tenant, "web")
    assert memory_mib(dom) == 64 and dom.vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG) == 2

    # Import: a fresh plugin reads the objects by id alone.
    with connected(server, token) as importer:
        _id, imported, inputs = importer.read(urn(DISK, "imported"), data_id)
        assert inputs == {"name": "data", "zone": fleet.zone, "sizeGib": 1, "pool": "default",
                          "format": "qcow2", "attachTo": "web"}  # fmt: skip
        assert plugin.diff(data_urn, data_id, imported, inputs).changes == DIFF_NONE
        _id, _state, inputs = importer.read(urn(VM, "imported"), web_id)
        assert inputs["bootDisk"] == {"image": fleet.image, "sizeGib": 1}
        assert inputs["nics"] == [{"network": "lan", "mac": nic["mac"]}]
        responses = importer.responses

    # Delete, in the order Pulumi deletes dependents first; each read back.
    plugin.delete(web_urn, web_id, updated)
    assert domain(conn, tenant, "web") is None
    assert plugin.read(web_urn, web_id, updated, grown)[0] == ""  # gone
    plugin.delete(data_urn, data_id, data_state)
    pool = conn.storagePoolLookupByName("default")
    pool.refresh(0)
    assert data_state["volume"] not in pool.listVolumes()
    plugin.delete(lan_urn, lan_id, lan_state)
    assert network(conn, tenant, "lan") is None
    plugin.delete(lan_urn, lan_id, lan_state)  # gone already: nothing to do

    # No response of the whole lifecycle shows the token or the user data in clear.
    everything = [response_values(r) for r in [*plugin.responses, *responses]]
    assert len(everything) > 20
    for text in (token_secret(token), USER_DATA, "kept-secret-8f3a"):
        assert [where for value in everything for where in leaks(value, text)] == [], text
    stderr = plugin.close()
    assert token_secret(token) not in stderr and "kept-secret-8f3a" not in stderr


def test_progress_is_shown_beside_the_resource(fleet, server, conn, new_tenant):
    tenant = new_tenant(fleet)
    token = create_token(fleet.ledger_url, tenant)
    web_urn = urn(VM, "web")
    with running_engine() as engine, connected(server, token, engine.address) as plugin:
        web, _failures = plugin.check(web_urn, vm_inputs(fleet))
        web_id, _state = plugin.create(web_urn, web)
    assert domain(conn, tenant, "web") is not None
    shown = [m for m in engine.messages if m.urn == web_urn]
    assert shown and all(m.ephemeral and m.severity == engine_pb2.INFO for m in shown)
    assert shown[-1].message.startswith("vms/web: succeeded"), [m.message for m in shown]
    assert web_id == f"{fleet.zone}/web"


def test_a_disk_attached_by_its_own_attach_to_is_detached_by_its_delete(fleet, conn, tenant_plugin):
    tenant, _token, plugin = tenant_plugin()
    web, _failures = plugin.check(urn(VM, "web"), vm_inputs(fleet))
    plugin.create(urn(VM, "web"), web)
    data, failures = plugin.check(urn(DISK, "data"), {"sizeGib": 1, "attachTo": "web"})
    assert failures == []
    data_id, state = plugin.create(urn(DISK, "data"), data)
    assert state["attachedTo"] == "web"
    assert state["volume"] in domain(conn, tenant, "web").XMLDesc(0)
    plugin.delete(urn(DISK, "data"), data_id, state)
    assert state["volume"] not in domain(conn, tenant, "web").XMLDesc(0)
    pool = conn.storagePoolLookupByName("default")
    pool.refresh(0)
    assert state["volume"] not in pool.listVolumes()


def test_a_backup_schedule_by_its_three_part_id(fleet, server, tenant_plugin):
    _tenant, token, plugin = tenant_plugin()
    web, _failures = plugin.check(urn(VM, "web"), vm_inputs(fleet))
    plugin.create(urn(VM, "web"), web)
    nightly_urn = urn(SCHEDULE, "nightly")
    news = {"vm": "web", "calendar": "*-*-* 02:30", "retention": {"keepDaily": 7}}
    nightly, failures = plugin.check(nightly_urn, news)
    assert failures == []
    nightly_id, state = plugin.create(nightly_urn, nightly)
    assert nightly_id == f"{fleet.zone}/web/nightly"
    assert state["timer"].endswith(".timer") and state["enabled"] is True
    units = fleet.host_dir / "units"
    assert [p.name for p in units.iterdir() if p.name == state["timer"]] == [state["timer"]]
    with connected(server, token) as importer:
        _id, _state, inputs = importer.read(nightly_urn, nightly_id)
        assert (inputs["vm"], inputs["calendar"], inputs["retention"]) == (
            "web", "*-*-* 02:30", {"keepDaily": 7},
        )  # fmt: skip
        assert importer.read(nightly_urn, f"{fleet.zone}/other/nightly") == ("", {}, {})
    plugin.delete(nightly_urn, nightly_id, state)
    assert not (units / state["timer"]).exists()
    assert plugin.read(nightly_urn, nightly_id, state, nightly)[0] == ""


# -- check --------------------------------------------------------------------------------------


def test_check_refuses_what_the_server_would_and_what_the_quotas_cannot_hold(
    fleet, conn, tenant_plugin
):
    tenant, _token, plugin = tenant_plugin(vms=2, vcpus=3)
    _inputs, failures = plugin.check(urn(NETWORK, "lan"), {"cidr": "10.0.0.0/33"})
    assert [path for path, _reason in failures] == ["cidr"]
    small = vm_inputs(fleet, bootDisk={"image": fleet.image, "sizeGib": 0})
    _inputs, failures = plugin.check(urn(VM, "web"), small)
    assert [path for path, _reason in failures] == ["bootDisk.sizeGib"]
    _inputs, failures = plugin.check(urn(VM, "big"), vm_inputs(fleet, vcpus=4))
    [(path, reason)] = failures
    assert path == "vcpus" and reason.startswith("vcpus (vCPUs): limit 3"), reason

    # A preview of a whole stack is refused at the first VM the quotas cannot hold.
    for name in ("a", "b"):
        _inputs, failures = plugin.check(urn(VM, name), vm_inputs(fleet))
        assert failures == [], (name, failures)
    _inputs, failures = plugin.check(urn(VM, "c"), vm_inputs(fleet))
    [(path, reason)] = failures
    assert path == "name" and reason.startswith("vms ("), reason
    assert [d.name() for d in conn.listAllDomains(0) if d.name().startswith(f"{tenant}_")] == []


# -- tenants and operators ------------------------------------------------------------------------


def test_a_tenant_cannot_reach_another_tenants_objects(fleet, server, conn, tenant_plugin):
    owner, _token, plugin = tenant_plugin()
    intruder, _token_b, other = tenant_plugin()
    data, _failures = plugin.check(urn(DISK, "data"), {"sizeGib": 1})
    data_id, data_state = plugin.create(urn(DISK, "data"), data)
    web, _failures = plugin.check(urn(VM, "web"), vm_inputs(fleet))
    web_id, web_state = plugin.create(urn(VM, "web"), web)
    pool = conn.storagePoolLookupByName("default")
    pool.refresh(0)  # libvirt reads the volume's qcow2 header now, as after the calls below
    volume = pool.storageVolLookupByName(data_state["volume"])
    before = (domain(conn, owner, "web").XMLDesc(0), volume_xml(volume))

    assert other.read(urn(VM, "web"), web_id, web_state, web) == ("", {}, {})  # refresh: gone
    assert other.read(urn(VM, "web"), web_id) == ("", {}, {})  # import: nothing to import
    assert other.read(urn(DISK, "data"), data_id) == ("", {}, {})
    other.delete(urn(VM, "web"), web_id, web_state)  # not its own: already gone for it
    other.delete(urn(DISK, "data"), data_id, data_state)
    # A change by name declares the other tenant's own object, never the owner's.
    mine = other.update(urn(VM, "web"), web_id, web_state, {**web, "vcpus": 2})
    assert mine["vcpus"] == 2
    assert domain(conn, intruder, "web").vcpusFlags(libvirt.VIR_DOMAIN_AFFECT_CONFIG) == 2
    pool.refresh(0)
    volume = pool.storageVolLookupByName(data_state["volume"])
    assert (domain(conn, owner, "web").XMLDesc(0), volume_xml(volume)) == before


def test_no_operator_action_is_within_reach(fleet, server, new_tenant):
    operator = create_token(fleet.ledger_url, None)
    with connected(server, operator) as plugin:
        details = failure_details(lambda: plugin.invoke("vce:index:getQuotas"))
        assert details.endswith("an operator has no tenant: use the /v1/operator paths")
        details = failure_details(
            lambda: plugin.create(urn(NETWORK, "lan"), {"name": "lan", "cidr": "10.9.0.0/24"})
        )
        assert "call with a customer's token" in details
    token = create_token(fleet.ledger_url, new_tenant(fleet))
    with connected(server, token) as plugin:
        details = failure_details(lambda: plugin.invoke("vce:index:getHosts"))
        assert details == "vce provider: unknown function vce:index:getHosts"
        details = failure_details(lambda: plugin.check(urn("vce:index:Host", "kvm"), {}))
        assert details == "vce provider: unknown resource type vce:index:Host"


# -- data sources -------------------------------------------------------------------------------


def test_quotas_and_images_through_invoke(fleet, tenant_plugin):
    _tenant, _token, plugin = tenant_plugin(vms=4)
    web, _failures = plugin.check(urn(VM, "web"), vm_inputs(fleet))
    plugin.create(urn(VM, "web"), web)
    quotas, failures = plugin.invoke("vce:index:getQuotas")
    assert failures == []
    assert quotas["quotas"]["vms"] == {"limit": 4, "used": 1, "reserved": 0, "unit": ""}
    assert set(quotas["quotas"]) >= {"vms", "vcpus", "ram_gib", "disk_gib", "public_ips"}
    images, failures = plugin.invoke("vce:index:getImages", {"zone": fleet.zone})
    [image] = images["images"]
    assert (image["zone"], image["name"], image["format"]) == (fleet.zone, fleet.image, "qcow2")
    assert image["virtualSize"] > 0 and len(image["sha256"]) == 64
    assert plugin.invoke("vce:index:getImages", {"zone": "nowhere"})[0] == {"images": []}
    _none, failures = plugin.invoke("vce:index:getImages", {"zone": 3})
    assert failures == [("zone", "must be a string, got integer 3")]
