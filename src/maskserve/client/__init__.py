"""``maskserve.client``: a small, typed Python SDK for the maskserve API, sync (``Client``) and async
(``AsyncClient``), on httpx.

    from maskserve.client import Client

    with Client("http://127.0.0.1:8080", api_key) as client:
        job = client.segment("photo.jpg", points=[[500, 375]])
        client.download(job, "mask.png")

Every call covers the whole contract (API.md, v1.1 included). Batches of more
than 50 images are sent as several batches and merged. Each error status
raises its own exception (``detail`` kept). 429 is retried after
``Retry-After`` and 503 with exponential backoff, always with the same
``Idempotency-Key``, so a retried call is never charged twice.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Unpack

import httpx

from maskserve.client import _calls as calls
from maskserve.client._calls import (
    BatchExtractOptions,
    BatchSegmentOptions,
    EverythingOptions,
    ExtractOptions,
    SegmentOptions,
)
from maskserve.client._core import RETRY_STATUSES, ImageInput, Spec, chunks, error_for, job_from, merge, retry_delay
from maskserve.client._handles import AsyncOnImage, OnImage
from maskserve.client._types import (
    Account,
    BadRequest,
    Batch,
    Call,
    Conflict,
    Forbidden,
    InsufficientCredits,
    Job,
    MaskserveError,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Result,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from maskserve.client._videos import AsyncVideoCalls, VideoCalls

__all__ = [
    "Account", "AsyncClient", "AsyncOnImage", "BadRequest", "Batch", "Call", "Client", "Conflict", "Forbidden",
    "InsufficientCredits", "Job", "MaskserveError", "NotFound", "OnImage", "PayloadTooLarge", "RateLimited", "Result",
    "Unauthorized", "Unavailable", "ValidationError",
]  # fmt: skip

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT_S = 300.0


def _http_options(url: str | None, api_key: str | None, timeout_s: float) -> dict[str, Any]:
    """The httpx client's options, both clients alike: the URL and key (else from the environment), the timeout."""
    url = (url or os.environ.get("MASKSERVE_URL") or DEFAULT_URL).rstrip("/")
    key = api_key or os.environ.get("MASKSERVE_API_KEY")
    if not key:
        raise ValueError("an API key is needed: pass api_key or set MASKSERVE_API_KEY")
    return {"base_url": url, "headers": {"Authorization": f"Bearer {key}"}, "timeout": timeout_s}


def _request(spec: Spec) -> dict[str, Any]:
    headers = {"Idempotency-Key": spec.idempotency_key} if spec.idempotency_key else {}
    return {
        "method": spec.method,
        "url": spec.path,
        "params": spec.params,
        "files": spec.files or None,
        "headers": headers,
    }


def _answer(response: httpx.Response) -> tuple[Any, httpx.Headers]:
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text}
    if response.status_code >= 400:
        raise error_for(response.status_code, body, response.headers)
    return body, response.headers


def _paired(
    images: Sequence[ImageInput], masks: Sequence[ImageInput] | None
) -> tuple[list[Sequence[ImageInput]], list[Sequence[ImageInput] | None]]:
    """Images and their masks (paired by order) in parts of at most 50."""
    if masks and len(masks) != len(images):
        raise ValueError(f"{len(images)} images but {len(masks)} masks: one mask per image, or none")
    parts = chunks(images)
    return parts, (list(chunks(masks)) if masks else [None] * len(parts))


def _url(target: Job | Result | str) -> str:
    if isinstance(target, Job):
        target = target.result
    url = target.output_url if isinstance(target, Result) else target
    if not url:
        raise ValueError("nothing to download: the job has no output (yet)")
    return url


def _save(data: bytes, path: str | Path | None) -> bytes:
    if path is not None:
        Path(path).write_bytes(data)
    return data


