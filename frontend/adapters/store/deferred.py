"""The store's accepted asynchronous requests (kept with their typed parameters, leased to the frontend running
them) and the webhook deliveries they owe."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from maskserve.frontend.adapters.store.engine import Database
from maskserve.frontend.adapters.tables import deferred, deliveries
from maskserve.frontend.domain.accounts import now
from maskserve.frontend.domain.jobs import Deferred, Delivery, JobKind, KeptItem
from maskserve.frontend.domain.requests import RequestParams


def _deferred(r: sa.Row[Any]) -> Deferred:
    return Deferred(
        r.id,
        r.key_id,
        JobKind(r.kind),
        bool(r.batch),
        [KeptItem.model_validate(item) for item in json.loads(r.items)],
        RequestParams.model_validate_json(r.params),
        r.webhook_url,
        float(r.created_at),
        r.base_url,
    )


class DeferredRows(Database):
    async def save_deferred(self, request: Deferred, owner: str = "", lease_until: float | None = None) -> None:
        await self._execute(
            deferred.insert().values(
                id=request.id,
                key_id=request.key_id,
                kind=request.kind.value,
                batch=request.batch,
                items=json.dumps([item.public() for item in request.items]),
                params=request.params.model_dump_json(),
                webhook_url=request.webhook_url,
                created_at=request.created_at,
                base_url=request.base_url,
                owner=owner or None,
                lease_until=lease_until,
            )
        )

    async def list_deferred(self) -> list[Deferred]:
        rows = await self._read(sa.select(deferred).order_by(deferred.c.created_at))
        return [_deferred(r) for r in rows]

    async def claim_deferred(
        self, owner: str, lease_until: float, every: bool = False, limit: int = 50
    ) -> list[Deferred]:
        """Take over accepted requests whose lease ran out (``every``: all of them, at a start alone), leased to
        ``owner`` until ``lease_until``; on PostgreSQL rows another frontend is claiming are skipped, not waited for."""

        def claim(conn: sa.Connection) -> list[Deferred]:
            query = sa.select(deferred).order_by(deferred.c.created_at).limit(limit)
            if not every:
                query = query.where(sa.or_(deferred.c.lease_until.is_(None), deferred.c.lease_until < now()))
            rows = conn.execute(query.with_for_update(skip_locked=True)).all()
            if rows:
                conn.execute(
                    deferred.update()
                    .where(deferred.c.id.in_([r.id for r in rows]))
                    .values(owner=owner, lease_until=lease_until)
                )
            return [_deferred(r) for r in rows]

        return await self._tx(claim)

    async def renew_deferred(self, owner: str, request_ids: list[str], lease_until: float) -> set[str]:
        """Extend ``owner``'s leases; → the requests it still holds (another frontend took over the rest)."""
        if not request_ids:
            return set()

        def renew(conn: sa.Connection) -> set[str]:
            held = conn.execute(
                deferred.update()
                .where(deferred.c.id.in_(request_ids), deferred.c.owner == owner)
                .values(lease_until=lease_until)
                .returning(deferred.c.id)
            )
            return {row.id for row in held}

        return await self._tx(renew)

    async def forget_deferred(self, request_id: str, webhook: tuple[str, str, str] | None = None) -> bool:
        """Forget an ended request and, in the same transaction, owe its webhook (key id, URL, body).

        Only the caller that removed the row owes the webhook: two frontends closing one request send one.
        """

        def forget(conn: sa.Connection) -> bool:
            if not conn.execute(deferred.delete().where(deferred.c.id == request_id)).rowcount:
                return False
            if webhook is not None:
                at = now()
                key_id, url, body = webhook
                conn.execute(
                    deliveries.insert().values(
                        key_id=key_id, url=url, body=body, attempts=0, state="pending", next_at=at, created_at=at
                    )
                )
            return True

        return await self._tx(forget)

    async def claim_deliveries(self, lease_s: float, limit: int = 16) -> list[Delivery]:
        """Due deliveries, each claimed for ``lease_s`` by a conditional update (one frontend sends each)."""
        at = now()
        rows = await self._read(
            sa.select(deliveries)
            .where(deliveries.c.state == "pending", deliveries.c.next_at <= at)
            .order_by(deliveries.c.next_at)
            .limit(limit)
        )

        def claim(conn: sa.Connection) -> list[Delivery]:
            mine = []
            for r in rows:
                taken = conn.execute(
                    deliveries.update()
                    .where(deliveries.c.id == r.id, deliveries.c.next_at == r.next_at, deliveries.c.state == "pending")
                    .values(next_at=at + lease_s)
                )
                if taken.rowcount:
                    mine.append(Delivery(int(r.id), r.key_id, r.url, r.body, int(r.attempts)))
            return mine

        return await self._tx(claim) if rows else []

    async def delivery_done(self, delivery_id: int, attempts: int, error: str | None, retry_at: float | None) -> None:
        """After an attempt: delivered (no error), pending again at ``retry_at``, or failed for good."""
        state = "delivered" if error is None else ("pending" if retry_at is not None else "failed")
        await self._execute(
            deliveries.update()
            .where(deliveries.c.id == delivery_id)
            .values(attempts=attempts, state=state, last_error=error, next_at=retry_at if retry_at else now())
        )
