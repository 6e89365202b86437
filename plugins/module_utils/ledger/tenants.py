# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ledger's rules on tenants: plans, quotas, trials, quota requests, blocks, reservations.

Every write carries an idempotency key, the run id and the actor; every time is aware (UTC
in the store). Callers pass `now` so the rules can be tested at any moment.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import getpass
import hashlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from ..core import periods, quota
from ..core.backup_spec import DEFAULT_FREQUENCIES, check_frequencies
from ..core.errors import SpecError, VceError
from ..core.validation import check_name, customer_key
from .prices import PriceList, parse_prices
from .store import Store, open_store

try:
    import sqlalchemy as sa

    from .schema import (
        backup_schedules,
        backups,
        blocks,
        events,
        host_usage,
        plans,
        price_lists,
        public_ips,
        quota_requests,
        reservations,
        tenants,
        trial_grants,
        zone_links,
    )
except ImportError:  # reported by Store()
    sa = None

DEFAULT_TRIAL_HOURS = 72
# A reservation outlives a killed run by at most this long, then stops counting.
RESERVATION_TTL = dt.timedelta(hours=1)
# When a plan's first prices take effect: for every month, past ones included.
PRICES_SINCE_EVER = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
# The years a time given to the ledger may fall in (parse_moment).
MOMENT_YEARS = (PRICES_SINCE_EVER.year, 9998)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def default_actor() -> str:
    actor = os.environ.get("VCE_ACTOR")
    if actor:
        return actor
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def key_of(*parts: Any) -> str:
    """An idempotency key: the same parts always give the same key."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:40]


def parse_moment(value: Any, field_name: str) -> dt.datetime | None:
    """An ISO 8601 time with its offset (requests arrive from support with their own clock)."""
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        moment = value
    else:
        try:
            moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise SpecError(field_name, f"not an ISO 8601 time: {value!r}") from None
    if moment.tzinfo is None:
        raise SpecError(
            field_name, f"needs a UTC offset (e.g. 2026-11-24T09:30:00+05:00): {value!r}"
        )
    # Before the ledger's time nothing is billed, and a year-9999 time with an offset does not
    # convert to UTC (Python's datetime ends there).
    if not MOMENT_YEARS[0] <= moment.year <= MOMENT_YEARS[1]:
        raise SpecError(
            field_name,
            f"must be a time in the years {MOMENT_YEARS[0]}-{MOMENT_YEARS[1]}: {value!r}",
        )
    return moment


@dataclass(frozen=True)
class Tariff:
    name: str
    quotas: dict[str, int]
    trial_quotas: dict[str, int]
    trial_hours: int = DEFAULT_TRIAL_HOURS
    backup_frequencies: tuple[str, ...] = DEFAULT_FREQUENCIES
    prices: PriceList | None = None


def parse_tariffs(raw: Any, path: str = "plans") -> dict[str, Tariff]:
    """Plans as the inventory declares them:
    {name: {quotas, trial_quotas, trial_hours, backup_frequencies, prices}}."""
    if not isinstance(raw, Mapping):
        raise SpecError(path, "must be a mapping of plan name to its quotas")
    result = {}
    for name, body in raw.items():
        where = f"{path}.{name}"
        check_name(name, where)
        if not isinstance(body, Mapping):
            raise SpecError(where, "must be a mapping with quotas (and trial_quotas, trial_hours)")
        known = ("quotas", "trial_quotas", "trial_hours", "backup_frequencies", "prices")
        unknown = set(body) - set(known)
        if unknown:
            raise SpecError(
                f"{where}.{sorted(unknown)[0]}", f"unknown option; known: {', '.join(known)}"
            )
        quotas = quota.check_quotas(body.get("quotas"), f"{where}.quotas", complete=True)
        trial = body.get("trial_quotas")
        trial_quotas = (
            quotas
            if trial is None
            else quota.check_quotas(trial, f"{where}.trial_quotas", complete=True)
        )
        hours = body.get("trial_hours", DEFAULT_TRIAL_HOURS)
        if isinstance(hours, bool) or not isinstance(hours, int) or not 0 <= hours <= 24 * 90:
            raise SpecError(
                f"{where}.trial_hours",
                f"must be a whole number of hours from 0 to 2160, got {hours!r}",
            )
        frequencies = check_frequencies(
            body.get("backup_frequencies"), f"{where}.backup_frequencies"
        )
        prices = body.get("prices")
        price_list = parse_prices(prices, f"{where}.prices") if prices is not None else None
        result[name] = Tariff(name, quotas, trial_quotas, hours, frequencies, price_list)
    return result


@dataclass
class Tenant:
    name: str
    customer: str
    plan: str
    state: str
    overrides: dict[str, int]
    trial_started_at: dt.datetime | None = None
    trial_ends_at: dt.datetime | None = None
    trial_ended_at: dt.datetime | None = None
    trial_granted: bool = False
    blocked_vms: dict[str, dt.datetime] = field(default_factory=dict)

    def facts(self, limits: Mapping[str, int], used: Mapping[str, int]) -> dict[str, Any]:
        return {
            "name": self.name,
            "customer": self.customer,
            "plan": self.plan,
            "state": self.state,
            "quotas": dict(limits),
            "quota_overrides": dict(self.overrides),
            "usage": {kind: quota.plain(kind, used.get(kind, 0)) for kind in quota.KINDS},
            "trial": {
                "granted": self.trial_granted,
                "started_at": iso(self.trial_started_at),
                "ends_at": iso(self.trial_ends_at),
                "ended_at": iso(self.trial_ended_at),
            },
            "blocked_vms": sorted(self.blocked_vms),
        }


def iso(moment: dt.datetime | None) -> str | None:
    return moment.isoformat() if moment else None


def price_list_of(row: Any) -> PriceList:
    return parse_prices(json.loads(row.prices), f"price list of plan {row.plan}")


# The run this thread acts for, when one process serves many runs at once (the control plane's
# workers): every Ledger opened inside `acting_as` records that run id and actor. Ansible and
# the CLI leave it unset (VCE_RUN_ID, else a new id per Ledger).
_acting: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "vce_acting", default=None
)


@contextmanager
def acting_as(run_id: str, actor: str) -> Iterator[None]:
    token = _acting.set((run_id, actor))
    try:
        yield
    finally:
        _acting.reset(token)


class Ledger:
    """The ledger for one run: who acts, under which run id, at which moment."""

    def __init__(
        self,
        store: Store,
        actor: str | None = None,
        run_id: str | None = None,
        now: dt.datetime | None = None,
    ) -> None:
        self.store = store
        acting = _acting.get()
        self.actor = actor or (acting[1] if acting else default_actor())
        self.run_id = (
            run_id
            or (acting[0] if acting else None)
            or os.environ.get("VCE_RUN_ID")
            or uuid.uuid4().hex
        )
        self.fixed_now = now

    @classmethod
    def open(cls, url: str | None = None, create: bool = False, **kwargs: Any) -> Ledger:
        """The ledger at `url`; `create` only for the entry points that register (store.py)."""
        return cls(open_store(url, create=create), **kwargs)

    def now(self) -> dt.datetime:
        return self.fixed_now or utcnow()

    # -- plans ---------------------------------------------------------------------------

    def tariff(self, connection: Any, name: str) -> Tariff | None:
        row = connection.execute(sa.select(plans).where(plans.c.name == name)).first()
        if row is None:
            return None
        frequencies = (
            tuple(json.loads(row.backup_frequencies))
            if row.backup_frequencies
            else DEFAULT_FREQUENCIES
        )
        return Tariff(
            row.name,
            json.loads(row.quotas),
            json.loads(row.trial_quotas),
            row.trial_hours,
            frequencies,
            self.latest_prices(connection, name),
        )

    def price_lists(self, connection: Any, plan: str) -> list[tuple[dt.datetime, PriceList]]:
        """The plan's price lists, oldest first, each with the moment it takes effect."""
        rows = connection.execute(
            sa.select(price_lists)
            .where(price_lists.c.plan == plan)
            .order_by(price_lists.c.effective_from)
        )
        return [(row.effective_from, price_list_of(row)) for row in rows]

    def latest_prices(self, connection: Any, plan: str) -> PriceList | None:
        lists = self.price_lists(connection, plan)
        return lists[-1][1] if lists else None

    def put_prices(
        self, connection: Any, plan: str, prices: PriceList, effective_from: dt.datetime | None
    ) -> dt.datetime:
        """Record new prices. A plan's first prices hold for every month; a change takes
        effect at the start of the next month (no month is repriced once it began)."""
        if effective_from is None:
            effective_from = (
                periods.Month.of(self.now(), periods.time_zone()).next().start
                if self.price_lists(connection, plan)
                else PRICES_SINCE_EVER
            )
        where = (price_lists.c.plan == plan) & (price_lists.c.effective_from == effective_from)
        connection.execute(price_lists.delete().where(where))
        connection.execute(
            price_lists.insert().values(
                plan=plan, effective_from=effective_from, currency=prices.currency,
                prices=json.dumps(prices.as_dict(), sort_keys=True), recorded_at=self.now(),
            )
        )  # fmt: skip
        return effective_from

    def put_tariffs(
        self, connection: Any, defs: Mapping[str, Tariff], check_mode: bool = False
    ) -> list[str]:
        """Record plan definitions; returns the names that were new or changed."""
        changed = []
        for name, wanted in sorted(defs.items()):
            recorded = self.tariff(connection, name)
            if recorded is not None and recorded == replace(
                wanted, prices=wanted.prices or recorded.prices
            ):
                continue
            changed.append(name)
            if check_mode:
                continue
            values = {
                "quotas": json.dumps(wanted.quotas, sort_keys=True),
                "trial_quotas": json.dumps(wanted.trial_quotas, sort_keys=True),
                "trial_hours": wanted.trial_hours,
                "backup_frequencies": json.dumps(list(wanted.backup_frequencies)),
                "updated_at": self.now(),
            }
            updated = connection.execute(
                plans.update().where(plans.c.name == name).values(**values)
            )
            if updated.rowcount == 0:
                connection.execute(plans.insert().values(name=name, **values))
            if wanted.prices is not None and wanted.prices != self.latest_prices(connection, name):
                self.put_prices(connection, name, wanted.prices, None)
        return changed

    # -- tenants -------------------------------------------------------------------------

    def tenant(self, connection: Any, name: str) -> Tenant | None:
        row = connection.execute(sa.select(tenants).where(tenants.c.name == name)).first()
        if row is None:
            return None
        # By tenant: the grant's customer is its key (customer_key), not the identity as shown.
        granted = connection.execute(
            sa.select(trial_grants.c.tenant).where(trial_grants.c.tenant == name)
        ).scalar()
        blocked = connection.execute(
            sa.select(blocks.c.vm, blocks.c.since).where(blocks.c.tenant == name, blocks.c.vm != "")
        ).all()
        return Tenant(
            row.name,
            row.customer,
            row.plan,
            row.state,
            json.loads(row.quotas),
            row.trial_started_at,
            row.trial_ends_at,
            row.trial_ended_at,
            granted == name,
            dict(blocked),
        )

    def tenant_names(self) -> list[str]:
        with self.store.read() as connection:
            return [row.name for row in connection.execute(sa.select(tenants.c.name))]

    def require_tenant(self, connection: Any, name: str) -> Tenant:
        check_name(name, "tenant")
        record = self.tenant(connection, name)
        if record is None:
            raise VceError(
                f"tenant: {name!r} is not in the ledger at {self.store.shown_url}; register it "
                "first with vce.kvm.tenant (name, customer, plan)"
            )
        return record

    def limits(self, connection: Any, record: Tenant) -> dict[str, int]:
        """The tenant's quotas now: its plan's (trial quotas while in trial), then overrides."""
        plan = self.tariff(connection, record.plan)
        if plan is None:
            raise VceError(f"tenant {record.name}: its plan {record.plan!r} is not in the ledger")
        base = plan.trial_quotas if record.state == "trial" else plan.quotas
        return {**base, **record.overrides}

    def create_tenant(
        self, connection: Any, name: str, customer: str, plan: Tariff, overrides: Mapping[str, int]
    ) -> Tenant:
        """A new tenant: in trial if its plan has one and its customer never had one (3.12)."""
        now = self.now()
        state = "active"
        if plan.trial_hours > 0 and self.grant_trial(connection, customer, name, now):
            state = "trial"
        connection.execute(
            tenants.insert().values(
                name=name,
                customer=customer,
                plan=plan.name,
                state=state,
                quotas=json.dumps(dict(overrides), sort_keys=True),
                created_at=now,
                updated_at=now,
            )
        )
        self.event(
            connection,
            name,
            "tenant_created",
            {"customer": customer, "plan": plan.name, "state": state},
        )
        return self.require_tenant(connection, name)

    def grant_trial(self, connection: Any, customer: str, tenant: str, now: dt.datetime) -> bool:
        """Once per customer, compared on customer_key. Grants made before identities were
        normalised hold them as given, so every grant is read and normalised here: SQL cannot
        normalise Unicode, and a tenant is created rarely. New grants store the key, so the primary
        key still refuses two concurrent grants for one customer."""
        key = customer_key(customer)
        granted = connection.execute(sa.select(trial_grants.c.customer)).scalars()
        if any(customer_key(other) == key for other in granted):
            return False
        connection.execute(
            trial_grants.insert().values(customer=key, tenant=tenant, granted_at=now)
        )
        return True

    def update_tenant(self, connection: Any, name: str, **values: Any) -> None:
        connection.execute(
            tenants.update().where(tenants.c.name == name).values(updated_at=self.now(), **values)
        )

    def trial_is_over(self, record: Tenant) -> bool:
        return (
            record.state == "trial"
            and record.trial_ends_at is not None
            and self.now() >= record.trial_ends_at
        )

    def current_tenant(self, name: str) -> Tenant:
        """The tenant as of now: read, and its trial settled under the lock if it is over (a
        reading transaction must not turn into a writing one: SQLite would refuse it when
        another run wrote in between)."""
        record = self.registered_tenant(name)
        if record is None:
            with self.store.read() as connection:
                return self.require_tenant(connection, name)
        return record

    def registered_tenant(self, name: str) -> Tenant | None:
        """The tenant as of now (see current_tenant), or None when it is not registered."""
        with self.store.read() as connection:
            record = self.tenant(connection, name)
        if record is not None and self.trial_is_over(record):
            with self.store.locked(name) as connection:
                record = self.settle_trial(connection, self.require_tenant(connection, name))
        return record

    def settle_trial(self, connection: Any, record: Tenant) -> Tenant:
        """End a trial whose hours are over: paid service if anything runs, else suspended."""
        if not self.trial_is_over(record):
            return record
        running = connection.execute(
            sa.select(sa.func.coalesce(sa.func.sum(host_usage.c.running_vms), 0)).where(
                host_usage.c.tenant == record.name
            )
        ).scalar()
        outcome = "active" if running else "suspended"
        self.update_tenant(
            connection, record.name, state=outcome, trial_ended_at=record.trial_ends_at
        )
        self.event(
            connection,
            record.name,
            "trial_ended",
            {"outcome": outcome, "running_vms": int(running)},
            at=record.trial_ends_at,
        )
        return self.require_tenant(connection, record.name)

    def start_trial(self, connection: Any, record: Tenant) -> None:
        """The trial clock starts at the tenant's first VM start."""
        if record.state != "trial" or record.trial_started_at is not None:
            return
        plan = self.tariff(connection, record.plan)
        hours = plan.trial_hours if plan else DEFAULT_TRIAL_HOURS
        now = self.now()
        ends = now + dt.timedelta(hours=hours)
        self.update_tenant(connection, record.name, trial_started_at=now, trial_ends_at=ends)
        self.event(connection, record.name, "trial_started", {"ends_at": ends.isoformat()})

    # -- usage ---------------------------------------------------------------------------

    def known_usage(
        self, connection: Any, tenant: str, except_host: str | None = None
    ) -> quota.Usage:
        """What the ledger knows the tenant uses: last usage per host (except `except_host`)."""
        query = sa.select(host_usage.c.usage).where(host_usage.c.tenant == tenant)
        if except_host is not None:
            query = query.where(host_usage.c.host != except_host)
        return quota.add(*(json.loads(row.usage) for row in connection.execute(query)))

    def public_ip_count(self, connection: Any, tenant: str) -> int:
        """Public IPs allocated to the tenant in every zone: the ledger is their truth."""
        query = (
            sa.select(sa.func.count()).select_from(public_ips).where(public_ips.c.tenant == tenant)
        )
        return int(connection.execute(query).scalar())

    def zone_link_count(self, connection: Any, tenant: str) -> int:
        """The tenant's zone links: the ledger is their truth."""
        query = (
            sa.select(sa.func.count()).select_from(zone_links).where(zone_links.c.tenant == tenant)
        )
        return int(connection.execute(query).scalar())

    def zone_link(self, connection: Any, tenant: str, name: str) -> Any:
        """The tenant's zone link `name` as recorded (network, ends, VNI), or None."""
        query = sa.select(zone_links).where(
            zone_links.c.tenant == tenant, zone_links.c.name == name
        )
        return connection.execute(query).first()

    def counted_usage(self, connection: Any, tenant: str) -> quota.Usage:
        """What the ledger counts itself, one row per object: public IPs, zone links and
        backup schedules (libvirt is the truth of the other kinds)."""
        return {
            "public_ips": self.public_ip_count(connection, tenant),
            "zone_links": self.zone_link_count(connection, tenant),
            "backup_schedules": len(self.backup_schedule_rows(connection, tenant)),
        }

    def backup_schedule_rows(
        self, connection: Any, tenant: str, host: str | None = None
    ) -> dict[tuple[str, str, str], Any]:
        """The tenant's recorded schedules by (host, vm, name), on `host` or everywhere."""
        query = sa.select(backup_schedules).where(backup_schedules.c.tenant == tenant)
        if host is not None:
            query = query.where(backup_schedules.c.host == host)
        return {(r.host, r.vm, r.name): r for r in connection.execute(query)}

    def put_backup_schedule(
        self, connection: Any, tenant: str, host: str, vm: str, name: str, frequency: str,
        calendar: str, config: Mapping[str, Any],
    ) -> None:  # fmt: skip
        where = (
            (backup_schedules.c.tenant == tenant) & (backup_schedules.c.host == host)
            & (backup_schedules.c.vm == vm) & (backup_schedules.c.name == name)
        )  # fmt: skip
        values = {
            "frequency": frequency,
            "calendar": calendar,
            "config": json.dumps(dict(config), sort_keys=True),
            "updated_at": self.now(),
        }
        if connection.execute(backup_schedules.update().where(where).values(**values)).rowcount:
            return
        connection.execute(
            backup_schedules.insert().values(tenant=tenant, host=host, vm=vm, name=name, **values)
        )

    def drop_backup_schedule(
        self, connection: Any, tenant: str, host: str, vm: str, name: str
    ) -> None:
        connection.execute(
            backup_schedules.delete().where(
                backup_schedules.c.tenant == tenant, backup_schedules.c.host == host,
                backup_schedules.c.vm == vm, backup_schedules.c.name == name,
            )
        )  # fmt: skip

    def backup_storage_mib(self, connection: Any, tenant: str) -> int:
        """Backup storage the tenant holds now: kept backups not yet pruned, in MiB."""
        query = sa.select(sa.func.coalesce(sa.func.sum(backups.c.size_bytes), 0)).where(
            backups.c.tenant == tenant, backups.c.status == "ok", backups.c.pruned_at.is_(None)
        )
        return quota.mib_of_bytes(int(connection.execute(query).scalar()))

    def record_backup(self, connection: Any, key: str, **values: Any) -> bool:
        """One row per backup run; the same key never writes twice (returns False then)."""
        if connection.execute(sa.select(backups.c.key).where(backups.c.key == key)).first():
            return False
        connection.execute(backups.insert().values(key=key, run_id=self.run_id, **values))
        return True

    def update_backup(self, connection: Any, key: str, **values: Any) -> None:
        connection.execute(backups.update().where(backups.c.key == key).values(**values))

    def prune_backups(
        self, connection: Any, tenant: str, host: str, vm: str, schedule: str
    ) -> None:
        """Mark every kept backup of the schedule pruned (its backups were purged)."""
        connection.execute(
            backups.update()
            .where(
                backups.c.tenant == tenant, backups.c.host == host, backups.c.vm == vm,
                backups.c.schedule == schedule, backups.c.pruned_at.is_(None),
            )
            .values(pruned_at=self.now())
        )  # fmt: skip

    def backup_records(self, tenant: str, vm: str | None = None) -> list[Any]:
        with self.store.read() as connection:
            query = sa.select(backups).where(backups.c.tenant == tenant)
            if vm is not None:
                query = query.where(backups.c.vm == vm)
            return list(connection.execute(query.order_by(backups.c.started_at, backups.c.key)))

    def reserved(self, connection: Any, tenant: str, except_key: str | None = None) -> quota.Usage:
        """Usage that runs in flight have claimed and not yet made real."""
        query = sa.select(reservations.c.usage).where(
            reservations.c.tenant == tenant, reservations.c.expires_at > self.now()
        )
        if except_key is not None:
            query = query.where(reservations.c.key != except_key)
        return quota.add(*(json.loads(row.usage) for row in connection.execute(query)))

    def reserve(
        self, connection: Any, key: str, tenant: str, host: str, delta: Mapping[str, int]
    ) -> None:
        """Claim `delta`; a re-run of the same declaration replaces its own claim, never adds."""
        connection.execute(reservations.delete().where(reservations.c.key == key))
        now = self.now()
        connection.execute(
            reservations.insert().values(
                key=key,
                tenant=tenant,
                host=host,
                run_id=self.run_id,
                usage=json.dumps({k: v for k, v in delta.items() if v > 0}, sort_keys=True),
                created_at=now,
                expires_at=now + RESERVATION_TTL,
            )
        )

    def release(self, connection: Any, key: str) -> None:
        connection.execute(reservations.delete().where(reservations.c.key == key))

    def record_host_usage(
        self, connection: Any, tenant: str, host: str, used: Mapping[str, int], running_vms: int
    ) -> None:
        values = {
            "usage": json.dumps({k: v for k, v in used.items() if v}, sort_keys=True),
            "running_vms": running_vms,
            "observed_at": self.now(),
        }
        updated = connection.execute(
            host_usage.update()
            .where(host_usage.c.tenant == tenant, host_usage.c.host == host)
            .values(**values)
        )
        if updated.rowcount == 0:
            connection.execute(host_usage.insert().values(tenant=tenant, host=host, **values))

    # -- quota requests ------------------------------------------------------------------

    def record_quota_request(
        self,
        connection: Any,
        key: str,
        tenant: str,
        wanted: Mapping[str, int],
        previous: Mapping[str, Any],
        requested_by: str,
        requested_at: dt.datetime,
    ) -> None:
        connection.execute(
            quota_requests.insert().values(
                key=key,
                tenant=tenant,
                quotas=json.dumps(dict(wanted), sort_keys=True),
                previous=json.dumps(dict(previous), sort_keys=True),
                requested_by=requested_by,
                requested_at=requested_at,
                applied_at=self.now(),
                result="applied",
                reason="",
                run_id=self.run_id,
            )
        )

    def quota_request(self, connection: Any, key: str) -> Any:
        return connection.execute(
            sa.select(quota_requests).where(quota_requests.c.key == key)
        ).first()

    # -- blocks --------------------------------------------------------------------------

    def set_block(self, connection: Any, tenant: str, vm: str, blocked: bool, reason: str) -> None:
        where = (blocks.c.tenant == tenant) & (blocks.c.vm == vm)
        connection.execute(blocks.delete().where(where))
        if blocked:
            connection.execute(
                blocks.insert().values(tenant=tenant, vm=vm, since=self.now(), reason=reason)
            )

    # -- events --------------------------------------------------------------------------

    def event(
        self,
        connection: Any,
        tenant: str,
        kind: str,
        detail: Mapping[str, Any],
        at: dt.datetime | None = None,
        requested_at: dt.datetime | None = None,
        key: str | None = None,
    ) -> None:
        """Append to the tenant's history once: the same key never writes twice."""
        key = key or key_of(self.run_id, tenant, kind, detail)
        exists = connection.execute(sa.select(events.c.key).where(events.c.key == key)).first()
        if exists:
            return
        connection.execute(
            events.insert().values(
                key=key,
                tenant=tenant,
                kind=kind,
                at=at or self.now(),
                requested_at=requested_at,
                detail=json.dumps(dict(detail), sort_keys=True, default=str),
                actor=self.actor,
                run_id=self.run_id,
            )
        )

    def has_event(self, key: str) -> bool:
        with self.store.read() as connection:
            found = connection.execute(sa.select(events.c.key).where(events.c.key == key))
            return found.first() is not None

    def history(self, tenant: str) -> list[dict[str, Any]]:
        with self.store.read() as connection:
            rows = connection.execute(
                sa.select(events)
                .where(events.c.tenant == tenant)
                .order_by(events.c.at, events.c.key)
            ).all()
        return [
            {
                "kind": row.kind,
                "at": iso(row.at),
                "requested_at": iso(row.requested_at),
                "detail": json.loads(row.detail),
                "actor": row.actor,
                "run_id": row.run_id,
            }
            for row in rows
        ]
