"""Programs written against the `pulumi_vce` SDK, run under Pulumi's mocks: what reaches the
engine (type tokens, camelCase inputs, secrets, replace-on-change paths, the provider) is what
the schema says, and outputs come back typed."""

from __future__ import annotations

import asyncio
import functools
import json
import runpy
from collections.abc import Callable
from pathlib import Path

import pulumi
import pulumi_vce as vce
import pytest
import yaml
from pulumi.runtime.rpc import is_rpc_secret
from pulumi_resource_vce.schema import SCHEMA_FILE

from tests.pulumi.sdk_mocks import IMAGES, QUOTAS, RecordingMocks, run_program

SCHEMA = json.loads(SCHEMA_FILE.read_text())
IMAGE = "debian-12"  # a catalogue image of the zone
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample admin@example"
USER_DATA = "#cloud-config\npackages: [nginx]\n"
ENDPOINT = "https://panel.example.net"
TOKEN = "vce_1a2b3c4d_" + "s" * 43


def tenant_environment() -> dict[str, pulumi.Output]:
    provider = vce.Provider("lab", endpoint=ENDPOINT, token=TOKEN)
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
        "web_power": web.power_state,
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
    assert provider.values == {"endpoint": ENDPOINT, "token": TOKEN}
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
    assert is_rpc_secret(regs["lab"].wire["token"])
    assert not is_rpc_secret(regs["lab"].wire["endpoint"])
    assert regs["lab"].additional_secret_outputs == ["token"]
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
    assert outputs["web_power"] == "running"
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

    run = run_program(program, mocks=RecordingMocks(existing))
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
        return {"endpoint": vce.config.endpoint(), "token": vce.config.token()}

    run = run_program(
        program, config={"endpoint": ENDPOINT, "token": TOKEN}, secret_config=("token",)
    )
    assert run.outputs == {"endpoint": ENDPOINT, "token": TOKEN}
    assert run.secret_outputs == {"token"}


def test_config_is_optional_the_provider_reads_the_environment_then():
    """Neither key is required of the stack: the provider falls back to VCE_ENDPOINT and
    VCE_TOKEN, so a program with no `vce:*` configuration still runs."""

    def program():
        vce.Provider("lab")
        return {"endpoint": vce.config.endpoint(), "token": vce.config.token()}

    run = run_program(program)
    assert run.outputs == {"endpoint": None, "token": None}
    assert run.registrations["lab"].values == {}


# -- functions --------------------------------------------------------------------------------


