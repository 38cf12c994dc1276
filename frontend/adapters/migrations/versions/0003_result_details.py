"""Results beyond one mask: each job's details and the digest of its input.

``details`` holds a completed job's JSON extras (score, box, area, inline
masks, objects, segment-everything's masks) and where its further files live;
``input_digest`` lets a later request refine the job's mask on the same image.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("details", sa.Text))
        batch.add_column(sa.Column("input_digest", sa.Text))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("input_digest")
        batch.drop_column("details")