class Client(VideoCalls):
    """The synchronous client."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._http = httpx.Client(**_http_options(url, api_key, timeout_s), transport=transport)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, spec: Spec) -> tuple[Any, httpx.Headers]:
        for attempt in range(self.max_retries + 1):
            try:
                return _answer(self._http.request(**_request(spec)))
            except MaskserveError as exc:
                if exc.status not in RETRY_STATUSES or attempt == self.max_retries:
                    raise
                time.sleep(retry_delay(exc.status, attempt, exc.retry_after, self.backoff_s))
            except httpx.TransportError:
                if attempt == self.max_retries:
                    raise
                time.sleep(retry_delay(None, attempt, None, self.backoff_s))
        raise AssertionError("unreachable")

    def _job(self, spec: Spec) -> Job:
        return job_from(*self._send(spec))

    def _batch(self, spec: Spec) -> Batch:
        body, headers = self._send(spec)
        return Batch.from_json(body, Call.from_headers(headers))

    def segment(self, image: ImageInput | None = None, **options: Unpack[SegmentOptions]) -> Job:
        """One image's mask; ``image=None`` with ``image_id=`` sends an earlier upload's handle instead."""
        return self._job(calls.segment(image, options))

    def extract(
        self, image: ImageInput | None = None, mask: ImageInput | None = None, **options: Unpack[ExtractOptions]
    ) -> Job:
        return self._job(calls.extract(image, mask, options))

    def everything(self, image: ImageInput | None = None, **options: Unpack[EverythingOptions]) -> Job:
        return self._job(calls.everything(image, options))

    def on_image(self, image: ImageInput) -> OnImage:
        """Many calls on one image: it is uploaded once, then sent by its handle."""
        return OnImage(self, image)

    def forget_image(self, image_id: str) -> None:
        self._send(calls.forget_image(image_id))

    def batch_segment(self, images: Sequence[ImageInput], **options: Unpack[BatchSegmentOptions]) -> Batch:
        return merge([self._batch(calls.batch_segment(part, options, i)) for i, part in enumerate(chunks(images))])

    def batch_extract(
        self,
        images: Sequence[ImageInput],
        masks: Sequence[ImageInput] | None = None,
        **options: Unpack[BatchExtractOptions],
    ) -> Batch:
        parts, mask_parts = _paired(images, masks)
        return merge(
            [
                self._batch(calls.batch_extract(p, m, options, i))
                for i, (p, m) in enumerate(zip(parts, mask_parts, strict=True))
            ]
        )

    def job(self, job_id: str) -> Job:
        return self._job(calls.get(f"/v1/jobs/{job_id}"))

    def batch(self, batch_id: str) -> Batch:
        return self._batch(calls.get(f"/v1/batches/{batch_id}"))

    def account(self) -> Account:
        body, _ = self._send(calls.get("/v1/account"))
        return Account(body["name"], body["key_prefix"], int(body["credits"]))

    def download(self, target: Job | Result | str, path: str | Path | None = None) -> bytes:
        """The output image (signed link: no key sent); written to ``path`` when given."""
        response = httpx.get(_url(target), timeout=self._http.timeout)
        if response.status_code >= 400:
            _answer(response)  # raises the contract's error (403 tampered or expired, 404 gone)
        return _save(response.content, path)

    def wait(self, item: Job | Batch, timeout_s: float = 600.0, interval_s: float = 0.5) -> Job | Batch:
        """Poll an async job or batch (each part of a split one) until it ended."""
        deadline = time.monotonic() + timeout_s
        while not item.done:
            if time.monotonic() > deadline:
                raise TimeoutError(f"still {item.status} after {timeout_s} s")
            time.sleep(interval_s)
            item = self.job(item.job_id) if isinstance(item, Job) else merge([self.batch(b) for b in item.batch_ids])
        return item


class AsyncClient(AsyncVideoCalls):
    """The asynchronous client: the same calls, awaited."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._http = httpx.AsyncClient(**_http_options(url, api_key, timeout_s), transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def _send(self, spec: Spec) -> tuple[Any, httpx.Headers]:
        for attempt in range(self.max_retries + 1):
            try:
                return _answer(await self._http.request(**_request(spec)))
            except MaskserveError as exc:
                if exc.status not in RETRY_STATUSES or attempt == self.max_retries:
                    raise
                await asyncio.sleep(retry_delay(exc.status, attempt, exc.retry_after, self.backoff_s))
            except httpx.TransportError:
                if attempt == self.max_retries:
                    raise
                await asyncio.sleep(retry_delay(None, attempt, None, self.backoff_s))
        raise AssertionError("unreachable")

    async def _job(self, spec: Spec) -> Job:
        return job_from(*await self._send(spec))

    async def _batch(self, spec: Spec) -> Batch:
        body, headers = await self._send(spec)
        return Batch.from_json(body, Call.from_headers(headers))

    async def segment(self, image: ImageInput | None = None, **options: Unpack[SegmentOptions]) -> Job:
        return await self._job(calls.segment(image, options))

    async def extract(
        self, image: ImageInput | None = None, mask: ImageInput | None = None, **options: Unpack[ExtractOptions]
    ) -> Job:
        return await self._job(calls.extract(image, mask, options))

    async def everything(self, image: ImageInput | None = None, **options: Unpack[EverythingOptions]) -> Job:
        return await self._job(calls.everything(image, options))

    def on_image(self, image: ImageInput) -> AsyncOnImage:
        return AsyncOnImage(self, image)

    async def forget_image(self, image_id: str) -> None:
        await self._send(calls.forget_image(image_id))

    async def batch_segment(self, images: Sequence[ImageInput], **options: Unpack[BatchSegmentOptions]) -> Batch:
        parts = chunks(images)
        return merge(
            list(await asyncio.gather(*(self._batch(calls.batch_segment(p, options, i)) for i, p in enumerate(parts))))
        )

    async def batch_extract(
        self,
        images: Sequence[ImageInput],
        masks: Sequence[ImageInput] | None = None,
        **options: Unpack[BatchExtractOptions],
    ) -> Batch:
        parts, mask_parts = _paired(images, masks)
        specs = [calls.batch_extract(p, m, options, i) for i, (p, m) in enumerate(zip(parts, mask_parts, strict=True))]
        return merge(list(await asyncio.gather(*(self._batch(s) for s in specs))))

    async def job(self, job_id: str) -> Job:
        return await self._job(calls.get(f"/v1/jobs/{job_id}"))

    async def batch(self, batch_id: str) -> Batch:
        return await self._batch(calls.get(f"/v1/batches/{batch_id}"))

    async def account(self) -> Account:
        body, _ = await self._send(calls.get("/v1/account"))
        return Account(body["name"], body["key_prefix"], int(body["credits"]))

    async def download(self, target: Job | Result | str, path: str | Path | None = None) -> bytes:
        async with httpx.AsyncClient(timeout=self._http.timeout) as plain:  # a signed link: no key sent
            response = await plain.get(_url(target))
        if response.status_code >= 400:
            _answer(response)  # raises the contract's error (403 tampered or expired, 404 gone)
        return _save(response.content, path)

    async def wait(self, item: Job | Batch, timeout_s: float = 600.0, interval_s: float = 0.5) -> Job | Batch:
        deadline = time.monotonic() + timeout_s
        while not item.done:
            if time.monotonic() > deadline:
                raise TimeoutError(f"still {item.status} after {timeout_s} s")
            await asyncio.sleep(interval_s)
            if isinstance(item, Job):
                item = await self.job(item.job_id)
            else:
                item = merge(list(await asyncio.gather(*(self.batch(b) for b in item.batch_ids))))
        return item
