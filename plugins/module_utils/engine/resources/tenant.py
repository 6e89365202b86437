# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Operator actions on tenants: register, change plan and quotas, suspend, resume, close,
quota increase requests, and blocking one VM.

Each is planned as Changes first (check and diff mode show them) and applied inside one ledger
transaction holding the tenant's lock, so a failure leaves the ledger as it was.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from typing import Any

from ...core import quota
from ...core.errors import SpecError
from ...core.plan import Change, Plan
from ...core.result import Result
from ...core.validation import check_customer, check_name, customer_key
from ...host.connection import DEFAULT_URI, Host
from ...host.ownership import object_name
from ...ledger.metering import UsageWatch
from ...ledger.tenants import Ledger, Tariff, Tenant, iso, key_of, parse_moment, parse_tariffs
from ..gate import tenant_usage
from ..run import Run, conclude, noting_new_ledger
from .vm import VmPlanner

# The terms' targets (5.1), reported with each request.
QUOTA_REQUEST_TARGET = dt.timedelta(minutes=20)
STATES = ("active", "suspended", "closed")
TARIFFS_LOCK = "(plans)"


def open_ledger(params: Mapping[str, Any], create: bool = False) -> Ledger:
    return Ledger.open(params.get("ledger_url") or None, create=create)


def run_tenant(params: Mapping[str, Any], check_mode: bool = False) -> Result:
    name = check_name(params.get("name"), "name")
    state = params.get("state") or "active"
    if state not in STATES:
        raise SpecError("state", f"must be one of {', '.join(STATES)}, got {state!r}")
    catalog = parse_tariffs(params["plans"]) if params.get("plans") is not None else {}
    overrides = None
    if params.get("quotas") is not None:
        overrides = quota.check_quotas(params["quotas"], "quotas")
    customer = params.get("customer")
    if customer is not None:
        customer = check_customer(customer, "customer")
    requested_at = parse_moment(params.get("requested_at"), "requested_at")
    # Registering a tenant is how a ledger comes to be (store.py).
    ledger = open_ledger(params, create=True)
    plan = Plan()
    with ledger.store.locked(name) as connection:
        if catalog:
            # Plans are shared by tenants registered at the same moment; tenant locks come
            # first, then this one, always in that order.
            ledger.store.also_lock(connection, TARIFFS_LOCK)
        for changed in ledger.put_tariffs(connection, catalog, check_mode=True):
            plan.add(
                Change("plan", changed, "define", field="quotas", after=catalog[changed].quotas)
            )
        record = ledger.tenant(connection, name)
        if record is not None:
            record = ledger.settle_trial(connection, record)
        actions = TenantActions(ledger, connection, name, params, catalog, requested_at)
        plan.extend(actions.plan(record, customer, params.get("plan"), overrides, state))
        if not check_mode:
            ledger.put_tariffs(connection, catalog)

        def facts(_after: object, _applied: bool) -> dict[str, Any]:
            after = ledger.tenant(connection, name)
            return {"tenant": actions.facts(after) if after else {}}

        return noting_new_ledger(conclude(Run(plan, facts), check_mode), ledger.store)


