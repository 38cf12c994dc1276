"""Accepted asynchronous requests are claimed through a lease: the frontend running one renews it, and any
frontend takes over a request whose lease ran out (its runner died).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deferred") as table:
        table.add_column(sa.Column("owner", sa.Text))
        table.add_column(sa.Column("lease_until", sa.Double()))
    op.create_index("ix_deferred_lease_until", "deferred", ["lease_until"])


def downgrade() -> None:
    op.drop_index("ix_deferred_lease_until", "deferred")
    with op.batch_alter_table("deferred") as table:
        table.drop_column("lease_until")
        table.drop_column("owner")
