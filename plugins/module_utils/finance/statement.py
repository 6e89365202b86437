# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ledger's monthly documents as people and machines read them: one self-contained HTML
page per tenant and month, CSV files and a streamed JSON array.

The input is an invoice document of billing.py (Biller.document, or Books for closed months).
Standard library only: this runs on operators' machines and inside module payloads, where
nothing else can be assumed installed, and the page must open offline years later (no
scripts, fonts or style sheets fetched from anywhere).

Money arrives as Decimal text and stays Decimal until it is printed: a float would change
the last cent of what the customer is asked to pay.
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..core.errors import SpecError
from ..core.periods import Interval, micros, union
from ..core.validation import whole_number

# Groups thousands without letting a line break split an amount.
NARROW_SPACE = "\u202f"
MINUS = "\u2212"
EN_DASH = "\u2013"
NONE_SHOWN = "\u2014"
MONTH_NAMES = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip
KIND_LABELS = {
    "vm": "VM",
    "disk": "Disk",
    "public_ip": "Public IP",
    "zone_link": "Zone link",
    "backup": "Backups of VM",
}
METER_LABELS = {
    "vcpu": "vCPU",
    "ram": "RAM",
    "disk": "Disk",
    "public_ip": "Public IP",
    "zone_link": "Zone link",
    "backup": "Backup storage",
}
DISCOUNT_LABELS = {"sla_credit": "SLA credit", "data_loss": "Data loss"}
EXCLUDED_TEXT = "excluded, not counted (announced maintenance, force majeure, the customer's doing)"

# The chart's coordinate system: about CSS pixels on an A4 page's text width, so that the
# minimum mark below stays about one device pixel wide on screen and on paper.
CHART_WIDTH = 720
CHART_HEIGHT = 44
TRACK_TOP = 8
TRACK_HEIGHT = 18
MARK_OVERHANG = 4  # downtime marks stick out of the track: visible in grey-scale prints too
MIN_MARK = 1.0  # a 1-minute outage is 0.017 units of a month: it would vanish
# Blue and vermilion stay distinct for the common colour blindnesses.
COLOUR_UP = "#2f6db5"
COLOUR_DOWN = "#d7301f"
COLOUR_ABSENT = "#d4d4d4"
# Excluded time is striped, not a third flat colour: it stays apart from the blue, the
# vermilion and the grey of absence in grey-scale prints too.
COLOUR_EXCLUDED = "#e69f00"
STRIPES_CSS = f"repeating-linear-gradient(45deg, {COLOUR_EXCLUDED} 0 1.5px, #ffffff 1.5px 3px)"
COLOUR_FUTURE = "#ffffff"
COLOUR_TICK = "#777777"

INVOICE_COLUMNS = (
    "tenant", "customer", "plan", "month", "status", "currency", "record", "host", "kind",
    "name", "vm", "meter", "unit", "quantity", "free_quantity", "unit_price", "amount",
    "description", "issued_at",
)  # fmt: skip
SLA_COLUMNS = (
    "tenant", "month", "host", "vm", "existed_seconds", "downtime_seconds", "excluded_seconds",
    "availability", "credit_percent", "compute_cost", "credit",
)  # fmt: skip
LINE_TEXT_KEYS = ("host", "kind", "name", "vm", "meter", "unit")
LINE_NUMBER_KEYS = ("quantity", "free_quantity", "unit_price", "amount")
SLA_NUMBER_KEYS = ("availability", "credit_percent", "compute_cost", "credit")
SLA_COUNT_KEYS = ("existed_seconds", "downtime_seconds", "excluded_seconds")

CSS = """
@page { size: A4; margin: 14mm 12mm; }
* { box-sizing: border-box; }
html { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
body { font: 10pt/1.4 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; color: #1a1a1a; background: #fff; max-width: 186mm; margin: 0 auto;
  padding: 10mm 4mm; }
@media print { body { max-width: none; padding: 0; } }
h1 { font-size: 16pt; margin: 0 0 3mm; }
h2 { font-size: 12pt; margin: 7mm 0 2mm; padding-bottom: 1mm; border-bottom: 0.4mm solid;
  break-after: avoid; }
dl.facts { display: grid; grid-template-columns: max-content 1fr max-content 1fr;
  gap: 1mm 4mm; margin: 0; }
dl.facts dt { color: #555; }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
table { width: 100%; border-collapse: collapse; margin: 2mm 0; }
th, td { padding: 1mm 1.5mm; text-align: left; vertical-align: top;
  border-bottom: 0.2mm solid #ddd; overflow-wrap: anywhere; }
thead th { font-size: 9pt; font-weight: 600; border-bottom: 0.4mm solid #888; }
tr, tbody.vm { break-inside: avoid; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.resource th { background: #f2f2f2; }
.muted { color: #666; font-weight: normal; font-size: 9pt; }
tbody.totals td { border-bottom: none; }
tr.total td { border-top: 0.4mm solid; font-weight: 700; font-size: 11pt; }
.status { display: inline-block; padding: 0 2mm; border-radius: 1mm; font-weight: 600; }
.status.open { background: #fff1c2; }
.status.closed { background: #d6efdc; }
.warnings { border: 0.4mm solid #c77c00; background: #fff7e3; padding: 2mm 4mm; margin: 4mm 0; }
.warnings ul { margin: 1mm 0; padding-left: 5mm; }
.legend { font-size: 9pt; color: #444; margin: 1mm 0; }
.swatch { display: inline-block; width: 3mm; height: 3mm; margin: 0 1mm 0 3mm;
  vertical-align: -0.4mm; border: 0.2mm solid #888; }
tr.chart td { padding-top: 0; }
svg.timeline { display: block; width: 100%; height: auto; }
table.incidents { font-size: 9pt; }
tr.not-counted td { color: #666; }
strong.not-counted { color: #1a1a1a; font-weight: 600; }
.ref { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 8pt;
  word-break: break-all; }
footer { margin-top: 8mm; color: #666; font-size: 8.5pt; }
"""


