# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Public IP allocations: one row per address, so no address is ever given twice.

Revision ID: 0002
"""

from __future__ import annotations

try:
    import sqlalchemy as sa
    from alembic import op
except ImportError:  # only the ledger runs migrations, and it reports the missing library
    sa = op = None

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "public_ips",
        sa.Column("address", sa.String(45), primary_key=True),
        sa.Column("zone", sa.String(64), nullable=False),
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(64), nullable=False, index=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("vm", sa.String(64), nullable=False),
        sa.Column("private_ip", sa.String(45), nullable=False),
        sa.Column("allocated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("tenant", "zone", "name", name="uq_public_ips_tenant_zone_name"),
    )


def downgrade() -> None:
    op.drop_table("public_ips")
