# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ledger's monthly documents as people and machines read them: one self-contained HTML
page per tenant and month, CSV files and a streamed JSON array.

The input is an invoice document of billing.py (Biller.document, or Books for closed months).
The page is one autoescaped Jinja2 template (templates/statement.html.j2; Jinja2 comes with
ansible-core), the same for `vce ledger invoice --format html` and the API. It must open
offline years later: no scripts, fonts or style sheets fetched from anywhere.

Money arrives as Decimal text and stays Decimal until it is printed: a float would change
the last cent of what the customer is asked to pay.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..core.errors import SpecError, VceError
from ..core.periods import Interval, micros, union
from ..core.validation import whole_number

try:
    import jinja2
except ImportError:  # reported when a page is rendered: CSV and JSON need no template
    jinja2 = None

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

# The chart's coordinate system: about CSS pixels on an A4 page's text width.
CHART_WIDTH = 720
CHART_HEIGHT = 44
TRACK_TOP = 8
TRACK_HEIGHT = 18
MARK_OVERHANG = 4  # downtime marks stick out of the track: visible in grey-scale prints too
# A 5-minute outage is 0.08 units of a month: at 1 unit it was drawn under one CSS pixel wide in
# Chromium (0.77 px on a 360 px phone, 0.92 px on a desktop), a hairline the eye misses. At 4
# units it is a tick of 3-4 px standing out of the track; its tooltip and the table give the
# exact times, and the legend says short marks are widened.
MIN_MARK = 4.0
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


def text_of(value: Any) -> str:
    """A document value as shown: absent is empty, not "None"."""
    return "" if value is None else str(value)


def grouped(number: Decimal) -> str:
    return format(number, ",f").replace(",", NARROW_SPACE).replace("-", MINUS)


def quantity_text(number: Decimal) -> str:
    """A quantity without the ledger's six places of trailing zeros."""
    text = grouped(number)
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True)
class Amount:
    """A figure as printed, with its exact value (the page keeps it in <data value>)."""

    value: Decimal
    text: str


def amount_of(value: Any, name: str, negate: bool = False) -> Amount:
    number = decimal_of(value, name)
    if negate:
        number = -number
    return Amount(number, grouped(number))


def percent_text(number: Decimal) -> str:
    return f"{number}\u00a0%"


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


def incident_refs(incidents: Any) -> str:
    return ", ".join(f"#{i}" for i in incidents or ())


# -- the page -----------------------------------------------------------------------------------
# The page is templates/statement.html.j2. What it shows is computed here as plain view data
# (checked, formatted text, Amounts, chart geometry); the template only lays it out, and
# autoescaping is the one place text becomes HTML.


@functools.cache
def templates() -> jinja2.Environment:
    """The statement's Jinja2 environment, built once."""
    if jinja2 is None:
        raise VceError(
            "The HTML statement needs Jinja2 (it comes with ansible-core; pip install "
            "'jinja2>=3.1', or pip install vce-kvm)"
        )
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        # Block tags on lines of their own leave no blank lines and no indentation in the page.
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


@dataclass(frozen=True)
class LineView:
    meter: str
    unit: str
    quantity: str
    free: str
    unit_price: str
    amount: Amount


@dataclass(frozen=True)
class ResourceView:
    title: str
    host: str
    lines: list[LineView]


@dataclass(frozen=True)
class DiscountView:
    label: str
    before_cap: str  # the amount before the cap, when the cap changed it
    incidents: str
    amount: Amount


@dataclass(frozen=True)
class CreditNoteView:
    issued: str
    reason: str
    key: str
    amount: Amount
    currency: str


@dataclass(frozen=True)
class Swatch:
    colour: str  # a CSS background
    text: str


@dataclass(frozen=True)
class Rect:
    x: str
    y: int
    width: str
    height: int
    fill: str
    title: str
    dashed: bool


@dataclass(frozen=True)
class DayLabel:
    x: str
    day: int


