"""Image handles: an upload kept for its key while it is used (``image_id``, API.md v1.2).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("key_id", sa.Text, sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("digest", sa.Text, nullable=False),
        sa.Column("location", sa.Text, nullable=False),
        sa.Column("filename", sa.Text),
        sa.Column("field", sa.Text, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("input_bytes", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("stored_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
    )
    op.create_index("ix_images_key_id", "images", ["key_id"])
    op.create_index("ix_images_expires_at", "images", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_images_expires_at", "images")
    op.drop_index("ix_images_key_id", "images")
    op.drop_table("images")
