# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The personal cabinet: browser sessions, a user's second factor (its secret, the last step
accepted, logins waiting for a code), password resets and the single-use tickets that open a
VM's console.

Revision ID: 0010
"""

from __future__ import annotations

try:
    import sqlalchemy as sa
    from alembic import op
except ImportError:  # only the ledger runs migrations, and it reports the missing library
    sa = op = None

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def moment(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "sessions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("login", sa.String(128), nullable=False, index=True),
        sa.Column("tenant", sa.String(64)),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        moment("created_at", False),
        moment("seen_at", False),
        moment("expires_at", False),
        moment("closed_at"),
    )
    with op.batch_alter_table("users") as batch:
        batch.add_column(sa.Column("totp_secret", sa.String(64)))
        batch.add_column(sa.Column("totp_step", sa.BigInteger))
    op.create_table(
        "pending_logins",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("login", sa.String(128), nullable=False),
        sa.Column("tries", sa.Integer, nullable=False),
        moment("created_at", False),
        moment("expires_at", False),
    )
    op.create_table(
        "password_resets",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("login", sa.String(128), nullable=False, index=True),
        sa.Column("request", sa.String(64), nullable=False),
        moment("created_at", False),
        moment("expires_at", False),
        moment("used_at"),
    )
    op.create_table(
        "console_tickets",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("vm", sa.String(64), nullable=False),
        sa.Column("zone", sa.String(64), nullable=False),
        sa.Column("login", sa.String(128), nullable=False),
        moment("created_at", False),
        moment("expires_at", False),
        moment("used_at"),
    )


def downgrade() -> None:
    op.drop_table("console_tickets")
    op.drop_table("password_resets")
    op.drop_table("pending_logins")
    with op.batch_alter_table("users") as batch:
        batch.drop_column("totp_step")
        batch.drop_column("totp_secret")
    op.drop_table("sessions")
