"""The example program's deployment through the real plugin and a real `vce serve`, in order:
preview, up, a second up with no changes, an update, destroy; libvirt read back after each.
The plugin holds nothing but the server's URL and a token of the tenant, as a customer's.

Limits (there is no Pulumi CLI here): the program runs under mocks to record its
registrations, its function calls (getImages, getQuotas) answered by the plugin itself
through the server (the catalogue holds a `debian-12`, the tenant's plan 3 VMs: the program
sizes itself to 2 web VMs and the database); this test plays the engine's part for each registration in order
(dependencies resolved by the mocks as the names the provider gives; the engine's dependency
order rebuilt from the kinds, since the program registers outputs-dependent resources in no
fixed order; no state file, no parallelism). On the server tier's one host (the private
libvirtd): the public IP is left out (it needs a zone uplink and public pools: tests/multihost
covers the engine's public IPs), the routed network is isolated here (no uplink on this
host), and the VMs get 256 MiB and 1 GiB disks instead of the example's sizes, stopped: the
catalogue's `debian-12` is a blank image, without a guest to acknowledge the data disk's
hot-unplug at destroy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt
import pulumi
import pytest
from pulumi.runtime.proto import provider_pb2

from tests.pulumi.sdk_mocks import RecordingMocks, run_program
from tests.server.conftest import Fleet
from tests.support.images import register_image
from tests.support.pulumi_plugin import Plugin, plain, running_plugin, struct, urn
from tests.support.server import Server, create_token

pytestmark = pytest.mark.server
EXAMPLE = Path(__file__).resolve().parents[2] / "pulumi" / "examples" / "tenant-environment"
DIFF_NONE = provider_pb2.DiffResponse.DIFF_NONE
DIFF_SOME = provider_pb2.DiffResponse.DIFF_SOME
# What each kind's inputs may refer to comes before it (within a kind: by name).
DEPENDENCY_ORDER = ["Network", "Vm", "Disk", "BackupSchedule"]
Registered = tuple[str, str, dict[str, Any]]
# The catalogue's image the example picks (the newest debian-*): the server tier's blank base.
IMAGE = "debian-12"


def answered_by(plugin: Plugin) -> Callable[[RecordingMocks, Any], tuple[dict, list]]:
    """The mocks' function calls, answered by the plugin's Invoke (as the engine sends them)."""

    def call(_mocks: RecordingMocks, args: pulumi.runtime.MockCallArgs) -> tuple[dict, list]:
        response = plugin.stub.Invoke(
            provider_pb2.InvokeRequest(tok=args.token, args=struct(args.args))
        )
        failures = [(f.property, f.reason) for f in response.failures]
        return plain(getattr(response, "return")), failures

    return call


def example_registrations(subnet: str) -> tuple[list[Registered], dict[str, Any]]:
    """The example's resources in registration order (token, name, inputs as sent), adapted to
    this host as the module docstring says, and its stack outputs."""
    namespace: dict = {"__name__": "example"}
    exec(compile((EXAMPLE / "__main__.py").read_text(), "example", "exec"), namespace)
    run = run_program(namespace["main"])
    found = []
    for registration in run.registrations.values():
        token, inputs = registration.token, registration.values
        if token == "vce:index:PublicIp" or not token.startswith("vce:index:"):
            continue
        if token == "vce:index:Network":
            inputs = {**inputs, "cidr": f"{subnet}.0/24", "mode": "isolated"}
        if token == "vce:index:Vm":
            inputs = {**inputs, "memoryMib": 256, "bootDisk": {**inputs["bootDisk"], "sizeGib": 1}}
            inputs["state"] = "stopped"
            inputs["nics"] = [{**nic, "ip": f"{subnet}.{nic['ip'].rsplit('.', 1)[1]}"}
                              for nic in inputs["nics"]]  # fmt: skip
        if token == "vce:index:Disk":
            inputs = {**inputs, "sizeGib": 1}
        found.append((token, registration.name, inputs))
    found.sort(key=lambda item: (DEPENDENCY_ORDER.index(item[0].rsplit(":", 1)[1]), item[1]))
    return found, run.outputs


def owned(conn: libvirt.virConnect, tenant: str) -> dict[str, list[str]]:
    prefix = f"{tenant}_"
    return {
        "domains": sorted(d.name() for d in conn.listAllDomains(0) if d.name().startswith(prefix)),
        "networks": sorted(
            n.name() for n in conn.listAllNetworks(0) if n.name().startswith(prefix)
        ),
        "volumes": sorted(
            v.name()
            for p in conn.listAllStoragePools(0)
            if p.isActive()
            for v in p.listAllVolumes(0)
            if v.name().startswith(prefix)
        ),
    }


def timers(fleet: Fleet) -> list[str]:
    """The backup schedules' timer units on the host."""
    units = fleet.host_dir / "units"
    return (
        sorted(p.name for p in units.iterdir() if p.name.endswith(".timer"))
        if units.exists()
        else []
    )