@dataclass(frozen=True)
class ChartView:
    label: str
    pattern: str  # the id of the excluded time's stripes, "" without excluded time
    rects: list[Rect]
    ticks: str  # the SVG path of the day ticks
    days: list[DayLabel]
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT
    label_y: int = CHART_HEIGHT - 2
    stripe_colour: str = COLOUR_EXCLUDED
    tick_colour: str = COLOUR_TICK


@dataclass(frozen=True)
class VmView:
    name: str
    host: str
    availability: str
    downtime: str
    excluded: str
    credit_percent: str
    compute_cost: Amount
    credit: Amount
    incidents: str
    chart: ChartView


@dataclass(frozen=True)
class IncidentView:
    id: str
    vm: str
    host: str
    kind: str
    cause: str
    source: str
    not_counted: str
    started: str
    reported: str
    confirmed: str
    ended: str
    note: str


@dataclass(frozen=True)
class StatementView:
    tenant: str
    month: str
    title: str
    customer: str
    plan: str
    currency: str
    period: str
    zone: str
    status: str
    as_of: str
    utc_offset: str
    warnings: list[str]
    resources: list[ResourceView]
    subtotal: Amount
    discounts: list[DiscountView]
    total: Amount
    credit_notes: list[CreditNoteView]
    net: Amount | None
    legend: list[Swatch]
    vms: list[VmView]
    incidents: list[IncidentView]


def html_statement(document: Mapping[str, Any]) -> str:
    """One tenant's month as a self-contained HTML5 page (inline CSS and SVG, no scripts)."""
    view = statement_view(document)
    return templates().get_template("statement.html.j2").render(s=view)


def statement_view(document: Mapping[str, Any]) -> StatementView:
    frame = Frame.of(document)
    month = text_of(required(document, "month"))
    notes = credit_notes_of(document)
    vms = items_of(document, "availability")
    return StatementView(
        tenant=text_of(required(document, "tenant")),
        month=month,
        title=month_title(month),
        customer=text_of(document.get("customer") or NONE_SHOWN),
        plan=text_of(document.get("plan") or NONE_SHOWN),
        currency=text_of(required(document, "currency")),
        period=f"{frame.first_day()} {EN_DASH} {frame.last_day()}",
        zone=frame.zone.key,
        status=text_of(document.get("status") or "open"),
        as_of=frame.local(frame.as_of),
        utc_offset=frame.utc_offset(),
        warnings=[text_of(w) for w in items_of(document, "warnings", mappings=False)],
        resources=resource_views(items_of(document, "lines")),
        subtotal=amount_of(required(document, "subtotal"), "document.subtotal"),
        discounts=[
            discount_view(discount, index)
            for index, discount in enumerate(items_of(document, "discounts"))
        ],
        total=amount_of(required(document, "total"), "document.total"),
        credit_notes=[credit_note_view(note, index, frame) for index, note in enumerate(notes)],
        net=net_view(document, notes),
        legend=legend(frame, vms),
        vms=[vm_view(vm, index, month, frame) for index, vm in enumerate(vms)],
        incidents=[
            incident_view(row, index, frame)
            for index, row in enumerate(items_of(document, "incidents"))
        ],
    )


def resource_views(lines: list[Any]) -> list[ResourceView]:
    return [
        ResourceView(
            title=resource_title(kind, name, vm),
            host=host,
            lines=[line_view(line, index) for index, line in members],
        )
        for (host, kind, name, vm), members in lines_by_resource(lines).items()
    ]


def lines_by_resource(
    lines: list[Any],
) -> dict[tuple[str, str, str, str], list[tuple[int, Mapping[str, Any]]]]:
    """Lines under their resource, in the document's order (billing sorts them)."""
    groups: dict[tuple[str, str, str, str], list[tuple[int, Mapping[str, Any]]]] = {}
    for index, line in enumerate(lines):
        host, kind, name, vm = (str(line.get(k) or "") for k in ("host", "kind", "name", "vm"))
        groups.setdefault((host, kind, name, vm), []).append((index, line))
    return groups


