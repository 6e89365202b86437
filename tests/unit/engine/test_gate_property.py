"""Property: no sequence of declarations ever leaves a tenant's usage above its quotas.

Each example is a fresh ledger and fresh test-driver state; each step applies one environment
declaration through the real engine. A step either fits (and usage stays within every quota) or
is refused with QuotaExceeded and changes nothing."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

from ansible_collections.vce.kvm.plugins.module_utils.core import fields, quota
from ansible_collections.vce.kvm.plugins.module_utils.core.quota import QuotaExceeded
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine
from ansible_collections.vce.kvm.plugins.module_utils.engine.gate import observed_objects
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.tenant import run_tenant
from ansible_collections.vce.kvm.plugins.module_utils.host import connection as host
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.images import make_image
from tests.support.ledger import ROOMY, forget_stores

URI = "test:///default"
# The test driver keeps objects while any Python object still refers to its connection, so
# each example gets a tenant of its own (and ranges of its own: a network may not overlap one
# in use on the host) rather than relying on the driver being reset.
_tenants = (f"prop{n}" for n in itertools.count())
LIMITS = {**ROOMY, "vms": 3, "vcpus": 5, "ram_gib": 1, "disk_gib": 8, "networks": 2}

# Memory and disk size are fixed per VM name: the test driver cannot resize a disk or set
# memory live (the integration tests cover those against a real libvirtd); what varies is how
# many VMs and networks there are and each VM's vCPUs.
SIZES = {"vm0": (128, 1), "vm1": (256, 2), "vm2": (384, 3), "vm3": (512, 1), "vm4": (256, 4)}
vms = st.fixed_dictionaries({"name": st.sampled_from(sorted(SIZES)), "vcpus": st.integers(1, 3)})
declarations = st.lists(
    st.tuples(
        st.lists(vms, max_size=4, unique_by=lambda v: v["name"]),
        st.lists(st.sampled_from(["lan0", "lan1", "lan2"]), max_size=3, unique=True),
    ),
    min_size=1,
    max_size=5,
)


def params(tenant: str, image: str, declared_vms: list[dict], networks: list[str]) -> dict:
    return {
        "uri": URI,
        "tenant": tenant,
        "default_pool": "default-pool",
        "networks": [
            {"name": net, "cidr": f"10.{40 + int(tenant[4:]) % 200}.{net[-1]}.0/24"}
            for net in sorted(networks)
        ],
        "vms": [
            {
                "name": v["name"],
                "vcpus": v["vcpus"],
                "max_vcpus": 3,
                "memory_mib": SIZES[v["name"]][0],
                "boot_disk": {"image": image, "size_gib": SIZES[v["name"]][1]},
            }
            for v in declared_vms
        ],
    }


def usage_now(tenant: str) -> quota.Usage:
    return quota.add(*observed_objects(host.Host(URI).inventory(tenant)).values())


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(steps=declarations)
def test_no_sequence_of_declarations_goes_over_a_quota(monkeypatch, steps):
    with tempfile.TemporaryDirectory(dir=fields.IMAGE_DIR) as tmp:  # an image directory
        monkeypatch.setenv("VCE_LEDGER_URL", f"sqlite:///{tmp}/ledger.sqlite3")
        connections: dict = {}
        monkeypatch.setattr(host, "_connections", connections)
        image = Path(tmp) / "base.qcow2"
        make_image(image)
        tenant = next(_tenants)
        try:
            plans = {"tight": {"quotas": LIMITS, "trial_hours": 0}}
            run_tenant({"name": tenant, "customer": "c", "plan": "tight", "plans": plans})
            for declared_vms, networks in steps:
                before = usage_now(tenant)
                try:
                    engine.run_environment(params(tenant, str(image), declared_vms, networks))
                except QuotaExceeded:
                    assert usage_now(tenant) == before  # refused: nothing changed
                    continue
                assert quota.below_usage(LIMITS, usage_now(tenant)) == []
        finally:
            for conn in connections.values():
                conn.close()
            forget_stores()
