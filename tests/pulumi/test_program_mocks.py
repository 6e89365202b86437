"""Programs written against the `pulumi_vce` SDK, run under Pulumi's mocks: what reaches the
engine (type tokens, camelCase inputs, secrets, replace-on-change paths, the provider) is what
the schema says, and outputs come back typed."""

from __future__ import annotations

import asyncio
import functools
import json

import pulumi
import pulumi_vce as vce
import pytest
from pulumi.runtime.rpc import is_rpc_secret
from pulumi_resource_vce.schema import SCHEMA_FILE

from tests.pulumi.sdk_mocks import run_program

SCHEMA = json.loads(SCHEMA_FILE.read_text())
IMAGE = "debian-12"  # a catalogue image of the zone
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample admin@example"
USER_DATA = "#cloud-config\npackages: [nginx]\n"
LEDGER = "postgresql://vce:hunter2@ledger.example/vce"
ZONES = {
    "zone-a": {
        "uri": "qemu:///system",
        "uplink": "eth0",
        "publicPools": [{"name": "public", "cidr": "203.0.113.0/24", "gateway": "203.0.113.1"}],
        "underlayIp": "192.0.2.1",
        "underlayDev": "eth1",
    },
    "zone-b": {"uri": "qemu+ssh://hv2/system", "underlayIp": "192.0.2.2", "underlayDev": "eth1"},
}


def tenant_environment() -> dict[str, pulumi.Output]:
    provider = vce.Provider(
        "lab",
        tenant="acme",
        ledger_url=LEDGER,
        zones={
            "zone-a": vce.ZoneArgs(
                uri="qemu:///system",
                uplink="eth0",
                public_pools=[
                    vce.ZonePublicPoolArgs(
                        name="public", cidr="203.0.113.0/24", gateway="203.0.113.1"
                    )
                ],
                underlay_ip="192.0.2.1",
                underlay_dev="eth1",
            ),
            "zone-b": vce.ZoneArgs(
                uri="qemu+ssh://hv2/system", underlay_ip="192.0.2.2", underlay_dev="eth1"
            ),
        },
    )
    opts = pulumi.ResourceOptions(provider=provider)
    backend = vce.Network(
        "backend",
        vce.NetworkArgs(zone="zone-a", cidr="10.10.0.0/24", mode="routed"),
        opts,
    )
    web = vce.Vm(
        "web",
        opts,
        zone="zone-a",
        memory_mib=2048,
        vcpus=2,
        boot_disk=vce.VmBootDiskArgs(image=IMAGE, size_gib=20),
        nics=[vce.VmNicArgs(network=backend.name, ip="10.10.0.10")],
        cloud_init=vce.VmCloudInitArgs(
            hostname="web", ssh_authorized_keys=[KEY], user_data=USER_DATA
        ),
    )
    # The dict form, keyed by Python names, as Pulumi programs may write nested inputs.
    db = vce.Vm(
        "db",
        vce.VmArgs(
            zone="zone-a",
            memory_mib=4096,
            boot_disk={"image": IMAGE, "size_gib": 40},
            nics=[{"network": backend.name, "ip": "10.10.0.20"}],
            cloud_init={"hostname": "db", "user_data": USER_DATA},
        ),
        opts,
    )
    data = vce.Disk("db-data", zone="zone-a", size_gib=50, attach_to=db.name, opts=opts)
    public = vce.PublicIp("web-ip", zone="zone-a", vm=web.name, network=backend.name, opts=opts)
    vce.BackupSchedule(
        "db-nightly",
        vm=db.name,
        zone="zone-a",
        calendar="daily",
        retention=vce.BackupScheduleRetentionArgs(keep_daily=7, keep_weekly=4),
        disks=["db", data.name],
        opts=opts,
    )
    vce.ZoneLink("backend-link", network=backend.name, zones=["zone-a", "zone-b"], opts=opts)
    return {
        "web_id": web.id,
        "web_address": web.nic_addresses.apply(lambda nics: nics[0].ip),
        "web_boot_image": web.boot_disk.apply(lambda disk: disk.image),
        "web_cloud_init": web.cloud_init.apply(lambda c: c.user_data),
        "web_libvirt_name": web.libvirt_name,
        "public_address": public.allocated_address,
        "provider_urn": provider.urn,
    }


def test_asyncio_run_first():
    """Leaves the main thread without an event loop, as other suites' asyncio tests do: the
    programs below must run all the same."""
    asyncio.run(asyncio.sleep(0))


@pytest.fixture(scope="module")
def tenant_run():
    return run_program(tenant_environment)


