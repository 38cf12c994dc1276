"""The store's accounts: keys and their credits (every change with its ledger row), webhook secrets,
Idempotency-Key claims and the shared rate window."""

from __future__ import annotations

import json
import secrets
import uuid
from typing import Any

import sqlalchemy as sa

from maskserve.frontend.adapters.store.engine import Database
from maskserve.frontend.adapters.tables import api_keys, idempotency, ledger, rate_hits
from maskserve.frontend.domain.accounts import (
    WEBHOOK_SECRET_PREFIX,
    ApiKey,
    Claim,
    LedgerReason,
    RateWindow,
    StoredResponse,
    hash_key,
    key_matches,
    key_prefix,
    new_key_secret,
    now,
)


def _key(row: sa.Row[Any]) -> ApiKey:
    return ApiKey(row.id, row.name, row.prefix, int(row.credits), row.created_at, row.revoked_at, row.pinned_version)


def add_ledger_row(conn: sa.Connection, key_id: str, delta: int, reason: str, job_id: str | None, at: float) -> None:
    conn.execute(ledger.insert().values(key_id=key_id, delta=delta, reason=str(reason), job_id=job_id, created_at=at))


def _create_key(conn: sa.Connection, key: ApiKey, key_hash: str) -> None:
    conn.execute(
        api_keys.insert().values(
            id=key.id,
            name=key.name,
            prefix=key.prefix,
            key_hash=key_hash,
            credits=key.credits,
            created_at=key.created_at,
        )
    )
    if key.credits:
        add_ledger_row(conn, key.id, key.credits, LedgerReason.INITIAL, None, key.created_at)


def _add_credits(conn: sa.Connection, key_id: str, amount: int, reason: str) -> int | None:
    balance = conn.execute(
        api_keys.update()
        .where(api_keys.c.id == key_id, api_keys.c.credits + amount >= 0)
        .values(credits=api_keys.c.credits + amount)
        .returning(api_keys.c.credits)
    ).scalar()
    if balance is None:
        return None
    add_ledger_row(conn, key_id, amount, reason, None, now())
    return int(balance)


def _rate_hit(
    conn: sa.Connection, key_id: str, bucket: str, limit: int, window_s: float, at: float, postgres: bool
) -> RateWindow:
    mine = (rate_hits.c.key_id == key_id) & (rate_hits.c.bucket == bucket)
    if postgres:  # SQLite's BEGIN IMMEDIATE already serialises writers
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(f"{key_id}:{bucket}"))))
    conn.execute(rate_hits.delete().where(mine, rate_hits.c.at <= at - window_s))
    count = int(conn.execute(sa.select(sa.func.count()).select_from(rate_hits).where(mine)).scalar_one())
    allowed = count < limit
    if allowed:
        conn.execute(rate_hits.insert().values(key_id=key_id, bucket=bucket, at=at))
        count += 1
    oldest = conn.execute(sa.select(sa.func.min(rate_hits.c.at)).where(mine)).scalar()
    return RateWindow(allowed, count, oldest)


def _claim(
    conn: sa.Connection, insert: Any, key_id: str, idem_key: str, fingerprint: str, expired_before: float
) -> tuple[Claim, StoredResponse | None]:
    """Insert the key as running, unless it is there (and not expired): then what it holds decides."""
    mine = (idempotency.c.key_id == key_id) & (idempotency.c.idem_key == idem_key)
    conn.execute(idempotency.delete().where(mine, idempotency.c.created_at < expired_before))
    if conn.execute(insert.on_conflict_do_nothing()).rowcount:
        return Claim.STARTED, None
    row = conn.execute(sa.select(idempotency).where(mine)).one()
    if row.fingerprint != fingerprint:
        return Claim.MISMATCH, None
    if row.state == "running":
        return Claim.RUNNING, None
    return Claim.REPLAY, StoredResponse(int(row.status), str(row.body), json.loads(row.headers or "{}"))


