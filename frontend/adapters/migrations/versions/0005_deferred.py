"""Asynchronous requests (``async=true``): what each accepted request needs to run after a restart,
and every batch's jobs in upload order (``GET /v1/batches/{id}``).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deferred",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("key_id", sa.Text, sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("batch", sa.Boolean, nullable=False),
        sa.Column("items", sa.Text, nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("webhook_url", sa.Text),
        sa.Column("created_at", sa.Double(), nullable=False),
    )
    op.create_index("ix_deferred_created_at", "deferred", ["created_at"])
    op.create_table(
        "batches",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("key_id", sa.Text, sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("job_ids", sa.Text, nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
    )
    op.create_index("ix_batches_key_id", "batches", ["key_id"])


def downgrade() -> None:
    op.drop_index("ix_batches_key_id", "batches")
    op.drop_table("batches")
    op.drop_index("ix_deferred_created_at", "deferred")
    op.drop_table("deferred")
