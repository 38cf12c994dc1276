"""Baseline: keys, ledger, jobs, rate windows, service state, output files.

Databases made before the store moved to Alembic (a ``schema_version`` table and
some of these tables) are adopted: tables that exist are kept as they are, the
missing ones are created, and the old version table is dropped.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Money = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Seconds: sa.Double[float] = sa.Double()


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "api_keys" not in existing:
        op.create_table(
            "api_keys",
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("name", sa.Text, nullable=False),
            sa.Column("prefix", sa.Text, nullable=False),
            sa.Column("key_hash", sa.Text, nullable=False, unique=True),
            sa.Column(
                "credits", Money, sa.CheckConstraint("credits >= 0", name="credits_not_negative"), nullable=False
            ),
            sa.Column("created_at", Seconds, nullable=False),
            sa.Column("revoked_at", Seconds),
        )
        op.create_index("ix_api_keys_prefix", "api_keys", ["prefix"])
    if "ledger" not in existing:
        op.create_table(
            "ledger",
            sa.Column("id", BigId, primary_key=True, autoincrement=True),
            sa.Column("key_id", sa.Text, sa.ForeignKey("api_keys.id"), nullable=False),
            sa.Column("delta", Money, nullable=False),
            sa.Column("reason", sa.Text, nullable=False),
            sa.Column("job_id", sa.Text),
            sa.Column("created_at", Seconds, nullable=False),
        )
        op.create_index("ix_ledger_key_id", "ledger", ["key_id"])
    if "jobs" not in existing:
        op.create_table(
            "jobs",
            sa.Column("id", sa.Text, primary_key=True),
            sa.Column("key_id", sa.Text, sa.ForeignKey("api_keys.id"), nullable=False),
            sa.Column("batch_id", sa.Text),
            sa.Column("kind", sa.Text, nullable=False),
            sa.Column(
                "status",
                sa.Text,
                sa.CheckConstraint("status IN ('pending', 'processing', 'completed', 'failed')", name="job_status"),
                nullable=False,
            ),
            sa.Column("input_filename", sa.Text),
            sa.Column("created_at", Seconds, nullable=False),
            sa.Column("started_at", Seconds),
            sa.Column("finished_at", Seconds),
            sa.Column("processing_ms", Seconds),
            sa.Column("reserved", Money, nullable=False, server_default="0"),
            sa.Column("credits_used", Money, nullable=False, server_default="0"),
            sa.Column("error", sa.Text),
            sa.Column("original_width", sa.Integer),
            sa.Column("original_height", sa.Integer),
            sa.Column("output_width", sa.Integer),
            sa.Column("output_height", sa.Integer),
            sa.Column("input_bytes", Money),
            sa.Column("output_bytes", Money),
            sa.Column("output_path", sa.Text),
            sa.Column("content_type", sa.Text),
            sa.Column("expires_at", Seconds),
            sa.Column("model_version", sa.Text),
        )
        op.create_index("ix_jobs_key_id", "jobs", ["key_id"])
        op.create_index("ix_jobs_status", "jobs", ["status"])
        op.create_index("ix_jobs_expires_at", "jobs", ["expires_at"])
    if "rate_hits" not in existing:
        op.create_table(
            "rate_hits",
            sa.Column("key_id", sa.Text, nullable=False),
            sa.Column("bucket", sa.Text, nullable=False),
            sa.Column("at", Seconds, nullable=False),
        )
        op.create_index("rate_hits_window", "rate_hits", ["key_id", "bucket", "at"])
    if "service_state" not in existing:
        op.create_table(
            "service_state",
            sa.Column("name", sa.Text, primary_key=True),
            sa.Column("value", sa.Text, nullable=False),
            sa.Column("updated_at", Seconds, nullable=False),
        )
    if "output_files" not in existing:
        op.create_table(
            "output_files",
            sa.Column("job_id", sa.Text, primary_key=True),
            sa.Column("data", sa.LargeBinary, nullable=False),
            sa.Column("created_at", Seconds, nullable=False),
        )
    if "schema_version" in existing:
        op.drop_table("schema_version")


def downgrade() -> None:
    for table in ("output_files", "service_state", "rate_hits", "jobs", "ledger", "api_keys"):
        op.drop_table(table)
