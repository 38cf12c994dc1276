"""The store's videos and propagations: kept with their frames' locations and prompts, renewed by every use.

A propagation is a reserved job (its money follows the job's rules) plus a row with its request and
progress, leased to the frontend running it: past the lease, any frontend takes it over.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any

import sqlalchemy as sa

from maskserve.frontend.adapters.store.engine import Database
from maskserve.frontend.adapters.store.jobs import _reserve
from maskserve.frontend.adapters.tables import deliveries, propagations, videos
from maskserve.frontend.domain.jobs import NewJob
from maskserve.frontend.domain.videos import PromptRecord, Propagation, Video


def _video(row: sa.Row[Any]) -> Video:
    return Video(
        row.id,
        row.key_id,
        int(row.frames),
        int(row.width),
        int(row.height),
        float(row.fps),
        float(row.created_at),
        float(row.expires_at),
        json.loads(row.frame_locations),
        [PromptRecord(**p) for p in json.loads(row.prompts)],
        row.last_job_id,
    )


def _propagation(row: sa.Row[Any]) -> Propagation:
    asked = json.loads(row.request)
    return Propagation(
        row.job_id,
        row.video_id,
        row.key_id,
        asked["order"],
        asked["forward_from"],
        asked["mask_format"],
        asked.get("webhook_url"),
        asked.get("base_url"),
        float(row.created_at),
        int(row.frames_done),
        bool(row.active),
    )


class _Refused(Exception):
    """Rolls a transaction back with the reason it was refused."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _create(conn: sa.Connection, video: Video, max_open: int, at: float) -> bool:
    open_now = conn.execute(
        sa.select(sa.func.count()).select_from(videos).where(videos.c.key_id == video.key_id, videos.c.expires_at > at)
    ).scalar_one()
    if open_now >= max_open:
        return False
    values = asdict(video)
    values["frame_locations"] = json.dumps(video.frame_locations)
    values["prompts"] = json.dumps([asdict(p) for p in video.prompts])
    conn.execute(videos.insert().values(**values))
    return True


def _locked(conn: sa.Connection, video_id: str, at: float) -> sa.Row[Any] | None:
    query = sa.select(videos).where(videos.c.id == video_id, videos.c.expires_at > at)
    return conn.execute(query.with_for_update()).first()


def _add_prompt(conn: sa.Connection, video_id: str, record: PromptRecord, at: float, expires_at: float) -> Video | None:
    row = _locked(conn, video_id, at)
    if row is None:
        return None
    prompts = [*json.loads(row.prompts), asdict(record)]
    updated = conn.execute(
        videos.update()
        .where(videos.c.id == video_id)
        .values(prompts=json.dumps(prompts), last_job_id=record.job_id, expires_at=expires_at)
        .returning(*videos.c)
    ).first()
    return None if updated is None else _video(updated)


def _start(
    conn: sa.Connection, run: Propagation, job: NewJob, owner: str, lease_until: float, at: float, expires_at: float
) -> str:
    if _locked(conn, run.video_id, at) is None:
        raise _Refused("unknown")
    busy = conn.execute(
        sa.select(propagations.c.job_id).where(propagations.c.video_id == run.video_id, propagations.c.active)
    ).first()
    if busy is not None:
        raise _Refused("busy")
    if not _reserve(conn, run.key_id, None, [job])[0]:
        raise _Refused("credits")  # rolled back: nothing reserved, no job recorded
    asked = {
        "order": run.order,
        "forward_from": run.forward_from,
        "mask_format": run.mask_format,
        "webhook_url": run.webhook_url,
        "base_url": run.base_url,
    }
    conn.execute(
        propagations.insert().values(
            job_id=run.job_id,
            video_id=run.video_id,
            key_id=run.key_id,
            request=json.dumps(asked),
            frames_done=0,
            active=True,
            created_at=run.created_at,
            owner=owner,
            lease_until=lease_until,
        )
    )
    conn.execute(
        videos.update().where(videos.c.id == run.video_id).values(last_job_id=run.job_id, expires_at=expires_at)
    )
    return "started"


def _claim(conn: sa.Connection, owner: str, lease_until: float, at: float) -> list[Propagation]:
    query = sa.select(propagations).where(propagations.c.active, propagations.c.lease_until < at)
    rows = conn.execute(query.with_for_update(skip_locked=True).limit(8)).all()
    for row in rows:
        conn.execute(
            propagations.update()
            .where(propagations.c.job_id == row.job_id)
            .values(owner=owner, lease_until=lease_until)
        )
    return [_propagation(r) for r in rows]


