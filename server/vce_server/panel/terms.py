# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The customer's pages about the terms: quotas and "ask for more" (3.7), requests with their
clocks (5.1), outage reports (5.11), usage, invoices and SLA statements, and the trial (3.12).

Every page calls `ctx.terms` (service/terms.py) with the session's Principal, as the API's
/v1 routes do, so a page reads and changes the session's own tenant only. A form the service
refuses comes back with the reason beside its field (422) and nothing changed.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html as html_text
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.core.periods import (
    clip,
    parse_month,
    time_zone,
)
from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup

from ..api.deps import Context, context
from ..errors import ApiError
from . import views
from .guard import COOKIE_PATH, csrf_checked, customer, posted
from .render import HEADERS, page
from .routes import form_key, see_other, submit
from .sessions import Session

router = APIRouter(prefix=COOKIE_PATH, include_in_schema=False)
# What a request's kind reads as in the list.
REQUEST_TITLES = {
    "quota_increase": "Quota increase",
    "password": "Password reset",
    "reboot": "VM reboot",
    "unblock": "VM unblock",
    "vm_reboot_unblock": "VM reboot or unblock",
    "zone_link": "Zone link",
    "critical_fault": "Critical fault",
    "minor_fault": "Minor fault",
}
# Usage quantities per hour, as the invoice names them: (interval field, label, MiB per unit).
QUANTITIES = (
    ("vcpus", "vCPU-hours", 1),
    ("ram_mib", "RAM GiB-hours", 1024),
    ("disk_mib", "Disk GiB-hours", 1024),
    ("public_ips", "Public IP-hours", 1),
    ("zone_links", "Zone link-hours", 1),
)
KIND_TITLES = {
    "vm": "VMs",
    "disk": "Disks",
    "volume": "Volumes",
    "public_ip": "Public IPs",
    "zone_link": "Zone links",
}
HOUR = Decimal(3600)
CENT = Decimal("0.01")
STYLE_BLOCK = re.compile(r"<style>(.*?)</style>", re.DOTALL)
STYLE_ATTRIBUTE = re.compile(r' style="([^"]*)"')


# -- what the pages show ---------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRow:
    """A request of 5.1 with its clock, as the list shows it."""

    id: str
    title: str
    asked: str
    note: str
    logged_at: str
    due_at: str
    fulfilled_at: str | None
    status: str
    left: str

    @property
    def granted(self) -> bool:
        return self.fulfilled_at is not None

    @property
    def tone(self) -> str:
        """The clock's status as a class name: met, open, missed, missed-open."""
        return self.status.replace(" (open)", "-open")


@dataclass(frozen=True)
class KindUsage:
    """One kind of object's usage so far in the month."""

    kind: str
    title: str
    objects: int
    hours: Decimal
    quantities: tuple[tuple[str, Decimal], ...]
    amount: Decimal | None


@dataclass(frozen=True)
class ObjectUsage:
    """One usage interval of an object within the month so far."""

    kind: str
    name: str
    state: str
    since: str
    until: str | None
    hours: Decimal
    quantities: tuple[tuple[str, Decimal], ...]  # (label, quantity-hours)


