"""Image handles (``image_id``, API.md v1.2): upload once, then send only clicks.

Every request that uploads an image keeps it under its handle (the upload in
the output storage, its size and digest in the store); a request by handle
finds the image there, renewing the handle, and sends the model tier only the
digest. When the model tier no longer holds the image (an eviction, a Triton
restart, a lost replica), the kept upload is read and sent, so the client sees
the same answer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

from maskserve.frontend.domain.accounts import ApiKey
from maskserve.frontend.domain.images import IMAGE_ID, UNKNOWN_IMAGE, ImageHandle, handle_id
from maskserve.frontend.errors import NotFound
from maskserve.frontend.services.base import Service
from maskserve.frontend.services.ownership import owned

log = logging.getLogger("maskserve.frontend")

RESTORE_AFTER_S = 12 * 3600.0
"""A kept upload older than this is written again when used: an object store's expiry rule (whole days
after writing) never takes the upload of a handle that is still in use."""


class ImageHandles(Service):
    def _expiry(self, at: float) -> float:
        return at + self.settings.image_id_ttl_s

    def renewal(self, image_id: str) -> tuple[str, float]:
        """What a use renews the handle to: the store writes it with the job (``settle_job``) or ``renew``."""
        return image_id, self._expiry(time.time())

    async def renew(self, image_id: str | None) -> None:
        if image_id is not None:
            at = time.time()
            await self.store.renew_image(image_id, at, self._expiry(at))

    async def keep(
        self, key: ApiKey, upload: bytes, filename: str | None, field: str, digest: str, size: tuple[int, int]
    ) -> str:
        """The handle of an image this key uploaded (the same content, the same handle): found, or created with
        the upload kept. Its renewal is the caller's, with the job (``renewal``)."""
        image_id = handle_id(key.id, digest)
        at = time.time()
        found = await self.store.get_image(image_id)
        if found is not None and found.live(at) and at - found.stored_at < RESTORE_AFTER_S:
            return image_id
        location = await self.files.put(image_id, "bin", upload)
        width, height = size
        created = found.created_at if found is not None else at
        handle = ImageHandle(
            image_id,
            key.id,
            digest,
            location,
            filename,
            field,
            width,
            height,
            len(upload),
            created,
            at,
            self._expiry(at),
        )
        await self.store.save_image(handle)
        return image_id

    async def use(self, key: ApiKey, image_id: str) -> ImageHandle:
        """This key's live handle; 404 when unknown, expired or another key's. Its renewal is the caller's, with
        the job (``renewal``), so a click costs the store one read and one transaction."""
        at = time.time()
        found = await self.store.get_image(image_id) if IMAGE_ID.match(image_id) else None
        handle = owned(key, found if found is not None and found.live(at) else None, UNKNOWN_IMAGE)
        if at - handle.stored_at >= RESTORE_AFTER_S:
            await self._restore(handle, at)
        return handle

    async def _restore(self, handle: ImageHandle, at: float) -> None:
        data = await self.read_file(handle.location)
        if data is None:
            raise NotFound(UNKNOWN_IMAGE)
        location = await self.files.put(handle.id, "bin", data)
        await self.store.save_image(replace(handle, location=location, stored_at=at))

    async def upload(self, handle: ImageHandle) -> bytes:
        """The kept upload (read only when the model tier or a cut-out needs the pixels)."""
        data = await self.read_file(handle.location)
        if data is None:  # removed behind our back: the handle is of no use any more
            raise NotFound(UNKNOWN_IMAGE)
        return data

    async def forget(self, key: ApiKey, image_id: str) -> None:
        """``DELETE /v1/images/{id}``: at once, its upload too; 404 when it is not this key's live handle."""
        found = await self.store.get_image(image_id) if IMAGE_ID.match(image_id) else None
        if found is not None and not found.live(time.time()):
            found = None
        owned(key, found, UNKNOWN_IMAGE)
        gone = await self.store.forget_image(image_id)
        if gone is not None:
            await self.discard([gone.location])

    async def sweep(self, at: float) -> int:
        """Forget the handles that expired, and their uploads; → how many."""
        expired = await self.store.expired_images(at)
        for handle in expired:
            if await self.store.forget_image(handle.id, expired_before=at) is not None:  # unless used meanwhile
                await self.discard([handle.location])
        return len(expired)
