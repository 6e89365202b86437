"""Declarations are validated before anything is read or changed: field and reason named."""

from __future__ import annotations

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.core.spec import (
    default_mac,
    parse_environment,
)
from hypothesis import given
from hypothesis import strategies as st

IMAGE = "/var/lib/images/base.qcow2"


def env(**overrides):
    base = {
        "tenant": "acme",
        "networks": [{"name": "lan", "cidr": "10.10.0.0/24"}],
        "disks": [{"name": "data1", "size_gib": 2}],
        "vms": [
            {
                "name": "web1",
                "memory_mib": 128,
                "boot_disk": {"image": IMAGE, "size_gib": 1},
                "disks": ["data1"],
                "nics": [{"network": "lan", "ip": "10.10.0.10"}],
            }
        ],
    }
    base.update(overrides)
    return base


def vm(**overrides):
    item = {"name": "web1", "memory_mib": 128, "boot_disk": {"image": IMAGE, "size_gib": 1}}
    item.update(overrides)
    return item


def error_of(raw) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_environment(raw)
    return caught.value


def test_valid_environment_gets_defaults():
    spec = parse_environment(env())
    net = spec.networks[0]
    assert str(net.gateway) == "10.10.0.1"
    assert (str(net.dhcp_start), str(net.dhcp_end)) == ("10.10.0.127", "10.10.0.254")
    assert net.mode == "nat"
    web = spec.vms[0]
    assert (web.vcpus, web.max_vcpus, web.max_memory_mib) == (1, 1, 128)
    assert web.nics[0].mac == default_mac("acme", "web1", 0)
    assert spec.attachments == {"data1": "web1"}


