"""run_registered_environment (vce.kvm.environment's `register`, what the tenant_environment role
calls): the tenant registered and its environment applied in one run, on SQLite and PostgreSQL
and libvirt's test driver; the re-run changes nothing; check mode previews both and writes
nothing; a bad registration fails before libvirt is touched."""

from __future__ import annotations

from typing import Any

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.support.ledger import plan_catalog
from tests.support.testdriver import environment, image_on_fresh_driver, objects_of


@pytest.fixture
def image(monkeypatch, tmp_path, any_ledger_url):
    """A fresh driver and an empty base image; the ledger has no tenant."""
    yield from image_on_fresh_driver(monkeypatch, tmp_path, any_ledger_url, registered=False)


def declared(image: str, **registration: Any) -> dict[str, Any]:
    register = {"customer": "BIN 1", "plan": "lab", "plans": plan_catalog("lab"), "quotas": None}
    return {**environment(image), "register": register | registration}


def tenant_record(url: str) -> Any:
    ledger = Ledger.open(url)
    with ledger.store.read() as connection:
        return ledger.tenant(connection, "acme")


def test_registers_then_applies_in_one_run_and_the_rerun_changes_nothing(image, any_ledger_url):
    result = engine.run_registered_environment(declared(image))
    assert result.changed
    kinds = [(c["kind"], c["name"], c["action"]) for c in result.plan]
    assert kinds[:2] == [("plan", "lab", "define"), ("tenant", "acme", "create")]
    assert ("vm", "web1", "create") in kinds
    assert result.facts["tenant"]["plan"] == "lab"
    assert set(result.facts["environment"]["vms"]) == {"web1"}
    assert {"acme_web1", "acme_lan"} <= objects_of()
    assert tenant_record(any_ledger_url).customer == "BIN 1"

    again = engine.run_registered_environment(declared(image))
    assert not again.changed and again.plan == [] and again.usage_changes == []


def test_a_changed_quota_override_is_kept_in_the_same_run(image, any_ledger_url):
    engine.run_registered_environment(declared(image))
    result = engine.run_registered_environment(declared(image, quotas={"vms": 3}))
    assert [(c["kind"], c["field"]) for c in result.plan] == [("tenant", "quota_overrides")]
    assert tenant_record(any_ledger_url).overrides == {"vms": 3}


def test_check_mode_previews_both_and_writes_nothing(image, any_ledger_url):
    result = engine.run_registered_environment(declared(image), check_mode=True)
    assert [c["kind"] for c in result.plan][:2] == ["plan", "tenant"]
    assert "vm" in [c["kind"] for c in result.plan]
    assert any("is not registered" in warning for warning in result.warnings)
    assert objects_of() == set()
    assert tenant_record(any_ledger_url) is None


def test_a_bad_registration_fails_before_libvirt_is_touched(image, any_ledger_url):
    with pytest.raises(SpecError) as error:
        engine.run_registered_environment(declared(image, plan=None))
    assert error.value.field == "plan"
    assert objects_of() == set()
    with pytest.raises(SpecError, match="present only") as error:
        engine.run_registered_environment({**declared(image), "state": "absent"})
    assert error.value.field == "register"