class AccountRows(Database):
    async def create_key(self, name: str, credits: int) -> tuple[ApiKey, str]:
        if credits < 0:
            raise ValueError("credits must be >= 0")
        secret = new_key_secret()
        key = ApiKey(uuid.uuid4().hex, name, key_prefix(secret), credits, now())
        await self._tx(_create_key, key, hash_key(secret))
        return key, secret

    async def list_keys(self) -> list[ApiKey]:
        return [_key(r) for r in await self._read(sa.select(api_keys).order_by(api_keys.c.created_at))]

    async def get_key(self, key_id: str) -> ApiKey | None:
        row = await self._one(sa.select(api_keys).where(api_keys.c.id == key_id))
        return None if row is None else _key(row)

    async def revoke_key(self, key_id: str) -> bool:
        query = (
            api_keys.update().where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=now())
        )
        return bool(await self._tx(lambda conn: conn.execute(query).rowcount == 1))

    async def add_credits(self, key_id: str, amount: int, reason: str = LedgerReason.TOP_UP) -> int:
        balance = await self._tx(_add_credits, key_id, amount, reason)
        if balance is None:
            raise KeyError(key_id)
        return balance

    async def authenticate(self, secret: str) -> ApiKey | None:
        rows = await self._read(
            sa.select(api_keys).where(api_keys.c.prefix == key_prefix(secret), api_keys.c.revoked_at.is_(None))
        )
        found = None
        for row in rows:  # compare every candidate, in constant time
            if key_matches(secret, row.key_hash):
                found = _key(row)
        return found

    async def ledger_sum(self, key_id: str) -> int:
        row = await self._one(
            sa.select(sa.func.coalesce(sa.func.sum(ledger.c.delta), 0)).where(ledger.c.key_id == key_id)
        )
        return int(row[0]) if row else 0

    async def rotate_webhook_secret(self, key_id: str) -> str | None:
        """A new signing secret for the key's webhooks (the old one stops signing at once); None: no such key."""
        secret = WEBHOOK_SECRET_PREFIX + secrets.token_urlsafe(32)

        def rotate(conn: sa.Connection) -> bool:
            done = conn.execute(api_keys.update().where(api_keys.c.id == key_id).values(webhook_secret=secret))
            return bool(done.rowcount)

        return secret if await self._tx(rotate) else None

    async def webhook_secret(self, key_id: str) -> str | None:
        row = await self._one(sa.select(api_keys.c.webhook_secret).where(api_keys.c.id == key_id))
        return None if row is None else row.webhook_secret

    # --- safe retries (Idempotency-Key) ---------------------------------------

    async def claim_idempotency(
        self, key_id: str, idem_key: str, fingerprint: str, ttl_s: float
    ) -> tuple[Claim, StoredResponse | None]:
        at = now()
        insert = self._insert(idempotency).values(
            key_id=key_id, idem_key=idem_key, fingerprint=fingerprint, state="running", created_at=at
        )
        return await self._tx(_claim, insert, key_id, idem_key, fingerprint, at - ttl_s)

    async def store_idempotent(self, key_id: str, idem_key: str, response: StoredResponse) -> None:
        await self._execute(
            idempotency.update()
            .where(idempotency.c.key_id == key_id, idempotency.c.idem_key == idem_key)
            .values(state="done", status=response.status, body=response.body, headers=json.dumps(response.headers))
        )

    async def release_idempotency(self, key_id: str, idem_key: str) -> None:
        """The request ended without a stored response (refused, failed, cut off): a retry may run it."""
        await self._execute(
            idempotency.delete().where(
                idempotency.c.key_id == key_id, idempotency.c.idem_key == idem_key, idempotency.c.state == "running"
            )
        )

    async def sweep_idempotency(self, expired_before: float, running_before: float) -> int:
        """Forget expired keys, and running ones no request can still be running (its frontend stopped)."""

        def sweep(conn: sa.Connection) -> int:
            c = idempotency.c
            gone = (c.created_at < expired_before) | ((c.state == "running") & (c.created_at <= running_before))
            return int(conn.execute(idempotency.delete().where(gone)).rowcount)

        return await self._tx(sweep)

    # --- the shared rate window -----------------------------------------------

    async def rate_hit(self, key_id: str, bucket: str, limit: int, window_s: float, at: float) -> RateWindow:
        """Sliding window shared by every frontend on this database."""
        return await self._tx(_rate_hit, key_id, bucket, limit, window_s, at, self.postgres)
