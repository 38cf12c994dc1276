"""Videos and their propagations (API.md v1.2, "Video").

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "videos",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("key_id", sa.Text, sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("frames", sa.Integer, nullable=False),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("fps", sa.Double(), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
        sa.Column("frame_locations", sa.Text, nullable=False),
        sa.Column("prompts", sa.Text, nullable=False),
        sa.Column("last_job_id", sa.Text),
    )
    op.create_index("ix_videos_key_id", "videos", ["key_id"])
    op.create_index("ix_videos_expires_at", "videos", ["expires_at"])
    op.create_table(
        "propagations",
        sa.Column("job_id", sa.Text, primary_key=True),
        sa.Column("video_id", sa.Text, nullable=False),
        sa.Column("key_id", sa.Text, sa.ForeignKey("api_keys.id"), nullable=False),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("frames_done", sa.Integer, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("owner", sa.Text, nullable=False),
        sa.Column("lease_until", sa.Double(), nullable=False),
    )
    op.create_index("ix_propagations_video_id", "propagations", ["video_id"])


def downgrade() -> None:
    op.drop_index("ix_propagations_video_id", "propagations")
    op.drop_table("propagations")
    op.drop_index("ix_videos_expires_at", "videos")
    op.drop_index("ix_videos_key_id", "videos")
    op.drop_table("videos")
