"""The store's share of the model lifecycle: keys' pins, the routing, what each frontend reports, shadow
comparisons, and each version's requests."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from maskserve.frontend.adapters.store.engine import Database, rows_of
from maskserve.frontend.adapters.tables import api_keys, frontends, jobs, service_state, shadow_results
from maskserve.frontend.domain.accounts import now
from maskserve.frontend.domain.models import ACTIVE_MODEL_VERSION, MODEL_ROUTING, FrontendReport, Routing, ShadowResult

ROUTING_ROWS = sa.select(service_state.c.name, service_state.c.value).where(
    service_state.c.name.in_((MODEL_ROUTING, ACTIVE_MODEL_VERSION))
)
"""The routing's row, and the promoted-version row of databases older than it."""


def _routing_of(rows: list[sa.Row[Any]]) -> Routing:
    found = {row.name: row.value for row in rows}
    return Routing.from_json(found.get(MODEL_ROUTING), found.get(ACTIVE_MODEL_VERSION))


def _routing(conn: sa.Connection) -> Routing:
    return _routing_of(rows_of(conn, ROUTING_ROWS))


def _update_routing(conn: sa.Connection, change: Callable[[Routing], Routing], postgres: bool) -> Routing:
    """Read, change and write the routing in one transaction (admin commands may race)."""
    if postgres:  # SQLite's BEGIN IMMEDIATE already serialises writers; the row may not exist yet
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(MODEL_ROUTING))))
    new = change(_routing(conn))
    stamp = now()
    updated = conn.execute(
        service_state.update()
        .where(service_state.c.name == MODEL_ROUTING)
        .values(value=new.to_json(), updated_at=stamp)
    )
    if updated.rowcount == 0:
        conn.execute(service_state.insert().values(name=MODEL_ROUTING, value=new.to_json(), updated_at=stamp))
    return new


def _report_frontend(conn: sa.Connection, report: FrontendReport) -> None:
    values = {"generation": report.generation, "in_flight": json.dumps(report.in_flight), "seen_at": report.seen_at}
    if conn.execute(frontends.update().where(frontends.c.id == report.id).values(**values)).rowcount == 0:
        conn.execute(frontends.insert().values(id=report.id, **values))


class LifecycleRows(Database):
    async def pin_key(self, key_id: str, version: str | None) -> bool:
        query = api_keys.update().where(api_keys.c.id == key_id).values(pinned_version=version)
        return bool(await self._tx(lambda conn: conn.execute(query).rowcount == 1))

    async def get_routing(self) -> Routing:
        """Read without a transaction: every frontend asks twice a second."""
        return _routing_of(await self._read(ROUTING_ROWS))

    async def update_routing(self, change: Callable[[Routing], Routing]) -> Routing:
        return await self._tx(_update_routing, change, self.postgres)

    async def report_frontend(self, report: FrontendReport) -> None:
        await self._tx(_report_frontend, report)

    async def forget_frontend(self, frontend_id: str) -> None:
        await self._execute(frontends.delete().where(frontends.c.id == frontend_id))

    async def frontend_reports(self, seen_after: float) -> list[FrontendReport]:
        rows = await self._read(sa.select(frontends).where(frontends.c.seen_at >= seen_after))
        return [FrontendReport(r.id, int(r.generation), json.loads(r.in_flight), r.seen_at) for r in rows]

    async def record_shadow(self, result: ShadowResult) -> None:
        await self._execute(shadow_results.insert().values(**result.__dict__, created_at=now()))

    async def shadow_results(self, since: float) -> list[ShadowResult]:
        rows = await self._read(sa.select(shadow_results).where(shadow_results.c.created_at >= since))
        return [ShadowResult(r.candidate, r.baseline, r.iou, r.latency_ms, r.error) for r in rows]

    async def version_requests(self, since: float) -> list[tuple[str, str, float | None]]:
        """(model version, status, processing ms) of every job that ran a model since ``since``."""
        rows = await self._read(
            sa.select(jobs.c.model_version, jobs.c.status, jobs.c.processing_ms).where(
                jobs.c.created_at >= since, jobs.c.model_version.is_not(None), jobs.c.started_at.is_not(None)
            )
        )
        return [(r.model_version, r.status, r.processing_ms) for r in rows]
