# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Metering, SLA and billing: run records, usage intervals, probe status, incidents and
exclusions, price lists, closed invoices and credit notes, logged customer requests.

Revision ID: 0005
"""

from __future__ import annotations

try:
    import sqlalchemy as sa
    from alembic import op
except ImportError:  # only the ledger runs migrations, and it reports the missing library
    sa = op = None

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLES = (
    "requests", "credit_notes", "invoices", "price_lists", "exclusions", "incidents",
    "probe_status", "usage_intervals", "runs",
)  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("source", sa.String(16), nullable=False),  # ansible | pulumi | reconcile | probe
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("result", sa.String(16), nullable=False),  # running | ok | failed | interrupted
        sa.Column("detail", sa.Text, nullable=False),  # JSON
    )
    op.create_table(
        "usage_intervals",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(160), nullable=False),
        sa.Column("vm", sa.String(64), nullable=False),  # the VM it belongs to, "" none
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("vcpus", sa.Integer, nullable=False),
        sa.Column("ram_mib", sa.BigInteger, nullable=False),
        sa.Column("disk_mib", sa.BigInteger, nullable=False),
        sa.Column("public_ips", sa.Integer, nullable=False),
        sa.Column("zone_links", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("source", sa.String(16), nullable=False),  # run | reconcile
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
    )
    op.create_table(
        "probe_status",
        sa.Column("host", sa.String(255), primary_key=True),
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("vm", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("up", sa.Boolean, nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "incidents",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(200), nullable=False, unique=True),
        sa.Column("tenant", sa.String(64), nullable=False, index=True),
        sa.Column("host", sa.String(255), nullable=False),  # "" every host of the tenant
        sa.Column("vm", sa.String(64), nullable=False),  # "" every VM of the tenant
        sa.Column("kind", sa.String(16), nullable=False),  # downtime | data_loss
        sa.Column("source", sa.String(16), nullable=False),  # probe | report | operator
        sa.Column("cause", sa.String(16), nullable=False),  # provider | maintenance | ...
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True)),
        sa.Column("confirmed_at", sa.DateTime(timezone=True)),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "exclusions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(200), nullable=False, unique=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("vm", sa.String(64), nullable=False),
        sa.Column("cause", sa.String(16), nullable=False),  # maintenance | force_majeure | customer
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("announced_at", sa.DateTime(timezone=True)),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "price_lists",
        sa.Column("plan", sa.String(64), primary_key=True),
        sa.Column("effective_from", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("prices", sa.Text, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "invoices",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("month", sa.String(7), primary_key=True),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("total", sa.String(32), nullable=False),  # Decimal as text
        sa.Column("document", sa.Text, nullable=False),  # JSON
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
    )
    op.create_table(
        "credit_notes",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False, index=True),
        sa.Column("month", sa.String(7), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("amount", sa.String(32), nullable=False),  # Decimal as text, positive
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("document", sa.Text, nullable=False),  # JSON: the corrected invoice
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
    )
    op.create_table(
        "requests",
        sa.Column("key", sa.String(200), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False, index=True),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("reference", sa.String(128), nullable=False),
        sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("fulfilled_at", sa.DateTime(timezone=True)),
        sa.Column("fulfilled_by", sa.String(64)),  # the run that fulfilled it
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
    )
    op.create_index("ix_usage_tenant_start", "usage_intervals", ["tenant", "started_at"])
    op.create_index(
        "ix_usage_resource", "usage_intervals", ["host", "tenant", "kind", "name", "started_at"]
    )


def downgrade() -> None:
    for table in TABLES:
        op.drop_table(table)
