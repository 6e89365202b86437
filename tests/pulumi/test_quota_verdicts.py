"""A Pulumi preview and an Ansible check mode judge one declaration alike: both ask the gate.

The same stack is declared both ways against one ledger: as one environment in check mode
(what `ansible-playbook --check` runs), and resource by resource through the provider's Check
(what `pulumi preview` runs, each resource's claim pending for the next)."""

from __future__ import annotations

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.plan import Change, Plan
from ansible_collections.vce.kvm.plugins.module_utils.core.quota import QuotaExceeded
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine
from ansible_collections.vce.kvm.plugins.module_utils.engine.gate import Declaration, Gate
from ansible_collections.vce.kvm.plugins.module_utils.host import connection as host
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger
from pulumi_resource_vce.config import parse_config
from pulumi_resource_vce.provider import VceProvider
from pulumi_resource_vce.resources import KINDS

from tests.support.ledger import register

URI = "test:///default"


@pytest.fixture
def provider(monkeypatch, ledger_url):
    monkeypatch.setattr(host, "_connections", {})
    register(ledger_url, "acme", disk_gib=10, public_ips=1)
    configured = VceProvider()
    configured.config = parse_config(
        {"tenant": "acme", "ledgerUrl": ledger_url, "zones": {"lab": {"uri": URI}}}
    )
    return configured


def ansible_verdict(disks: list[dict]) -> str | None:
    """The quota kind check mode refuses the environment for, or None when it is admitted."""
    params = {"uri": URI, "tenant": "acme", "default_pool": "default-pool", "disks": disks}
    try:
        engine.run_environment(params, check_mode=True)
    except QuotaExceeded as error:
        return error.breaches[0].kind
    return None


def pulumi_verdict(provider: VceProvider, kind_token: str, resources: list[dict]) -> str | None:
    """The quota kind the preview refuses one of the resources for, or None."""
    kind = KINDS[kind_token]
    for values in resources:
        urn = f"urn:pulumi:dev::stack::{kind_token}::{values['name']}"
        params = kind.params(provider.configured(), values) if kind.declare else {}
        declaration = kind.declare(params) if kind.declare else None
        try:
            provider.check_quota(kind, urn, params, declaration, {})
        except QuotaExceeded as error:
            return error.breaches[0].kind
    return None


@pytest.mark.parametrize(("sizes", "verdict"), [([4, 4], None), ([4, 4, 4], "disk_gib")])
def test_disks_preview_and_check_mode_agree(provider, sizes, verdict):
    disks = [{"name": f"d{i}", "size_gib": size} for i, size in enumerate(sizes)]
    as_pulumi = [
        {"name": d["name"], "sizeGib": d["size_gib"], "pool": "default-pool"} for d in disks
    ]
    assert ansible_verdict(disks) == verdict
    assert pulumi_verdict(provider, "vce:index:Disk", as_pulumi) == verdict


@pytest.mark.parametrize(("count", "verdict"), [(1, None), (2, "public_ips")])
def test_public_ips_preview_and_check_mode_agree(provider, ledger_url, count, verdict):
    """Public IPs are counted by the ledger: the gate's one check for both front ends."""
    names = [f"ip{i}" for i in range(count)]
    gate = Gate(Ledger.open(ledger_url), host.Host(URI), "acme", Declaration())
    plan = Plan([Change("public_ip", name, "allocate", field="address") for name in names])
    try:
        gate.admit(plan, None)
        check_mode = None
    except QuotaExceeded as error:
        check_mode = error.breaches[0].kind
    preview = pulumi_verdict(provider, "vce:index:PublicIp", [{"name": n} for n in names])
    assert check_mode == preview == verdict
