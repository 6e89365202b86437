"""A preview refuses what an apply would: Check asks the control plane, which reads every kind
with the parsers the engine's run uses, and each failure lands on its camelCase property;
whatever Check is given, it answers inputs or failures, never an error. The control plane is
the real app in this process, with two zones of libvirt's test driver."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.pulumi.served import Served, run, served_app
from tests.support.app import IMAGE

POOLS = [{"name": "p1", "cidr": "203.0.113.0/28", "gateway": "203.0.113.1"}]
ZONES = {
    "a": {"uplink": "eth0", "public_pools": POOLS,
          "settings": {"underlay_ip": "192.0.2.1", "underlay_dev": "eth1"}},
    "b": {"settings": {"underlay_ip": "192.0.2.2", "underlay_dev": "eth1"}},
}  # fmt: skip
VM = {"zone": "a", "memoryMib": 128, "bootDisk": {"image": IMAGE, "sizeGib": 1}}
SCHEDULE = {"zone": "a", "vm": "web", "calendar": "daily", "retention": {"keepLast": 3}}
VALID = {
    "Vm": VM,
    "Disk": {"zone": "a", "sizeGib": 1},
    "Network": {"zone": "a", "cidr": "10.20.0.0/24"},
    "PublicIp": {"zone": "a", "vm": "web"},
    "ZoneLink": {"network": "lan", "zones": ["a", "b"]},
    "BackupSchedule": SCHEDULE,
}


@pytest.fixture
def two_zones(connections, ledger_url, tmp_path) -> Iterator[Served]:
    with served_app(ledger_url, tmp_path, ZONES) as served:
        served.tenant("acme", backup_frequencies=["daily"])
        yield served


def check(served: Served, kind: str, inputs: dict) -> list[tuple[str, str]]:
    async def checked() -> list[tuple[str, str]]:
        acme = served.provider("acme")
        try:
            return (await acme.check(kind, "web", inputs))[1]
        finally:
            await acme.close()

    return run(checked())


@pytest.mark.parametrize("kind", sorted(VALID))
def test_a_valid_declaration_of_every_kind_passes_check(two_zones, kind):
    assert check(two_zones, kind, VALID[kind]) == []


@pytest.mark.parametrize(
    ("kind", "inputs", "prop", "reason"),
    [
        (
            "Vm",
            {**VM, "cloudInit": {"userData": "#cloud-config\npackages: [nginx\n"}},
            "cloudInit.userData",
            "is not valid YAML",
        ),
        ("Vm", {**VM, "cloudInit": {"userData": "#cloud-config\na: 1\n---\nb: 2\n"}},
         "cloudInit.userData", "holds 2 YAML documents"),
        ("Vm", {**VM, "bootDisk": {"image": "/etc/shadow", "sizeGib": 1}}, "bootDisk.image",
         "must name an image of the zone's catalogue"),
        ("Vm", {**VM, "zone": "c"}, "zone", ""),
        ("Disk", {"zone": "a", "sizeGib": -1}, "sizeGib", "must be positive"),
        ("Network", {"zone": "a", "cidr": "10.20.0.0/33"}, "cidr", ""),
        ("PublicIp", {"zone": "a", "vm": "web", "address": "198.51.100.7"}, "address",
         "outside zone a's pools"),
        ("PublicIp", {"zone": "a", "vm": "web\n"}, "vm", "invalid name"),
        ("PublicIp", {"zone": "b", "vm": "web"}, "zone", "has no public IPs"),
        ("ZoneLink", {"network": "lan\n", "zones": ["a", "b"]}, "network", "invalid name"),
        ("ZoneLink", {"network": "lan", "zones": ["a"]}, "zones", "exactly two zones"),
        ("BackupSchedule", {**SCHEDULE, "retention": {"keepLast": -5}}, "retention.keepLast",
         "must be positive, got -5"),
        ("BackupSchedule", {**SCHEDULE, "calendar": "daily\nExecStartPre=/bin/sh"}, "calendar",
         "invalid calendar expression"),
        ("BackupSchedule", {**SCHEDULE, "timeoutMinutes": 0}, "timeoutMinutes",
         "must be positive, got 0"),
        # A directory of the host: no property of the resource (the control plane takes none).
        ("BackupSchedule", {**SCHEDULE, "target": "/srv/../etc"}, "target", ""),
    ],
)  # fmt: skip
def test_check_refuses_what_create_would_on_the_camel_case_property(
    two_zones, kind, inputs, prop, reason
):
    failures = check(two_zones, kind, inputs)
    assert len(failures) == 1, failures
    assert failures[0][0] == prop and reason in failures[0][1], failures


# Values of the kinds a program can send: text with what hurts (newlines, NUL, Unicode digits,
# YAML and systemd syntax), numbers past every limit, nesting.
SCALARS = st.one_of(
    st.text(alphabet=[*"ab0159-:/. [{#", "\n", "\0", "\u0663", "\u00b2", "\u2028"], max_size=16),
    st.text(max_size=12),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def mutated(kind: str, path: tuple[str, ...], value: object) -> dict:
    inputs = json.loads(json.dumps(VALID[kind]))
    target = inputs
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(target.get(key), dict) else target
    target[path[-1]] = value
    return inputs


PATHS = {
    "Vm": [("name",), ("vcpus",), ("memoryMib",), ("bootDisk", "sizeGib"), ("bootDisk", "image"),
           ("cloudInit",), ("nics",), ("state",), ("zone",)],
    "Disk": [("sizeGib",), ("format",), ("attachTo",), ("backingImage",)],
    "Network": [("cidr",), ("mode",), ("mtu",), ("staticLeases",)],
    "PublicIp": [("vm",), ("network",), ("address",)],
    "ZoneLink": [("network",), ("zones",)],
    "BackupSchedule": [("calendar",), ("retention",), ("retention", "keepLast"), ("disks",),
                       ("target",), ("pool",), ("timeoutMinutes",)],
}  # fmt: skip


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.data())
def test_any_input_is_accepted_or_a_failure_naming_a_property(two_zones, data):
    kind = data.draw(st.sampled_from(sorted(PATHS)))
    path = data.draw(st.sampled_from(PATHS[kind]))
    inputs = mutated(kind, path, data.draw(VALUES))
    failures = check(two_zones, kind, inputs)  # a provider error raises here
    for prop, reason in failures:
        assert prop and reason and "Traceback" not in reason, failures