def test_every_resource_registers_with_its_token(tenant_run):
    tokens = {name: r.token for name, r in tenant_run.registrations.items()}
    assert tokens == {
        "lab": "pulumi:providers:vce",
        "backend": "vce:index:Network",
        "web": "vce:index:Vm",
        "db": "vce:index:Vm",
        "db-data": "vce:index:Disk",
        "web-ip": "vce:index:PublicIp",
        "db-nightly": "vce:index:BackupSchedule",
        "backend-link": "vce:index:ZoneLink",
    }


def test_inputs_reach_the_engine_in_camel_case(tenant_run):
    regs = tenant_run.registrations
    assert regs["web"].values == {
        "zone": "zone-a",
        "memoryMib": 2048,
        "vcpus": 2,
        "bootDisk": {"image": IMAGE, "sizeGib": 20},
        "nics": [{"network": "backend", "ip": "10.10.0.10"}],
        "cloudInit": {"hostname": "web", "sshAuthorizedKeys": [KEY], "userData": USER_DATA},
    }
    assert regs["db"].values == {
        "zone": "zone-a",
        "memoryMib": 4096,
        "bootDisk": {"image": IMAGE, "sizeGib": 40},
        "nics": [{"network": "backend", "ip": "10.10.0.20"}],
        "cloudInit": {"hostname": "db", "userData": USER_DATA},
    }
    assert regs["backend"].values == {
        "zone": "zone-a",
        "cidr": "10.10.0.0/24",
        "mode": "routed",
    }
    assert regs["db-data"].values == {"zone": "zone-a", "sizeGib": 50, "attachTo": "db"}
    assert regs["web-ip"].values == {"zone": "zone-a", "vm": "web", "network": "backend"}
    assert regs["db-nightly"].values == {
        "vm": "db",
        "zone": "zone-a",
        "calendar": "daily",
        "retention": {"keepDaily": 7, "keepWeekly": 4},
        "disks": ["db", "db-data"],
    }
    assert regs["backend-link"].values == {"network": "backend", "zones": ["zone-a", "zone-b"]}


def test_the_explicit_provider_gets_its_configuration(tenant_run):
    provider = tenant_run.registrations["lab"]
    values = provider.values
    assert values["tenant"] == "acme"
    assert values["zones"] == ZONES
    assert values["ledgerUrl"] == LEDGER
    urn = tenant_run.outputs["provider_urn"]
    for name, registration in tenant_run.registrations.items():
        if name != "lab":
            assert registration.provider == f"{urn}::lab-provider", name


def test_secrets_arrive_as_secrets(tenant_run):
    regs = tenant_run.registrations
    for vm in ("web", "db"):
        cloud_init = regs[vm].wire["cloudInit"]
        assert is_rpc_secret(cloud_init["userData"]), vm
        assert not is_rpc_secret(cloud_init) and not is_rpc_secret(cloud_init["hostname"]), vm
        assert is_rpc_secret(regs[vm].inputs["cloudInit"]), "the provider sees it secret"
        assert regs[vm].additional_secret_outputs == ["cloudInit"]
    assert is_rpc_secret(regs["lab"].wire["ledgerUrl"])
    assert not is_rpc_secret(regs["lab"].wire["tenant"])
    assert regs["lab"].additional_secret_outputs == ["ledgerUrl"]
    assert "web_cloud_init" in tenant_run.secret_outputs
    assert tenant_run.outputs["web_cloud_init"] == USER_DATA
    assert "web_boot_image" not in tenant_run.secret_outputs


def schema_replace_paths(token: str) -> set[str]:
    """What the schema marks replaceOnChanges for a resource, nested fields as `a.b`."""
    paths = set()
    for name, spec in SCHEMA["resources"][token]["inputProperties"].items():
        if spec.get("replaceOnChanges"):
            paths.add(name)
        ref = spec.get("$ref", "").removeprefix("#/types/")
        for field, fspec in SCHEMA["types"].get(ref, {}).get("properties", {}).items():
            if fspec.get("replaceOnChanges"):
                paths.add(f"{name}.{field}")
    return paths


def test_replace_on_changes_follows_the_schema(tenant_run):
    regs = tenant_run.registrations
    assert set(regs["web"].replace_on_changes) == {
        "name",
        "zone",
        "host",
        "bootDisk.image",
        "bootDisk.pool",
    }
    for registration in regs.values():
        if registration.token.startswith("vce:index:"):
            assert set(registration.replace_on_changes) == schema_replace_paths(
                registration.token
            ), registration.name


