# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Zone links: one row per link, its VNI unique, so no VNI ever carries two links.

Revision ID: 0003
"""

from __future__ import annotations

try:
    import sqlalchemy as sa
    from alembic import op
except ImportError:  # only the ledger runs migrations, and it reports the missing library
    sa = op = None

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "zone_links",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("vni", sa.Integer, nullable=False, unique=True),
        sa.Column("network", sa.String(64), nullable=False),
        sa.Column("cidr", sa.String(45), nullable=False),
        sa.Column("ends", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("zone_links")