# -- reading the document ---------------------------------------------------------------------


def required(document: Mapping[str, Any], key: str) -> Any:
    value = document.get(key)
    if value is None:
        raise SpecError(f"document.{key}", "is missing")
    return value


def items_of(document: Mapping[str, Any], key: str, mappings: bool = True) -> list[Any]:
    """An optional list of the document (older documents lack the newer ones)."""
    value = document.get(key)
    if value is None:
        return []
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        raise SpecError(f"document.{key}", f"must be a list, got {type(value).__name__}")
    items = list(value)
    for index, item in enumerate(items):
        if mappings and not isinstance(item, Mapping):
            raise SpecError(f"document.{key}[{index}]", f"must be a mapping, got {item!r}")
    return items


def decimal_of(value: Any, name: str) -> Decimal:
    # A float has already lost the exact amount: refuse it rather than print its binary noise.
    if isinstance(value, (bool, float)) or not isinstance(value, (str, int, Decimal)):
        raise SpecError(name, f"must be a decimal string, got {type(value).__name__} {value!r}")
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise SpecError(name, f"must be a decimal number, got {value!r}") from None
    if not number.is_finite():
        raise SpecError(name, f"must be a finite number, got {value!r}")
    return number


def count_of(value: Any, name: str) -> int:
    if isinstance(value, (bool, float)):
        raise SpecError(name, f"must be a whole number, got {value!r}")
    if isinstance(value, str):  # int() would take " 5", "1_000" and Unicode digits
        return whole_number(value, name)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise SpecError(name, f"must be a whole number, got {value!r}") from None