def test_the_engine_is_asked_for_the_schema_version(tenant_run):
    for name, registration in tenant_run.registrations.items():
        assert registration.version == SCHEMA["version"], name


def test_outputs_come_back_typed(tenant_run):
    outputs = tenant_run.outputs
    assert outputs["web_id"] == "zone-a/web"
    assert outputs["web_address"] == "10.10.0.10"
    assert outputs["web_boot_image"] == IMAGE
    assert outputs["web_libvirt_name"] == "acme-web"
    assert outputs["public_address"] == "203.0.113.10"


def test_resource_ids_name_zone_vm_and_link(tenant_run):
    ids = {name: r.id for name, r in tenant_run.registrations.items()}
    assert ids["db-nightly"] == "zone-a/db/db-nightly"
    assert ids["backend-link"] == "backend-link"
    assert ids["db-data"] == "zone-a/db-data"


@pytest.mark.parametrize(
    ("make", "missing"),
    [
        (lambda: vce.Vm("web", memory_mib=1024), "boot_disk"),
        (lambda: vce.Network("backend", zone="zone-a"), "cidr"),
        (lambda: vce.Disk("data"), "size_gib"),
        (lambda: vce.PublicIp("ip"), "vm"),
        (lambda: vce.ZoneLink("link", network="backend"), "zones"),
        (lambda: vce.BackupSchedule("nightly", vm="db", calendar="daily"), "retention"),
        (lambda: vce.Provider("lab", zones={}), "tenant"),
    ],
)
def test_a_missing_required_input_is_named(make, missing):
    with pytest.raises(TypeError, match=f"Missing required property '{missing}'"):
        run_program(make)


def test_required_fields_of_nested_types_are_keyword_only_and_required():
    incomplete = functools.partial(vce.VmBootDiskArgs, image=IMAGE)
    with pytest.raises(TypeError, match="size_gib"):
        incomplete()


def test_args_object_and_keywords_do_not_mix():
    with pytest.raises(TypeError, match="NetworkArgs"):
        run_program(
            lambda: vce.Network("backend", vce.NetworkArgs(cidr="10.10.0.0/24"), mode="nat")
        )


def test_get_reads_by_id():
    existing = {
        "zone-a/web": {
            "name": "web",
            "zone": "zone-a",
            "memoryMib": 2048,
            "vcpus": 2,
            "bootDisk": {"image": IMAGE, "sizeGib": 20},
            "cloudInit": {"hostname": "web", "userData": USER_DATA},
            "libvirtName": "acme-web",
            "powerState": "running",
            "nicAddresses": [
                {"network": "backend", "mac": "52:54:00:00:00:01", "ip": "10.10.0.10"}
            ],
        }
    }

    def program():
        web = vce.Vm.get("web", "zone-a/web")
        return {
            "memory": web.memory_mib,
            "image": web.boot_disk.apply(lambda disk: disk.image),
            "mac": web.nic_addresses.apply(lambda nics: nics[0].mac),
            "cloud_init": web.cloud_init,
            "id": web.id,
        }

    run = run_program(program, existing=existing)
    read = run.registrations["web"]
    assert read.read and read.token == "vce:index:Vm" and read.id == "zone-a/web"
    assert read.inputs == {}
    assert run.outputs["memory"] == 2048
    assert run.outputs["image"] == IMAGE
    assert run.outputs["mac"] == "52:54:00:00:00:01"
    assert run.outputs["id"] == "zone-a/web"
    assert isinstance(run.outputs["cloud_init"], vce.outputs.VmCloudInit)
    # The engine, not the mocks, makes listed outputs secret: the read must ask it to.
    assert read.additional_secret_outputs == ["cloudInit"]


def test_config_getters_read_the_stack_configuration():
    def program():
        return {
            "tenant": vce.config.tenant(),
            "zones": vce.config.zones(),
            "ledger": vce.config.ledger_url(),
        }

    run = run_program(
        program,
        config={"tenant": "acme", "zones": ZONES, "ledgerUrl": LEDGER},
        secret_config=("ledgerUrl",),
    )
    assert run.outputs == {"tenant": "acme", "zones": ZONES, "ledger": LEDGER}
    assert run.secret_outputs == {"ledger"}


def test_programs_leave_no_pulumi_state_behind():
    """The next test in this thread sees Pulumi's defaults, not a mocked runtime."""
    assert pulumi.runtime.settings.get_root_resource() is None
    assert pulumi.get_project() == "project"
    assert vce.config.tenant() is None
