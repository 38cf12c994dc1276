"""Webhooks: each API key's signing secret, the origin of an async request, and the deliveries with retries.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("webhook_secret", sa.Text))
    with op.batch_alter_table("deferred") as batch:
        batch.add_column(sa.Column("base_url", sa.Text))
    op.create_table(
        "deliveries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("key_id", sa.Text, sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column(
            "state",
            sa.Text,
            sa.CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="delivery_state"),
            nullable=False,
        ),
        sa.Column("next_at", sa.Double(), nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", sa.Double(), nullable=False),
    )
    op.create_index("ix_deliveries_next_at", "deliveries", ["next_at"])


def downgrade() -> None:
    op.drop_index("ix_deliveries_next_at", "deliveries")
    op.drop_table("deliveries")
    with op.batch_alter_table("deferred") as batch:
        batch.drop_column("base_url")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("webhook_secret")