def moment_of(value: Any, name: str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        parsed = value
    else:
        try:
            parsed = dt.datetime.fromisoformat(str(value))
        except ValueError:
            raise SpecError(name, f"must be an ISO 8601 moment, got {value!r}") from None
    if parsed.tzinfo is None:
        raise SpecError(name, f"needs its UTC offset, got {value!r}")
    return parsed


def zone_of(document: Mapping[str, Any]) -> ZoneInfo:
    name = required(document, "time_zone")
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        raise SpecError("document.time_zone", f"unknown time zone {name!r}") from None


@dataclass(frozen=True)
class Frame:
    """The month being shown: where a moment falls on it, and how it reads locally."""

    start: dt.datetime
    end: dt.datetime
    as_of: dt.datetime
    zone: ZoneInfo

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> Frame:
        period = required(document, "period")
        if not isinstance(period, Mapping):
            raise SpecError("document.period", "must have a start and an end")
        start = moment_of(period.get("start"), "document.period.start")
        end = moment_of(period.get("end"), "document.period.end")
        if end <= start:
            raise SpecError("document.period", f"ends ({end}) before it starts ({start})")
        as_of = moment_of(document.get("as_of") or end, "document.as_of")
        return cls(start, end, as_of, zone_of(document))

    def x(self, moment: dt.datetime) -> float:
        """The moment's position on the chart (outside the month: its nearer edge)."""
        inside = min(max(moment, self.start), self.end)
        return CHART_WIDTH * micros(self.start, inside) / micros(self.start, self.end)

    def local(self, moment: dt.datetime) -> str:
        # Seconds only when there are some: probes record whole seconds, people read minutes.
        local = moment.astimezone(self.zone)
        text = f"{local:%Y-%m-%d %H:%M}"
        return text + f":{local:%S}" if local.second or local.microsecond else text

    def first_day(self) -> dt.date:
        return self.start.astimezone(self.zone).date()

    def last_day(self) -> dt.date:
        # The end is exclusive: the month's last day is the one before the end's midnight.
        return (self.end - dt.timedelta(microseconds=1)).astimezone(self.zone).date()

    def days(self) -> Iterator[tuple[dt.date, dt.datetime, dt.datetime]]:
        """Each local day of the month with its start and end (DST days are 23 or 25 hours)."""
        day, last = self.first_day(), self.last_day()
        while day <= last:
            following = day + dt.timedelta(days=1)
            begin = max(self.start, midnight(day, self.zone))
            finish = min(self.end, midnight(following, self.zone))
            yield day, begin, finish
            day = following

    def utc_offset(self) -> str:
        offset = self.start.astimezone(self.zone).strftime("%z")
        return f"UTC{offset[:3]}:{offset[3:]}" if offset else "UTC"


def midnight(day: dt.date, zone: ZoneInfo) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(dt.UTC)


def intervals_of(pairs: Any, name: str, frame: Frame) -> list[Interval]:
    """[start, end] pairs of the document, within the month, merged."""
    found = []
    for index, pair in enumerate(pairs or ()):
        if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise SpecError(f"{name}[{index}]", f"must be a [start, end] pair, got {pair!r}")
        start = moment_of(pair[0], f"{name}[{index}][0]")
        end = moment_of(pair[1], f"{name}[{index}][1]")
        start, end = max(start, frame.start), min(end, frame.end)
        if start < end:
            found.append((start, end))
    return union(found)


# -- formatting ---------------------------------------------------------------------------------


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def grouped(number: Decimal) -> str:
    return format(number, ",f").replace(",", NARROW_SPACE).replace("-", MINUS)


def quantity_text(number: Decimal) -> str:
    """A quantity without the ledger's six places of trailing zeros."""
    text = grouped(number)
    return text.rstrip("0").rstrip(".") if "." in text else text


def amount_html(value: Any, name: str, negate: bool = False) -> str:
    # <data value> keeps the exact figure for whoever copies or parses the page.
    number = decimal_of(value, name)
    if negate:
        number = -number
    return f'<data value="{esc(number)}">{esc(grouped(number))}</data>'


def duration_text(seconds: int) -> str:
    if seconds <= 0:
        return "none"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, rest = divmod(rest, 60)
    units = ((days, "d"), (hours, "h"), (minutes, "min"), (rest, "s"))
    return " ".join(f"{amount}\u00a0{unit}" for amount, unit in units if amount)


def minutes_text(start: dt.datetime, end: dt.datetime) -> str:
    minutes = Decimal(micros(start, end)) / 60_000_000
    if minutes == minutes.to_integral_value():
        return f"{minutes:.0f} min"
    return f"{minutes.quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)} min"


def month_title(label: str) -> str:
    year, _dash, month = label.partition("-")
    # isdigit() takes "²", which int() refuses: ASCII digits only.
    if (
        year.isascii()
        and year.isdigit()
        and month.isascii()
        and month.isdigit()
        and 1 <= int(month) <= 12
    ):
        return f"{MONTH_NAMES[int(month) - 1]} {year}"
    return label


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


# -- the page -----------------------------------------------------------------------------------


def html_statement(document: Mapping[str, Any]) -> str:
    """One tenant's month as a self-contained HTML5 page (inline CSS and SVG, no scripts)."""
    frame = Frame.of(document)
    tenant = esc(required(document, "tenant"))
    month = esc(required(document, "month"))
    sections = (
        header_html(document, frame),
        warnings_html(document),
        invoice_html(document),
        credit_notes_html(document, frame),
        sla_html(document, frame),
        incidents_html(document, frame),
        footer_html(frame),
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>Statement {tenant} {month}</title>\n<style>{CSS}</style>\n</head>\n"
        "<body>\n" + "".join(sections) + "</body>\n</html>\n"
    )


def header_html(document: Mapping[str, Any], frame: Frame) -> str:
    label = str(required(document, "month"))
    period = f"{frame.first_day()} {EN_DASH} {frame.last_day()}"
    facts = (
        ("Tenant", esc(required(document, "tenant"))),
        ("Customer", esc(document.get("customer") or NONE_SHOWN)),
        ("Plan", esc(document.get("plan") or NONE_SHOWN)),
        ("Currency", esc(required(document, "currency"))),
        ("Period", f'{esc(period)} <span class="muted">({esc(frame.zone.key)})</span>'),
        ("Status", status_html(document, frame)),
    )
    rows = "".join(f"<dt>{name}</dt><dd>{value}</dd>\n" for name, value in facts)
    return (
        f"<header>\n<h1>Invoice and SLA statement: {esc(month_title(label))}</h1>\n"
        f'<dl class="facts">\n{rows}</dl>\n</header>\n'
    )


def status_html(document: Mapping[str, Any], frame: Frame) -> str:
    status = str(document.get("status") or "open")
    as_of = esc(frame.local(frame.as_of))
    if status == "closed":
        return f'<span class="status closed">closed</span> final, as of {as_of}'
    if status == "open":
        return (
            f'<span class="status open">open</span> as of {as_of}; '
            "figures change until the month is closed"
        )
    return f'<span class="status">{esc(status)}</span> as of {as_of}'


def warnings_html(document: Mapping[str, Any]) -> str:
    warnings = items_of(document, "warnings", mappings=False)
    if not warnings:
        return ""
    items = "".join(f"<li>{esc(w)}</li>\n" for w in warnings)
    return (
        '<section class="warnings" role="note">\n<strong>Warnings</strong>\n'
        f"<ul>\n{items}</ul>\n</section>\n"
    )


def section(name: str, title: str, body: str) -> str:
    return f'<section class="{name}">\n<h2>{title}</h2>\n{body}</section>\n'


def invoice_html(document: Mapping[str, Any]) -> str:
    currency = esc(required(document, "currency"))
    lines = items_of(document, "lines")
    body = [
        row
        for resource, members in lines_by_resource(lines).items()
        for row in (resource_row(resource), *(line_row(line, i) for i, line in members))
    ]
    if not body:
        body = ['<tr><td colspan="6">No charges this month.</td></tr>\n']
    head = (
        '<thead><tr><th>Meter</th><th>Unit</th><th class="num">Quantity</th>'
        '<th class="num">Free (trial)</th>'
        f'<th class="num">Unit price ({currency})</th><th class="num">Amount ({currency})</th>'
        "</tr></thead>\n"
    )
    table = f"<table>\n{head}<tbody>\n{''.join(body)}</tbody>\n{totals_html(document)}</table>\n"
    return section("invoice", "Invoice", table)


def lines_by_resource(
    lines: list[Any],
) -> dict[tuple[str, str, str, str], list[tuple[int, Mapping[str, Any]]]]:
    """Lines under their resource, in the document's order (billing sorts them)."""
    groups: dict[tuple[str, str, str, str], list[tuple[int, Mapping[str, Any]]]] = {}
    for index, line in enumerate(lines):
        host, kind, name, vm = (str(line.get(k) or "") for k in ("host", "kind", "name", "vm"))
        groups.setdefault((host, kind, name, vm), []).append((index, line))
    return groups


def resource_row(resource: tuple[str, str, str, str]) -> str:
    host, kind, name, vm = resource
    title = f"{KIND_LABELS.get(kind, kind)} {name}"
    if vm and vm != name:
        title += f" of VM {vm}"
    where = f' <span class="muted">on {esc(host)}</span>' if host else ""
    return f'<tr class="resource"><th colspan="6" scope="rowgroup">{esc(title)}{where}</th></tr>\n'


def line_row(line: Mapping[str, Any], index: int) -> str:
    name = f"document.lines[{index}]"
    meter = str(line.get("meter") or "")
    free = decimal_of(line.get("free_quantity") or "0", f"{name}.free_quantity")
    cells = (
        esc(METER_LABELS.get(meter, meter)),
        esc(line.get("unit")),
        esc(quantity_text(decimal_of(line.get("quantity"), f"{name}.quantity"))),
        esc(quantity_text(free)) if free else NONE_SHOWN,
        esc(grouped(decimal_of(line.get("unit_price"), f"{name}.unit_price"))),
        amount_html(line.get("amount"), f"{name}.amount"),
    )
    return (
        f"<tr><td>{cells[0]}</td><td>{cells[1]}</td>"
        + "".join(f'<td class="num">{cell}</td>' for cell in cells[2:])
        + "</tr>\n"
    )


def totals_html(document: Mapping[str, Any]) -> str:
    currency = esc(required(document, "currency"))
    rows = [total_row("Subtotal", amount_html(required(document, "subtotal"), "document.subtotal"))]
    for index, discount in enumerate(items_of(document, "discounts")):
        amount = amount_html(discount.get("amount"), f"document.discounts[{index}].amount", True)
        rows.append(total_row(discount_label(discount), amount))
    total = amount_html(required(document, "total"), "document.total")
    rows.append(total_row(f"Total ({currency})", total, "total"))
    return '<tbody class="totals">\n' + "".join(rows) + "</tbody>\n"


def total_row(label: str, amount: str, css_class: str = "") -> str:
    attribute = f' class="{css_class}"' if css_class else ""
    return f'<tr{attribute}><td colspan="5">{label}</td><td class="num">{amount}</td></tr>\n'


def discount_label(discount: Mapping[str, Any]) -> str:
    kind = str(discount.get("kind") or "")
    text = esc(discount.get("description") or DISCOUNT_LABELS.get(kind, kind))
    if discount.get("uncapped") is not None:
        uncapped = decimal_of(discount["uncapped"], "discount.uncapped")
        if uncapped != decimal_of(discount.get("amount"), "discount.amount"):
            text += f' <span class="muted">(before the cap: {esc(grouped(uncapped))})</span>'
    incidents = discount.get("incidents") or []
    if incidents:
        text += (
            f' <span class="muted">(incidents {esc(", ".join(f"#{i}" for i in incidents))})</span>'
        )
    return text


@dataclass(frozen=True)
class CreditNote:
    key: str
    amount: Decimal
    currency: str
    reason: str
    issued_at: dt.datetime | None


def credit_notes_of(document: Mapping[str, Any]) -> list[CreditNote]:
    """A closed month's credit notes, checked."""
    currency = str(required(document, "currency"))
    notes = []
    for index, note in enumerate(items_of(document, "credit_notes")):
        name = f"document.credit_notes[{index}]"
        issued = note.get("issued_at")
        notes.append(
            CreditNote(
                key=str(note.get("key") or ""),
                amount=decimal_of(note.get("amount"), f"{name}.amount"),
                currency=str(note.get("currency") or currency),
                reason=str(note.get("reason") or ""),
                issued_at=moment_of(issued, f"{name}.issued_at") if issued else None,
            )
        )
    return notes


def total_after(document: Mapping[str, Any], notes: list[CreditNote]) -> Decimal | None:
    """What is owed after the credit notes; None when a note is in another currency, which
    cannot be netted against this invoice (it is listed only)."""
    currency = str(required(document, "currency"))
    if any(note.currency != currency for note in notes):
        return None
    total = decimal_of(required(document, "total"), "document.total")
    return total - sum((note.amount for note in notes), Decimal(0))


def credit_notes_html(document: Mapping[str, Any], frame: Frame) -> str:
    notes = credit_notes_of(document)
    if not notes:
        return ""
    rows = []
    for index, note in enumerate(notes):
        issued = frame.local(note.issued_at) if note.issued_at else NONE_SHOWN
        amount = amount_html(note.amount, f"document.credit_notes[{index}].amount", True)
        rows.append(
            f"<tr><td>{esc(issued)}</td><td>{esc(note.reason)}</td>"
            f'<td class="ref">{esc(note.key)}</td><td class="num">'
            f"{amount} {esc(note.currency)}</td></tr>\n"
        )
    net = total_after(document, notes)
    if net is not None:
        rows.append(
            '<tr class="total"><td colspan="3">Total after credit notes</td>'
            f'<td class="num">{amount_html(net, "net")} {esc(required(document, "currency"))}'
            "</td></tr>\n"
        )
    head = (
        '<thead><tr><th>Issued</th><th>Reason</th><th>Reference</th><th class="num">Amount</th>'
        "</tr></thead>\n"
    )
    return section(
        "credit-notes",
        "Credit notes",
        "<p>Issued after the month was closed, for records that arrived later.</p>\n"
        f"<table>\n{head}<tbody>\n{''.join(rows)}</tbody>\n</table>\n",
    )


# -- SLA --------------------------------------------------------------------------------------


def sla_html(document: Mapping[str, Any], frame: Frame) -> str:
    vms = items_of(document, "availability")
    intro = (
        "<p>Availability is the share of the time a VM existed that was not counted downtime. "
        "Excluded time (announced maintenance, force majeure, the customer's own doing) is "
        "not counted.</p>\n"
    )
    if not vms:
        return section("sla", "Service level", f"{intro}<p>No VM existed in this period.</p>\n")
    currency = esc(required(document, "currency"))
    head = (
        '<thead><tr><th>VM</th><th class="num">Availability</th><th class="num">Downtime</th>'
        '<th class="num">Excluded</th><th class="num">Credit %</th>'
        f'<th class="num">Compute ({currency})</th><th class="num">Credit ({currency})</th>'
        "<th>Incidents</th></tr></thead>\n"
    )
    bodies = "".join(vm_html(vm, index, document, frame) for index, vm in enumerate(vms))
    return section(
        "sla",
        "Service level",
        f"{intro}{legend_html(frame, vms)}<table>\n{head}{bodies}</table>\n",
    )


def legend_html(frame: Frame, vms: list[Any]) -> str:
    entries = [
        (COLOUR_UP, "VM existed"),
        (COLOUR_DOWN, "counted downtime"),
        (COLOUR_ABSENT, "VM did not exist"),
    ]
    if any(vm.get("excluded") for vm in vms):
        entries.append((STRIPES_CSS, EXCLUDED_TEXT))
    if frame.as_of < frame.end:
        entries.append((COLOUR_FUTURE, "not yet reached"))
    swatches = "".join(
        f'<span class="swatch" style="background:{colour}"></span>{esc(text)}'
        for colour, text in entries
    )
    return f'<p class="legend">Timeline, one tick per day:{swatches}</p>\n'


def vm_html(vm: Mapping[str, Any], index: int, document: Mapping[str, Any], frame: Frame) -> str:
    name = f"document.availability[{index}]"
    downtime = count_of(vm.get("downtime_seconds", 0), f"{name}.downtime_seconds")
    excluded = count_of(vm.get("excluded_seconds", 0), f"{name}.excluded_seconds")
    availability = decimal_of(vm.get("availability"), f"{name}.availability")
    percent = decimal_of(vm.get("credit_percent", "0"), f"{name}.credit_percent")
    incidents = ", ".join(f"#{i}" for i in vm.get("incidents") or ())
    cells = (
        f'{esc(vm.get("vm"))}<br><span class="muted">{esc(vm.get("host"))}</span>',
        f"{esc(availability)}\u00a0%",
        esc(duration_text(downtime)),
        esc(duration_text(excluded)),
        f"{esc(percent)}\u00a0%",
        amount_html(vm.get("compute_cost", "0"), f"{name}.compute_cost"),
        amount_html(vm.get("credit", "0"), f"{name}.credit"),
        esc(incidents or NONE_SHOWN),
    )
    row = (
        f'<tr><th scope="row">{cells[0]}</th>'
        + "".join(f'<td class="num">{cell}</td>' for cell in cells[1:-1])
        + f"<td>{cells[-1]}</td></tr>\n"
    )
    chart = vm_chart(vm, index, str(document.get("month") or ""), frame)
    return (
        f'<tbody class="vm">\n{row}<tr class="chart"><td colspan="8">{chart}</td></tr>\n</tbody>\n'
    )


def vm_chart(vm: Mapping[str, Any], index: int, month: str, frame: Frame) -> str:
    """The VM's month as a timeline: existence, excluded time, counted downtime, absence and
    the future."""
    name = f"document.availability[{index}]"
    existed = intervals_of(vm.get("existed"), f"{name}.existed", frame)
    excluded = intervals_of(vm.get("excluded"), f"{name}.excluded", frame)
    downtime = intervals_of(vm.get("downtime"), f"{name}.downtime", frame)
    # One pattern per chart: ids are the page's, and a chart copied out keeps its own.
    stripes = f"excluded-{index}"
    marks = [
        stripes_pattern(stripes) if excluded else "",
        span_rect(0, CHART_WIDTH, COLOUR_ABSENT, "VM did not exist"),
        *future_marks(frame),
        *(
            span_rect(frame.x(s), frame.x(e), COLOUR_UP, f"Existed {span_text(s, e, frame)}")
            for s, e in existed
        ),
        *(
            span_rect(
                frame.x(s), frame.x(e), f"url(#{stripes})",
                f"Excluded {span_text(s, e, frame)}: {minutes_text(s, e)}, not counted",
                least=MIN_MARK,
            )
            for s, e in excluded
        ),
        *(
            span_rect(
                frame.x(s), frame.x(e), COLOUR_DOWN,
                f"Downtime {span_text(s, e, frame)}: {minutes_text(s, e)}",
                overhang=MARK_OVERHANG, least=MIN_MARK,
            )
            for s, e in downtime
        ),
        *day_ticks(frame),
    ]  # fmt: skip
    label = chart_label(vm, month, existed, downtime, excluded)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" role="img" '
        f'aria-label="{esc(label)}" viewBox="0 0 {CHART_WIDTH} {CHART_HEIGHT}" '
        f'width="{CHART_WIDTH}" height="{CHART_HEIGHT}">' + "".join(marks) + "</svg>"
    )


