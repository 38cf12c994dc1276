"""The database schema, once, for SQLite and PostgreSQL (SQLAlchemy Core).

Alembic's migrations (``migrations/versions``) create it; a test checks that a
migrated database matches these definitions on both backends.
"""

from __future__ import annotations

import sqlalchemy as sa

# SQLite only makes an INTEGER PRIMARY KEY an auto-incrementing row id; PostgreSQL gets BIGINT.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Money = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Seconds: sa.Double[float] = sa.Double()

metadata = sa.MetaData()

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("prefix", sa.Text, nullable=False, index=True),
    sa.Column("key_hash", sa.Text, nullable=False, unique=True),
    sa.Column("credits", Money, sa.CheckConstraint("credits >= 0", name="credits_not_negative"), nullable=False),
    sa.Column("created_at", Seconds, nullable=False),
    sa.Column("revoked_at", Seconds),
    sa.Column("pinned_version", sa.Text),
    sa.Column("webhook_secret", sa.Text),  # signs this key's webhook deliveries (HMAC-SHA256)
)

ledger = sa.Table(
    "ledger",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("key_id", sa.Text, sa.ForeignKey("api_keys.id"), nullable=False, index=True),
    sa.Column("delta", Money, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("job_id", sa.Text),
    sa.Column("created_at", Seconds, nullable=False),
)

JOB_STATUSES = ("pending", "processing", "completed", "failed")

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("key_id", sa.Text, sa.ForeignKey("api_keys.id"), nullable=False, index=True),
    sa.Column("batch_id", sa.Text),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column(
        "status",
        sa.Text,
        sa.CheckConstraint(f"status IN {JOB_STATUSES!r}", name="job_status"),
        nullable=False,
        index=True,
    ),
    sa.Column("input_filename", sa.Text),
    sa.Column("created_at", Seconds, nullable=False, index=True),
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
    sa.Column("expires_at", Seconds, index=True),
    sa.Column("model_version", sa.Text),
    sa.Column("details", sa.Text),  # JSON: a completed job's result extras and its further files
    sa.Column("input_digest", sa.Text),  # SHA-256 of the upload (refinement checks the image is the same)
)

rate_hits = sa.Table(
    "rate_hits",
    metadata,
    sa.Column("key_id", sa.Text, nullable=False),
    sa.Column("bucket", sa.Text, nullable=False),
    sa.Column("at", Seconds, nullable=False),
    sa.Index("rate_hits_window", "key_id", "bucket", "at"),
)

service_state = sa.Table(
    "service_state",
    metadata,
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", Seconds, nullable=False),
)

output_files = sa.Table(
    "output_files",
    metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("created_at", Seconds, nullable=False),
)

frontends = sa.Table(
    "frontends",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("generation", sa.BigInteger, nullable=False),
    sa.Column("in_flight", sa.Text, nullable=False),  # JSON {version: requests}
    sa.Column("seen_at", Seconds, nullable=False),
)

shadow_results = sa.Table(
    "shadow_results",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("candidate", sa.Text, nullable=False),
    sa.Column("baseline", sa.Text, nullable=False),
    sa.Column("iou", Seconds),
    sa.Column("latency_ms", Seconds, nullable=False),
    sa.Column("error", sa.Text),
    sa.Column("created_at", Seconds, nullable=False, index=True),
)

idempotency = sa.Table(
    "idempotency",
    metadata,
    sa.Column("key_id", sa.Text, sa.ForeignKey("api_keys.id"), primary_key=True),
    sa.Column("idem_key", sa.Text, primary_key=True),  # the client's Idempotency-Key header
    sa.Column("fingerprint", sa.Text, nullable=False),  # SHA-256 of path, query and uploads
    sa.Column(
        "state", sa.Text, sa.CheckConstraint("state IN ('running', 'done')", name="idempotency_state"), nullable=False
    ),
    sa.Column("status", sa.Integer),  # the stored response (state 'done')
    sa.Column("body", sa.Text),
    sa.Column("headers", sa.Text),  # JSON
    sa.Column("created_at", Seconds, nullable=False, index=True),
)

deferred = sa.Table(
    "deferred",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),  # the batch id, or the single job's id
    sa.Column("key_id", sa.Text, sa.ForeignKey("api_keys.id"), nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("batch", sa.Boolean, nullable=False),
    sa.Column("items", sa.Text, nullable=False),  # JSON: per image to run, its job id and where its inputs are kept
    sa.Column("params", sa.Text, nullable=False),  # JSON: prompts and options
    sa.Column("webhook_url", sa.Text),
    sa.Column("created_at", Seconds, nullable=False, index=True),
    sa.Column("base_url", sa.Text),  # the origin the request came in on: links in its webhook point there
    sa.Column("owner", sa.Text),  # the frontend running it, while its lease holds
    sa.Column("lease_until", Seconds, index=True),  # past this, any frontend may take it over
)

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("key_id", sa.Text, sa.ForeignKey("api_keys.id"), nullable=False, index=True),
    sa.Column("job_ids", sa.Text, nullable=False),  # JSON list, in upload order
    sa.Column("created_at", Seconds, nullable=False),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
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
    sa.Column("next_at", Seconds, nullable=False, index=True),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", Seconds, nullable=False),
)

images = sa.Table(
    "images",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),  # img_<32 hex>: a hash of the key and the content
    sa.Column("key_id", sa.Text, sa.ForeignKey("api_keys.id"), nullable=False, index=True),
    sa.Column("digest", sa.Text, nullable=False),
    sa.Column("location", sa.Text, nullable=False),  # the upload, in the output storage
    sa.Column("filename", sa.Text),
    sa.Column("field", sa.Text, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("input_bytes", sa.Integer, nullable=False),
    sa.Column("created_at", Seconds, nullable=False),
    sa.Column("stored_at", Seconds, nullable=False),
    sa.Column("expires_at", Seconds, nullable=False, index=True),  # sliding: renewed by every use
)

videos = sa.Table(
    "videos",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),  # vid_<32 hex>
    sa.Column("key_id", sa.Text, sa.ForeignKey("api_keys.id"), nullable=False, index=True),
    sa.Column("frames", sa.Integer, nullable=False),
    sa.Column("width", sa.Integer, nullable=False),
    sa.Column("height", sa.Integer, nullable=False),
    sa.Column("fps", Seconds, nullable=False),
    sa.Column("created_at", Seconds, nullable=False),
    sa.Column("expires_at", Seconds, nullable=False, index=True),  # sliding: renewed by every use
    sa.Column("frame_locations", sa.Text, nullable=False),  # JSON list, in the output storage
    sa.Column("prompts", sa.Text, nullable=False),  # JSON list of PromptRecord, in order
    sa.Column("last_job_id", sa.Text),
)

propagations = sa.Table(
    "propagations",
    metadata,
    sa.Column("job_id", sa.Text, primary_key=True),
    sa.Column("video_id", sa.Text, nullable=False, index=True),
    sa.Column("key_id", sa.Text, sa.ForeignKey("api_keys.id"), nullable=False),
    sa.Column("request", sa.Text, nullable=False),  # JSON: order, forward_from, mask_format, webhook and base url
    sa.Column("frames_done", sa.Integer, nullable=False),
    sa.Column("active", sa.Boolean, nullable=False),  # pending or running (one per video at a time)
    sa.Column("created_at", Seconds, nullable=False),
    sa.Column("owner", sa.Text, nullable=False),  # the frontend running it
    sa.Column("lease_until", Seconds, nullable=False),  # past it, any frontend may take it over
)