@pytest.mark.parametrize(
    ("raw", "field", "reason"),
    [
        (env(vms=[vm(memory_mib=0)]), "vms[0].memory_mib", "must be positive"),
        (env(vms=[vm(memory_mib=-5)]), "vms[0].memory_mib", "must be positive"),
        (env(vms=[vm(vcpus=0)]), "vms[0].vcpus", "must be positive"),
        (
            env(disks=[{"name": "d", "size_gib": 0}], vms=[]),
            "disks[0].size_gib",
            "must be positive",
        ),
        (env(disks=[{"name": "d", "size_gib": -1}], vms=[]), "disks[0].size_gib", "positive"),
        (
            env(vms=[vm(boot_disk={"image": IMAGE, "size_gib": 0})]),
            "vms[0].boot_disk.size_gib",
            "positive",
        ),
        (env(vms=[vm(vcpus=4, max_vcpus=2)]), "vms[0].max_vcpus", "below vcpus"),
        (env(vms=[vm(name="a<b>&c")]), "vms[0].name", "invalid name"),
        (env(vms=[vm(name="web 1")]), "vms[0].name", "invalid name"),
        (env(vms=[vm(name="../etc")]), "vms[0].name", "invalid name"),
        (env(vms=[vm(name="a/b")]), "vms[0].name", "invalid name"),
        (env(vms=[vm(name="it's")]), "vms[0].name", "invalid name"),
        (env(tenant="Ac me"), "tenant", "invalid name"),
        (
            env(networks=[{"name": "n&1", "cidr": "10.0.0.0/24"}], vms=[]),
            "networks[0].name",
            "invalid",
        ),
        (
            env(disks=[{"name": "x", "size_gib": 1, "pool": "a/b"}], vms=[]),
            "disks[0].pool",
            "invalid storage pool",
        ),
        (env(vms=[vm(nics=[{"network": "nowhere"}])]), "vms[0].nics[0].network", "unknown network"),
        (env(vms=[vm(disks=["nothing"])]), "vms[0].disks[0]", "unknown disk"),
        (
            env(
                networks=[
                    {"name": "a", "cidr": "10.0.0.0/16"},
                    {"name": "b", "cidr": "10.0.5.0/24"},
                ],
                vms=[],
            ),
            "networks[1].cidr",
            "overlaps network 'a'",
        ),
        (
            env(networks=[{"name": "a", "cidr": "10.0.0.1/24"}], vms=[]),
            "networks[0].cidr",
            "invalid IPv4 CIDR",
        ),
        (
            env(vms=[vm(nics=[{"network": "lan", "ip": "10.99.0.5"}])]),
            "vms[0].nics[0].ip",
            "outside the network's CIDR",
        ),
        (
            env(
                networks=[
                    {
                        "name": "lan",
                        "cidr": "10.10.0.0/24",
                        "static_leases": [{"mac": "52:54:00:00:00:01", "ip": "10.11.0.4"}],
                    }
                ],
                vms=[],
            ),
            "networks[0].static_leases[0].ip",
            "outside the network's CIDR",
        ),
        (
            env(
                vms=[
                    vm(name="a", nics=[{"network": "lan", "mac": "52:54:00:00:00:01"}]),
                    vm(name="b", nics=[{"network": "lan", "mac": "52:54:00:00:00:01"}]),
                ]
            ),
            "vms[1].nics[0].mac",
            "already used",
        ),
        (
            env(
                vms=[
                    vm(
                        nics=[
                            {"network": "lan", "mac": "52:54:00:00:00:01"},
                            {"network": "dmz", "mac": "52:54:00:00:00:01"},
                        ]
                    )
                ]
            ),
            "vms[0].nics[1].mac",
            "already the MAC of nics[0] of this VM",
        ),
        (
            env(
                vms=[
                    vm(name="a", nics=[{"network": "lan", "ip": "10.10.0.9"}]),
                    vm(name="b", nics=[{"network": "lan", "ip": "10.10.0.9"}]),
                ]
            ),
            "vms[1].nics[0].ip",
            "already used",
        ),
        (
            env(vms=[vm(nics=[{"network": "lan", "mac": "zz:54:00:00:00:01"}])]),
            "vms[0].nics[0].mac",
            "invalid MAC",
        ),
        (
            env(vms=[vm(nics=[{"network": "lan", "mac": "01:00:5e:00:00:01"}])]),
            "vms[0].nics[0].mac",
            "multicast",
        ),
        (
            env(vms=[vm(nics=[{"network": "lan", "ip": "10.10.0.1"}])]),
            "vms[0].nics[0].ip",
            "gateway",
        ),
        (
            env(vms=[vm(boot_disk={"image": "relative.qcow2", "size_gib": 1})]),
            "vms[0].boot_disk.image",
            "must name an image of the zone's catalogue or one of the tenant's disks",
        ),
        (
            env(vms=[vm(boot_disk={"image": "/etc/../etc/shadow", "size_gib": 1})]),
            "vms[0].boot_disk.image",
            "'..'",
        ),
        (
            env(disks=[{"name": "d", "size_gib": 1, "backing_image": "Debian 12"}]),
            "disks[0].backing_image",
            "must name an image of the zone's catalogue",
        ),
        (
            env(disks=[{"name": "d", "size_gib": 1, "backing_image": "debian-12\n"}]),
            "disks[0].backing_image",
            "must name an image of the zone's catalogue",
        ),
        (
            env(vms=[vm(boot_disk={"image": "base", "size_gib": 1, "image_format": "vmdk"})]),
            "vms[0].boot_disk.image_format",
            "must be one of",
        ),
        (env(vms=[vm(state="paused")]), "vms[0].state", "must be one of"),
        (
            env(vms=[vm(cloud_init={"user_data": "#cloud-config\npackages: [nginx\n"})]),
            "vms[0].cloud_init.user_data",
            "is not valid YAML",
        ),
        (
            env(vms=[vm(cloud_init={"user_data": "#cloud-config\na: 1\n---\nb: 2\n"})]),
            "vms[0].cloud_init.user_data",
            "holds 2 YAML documents",
        ),
        (
            env(vms=[vm(cloud_init={"user_data": "#cloud-config\n- nginx\n"})]),
            "vms[0].cloud_init.user_data",
            "must be a YAML mapping",
        ),
        (
            env(vms=[vm(cloud_init={"user_data": "#cloud-config\nhostname: db\n"})]),
            "vms[0].cloud_init.user_data.hostname",
            "set cloud_init.hostname instead",
        ),
        (env(vms=[vm(colour="red")]), "vms[0].colour", "unknown option"),
        (env(vms=[vm(name="web1"), vm(name="web1")]), "vms[1].name", "declared twice"),
        (
            env(
                networks=[
                    {
                        "name": "lan",
                        "cidr": "10.10.0.0/24",
                        "dhcp_start": "10.10.0.200",
                        "dhcp_end": "10.10.0.100",
                    }
                ],
                vms=[],
            ),
            "networks[0].dhcp_end",
            "comes before",
        ),
    ],
)
def test_bad_input_names_field_and_reason(raw, field, reason):
    error = error_of(raw)
    assert error.field == field
    assert reason in error.reason
    assert str(error).startswith(f"{field}: ")


