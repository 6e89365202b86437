"""Monthly documents rendered for people (HTML) and machines (CSV, JSON), from hand-built
invoice documents shaped like billing.py's."""

from __future__ import annotations

import copy
import csv
import io
import json
import re
from decimal import Decimal
from html.parser import HTMLParser

import pytest
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError, VceError
from ansible_collections.vce.kvm.plugins.module_utils.finance import statement
from ansible_collections.vce.kvm.plugins.module_utils.finance.statement import (
    CHART_WIDTH,
    COLOUR_DOWN,
    COLOUR_FUTURE,
    COLOUR_UP,
    INVOICE_COLUMNS,
    MIN_MARK,
    SLA_COLUMNS,
    html_statement,
    write_invoice_csv,
    write_json_stream,
    write_rows_csv,
    write_sla_csv,
)

# November 2026 in Asia/Almaty (UTC+5): 30 days, its midpoint is 2026-11-15T19:00Z.
START = "2026-10-31T19:00:00+00:00"
END = "2026-11-30T19:00:00+00:00"
MIDPOINT = "2026-11-15T19:00:00+00:00"
EVIL = '<script>alert("x")</script>'


def line(name, meter, unit, quantity, price, amount, kind="vm", vm=None, free="0.000000"):
    return {
        "host": "qemu:///system", "kind": kind, "name": name, "vm": vm or name, "meter": meter,
        "unit": unit, "quantity": quantity, "free_quantity": free, "unit_price": price,
        "amount": amount,
    }  # fmt: skip


def vm_row(vm, existed, downtime, availability, percent, compute, credit, incidents=()):
    return {
        "host": "qemu:///system", "vm": vm, "existed_seconds": 2592000,
        "downtime_seconds": 60 * len(downtime), "excluded_seconds": 0,
        "availability": availability, "credit_percent": percent, "compute_cost": compute,
        "credit": credit, "incidents": list(incidents), "existed": existed, "downtime": downtime,
    }  # fmt: skip


def document(tenant="acme", **changes):
    doc = {
        "tenant": tenant, "customer": "c1", "plan": "std", "month": "2026-11",
        "time_zone": "Asia/Almaty", "period": {"start": START, "end": END}, "as_of": END,
        "status": "open", "currency": "KZT",
        "lines": [
            line("web", "vcpu", "vCPU-hour", "1440.000000", "10", "14400.00"),
            line("web", "ram", "GiB-hour", "1440.000000", "10.5", "15120.00"),
            line("web-root", "disk", "GiB-hour", "14400.000000", "0.01", "144.00", "disk", "web"),
            line("half", "vcpu", "vCPU-hour", "360.000000", "10", "3600.00", free="360.000000"),
        ],
        "subtotal": "33264.00",
        "discounts": [
            {"kind": "sla_credit", "description": "SLA credit (terms 5.6)", "amount": "1476.00",
             "uncapped": "1476.00"},
            {"kind": "data_loss", "description": "Data lost: 50% (5.13)", "amount": "15894.00",
             "incidents": [3]},
        ],
        "total": "15894.00",
        "availability": [
            vm_row("web", [[START, END]], [[MIDPOINT, "2026-11-15T19:01:00+00:00"]], "99.9976",
                   "0", "29520.00", "0.00", [1]),
            vm_row("half", [[MIDPOINT, END]], [], "100.0000", "0", "3600.00", "0.00"),
        ],
        "incidents": [
            {"id": 1, "vm": "web", "host": "qemu:///system", "kind": "downtime",
             "source": "probe", "cause": "provider", "started_at": MIDPOINT,
             "reported_at": None, "confirmed_at": None,
             "ended_at": "2026-11-15T19:01:00+00:00", "note": f"probe saw {EVIL}"},
            {"id": 3, "vm": "", "host": "", "kind": "data_loss", "source": "report",
             "cause": "provider", "started_at": "2026-11-20T10:00:00+00:00",
             "reported_at": "2026-11-20T10:00:00+00:00",
             "confirmed_at": "2026-11-20T11:00:00+00:00", "ended_at": None, "note": ""},
        ],
        "warnings": [],
    }  # fmt: skip
    doc.update(changes)
    return doc


def closed_document():
    return document(
        status="closed",
        credit_notes=[
            {"key": "credit-note:acme:2026-11:abc", "amount": "12.00", "currency": "KZT",
             "reason": "records received after the month was closed",
             "issued_at": "2026-12-02T04:00:00+00:00"},
        ],
    )  # fmt: skip


