"""Output files as objects in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, R2, GCS's S3 API).

Built on aiobotocore: one client per frontend, path- or virtual-host-style
addressing, SigV4. The object key is ``<prefix><file id>.<extension>`` where
the file id is the job id we generated (or one derived from it), never
anything a client sent. Outputs are written with one PUT, or as a multipart
upload with parts sent in parallel once they pass the multipart threshold.

Expiry is twofold: the bucket carries a lifecycle rule on the prefix (whole
days, the granularity S3 offers) where the store supports one, and the
frontend's sweep deletes each output when its link expires, as with the
other backends.

Downloads: the frontend still checks our signed link; then, in ``redirect``
mode, it answers 302 to a presigned GET that lives no longer than the link,
so the bytes flow from the object store; in ``proxy`` mode it streams the
object itself (for stores clients cannot reach).

Every failure to reach the store is ``StorageUnavailable`` (503, never charged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from maskserve.frontend.adapters.files import EXTENSIONS
from maskserve.frontend.config import MB, Settings
from maskserve.frontend.errors import StorageUnavailable
from maskserve.frontend.signing import valid_file_id

log = logging.getLogger("maskserve.frontend")

IMAGE_TYPES = {"png": "image/png", "webp": "image/webp", "jpeg": "image/jpeg"}  # the rest are octet streams
LIFECYCLE_RULE_ID = "maskserve-output-expiry"
PARALLEL_PARTS = 4
_MISSING = {"NoSuchKey", "404", "NotFound"}
_AWAY = (BotoCoreError, ClientError, OSError, TimeoutError)  # ClientError: an answer, but not the one needed
_UNSUPPORTED = {"NotImplemented", "MethodNotAllowed", "InvalidRequest", "XNotImplemented"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _declined(exc: ClientError) -> bool:
    """The store does not offer this bucket-level call, or our credentials may not make it."""
    return _code(exc) in _UNSUPPORTED or _code(exc) == "AccessDenied"


class S3Files:
    """Output files in one bucket, under an optional key prefix."""

    PREFIX = "s3:"

    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.redirect = settings.s3_downloads == "redirect"
        self.presign_ttl_s = settings.s3_presign_ttl_s
        self.part_bytes = settings.s3_multipart_mib * MB
        self.expiry_days = max(1, math.ceil((settings.url_ttl_s + settings.sweep_interval_s) / 86400))
        self._settings = settings
        self._stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._signer: Any = None  # presigns for the endpoint clients reach, when that differs
        self._ready = False

    def _away(self, exc: BaseException) -> StorageUnavailable:
        return StorageUnavailable(f"S3 bucket {self.bucket!r}: {exc}")

    def _config(self) -> AioConfig:
        return AioConfig(
            signature_version="s3v4",
            s3={"addressing_style": self._settings.s3_addressing_style},
            connect_timeout=self._settings.s3_timeout_s,
            read_timeout=self._settings.s3_timeout_s,
            retries={"max_attempts": 2, "mode": "standard"},
        )

    def _create(self, endpoint: str) -> Any:
        settings = self._settings
        return get_session().create_client(
            "s3",
            endpoint_url=endpoint or None,
            region_name=settings.s3_region,
            # empty: botocore's standard chain (AWS_ACCESS_KEY_ID/..., profiles, instance roles)
            aws_access_key_id=settings.s3_access_key_id or None,
            aws_secret_access_key=settings.s3_secret_access_key or None,
            config=self._config(),
        )

    async def open(self) -> None:
        """Create the clients, then check the bucket (a store that is away is retried on use)."""
        self._client = await self._stack.enter_async_context(self._create(self._settings.s3_endpoint_url))
        public = self._settings.s3_public_endpoint_url
        self._signer = self._client
        if public and public != self._settings.s3_endpoint_url:
            self._signer = await self._stack.enter_async_context(self._create(public))
        try:
            await self.ping()
        except StorageUnavailable as exc:
            log.warning("output storage not reachable yet (%s); requests get 503 until it is", exc)

    async def close(self) -> None:
        await self._stack.aclose()

    async def ping(self) -> None:
        """The bucket answers; the first time, create it if missing and set its expiry rule."""
        try:
            if not self._ready:
                await self._ensure_bucket()
                await self._ensure_lifecycle()
                await self._ensure_cors()
                self._ready = True
            else:
                await self._client.head_bucket(Bucket=self.bucket)
        except _AWAY as exc:
            raise self._away(exc) from exc

    async def _ensure_bucket(self) -> None:
        try:
            await self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _code(exc) not in _MISSING and _code(exc) != "NoSuchBucket":
                raise
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self._settings.s3_region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self._settings.s3_region}
        with contextlib.suppress(ClientError):  # created meanwhile by another frontend
            await self._client.create_bucket(**kwargs)
        log.info("created S3 bucket %s", self.bucket)

    async def _ensure_lifecycle(self) -> None:
        """Add (or update) our expiry rule, keeping any other rule the bucket has."""
        rule = {
            "ID": LIFECYCLE_RULE_ID,
            "Status": "Enabled",
            "Filter": {"Prefix": self.prefix},
            "Expiration": {"Days": self.expiry_days},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }
        try:
            try:
                current = await self._client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
                rules = [r for r in current.get("Rules", []) if r.get("ID") != LIFECYCLE_RULE_ID]
            except ClientError as exc:
                if _code(exc) != "NoSuchLifecycleConfiguration":
                    raise
                rules = []
            await self._client.put_bucket_lifecycle_configuration(
                Bucket=self.bucket, LifecycleConfiguration={"Rules": [*rules, rule]}
            )
        except ClientError as exc:
            if not _declined(exc):
                raise
            log.warning(
                "bucket %s takes no lifecycle rule (%s): the sweep alone deletes expired outputs",
                self.bucket,
                _code(exc),
            )

    async def _ensure_cors(self) -> None:
        """Let pages read what their presigned links grant (the playground follows a link's 302 with fetch).

        Only a bucket without a CORS configuration gets ours (GET and HEAD from any origin: the
        presigned signature, not the origin, is what grants access); an existing one is left alone.
        """
        try:
            await self._client.get_bucket_cors(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _code(exc) != "NoSuchCORSConfiguration":
                if _declined(exc):
                    return  # e.g. MinIO, which answers every origin by default
                raise
        rule = {"AllowedMethods": ["GET", "HEAD"], "AllowedOrigins": ["*"], "MaxAgeSeconds": 3600}
        try:
            await self._client.put_bucket_cors(Bucket=self.bucket, CORSConfiguration={"CORSRules": [rule]})
        except ClientError as exc:
            if not _declined(exc):
                raise

    def key(self, location: str) -> str | None:
        if not location.startswith(self.PREFIX):
            return None
        return location.removeprefix(self.PREFIX)

    async def put(self, job_id: str, extension: str, data: bytes) -> str:
        if not valid_file_id(job_id) or extension not in EXTENSIONS:
            raise ValueError("bad output file name")
        key = f"{self.prefix}{job_id}.{extension}"
        content_type = IMAGE_TYPES.get(extension, "application/octet-stream")
        try:
            if len(data) > self.part_bytes:
                await self._multipart(key, data, content_type)
            else:
                await self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except _AWAY as exc:
            raise self._away(exc) from exc
        return self.PREFIX + key

    async def _multipart(self, key: str, data: bytes, content_type: str) -> None:
        upload = await self._client.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType=content_type)
        upload_id = upload["UploadId"]
        view = memoryview(data)
        slots = asyncio.Semaphore(PARALLEL_PARTS)

        async def part(number: int, start: int) -> dict[str, Any]:
            async with slots:
                sent = await self._client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=bytes(view[start : start + self.part_bytes]),
                )
            return {"ETag": sent["ETag"], "PartNumber": number}

        try:
            parts = await asyncio.gather(
                *(part(i + 1, start) for i, start in enumerate(range(0, len(data), self.part_bytes)))
            )
            await self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": list(parts)}
            )
        except BaseException:
            with contextlib.suppress(Exception):  # the lifecycle rule aborts what this cannot
                await self._client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            raise

    async def get(self, location: str) -> bytes | None:
        key = self.key(location)
        if key is None:
            return None
        try:
            response = await self._client.get_object(Bucket=self.bucket, Key=key)
            async with response["Body"] as body:
                data: bytes = await body.read()
            return data
        except _AWAY as exc:
            if isinstance(exc, ClientError) and _code(exc) in _MISSING:
                return None
            raise self._away(exc) from exc

    async def link(self, location: str, content_type: str, valid_until: float) -> str | None:
        """A presigned GET for the object (redirect mode), valid until our link expires at the latest."""
        key = self.key(location)
        if key is None or not self.redirect:
            return None
        ttl = max(1, min(self.presign_ttl_s, math.ceil(valid_until - time.time())))
        url: str = await self._signer.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": key, "ResponseContentType": content_type},
            ExpiresIn=ttl,
        )
        return url

    async def remove(self, location: str) -> None:
        key = self.key(location)
        if key is None:
            return
        try:
            await self._client.delete_object(Bucket=self.bucket, Key=key)
        except _AWAY as exc:
            raise self._away(exc) from exc