def stripes_pattern(identifier: str) -> str:
    return (
        f'<defs><pattern id="{identifier}" width="4" height="4" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="4" height="4" fill="#ffffff"/>'
        f'<rect width="2" height="4" fill="{COLOUR_EXCLUDED}"/></pattern></defs>'
    )


def future_marks(frame: Frame) -> list[str]:
    # An open month's rest is unknown, not "did not exist": it must not read as absence.
    if frame.as_of >= frame.end:
        return []
    title = f"After {frame.local(frame.as_of)}: not yet reached"
    return [span_rect(frame.x(frame.as_of), CHART_WIDTH, COLOUR_FUTURE, title, dashed=True)]


def span_rect(
    left: float, right: float, colour: str, title: str, *, overhang: int = 0,
    least: float = 0.0, dashed: bool = False,
) -> str:  # fmt: skip
    width = right - left
    if width < least:
        width = least
        left = min(left, CHART_WIDTH - least)
    stroke = ' stroke="#999999" stroke-width="0.6" stroke-dasharray="3 2"' if dashed else ""
    return (
        f'<rect x="{left:.2f}" y="{TRACK_TOP - overhang}" width="{width:.2f}" '
        f'height="{TRACK_HEIGHT + 2 * overhang}" fill="{colour}"{stroke}>'
        f"<title>{esc(title)}</title></rect>"
    )


