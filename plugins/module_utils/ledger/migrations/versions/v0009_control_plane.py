# Copyright: vce.kvm developers
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The control plane's records: users, API tokens, actions, the audit trail, where each
tenant's objects live in a zone, and how the server reaches each host.

Revision ID: 0009
"""

from __future__ import annotations

try:
    import sqlalchemy as sa
    from alembic import op
except ImportError:  # only the ledger runs migrations, and it reports the missing library
    sa = op = None

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def moment(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    with op.batch_alter_table("hosts") as batch:
        batch.add_column(sa.Column("host_command", sa.Text))
        batch.add_column(sa.Column("settings", sa.Text))
    op.create_table(
        "users",
        sa.Column("login", sa.String(128), primary_key=True),
        sa.Column("tenant", sa.String(64), index=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        moment("created_at", False),
        moment("updated_at", False),
        moment("disabled_at"),
    )
    op.create_table(
        "api_tokens",
        sa.Column("prefix", sa.String(32), primary_key=True),
        sa.Column("secret_hash", sa.String(64), nullable=False),
        sa.Column("tenant", sa.String(64), index=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("scopes", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        moment("created_at", False),
        moment("expires_at"),
        moment("revoked_at"),
        moment("last_used_at"),
    )
    op.create_table(
        "actions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("seq", sa.BigInteger, nullable=False, unique=True),
        sa.Column("tenant", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("target", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("plan", sa.Text),
        sa.Column("progress", sa.Text),
        sa.Column("result", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("idempotency_key", sa.String(200)),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("token", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("claimed_by", sa.String(64)),
        moment("created_at", False),
        moment("started_at"),
        moment("heartbeat_at"),
        moment("finished_at"),
        sa.UniqueConstraint("tenant", "idempotency_key", name="uq_actions_idempotency"),
    )
    op.create_index("ix_actions_status", "actions", ["status", "seq"])
    op.create_index("ix_actions_tenant", "actions", ["tenant", "seq"])
    op.create_table(
        "audit",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        moment("at", False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("token", sa.String(32), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("tenant", sa.String(64), index=True),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.String(512), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("action", sa.String(36)),
    )
    op.create_table(
        "placements",
        sa.Column("tenant", sa.String(64), primary_key=True),
        sa.Column("zone", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        moment("placed_at", False),
    )


def downgrade() -> None:
    op.drop_table("placements")
    op.drop_table("audit")
    op.drop_index("ix_actions_tenant", table_name="actions")
    op.drop_index("ix_actions_status", table_name="actions")
    op.drop_table("actions")
    op.drop_table("api_tokens")
    op.drop_table("users")
    with op.batch_alter_table("hosts") as batch:
        batch.drop_column("settings")
        batch.drop_column("host_command")
