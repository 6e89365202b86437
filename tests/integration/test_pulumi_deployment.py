"""The example program's deployment through the real provider process, in order: preview, up,
a second up with no changes, an update, destroy; libvirt read back after each.

Limits (there is no Pulumi CLI here): the program runs under mocks to record its
registrations, and this test plays the engine's part for each of them in registration order
(dependencies resolved by the mocks as the names the provider gives; the engine's dependency
order rebuilt from the kinds, since the program registers outputs-dependent resources in no
fixed order; no state file, no parallelism). Against the private libvirtd of one host: the public IP is left out (it needs a
zone uplink and public pools: tests/multihost covers the engine's public IPs), the routed
network is isolated here (no uplink on this host), and the VMs use the harness's blank base
image with 256 MiB instead of the example's cloud image and sizes, stopped: the blank image
has no guest to acknowledge the data disk's hot-unplug at destroy.
"""

from __future__ import annotations

import json
from pathlib import Path

import libvirt
import pytest
from pulumi.runtime.proto import provider_pb2

from tests.pulumi.sdk_mocks import run_program
from tests.support.pulumi_plugin import running_plugin, urn

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).resolve().parents[2] / "pulumi" / "examples" / "tenant-environment"
DIFF_NONE = provider_pb2.DiffResponse.DIFF_NONE
DIFF_SOME = provider_pb2.DiffResponse.DIFF_SOME
# What each kind's inputs may refer to comes before it.
DEPENDENCY_ORDER = ["Network", "Vm", "Disk", "BackupSchedule"]


def example_registrations(image: str, subnet: str) -> list[tuple[str, str, dict]]:
    """The example's resources in registration order (token, name, inputs as sent), adapted to
    this lab as the module docstring says."""
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
            inputs = {**inputs, "memoryMib": 256, "bootDisk": {"image": image, "sizeGib": 1}}
            inputs["state"] = "stopped"
            inputs["nics"] = [{**nic, "ip": f"{subnet}.{nic['ip'].rsplit('.', 1)[1]}"}
                              for nic in inputs["nics"]]  # fmt: skip
        if token == "vce:index:Disk":
            inputs = {**inputs, "sizeGib": 1}
        found.append((token, registration.name, inputs))
    return sorted(found, key=lambda item: DEPENDENCY_ORDER.index(item[0].rsplit(":", 1)[1]))


def owned(conn, tenant: str) -> dict[str, list[str]]:
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


def test_the_example_deploys_updates_and_destroys(
    conn, uri, tenant, ledger_url, blank_image, subnet, backup_host
):
    zone = {
        "uri": uri,
        **{k.replace("_r", "R").replace("_d", "D"): v for k, v in backup_host.items()},
    }
    stack = example_registrations(blank_image, subnet)
    assert [token.rsplit(":", 1)[1] for token, _n, _i in stack] == [
        "Network", "Vm", "Vm", "Disk", "BackupSchedule",
    ]  # fmt: skip
    with running_plugin() as plugin:
        plugin.configure(
            {"tenant": tenant, "ledgerUrl": ledger_url, "zones": json.dumps({"zone-a": zone})}
        )
        # pulumi preview: everything checked and previewed, nothing created.
        checked = {}
        for token, name, inputs in stack:
            checked[name], failures = plugin.check(urn(token, name), inputs)
            assert failures == [], (name, failures)
            plugin.create(urn(token, name), checked[name], preview=True)
        assert owned(conn, tenant) == {"domains": [], "networks": [], "volumes": []}

        # pulumi up
        states = {}
        for token, name, _inputs in stack:
            states[name] = plugin.create(urn(token, name), checked[name])
        live = owned(conn, tenant)
        assert live["domains"] == [f"{tenant}_db", f"{tenant}_web"]
        assert live["networks"] == [f"{tenant}_backend"]
        assert f"{tenant}_db-data.qcow2" in live["volumes"]
        db = conn.lookupByName(f"{tenant}_db")
        assert db.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF and db.maxMemory() == 256 * 1024
        assert any(p.name.endswith(".timer") for p in Path(backup_host["unit_dir"]).iterdir())
        assert states["db-data"][1]["attachedTo"] == "db"

        # A second pulumi up: every Check returns the same inputs, every Diff says no change.
        for token, name, inputs in stack:
            again, failures = plugin.check(urn(token, name), inputs, olds=checked[name])
            assert failures == [] and again == checked[name]
            resource_id, state = states[name]
            diff = plugin.diff(urn(token, name), resource_id, state, again)
            assert diff.changes == DIFF_NONE, (name, list(diff.diffs))

        # An update: the web VM gets more memory, live where the domain allows it.
        web_urn = urn("vce:index:Vm", "web")
        grown, _failures = plugin.check(
            web_urn,
            {**{n: i for _t, n, i in stack}["web"], "memoryMib": 384, "allowRestart": True},
            olds=checked["web"],
        )
        web_id, web_state = states["web"]
        diff = plugin.diff(web_urn, web_id, web_state, grown)
        assert diff.changes == DIFF_SOME and set(diff.diffs) == {"memoryMib", "allowRestart"}
        states["web"] = (web_id, plugin.update(web_urn, web_id, web_state, grown))
        assert conn.lookupByName(f"{tenant}_web").maxMemory() == 384 * 1024

        # pulumi destroy: in reverse order, nothing of the tenant's left.
        for token, name, _inputs in reversed(stack):
            resource_id, state = states[name]
            plugin.delete(urn(token, name), resource_id, state)
        assert owned(conn, tenant) == {"domains": [], "networks": [], "volumes": []}
        assert not any(p.name.endswith(".timer") for p in Path(backup_host["unit_dir"]).iterdir())
