"""A data disk serves one VM: another VM declaring a disk that is attached elsewhere is refused
naming the field, and nothing changes (two guests writing one disk corrupt it)."""

from __future__ import annotations

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade

from tests.support.images import make_image

from .conftest import URI


@pytest.fixture
def image(tmp_path):
    return str(make_image(tmp_path / "base.qcow2"))


def vm(image, name, ledger_url, disks):
    return {
        "uri": URI, "tenant": "acme", "ledger_url": ledger_url, "default_pool": "default-pool",
        "name": name, "vcpus": 1, "memory_mib": 128, "state": "stopped",
        "boot_disk": {"image": image, "size_gib": 1}, "disks": disks,
    }  # fmt: skip


def test_a_disk_attached_to_one_vm_is_refused_to_another(acme, test_host, image):
    facade.run_disk({"uri": URI, "tenant": "acme", "ledger_url": acme, "name": "data",
                     "size_gib": 1, "pool": "default-pool"})  # fmt: skip
    facade.run_vm(vm(image, "owner", acme, ["data"]))
    for check_mode in (True, False):
        with pytest.raises(SpecError, match="attached to VM 'owner'") as caught:
            facade.run_vm(vm(image, "intruder", acme, ["data"]), check_mode=check_mode)
        assert caught.value.field == "disks[0]"
    assert "acme_intruder" not in test_host.conn.listDefinedDomains()
    # The VM that has it declares it again: nothing to change.
    assert facade.run_vm(vm(image, "owner", acme, ["data"])).changed is False
