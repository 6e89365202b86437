# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the terms give a customer, as the API serves it: quotas, requests with the clocks of
5.1, outage reports (5.11), the trial (3.12), usage, invoices, SLA statements, and the audit
trail of its own calls.

Every function takes the caller's Principal and reads or writes its tenant only. The records
are the ledger's and finance's own (RequestLog, Incidents, Books, Biller, Metering, the
vce.kvm.quota path): nothing here keeps a second copy of a rule.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from ansible_collections.vce.kvm.plugins.module_utils.core import quota
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.core.periods import (
    Month,
    parse_month,
    time_zone,
)
from ansible_collections.vce.kvm.plugins.module_utils.core.validation import (
    check_choice,
    check_int,
    check_name,
    check_note,
    customer_key,
)
from ansible_collections.vce.kvm.plugins.module_utils.engine.gate import tenant_usage
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.tenant import run_quota
from ansible_collections.vce.kvm.plugins.module_utils.finance import statement
from ansible_collections.vce.kvm.plugins.module_utils.finance.billing import Biller, Books
from ansible_collections.vce.kvm.plugins.module_utils.finance.requests import (
    TARGETS,
    RequestLog,
    facts,
)
from ansible_collections.vce.kvm.plugins.module_utils.finance.sla import Incidents
from ansible_collections.vce.kvm.plugins.module_utils.ledger.metering import Metering
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import (
    audit,
    events,
    host_usage,
    hosts,
    invoices,
    placements,
    requests,
    reservations,
    trial_grants,
    usage_intervals,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import (
    Ledger,
    Tenant,
    acting_as,
    iso,
    key_of,
    parse_moment,
    utcnow,
)

from ..errors import conflict, forbidden, not_found
from ..principal import Principal

# The kinds of 5.1 as a customer names them, and the ledger's clock each runs on: a reboot and
# an unblock share one target (10 min) and one ledger kind.
REQUEST_KINDS = {
    "quota_increase": "quota_increase",
    "password": "password",
    "reboot": "vm_reboot_unblock",
    "unblock": "vm_reboot_unblock",
    "zone_link": "zone_link",
    "critical_fault": "critical_fault",
    "minor_fault": "minor_fault",
}
# What each kind carries besides `kind` and `note`.
REQUEST_FIELDS = {"quota_increase": ("quotas",), "reboot": ("vm",), "unblock": ("vm",)}
# The event that keeps what a request asked for (the requests table holds its clock only).
REQUEST_FILED = "request_filed"
INCIDENT_FIELDS = ("vm", "started_at", "note")
# Kinds whose limit is backed by a host's processors and memory.
# How long a tenant's quota view is kept, and how many tenants' views at the most.
QUOTA_VIEW_SECONDS = 1.0
MAX_QUOTA_VIEWS = 10_000
CAPACITY_KINDS = {"vcpus": "cpus", "ram_gib": "memory_mib"}
# States in which a quota increase may be granted without an operator.
SELF_SERVICE_STATES = ("active", "trial")
MAX_LISTED = 1000
DEFAULT_LISTED = 100


@dataclass(frozen=True)
class Filed:
    """A customer's request as the API takes it."""

    kind: str
    note: str
    vm: str | None
    quotas: dict[str, int] | None

    def detail(self, request_id: str) -> dict[str, Any]:
        found: dict[str, Any] = {"request": request_id, "kind": self.kind}
        if self.vm is not None:
            found["vm"] = self.vm
        if self.quotas is not None:
            found["quotas"] = self.quotas
        return found


def refuse_unknown(body: Any, known: Iterable[str]) -> Mapping[str, Any]:
    """The body as a mapping, with every key known (the engine's parsers refuse likewise)."""
    if not isinstance(body, Mapping):
        raise SpecError("body", "must be a JSON object")
    allowed = tuple(known)
    for key in body:
        if key not in allowed:
            raise SpecError(str(key), f"unknown field; known: {', '.join(allowed)}")
    return body


def parse_request(body: Any) -> Filed:
    if not isinstance(body, Mapping):
        raise SpecError("body", "must be a JSON object: {kind, note, ...}")
    kind = check_choice(body.get("kind"), "kind", tuple(REQUEST_KINDS))
    extra = REQUEST_FIELDS.get(kind, ())
    refuse_unknown(body, ("kind", "note", *extra))
    note = check_note(body.get("note", ""), "note")
    vm = check_name(body.get("vm"), "vm") if "vm" in extra else None
    wanted = None
    if "quotas" in extra:
        wanted = quota.check_quotas(body.get("quotas"), "quotas")
        if not wanted:
            raise SpecError("quotas", "name at least one quota kind and the limit you need")
    return Filed(kind, note, vm, wanted)


def request_view(row: Any, detail: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """A request with its clock: when it was logged, when it is due, whether it is late."""
    clock = facts(row, now)
    due = row.logged_at + TARGETS[row.kind]
    return {
        "id": row.reference,
        "tenant": row.tenant,
        "kind": detail.get("kind", row.kind),
        "vm": detail.get("vm"),
        "quotas": detail.get("quotas"),
        "note": row.note,
        "logged_at": clock["logged_at"],
        "due_at": iso(due),
        "fulfilled_at": clock["fulfilled_at"],
        "target_minutes": clock["target_minutes"],
        "elapsed_minutes": clock["elapsed_minutes"],
        "status": clock["status"],
        "overdue": row.fulfilled_at is None and now > due,
    }


def request_details(connection: Any, rows: list[Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """What each request asked for, from its `request_filed` event; a request support logged
    with `vce ledger request log` has none."""
    keys = [detail_key(row.tenant, row.reference) for row in rows]
    if not keys:
        return {}
    found = connection.execute(
        sa.select(events.c.tenant, events.c.detail).where(events.c.key.in_(keys))
    )
    details = {}
    for tenant, text in found:
        detail = json.loads(text)
        details[(tenant, detail["request"])] = detail
    return details


def detail_key(tenant: str, request_id: str) -> str:
    return key_of(REQUEST_FILED, tenant, request_id)


def views_of(connection: Any, rows: list[Any], now: dt.datetime) -> list[dict[str, Any]]:
    details = request_details(connection, rows)
    return [request_view(row, details.get((row.tenant, row.reference), {}), now) for row in rows]


def check_limit(limit: Any) -> int:
    return check_int(limit, "limit", 1, MAX_LISTED)


def month_of(value: str | None, now: dt.datetime) -> Month:
    """The month named YYYY-MM in the provider's time zone (one that has begun); None: the
    current one."""
    zone = time_zone(None, "time_zone")
    if value is None:
        return Month.of(now, zone)
    month = parse_month(value, zone)
    if month.start > now:
        raise SpecError("month", f"{month.label} has not begun yet")
    return month


def zones_by_uri(connection: Any) -> dict[str, str]:
    return dict(connection.execute(sa.select(hosts.c.uri, hosts.c.zone)).all())


def without_hosts(value: Any, zones: Mapping[str, str]) -> Any:
    """A ledger document as a customer may see it: every `host` (a libvirt URI, which is root on
    that host) replaced by the zone it is in."""
    if isinstance(value, Mapping):
        return {
            key: zone_label(item, zones) if key == "host" else without_hosts(item, zones)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [without_hosts(item, zones) for item in value]
    return value


def zone_label(host: Any, zones: Mapping[str, str]) -> str:
    if not host:
        return ""
    zone = zones.get(host)
    return f"zone {zone}" if zone else "a retired host"


def plain_json(value: Any) -> Any:
    """Ledger documents carry Decimals and datetimes: as the text billing writes them (a JSON
    encoder would turn money into floats)."""
    return json.loads(json.dumps(value, default=statement.json_default))


class Terms:
    """The customer's side of the terms, for one ledger."""

    def __init__(self, ledger_url: str | None, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.ledger_url = ledger_url
        self.clock = clock
        # Each tenant's quota view, kept QUOTA_VIEW_SECONDS: the most frequent call reads eleven
        # rows of the ledger, and a view a second old misleads no one, since every change
        # re-checks the quotas under the ledger's lock (the engine's gate).
        self.quota_views: dict[str, tuple[float, dict[str, dict[str, Any]]]] = {}
        self.quota_views_lock = threading.Lock()

    def ledger(self, who: Principal) -> Ledger:
        return Ledger.open(self.ledger_url, actor=who.actor, now=self.clock())

    @staticmethod
    def tenant_of(who: Principal) -> str:
        if who.tenant is None:
            raise forbidden("an operator has no tenant: use the /v1/operator paths")
        return who.tenant

    # -- quotas ----------------------------------------------------------------------------

    def quotas(self, who: Principal) -> dict[str, dict[str, Any]]:
        """Each quota kind: its limit, what the tenant uses, and what runs in flight claim, as
        the ledger had them at most QUOTA_VIEW_SECONDS ago."""
        tenant = self.tenant_of(who)
        now = time.monotonic()
        kept = self.quota_views.get(tenant)
        if kept is not None and now - kept[0] < QUOTA_VIEW_SECONDS:
            return kept[1]
        view = self.read_quotas(who, tenant)
        with self.quota_views_lock:
            if len(self.quota_views) >= MAX_QUOTA_VIEWS:
                self.quota_views.clear()
            self.quota_views[tenant] = (now, view)
        return view

    def read_quotas(self, who: Principal, tenant: str) -> dict[str, dict[str, Any]]:
        """The quota view from the ledger: one read transaction in the common case."""
        ledger = self.ledger(who)
        with ledger.store.read() as connection:
            record = ledger.tenant(connection, tenant)
            if record is not None and not ledger.trial_is_over(record):
                return quota_view(ledger, connection, record)
        record = ledger.current_tenant(tenant)  # settles an ended trial; refuses the unknown
        with ledger.store.read() as connection:
            return quota_view(ledger, connection, record)

    # -- requests (5.1) --------------------------------------------------------------------

    def file_request(self, who: Principal, body: Any) -> dict[str, Any]:
        """Log a request with its clock; a quota increase within the plan's ceiling and the
        zone's free capacity is applied at once (3.7: "where technically possible"), any
        other waits for an operator."""
        tenant = self.tenant_of(who)
        filed = parse_request(body)
        ledger = self.ledger(who)
        if filed.quotas is not None:
            self.check_increase(ledger, tenant, filed.quotas)
        logged_at = ledger.now()
        request_id = f"req-{uuid.uuid4().hex[:16]}"
        RequestLog(ledger).log(tenant, REQUEST_KINDS[filed.kind], request_id, logged_at, filed.note)
        with ledger.store.locked(tenant) as connection:
            ledger.event(
                connection, tenant, REQUEST_FILED, filed.detail(request_id),
                requested_at=logged_at, key=detail_key(tenant, request_id),
            )  # fmt: skip
        queued_because: list[str] = []
        if filed.quotas is not None:
            queued_because = self.quota_refusals(ledger, tenant, filed.quotas)
            if not queued_because:
                apply_quotas(
                    self.ledger_url, who.actor, tenant, request_id, filed.quotas, logged_at
                )
                self.quota_views.pop(tenant, None)  # the new limits, at the next read
        view = self.request(who, request_id)
        view["queued_because"] = queued_because
        return view

    @staticmethod
    def check_increase(ledger: Ledger, tenant: str, wanted: Mapping[str, int]) -> None:
        """Each limit asked for is above the tenant's limit now (a decrease is an operator's)."""
        record = ledger.current_tenant(tenant)
        with ledger.store.read() as connection:
            limits = ledger.limits(connection, record)
        for kind, limit in wanted.items():
            if limit <= limits.get(kind, 0):
                raise SpecError(
                    f"quotas.{kind}",
                    f"the limit is {limits.get(kind, 0)} already: an increase asks for more",
                )

    @staticmethod
    def quota_refusals(ledger: Ledger, tenant: str, wanted: Mapping[str, int]) -> list[str]:
        """Why the increase cannot be granted without an operator; [] when it can."""
        record = ledger.current_tenant(tenant)
        if record.state not in SELF_SERVICE_STATES:
            return [f"the tenant is {record.state}: an operator decides"]
        with ledger.store.read() as connection:
            reasons = [
                f"quotas.{kind}: {limit} is above the plan's ceiling of {ceiling}"
                for kind, limit, ceiling in above_ceiling(ledger, connection, record, wanted)
            ]
            if not capacity_allows(ledger, connection, record, wanted):
                reasons.append("the zone's free capacity does not allow it now")
        return reasons

    def requests(self, who: Principal, limit: int = DEFAULT_LISTED) -> list[dict[str, Any]]:
        """The tenant's requests, newest first."""
        tenant = self.tenant_of(who)
        ledger = self.ledger(who)
        query = (
            sa.select(requests)
            .where(requests.c.tenant == tenant)
            .order_by(requests.c.logged_at.desc(), requests.c.reference)
            .limit(check_limit(limit))
        )
        with ledger.store.read() as connection:
            return views_of(connection, list(connection.execute(query)), ledger.now())

    def request(self, who: Principal, request_id: str) -> dict[str, Any]:
        tenant = self.tenant_of(who)
        ledger = self.ledger(who)
        with ledger.store.read() as connection:
            row = RequestLog.row(connection, key_of("request", tenant, request_id))
            if row is None:
                raise not_found(f"request {request_id}")
            return views_of(connection, [row], ledger.now())[0]

    # -- outages (5.11) --------------------------------------------------------------------

    def report_incident(self, who: Principal, body: Any) -> dict[str, Any]:
        """A customer's outage report: it counts from now, once support confirms it, until
        service is restored (5.11). When the customer says it began earlier, that is kept in
        the note for support, not counted."""
        tenant = self.tenant_of(who)
        refuse_unknown(body, INCIDENT_FIELDS)
        vm = check_name(body["vm"], "vm") if body.get("vm") is not None else ""
        note = check_note(body.get("note", ""), "note")
        ledger = self.ledger(who)
        now = ledger.now()
        began = parse_moment(body.get("started_at"), "started_at")
        if began is not None:
            if began > now:
                raise SpecError("started_at", f"{iso(began)} is in the future (now {iso(now)})")
            note = f"the customer reports it began at {iso(began)}\n{note}".rstrip()
        found = Incidents(ledger).report(tenant, vm, "", now, note=note)
        return self.shown_incident(ledger, found)

    def incidents(self, who: Principal) -> list[dict[str, Any]]:
        ledger = self.ledger(who)
        return [
            self.shown_incident(ledger, item)
            for item in Incidents(ledger).listing(self.tenant_of(who))
        ]

    @staticmethod
    def shown_incident(ledger: Ledger, item: Mapping[str, Any]) -> dict[str, Any]:
        with ledger.store.read() as connection:
            return without_hosts(item, zones_by_uri(connection))

    # -- trial (3.12) ----------------------------------------------------------------------

    def trial(self, who: Principal) -> dict[str, Any]:
        tenant = self.tenant_of(who)
        ledger = self.ledger(who)
        record = ledger.current_tenant(tenant)
        with ledger.store.read() as connection:
            return trial_view(ledger, connection, record)

    def ask_trial(self, who: Principal) -> dict[str, Any]:
        """Grant the trial when the ledger's rules allow it: once per customer identity, to a
        customer that has not used the service (3.12.5), on a plan with a trial."""
        tenant = self.tenant_of(who)
        ledger = self.ledger(who)
        ledger.current_tenant(tenant)
        with ledger.store.locked(tenant) as connection:
            record = ledger.require_tenant(connection, tenant)
            if record.trial_granted:
                return trial_view(ledger, connection, record)
            refusal = trial_refusal(ledger, connection, record)
            if refusal is not None:
                raise conflict(f"no trial: {refusal}")
            if not ledger.grant_trial(connection, record.customer, tenant, ledger.now()):
                raise conflict("no trial: it is given once per customer (3.12.5)")
            ledger.update_tenant(connection, tenant, state="trial")
            ledger.event(connection, tenant, "trial_granted", {"customer": record.customer})
            return trial_view(ledger, connection, ledger.require_tenant(connection, tenant))

    # -- usage, invoices, SLA --------------------------------------------------------------

    def usage(self, who: Principal, month: str | None = None) -> dict[str, Any]:
        """The tenant's usage intervals in the month (so far, for the current one)."""
        tenant = self.tenant_of(who)
        ledger = self.ledger(who)
        period = month_of(month, ledger.now())
        ledger.current_tenant(tenant)
        rows = list(Metering(ledger).intervals(tenant, period.start, period.end))
        with ledger.store.read() as connection:
            shown = without_hosts(rows, zones_by_uri(connection))
        return {"month": period.label, "intervals": shown}

    def invoices(self, who: Principal) -> list[dict[str, Any]]:
        """The tenant's invoices: every closed month, and the current month so far."""
        tenant = self.tenant_of(who)
        ledger = self.ledger(who)
        ledger.current_tenant(tenant)
        query = (
            sa.select(invoices.c.month, invoices.c.currency, invoices.c.total)
            .where(invoices.c.tenant == tenant)
            .order_by(invoices.c.month.desc())
        )
        with ledger.store.read() as connection:
            closed = [
                {"month": row.month, "status": "closed", "currency": row.currency,
                 "total": row.total}
                for row in connection.execute(query)
            ]  # fmt: skip
        current = self.invoice(who, None)
        listed = [] if any(item["month"] == current["month"] for item in closed) else [current]
        summary = [
            {key: item[key] for key in ("month", "status", "currency", "total")} for item in listed
        ]
        return summary + closed

    def invoice(self, who: Principal, month: str | None) -> dict[str, Any]:
        """The month's invoice with its SLA statement: frozen once the month is closed."""
        return self.month_document(who, month, Books, dict)

    def invoice_html(self, who: Principal, month: str) -> str:
        """The existing HTML statement of the month, as `vce ledger invoice --format html`."""
        return statement.html_statement(self.invoice(who, month))

    def sla_view(self, who: Principal, month: str | None) -> tuple[Any, list[str], Any]:
        """The month's SLA for a page: the statement's view of the invoice document, each VM's
        timeline drawn by the statement's own chart (autoescaped markup), and the SLA credit."""
        document = self.invoice(who, month)
        view = statement.statement_view(document)
        chart = statement.templates().get_template("macros.html.j2").module.chart
        charts = [str(chart(vm.chart)) for vm in view.vms]
        return view, charts, statement.sla_statement(document)["sla_credit"]

    def reset_done(self, tenant: str, request: str, at: dt.datetime) -> None:
        """A password reset's request is answered: its clock stops when the new password is
        set."""
        RequestLog(Ledger.open(self.ledger_url)).fulfil(tenant, request, at=at)

    def sla(self, who: Principal, month: str | None = None) -> dict[str, Any]:
        """The month's availability per VM, its incidents and the credit, as `vce ledger sla`
        (computed afresh, as that command does)."""
        return self.month_document(who, month, Biller, statement.sla_statement)

    def month_document(
        self, who: Principal, month: str | None, source: Callable[[Ledger, Month], Any],
        shape: Callable[[dict[str, Any]], dict[str, Any]],
    ) -> dict[str, Any]:  # fmt: skip
        """The tenant's document of the month from `source` (Books or Biller), shaped, with
        hosts shown as zones."""
        tenant = self.tenant_of(who)
        ledger = self.ledger(who)
        period = month_of(month, ledger.now())
        ledger.current_tenant(tenant)
        document = next(iter(source(ledger, period).invoices(tenant)))
        with ledger.store.read() as connection:
            return plain_json(without_hosts(shape(document), zones_by_uri(connection)))

    # -- audit -----------------------------------------------------------------------------

    def audit(
        self, who: Principal, tenant: str | None = None, limit: int = DEFAULT_LISTED
    ) -> list[dict[str, Any]]:
        """The audit trail, newest first: a customer's own tenant's; an operator's, every
        tenant's or the one named."""
        query = sa.select(audit).order_by(audit.c.id.desc()).limit(check_limit(limit))
        if not who.is_operator:
            if tenant is not None and tenant != who.tenant:
                raise SpecError("tenant", "a customer reads its own tenant's audit trail only")
            tenant = self.tenant_of(who)
        if tenant is not None:
            query = query.where(audit.c.tenant == check_name(tenant, "tenant"))
        with self.ledger(who).store.read() as connection:
            return [audit_view(row) for row in connection.execute(query)]


def quota_view(ledger: Ledger, connection: Any, record: Tenant) -> dict[str, dict[str, Any]]:
    limits = ledger.limits(connection, record)
    used = quota.add(
        ledger.known_usage(connection, record.name), ledger.counted_usage(connection, record.name)
    )
    reserved = ledger.reserved(connection, record.name)
    return {
        kind: {
            "limit": limits.get(kind, 0),
            "used": quota.plain(kind, used.get(kind, 0)),
            "reserved": quota.plain(kind, reserved.get(kind, 0)),
            "unit": quota.KINDS[kind].unit,
        }
        for kind in quota.KINDS
    }


def audit_view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "at": iso(row.at), "request_id": row.request_id, "token": row.token,
        "actor": row.actor, "tenant": row.tenant, "method": row.method, "path": row.path,
        "source": row.source, "status": row.status, "outcome": row.outcome,
        "action": row.action,
    }  # fmt: skip


# -- quota increases -------------------------------------------------------------------------


def ceiling_of(ledger: Ledger, connection: Any, record: Tenant) -> dict[str, int]:
    """The most a tenant gets without an operator: its plan's quotas (the trial's while in
    trial). Plans have no ceiling of their own in the ledger."""
    plan = ledger.tariff(connection, record.plan)
    if plan is None:
        return {}
    return plan.trial_quotas if record.state == "trial" else plan.quotas


def above_ceiling(
    ledger: Ledger, connection: Any, record: Tenant, wanted: Mapping[str, int]
) -> list[tuple[str, int, int]]:
    ceiling = ceiling_of(ledger, connection, record)
    return [
        (kind, limit, ceiling.get(kind, 0))
        for kind, limit in sorted(wanted.items())
        if limit > ceiling.get(kind, 0)
    ]


def capacity_allows(
    ledger: Ledger, connection: Any, record: Tenant, wanted: Mapping[str, int]
) -> bool:
    """Whether one host the tenant may use has the processors and memory to hold what the new
    limits let it add: the host it is placed on in a zone, or any host of a zone where it
    has nothing yet."""
    used = tenant_usage(ledger, connection, record)
    need = {
        CAPACITY_KINDS[kind]: limit * quota.KINDS[kind].base_per_unit - used.get(kind, 0)
        for kind, limit in wanted.items()
        if kind in CAPACITY_KINDS
    }
    if not any(amount > 0 for amount in need.values()):
        return True
    return any(
        all(free.get(column, 0) >= amount for column, amount in need.items())
        for free in free_capacity(ledger, connection, record.name)
    )


def free_capacity(ledger: Ledger, connection: Any, tenant: str) -> list[dict[str, int]]:
    """Free processors and memory (MiB) of every host the tenant may be placed on: the host's
    size less every tenant's last known usage and the claims of runs in flight."""
    placed = dict(
        connection.execute(
            sa.select(placements.c.zone, placements.c.host).where(placements.c.tenant == tenant)
        ).all()
    )
    taken: dict[str, quota.Usage] = {}
    for uri, text in connection.execute(sa.select(host_usage.c.host, host_usage.c.usage)):
        taken[uri] = quota.add(taken.get(uri, {}), json.loads(text))
    live = sa.select(reservations.c.host, reservations.c.usage).where(
        reservations.c.expires_at > ledger.now()
    )
    for uri, text in connection.execute(live):
        taken[uri] = quota.add(taken.get(uri, {}), json.loads(text))
    found = []
    for row in connection.execute(sa.select(hosts.c.name, hosts.c.zone, hosts.c.uri,
                                            hosts.c.cpus, hosts.c.memory_mib)):  # fmt: skip
        if placed.get(row.zone, row.name) != row.name:
            continue
        used = taken.get(row.uri, {})
        found.append({
            "cpus": row.cpus - used.get("vcpus", 0),
            "memory_mib": row.memory_mib - used.get("ram_gib", 0),
        })  # fmt: skip
    return found


def apply_quotas(
    ledger_url: str | None, actor: str, tenant: str, request_id: str,
    wanted: Mapping[str, int], requested_at: dt.datetime,
) -> dict[str, Any]:  # fmt: skip
    """Apply a quota increase through vce.kvm.quota's own path (the quota_requests record with
    its clock, the overrides, the tenant's history), then stop the request's clock at the
    moment it was applied."""
    with acting_as(f"api-{request_id}", actor):
        result = run_quota(
            {
                "ledger_url": ledger_url, "tenant": tenant, "quotas": dict(wanted),
                "reference": request_id, "requested_by": actor, "requested_at": requested_at,
            }
        )  # fmt: skip
        applied = parse_moment(result.facts["request"].get("applied_at"), "applied_at")
        ledger = Ledger.open(ledger_url)
        return RequestLog(ledger).fulfil(tenant, request_id, at=applied or ledger.now())


# -- trial -----------------------------------------------------------------------------------


def trial_view(ledger: Ledger, connection: Any, record: Tenant) -> dict[str, Any]:
    plan = ledger.tariff(connection, record.plan)
    refusal = None if record.trial_granted else trial_refusal(ledger, connection, record)
    return {
        "state": record.state,
        "granted": record.trial_granted,
        "started_at": iso(record.trial_started_at),
        "ends_at": iso(record.trial_ends_at),
        "ended_at": iso(record.trial_ended_at),
        "hours": plan.trial_hours if plan else 0,
        "quotas": dict(plan.trial_quotas) if plan else {},
        "available": refusal is None and not record.trial_granted,
        "refusal": refusal,
    }


def trial_refusal(ledger: Ledger, connection: Any, record: Tenant) -> str | None:
    """Why this tenant cannot have a trial now, or None."""
    plan = ledger.tariff(connection, record.plan)
    if plan is None or plan.trial_hours == 0:
        return f"the plan {record.plan} has no trial"
    if record.state != "active":
        return f"the tenant is {record.state}"
    key = customer_key(record.customer)
    granted = connection.execute(sa.select(trial_grants.c.customer)).scalars()
    if any(customer_key(other) == key for other in granted):
        return "a trial is given once per customer (3.12.5)"
    used = connection.execute(
        sa.select(usage_intervals.c.key).where(usage_intervals.c.tenant == record.name).limit(1)
    ).first()
    if used is not None:
        return "a trial is only for customers who have not used the service yet (3.12.5)"
    return None
