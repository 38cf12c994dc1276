"""The store's image handles: kept, renewed by every use, forgotten (``DELETE``) or expired (the sweep)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from maskserve.frontend.adapters.store.engine import Database
from maskserve.frontend.adapters.tables import images
from maskserve.frontend.domain.images import ImageHandle


def _handle(row: sa.Row[Any]) -> ImageHandle:
    return ImageHandle(
        row.id,
        row.key_id,
        row.digest,
        row.location,
        row.filename,
        row.field,
        int(row.width),
        int(row.height),
        int(row.input_bytes),
        float(row.created_at),
        float(row.stored_at),
        float(row.expires_at),
    )


def _save(conn: sa.Connection, handle: ImageHandle) -> None:
    """One upsert: two first uploads of one image by one key at once both keep it (an update, then an insert,
    let the second insert fail on the id)."""
    values = {k: v for k, v in handle.__dict__.items() if k != "id"}
    insert = (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(images)
    conn.execute(insert.values(id=handle.id, **values).on_conflict_do_update(index_elements=[images.c.id], set_=values))


def _renew(conn: sa.Connection, image_id: str, at: float, expires_at: float) -> ImageHandle | None:
    row = conn.execute(
        images.update()
        .where(images.c.id == image_id, images.c.expires_at > at)
        .values(expires_at=expires_at)
        .returning(*images.c)
    ).first()
    return None if row is None else _handle(row)


class ImageRows(Database):
    async def save_image(self, handle: ImageHandle) -> None:
        """Keep ``handle`` (its upload already stored), replacing what was kept under its id."""
        await self._tx(_save, handle)

    async def renew_image(self, image_id: str, at: float, expires_at: float) -> ImageHandle | None:
        """The handle with its expiry moved to ``expires_at``, if it is still live at ``at``; else None."""
        return await self._tx(_renew, image_id, at, expires_at)

    async def get_image(self, image_id: str) -> ImageHandle | None:
        row = await self._one(sa.select(images).where(images.c.id == image_id))
        return None if row is None else _handle(row)

    async def forget_image(self, image_id: str, expired_before: float | None = None) -> ImageHandle | None:
        """Remove the handle (only if it expired before ``expired_before``, when given); → what it was.

        Its upload is the caller's to remove.
        """
        which = images.c.id == image_id
        if expired_before is not None:
            which = which & (images.c.expires_at <= expired_before)
        row = await self._tx(lambda conn: conn.execute(images.delete().where(which).returning(*images.c)).first())
        return None if row is None else _handle(row)

    async def expired_images(self, before: float) -> list[ImageHandle]:
        return [_handle(r) for r in await self._read(sa.select(images).where(images.c.expires_at <= before))]
