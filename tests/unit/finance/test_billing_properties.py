"""Properties of every invoice, over random months of usage, incidents and trials (SQLite):
total = subtotal - discounts; subtotal = sum of lines; credit <= charges; never below zero;
replaying any run's records changes nothing."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal

from ansible_collections.vce.kvm.plugins.module_utils.ledger.metering import (
    Meter,
    Metering,
    UsageChange,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.billing import HOST, Scenario, local
from tests.support.ledger import forget_stores

START = local(2026, 11, 1)
MONTH_SECONDS = 30 * 86400
_databases = itertools.count()

moments = st.integers(min_value=-5 * 86400, max_value=MONTH_SECONDS + 5 * 86400).map(
    lambda s: START + dt.timedelta(seconds=s)
)
meters = st.builds(
    Meter,
    state=st.sampled_from(["running", "paused", "stopped", "absent"]),
    vm=st.just("web"),
    vcpus=st.integers(0, 16),
    ram_mib=st.integers(0, 65536),
    disk_mib=st.integers(0, 2_000_000),
)
changes = st.lists(
    st.tuples(st.sampled_from(["web", "db"]), moments, meters), min_size=1, max_size=12
)
outages = st.lists(
    st.tuples(st.sampled_from(["web", "db"]), moments, st.integers(1, 20 * 86400)), max_size=4
)


def scenario(tmp_path, trial: bool) -> Scenario:
    url = f"sqlite:///{tmp_path / f'prop{next(_databases)}.sqlite3'}"
    return Scenario(url, trial_hours=72 if trial else 0)


def record(sc: Scenario, items) -> list[UsageChange]:
    recorded = [
        UsageChange("acme", HOST, "vm", name, "changed", at, meter) for name, at, meter in items
    ]
    Metering(sc.ledger(START)).record(recorded)
    return recorded


def add_outages(sc: Scenario, items) -> None:
    for vm, at, seconds in items:
        try:
            sc.down(at, at + dt.timedelta(seconds=seconds), vm=vm)
        except Exception as error:  # overlapping outages are refused, which is fine here
            assert "overlaps" in str(error)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(items=changes, down=outages, trial=st.booleans(), loss=st.booleans())
def test_invoice_invariants(tmp_path, items, down, trial, loss):
    sc = scenario(tmp_path, trial)
    try:
        if trial:
            sc.start_trial(START + dt.timedelta(days=3))
        recorded = record(sc, items)
        add_outages(sc, down)
        if loss:
            sc.incidents(START).open(
                "acme", "web", "", START + dt.timedelta(days=1), kind="data_loss",
                reported_at=START + dt.timedelta(days=1), confirmed_at=START + dt.timedelta(days=1),
            )  # fmt: skip
        invoice = sc.invoice("2026-11")
        subtotal = Decimal(invoice["subtotal"])
        assert subtotal == sum((Decimal(x["amount"]) for x in invoice["lines"]), Decimal(0))
        discounts = sum((Decimal(d["amount"]) for d in invoice["discounts"]), Decimal(0))
        assert Decimal(invoice["total"]) == subtotal - discounts
        credit = sum(
            (Decimal(d["amount"]) for d in invoice["discounts"] if d["kind"] == "sla_credit"),
            Decimal(0),
        )
        assert 0 <= credit <= subtotal
        assert Decimal(invoice["total"]) >= 0
        for vm in invoice["availability"]:
            assert 0 <= vm["downtime_seconds"] <= vm["existed_seconds"] <= MONTH_SECONDS

        # Replaying every record of the run, in any order, changes nothing.
        assert Metering(sc.ledger(START)).record(reversed(recorded)) == 0
        add_outages(sc, down)
        assert sc.invoice("2026-11") == invoice
    finally:
        forget_stores()


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(items=changes, order=st.randoms(use_true_random=False))
def test_order_of_arrival_does_not_matter(tmp_path, items, order):
    """States arriving out of order (a reconciliation before a run's records) end up the same."""
    first, second = scenario(tmp_path, False), scenario(tmp_path, False)
    try:
        record(first, items)
        shuffled = list(items)
        order.shuffle(shuffled)
        for item in shuffled:
            record(second, [item])
        assert first.invoice("2026-11")["lines"] == second.invoice("2026-11")["lines"]
    finally:
        forget_stores()