def resource_title(kind: str, name: str, vm: str) -> str:
    title = f"{KIND_LABELS.get(kind, kind)} {name}"
    return f"{title} of VM {vm}" if vm and vm != name else title


def line_view(line: Mapping[str, Any], index: int) -> LineView:
    name = f"document.lines[{index}]"
    meter = str(line.get("meter") or "")
    free = decimal_of(line.get("free_quantity") or "0", f"{name}.free_quantity")
    return LineView(
        meter=METER_LABELS.get(meter, meter),
        unit=text_of(line.get("unit")),
        quantity=quantity_text(decimal_of(line.get("quantity"), f"{name}.quantity")),
        free=quantity_text(free) if free else NONE_SHOWN,
        unit_price=grouped(decimal_of(line.get("unit_price"), f"{name}.unit_price")),
        amount=amount_of(line.get("amount"), f"{name}.amount"),
    )


def discount_view(discount: Mapping[str, Any], index: int) -> DiscountView:
    # Discounts lower the total: shown negative.
    amount = amount_of(discount.get("amount"), f"document.discounts[{index}].amount", True)
    kind = str(discount.get("kind") or "")
    before_cap = ""
    if discount.get("uncapped") is not None:
        uncapped = decimal_of(discount["uncapped"], "discount.uncapped")
        if uncapped != decimal_of(discount.get("amount"), "discount.amount"):
            before_cap = grouped(uncapped)
    return DiscountView(
        label=text_of(discount.get("description") or DISCOUNT_LABELS.get(kind, kind)),
        before_cap=before_cap,
        incidents=incident_refs(discount.get("incidents")),
        amount=amount,
    )


def credit_note_view(note: CreditNote, index: int, frame: Frame) -> CreditNoteView:
    return CreditNoteView(
        issued=frame.local(note.issued_at) if note.issued_at else NONE_SHOWN,
        reason=note.reason,
        key=note.key,
        amount=amount_of(note.amount, f"document.credit_notes[{index}].amount", True),
        currency=note.currency,
    )


def net_view(document: Mapping[str, Any], notes: list[CreditNote]) -> Amount | None:
    net = total_after(document, notes) if notes else None
    return None if net is None else amount_of(net, "net")


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


# -- SLA --------------------------------------------------------------------------------------


def legend(frame: Frame, vms: list[Any]) -> list[Swatch]:
    entries = [
        Swatch(COLOUR_UP, "VM existed"),
        Swatch(COLOUR_DOWN, "counted downtime (a short one is drawn wider, so that it shows)"),
        Swatch(COLOUR_ABSENT, "VM did not exist"),
    ]
    if any(vm.get("excluded") for vm in vms):
        entries.append(Swatch(STRIPES_CSS, EXCLUDED_TEXT))
    if frame.as_of < frame.end:
        entries.append(Swatch(COLOUR_FUTURE, "not yet reached"))
    return entries


def vm_view(vm: Mapping[str, Any], index: int, month: str, frame: Frame) -> VmView:
    name = f"document.availability[{index}]"
    downtime = count_of(vm.get("downtime_seconds", 0), f"{name}.downtime_seconds")
    excluded = count_of(vm.get("excluded_seconds", 0), f"{name}.excluded_seconds")
    availability = decimal_of(vm.get("availability"), f"{name}.availability")
    percent = decimal_of(vm.get("credit_percent", "0"), f"{name}.credit_percent")
    return VmView(
        name=text_of(vm.get("vm")),
        host=text_of(vm.get("host")),
        availability=percent_text(availability),
        downtime=duration_text(downtime),
        excluded=duration_text(excluded),
        credit_percent=percent_text(percent),
        compute_cost=amount_of(vm.get("compute_cost", "0"), f"{name}.compute_cost"),
        credit=amount_of(vm.get("credit", "0"), f"{name}.credit"),
        incidents=incident_refs(vm.get("incidents")) or NONE_SHOWN,
        chart=vm_chart(vm, index, month, frame),
    )


