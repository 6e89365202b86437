"""Check mode of a tenant not registered yet (on SQLite and PostgreSQL, libvirt's test driver):
the plan is shown with a warning that the tenant must be registered; a real run is refused;
neither leaves anything in libvirt or the ledger."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import VceError
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import (
    host_usage,
    reservations,
    tenants,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.support.images import make_image
from tests.support.ledger import register
from tests.support.testdriver import URI, environment, fresh_driver, objects_of


@pytest.fixture
def image(monkeypatch, tmp_path, any_ledger_url):
    """The operator's ledger, with another tenant in it; acme is not registered."""
    drivers = fresh_driver(monkeypatch)
    next(drivers, None)
    register(any_ledger_url, "other")
    path = tmp_path / "base.qcow2"
    make_image(path)
    yield str(path)
    next(drivers, None)


def ledger_rows(url: str) -> dict[str, list]:
    with Ledger.open(url).store.read() as connection:
        return {
            table.name: connection.execute(sa.select(table)).fetchall()
            for table in (tenants, reservations, host_usage)
        }


def test_check_mode_shows_the_plan_and_says_the_tenant_must_be_registered(image, any_ledger_url):
    before = ledger_rows(any_ledger_url)
    result = engine.run_environment(environment(image), check_mode=True)
    assert result.changed
    assert [(c["kind"], c["name"], c["action"]) for c in result.plan] == [
        ("network", "lan", "create"), ("disk", "data1", "create"), ("vm", "web1", "create"),
    ]  # fmt: skip
    assert result.plan[2]["after"]["vcpus"] == 1
    [warning] = result.warnings
    assert warning.startswith("tenant 'acme' is not registered in the ledger at ")
    assert "cannot be applied until vce.kvm.tenant registers it" in warning
    assert "not checked against quotas" in warning
    assert objects_of() == set()
    assert ledger_rows(any_ledger_url) == before


def test_check_mode_of_one_vm_of_an_unregistered_tenant_is_shown_too(image):
    vm = {**environment(image)["vms"][0], "uri": URI, "tenant": "acme", "nics": []}
    vm["default_pool"] = "default-pool"
    del vm["disks"]
    result = engine.run_vm(vm, check_mode=True)
    assert [(c["kind"], c["action"]) for c in result.plan] == [("vm", "create")]
    assert "is not registered" in result.warnings[0]


def test_a_real_run_of_an_unregistered_tenant_is_refused_and_changes_nothing(image, any_ledger_url):
    before = ledger_rows(any_ledger_url)
    with pytest.raises(VceError, match=r"'acme' is not in the ledger at .*register it first"):
        engine.run_environment(environment(image))
    assert objects_of() == set()
    assert ledger_rows(any_ledger_url) == before


def test_once_registered_check_mode_checks_quotas_without_the_warning(image, any_ledger_url):
    register(any_ledger_url, "acme", vms=0)
    with pytest.raises(VceError, match="vms"):
        engine.run_environment(environment(image), check_mode=True)
    register(any_ledger_url, "acme")
    result = engine.run_environment(environment(image), check_mode=True)
    assert result.changed and result.warnings == []