def day_ticks(frame: Frame) -> list[str]:
    """A tick at each local midnight and the day's number under the middle of the day."""
    bottom = TRACK_TOP + TRACK_HEIGHT
    path, labels = [], []
    for day, start, end in frame.days():
        left, right = frame.x(start), frame.x(end)
        path.append(f"M{left:.2f} {bottom}v4")
        labels.append(
            f'<text x="{(left + right) / 2:.2f}" y="{CHART_HEIGHT - 2}" '
            f'text-anchor="middle">{day.day}</text>'
        )
    path.append(f"M{CHART_WIDTH - 0.5} {bottom}v4")
    tick = f'<path d="{" ".join(path)}" stroke="{COLOUR_TICK}" stroke-width="0.8" fill="none"/>'
    # Attributes rather than the page's CSS: a chart copied out of the page reads the same.
    return [tick, f'<g font-size="8" fill="#555555">{"".join(labels)}</g>']


def span_text(start: dt.datetime, end: dt.datetime, frame: Frame) -> str:
    first, last = frame.local(start), frame.local(end)
    # Same day: the end's time says enough.
    if first[:10] == last[:10]:
        last = last[11:]
    return f"{first} {EN_DASH} {last}"


def chart_label(
    vm: Mapping[str, Any], month: str, existed: list[Interval], downtime: list[Interval],
    excluded: list[Interval],
) -> str:  # fmt: skip
    summary = (
        f"Availability of VM {vm.get('vm')} on {vm.get('host')} in {month}: "
        f"{vm.get('availability')}%. Existed {duration_text(seconds_in(existed))}"
    )
    if downtime:
        summary += (
            f"; counted downtime {duration_text(seconds_in(downtime))} in "
            f"{plural(len(downtime), 'interval')}"
        )
    else:
        summary += "; no counted downtime"
    if excluded:
        summary += (
            f"; excluded, not counted, {duration_text(seconds_in(excluded))} in "
            f"{plural(len(excluded), 'interval')}"
        )
    return summary + "."


