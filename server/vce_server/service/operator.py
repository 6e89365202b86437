# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The provider's side: tenants (plan, quota overrides, suspension), the requests of 5.1 to
fulfil, customers' outage reports to confirm, and the fleet's hosts and images.

Changes go through the same engine paths as the Ansible modules (vce.kvm.tenant, vce.kvm.quota)
and the same finance functions as `vce ledger`, so an operator at the API meets the same rules.
Only operators reach this (the routers' operator_* dependencies); they see host URIs.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from ansible_collections.vce.kvm.cli.vce import MAX_RECORD_ID
from ansible_collections.vce.kvm.plugins.module_utils.core.errors import SpecError
from ansible_collections.vce.kvm.plugins.module_utils.core.validation import check_int, check_name
from ansible_collections.vce.kvm.plugins.module_utils.engine.resources.tenant import (
    ledger_facts,
    run_tenant,
)
from ansible_collections.vce.kvm.plugins.module_utils.finance.requests import RequestLog
from ansible_collections.vce.kvm.plugins.module_utils.finance.sla import (
    CAUSES,
    EXCLUDED_CAUSES,
    Incidents,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.schema import (
    exclusions,
    hosts,
    images,
    incidents,
    placements,
    plans,
    probe_status,
    requests,
)
from ansible_collections.vce.kvm.plugins.module_utils.ledger.tenants import (
    Ledger,
    acting_as,
    iso,
    parse_moment,
    utcnow,
)

from ..errors import not_found
from ..identity import Identity, ResetNotFound, TokenNotFound, check_login
from ..principal import CUSTOMER, Principal
from .terms import (
    DEFAULT_LISTED,
    apply_quotas,
    check_limit,
    refuse_unknown,
    request_details,
    views_of,
)

TENANT_FIELDS = ("customer", "plan", "quotas", "state", "reason")
FULFIL_FIELDS = ("tenant", "at", "quotas")
INCIDENT_STEP_FIELDS = ("at",)
CLASSIFY_FIELDS = ("cause", "note")
EXCLUSION_FIELDS = (
    "cause", "started_at", "ended_at", "announced_at", "tenant", "host", "vm", "note",
)  # fmt: skip
BLOCK_FIELDS = ("reason",)
TOKEN_FIELDS = ("tenant", "scopes", "name", "expires_at")
USER_FIELDS = ("login", "password", "tenant")
PASSWORD_FIELDS = ("password",)


class Operator:
    """The operator's work on one ledger."""

    def __init__(self, ledger_url: str | None, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.ledger_url = ledger_url
        self.clock = clock

    def ledger(self, who: Principal) -> Ledger:
        return Ledger.open(self.ledger_url, actor=who.actor, now=self.clock())

    # -- tenants ---------------------------------------------------------------------------

    def tenants(self, who: Principal) -> list[dict[str, Any]]:
        """Every tenant as the ledger holds it: state, plan, quotas, usage, trial, blocks."""
        ledger = self.ledger(who)
        return [ledger_facts(ledger, name) for name in sorted(ledger.tenant_names())]

    def tenant(self, who: Principal, name: str) -> dict[str, Any]:
        found = ledger_facts(self.ledger(who), check_name(name, "name"))
        if not found:
            raise not_found(f"tenant {name}")
        return found

    def put_tenant(self, who: Principal, name: str, body: Any) -> dict[str, Any]:
        """Register a tenant or change its plan, quota overrides or state, through
        vce.kvm.tenant's path: the same refusals (a limit below usage, a closed tenant), and
        a suspension pauses its VMs on the host it is placed on."""
        check_name(name, "name")
        refuse_unknown(body, TENANT_FIELDS)
        params: dict[str, Any] = {"ledger_url": self.ledger_url, "name": name, **body}
        uri = self.placed_uri(who, name)
        if uri is not None:
            params["uri"] = uri
        with acting_as(f"api-operator-{uuid.uuid4().hex[:16]}", who.actor):
            result = run_tenant(params)
        return {"changed": result.changed, "plan": result.plan, "tenant": result.facts["tenant"]}

    def placed_uri(self, who: Principal, tenant: str) -> str | None:
        """The libvirt URI of the host holding the tenant's objects (its first placement)."""
        uris = self.placed_uris(who, tenant)
        return uris[0] if uris else None

    def placed_uris(self, who: Principal, tenant: str) -> list[str]:
        """The libvirt URIs of the hosts holding the tenant's objects, one per zone."""
        query = (
            sa.select(hosts.c.uri)
            .join(placements, placements.c.host == hosts.c.name)
            .where(placements.c.tenant == tenant)
            .order_by(placements.c.zone)
        )
        with self.ledger(who).store.read() as connection:
            return list(connection.execute(query).scalars())

    @staticmethod
    def block_reason(body: Any) -> str:
        """The reason of an operator's block, from a body that holds nothing else."""
        return refuse_unknown(body or {}, BLOCK_FIELDS).get("reason") or ""

    def plans(self, who: Principal) -> list[dict[str, Any]]:
        ledger = self.ledger(who)
        with ledger.store.read() as connection:
            names = connection.execute(sa.select(plans.c.name).order_by(plans.c.name)).scalars()
            found = [ledger.tariff(connection, name) for name in list(names)]
        return [
            {
                "name": plan.name, "quotas": plan.quotas, "trial_quotas": plan.trial_quotas,
                "trial_hours": plan.trial_hours,
                "backup_frequencies": list(plan.backup_frequencies),
                "prices": plan.prices.as_dict() if plan.prices else None,
            }
            for plan in found
            if plan is not None
        ]  # fmt: skip

    # -- requests (5.1) --------------------------------------------------------------------

    def requests(
        self, who: Principal, tenant: str | None = None, open_only: bool = False,
        limit: int = DEFAULT_LISTED,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """Requests of every tenant (or one), oldest open first when only open ones are
        asked for, else newest first."""
        query = sa.select(requests).limit(check_limit(limit))
        if tenant is not None:
            query = query.where(requests.c.tenant == check_name(tenant, "tenant"))
        if open_only:
            query = query.where(requests.c.fulfilled_at.is_(None)).order_by(
                requests.c.logged_at, requests.c.reference
            )
        else:
            query = query.order_by(requests.c.logged_at.desc(), requests.c.reference)
        ledger = self.ledger(who)
        with ledger.store.read() as connection:
            return views_of(connection, list(connection.execute(query)), ledger.now())

    def fulfil(self, who: Principal, request_id: str, body: Any) -> dict[str, Any]:
        """Stop a request's clock: now, or at the moment given. A queued quota increase is
        applied first (the limits asked for, or the `quotas` given instead) through
        vce.kvm.quota's path; its clock stops when it is applied."""
        body = refuse_unknown(body or {}, FULFIL_FIELDS)
        ledger = self.ledger(who)
        row, detail = self.find_request(ledger, request_id, body.get("tenant"))
        at = parse_moment(body.get("at"), "at")
        if "quotas" in body and row.kind != "quota_increase":
            raise SpecError("quotas", "only a quota increase request is fulfilled with quotas")
        if row.fulfilled_at is not None and at is None:
            return self.request_view(ledger, row.tenant, request_id)
        wanted = body.get("quotas") or still_wanted(ledger, row.tenant, detail.get("quotas"))
        if wanted and row.fulfilled_at is None:
            apply_quotas(
                self.ledger_url, who.actor, row.tenant, request_id, wanted,
                requested_at=row.logged_at,
            )  # fmt: skip
        else:
            RequestLog(ledger).fulfil(row.tenant, request_id, at=at or ledger.now())
        return self.request_view(ledger, row.tenant, request_id)

    @staticmethod
    def find_request(
        ledger: Ledger, request_id: str, tenant: str | None
    ) -> tuple[Any, dict[str, Any]]:
        """The one request with this id (support's references may repeat across tenants: then
        the tenant must be named)."""
        query = sa.select(requests).where(requests.c.reference == request_id)
        if tenant is not None:
            query = query.where(requests.c.tenant == check_name(tenant, "tenant"))
        with ledger.store.read() as connection:
            rows = list(connection.execute(query))
            if not rows:
                raise not_found(f"request {request_id}")
            if len(rows) > 1:
                raise SpecError(
                    "tenant", f"several tenants have a request {request_id}: name the tenant"
                )
            details = request_details(connection, rows)
        return rows[0], details.get((rows[0].tenant, request_id), {})

    @staticmethod
    def request_view(ledger: Ledger, tenant: str, request_id: str) -> dict[str, Any]:
        query = sa.select(requests).where(
            requests.c.tenant == tenant, requests.c.reference == request_id
        )
        with ledger.store.read() as connection:
            return views_of(connection, list(connection.execute(query)), ledger.now())[0]

    # -- incidents (5.11) ------------------------------------------------------------------

    def incidents(
        self, who: Principal, tenant: str | None = None, open_only: bool = False
    ) -> list[dict[str, Any]]:
        if tenant is not None:
            check_name(tenant, "tenant")
        return Incidents(self.ledger(who)).listing(tenant, open_only)

    def confirm_incident(self, who: Principal, number: int, body: Any) -> dict[str, Any]:
        """Support confirms a customer's report: it counts, from the report (5.11)."""
        ledger, at = self.incident_moment(who, number, body)
        return Incidents(ledger).confirm(number, at)

    def restore_incident(self, who: Principal, number: int, body: Any) -> dict[str, Any]:
        """Service is back: the incident ends (5.11)."""
        ledger, at = self.incident_moment(who, number, body)
        return Incidents(ledger).restore(number, at)

    def classify_incident(self, who: Principal, number: int, body: Any) -> dict[str, Any]:
        """Whose doing the downtime was (provider, maintenance, force majeure, customer): only
        the provider's counts against the SLA (5.8-5.10)."""
        body = refuse_unknown(body or {}, CLASSIFY_FIELDS)
        check_int(number, "id", 1, MAX_RECORD_ID)
        ledger = self.ledger(who)
        try:
            return Incidents(ledger).classify(number, body.get("cause"), body.get("note") or "")
        except SpecError as error:
            if error.field == "incident":
                raise not_found(f"incident {number}") from None
            raise

    # -- maintenance windows and other exclusions (5.8-5.10) --------------------------------

    def exclusions(self, who: Principal, limit: int = DEFAULT_LISTED) -> list[dict[str, Any]]:
        """The intervals whose downtime is not compensated, latest start first."""
        query = (
            sa.select(exclusions)
            .order_by(exclusions.c.started_at.desc(), exclusions.c.id.desc())
            .limit(check_limit(limit))
        )
        with self.ledger(who).store.read() as connection:
            return [exclusion_view(row) for row in connection.execute(query)]

    def exclude(self, who: Principal, body: Any) -> dict[str, Any]:
        """Record a maintenance window (announced before it begins), force majeure or a
        customer's doing, as `vce ledger exclusion add` does; recorded once per content."""
        body = refuse_unknown(body, EXCLUSION_FIELDS)
        started_at = parse_moment(body.get("started_at"), "started_at")
        ended_at = parse_moment(body.get("ended_at"), "ended_at")
        for name, moment in (("started_at", started_at), ("ended_at", ended_at)):
            if moment is None:
                raise SpecError(name, "required: an ISO 8601 time with its offset")
        return Incidents(self.ledger(who)).exclude(
            str(body.get("cause") or ""), started_at, ended_at,
            tenant=body.get("tenant") or "", host=body.get("host") or "",
            vm=body.get("vm") or "", announced_at=parse_moment(body.get("announced_at"),
            "announced_at"), note=body.get("note") or "",
        )  # fmt: skip

    def incident_moment(self, who: Principal, number: int, body: Any) -> tuple[Ledger, dt.datetime]:
        """The ledger and the moment of a step of incident `number` (now unless given)."""
        body = refuse_unknown(body or {}, INCIDENT_STEP_FIELDS)
        check_int(number, "id", 1, MAX_RECORD_ID)
        ledger = self.ledger(who)
        with ledger.store.read() as connection:
            found = connection.execute(
                sa.select(incidents.c.id).where(incidents.c.id == number)
            ).first()
        if found is None:
            raise not_found(f"incident {number}")
        now = ledger.now()
        moment = parse_moment(body.get("at"), "at") or now
        if moment > now:
            raise SpecError("at", f"{iso(moment)} is in the future (now {iso(now)})")
        return ledger, moment

    # -- tokens ----------------------------------------------------------------------------
    # Through the server's one Identity: its cache is what makes a revocation immediate here.

    @staticmethod
    def create_token(identity: Identity, who: Principal, body: Any) -> dict[str, Any]:
        """A token for a tenant's programs: its text is in this answer and nowhere else."""
        refuse_unknown(body, TOKEN_FIELDS)
        expires_at = parse_moment(body.get("expires_at"), "expires_at")
        text, view = identity.create_token(
            CUSTOMER, body.get("tenant"), body.get("scopes", "read"), body.get("name"),
            created_by=who.actor, expires_at=expires_at,
        )  # fmt: skip
        return {"token": text, **view.as_dict()}

    @staticmethod
    def tokens(identity: Identity, tenant: str | None = None) -> list[dict[str, Any]]:
        """Every token (or a tenant's), revoked ones too; never a secret."""
        return [view.as_dict() for view in identity.list_tokens(tenant)]

    @staticmethod
    def revoke_token(identity: Identity, prefix: str) -> dict[str, Any]:
        try:
            return identity.revoke_token(prefix).as_dict()
        except TokenNotFound:
            raise not_found(f"token {prefix}") from None

    # -- users of the personal cabinet -----------------------------------------------------
    # Customers' users only: operator accounts are made with `vce admin` on the server.

    @staticmethod
    def users(identity: Identity, tenant: str | None = None) -> list[dict[str, Any]]:
        return [view.as_dict() for view in identity.list_users(tenant)]

    @staticmethod
    def create_user(identity: Identity, body: Any) -> dict[str, Any]:
        refuse_unknown(body, USER_FIELDS)
        view = identity.create_user(
            body.get("login"), body.get("password"), CUSTOMER, body.get("tenant")
        )
        return view.as_dict()

    @staticmethod
    def set_password(identity: Identity, login: str, body: Any) -> dict[str, Any]:
        """A new password (a customer's request to reset it, 5.1, fulfilled)."""
        refuse_unknown(body, PASSWORD_FIELDS)
        existing_user(identity, login)
        return identity.set_password(login, body.get("password")).as_dict()

    @staticmethod
    def disable_user(identity: Identity, login: str) -> dict[str, Any]:
        existing_user(identity, login)
        return identity.disable_user(login).as_dict()

    @staticmethod
    def password_link(identity: Identity, request_id: str) -> dict[str, Any]:
        """The link of a reset the customer asked for in the cabinet, shown this once; any
        link issued before stops working. Support hands it over (there is no mail)."""
        try:
            secret, facts = identity.issue_reset_link(request_id)
        except ResetNotFound:
            raise not_found(f"password reset of request {request_id}") from None
        return {**facts, "link": f"/panel/reset/{secret}"}

    # -- the fleet -------------------------------------------------------------------------

    @staticmethod
    def causes() -> tuple[str, ...]:
        """What an incident may be classified as (terms 5.8: who or what caused it)."""
        return CAUSES

    @staticmethod
    def excludable_causes() -> tuple[str, ...]:
        """The causes a maintenance window may exclude from availability."""
        return EXCLUDED_CAUSES

    def hosts(self, who: Principal) -> list[dict[str, Any]]:
        """The registered hosts: zone, URI, capacity, versions, how many tenants each holds,
        and what the probe last saw there (VMs watched, how many down, when). A host command
        is shown only as whether there is one."""
        placed = (
            sa.select(placements.c.host, sa.func.count().label("tenants"))
            .group_by(placements.c.host)
            .subquery()
        )
        probed = (
            sa.select(
                probe_status.c.host,
                sa.func.count().label("watched"),
                sa.func.sum(sa.case((probe_status.c.up, 0), else_=1)).label("down"),
                sa.func.max(probe_status.c.checked_at).label("checked_at"),
            )
            .group_by(probe_status.c.host)
            .subquery()
        )
        query = (
            sa.select(hosts, placed.c.tenants, probed.c.watched, probed.c.down, probed.c.checked_at)
            .outerjoin(placed, placed.c.host == hosts.c.name)
            .outerjoin(probed, probed.c.host == hosts.c.uri)
            .order_by(hosts.c.zone, hosts.c.name)
        )
        with self.ledger(who).store.read() as connection:
            return [host_view(row) for row in connection.execute(query)]

    def images(self, who: Principal) -> list[dict[str, Any]]:
        query = sa.select(images).order_by(images.c.zone, images.c.name)
        with self.ledger(who).store.read() as connection:
            return [
                {
                    "zone": row.zone, "name": row.name, "path": row.path, "format": row.format,
                    "virtual_size": row.virtual_size, "sha256": row.sha256,
                    "registered_at": iso(row.registered_at), "updated_at": iso(row.updated_at),
                }
                for row in connection.execute(query)
            ]  # fmt: skip


def existing_user(identity: Identity, login: str) -> None:
    """404 for a login no user has (a malformed one is 422)."""
    check_login(login)
    try:
        identity.user(login)
    except SpecError:
        raise not_found(f"user {login}") from None


def still_wanted(ledger: Ledger, tenant: str, asked: Mapping[str, int] | None) -> dict[str, int]:
    """The limits a customer asked for that are still above the tenant's: an operator may have
    raised some meanwhile, and granting the request never lowers one."""
    if not asked:
        return {}
    record = ledger.current_tenant(tenant)
    with ledger.store.read() as connection:
        limits = ledger.limits(connection, record)
    return {kind: limit for kind, limit in asked.items() if limit > limits.get(kind, 0)}


def host_view(row: Any) -> dict[str, Any]:
    return {
        "name": row.name, "zone": row.zone, "uri": row.uri, "uplink": row.uplink,
        "public_pools": json.loads(row.public_pools), "cpus": row.cpus,
        "memory_mib": row.memory_mib, "libvirt_version": row.libvirt_version,
        "qemu_version": row.qemu_version, "remote": row.host_command is not None,
        "settings": json.loads(row.settings) if row.settings else {},
        "tenants": row.tenants or 0, "registered_at": iso(row.registered_at),
        "updated_at": iso(row.updated_at),
        "probe": {"watched": row.watched or 0, "down": int(row.down or 0),
                  "checked_at": iso(row.checked_at)},
    }  # fmt: skip


def exclusion_view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id, "cause": row.cause, "tenant": row.tenant, "host": row.host, "vm": row.vm,
        "started_at": iso(row.started_at), "ended_at": iso(row.ended_at),
        "announced_at": iso(row.announced_at), "note": row.note, "actor": row.actor,
        "created_at": iso(row.created_at),
    }  # fmt: skip
