# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ledger's tables as the code queries them (SQLAlchemy Core).

The migrations under ledger_migrations/ create and change these tables; a test checks that
the migrated database matches this description, so the two never drift apart.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

try:
    import sqlalchemy as sa
    from sqlalchemy.types import TypeDecorator
except ImportError:  # the ledger reports the missing library when it is opened
    sa = None
    TypeDecorator = object

if sa is not None:

    class UtcDateTime(TypeDecorator):
        """Timezone-aware datetimes on every back end; SQLite stores them as UTC text."""

        impl = sa.DateTime(timezone=True)
        cache_ok = True

        def process_bind_param(self, value: Any, dialect: Any) -> Any:
            if value is None:
                return None
            if value.tzinfo is None:
                raise ValueError(f"the ledger stores timezone-aware times only, got {value!r}")
            value = value.astimezone(dt.UTC)
            return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

        def process_result_value(self, value: Any, dialect: Any) -> Any:
            if value is not None and value.tzinfo is None:
                return value.replace(tzinfo=dt.UTC)
            return value

    metadata = sa.MetaData()

    plans = sa.Table(
        "plans",
        metadata,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("quotas", sa.Text, nullable=False),  # JSON {kind: limit}
        sa.Column("trial_quotas", sa.Text, nullable=False),
        sa.Column("trial_hours", sa.Integer, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        # JSON [frequency, ...]; NULL: the default set (backup.DEFAULT_FREQUENCIES)
        sa.Column("backup_frequencies", sa.Text),
    )

    tenants = sa.Table(
        "tenants",
        metadata,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("customer", sa.String(128), nullable=False, index=True),
        sa.Column("plan", sa.String(64), sa.ForeignKey("plans.name"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("quotas", sa.Text, nullable=False),  # JSON overrides {kind: limit}
        sa.Column("trial_started_at", UtcDateTime),
        sa.Column("trial_ends_at", UtcDateTime),
        sa.Column("trial_ended_at", UtcDateTime),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )

    # One row per customer identity ever granted a trial: the primary key makes "once per
    # customer" hold even when two tenants of one customer are created at the same moment.
    trial_grants = sa.Table(
        "trial_grants",
        metadata,
        sa.Column("customer", sa.String(128), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("granted_at", UtcDateTime, nullable=False),
    )

    quota_requests = sa.Table(
        "quota_requests",
        metadata,
        sa.Column("key", sa.String(160), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False, index=True),
        sa.Column("quotas", sa.Text, nullable=False),  # JSON {kind: requested limit}
        sa.Column("previous", sa.Text, nullable=False),  # JSON {kind: limit before}
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("requested_at", UtcDateTime, nullable=False),
        sa.Column("applied_at", UtcDateTime),
        sa.Column("result", sa.String(16), nullable=False),  # applied | refused
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
    )

    # Operator blocks: whole tenant (vm = "") or one VM. The row lives while the block holds.
    blocks = sa.Table(
        "blocks",
        metadata,
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("vm", sa.String(64), primary_key=True),
        sa.Column("since", UtcDateTime, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )

    # The last usage seen on each host, so a run on one host counts the others too.
    host_usage = sa.Table(
        "host_usage",
        metadata,
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("usage", sa.Text, nullable=False),  # JSON {kind: base units}
        sa.Column("running_vms", sa.Integer, nullable=False),
        sa.Column("observed_at", UtcDateTime, nullable=False),
    )

    # Usage a run has claimed and not yet made real; counted for every other run.
    reservations = sa.Table(
        "reservations",
        metadata,
        sa.Column("key", sa.String(160), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False, index=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("usage", sa.Text, nullable=False),  # JSON {kind: base units}
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
    )

    # What happened to a tenant, in order: the audit trail and the clocks of the terms.
    events = sa.Table(
        "events",
        metadata,
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("at", UtcDateTime, nullable=False),
        sa.Column("requested_at", UtcDateTime),
        sa.Column("detail", sa.Text, nullable=False),  # JSON
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
    )

    # Public IPs allocated from the zones' pools; the address is the key, so no address is
    # ever given to two tenants, whatever runs at once.
    public_ips = sa.Table(
        "public_ips",
        metadata,
        sa.Column("address", sa.String(45), primary_key=True),
        sa.Column("zone", sa.String(64), nullable=False),
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False, index=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("vm", sa.String(64), nullable=False),
        sa.Column("private_ip", sa.String(45), nullable=False),
        sa.Column("allocated_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.UniqueConstraint("tenant", "zone", "name", name="uq_public_ips_tenant_zone_name"),
    )

    # Cross-zone links; the VNI is unique, so no VNI ever carries two links.
    zone_links = sa.Table(
        "zone_links",
        metadata,
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("vni", sa.Integer, nullable=False, unique=True),
        sa.Column("network", sa.String(64), nullable=False),
        sa.Column("cidr", sa.String(45), nullable=False),
        sa.Column("ends", sa.Text, nullable=False),  # JSON [{zone, uri}, {zone, uri}]
        sa.Column("created_at", UtcDateTime, nullable=False),
    )

    # Backup schedules installed on hosts (the units are their truth on the host; these rows
    # count them for the quota across hosts).
    backup_schedules = sa.Table(
        "backup_schedules",
        metadata,
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("vm", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("frequency", sa.String(16), nullable=False),
        sa.Column("calendar", sa.Text, nullable=False),
        sa.Column("config", sa.Text, nullable=False),  # JSON, as the runner reads it
        sa.Column("updated_at", UtcDateTime, nullable=False),
    )

    # One row per backup run, written by the host-side runner: size (metered as backup
    # storage until pruned), result and duration (for the SLA and the operator).
    backups = sa.Table(
        "backups",
        metadata,
        sa.Column("key", sa.String(400), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False, index=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("vm", sa.String(64), nullable=False),
        sa.Column("schedule", sa.String(64), nullable=False),
        sa.Column("backup_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),  # full | incremental | copy
        sa.Column("status", sa.String(16), nullable=False),  # ok | failed
        sa.Column("started_at", UtcDateTime, nullable=False),
        sa.Column("finished_at", UtcDateTime, nullable=False),
        sa.Column("duration_ms", sa.Integer, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("pruned_at", UtcDateTime),
        sa.Column("run_id", sa.String(64), nullable=False),
    )

    # -- metering, SLA and billing (migration 0005) ----------------------------------------

    # One row per ansible-playbook run, Pulumi operation, reconciliation or probe pass.
    runs = sa.Table(
        "runs",
        metadata,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("source", sa.String(16), nullable=False),  # ansible | pulumi | reconcile | probe
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("started_at", UtcDateTime, nullable=False),
        sa.Column("ended_at", UtcDateTime),
        sa.Column("result", sa.String(16), nullable=False),  # running | ok | failed | interrupted
        sa.Column("detail", sa.Text, nullable=False),  # JSON
    )

    # What one resource had from `started_at` until the next state of the same resource
    # (`ended_at`, NULL while it is the latest). A state is written once per idempotency key,
    # so replaying a run never counts twice; states may arrive out of order.
    usage_intervals = sa.Table(
        "usage_intervals",
        metadata,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column(
            "kind", sa.String(16), nullable=False
        ),  # vm | disk | volume | public_ip | zone_link
        sa.Column("name", sa.String(160), nullable=False),
        sa.Column("vm", sa.String(64), nullable=False),  # the VM it belongs to, "" none
        sa.Column(
            "state", sa.String(16), nullable=False
        ),  # running | paused | stopped | present | absent
        sa.Column("vcpus", sa.Integer, nullable=False),
        sa.Column("ram_mib", sa.BigInteger, nullable=False),
        sa.Column("disk_mib", sa.BigInteger, nullable=False),
        sa.Column("public_ips", sa.Integer, nullable=False),
        sa.Column("zone_links", sa.Integer, nullable=False),
        sa.Column("started_at", UtcDateTime, nullable=False),
        sa.Column("ended_at", UtcDateTime),
        sa.Column("source", sa.String(16), nullable=False),  # run | reconcile
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Index("ix_usage_tenant_start", "tenant", "started_at"),
        sa.Index("ix_usage_resource", "host", "tenant", "kind", "name", "started_at"),
    )

    # Write-ahead usage (migration 0008): each change a run is about to make to a metered
    # object, written with its reservation before libvirt is touched; resolved (confirmed into
    # usage_intervals, or dropped) after the change, or by the next run of the tenant on the host.
    usage_intents = sa.Table(
        "usage_intents",
        metadata,
        sa.Column("key", sa.String(64), primary_key=True),  # run, host, tenant, object, change
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),  # vm | disk
        sa.Column("name", sa.String(160), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("planned_at", UtcDateTime, nullable=False),
        sa.Column("resolved_at", UtcDateTime),  # NULL: pending
        sa.Column("resolution", sa.String(16)),  # confirmed | dropped
        sa.Column("resolved_by", sa.String(64)),  # the run that resolved it
        sa.Index("ix_usage_intents_pending", "tenant", "host", "resolved_at"),
    )

    # The last thing the probe saw of each VM it watches.
    probe_status = sa.Table(
        "probe_status",
        metadata,
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("vm", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("up", sa.Boolean, nullable=False),
        sa.Column("since", UtcDateTime, nullable=False),
        sa.Column("checked_at", UtcDateTime, nullable=False),
    )

    # Downtime and data-loss incidents, from probes and from customer reports.
    incidents = sa.Table(
        "incidents",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(200), nullable=False, unique=True),
        sa.Column("tenant", sa.String(64), nullable=False, index=True),
        sa.Column("host", sa.String(255), nullable=False),  # "" every host of the tenant
        sa.Column("vm", sa.String(64), nullable=False),  # "" every VM of the tenant
        sa.Column("kind", sa.String(16), nullable=False),  # downtime | data_loss
        sa.Column("source", sa.String(16), nullable=False),  # probe | report | operator
        sa.Column("cause", sa.String(16), nullable=False),  # provider | maintenance | ...
        sa.Column("started_at", UtcDateTime, nullable=False),
        sa.Column("reported_at", UtcDateTime),
        sa.Column("confirmed_at", UtcDateTime),
        sa.Column("ended_at", UtcDateTime),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
    )

    # Intervals whose downtime is not compensated: announced maintenance, force majeure,
    # customer-caused. Empty scope fields match everything.
    exclusions = sa.Table(
        "exclusions",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(200), nullable=False, unique=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("vm", sa.String(64), nullable=False),
        sa.Column("cause", sa.String(16), nullable=False),  # maintenance | force_majeure | customer
        sa.Column("started_at", UtcDateTime, nullable=False),
        sa.Column("ended_at", UtcDateTime, nullable=False),
        sa.Column("announced_at", UtcDateTime),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
    )

    # A plan's prices from a moment on (Decimal strings in JSON, per unit and hour).
    price_lists = sa.Table(
        "price_lists",
        metadata,
        sa.Column("plan", sa.String(64), primary_key=True),
        sa.Column("effective_from", UtcDateTime, primary_key=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("prices", sa.Text, nullable=False),
        sa.Column("recorded_at", UtcDateTime, nullable=False),
    )

    # Invoices of closed months: frozen documents; corrections are credit notes.
    invoices = sa.Table(
        "invoices",
        metadata,
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("total", sa.String(32), nullable=False),  # Decimal as text
        sa.Column("document", sa.Text, nullable=False),  # JSON
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("closed_at", UtcDateTime, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
    )

    credit_notes = sa.Table(
        "credit_notes",
        metadata,
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False, index=True),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount", sa.String(32), nullable=False),  # Decimal as text, positive
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("document", sa.Text, nullable=False),  # JSON: the corrected invoice
        sa.Column("issued_at", UtcDateTime, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
    )

    # Customer requests logged by support, with the clock of the terms (5.1).
    requests = sa.Table(
        "requests",
        metadata,
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False, index=True),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("reference", sa.String(128), nullable=False),
        sa.Column("logged_at", UtcDateTime, nullable=False),
        sa.Column("fulfilled_at", UtcDateTime),
        sa.Column("fulfilled_by", sa.String(64)),  # the run that fulfilled it
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
    )

    # The KVM hosts of the fleet (migration 0006): where runs reach them, their zone and its
    # public pools, and the capacity libvirt reported at the last registration.
    hosts = sa.Table(
        "hosts",
        metadata,
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("zone", sa.String(64), nullable=False, index=True),
        sa.Column("uri", sa.String(255), nullable=False),
        sa.Column("uplink", sa.String(16)),
        sa.Column("public_pools", sa.Text, nullable=False),  # JSON [{name, cidr, gateway, exclude}]
        sa.Column("cpus", sa.Integer, nullable=False),
        sa.Column("memory_mib", sa.BigInteger, nullable=False),
        sa.Column("libvirt_version", sa.String(32), nullable=False),
        sa.Column("qemu_version", sa.String(32), nullable=False),
        sa.Column("registered_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("key", sa.String(64), nullable=False),  # idempotency key of the recorded values
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        # Migration 0009, for the control plane: the command prefix that runs commands on the
        # host (JSON list, NULL: local), and the zone-link and backup settings (JSON object).
        sa.Column("host_command", sa.Text),
        sa.Column("settings", sa.Text),
    )

    # The catalogue of base images: per zone, one path that is the same on every host of the
    # zone, and the content's checksum, which never changes under a name.
    images = sa.Table(
        "images",
        metadata,
        sa.Column("zone", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("path", sa.String(4096), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("virtual_size", sa.BigInteger, nullable=False),  # bytes
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("registered_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("key", sa.String(64), nullable=False),  # idempotency key of the recorded values
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
    )

    # The control plane (migration 0009). A user logs in to the personal cabinet; an operator
    # has no tenant. Passwords are argon2 hashes.
    users = sa.Table(
        "users",
        metadata,
        sa.Column("login", sa.String(128), primary_key=True),
        sa.Column("tenant", sa.String(64), index=True),
        sa.Column("role", sa.String(16), nullable=False),  # customer | operator
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("disabled_at", UtcDateTime),
        # The TOTP second factor's base32 secret (migration 0010); NULL: password only.
        sa.Column("totp_secret", sa.String(64)),
        # The last time step whose code was accepted: a code of it or before is used up, on
        # every instance (the update that takes a code is conditional on it).
        sa.Column("totp_step", sa.BigInteger),
    )

    # A login whose password was right and whose TOTP code is awaited (migration 0010): no
    # session, no rights; the key is the SHA-256 of the secret the browser holds, so that any
    # instance behind the proxy can take the code.
    pending_logins = sa.Table(
        "pending_logins",
        metadata,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("login", sa.String(128), nullable=False),
        sa.Column("tries", sa.Integer, nullable=False),  # wrong codes so far
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
    )

    # API tokens: the visible prefix is the key, the secret is kept only as its SHA-256 (a
    # token's secret is random, so a slow hash would add nothing but latency to every call).
    api_tokens = sa.Table(
        "api_tokens",
        metadata,
        sa.Column("prefix", sa.String(32), primary_key=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(64), index=True),  # NULL: an operator's token
        sa.Column("role", sa.String(16), nullable=False),  # customer | operator
        sa.Column("scopes", sa.String(32), nullable=False),  # "read" | "read write"
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime),
        sa.Column("revoked_at", UtcDateTime),
        sa.Column("last_used_at", UtcDateTime),
    )

    # Every change made through the API, queued in `seq` order; one instance claims each.
    actions = sa.Table(
        "actions",
        metadata,
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False, unique=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        # queued | running | succeeded | failed | interrupted
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request", sa.Text, nullable=False),  # JSON: what the worker runs
        sa.Column("plan", sa.Text),  # JSON
        sa.Column("progress", sa.Text),  # JSON
        sa.Column("result", sa.Text),  # JSON
        sa.Column("error", sa.Text),  # JSON, the API's error shape
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("token", sa.String(32), nullable=False),  # the token's prefix
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("claimed_by", sa.String(64)),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("started_at", UtcDateTime),
        sa.Column("heartbeat_at", UtcDateTime),
        sa.Column("finished_at", UtcDateTime),
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_actions_idempotency"),
        sa.Index("ix_actions_status", "status", "seq"),
        sa.Index("ix_actions_tenant", "tenant", "seq"),
    )

    # Every API call that changes something, whatever its outcome.
    audit = sa.Table(
        "audit",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", UtcDateTime, nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("token", sa.String(32), nullable=False),  # prefix, or "session:<login>"
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("tenant", sa.String(64), index=True),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),  # accepted | refused | failed
        sa.Column("action", sa.String(36)),
    )

    # The personal cabinet's sessions (migration 0010): the key is the SHA-256 of the cookie's
    # secret, so the table alone opens no session. `csrf` is the token every form of the
    # session carries.
    sessions = sa.Table(
        "sessions",
        metadata,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("login", sa.String(128), nullable=False, index=True),
        sa.Column("tenant", sa.String(64)),
        sa.Column("role", sa.String(16), nullable=False),  # customer | operator
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),  # the client's address at login
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("seen_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),  # the absolute end
        sa.Column("closed_at", UtcDateTime),
    )

    # A password reset (migration 0010): the SHA-256 of the link's secret, the request that
    # keeps its clock (terms 5.1), and a short life; used once.
    password_resets = sa.Table(
        "password_resets",
        metadata,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("login", sa.String(128), nullable=False, index=True),
        sa.Column("request", sa.String(64), nullable=False),  # requests.reference
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Column("used_at", UtcDateTime),
    )

    # A VM console's single-use ticket (migration 0010): the SHA-256 of its secret; valid for
    # seconds, used once, by the tenant it was issued to.
    console_tickets = sa.Table(
        "console_tickets",
        metadata,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("vm", sa.String(64), nullable=False),
        sa.Column("zone", sa.String(64), nullable=False),
        sa.Column("login", sa.String(128), nullable=False),
        sa.Column("created_at", UtcDateTime, nullable=False),
        sa.Column("expires_at", UtcDateTime, nullable=False),
        sa.Column("used_at", UtcDateTime),
    )

    # Which host of a zone holds a tenant's objects there: chosen once, kept.
    placements = sa.Table(
        "placements",
        metadata,
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("zone", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("placed_at", UtcDateTime, nullable=False),
    )
