"""The race: 8 processes at once each add a VM to a tenant one VM below its quota. Exactly one
succeeds, every time, on SQLite and on PostgreSQL; the others are refused with QuotaExceeded
and libvirt holds exactly as many VMs as the quota allows."""

from __future__ import annotations

import multiprocessing
import os

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.quota import QuotaExceeded
from ansible_collections.vce.kvm.plugins.module_utils.engine import facade as engine
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.tenant import run_quota
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.conftest import fresh_database_url
from tests.support.images import register_image
from tests.support.ledger import forget_stores, register

pytestmark = pytest.mark.integration
PROCESSES = 8
ROUNDS = 5


def add_vm(barrier, results, ledger_url: str, params: dict) -> None:
    os.environ["VCE_LEDGER_URL"] = ledger_url
    barrier.wait(timeout=60)
    try:
        engine.run_vm(params)
        results.put((params["name"], "ok"))
    except QuotaExceeded:
        results.put((params["name"], "quota"))
    except Exception as error:  # reported to the test, which fails on it
        results.put((params["name"], f"{type(error).__name__}: {error}"))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_exactly_one_of_eight_concurrent_runs_gets_the_last_vm(
    backend, request, tmp_path, conn, uri, tenant, blank_image, blank_image_path
):
    url = fresh_database_url(backend, tmp_path, request)
    register(url, tenant, vms=0)
    register_image(url, blank_image_path, name=blank_image)
    context = multiprocessing.get_context("spawn")
    for round_number in range(1, ROUNDS + 1):
        run_quota({"ledger_url": url, "tenant": tenant, "quotas": {"vms": round_number}})
        barrier = context.Barrier(PROCESSES)
        results = context.Queue()
        workers = [
            context.Process(
                target=add_vm,
                args=(
                    barrier,
                    results,
                    url,
                    vm_params(uri, tenant, f"r{round_number}w{i}", blank_image),
                ),
            )
            for i in range(PROCESSES)
        ]
        for worker in workers:
            worker.start()
        outcomes = sorted(results.get(timeout=120) for _worker in workers)
        for worker in workers:
            worker.join(timeout=30)
        verdicts = [verdict for _name, verdict in outcomes]
        assert verdicts.count("ok") == 1, outcomes
        assert set(verdicts) <= {"ok", "quota"}, outcomes
        owned = [d for d in conn.listAllDomains(0) if d.name().startswith(f"{tenant}_")]
        assert len(owned) == round_number
    ledger = Ledger.open(url)
    with ledger.store.read() as connection:
        assert ledger.reserved(connection, tenant)["vms"] == 0
    forget_stores()


def vm_params(uri: str, tenant: str, name: str, image: str) -> dict:
    return {
        "uri": uri,
        "tenant": tenant,
        "name": name,
        "state": "stopped",
        "vcpus": 1,
        "memory_mib": 128,
        "boot_disk": {"image": image, "size_gib": 1},
    }