def seconds_in(intervals: list[Interval]) -> int:
    return sum(micros(s, e) for s, e in intervals) // 10**6


def incidents_html(document: Mapping[str, Any], frame: Frame) -> str:
    incidents = items_of(document, "incidents")
    if not incidents:
        return section("incidents", "Incidents", "<p>No incidents this month.</p>\n")
    head = (
        "<thead><tr><th>#</th><th>VM</th><th>Kind</th><th>Cause</th><th>Started</th>"
        "<th>Reported / confirmed</th><th>Ended</th><th>Note</th></tr></thead>\n"
    )
    rows = "".join(incident_row(row, index, frame) for index, row in enumerate(incidents))
    return section(
        "incidents",
        "Incidents",
        f'<table class="incidents">\n{head}<tbody>\n{rows}</tbody>\n</table>\n',
    )


def incident_row(incident: Mapping[str, Any], index: int, frame: Frame) -> str:
    name = f"document.incidents[{index}]"

    def when(key: str, missing: str = NONE_SHOWN) -> str:
        value = incident.get(key)
        return esc(frame.local(moment_of(value, f"{name}.{key}")) if value else missing)

    vm = esc(incident.get("vm") or "every VM")
    host = incident.get("host")
    where = f'<br><span class="muted">{esc(host)}</span>' if host else ""
    source = incident.get("source")
    cause = esc(incident.get("cause")) + (
        f'<br><span class="muted">by {esc(source)}</span>' if source else ""
    )
    not_counted = not_counted_text(incident)
    if not_counted:
        cause += f'<br><strong class="not-counted">{esc(not_counted)}</strong>'
    unconfirmed = "not confirmed" if source == "report" else NONE_SHOWN
    cells = (
        esc(incident.get("id")),
        vm + where,
        esc(incident.get("kind")),
        cause,
        when("started_at"),
        f"{when('reported_at')} / {when('confirmed_at', unconfirmed)}",
        when("ended_at", "still open"),
        esc(incident.get("note") or ""),
    )
    row_class = ' class="not-counted"' if not_counted else ""
    return f"<tr{row_class}>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>\n"


