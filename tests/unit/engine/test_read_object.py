"""One object read back (the API's GET of an object, a Pulumi refresh): exactly its entry in
the tenant's whole facts, while reading only what that entry needs of libvirt."""

from __future__ import annotations

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine
from ansible_collections.vce.kvm.plugins.module_utils.host import connection as host
from ansible_collections.vce.kvm.plugins.module_utils.host.facts import tenant_facts

from tests.support.images import make_image
from tests.support.ledger import register
from tests.support.testdriver import fresh_driver

URI = "test:///default"


@pytest.fixture
def environment(monkeypatch, tmp_path, ledger_url):
    """Two tenants on the test driver: acme with two networks, three disks (two attached,
    one to each VM) and two VMs on different networks; other with a VM of the same name."""
    driver = fresh_driver(monkeypatch)
    next(driver, None)
    image = tmp_path / "base.qcow2"
    make_image(image)
    for tenant, subnet in (("acme", 20), ("other", 40)):
        register(ledger_url, tenant)
        vm = {"vcpus": 1, "memory_mib": 128, "boot_disk": {"image": str(image), "size_gib": 1}}
        engine.run_environment(
            {
                "uri": URI,
                "tenant": tenant,
                "ledger_url": ledger_url,
                "default_pool": "default-pool",
                "networks": [
                    {"name": "lan", "cidr": f"10.{subnet}.0.0/24"},
                    {"name": "db", "cidr": f"10.{subnet + 1}.0.0/24", "mode": "isolated"},
                ],
                "disks": [{"name": n, "size_gib": 1} for n in ("data1", "data2", "spare")],
                "vms": [
                    {**vm, "name": "web", "disks": ["data1"],
                     "nics": [{"network": "lan", "ip": f"10.{subnet}.0.10"}]},
                    {**vm, "name": "sql", "disks": ["data2"],
                     "nics": [{"network": "db"}, {"network": "lan"}]},
                ],
            }
        )  # fmt: skip
    yield ledger_url
    next(driver, None)


def read(section: str, name: str, tenant: str = "acme") -> dict | None:
    return engine.read_object({"uri": URI, "tenant": tenant, "name": name}, section)


@pytest.mark.parametrize(
    ("section", "names"),
    [("vms", ["web", "sql"]), ("disks", ["data1", "data2", "spare"]),
     ("networks", ["lan", "db"])],
)  # fmt: skip
def test_an_object_is_its_entry_of_the_tenants_facts(environment, section, names):
    facts = tenant_facts(host.Host(URI), "acme")
    for name in names:
        expected = facts[section][name]
        if section == "vms":
            expected = {**expected, "boot_disk": facts["disks"][f"{name}.boot"]}
        assert read(section, name) == expected, name


def test_a_missing_object_or_another_tenants_is_none(environment):
    assert read("vms", "nope") is None
    assert read("disks", "nope") is None
    assert read("networks", "nope") is None
    assert read("vms", "web", tenant="third") is None
    assert read("vms", "web", tenant="other")["libvirt_name"] == "other_web"


def test_a_read_describes_only_what_the_object_needs(environment, monkeypatch):
    described: list[str] = []
    for method in ("read_domain", "read_network"):
        original = getattr(host.Host, method)

        def counting(self, obj, original=original):
            described.append(obj.name())
            return original(self, obj)

        monkeypatch.setattr(host.Host, method, counting)
    read("networks", "db")
    assert described == ["acme_db"]
    described.clear()
    read("vms", "web")
    assert sorted(described) == ["acme_lan", "acme_web", "acme_web"]  # the domain, then its NICs'
    described.clear()
    read("disks", "data1")
    assert sorted(described) == ["acme_sql", "acme_web"]  # which VM has it attached