class TenantActions:
    def __init__(
        self,
        ledger: Ledger,
        connection: Any,
        name: str,
        params: Mapping[str, Any],
        catalog: Mapping[str, Tariff],
        requested_at: dt.datetime | None,
    ) -> None:
        self.ledger = ledger
        self.connection = connection
        self.name = name
        self.params = params
        self.catalog = catalog
        self.requested_at = requested_at

    def plan_def(self, name: str) -> Tariff:
        found = self.catalog.get(name) or self.ledger.tariff(self.connection, name)
        if found is None:
            raise SpecError(
                "plan", f"unknown plan {name!r}: define it under plans (the inventory's plans)"
            )
        return found

    def plan(
        self,
        record: Tenant | None,
        customer: str | None,
        plan_name: str | None,
        overrides: dict[str, int] | None,
        state: str,
    ) -> Plan:
        plan = Plan()
        if record is None:
            if state == "closed":
                return plan
            if not customer:
                raise SpecError("customer", "a new tenant needs its customer identity")
            if not plan_name:
                raise SpecError("plan", "a new tenant needs a plan")
            definition = self.plan_def(plan_name)
            plan.add(
                Change(
                    "tenant",
                    self.name,
                    "create",
                    field="plan",
                    after=plan_name,
                    run=lambda: self.ledger.create_tenant(
                        self.connection, self.name, customer, definition, overrides or {}
                    ),
                )
            )
            if state == "suspended":
                plan.add(self.state_change("active", "suspended"))
            return plan
        if record.state == "closed":
            if state != "closed":
                raise SpecError(
                    "state", f"tenant {self.name} is closed; a closed tenant is not reopened"
                )
            return plan
        if customer and customer_key(customer) != customer_key(record.customer):
            raise SpecError(
                "customer",
                f"tenant {self.name} belongs to customer {record.customer!r}; it cannot move",
            )
        used = tenant_usage(self.ledger, self.connection, record)
        if plan_name and plan_name != record.plan:
            definition = self.plan_def(plan_name)
            base = definition.trial_quotas if record.state == "trial" else definition.quotas
            self.refuse_below_usage({**base, **record.overrides}, used, "plan")
            plan.add(
                Change(
                    "tenant",
                    self.name,
                    "update",
                    field="plan",
                    before=record.plan,
                    after=plan_name,
                    run=lambda: self.ledger.update_tenant(
                        self.connection, self.name, plan=plan_name
                    ),
                )
            )
        if overrides is not None and overrides != record.overrides:
            self.refuse_below_usage(overrides, used, "quotas")
            plan.add(
                Change(
                    "tenant",
                    self.name,
                    "update",
                    field="quota_overrides",
                    before=record.overrides,
                    after=overrides,
                    run=lambda: self.set_overrides(overrides, record.overrides),
                )
            )
        current = "suspended" if record.state == "suspended" else "active"
        if state == "closed":
            left = {k: quota.show(k, v) for k, v in used.items() if v}
            if left:
                raise SpecError(
                    "state",
                    f"tenant {self.name} still uses {left}; remove its environment first",
                )
            plan.add(self.state_change(record.state, "closed"))
        elif state != current:
            plan.add(self.state_change(record.state, state, record))
        return plan

    def refuse_below_usage(
        self, limits: Mapping[str, int], used: Mapping[str, int], field: str
    ) -> None:
        below = quota.below_usage(limits, used)
        if below:
            raise SpecError(
                field, f"refused, below what tenant {self.name} uses: {'; '.join(below)}"
            )

    def set_overrides(self, overrides: Mapping[str, int], before: Mapping[str, int]) -> None:
        self.ledger.update_tenant(
            self.connection, self.name, quotas=json.dumps(dict(overrides), sort_keys=True)
        )
        self.ledger.event(
            self.connection,
            self.name,
            "quotas_set",
            {"before": dict(before), "after": dict(overrides)},
        )

    def state_change(self, before: str, after: str, record: Tenant | None = None) -> Change:
        return Change(
            "tenant",
            self.name,
            {"suspended": "suspend", "closed": "close"}.get(after, "resume"),
            field="state",
            before=before,
            after=after if after != "active" or record is None else self.resumed_state(record),
            run=lambda: self.apply_state(after, record),
        )

    def resumed_state(self, record: Tenant) -> str:
        in_trial = record.trial_granted and (
            record.trial_ends_at is None or self.ledger.now() < record.trial_ends_at
        )
        return "trial" if in_trial and record.trial_ended_at is None else "active"

    def apply_state(self, after: str, record: Tenant | None) -> None:
        record = record or self.ledger.require_tenant(self.connection, self.name)
        new_state = self.resumed_state(record) if after == "active" else after
        self.ledger.update_tenant(self.connection, self.name, state=new_state)
        kind = {"suspended": "tenant_suspended", "closed": "tenant_closed"}.get(
            after, "tenant_resumed"
        )
        self.ledger.event(
            self.connection,
            self.name,
            kind,
            {"state": new_state, "reason": self.params.get("reason") or ""},
            requested_at=self.requested_at or self.ledger.now(),
        )
        if self.params.get("uri") and after in ("suspended", "active"):
            pause_or_resume(
                Host(self.params["uri"]), self.name, after == "suspended", set(record.blocked_vms)
            )

    def facts(self, record: Tenant) -> dict[str, Any]:
        return record_facts(self.ledger, self.connection, record)


def ledger_facts(ledger: Ledger, name: str) -> dict[str, Any]:
    """The tenant as the ledger holds it (state, quotas, usage, trial, blocks); {} if unknown."""
    with ledger.store.read() as connection:
        record = ledger.tenant(connection, name)
        return record_facts(ledger, connection, record) if record else {}


def record_facts(ledger: Ledger, connection: Any, record: Tenant) -> dict[str, Any]:
    return record.facts(ledger.limits(connection, record), tenant_usage(ledger, connection, record))


def pause_or_resume(host: Host, tenant: str, pause: bool, keep_paused: set[str]) -> None:
    """Pause every running VM of the tenant on the host, or resume the paused ones (except
    those blocked one by one)."""
    engine = VmPlanner(host, tenant)
    for domain in host.inventory(tenant).domains.values():
        if not domain.owner or domain.owner.tenant != tenant:
            continue
        if pause and domain.state == "running":
            engine.suspend(domain.name)
        elif not pause and domain.state == "paused" and domain.owner.name not in keep_paused:
            engine.resume(domain.name)


