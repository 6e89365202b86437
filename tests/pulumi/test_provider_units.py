"""The provider's pieces without a server: the schema file in step with the property tables,
and the SDK's rough edges handled in the adapter."""

from __future__ import annotations

import json

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from pulumi.provider.experimental.property_value import Computed, PropertyValue
from pulumi_resource_vce import adapter, schema
from pulumi_resource_vce.config import parse_config
from pulumi_resource_vce.props import camel_path, check_types
from pulumi_resource_vce.resources import (
    KINDS,
    VM_INPUTS,
    declare_disk_values,
    declare_network_values,
    declare_vm_values,
    network_params,
    vm_params,
)


def test_schema_json_is_what_the_tables_give():
    assert json.loads(schema.SCHEMA_FILE.read_text()) == schema.build(), (
        "regenerate: PYTHONPATH=collections:pulumi/provider python -m pulumi_resource_vce.schema"
    )


def test_the_six_resources_and_what_forces_replacement():
    built = schema.build()
    assert sorted(built["resources"]) == sorted(
        f"vce:index:{n}"
        for n in ("Vm", "Disk", "Network", "PublicIp", "ZoneLink", "BackupSchedule")
    )
    boot = built["types"]["vce:index:VmBootDisk"]["properties"]
    assert boot["image"]["replaceOnChanges"] and "replaceOnChanges" not in boot["sizeGib"]
    assert built["types"]["vce:index:VmCloudInit"]["properties"]["userData"]["secret"]
    assert built["config"]["variables"]["ledgerUrl"]["secret"]
    assert set(KINDS) == set(built["resources"])


def test_numbers_unknowns_and_secrets_from_the_wire():
    values, secrets = adapter.to_values(
        {
            "vcpus": PropertyValue(2.0),
            "ratio": PropertyValue(0.5),
            "ip": PropertyValue(adapter.UNKNOWN),
            "later": PropertyValue(Computed()),
            "cloudInit": PropertyValue({"userData": PropertyValue("x", is_secret=True)}),
        }
    )
    assert values == {
        "vcpus": 2,
        "ratio": 0.5,
        "ip": adapter.UNKNOWN,
        "later": adapter.UNKNOWN,
        "cloudInit": {"userData": "x"},
    }
    assert secrets == {"cloudInit.userData"}
    back = adapter.from_values(values, secrets)
    assert back["vcpus"] == PropertyValue(2.0)
    assert back["later"].value == adapter.UNKNOWN  # a Computed cannot be marshalled
    assert back["cloudInit"].value["userData"].is_secret and not back["cloudInit"].is_secret
    for item in back.values():
        item.marshal()


def test_parent_qualified_types():
    assert adapter.resource_type("my:app:Stack$vce:index:Vm") == "vce:index:Vm"
    assert adapter.resource_type("urn:pulumi:dev::p::a:b:C$vce:index:Disk::data") == (
        "vce:index:Disk"
    )


def test_type_failures_name_the_path():
    failures = check_types(
        VM_INPUTS,
        {"memoryMib": True, "bootDisk": {"image": 3, "sizeGib": 1}, "nics": [{"ip": "x"}]},
    )
    assert failures == [
        ("memoryMib", "must be an integer, got boolean True"),
        ("bootDisk.image", "must be a string, got integer 3"),
        ("nics[0].network", "is required"),
    ]
    assert camel_path("boot_disk.size_gib") == "bootDisk.sizeGib"
    assert camel_path("nics[2].ip") == "nics[2].ip"
    assert camel_path("cloud_init.ssh_authorized_keys[0]") == "cloudInit.sshAuthorizedKeys[0]"


def test_a_routed_network_takes_its_zones_uplink_never_its_own():
    config = parse_config(
        {
            "tenant": "acme",
            "zones": {
                "zone-a": {"uri": "test:///default", "uplink": "up0"},
                "zone-b": {"uri": "test:///default"},
            },
        }
    )
    routed = {"name": "dmz", "cidr": "10.40.0.0/24", "mode": "routed"}
    params = network_params(config, {**routed, "zone": "zone-a"})
    assert params["zone_config"] == {"uplink": "up0"}
    assert declare_network_values(params).objects
    without = network_params(config, {**routed, "zone": "zone-b"})
    with pytest.raises(SpecError, match="needs the zone's uplink") as caught:
        declare_network_values(without)
    assert caught.value.field == "mode"
    assert "uplink" not in {p.name for p in KINDS["vce:index:Network"].inputs}


def test_a_tenant_names_its_base_images_and_never_gives_a_host_path():
    vm = {"name": "web", "tenant": "acme", "memory_mib": 128}
    for image in ("/etc/shadow", "/var/lib/vce-kvm/images/debian-12.qcow2"):
        with pytest.raises(SpecError) as caught:
            declare_vm_values({**vm, "boot_disk": {"image": image, "size_gib": 1}})
        assert caught.value.field == "boot_disk.image"
        assert "must name an image of the zone's catalogue" in caught.value.reason
    with pytest.raises(SpecError) as caught:
        declare_disk_values({"name": "d", "size_gib": 1, "backing_image": "/etc/shadow"})
    assert caught.value.field == "backing_image"
    declare_vm_values({**vm, "boot_disk": {"image": "debian-12", "size_gib": 1}})
    declare_disk_values({"name": "d", "size_gib": 1, "backing_image": "golden"})


def test_the_providers_runs_take_no_image_directory():
    config = parse_config({"tenant": "acme", "zones": {"zone-a": {"uri": "test:///default"}}})
    params = vm_params(config, {"name": "web", "zone": "zone-a"})
    assert (params["zone"], params["image_dirs"]) == ("zone-a", [])