class Checker(HTMLParser):
    """Collects elements and fails on mis-nested or unclosed ones."""

    VOID = {"meta", "br", "link", "img", "hr", "input", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.elements: list[tuple[str, dict]] = []
        self.errors: list[str] = []
        self.doctype = False
        self.text: list[str] = []
        self.titles: list[str] = []

    def handle_decl(self, decl):
        self.doctype = decl.lower() == "doctype html"

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self.stack and self.stack[-1] == "title" and "rect" in self.stack:
            self.titles.append(data)


def parsed(page):
    checker = Checker()
    checker.feed(page)
    checker.close()
    assert checker.doctype
    assert checker.errors == []
    assert checker.stack == []
    return checker


def charts(checker):
    """Per <svg>: its attributes and its rects as (attributes, tooltip) in order."""
    found, current = [], None
    for tag, attrs in checker.elements:
        if tag == "svg":
            current = (attrs, [])
            found.append(current)
        elif tag == "rect" and current is not None:
            current[1].append(attrs)
    return found


# -- HTML -------------------------------------------------------------------------------------


def test_page_parses_and_shows_the_figures_as_given():
    page = html_statement(document())
    checker = parsed(page)
    assert '<meta charset="utf-8">' in page
    for value in ("33264.00", "15894.00", "-1476.00", "14400.00", "144.00"):
        assert f'<data value="{value}">' in page
    text = "".join(checker.text)
    assert "15\u202f894.00" in text  # grouped with a narrow no-break space
    assert "Total (KZT)" in text
    assert "2026-11-01 \u2013 2026-11-30" in text  # local dates, not UTC's Oct 31
    assert "Asia/Almaty" in text
    assert "Free (trial)" in text and "360" in text
    assert "(incidents #3)" in text
    # no network, no scripts
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page
    assert "<script" not in page.lower()


def test_lines_are_grouped_by_resource():
    checker = parsed(html_statement(document()))
    groups = [a for tag, a in checker.elements if tag == "tr" and a.get("class") == "resource"]
    assert len(groups) == 3  # VM web, disk web-root, VM half
    text = "".join(checker.text)
    assert "Disk web-root of VM web" in text


def test_every_value_is_escaped():
    doc = document(tenant=EVIL, customer='"><img src=x onerror=alert(1)>')
    doc["warnings"] = [f"plan {EVIL} has no prices: billed at 0"]
    page = html_statement(doc)
    checker = parsed(page)
    assert EVIL not in page
    assert "&lt;script&gt;" in page
    tags = {tag for tag, _attrs in checker.elements}
    assert "script" not in tags and "img" not in tags
    assert f"Statement {EVIL} 2026-11" in "".join(checker.text)  # the title, read back


def test_one_accessible_chart_per_vm():
    page = html_statement(document())
    assert page.count("<svg") == 2
    found = charts(parsed(page))
    assert [svg["role"] for svg, _rest in found] == ["img", "img"]
    assert "99.9976%" in found[0][0]["aria-label"]
    assert "web" in found[0][0]["aria-label"]
    assert "no counted downtime" in found[1][0]["aria-label"]


def test_downtime_at_the_midpoint_is_drawn_at_half_width_and_visible():
    checker = parsed(html_statement(document()))
    rects = charts(checker)[0][1]
    down = [r for r in rects if r["fill"] == COLOUR_DOWN]
    assert len(down) == 1
    assert float(down[0]["x"]) == pytest.approx(CHART_WIDTH / 2, abs=0.01)
    assert float(down[0]["width"]) == MIN_MARK  # one minute is drawn, not lost
    tooltip = [t for t in checker.titles if t.startswith("Downtime")]
    assert tooltip == ["Downtime 2026-11-16 00:00 \u2013 00:01: 1 min"]


def test_a_vm_that_existed_half_the_month():
    rects = charts(parsed(html_statement(document())))[1][1]
    up = [r for r in rects if r["fill"] == COLOUR_UP]
    assert len(up) == 1
    assert float(up[0]["x"]) == pytest.approx(CHART_WIDTH / 2, abs=0.01)
    assert float(up[0]["width"]) == pytest.approx(CHART_WIDTH / 2, abs=0.01)
    assert not [r for r in rects if r["fill"] == COLOUR_DOWN]


def test_day_ticks_follow_the_local_calendar():
    checker = parsed(html_statement(document()))
    labels = [tag for tag, _attrs in checker.elements if tag == "text"]
    assert len(labels) == 2 * 30  # 30 days, two charts

    # A month with a 25-hour day (DST ends in Berlin on 2026-10-25): 31 ticks, and the
    # midnight after the long day sits later than a uniform grid would put it.
    berlin = document(
        time_zone="Europe/Berlin", month="2026-10",
        period={"start": "2026-09-30T22:00:00+00:00", "end": "2026-10-31T23:00:00+00:00"},
        as_of="2026-10-31T23:00:00+00:00",
    )  # fmt: skip
    berlin["availability"] = [vm_row("web", [], [], "100.0000", "0", "0.00", "0.00")]
    page = html_statement(berlin)
    path = re.search(r'<path d="([^"]+)"', page).group(1)
    ticks = [float(x) for x in re.findall(r"M([\d.]+) ", path)]
    assert len(ticks) == 32  # 31 midnights and the end
    hour = CHART_WIDTH / (31 * 24 + 1)
    assert ticks[24] == pytest.approx(24 * 24 * hour, abs=0.01)  # the 25th, before the change
    assert ticks[25] == pytest.approx((25 * 24 + 1) * hour, abs=0.01)  # after the long day


def test_an_open_month_shows_what_is_not_reached_yet():
    doc = document(as_of=MIDPOINT)
    doc["availability"][0]["existed"] = [[START, MIDPOINT]]
    doc["availability"][0]["downtime"] = []
    page = html_statement(doc)
    rects = charts(parsed(page))[0][1]
    future = [r for r in rects if r["fill"] == COLOUR_FUTURE]
    assert len(future) == 1
    assert float(future[0]["x"]) == pytest.approx(CHART_WIDTH / 2, abs=0.01)
    assert "as of 2026-11-16 00:00" in page


def test_a_closed_month_with_a_credit_note():
    page = html_statement(closed_document())
    checker = parsed(page)
    text = "".join(checker.text)
    assert "closed" in text and "final" in text
    assert "Credit notes" in text
    assert "records received after the month was closed" in text
    assert '<data value="-12.00">' in page
    assert '<data value="15882.00">' in page  # the total less the note
    assert "2026-12-02 09:00" in text  # issued, local time


def test_a_month_with_nothing_in_it():
    doc = document(lines=[], discounts=[], availability=[], incidents=[])
    doc.update(subtotal="0.00", total="0.00")
    text = "".join(parsed(html_statement(doc)).text)
    assert "No charges this month." in text
    assert "No VM existed in this period." in text
    assert "No incidents this month." in text


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("total",), 15894.0),
        (("lines", 0, "amount"), "12,5"),
        (("time_zone",), "Mars/Olympus"),
        (("period", "end"), "2026-11-30T19:00:00"),
        (("availability", 0, "downtime"), [["2026-11-15T19:00:00+00:00"]]),
        (("availability", 0, "excluded"), [["2026-11-15T19:00:00", END]]),
        (("lines", 0), "not a line"),
        (("credit_notes",), [{"amount": 12.0, "issued_at": END}]),
    ],
)
def test_bad_documents_are_refused(path, value):
    doc = copy.deepcopy(document())
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(SpecError):
        html_statement(doc)


