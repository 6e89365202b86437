# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""KVM hosts: one row per host of the fleet, with its zone, public pools and capacity.

Revision ID: 0006
"""

from __future__ import annotations

try:
    import sqlalchemy as sa
    from alembic import op
except ImportError:  # only the ledger runs migrations, and it reports the missing library
    sa = op = None

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hosts",
        sa.Column("name", sa.String(255), primary_key=True),
        sa.Column("zone", sa.String(64), nullable=False, index=True),
        sa.Column("uri", sa.String(255), nullable=False),
        sa.Column("uplink", sa.String(16)),
        sa.Column("public_pools", sa.Text, nullable=False),  # JSON [{name, cidr, gateway, exclude}]
        sa.Column("cpus", sa.Integer, nullable=False),
        sa.Column("memory_mib", sa.BigInteger, nullable=False),
        sa.Column("libvirt_version", sa.String(32), nullable=False),
        sa.Column("qemu_version", sa.String(32), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("hosts")