def minutes_text(delta: dt.timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"


def time_left(view: Mapping[str, Any], now: dt.datetime) -> str:
    """What the clock says now: the time left, how late it is, or nothing once met."""
    if view.get("fulfilled_at"):
        return ""
    due = dt.datetime.fromisoformat(view["due_at"])
    if now > due:
        return f"late by {minutes_text(now - due)}"
    return f"{minutes_text(due - now)} left"


def asked_text(view: Mapping[str, Any]) -> str:
    quotas = view.get("quotas") or {}
    parts = [f"{views.QUOTA_LABELS.get(kind, kind)} to {limit}" for kind, limit in quotas.items()]
    if view.get("vm"):
        parts.append(f"VM {view['vm']}")
    return ", ".join(parts)


def request_row(view: Mapping[str, Any], now: dt.datetime) -> RequestRow:
    return RequestRow(
        id=view["id"],
        title=REQUEST_TITLES.get(view["kind"], view["kind"]),
        asked=asked_text(view),
        note=view.get("note") or "",
        logged_at=view["logged_at"],
        due_at=view["due_at"],
        fulfilled_at=view.get("fulfilled_at"),
        status=view["status"],
        left=time_left(view, now),
    )


def usage_rows(
    intervals: Iterable[Mapping[str, Any]], start: dt.datetime, now: dt.datetime
) -> list[ObjectUsage]:
    """Each usage interval's hours within the month so far (an open one runs until now); the
    intervals an object did not exist are not usage."""
    rows = []
    for item in intervals:
        if item["state"] == "absent":
            continue
        began = dt.datetime.fromisoformat(item["started_at"])
        ended = dt.datetime.fromisoformat(item["ended_at"]) if item.get("ended_at") else None
        span = clip(began, ended, start, max(now, start))
        hours = Decimal(int((span[1] - span[0]).total_seconds()) if span else 0) / HOUR
        rows.append(
            ObjectUsage(
                kind=item["kind"], name=item["name"], state=item["state"],
                since=item["started_at"], until=item.get("ended_at"), hours=hours.quantize(CENT),
                quantities=tuple((label, hours * item[field] / per_unit)
                                 for field, label, per_unit in QUANTITIES if item.get(field)),
            )
        )  # fmt: skip
    return rows


def kind_usage(rows: Iterable[ObjectUsage], amounts: Mapping[str, Decimal]) -> list[KindUsage]:
    """Per object kind: how many objects, their hours, the quantity-hours, the amount billed."""
    hours: dict[str, Decimal] = {}
    names: dict[str, set[str]] = {}
    quantities: dict[str, dict[str, Decimal]] = {}
    for row in rows:
        hours[row.kind] = hours.get(row.kind, Decimal(0)) + row.hours
        names.setdefault(row.kind, set()).add(row.name)
        summed = quantities.setdefault(row.kind, {})
        for label, value in row.quantities:
            summed[label] = summed.get(label, Decimal(0)) + value
    return [
        KindUsage(
            kind=kind, title=KIND_TITLES.get(kind, kind.replace("_", " ")),
            objects=len(names[kind]), hours=hours[kind],
            quantities=tuple((label, value.quantize(CENT))
                             for label, value in quantities[kind].items()),
            amount=amounts.get(kind),
        )
        for kind in sorted(hours)
    ]  # fmt: skip


def amounts_by_kind(invoice: Mapping[str, Any]) -> dict[str, Decimal]:
    found: dict[str, Decimal] = {}
    for line in invoice.get("lines", ()):
        found[line["kind"]] = found.get(line["kind"], Decimal(0)) + Decimal(str(line["amount"]))
    return found


def statement_headers(html: str) -> dict[str, str]:
    """The page headers, with the statement's own inline style allowed by its hash: the
    statement is one self-contained file (it must open offline years later), and the policy
    still refuses any other style and every script."""
    blocks = [digest(text) for text in STYLE_BLOCK.findall(html)]
    attributes = sorted(
        {digest(html_text.unescape(text)) for text in STYLE_ATTRIBUTE.findall(html)}
    )
    sources = " ".join(blocks + (["'unsafe-hashes'", *attributes] if attributes else []))
    policy = HEADERS["Content-Security-Policy"] + f"; style-src 'self' {sources}"
    return {**HEADERS, "Content-Security-Policy": policy}


def digest(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def field_error(error: SpecError, prefix: str = "") -> tuple[str, str]:
    """The form field a service refusal names, and its reason."""
    return error.field.removeprefix(prefix), error.reason


def in_sentence(label: str) -> str:
    """A quota's label inside a sentence: "Ask for more memory", "Ask for more vCPUs"."""
    return label[0].lower() + label[1:] if label[1:2].islower() else label


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# -- quotas (3.7) ----------------------------------------------------------------------------


@router.get("/quotas")
def quotas_page(
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    return show_quotas(request, ctx, session)


def show_quotas(
    request: Request, ctx: Context, session: Session, status: int = 200,
    errors: Mapping[str, str] | None = None, values: Mapping[str, str] | None = None,
    filed: Mapping[str, Any] | None = None,
) -> Response:  # fmt: skip
    bars = views.quota_bars(ctx.terms.quotas(session.principal))
    return page(
        request, "terms_quotas.html.j2", status=status,
        quotas=[(bar, in_sentence(bar.label)) for bar in bars],
        errors=errors or {}, values=values or {},
        filed=request_row(filed, now_utc()) if filed else None,
        queued_because=(filed or {}).get("queued_because", []),
    )  # fmt: skip


@router.post("/quotas")
def ask_for_more(
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    """One kind's new limit: granted at once when the plan and the zone allow it, else a
    request with its 20-minute clock (5.1)."""
    fields = csrf_checked(session, fields)
    kind = fields.get("kind", "")
    limit, note = fields.get("limit", "").strip(), fields.get("note", "")
    values = {f"{kind}.limit": limit, f"{kind}.note": note}
    if not limit:
        errors = {f"{kind}.limit": "write the new limit you need"}
        return show_quotas(request, ctx, session, 422, errors, values)
    body = {"kind": "quota_increase", "quotas": {kind: limit}, "note": note}
    try:
        filed = ctx.terms.file_request(session.principal, body)
    except SpecError as error:
        name, reason = field_error(error, "quotas.")
        errors = {f"{kind}.{'note' if name == 'note' else 'limit'}": reason}
        return show_quotas(request, ctx, session, 422, errors, values)
    return show_quotas(request, ctx, session, filed=filed)


# -- requests (5.1) and outages (5.11) -------------------------------------------------------


@router.get("/requests")
def requests_page(
    request: Request,
    reported: str | None = None,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    return show_requests(request, ctx, session, reported=reported)


def show_requests(
    request: Request, ctx: Context, session: Session, status: int = 200,
    errors: Mapping[str, str] | None = None, values: Mapping[str, str] | None = None,
    reported: str | None = None,
) -> Response:  # fmt: skip
    who = session.principal
    now = now_utc()
    incidents = list(reversed(ctx.terms.incidents(who)))
    return page(
        request, "terms_requests.html.j2", status=status,
        requests=[request_row(view, now) for view in ctx.terms.requests(who)],
        incidents=incidents,
        reported=next((i for i in incidents if str(i["id"]) == reported), None),
        vms=sorted(vm["name"] for vm in ctx.resources.list(who.tenant, "vms")),
        errors=errors or {}, values=values or {},
    )  # fmt: skip


@router.post("/incidents")
def report_outage(
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    """An outage report (5.11): recorded now; when it began, if the customer says, goes to
    support in its note."""
    fields = csrf_checked(session, fields)
    who = session.principal
    values = {key: fields.get(key, "") for key in ("vm", "note", "started_at")}
    vms = {vm["name"] for vm in ctx.resources.list(who.tenant, "vms")}
    errors = {}
    if values["vm"] and values["vm"] not in vms:
        errors["vm"] = "choose one of your VMs, or every VM"
    began, reason = began_at(values["started_at"])
    if reason:
        errors["started_at"] = reason
    if errors:
        return show_requests(request, ctx, session, 422, errors, values)
    body: dict[str, Any] = {"note": values["note"], "started_at": began}
    if values["vm"]:
        body["vm"] = values["vm"]
    try:
        found = ctx.terms.report_incident(who, body)
    except SpecError as error:
        name, reason = field_error(error)
        return show_requests(request, ctx, session, 422, {name: reason}, values)
    return see_other(f"{COOKIE_PATH}/requests?reported={found['id']}#incidents")


def began_at(text: str) -> tuple[str | None, str]:
    """The form's "it began at" (a browser's date and time, read as UTC) as ISO 8601 with its
    offset, or the reason it is not one."""
    text = text.strip()
    if not text:
        return None, ""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None, "a date and time, e.g. 2026-11-24T09:30"
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.isoformat(), ""


# -- usage, invoices, SLA statements ---------------------------------------------------------


@router.get("/billing")
def billing_page(
    request: Request,
    month: str | None = None,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    try:
        return show_billing(request, ctx, session, month or None)
    except SpecError as error:
        return show_billing(request, ctx, session, None, 422, error.reason, month or "")


def show_billing(
    request: Request, ctx: Context, session: Session, month: str | None, status: int = 200,
    month_error: str = "", asked: str = "",
) -> Response:  # fmt: skip
    who = session.principal
    usage = ctx.terms.usage(who, month)
    start = parse_month(usage["month"], time_zone(None, "time_zone")).start
    rows = usage_rows(usage["intervals"], start, now_utc())
    invoice = ctx.terms.invoice(who, usage["month"])
    return page(
        request, "terms_billing.html.j2", status=status,
        month=usage["month"], asked=asked or usage["month"], month_error=month_error,
        kinds=kind_usage(rows, amounts_by_kind(invoice)),
        objects=rows, invoice=invoice, invoices=ctx.terms.invoices(who),
    )  # fmt: skip


@router.get("/billing/{month}/invoice")
def invoice_page(
    month: str,
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    """The month's invoice and SLA statement: the one HTML statement of finance/statement.py,
    as `vce ledger invoice --format html` writes it."""
    try:
        html = ctx.terms.invoice_html(session.principal, month)
    except SpecError as error:
        return show_billing(request, ctx, session, None, 422, error.reason, month)
    return HTMLResponse(html, headers=statement_headers(html))


@router.get("/billing/{month}/sla")
def sla_page(
    month: str,
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    """The month's service level: availability per VM with its timeline, the incidents, the
    credit; drawn from the invoice document by the statement's own views and chart."""
    try:
        view, charts, credit = ctx.terms.sla_view(session.principal, month)
    except SpecError as error:
        return show_billing(request, ctx, session, None, 422, error.reason, month)
    # The statement's own chart macro rendered them in its autoescaped environment: markup.
    return page(
        request, "terms_sla.html.j2", s=view, charts=[Markup(chart) for chart in charts],
        credit=credit,
    )  # fmt: skip


# -- the trial (3.12) ------------------------------------------------------------------------


@router.get("/trial")
def trial_page(
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    return show_trial(request, ctx, session)


def show_trial(
    request: Request, ctx: Context, session: Session, status: int = 200, error: str = "",
    stopping: Iterable[tuple[str, str]] = (),
) -> Response:  # fmt: skip
    trial = ctx.terms.trial(session.principal)
    now = now_utc()
    ends = dt.datetime.fromisoformat(trial["ends_at"]) if trial["ends_at"] else None
    return page(
        request, "terms_trial.html.j2", status=status, trial=trial, error=error,
        left=minutes_text(ends - now) if ends and ends > now and trial["state"] == "trial" else "",
        running=running_vms(ctx, session), stopping=list(stopping),
    )  # fmt: skip


def running_vms(ctx: Context, session: Session) -> list[str]:
    vms = ctx.resources.list(session.principal.tenant, "vms")
    return sorted(vm["name"] for vm in vms if vm.get("state") == "running")


@router.post("/trial")
def ask_trial(
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    csrf_checked(session, fields)
    try:
        ctx.terms.ask_trial(session.principal)
    except ApiError as error:
        return show_trial(request, ctx, session, error.status, error.message)
    return see_other(f"{COOKIE_PATH}/trial")


@router.get("/trial/switch-off")
def switch_off_page(
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
) -> Response:
    """The confirmation: which VMs will be stopped, before anything is."""
    return page(
        request, "terms_switch_off.html.j2", running=running_vms(ctx, session), key=form_key()
    )


@router.post("/trial/switch-off")
def switch_off(
    request: Request,
    session: Session = Depends(customer),  # noqa: B008
    ctx: Context = Depends(context),  # noqa: B008
    fields: dict[str, str] = Depends(posted),  # noqa: B008
) -> Response:
    """Stop every running VM, each as the Stop button does: when the trial ends the ledger
    makes the tenant paid if a VM runs, else suspends it (ledger.settle_trial, 3.12.6); disks,
    networks and addresses stay, so nothing is lost."""
    fields = csrf_checked(session, fields)
    tenant = session.principal.tenant
    stopping = []
    for name in running_vms(ctx, session):
        payload = ctx.resources.validate_vm_action(tenant, name, "stop")
        keyed = {"key": f"{fields['key']}-{name}"} if fields.get("key") else {}
        stopping.append((name, submit(request, ctx, session, "vm_action", f"vms/{name}",
                                      payload, keyed)))  # fmt: skip
    return show_trial(request, ctx, session, stopping=stopping)