class VideoRows(Database):
    async def create_video(self, video: Video, max_open: int, at: float) -> bool:
        """Keep ``video`` unless its key already holds ``max_open`` open videos (→ False)."""
        return await self._tx(_create, video, max_open, at)

    async def get_video(self, video_id: str) -> Video | None:
        row = await self._one(sa.select(videos).where(videos.c.id == video_id))
        return None if row is None else _video(row)

    async def renew_video(self, video_id: str, at: float, expires_at: float) -> Video | None:
        """The video with its expiry moved to ``expires_at``, if it is still open at ``at``; else None."""
        row = await self._tx(
            lambda conn: conn.execute(
                videos.update()
                .where(videos.c.id == video_id, videos.c.expires_at > at)
                .values(expires_at=expires_at)
                .returning(*videos.c)
            ).first()
        )
        return None if row is None else _video(row)

    async def add_video_prompt(self, video_id: str, record: PromptRecord, at: float, expires_at: float) -> Video | None:
        """Append ``record`` to the video's prompts (None if the video is gone); → the video after."""
        return await self._tx(_add_prompt, video_id, record, at, expires_at)

    async def forget_video(self, video_id: str) -> Video | None:
        """Remove the video; its propagation, if any, stops being active (its job is the caller's to fail)."""

        def forget(conn: sa.Connection) -> sa.Row[Any] | None:
            conn.execute(propagations.update().where(propagations.c.video_id == video_id).values(active=False))
            return conn.execute(videos.delete().where(videos.c.id == video_id).returning(*videos.c)).first()

        row = await self._tx(forget)
        return None if row is None else _video(row)

    async def expired_videos(self, before: float) -> list[Video]:
        return [_video(r) for r in await self._read(sa.select(videos).where(videos.c.expires_at <= before))]

    async def start_propagation(
        self, run: Propagation, job: NewJob, owner: str, lease_until: float, at: float, expires_at: float
    ) -> str:
        """Reserve ``job`` and record ``run`` in one transaction: ``started``, or why not (``unknown``: the video is
        gone, ``busy``: another propagation is active on it, ``credits``: the balance cannot pay)."""
        try:
            return await self._tx(_start, run, job, owner, lease_until, at, expires_at)
        except _Refused as refused:
            return refused.reason

    async def get_propagation(self, job_id: str) -> Propagation | None:
        row = await self._one(sa.select(propagations).where(propagations.c.job_id == job_id))
        return None if row is None else _propagation(row)

    async def propagation_progress(self, job_id: str, frames_done: int, owner: str, lease_until: float) -> bool:
        """Record progress and renew the lease; False when the run is no longer this owner's or no longer active."""
        row = await self._tx(
            lambda conn: conn.execute(
                propagations.update()
                .where(propagations.c.job_id == job_id, propagations.c.owner == owner, propagations.c.active)
                .values(frames_done=frames_done, lease_until=lease_until)
                .returning(propagations.c.job_id)
            ).first()
        )
        return row is not None

    async def end_propagation(self, job_id: str, webhook: tuple[str, str, str] | None = None) -> bool:
        """The run is over; the one call that ends it owes its webhook (key id, URL, body) in the same transaction."""

        def end(conn: sa.Connection) -> bool:
            ended = conn.execute(
                propagations.update().where(propagations.c.job_id == job_id, propagations.c.active).values(active=False)
            ).rowcount
            if ended and webhook is not None:
                at = time.time()
                key_id, url, body = webhook
                conn.execute(
                    deliveries.insert().values(
                        key_id=key_id, url=url, body=body, attempts=0, state="pending", next_at=at, created_at=at
                    )
                )
            return bool(ended)

        return await self._tx(end)

    async def claim_propagations(self, owner: str, lease_until: float, at: float) -> list[Propagation]:
        """Active propagations whose lease ran out by ``at`` (their frontend stopped), now leased to ``owner``."""
        return await self._tx(_claim, owner, lease_until, at)

    async def active_propagations(self) -> list[str]:
        """The jobs of the propagations pending or running (they are not stale: a lease hands them on)."""
        return [r.job_id for r in await self._read(sa.select(propagations.c.job_id).where(propagations.c.active))]