def test_without_jinja2_the_page_is_refused_and_the_files_still_written(monkeypatch):
    monkeypatch.setattr(statement, "jinja2", None)
    statement.templates.cache_clear()
    try:
        with pytest.raises(VceError, match="needs Jinja2"):
            html_statement(document())
        assert write_invoice_csv([document()], io.StringIO(newline="")) > 0
    finally:
        statement.templates.cache_clear()


@pytest.mark.parametrize(
    ("note", "field"),
    [
        ({"amount": 12.0, "issued_at": END}, "document.credit_notes[0].amount"),
        ({"amount": "12.00", "issued_at": "yesterday"}, "document.credit_notes[0].issued_at"),
    ],
)
def test_a_bad_credit_note_is_refused_in_csv_naming_the_field(note, field):
    with pytest.raises(SpecError, match=re.escape(field)):
        write_invoice_csv([document(credit_notes=[note])], io.StringIO(newline=""))


# -- CSV and JSON ---------------------------------------------------------------------------------


def read_csv(text):
    return list(csv.reader(io.StringIO(text, newline="")))


def test_invoice_csv_round_trips_exactly_and_streams():
    out = io.StringIO(newline="")
    second = document(
        tenant="beta", lines=[line("db", "vcpu", "vCPU-hour", "0.500000", "10", "5.00")]
    )
    second.update(discounts=[], subtotal="5.00", total="5.00")

    def documents():
        yield closed_document()
        # the first invoice is fully written before the second is even read
        written = read_csv(out.getvalue())
        assert written[-1][6] == "net" and written[-1][16] == "15882.00"
        yield second

    assert write_invoice_csv(documents(), out) == 4 + 2 + 1 + 2 + 1 + 0 + 1
    rows = read_csv(out.getvalue())
    assert tuple(rows[0]) == INVOICE_COLUMNS
    records = [dict(zip(rows[0], row, strict=True)) for row in rows[1:]]
    assert [r["record"] for r in records] == ["line"] * 4 + ["discount"] * 2 + [
        "total", "credit_note", "net", "line", "total",
    ]  # fmt: skip
    note = records[7]
    assert (note["name"], note["amount"], note["currency"], note["issued_at"]) == (
        "credit-note:acme:2026-11:abc", "12.00", "KZT", "2026-12-02T04:00:00+00:00",
    )  # fmt: skip
    assert note["description"] == "records received after the month was closed"
    first = records[0]
    assert (first["tenant"], first["month"], first["currency"], first["status"]) == (
        "acme", "2026-11", "KZT", "closed",
    )  # fmt: skip
    assert (first["quantity"], first["unit_price"], first["amount"]) == (
        "1440.000000", "10", "14400.00",
    )  # fmt: skip
    assert records[3]["free_quantity"] == "360.000000"
    assert [r["kind"] for r in records[4:7]] == [
        "discount:sla_credit",
        "discount:data_loss",
        "total",
    ]
    assert [r["amount"] for r in records[4:7]] == ["1476.00", "15894.00", "15894.00"]
    assert records[-1]["tenant"] == "beta" and records[-1]["amount"] == "5.00"
    assert records[-2]["quantity"] == "0.500000"
    lines = [
        Decimal(r["amount"]) for r in records if r["tenant"] == "acme" and r["record"] == "line"
    ]
    assert sum(lines) == Decimal("33264.00")


