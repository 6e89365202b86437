"""Golden invoices, computed by hand from the terms and DESIGN.md's rules, on SQLite and
PostgreSQL. Every moment is injected; nothing sleeps.

The VM `web` (2 vCPU, 4 GiB RAM, 10 GiB disk) costs 41 KZT an hour: 29,520.00 in a 30-day
month. A month of 30 days has 2,592,000 seconds: 0.1% of it is 2,592 s (43 min 12 s).
"""

from __future__ import annotations

import datetime as dt
import io
from decimal import Decimal

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.core.periods import parse_month
from ansible_collections.vce.kvm.plugins.module_utils.finance.billing import Books
from ansible_collections.vce.kvm.plugins.module_utils.finance.statement import (
    INVOICE_COLUMNS,
    write_invoice_csv,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.metering import Meter

from tests.support.billing import ALMATY, HOST, HOURLY, Scenario, discount, local, total

NOV = "2026-11"  # 30 days
NOV_START, DEC_START = local(2026, 11, 1), local(2026, 12, 1)


@pytest.fixture
def web(any_ledger_url):
    """Tenant acme with `web` running the whole of November 2026."""
    scenario = Scenario(any_ledger_url)
    scenario.usage(NOV_START)
    return scenario


def lines_by_meter(document):
    return {line["meter"]: line for line in document["lines"]}


def test_a_quiet_month_is_the_price_list_times_the_hours(web):
    invoice = web.invoice(NOV)
    lines = lines_by_meter(invoice)
    assert (lines["vcpu"]["quantity"], lines["vcpu"]["amount"]) == ("1440.000000", "14400.00")
    assert (lines["ram"]["quantity"], lines["ram"]["amount"]) == ("2880.000000", "14400.00")
    assert (lines["disk"]["quantity"], lines["disk"]["amount"]) == ("7200.000000", "720.00")
    assert invoice["subtotal"] == invoice["total"] == "29520.00"
    assert invoice["currency"] == "KZT"
    assert invoice["availability"][0]["availability"] == "100.0000"
    assert invoice["discounts"] == []


def test_fifty_minutes_down_in_a_thirty_day_month_is_five_percent(web):
    web.down(local(2026, 11, 4, 10, 0), local(2026, 11, 4, 10, 50))
    invoice = web.invoice(NOV)
    vm = invoice["availability"][0]
    assert (vm["downtime_seconds"], vm["existed_seconds"]) == (3000, 2_592_000)
    assert vm["availability"] == "99.8842"  # 1 - 3000/2592000
    assert vm["credit_percent"] == "5"
    assert discount(invoice, "sla_credit") == Decimal("1476.00")  # 5% of 29,520.00
    assert total(invoice) == Decimal("28044.00")


@pytest.mark.parametrize(
    ("down_seconds", "percent", "credit"),
    [
        (2592, "0", "0"),  # exactly 99.9%
        (2593, "5", "1476.00"),
        (25920, "5", "1476.00"),  # exactly 99.0%
        (25921, "10", "2952.00"),
        (129600, "10", "2952.00"),  # exactly 95.0%
        (129601, "15", "4428.00"),
    ],
)
def test_tier_edges(web, down_seconds, percent, credit):
    start = local(2026, 11, 10)
    web.down(start, start + dt.timedelta(seconds=down_seconds))
    invoice = web.invoice(NOV)
    assert invoice["availability"][0]["credit_percent"] == percent
    assert discount(invoice, "sla_credit") == Decimal(credit)
    assert total(invoice) == Decimal("29520.00") - Decimal(credit)


def test_an_availability_a_microsecond_below_an_edge_is_printed_below_it(web):
    """docs/billing.md, Rounding: tiers from the exact fraction, the percentage rounded down,
    seconds rounded down."""
    start = local(2026, 11, 10)
    web.down(start, start + dt.timedelta(seconds=2592, microseconds=1))
    vm = web.invoice(NOV)["availability"][0]
    assert (vm["availability"], vm["credit_percent"], vm["downtime_seconds"]) == (
        "99.8999", "5", 2592,
    )  # fmt: skip


def test_announced_maintenance_is_not_downtime(web):
    start = local(2026, 11, 12, 2, 0)
    web.down(start, start + dt.timedelta(hours=2))  # 7,200 s alone would be 5%
    web.incidents(start).exclude(
        "maintenance", start, start + dt.timedelta(hours=1, minutes=30),
        host=HOST, announced_at=start - dt.timedelta(days=3), note="kernel update",
    )  # fmt: skip
    vm = web.invoice(NOV)["availability"][0]
    assert (vm["downtime_seconds"], vm["excluded_seconds"]) == (1800, 5400)
    assert vm["credit_percent"] == "0"  # 1800 s < 2592 s


def test_unannounced_maintenance_is_refused(web):
    start = local(2026, 11, 12, 2, 0)
    with pytest.raises(SpecError) as error:
        web.incidents(start).exclude(
            "maintenance",
            start,
            start + dt.timedelta(hours=1),
            announced_at=start + dt.timedelta(minutes=5),
        )
    assert error.value.field == "announced_at"


def test_customer_caused_and_force_majeure_downtime_is_not_compensated(web):
    first = web.down(local(2026, 11, 5), local(2026, 11, 5, 3, 0))
    web.incidents(local(2026, 11, 6)).classify(first["id"], "customer", "rm -rf / by the customer")
    start = local(2026, 11, 20)
    web.down(start, start + dt.timedelta(hours=5))
    web.incidents(start).exclude(
        "force_majeure", start, start + dt.timedelta(hours=5), note="flood"
    )
    invoice = web.invoice(NOV)
    vm = invoice["availability"][0]
    assert (vm["downtime_seconds"], vm["excluded_seconds"]) == (0, 8 * 3600)
    assert total(invoice) == Decimal("29520.00")


def test_a_report_counts_from_the_report_once_confirmed(web):
    incidents = web.incidents(local(2026, 11, 8, 12, 0))
    reported = incidents.report("acme", "web", "", local(2026, 11, 8, 9, 0))
    assert web.invoice(NOV)["availability"][0]["downtime_seconds"] == 0  # not confirmed yet
    incidents.confirm(reported["id"], local(2026, 11, 8, 9, 20))
    incidents.restore(reported["id"], local(2026, 11, 8, 10, 0))
    assert web.invoice(NOV)["availability"][0]["downtime_seconds"] == 3600


def test_a_vm_created_mid_month_is_measured_over_its_own_seconds(any_ledger_url):
    scenario = Scenario(any_ledger_url)
    scenario.usage(local(2026, 11, 16))  # 15 days: 360 h
    scenario.down(local(2026, 11, 20, 1, 0), local(2026, 11, 20, 1, 50))
    invoice = scenario.invoice(NOV)
    vm = invoice["availability"][0]
    assert vm["existed_seconds"] == 15 * 86400
    assert vm["availability"] == "99.7685"  # 1 - 3000/1296000: 5%, not 0% as over 30 days
    assert invoice["subtotal"] == str(HOURLY * 360) + ".00"
    assert discount(invoice, "sla_credit") == Decimal("738.00")
    assert total(invoice) == Decimal("14022.00")


def test_stopped_vm_pays_its_disk_only(web):
    web.usage(local(2026, 11, 16), Meter("stopped", "web", vcpus=2, ram_mib=4096, disk_mib=10240))
    lines = lines_by_meter(web.invoice(NOV))
    assert lines["vcpu"]["quantity"] == "720.000000"  # 15 days of 2 vCPU
    assert lines["disk"]["quantity"] == "7200.000000"  # 30 days of 10 GiB


def test_trial_hours_are_free_then_billing_starts(any_ledger_url):
    scenario = Scenario(any_ledger_url, trial_hours=72)
    started = local(2026, 11, 10)
    scenario.start_trial(started)
    scenario.usage(started)  # 21 days to the month's end: 504 h, 72 of them free
    invoice = scenario.invoice(NOV)
    lines = lines_by_meter(invoice)
    assert (lines["vcpu"]["quantity"], lines["vcpu"]["free_quantity"]) == (
        "864.000000",
        "144.000000",
    )
    assert invoice["total"] == str(HOURLY * 432) + ".00"  # 17,712.00


def test_a_trial_ended_with_everything_off_bills_nothing_until_resumed(any_ledger_url):
    scenario = Scenario(any_ledger_url, trial_hours=72)
    started = local(2026, 11, 10)
    scenario.start_trial(started)
    scenario.usage(started)
    scenario.usage(local(2026, 11, 12), Meter("stopped", "web", 2, 4096, 10240))
    after = scenario.ledger(local(2026, 11, 14))
    after.current_tenant("acme")  # settles the trial: nothing runs, so suspended
    invoice = scenario.invoice(NOV)
    assert invoice["total"] == "0.00"
    assert lines_by_meter(invoice)["disk"]["free_quantity"] == "5040.000000"  # 21 days


def test_a_credit_larger_than_the_charges_is_capped(any_ledger_url):
    scenario = Scenario(any_ledger_url, trial_hours=72)
    started = local(2026, 11, 27, 16, 0)  # 80 h to the month's end: 72 free, 8 billed
    scenario.start_trial(started)
    scenario.usage(started)
    scenario.down(local(2026, 11, 28), local(2026, 11, 28, 10, 0))  # 87.5%: 15%
    invoice = scenario.invoice(NOV)
    vm = invoice["availability"][0]
    assert (vm["credit_percent"], vm["compute_cost"], vm["credit"]) == ("15", "3280.00", "492.00")
    assert invoice["subtotal"] == "328.00"
    assert discount(invoice, "sla_credit") == Decimal("328.00")  # capped (5.7)
    assert invoice["total"] == "0.00"


def test_data_loss_is_half_the_month(web):
    web.down(local(2026, 11, 4, 10, 0), local(2026, 11, 4, 10, 50))
    web.incidents(local(2026, 11, 4, 12)).open(
        "acme", "web", "", local(2026, 11, 4, 10, 0), kind="data_loss",
        confirmed_at=local(2026, 11, 4, 12), reported_at=local(2026, 11, 4, 11),
    )  # fmt: skip
    invoice = web.invoice(NOV)
    assert discount(invoice, "sla_credit") == Decimal("1476.00")
    assert discount(invoice, "data_loss") == Decimal("14760.00")  # 50% of 29,520.00
    assert total(invoice) == Decimal("13284.00")


def test_unconfirmed_data_loss_gives_nothing(web):
    web.incidents(local(2026, 11, 4, 12)).open(
        "acme",
        "web",
        "",
        local(2026, 11, 4, 10, 0),
        kind="data_loss",
        reported_at=local(2026, 11, 4, 11),
    )
    assert discount(web.invoice(NOV), "data_loss") == 0


@pytest.mark.parametrize(
    ("month", "start", "end", "days"),
    [
        ("2027-02", local(2027, 2, 1), local(2027, 3, 1), 28),
        ("2028-02", local(2028, 2, 1), local(2028, 3, 1), 29),
        ("2026-11", local(2026, 11, 1), local(2026, 12, 1), 30),
        ("2026-12", local(2026, 12, 1), local(2027, 1, 1), 31),
    ],
)
def test_months_of_every_length(any_ledger_url, month, start, end, days):
    scenario = Scenario(any_ledger_url)
    scenario.usage(start - dt.timedelta(days=3))
    scenario.usage(end + dt.timedelta(days=3), Meter("absent"))
    # exactly 0.1% of the month: 0% credit; one second more: 5%
    edge = dt.timedelta(seconds=days * 86400 / 1000)
    scenario.down(start + dt.timedelta(days=2), start + dt.timedelta(days=2) + edge)
    invoice = scenario.invoice(month)
    vm = invoice["availability"][0]
    assert vm["existed_seconds"] == days * 86400
    assert invoice["subtotal"] == f"{HOURLY * 24 * days}.00"
    assert vm["credit_percent"] == "0"
    later = start + dt.timedelta(days=9)
    scenario.down(later, later + dt.timedelta(seconds=1))
    assert scenario.invoice(month)["availability"][0]["credit_percent"] == "5"


def test_the_month_turns_at_midnight_in_almaty(any_ledger_url):
    scenario = Scenario(any_ledger_url)
    scenario.usage(local(2026, 11, 30, 23, 30))  # 18:30 UTC
    scenario.usage(local(2026, 12, 1, 0, 30), Meter("absent"))
    scenario.down(local(2026, 11, 30, 23, 50), local(2026, 12, 1, 0, 10))
    november, december = scenario.invoice("2026-11"), scenario.invoice("2026-12")
    assert lines_by_meter(november)["vcpu"]["quantity"] == "1.000000"  # 30 min of 2 vCPU
    assert lines_by_meter(december)["vcpu"]["quantity"] == "1.000000"
    assert november["period"]["end"] == "2026-11-30T19:00:00+00:00"
    assert november["availability"][0]["downtime_seconds"] == 600
    assert december["availability"][0]["downtime_seconds"] == 600


def test_a_running_month_is_billed_up_to_now(web):
    invoice = web.invoice(NOV, now=local(2026, 11, 11).astimezone(dt.UTC))
    assert invoice["subtotal"] == str(HOURLY * 240) + ".00"
    assert invoice["as_of"] == "2026-11-10T19:00:00+00:00"


def test_public_ips_zone_links_and_backups_are_metered(web):
    web.usage(NOV_START, Meter("present", "web", public_ips=1), name="kz1:web-ip", kind="public_ip")
    web.usage(local(2026, 11, 16), Meter("present", zone_links=1), name="db-link", kind="zone_link")
    ledger = web.ledger(local(2026, 11, 2))
    with ledger.store.read() as connection:
        ledger.record_backup(
            connection, "backup-1", tenant="acme", host=HOST, vm="web", schedule="daily",
            backup_id="b1", kind="full", status="ok", started_at=local(2026, 11, 1, 1),
            finished_at=local(2026, 11, 1, 1), duration_ms=1000, size_bytes=2 * 1024**3,
        )  # fmt: skip
        ledger.update_backup(connection, "backup-1", pruned_at=local(2026, 11, 11, 1))
    lines = lines_by_meter(web.invoice(NOV))
    assert (lines["public_ip"]["quantity"], lines["public_ip"]["amount"]) == (
        "720.000000",
        "1440.00",
    )
    assert (lines["zone_link"]["quantity"], lines["zone_link"]["amount"]) == (
        "360.000000",
        "1080.00",
    )
    assert (lines["backup"]["quantity"], lines["backup"]["amount"]) == ("480.000000", "24.00")


def test_rounding_is_once_per_line(any_ledger_url):
    scenario = Scenario(any_ledger_url)
    # 1 vCPU for 1 second three times over: each interval is 0.0027 KZT, the line 0.0083 -> 0.01
    for minute in range(3):
        start = local(2026, 11, 5, 0, minute)
        scenario.usage(start, Meter("running", "web", vcpus=1), name="web")
        scenario.usage(start + dt.timedelta(seconds=1), Meter("stopped", "web", vcpus=1))
    line = lines_by_meter(scenario.invoice(NOV))["vcpu"]
    assert line["amount"] == "0.01"


def test_a_closed_month_as_csv_carries_its_credit_notes(web):
    web.down(local(2026, 11, 4, 10, 0), local(2026, 11, 4, 10, 50))
    month = parse_month(NOV, ALMATY)
    closing = local(2026, 12, 2, 9, 0)
    assert [d["action"] for d in Books(web.ledger(closing), month).close()] == ["closed"]
    # A confirmed report arrives late: 44 more hours down, 93.7731%: 15% instead of 5%, a
    # credit of 4,428.00 instead of 1,476.00.
    late = web.incidents(local(2026, 12, 3))
    late.report("acme", "web", "", local(2026, 11, 20), local(2026, 11, 20, 0, 5),
                reference="CRM-9", restored_at=local(2026, 11, 21, 20, 0))  # fmt: skip
    issued = local(2026, 12, 3, 9, 0)
    [corrected] = Books(web.ledger(issued), month).close()
    assert corrected == {"tenant": "acme", "action": "credit note", "amount": "2952.00"}

    documents = list(Books(web.ledger(local(2026, 12, 4)), month).invoices("acme"))
    out = io.StringIO(newline="")
    write_invoice_csv(documents, out)
    head = "acme,c-acme,std,2026-11,closed,KZT"
    key = documents[0]["credit_notes"][0]["key"]  # a digest of the corrected invoice
    assert out.getvalue().splitlines() == [
        ",".join(INVOICE_COLUMNS),
        f"{head},line,{HOST},vm,web,web,disk,GiB-hour,7200.000000,0.000000,0.1,720.00,,",
        f"{head},line,{HOST},vm,web,web,ram,GiB-hour,2880.000000,0.000000,5,14400.00,,",
        f"{head},line,{HOST},vm,web,web,vcpu,vCPU-hour,1440.000000,0.000000,10,14400.00,,",
        f'{head},discount,,discount:sla_credit,,,,,,,,1476.00,"SLA credit (terms 5.6), capped '
        "at the month's charges (5.7)\",",
        f"{head},total,,total,,,,,,,,28044.00,,",
        f"{head},credit_note,,credit_note,{key},,,,,,,2952.00,"
        "records received after the month was closed,2026-12-03T04:00:00+00:00",
        f"{head},net,,total after credit notes,,,,,,,,25092.00,,",
    ]
