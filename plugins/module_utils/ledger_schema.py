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
