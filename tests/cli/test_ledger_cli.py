"""`vce ledger` as finance and support use it: the real command in a subprocess, on a ledger
prepared with an injected clock (SQLite)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import runs, usage_intervals
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import Ledger

from tests.support.billing import Scenario, local

ROOT = Path(__file__).resolve().parents[2]
LATER = "2027-01-05T00:00:00+05:00"


@pytest.fixture
def books(tmp_path):
    url = f"sqlite:///{tmp_path / 'ledger.sqlite3'}"
    scenario = Scenario(url)
    scenario.usage(local(2026, 11, 1))
    scenario.down(local(2026, 11, 4, 10, 0), local(2026, 11, 4, 10, 50))
    return scenario


def vce(url, *args, now=LATER):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "collections"), "VCE_LEDGER_URL": url}
    cmd = [sys.executable, "-m", "ansible_collections.vce.kvm.cli.vce", *args]
    if now:
        cmd += ["--now", now]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)


def test_invoice_in_json_csv_and_html(books, tmp_path):
    done = vce(books.url, "ledger", "invoice", "--month", "2026-11")
    assert done.returncode == 0, done.stderr
    [invoice] = json.loads(done.stdout)
    assert (invoice["tenant"], invoice["subtotal"], invoice["total"]) == (
        "acme",
        "29520.00",
        "28044.00",
    )

    done = vce(books.url, "ledger", "invoice", "--month", "2026-11", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert [r["amount"] for r in rows if r["record"] == "total"] == ["28044.00"]

    page = tmp_path / "acme.html"
    done = vce(
        books.url, "ledger", "invoice", "--month", "2026-11", "--tenant", "acme",
        "--format", "html", "--output", str(page),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = page.read_text()
    HTMLParser().feed(text)
    assert text.count("<svg") == 1 and "28" in text and "99.8842" in text


def test_sla_and_usage(books):
    done = vce(books.url, "ledger", "sla", "--month", "2026-11", "--format", "csv")
    [row] = list(csv.DictReader(io.StringIO(done.stdout)))
    assert (row["vm"], row["availability"], row["credit_percent"], row["credit"]) == (
        "web", "99.8842", "5", "1476.00",
    )  # fmt: skip
    done = vce(books.url, "ledger", "usage", "--month", "2026-11", "--tenant", "acme")
    [interval] = json.loads(done.stdout)
    assert (interval["vcpus"], interval["state"], interval["ended_at"]) == (2, "running", None)


def test_requests_are_timed_against_the_terms(books):
    for reference, kind, logged, fulfilled in (
        ("CRM-1", "zone_link", "2026-11-10T10:00:00+05:00", "2026-11-10T10:25:00+05:00"),
        ("CRM-2", "vm_reboot_unblock", "2026-11-11T10:00:00+05:00", "2026-11-11T10:12:00+05:00"),
        ("CRM-3", "critical_fault", "2026-11-30T23:30:00+05:00", None),
    ):
        done = vce(books.url, "ledger", "request", "log", "--tenant", "acme", "--kind", kind,
                   "--reference", reference, "--logged-at", logged)  # fmt: skip
        assert done.returncode == 0, done.stderr
        if fulfilled:
            done = vce(books.url, "ledger", "request", "fulfil", "--tenant", "acme",
                       "--reference", reference, "--at", fulfilled)  # fmt: skip
            assert done.returncode == 0, done.stderr
    report = json.loads(vce(books.url, "ledger", "requests", "--month", "2026-11").stdout)
    status = {
        r["reference"]: (r["target_minutes"], r["elapsed_minutes"], r["status"])
        for r in report["requests"]
    }
    assert status == {
        "CRM-1": (30, "25.0", "met"),
        "CRM-2": (10, "12.0", "missed"),
        "CRM-3": (60, "50430.0", "missed (open)"),
    }
    assert report["summary"]["zone_link"] == {"requests": 1, "met": 1, "missed": 0, "open": 0}


def test_closed_month_is_frozen_and_corrected_by_a_credit_note(books):
    early = vce(books.url, "ledger", "close", "--month", "2026-11", now="2026-11-20T00:00:00+05:00")
    assert early.returncode == 2 and "not over yet" in early.stderr
    closed = json.loads(vce(books.url, "ledger", "close", "--month", "2026-11").stdout)
    assert closed["invoices"] == [{"tenant": "acme", "action": "closed", "total": "28044.00"}]
    again = json.loads(vce(books.url, "ledger", "close", "--month", "2026-11").stdout)
    assert again["invoices"][0]["action"] == "unchanged"

    # A confirmed report arrives late: 10 more hours of November downtime (15% instead of 5%).
    done = vce(
        books.url, "ledger", "incident", "report", "--tenant", "acme", "--vm", "web",
        "--reported-at", "2026-11-20T00:00:00+05:00", "--confirmed-at", "2026-11-20T00:05:00+05:00",
        "--restored-at", "2026-11-21T20:00:00+05:00", "--reference", "CRM-9",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    [invoice] = json.loads(vce(books.url, "ledger", "invoice", "--month", "2026-11").stdout)
    assert (invoice["status"], invoice["total"], invoice["credit_notes"]) == (
        "closed",
        "28044.00",
        [],
    )
    corrected = json.loads(vce(books.url, "ledger", "close", "--month", "2026-11").stdout)
    assert corrected["invoices"][0] == {
        "tenant": "acme",
        "action": "credit note",
        "amount": "2952.00",
    }
    [invoice] = json.loads(vce(books.url, "ledger", "invoice", "--month", "2026-11").stdout)
    assert [n["amount"] for n in invoice["credit_notes"]] == ["2952.00"]
    assert (
        json.loads(vce(books.url, "ledger", "close", "--month", "2026-11").stdout)["invoices"][0][
            "action"
        ]
        == "unchanged"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("ledger", "invoice", "--month", "2026-13"), "month: must be a month as YYYY-MM"),
        (("ledger", "invoice", "--month", "november"), "month: must be a month as YYYY-MM"),
        (
            ("ledger", "invoice", "--month", "2026-11", "--tenant", "nobody"),
            "'nobody' is not in the ledger",
        ),
        (
            ("ledger", "usage", "--month", "2026-11", "--tenant", "nobody"),
            "'nobody' is not in the ledger",
        ),
        (
            ("ledger", "sla", "--month", "2026-11", "--time-zone", "Mars/Olympus"),
            "time_zone: unknown time zone",
        ),
        (
            (
                "ledger",
                "incident",
                "report",
                "--tenant",
                "acme",
                "--vm",
                "web",
                "--reported-at",
                "2026-11-04T10:20:00+05:00",
            ),
            "overlaps incident #1",
        ),
        (
            (
                "ledger",
                "incident",
                "report",
                "--tenant",
                "acme",
                "--vm",
                "web",
                "--reported-at",
                "2026-11-09T00:00:00+05:00",
                "--restored-at",
                "2026-11-08T00:00:00+05:00",
            ),
            "ended_at: 2026-11-08T00:00:00+05:00 is before started_at",
        ),
        (
            ("ledger", "incident", "restore", "1", "--at", "2026-11-05T00:00:00+05:00"),
            "already ended",
        ),
        (
            ("ledger", "incident", "confirm", "99", "--at", "2026-11-01T00:00:00+05:00"),
            "no incident #99",
        ),
        (
            (
                "ledger",
                "exclusion",
                "add",
                "--cause",
                "maintenance",
                "--start",
                "2026-11-05T00:00:00+05:00",
                "--end",
                "2026-11-04T00:00:00+05:00",
                "--announced-at",
                "2026-11-01T00:00:00+05:00",
            ),
            "end",
        ),
        (
            (
                "ledger",
                "request",
                "fulfil",
                "--tenant",
                "acme",
                "--reference",
                "none",
                "--at",
                "2026-11-05T00:00:00+05:00",
            ),
            "no request 'none'",
        ),
        (("ledger", "record", "--spool", "/nonexistent/spool.jsonl"), "no spool file"),
    ],
)
def test_bad_input_is_refused_with_the_field_and_changes_nothing(books, args, message):
    before = vce(books.url, "ledger", "invoice", "--month", "2026-11").stdout
    done = vce(books.url, *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr and "Traceback" not in done.stderr
    assert vce(books.url, "ledger", "invoice", "--month", "2026-11").stdout == before


def test_a_report_with_its_time_without_offset_is_refused(books):
    done = vce(books.url, "ledger", "incident", "report", "--tenant", "acme",
               "--reported-at", "2026-11-20T00:00:00")  # fmt: skip
    assert done.returncode == 2 and "needs a UTC offset" in done.stderr


# -- vce ledger record --spool ----------------------------------------------------------------


def spool_example():
    """The spool file docs/billing.md shows, as it is written there."""
    text = (ROOT / "docs" / "billing.md").read_text(encoding="utf-8")
    block = text.split("```jsonl\n", 1)[1].split("```", 1)[0]
    assert block.startswith('{"vce_spool": 1}\n'), block
    return block


def existing_ledger(tmp_path):
    """A ledger made by a registering command: a spool replays only into a ledger that exists
    (a mistyped URL must not become a new ledger nobody reads)."""
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    Ledger.open(url, create=True)
    return url


def rows_of(url, table):
    with Ledger.open(url).store.read() as connection:
        return connection.execute(sa.select(table)).fetchall()


def test_the_spool_example_of_the_docs_replays_into_a_fresh_ledger(tmp_path):
    url = existing_ledger(tmp_path)
    path = tmp_path / "spool" / "7f3c2a9e.jsonl"
    path.parent.mkdir()
    path.write_text(spool_example(), encoding="utf-8")
    done = vce(url, "ledger", "record", "--spool", str(path), "--ledger-url", url)
    assert done.returncode == 0, (done.stdout, done.stderr)
    assert json.loads(done.stdout) == {"spool": str(path), "written": 1, "remaining": 0}
    assert not path.exists()
    (usage,) = rows_of(url, usage_intervals)
    assert (usage.tenant, usage.name, usage.vcpus, usage.run_id) == ("acme", "web", 2, "7f3c2a9e")

    (run,) = rows_of(url, runs)
    assert (run.id, run.actor, run.result) == ("7f3c2a9e", "ops", "ok")


def test_a_spool_is_not_replayed_into_a_ledger_that_does_not_exist(tmp_path):
    missing = tmp_path / "mistyped.sqlite3"
    path = tmp_path / "spool" / "7f3c2a9e.jsonl"
    path.parent.mkdir()
    path.write_text(spool_example(), encoding="utf-8")
    url = f"sqlite:///{missing}"
    done = vce(url, "ledger", "record", "--spool", str(path), "--ledger-url", url)
    assert done.returncode == 1 and "No ledger at" in done.stderr, done.stderr
    assert path.read_text(encoding="utf-8") == spool_example() and not missing.exists()


@pytest.mark.parametrize(
    "text",
    [
        "root:x:0:0:root:/root:/bin/bash\n\nbin:x:1:1::/:/usr/sbin/nologin\n",
        '{"tenant": "acme", "vcpus": 720000000}\n',
        "",
    ],
)
def test_a_file_that_is_not_a_spool_file_is_refused_and_left_as_it_was(books, tmp_path, text):
    path = tmp_path / "passwd"
    path.write_text(text)
    path.chmod(0o644)
    done = vce(books.url, "ledger", "record", "--spool", str(path))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "not a spool file" in done.stderr and "Traceback" not in done.stderr
    assert path.read_text() == text and oct(path.stat().st_mode & 0o777) == "0o644"


def test_a_link_to_a_spool_file_is_refused_and_the_file_is_kept(books, tmp_path):
    target = tmp_path / "run.jsonl"
    target.write_text(spool_example())
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    done = vce(books.url, "ledger", "record", "--spool", str(link), "--ledger-url", books.url)
    assert done.returncode == 2 and "symbolic link" in done.stderr, done.stderr
    assert link.is_symlink() and target.read_text() == spool_example()


def test_what_is_left_is_rewritten_keeping_the_files_mode(tmp_path):
    url = existing_ledger(tmp_path)
    path = tmp_path / "run.jsonl"
    bad = '{"v": 1, "type": "usage", "url": "x", "run_id": "r", "change": {"kind": "ship"}}'
    path.write_text(spool_example() + bad + "\n")
    path.chmod(0o640)
    done = vce(url, "ledger", "record", "--spool", str(path), "--ledger-url", url)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert json.loads(done.stdout)["remaining"] == 1 and "kept in the spool" in done.stderr
    assert path.read_text() == '{"vce_spool": 1}\n' + bad + "\n"
    assert oct(path.stat().st_mode & 0o777) == "0o640"


def test_a_read_of_a_missing_sqlite_ledger_is_refused_and_creates_nothing(tmp_path):
    path = tmp_path / "ledgr.sqlite3"  # a mistyped URL
    done = vce(f"sqlite:///{path}", "ledger", "invoice", "--month", "2026-11")
    assert done.returncode == 2
    assert done.stderr.startswith(f"vce: No ledger at {path}: check the ledger URL")
    assert done.stdout == "" and not path.exists()


def test_a_writing_command_creates_a_missing_ledger_and_says_where(tmp_path):
    path = tmp_path / "new" / "ledger.sqlite3"
    done = vce(
        f"sqlite:///{path}", "ledger", "exclusion", "add", "--cause", "maintenance",
        "--start", "2026-11-04T00:00:00+05:00", "--end", "2026-11-04T01:00:00+05:00",
        "--announced-at", "2026-11-01T00:00:00+05:00",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"vce: created a new, empty ledger at {path}\n"
    assert oct(path.stat().st_mode & 0o777) == "0o600"


# -- vce ledger incident open -----------------------------------------------------------------


def test_an_outage_entered_by_the_operator_counts_in_the_sla(books):
    done = vce(
        books.url, "ledger", "incident", "open", "--tenant", "acme", "--vm", "web",
        "--started-at", "2026-11-12T10:00:00+05:00", "--restored-at", "2026-11-12T18:00:00+05:00",
        "--reference", "NOC-118", "--note", "storage array failover",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    outage = json.loads(done.stdout)
    assert (outage["source"], outage["cause"], outage["counts"]) == ("operator", "provider", True)
    assert (outage["started_at"], outage["ended_at"]) == (
        "2026-11-12T05:00:00+00:00", "2026-11-12T13:00:00+00:00",
    )  # fmt: skip
    # The probe's 50 minutes and these 8 hours: 31,800 of 2,592,000 s, 98.7731%, 10%.
    done = vce(books.url, "ledger", "sla", "--month", "2026-11", "--format", "csv")
    [row] = list(csv.DictReader(io.StringIO(done.stdout)))
    assert (row["downtime_seconds"], row["availability"], row["credit_percent"]) == (
        "31800", "98.7731", "10",
    )  # fmt: skip
    assert row["credit"] == "2952.00"
    again = vce(
        books.url, "ledger", "incident", "open", "--tenant", "acme", "--vm", "web",
        "--started-at", "2026-11-12T10:00:00+05:00", "--reference", "NOC-118",
    )  # fmt: skip
    assert json.loads(again.stdout)["id"] == outage["id"]  # its reference is its key
    listed = json.loads(vce(books.url, "ledger", "incident", "list", "--tenant", "acme").stdout)
    assert [(i["source"], i["counts"]) for i in listed] == [("probe", True), ("operator", True)]


def test_an_outage_left_open_is_restored_later(books):
    done = vce(
        books.url, "ledger", "incident", "open", "--tenant", "acme",
        "--started-at", "2026-11-12T10:00:00+05:00",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    number = str(json.loads(done.stdout)["id"])
    restored = vce(books.url, "ledger", "incident", "restore", number,
                   "--at", "2026-11-12T11:00:00+05:00")  # fmt: skip
    assert json.loads(restored.stdout)["ended_at"] == "2026-11-12T06:00:00+00:00"
    done = vce(books.url, "ledger", "sla", "--month", "2026-11", "--format", "csv")
    [row] = list(csv.DictReader(io.StringIO(done.stdout)))
    assert row["downtime_seconds"] == str(3000 + 3600)  # every VM of the tenant: web too


OPEN = ("ledger", "incident", "open", "--tenant", "acme")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (OPEN, "the following arguments are required: --started-at"),
        ((*OPEN, "--started-at", "2026-11-12T10:00:00"), "needs a UTC offset"),
        ((*OPEN, "--started-at", "yesterday"), "argument --started-at"),
        ((*OPEN, "--started-at", "2026-11-12T10:00:00+05:00", "--restored-at",
          "2026-11-12T09:00:00+05:00"), "ended_at: 2026-11-12T09:00:00+05:00 is before"),
        ((*OPEN, "--started-at", "2027-02-01T10:00:00+05:00"),
         "started_at: 2027-02-01T10:00:00+05:00 is in the future"),
        ((*OPEN, "--started-at", "2026-11-12T10:00:00+05:00", "--restored-at",
          "2027-02-01T10:00:00+05:00"), "ended_at: 2027-02-01T10:00:00+05:00 is in the future"),
        (("ledger", "incident", "open", "--tenant", "nobody", "--started-at",
          "2026-11-12T10:00:00+05:00"), "'nobody' is not in the ledger"),
        (("ledger", "incident", "open", "--tenant", "Ac Me", "--started-at",
          "2026-11-12T10:00:00+05:00"), "tenant"),
        ((*OPEN, "--vm", "../web", "--started-at", "2026-11-12T10:00:00+05:00"), "vm"),
        ((*OPEN, "--vm", "web", "--started-at", "2026-11-04T10:30:00+05:00"),
         "overlaps incident #1"),
    ],
)  # fmt: skip
def test_a_bad_outage_is_refused_naming_the_field_and_records_nothing(books, args, message):
    before = ledger_dump(books.url)
    done = vce(books.url, *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert message in done.stderr and "Traceback" not in done.stderr
    assert ledger_dump(books.url) == before


def ledger_dump(url: str) -> list[str]:
    """Every row of the SQLite ledger as SQL (its file header changes on any open)."""
    with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as connection:
        return list(connection.iterdump())