def vm_chart(vm: Mapping[str, Any], index: int, month: str, frame: Frame) -> ChartView:
    """The VM's month as a timeline: existence, excluded time, counted downtime, absence and
    the future."""
    name = f"document.availability[{index}]"
    existed = intervals_of(vm.get("existed"), f"{name}.existed", frame)
    excluded = intervals_of(vm.get("excluded"), f"{name}.excluded", frame)
    downtime = intervals_of(vm.get("downtime"), f"{name}.downtime", frame)
    # One pattern per chart: ids are the page's, and a chart copied out keeps its own.
    stripes = f"excluded-{index}" if excluded else ""
    rects = [
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
    ]  # fmt: skip
    ticks, days = day_ticks(frame)
    return ChartView(
        label=chart_label(vm, month, existed, downtime, excluded),
        pattern=stripes,
        rects=rects,
        ticks=ticks,
        days=days,
    )


def future_marks(frame: Frame) -> list[Rect]:
    # An open month's rest is unknown, not "did not exist": it must not read as absence.
    if frame.as_of >= frame.end:
        return []
    title = f"After {frame.local(frame.as_of)}: not yet reached"
    return [span_rect(frame.x(frame.as_of), CHART_WIDTH, COLOUR_FUTURE, title, dashed=True)]


def span_rect(
    left: float, right: float, colour: str, title: str, *, overhang: int = 0,
    least: float = 0.0, dashed: bool = False,
) -> Rect:  # fmt: skip
    width = right - left
    if width < least:
        width = least
        left = min(left, CHART_WIDTH - least)
    return Rect(
        x=f"{left:.2f}",
        y=TRACK_TOP - overhang,
        width=f"{width:.2f}",
        height=TRACK_HEIGHT + 2 * overhang,
        fill=colour,
        title=title,
        dashed=dashed,
    )


def day_ticks(frame: Frame) -> tuple[str, list[DayLabel]]:
    """A tick at each local midnight (as one SVG path) and the day's number under the middle
    of the day."""
    bottom = TRACK_TOP + TRACK_HEIGHT
    path, labels = [], []
    for day, start, end in frame.days():
        left, right = frame.x(start), frame.x(end)
        path.append(f"M{left:.2f} {bottom}v4")
        labels.append(DayLabel(f"{(left + right) / 2:.2f}", day.day))
    path.append(f"M{CHART_WIDTH - 0.5} {bottom}v4")
    return " ".join(path), labels


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


def incident_view(incident: Mapping[str, Any], index: int, frame: Frame) -> IncidentView:
    name = f"document.incidents[{index}]"

    def when(key: str, missing: str = NONE_SHOWN) -> str:
        value = incident.get(key)
        return frame.local(moment_of(value, f"{name}.{key}")) if value else missing

    source = incident.get("source")
    host = incident.get("host")
    return IncidentView(
        id=text_of(incident.get("id")),
        vm=text_of(incident.get("vm") or "every VM"),
        host=str(host) if host else "",
        kind=text_of(incident.get("kind")),
        cause=text_of(incident.get("cause")),
        source=str(source) if source else "",
        not_counted=not_counted_text(incident),
        started=when("started_at"),
        reported=when("reported_at"),
        confirmed=when("confirmed_at", "not confirmed" if source == "report" else NONE_SHOWN),
        ended=when("ended_at", "still open"),
        note=text_of(incident.get("note") or ""),
    )


def not_counted_text(incident: Mapping[str, Any]) -> str:
    """Why an incident the ledger marks as not counting gives nothing ("" when it counts, or
    when the document predates the mark)."""
    if incident.get("counts") is not False:
        return ""
    if incident.get("cause") != "provider":
        return "not counted: not the provider's fault (terms 5.8\u20135.10)"
    return "not counted: not confirmed by support (terms 5.11)"


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