def not_counted_text(incident: Mapping[str, Any]) -> str:
    """Why an incident the ledger marks as not counting gives nothing ("" when it counts, or
    when the document predates the mark)."""
    if incident.get("counts") is not False:
        return ""
    if incident.get("cause") != "provider":
        return "not counted: not the provider's fault (terms 5.8\u20135.10)"
    return "not counted: not confirmed by support (terms 5.11)"


def footer_html(frame: Frame) -> str:
    return (
        f"<footer>Times are local to {esc(frame.zone.key)} ({esc(frame.utc_offset())} at the "
        "start of the period). Amounts are exact to the cent; each line is rounded once.</footer>\n"
    )


# -- files for machines -------------------------------------------------------------------------


def invoice_rows(document: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """One invoice as CSV rows: its lines, its discounts, its total."""
    head = {key: document.get(key) for key in ("customer", "plan", "status")}
    head.update(
        tenant=required(document, "tenant"),
        month=required(document, "month"),
        currency=required(document, "currency"),
    )
    for index, line in enumerate(items_of(document, "lines")):
        name = f"document.lines[{index}]"
        numbers = {
            key: decimal_of(line.get(key) or "0", f"{name}.{key}") for key in LINE_NUMBER_KEYS
        }
        texts = {key: line.get(key) for key in LINE_TEXT_KEYS}
        yield {**head, "record": "line", **texts, **numbers}
    for index, discount in enumerate(items_of(document, "discounts")):
        yield {
            **head,
            "record": "discount",
            "kind": f"discount:{discount.get('kind')}",
            "amount": decimal_of(discount.get("amount"), f"document.discounts[{index}].amount"),
            "description": discount.get("description"),
        }
    total = decimal_of(required(document, "total"), "document.total")
    yield {**head, "record": "total", "kind": "total", "amount": total}
    yield from credit_note_rows(document, head)


def credit_note_rows(
    document: Mapping[str, Any], head: Mapping[str, Any]
) -> Iterator[dict[str, Any]]:
    """A closed month's credit notes (amount positive, as the invoice shows discounts), then
    what is owed after them (record "net"), as the HTML statement shows them."""
    notes = credit_notes_of(document)
    for note in notes:
        yield {
            **head, "currency": note.currency, "record": "credit_note", "kind": "credit_note",
            "name": note.key, "amount": note.amount, "description": note.reason,
            "issued_at": note.issued_at,
        }  # fmt: skip
    net = total_after(document, notes) if notes else None
    if net is not None:
        yield {**head, "record": "net", "kind": "total after credit notes", "amount": net}


def sla_rows(document: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    head = {"tenant": required(document, "tenant"), "month": required(document, "month")}
    for index, vm in enumerate(items_of(document, "availability")):
        name = f"document.availability[{index}]"
        counts = {key: count_of(vm.get(key, 0), f"{name}.{key}") for key in SLA_COUNT_KEYS}
        numbers = {key: decimal_of(vm.get(key), f"{name}.{key}") for key in SLA_NUMBER_KEYS}
        yield {**head, "host": vm.get("host"), "vm": vm.get("vm"), **counts, **numbers}


def write_invoice_csv(documents: Iterable[Mapping[str, Any]], out: TextIO) -> int:
    """Every invoice's lines, discounts (kind "discount:<kind>", amount as positive as the
    invoice shows it) and total as CSV rows, then a closed month's credit notes and the total
    after them (record "net"); returns the rows written after the header.
    Documents are read one at a time: a generator of thousands is fine."""
    rows = (row for document in documents for row in invoice_rows(document))
    return write_rows_csv(rows, out, INVOICE_COLUMNS)


def write_sla_csv(documents: Iterable[Mapping[str, Any]], out: TextIO) -> int:
    """One row per VM and month; returns the rows written after the header."""
    rows = (row for document in documents for row in sla_rows(document))
    return write_rows_csv(rows, out, SLA_COLUMNS)


def write_rows_csv(rows: Iterable[Mapping[str, Any]], out: TextIO, columns: Sequence[str]) -> int:
    """Rows as CSV with `columns` as the header (a missing key or None: an empty cell);
    returns the rows written after the header. Open `out` with newline="" (csv's rule)."""
    if isinstance(columns, str):
        raise SpecError("columns", "must be a sequence of column names, not one string")
    names = list(columns)
    if not names:
        raise SpecError("columns", "name at least one column")
    if len(set(names)) != len(names):
        raise SpecError("columns", f"names a column twice: {names}")
    writer = csv.writer(out)
    writer.writerow(names)
    count = 0
    for row in rows:
        writer.writerow([cell_text(row.get(name)) for name in names])
        count += 1
    return count


def cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, (Mapping, list, tuple)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), default=json_default)
    return str(value)


def write_json_stream(items: Iterable[Mapping[str, Any]], out: TextIO) -> int:
    """A JSON array written item by item, so memory does not grow with the month; returns
    the number of items. An empty iterable writes []."""
    count = 0
    out.write("[")
    for item in items:
        # Serialised before anything is written: a failing item leaves no dangling comma.
        text = json.dumps(item, sort_keys=True, default=json_default)
        out.write(",\n" if count else "\n")
        out.write(text)
        count += 1
    out.write("\n]" if count else "]")
    return count


def json_default(value: Any) -> Any:
    """Ledger rows may carry Decimals and datetimes: written as the text billing uses."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def sla_statement(document: Mapping[str, Any]) -> dict[str, Any]:
    """A month's SLA document as a statement: availability per VM, incidents, the credit."""
    credit = [x["amount"] for x in document["discounts"] if x["kind"] == "sla_credit"]
    return {
        "tenant": document["tenant"],
        "month": document["month"],
        "vms": document["availability"],
        "incidents": document["incidents"],
        "sla_credit": credit[0] if credit else "0.00",
    }