def test_long_name_is_shortened_in_the_message():
    error = error_of(env(vms=[vm(name="x" * 500)]))
    assert len(str(error)) < 200


def test_disk_listed_by_two_vms_is_refused():
    raw = env(vms=[vm(name="a", disks=["data1"]), vm(name="b", disks=["data1"])])
    error = error_of(raw)
    assert error.field == "vms[1].disks[0]"
    assert "already attached to 'a'" in error.reason


def test_default_mac_is_stable_and_unicast():
    mac = default_mac("acme", "web1", 0)
    assert mac == default_mac("acme", "web1", 0)
    assert mac != default_mac("acme", "web1", 1)
    assert int(mac[:2], 16) & 1 == 0


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (env(networks=[{"name": "lan\n", "cidr": "10.10.0.0/24"}]), "networks[0].name"),
        (env(disks=[{"name": "data1\n", "size_gib": 2}]), "disks[0].name"),
        (env(tenant="acme\n"), "tenant"),
        (env(vms=[vm(vcpus="\u0663")]), "vms[0].vcpus"),
        (env(vms=[vm(vcpus="--5")]), "vms[0].vcpus"),
        (env(vms=[vm(memory_mib="\u00b2")]), "vms[0].memory_mib"),
    ],
)
def test_a_trailing_newline_or_a_unicode_digit_is_refused_naming_the_field(raw, field):
    assert error_of(raw).field == field


# Where an arbitrary value is put in a valid declaration, and the field a refusal must name.
INJECTED = {
    "tenant": lambda raw, v: raw.update(tenant=v),
    "networks[0].name": lambda raw, v: raw["networks"][0].update(name=v),
    "networks[0].mtu": lambda raw, v: raw["networks"][0].update(mtu=v),
    "disks[0].name": lambda raw, v: raw["disks"][0].update(name=v),
    "disks[0].size_gib": lambda raw, v: raw["disks"][0].update(size_gib=v),
    "vms[0].name": lambda raw, v: raw["vms"][0].update(name=v),
    "vms[0].vcpus": lambda raw, v: raw["vms"][0].update(vcpus=v),
    "vms[0].memory_mib": lambda raw, v: raw["vms"][0].update(memory_mib=v),
    "vms[0].nics[0].mac": lambda raw, v: raw["vms"][0]["nics"][0].update(mac=v),
    "vms[0].boot_disk.image": lambda raw, v: raw["vms"][0]["boot_disk"].update(image=v),
    "vms[0].cloud_init.user_data": lambda raw, v: raw["vms"][0].update(
        cloud_init={"user_data": f"#cloud-config\n{v}" if isinstance(v, str) else v}
    ),
}
ARBITRARY = st.one_of(
    st.text(alphabet=[*"acl0159-:/ ", "\n", "\0", "\u0663", "\u00b2"], max_size=20),
    st.text(max_size=20),
    st.integers(),
    st.none(),
)


@given(st.sampled_from(sorted(INJECTED)), ARBITRARY)
def test_any_value_in_a_declaration_is_accepted_or_refused_naming_its_field(field, value):
    raw = env()
    INJECTED[field](raw, value)
    try:
        parse_environment(raw)
    except SpecError as error:
        # A valid new name is refused where the old one is used, naming that place.
        assert error.field in (field, REFERENCED_AT.get(field))


REFERENCED_AT = {"disks[0].name": "vms[0].disks[0]", "networks[0].name": "vms[0].nics[0].network"}
