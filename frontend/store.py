"""The store interface: API keys, the credit ledger and jobs.

One interface so that PostgreSQL can sit behind it later; ``SqliteStore`` is the
embedded default. Money rules every implementation keeps:

* a reservation takes credits only if the balance covers them (atomic
  compare-and-decrement), so the balance never goes negative;
* every change of a balance writes a ledger row in the same transaction, so
  the ledger's sum always equals the balance;
* a job is completed (its reservation kept as the charge) or failed (its
  reservation given back) exactly once: both are conditional on the job still
  being ``processing``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from typing import Protocol

KEY_PREFIX = "sk-live-"
VISIBLE_CHARS = 8  # characters after KEY_PREFIX kept in clear as the key's prefix


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    credits: int
    created_at: float
    revoked_at: float | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass
class Job:
    id: str
    key_id: str
    kind: str  # segmentation | extraction
    status: str  # pending | processing | completed | failed
    input_filename: str | None
    created_at: float
    batch_id: str | None = None
    reserved: int = 0
    credits_used: int = 0
    error: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    processing_ms: float | None = None
    original_width: int | None = None
    original_height: int | None = None
    output_width: int | None = None
    output_height: int | None = None
    input_bytes: int | None = None
    output_bytes: int | None = None
    output_path: str | None = None
    content_type: str | None = None
    expires_at: float | None = None
    model_version: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class NewJob:
    id: str
    kind: str
    cost: int
    input_filename: str | None
    input_bytes: int | None = None
    original_width: int | None = None
    original_height: int | None = None


@dataclass(frozen=True)
class Completion:
    output_path: str
    content_type: str
    output_width: int
    output_height: int
    output_bytes: int
    processing_ms: float
    expires_at: float
    model_version: str | None


def new_key_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_prefix(secret: str) -> str:
    return secret[: len(KEY_PREFIX) + VISIBLE_CHARS]


def hash_key(secret: str) -> str:
    """Keys are 256-bit random, so one SHA-256 is enough to store them safely."""
    return hashlib.sha256(secret.encode()).hexdigest()


def key_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(secret), stored_hash)


def now() -> float:
    return time.time()


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    async def create_key(self, name: str, credits: int) -> tuple[ApiKey, str]: ...
    async def list_keys(self) -> list[ApiKey]: ...
    async def revoke_key(self, key_id: str) -> bool: ...
    async def add_credits(self, key_id: str, amount: int, reason: str = "top-up") -> int: ...
    async def authenticate(self, secret: str) -> ApiKey | None: ...
    async def get_key(self, key_id: str) -> ApiKey | None: ...
    async def ledger_sum(self, key_id: str) -> int: ...

    async def reserve_jobs(self, key_id: str, batch_id: str | None, jobs: list[NewJob]) -> list[bool]: ...
    async def record_failed(self, key_id: str, batch_id: str | None, job: NewJob, error: str) -> None: ...
    async def complete_job(self, job_id: str, done: Completion) -> bool: ...
    async def fail_job(self, job_id: str, error: str) -> bool: ...
    async def get_job(self, job_id: str) -> Job | None: ...
    async def expired_outputs(self, before: float) -> list[Job]: ...
    async def forget_output(self, job_id: str) -> None: ...
    async def fail_stale_processing(self, error: str, older_than_s: float = 0.0) -> int: ...

    async def get_state(self, name: str) -> str | None: ...
    async def set_state(self, name: str, value: str) -> None: ...
    async def set_state_if_absent(self, name: str, value: str) -> None: ...


ACTIVE_MODEL_VERSION = "active_model_version"
"""Service state: the model version frontends send traffic to (set by ``maskserve models promote``)."""


def open_store(settings) -> Store:
    """SQLite in the data directory by default; PostgreSQL when a database URL is set."""
    if settings.database_url:
        if not settings.database_url.startswith(("postgresql://", "postgres://")):
            raise ValueError("MASKSERVE_DATABASE_URL must be a postgresql:// URL")
        from frontend.postgres_store import PostgresStore

        return PostgresStore(settings.database_url)
    from frontend.sqlite_store import SqliteStore

    return SqliteStore(settings.database_path)
