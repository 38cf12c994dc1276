"""Many prompts on one image: the image travels once, then only its handle (``image_id``, API.md v1.2)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, Unpack

from maskserve.client._calls import EverythingOptions, ExtractOptions, SegmentOptions
from maskserve.client._core import ImageInput
from maskserve.client._types import Job, NotFound


class Client(Protocol):
    """What ``OnImage`` needs of ``maskserve.client.Client``."""

    def segment(self, image: ImageInput | None = None, **options: Unpack[SegmentOptions]) -> Job: ...
    def everything(self, image: ImageInput | None = None, **options: Unpack[EverythingOptions]) -> Job: ...
    def extract(
        self, image: ImageInput | None = None, mask: ImageInput | None = None, **options: Unpack[ExtractOptions]
    ) -> Job: ...
    def forget_image(self, image_id: str) -> None: ...


class AsyncClient(Protocol):
    """What ``AsyncOnImage`` needs of ``maskserve.client.AsyncClient``."""

    async def segment(self, image: ImageInput | None = None, **options: Unpack[SegmentOptions]) -> Job: ...
    async def everything(self, image: ImageInput | None = None, **options: Unpack[EverythingOptions]) -> Job: ...
    async def extract(
        self, image: ImageInput | None = None, mask: ImageInput | None = None, **options: Unpack[ExtractOptions]
    ) -> Job: ...
    async def forget_image(self, image_id: str) -> None: ...


class OnImage:
    """``client.on_image(path)``: the first call uploads the image, later ones send its handle.

    A handle that expired (or was forgotten) is answered 404: the image is then uploaded again, once.
    """

    def __init__(self, client: Client, image: ImageInput) -> None:
        self._client = client
        self._image = image
        self.image_id: str | None = None

    def _call(self, send: Callable[..., Job], options: dict[str, Any]) -> Job:
        if self.image_id is not None:
            try:
                return send(None, image_id=self.image_id, **options)
            except NotFound:
                self.image_id = None
        job = send(self._image, **options)
        self.image_id = job.result.image_id
        return job

    def segment(self, **options: Unpack[SegmentOptions]) -> Job:
        return self._call(self._client.segment, dict(options))

    def everything(self, **options: Unpack[EverythingOptions]) -> Job:
        return self._call(self._client.everything, dict(options))

    def extract(self, mask: ImageInput | None = None, **options: Unpack[ExtractOptions]) -> Job:
        return self._call(lambda image, **more: self._client.extract(image, mask, **more), dict(options))

    def forget(self) -> None:
        """Forget the handle on the server at once (its kept upload too)."""
        if self.image_id is not None:
            self._client.forget_image(self.image_id)
            self.image_id = None


class AsyncOnImage:
    """``AsyncClient.on_image(path)``, as ``OnImage``."""

    def __init__(self, client: AsyncClient, image: ImageInput) -> None:
        self._client = client
        self._image = image
        self.image_id: str | None = None

    async def _call(self, send: Callable[..., Awaitable[Job]], options: dict[str, Any]) -> Job:
        if self.image_id is not None:
            try:
                return await send(None, image_id=self.image_id, **options)
            except NotFound:
                self.image_id = None
        job = await send(self._image, **options)
        self.image_id = job.result.image_id
        return job

    async def segment(self, **options: Unpack[SegmentOptions]) -> Job:
        return await self._call(self._client.segment, dict(options))

    async def everything(self, **options: Unpack[EverythingOptions]) -> Job:
        return await self._call(self._client.everything, dict(options))

    async def extract(self, mask: ImageInput | None = None, **options: Unpack[ExtractOptions]) -> Job:
        return await self._call(lambda image, **more: self._client.extract(image, mask, **more), dict(options))

    async def forget(self) -> None:
        if self.image_id is not None:
            await self._client.forget_image(self.image_id)
            self.image_id = None
