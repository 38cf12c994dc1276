"""Model lifecycle: keys pinned to a version, frontends' reports, shadow comparisons.

The promoted version moves from its own service-state row into the routing
state (``model_routing``), which also holds a canary.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import json
import time

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Seconds: sa.Double[float] = sa.Double()
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("pinned_version", sa.Text))
    op.create_table(
        "frontends",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("in_flight", sa.Text, nullable=False),
        sa.Column("seen_at", Seconds, nullable=False),
    )
    op.create_table(
        "shadow_results",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("candidate", sa.Text, nullable=False),
        sa.Column("baseline", sa.Text, nullable=False),
        sa.Column("iou", Seconds),
        sa.Column("latency_ms", Seconds, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("created_at", Seconds, nullable=False),
    )
    op.create_index("ix_shadow_results_created_at", "shadow_results", ["created_at"])
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    state = sa.table("service_state", sa.column("name"), sa.column("value"), sa.column("updated_at"))
    conn = op.get_bind()
    active = conn.execute(sa.select(state.c.value).where(state.c.name == "active_model_version")).scalar()
    if active is not None:
        routing = {"generation": 1, "active": active, "canary": None, "retiring": []}
        conn.execute(state.insert().values(name="model_routing", value=json.dumps(routing), updated_at=time.time()))
        conn.execute(state.delete().where(state.c.name == "active_model_version"))


def downgrade() -> None:
    op.drop_index("ix_jobs_created_at", "jobs")
    op.drop_table("shadow_results")
    op.drop_table("frontends")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("pinned_version")
