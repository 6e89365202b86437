# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write-ahead usage: the changes a run is about to make to metered objects, until resolved.

Revision ID: 0008
"""

from __future__ import annotations

try:
    import sqlalchemy as sa
    from alembic import op
except ImportError:  # only the ledger runs migrations, and it reports the missing library
    sa = op = None

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_intents",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(160), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("planned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True)),
        sa.Column("resolution", sa.String(16)),
        sa.Column("resolved_by", sa.String(64)),
    )
    op.create_index("ix_usage_intents_pending", "usage_intents", ["tenant", "host", "resolved_at"])


def downgrade() -> None:
    op.drop_index("ix_usage_intents_pending", table_name="usage_intents")
    op.drop_table("usage_intents")