def run_quota(params: Mapping[str, Any], check_mode: bool = False) -> Result:
    """A quota increase (or decrease) request from support, recorded with its clock, applied."""
    tenant = check_name(params.get("tenant"), "tenant")
    wanted = quota.check_quotas(params.get("quotas"), "quotas")
    if not wanted:
        raise SpecError("quotas", "name at least one quota kind and its new limit")
    requested_at = parse_moment(params.get("requested_at"), "requested_at")
    reference = params.get("reference")
    ledger = open_ledger(params)
    plan = Plan()
    with ledger.store.locked(tenant) as connection:
        record = ledger.settle_trial(connection, ledger.require_tenant(connection, tenant))
        limits = ledger.limits(connection, record)
        key = key_of("quota-request", tenant, reference) if reference else None
        done = ledger.quota_request(connection, key) if key else None
        current = {kind: limits.get(kind, 0) for kind in wanted}
        if done is None and current != wanted:
            used = tenant_usage(ledger, connection, record)
            below = quota.below_usage(wanted, used)
            if below:
                raise SpecError(
                    "quotas", f"refused, below what tenant {tenant} uses: {'; '.join(below)}"
                )
            moment = requested_at or ledger.now()
            key = key or key_of("quota-request", tenant, wanted, moment)

            def apply() -> None:
                overrides = {**record.overrides, **wanted}
                ledger.update_tenant(
                    connection, tenant, quotas=json.dumps(overrides, sort_keys=True)
                )
                requested_by = params.get("requested_by") or ledger.actor
                ledger.record_quota_request(
                    connection, key, tenant, wanted, current, requested_by, moment
                )
                ledger.event(
                    connection,
                    tenant,
                    "quota_request_applied",
                    {"quotas": wanted, "before": current},
                    requested_at=moment,
                    key=key,
                )

            plan.add(
                Change(
                    "quota",
                    tenant,
                    "update",
                    field="quotas",
                    before=current,
                    after=wanted,
                    run=apply,
                )
            )

        def facts(_after: object, _applied: bool) -> dict[str, Any]:
            row = ledger.quota_request(connection, key) if key else None
            record = ledger.require_tenant(connection, tenant)
            usage = tenant_usage(ledger, connection, record)
            return {
                "tenant": record.facts(ledger.limits(connection, record), usage),
                "request": request_facts(row),
            }

        return conclude(Run(plan, facts), check_mode)


def request_facts(row: Any) -> dict[str, Any]:
    if row is None:
        return {}
    elapsed = (row.applied_at - row.requested_at).total_seconds() if row.applied_at else None
    return {
        "key": row.key,
        "quotas": json.loads(row.quotas),
        "requested_by": row.requested_by,
        "requested_at": iso(row.requested_at),
        "applied_at": iso(row.applied_at),
        "elapsed_seconds": elapsed,
        "target_seconds": QUOTA_REQUEST_TARGET.total_seconds(),
        "met": elapsed is not None and elapsed <= QUOTA_REQUEST_TARGET.total_seconds(),
    }


def plan_block(
    ledger: Ledger,
    connection: Any,
    host: Host,
    record: Tenant,
    vm: str,
    blocked: bool,
    params: Mapping[str, Any],
) -> Plan:
    """The operator's block or unblock of one VM: paused and locked, or released."""
    plan = Plan()
    if (vm in record.blocked_vms) == blocked:
        return plan
    requested_at = parse_moment(params.get("requested_at"), "requested_at") or ledger.now()
    libvirt_name = object_name(record.name, vm)
    engine = VmPlanner(host, record.name)

    def apply() -> None:
        ledger.set_block(connection, record.name, vm, blocked, params.get("reason") or "")
        ledger.event(
            connection,
            record.name,
            "vm_blocked" if blocked else "vm_unblocked",
            {"vm": vm, "reason": params.get("reason") or ""},
            requested_at=requested_at,
        )
        domain = host.inventory(record.name).domains.get(libvirt_name)
        if domain is None:
            return
        if blocked and domain.state == "running":
            engine.suspend(libvirt_name)
        elif not blocked and domain.state == "paused" and record.state != "suspended":
            engine.resume(libvirt_name)

    plan.add(
        Change(
            "vm",
            vm,
            "block" if blocked else "unblock",
            field="blocked",
            before=not blocked,
            after=blocked,
            run=apply,
        )
    )
    return plan


def run_block(params: Mapping[str, Any], check_mode: bool = False) -> Result:
    tenant = check_name(params.get("tenant"), "tenant")
    vm = check_name(params.get("name"), "name")
    host = Host(params.get("uri") or DEFAULT_URI)
    ledger = open_ledger(params)
    with ledger.store.locked(tenant) as connection:
        record = ledger.require_tenant(connection, tenant)
        if object_name(tenant, vm) not in host.inventory(tenant).domains:
            raise SpecError("name", f"unknown VM {vm!r} of tenant {tenant!r} on {host.uri}")
        plan = plan_block(ledger, connection, host, record, vm, bool(params["blocked"]), params)

        def facts(_after: object, _applied: bool) -> dict[str, Any]:
            blocked = vm in ledger.require_tenant(connection, tenant).blocked_vms
            return {"vm": {"name": vm, "blocked": blocked}}

        # The operator's block passes no gate (it is what the gate enforces), but it pauses
        # or resumes a VM: metered like any run.
        watch = None if check_mode else UsageWatch(ledger, host.uri, tenant, host.inventory(tenant))
        run = Run(plan, facts, watch=watch, observe=lambda: host.inventory(tenant))
        return conclude(run, check_mode)