def test_invoice_csv_keeps_hostile_text_as_data():
    out = io.StringIO(newline="")
    doc = document(tenant=EVIL)
    doc["discounts"][0]["description"] = 'comma, "quote"\nnew line'
    write_invoice_csv([doc], out)
    rows = read_csv(out.getvalue())
    assert rows[1][0] == EVIL
    assert 'comma, "quote"\nnew line' in rows[5]


def test_sla_csv_has_one_row_per_vm():
    out = io.StringIO(newline="")
    assert write_sla_csv([document(), closed_document()], out) == 4
    rows = read_csv(out.getvalue())
    assert tuple(rows[0]) == SLA_COLUMNS
    assert rows[1] == [
        "acme", "2026-11", "qemu:///system", "web", "2592000", "60", "0", "99.9976", "0",
        "29520.00", "0.00",
    ]  # fmt: skip
    assert rows[2][3] == "half" and rows[2][7] == "100.0000"


def test_generic_rows_csv():
    out = io.StringIO(newline="")
    rows = [
        {"a": "1", "b": None, "c": True},
        {"a": Decimal("2.50"), "extra": "ignored"},
        {"a": [1, 2], "b": {"k": "v"}, "c": False},
    ]
    assert write_rows_csv(iter(rows), out, ["a", "b", "c"]) == 3
    assert read_csv(out.getvalue()) == [
        ["a", "b", "c"],
        ["1", "", "true"],
        ["2.50", "", ""],
        ["[1,2]", '{"k":"v"}', "false"],
    ]
    empty = io.StringIO(newline="")
    assert write_rows_csv([], empty, ["a"]) == 0
    assert read_csv(empty.getvalue()) == [["a"]]


@pytest.mark.parametrize("columns", ["abc", [], ["a", "a"]])
def test_generic_rows_csv_refuses_bad_columns(columns):
    with pytest.raises(SpecError):
        write_rows_csv([], io.StringIO(), columns)


def test_json_stream():
    out = io.StringIO()
    items = ({"n": n, "amount": Decimal("1.10") * n} for n in range(3))
    assert write_json_stream(items, out) == 3
    assert json.loads(out.getvalue()) == [
        {"amount": "0.00", "n": 0},
        {"amount": "1.10", "n": 1},
        {"amount": "2.20", "n": 2},
    ]
    empty = io.StringIO()
    assert write_json_stream(iter(()), empty) == 0
    assert empty.getvalue() == "[]"
    assert json.loads(empty.getvalue()) == []


@pytest.mark.parametrize("value", ["\u0663", "\u00b2", " 3", "1_0", "3\n"])
def test_a_count_in_unicode_digits_or_with_spaces_is_refused_naming_the_field(value):
    with pytest.raises(SpecError) as caught:
        statement.count_of(value, "vms.web1.downtime_seconds")
    assert caught.value.field == "vms.web1.downtime_seconds"


def test_a_month_title_with_superscript_digits_stays_the_label():
    assert statement.month_title("2026-1\u00b2") == "2026-1\u00b2"