def sized_environment() -> dict[str, object]:
    """A program that sizes itself: as many web VMs as the quotas leave room for, on the
    newest Debian image of the network's zone."""
    quotas = vce.get_quotas().quotas
    vms = quotas["vms"]
    ram = quotas["ram_gib"]
    room = min(int(vms.limit - vms.used - vms.reserved), int((ram.limit - ram.used) // 2))
    backend = vce.Network("backend", zone="zone-a", cidr="10.10.0.0/24")
    debian = vce.get_images_output(zone=backend.zone).apply(
        lambda found: next(i for i in found.images if i.name.startswith("debian"))
    )
    for index in range(room):
        vce.Vm(
            f"web-{index}",
            zone="zone-a",
            memory_mib=2048,
            boot_disk=vce.VmBootDiskArgs(
                image=debian.name,
                size_gib=debian.virtual_size.apply(lambda size: -(-size // 1024**3)),
            ),
            nics=[vce.VmNicArgs(network=backend.name)],
        )
    # `Output.format` is a method of Output: lifting stops short of the field.
    return {"room": room, "image": debian.name, "image_format": debian.apply(lambda i: i.format)}


@pytest.fixture(scope="module")
def sized_run():
    return run_program(sized_environment)


def test_a_program_sizes_itself_from_get_quotas(sized_run):
    vms, ram = QUOTAS["vms"], QUOTAS["ram_gib"]
    room = min(vms["limit"] - vms["used"], (ram["limit"] - ram["used"]) // 2)
    assert sized_run.outputs["room"] == room == 8
    webs = sorted(n for n, r in sized_run.registrations.items() if r.token == "vce:index:Vm")
    assert webs == [f"web-{index}" for index in range(room)]


def test_get_images_output_waits_for_its_input_and_filters_by_zone(sized_run):
    (quotas, images) = sized_run.invokes
    assert (quotas.token, quotas.args) == ("vce:index:getQuotas", {})
    assert (images.token, images.args) == ("vce:index:getImages", {"zone": "zone-a"})
    assert sized_run.outputs["image"] == "debian-12"
    assert sized_run.outputs["image_format"] == "qcow2"
    web = sized_run.registrations["web-0"].values
    assert web["bootDisk"] == {"image": "debian-12", "sizeGib": 2}


def test_functions_ask_the_engine_for_the_schema_version(sized_run):
    assert [i.version for i in sized_run.invokes] == [SCHEMA["version"]] * 2
    assert {i.provider for i in sized_run.invokes} == {""}, "the default provider"


def test_results_are_the_sdk_classes():
    def program():
        quotas = vce.get_quotas()
        images = vce.get_images()
        return {
            "quotas": quotas,
            "state": quotas.quotas["backup_storage_gib"],
            "images": images,
            "zones": [i.zone for i in images.images],
            "output": vce.get_quotas_output(),
        }

    run = run_program(program)
    assert isinstance(run.outputs["quotas"], vce.GetQuotasResult)
    assert isinstance(run.outputs["images"], vce.GetImagesResult)
    assert isinstance(run.outputs["output"], vce.GetQuotasResult)
    state = run.outputs["state"]
    assert isinstance(state, vce.outputs.QuotaState)
    assert (state.limit, state.used, state.reserved, state.unit) == (200, 12.5, 0, "GiB")
    assert run.outputs["zones"] == [i["zone"] for i in IMAGES]
    image = run.outputs["images"].images[0]
    assert isinstance(image, vce.outputs.Image)
    assert image.virtual_size == IMAGES[0]["virtualSize"] and isinstance(image.virtual_size, int)
    assert image.sha256 == IMAGES[0]["sha256"]


def test_a_function_goes_through_the_explicit_provider():
    def program():
        provider = vce.Provider("lab", endpoint=ENDPOINT, token=TOKEN)
        opts = pulumi.InvokeOptions(provider=provider)
        vce.get_images(zone="zone-b", opts=opts)
        return {"later": vce.get_quotas_output(opts=pulumi.InvokeOutputOptions(provider=provider))}

    run = run_program(program)
    assert len(run.invokes) == 2
    for invoke in run.invokes:
        assert invoke.provider.endswith("::lab-provider"), invoke
        assert invoke.version == SCHEMA["version"]


def test_a_failing_function_names_the_property():
    failures = {"vce:index:getImages": [("zone", "unknown zone 'mars'; the tenant has zone-a")]}
    with pytest.raises(Exception, match=r"getImages failed: unknown zone 'mars'.*[(]zone[)]"):
        run_program(lambda: vce.get_images(zone="mars"), mocks=RecordingMocks(failures=failures))


def test_programs_leave_no_pulumi_state_behind():
    """The next test in this thread sees Pulumi's defaults, not a mocked runtime."""
    assert pulumi.runtime.settings.get_root_resource() is None
    assert pulumi.get_project() == "project"
    assert vce.config.endpoint() is None


# -- the example ------------------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "pulumi" / "examples" / "tenant-environment"


def example_main() -> Callable[[], None]:
    """The example's main(), its module run as an import would (registering nothing)."""
    return runpy.run_path(str(EXAMPLE / "__main__.py"), run_name="example")["main"]


def image(name: str, virtual_gib: int, zone: str = "zone-a") -> dict:
    return {**IMAGES[0], "zone": zone, "name": name, "virtualSize": virtual_gib * 1024**3}


def quotas(**limits: float) -> dict:
    return {
        kind: {**state, "limit": limits.get(kind, state["limit"])} for kind, state in QUOTAS.items()
    }


def test_the_example_stack_holds_only_the_endpoint_and_the_token():
    stack = yaml.safe_load((EXAMPLE / "Pulumi.dev.yaml").read_text())["config"]
    assert set(stack) <= {"vce:endpoint", "vce:token"}
    assert "vce:endpoint" in stack


def test_the_example_picks_the_newest_debian_and_sizes_its_boot_disks():
    catalogue = [image("debian-11", 2), image("ubuntu-24.04", 4), image("debian-12", 25)]
    run = run_program(example_main(), mocks=RecordingMocks(images=catalogue))
    vms = {n: r.values for n, r in run.registrations.items() if r.token == "vce:index:Vm"}
    assert sorted(vms) == ["db", "web-1", "web-2", "web-3"], "MAX_WEB within the default quotas"
    for name, vm in vms.items():
        assert vm["bootDisk"] == {"image": "debian-12", "sizeGib": 25}, name
    assert [i.token for i in run.invokes] == ["vce:index:getImages", "vce:index:getQuotas"]
    assert run.registrations["web-public"].values["vm"] == "web-1"
    assert run.outputs["image"] == "debian-12"
    assert run.outputs["web_private_ips"] == ["10.20.0.11", "10.20.0.12", "10.20.0.13"]


@pytest.mark.parametrize(
    ("limits", "webs"),
    [
        ({"vms": 2}, 1),
        ({"vcpus": 6}, 2),
        ({"ram_gib": 8}, 2),
        ({"disk_gib": 110}, 2),
    ],
)
def test_the_example_sizes_the_web_tier_from_the_limits(limits, webs):
    run = run_program(example_main(), mocks=RecordingMocks(quotas=quotas(**limits)))
    names = {n for n, r in run.registrations.items() if r.token == "vce:index:Vm"}
    assert names == {"db", *(f"web-{n}" for n in range(1, webs + 1))}


@pytest.mark.parametrize(
    ("mocks", "message"),
    [
        (RecordingMocks(quotas=quotas(vms=1)), "hold no web VM beside the database"),
        (RecordingMocks(images=[image("ubuntu-24.04", 4)]), r"no debian-\* image .*ubuntu-24.04"),
    ],
)
def test_the_example_says_what_it_cannot_do(mocks, message):
    with pytest.raises(pulumi.RunError, match=message):
        run_program(example_main(), mocks=mocks)
    assert not [r for r in mocks.calls if r[0] == "vce:index:Vm"], "nothing registered"
