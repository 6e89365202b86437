# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The first ledger schema: plans, tenants, trials, quota requests, blocks, usage, reservations,
events.

Revision ID: 0001
"""

from __future__ import annotations

try:
    import sqlalchemy as sa
    from alembic import op
except ImportError:  # only the ledger runs migrations, and it reports the missing library
    sa = op = None

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def utc_datetime() -> object:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("quotas", sa.Text, nullable=False),
        sa.Column("trial_quotas", sa.Text, nullable=False),
        sa.Column("trial_hours", sa.Integer, nullable=False),
        sa.Column("updated_at", utc_datetime(), nullable=False),
    )
    op.create_table(
        "tenants",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("customer", sa.String(128), nullable=False, index=True),
        sa.Column("plan", sa.String(64), sa.ForeignKey("plans.name"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("quotas", sa.Text, nullable=False),
        sa.Column("trial_started_at", utc_datetime()),
        sa.Column("trial_ends_at", utc_datetime()),
        sa.Column("trial_ended_at", utc_datetime()),
        sa.Column("created_at", utc_datetime(), nullable=False),
        sa.Column("updated_at", utc_datetime(), nullable=False),
    )
    op.create_table(
        "trial_grants",
        sa.Column("customer", sa.String(128), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("granted_at", utc_datetime(), nullable=False),
    )
    op.create_table(
        "quota_requests",
        sa.Column("key", sa.String(160), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False, index=True),
        sa.Column("quotas", sa.Text, nullable=False),
        sa.Column("previous", sa.Text, nullable=False),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("requested_at", utc_datetime(), nullable=False),
        sa.Column("applied_at", utc_datetime()),
        sa.Column("result", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
    )
    op.create_table(
        "blocks",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("vm", sa.String(64), primary_key=True),
        sa.Column("since", utc_datetime(), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )
    op.create_table(
        "host_usage",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("usage", sa.Text, nullable=False),
        sa.Column("running_vms", sa.Integer, nullable=False),
        sa.Column("observed_at", utc_datetime(), nullable=False),
    )
    op.create_table(
        "reservations",
        sa.Column("key", sa.String(160), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False, index=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("usage", sa.Text, nullable=False),
        sa.Column("created_at", utc_datetime(), nullable=False),
        sa.Column("expires_at", utc_datetime(), nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False, index=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("at", utc_datetime(), nullable=False),
        sa.Column("requested_at", utc_datetime()),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "events",
        "reservations",
        "host_usage",
        "blocks",
        "quota_requests",
        "trial_grants",
        "tenants",
        "plans",
    ):
        op.drop_table(table)