def preview(plugin: Plugin, stack: list[Registered]) -> dict[str, dict[str, Any]]:
    """`pulumi preview` of a new stack: every resource checked (through the server) and its
    Create previewed; the checked inputs by name."""
    checked = {}
    for token, name, inputs in stack:
        checked[name], failures = plugin.check(urn(token, name), inputs)
        assert failures == [], (name, failures)
        plugin.create(urn(token, name), checked[name], preview=True)
    return checked


def second_up(plugin: Plugin, stack: list[Registered], checked: dict, states: dict) -> None:
    """A second `pulumi up`: every Check returns the same inputs, every Diff says no change."""
    for token, name, inputs in stack:
        again, failures = plugin.check(urn(token, name), inputs, olds=checked[name])
        assert failures == [] and again == checked[name], (name, failures)
        resource_id, state = states[name]
        diff = plugin.diff(urn(token, name), resource_id, state, again)
        assert diff.changes == DIFF_NONE, (name, list(diff.diffs))


def test_the_example_deploys_updates_and_destroys_through_the_server(
    fleet: Fleet,
    server: Server,
    conn: libvirt.virConnect,
    blank_image_path: Path,
    new_tenant,
    subnet: str,
    monkeypatch: pytest.MonkeyPatch,
):
    register_image(fleet.ledger_url, blank_image_path, name=IMAGE, zone=fleet.zone)
    tenant = new_tenant(fleet, vms=3)
    with running_plugin() as plugin:
        plugin.configure({"endpoint": server.url, "token": create_token(fleet.ledger_url, tenant)})
        monkeypatch.setattr(RecordingMocks, "call", answered_by(plugin))
        stack, outputs = example_registrations(subnet)
        assert [(token.rsplit(":", 1)[1], name) for token, name, _i in stack] == [
            ("Network", "backend"), ("Vm", "db"), ("Vm", "web-1"), ("Vm", "web-2"),
            ("Disk", "db-data"), ("BackupSchedule", "db-nightly"),
        ]  # fmt: skip
        assert outputs["image"] == IMAGE

        checked = preview(plugin, stack)
        assert owned(conn, tenant) == {"domains": [], "networks": [], "volumes": []}

        # pulumi up
        states = {}
        for token, name, _inputs in stack:
            states[name] = plugin.create(urn(token, name), checked[name])
        live = owned(conn, tenant)
        assert live["domains"] == [f"{tenant}_db", f"{tenant}_web-1", f"{tenant}_web-2"]
        assert live["networks"] == [f"{tenant}_backend"]
        assert f"{tenant}_db-data.qcow2" in live["volumes"]
        db = conn.lookupByName(f"{tenant}_db")
        assert db.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF and db.maxMemory() == 256 * 1024
        assert timers(fleet)
        assert states["db-data"][1]["attachedTo"] == "db"
        assert states["web-1"][0] == f"{fleet.zone}/web-1"

        # A second pulumi up: the program sizes itself the same (its VMs now count as used),
        # every Check returns the same inputs, every Diff says no change.
        again, _outputs = example_registrations(subnet)
        assert again == stack
        second_up(plugin, stack, checked, states)

        # An update: a web VM gets more memory, live where the domain allows it.
        web_urn = urn("vce:index:Vm", "web-1")
        grown, failures = plugin.check(
            web_urn,
            {**{n: i for _t, n, i in stack}["web-1"], "memoryMib": 384, "allowRestart": True},
            olds=checked["web-1"],
        )
        assert failures == []
        web_id, web_state = states["web-1"]
        diff = plugin.diff(web_urn, web_id, web_state, grown)
        assert diff.changes == DIFF_SOME and set(diff.diffs) == {"memoryMib", "allowRestart"}
        states["web-1"] = (web_id, plugin.update(web_urn, web_id, web_state, grown))
        assert conn.lookupByName(f"{tenant}_web-1").maxMemory() == 384 * 1024
        assert states["web-1"][1]["memoryMib"] == 384

        # pulumi destroy: in reverse order, nothing of the tenant's left.
        for token, name, _inputs in reversed(stack):
            resource_id, state = states[name]
            plugin.delete(urn(token, name), resource_id, state)
        assert owned(conn, tenant) == {"domains": [], "networks": [], "volumes": []}
        assert timers(fleet) == []
