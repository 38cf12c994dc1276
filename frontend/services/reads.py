"""Reads: a key's jobs, batches and account, signed output files, and the service's readiness."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskserve.frontend.domain.accounts import ApiKey
from maskserve.frontend.domain.jobs import Job, JobKind, JobStatus
from maskserve.frontend.domain.responses import Account
from maskserve.frontend.domain.videos import progress_of
from maskserve.frontend.errors import InferenceUnavailable, NotFound, StorageUnavailable
from maskserve.frontend.services import shapes
from maskserve.frontend.services.base import Deps, Service
from maskserve.frontend.services.ownership import owned
from maskserve.frontend.services.routing import ModelRouting
from maskserve.frontend.signing import valid_file_id, valid_job_id


@dataclass(frozen=True)
class FileAnswer:
    """A signed file: where the client fetches it (a presigned URL), or its bytes or path here."""

    content_type: str
    redirect: str | None = None
    body: bytes | None = None
    path: Path | None = None


class Reads(Service):
    def __init__(self, deps: Deps, routing: ModelRouting) -> None:
        super().__init__(deps)
        self.routing = routing

    async def job(self, key: ApiKey, job_id: str, base_url: str) -> dict[str, Any]:
        found = owned(key, await self.store.get_job(job_id) if valid_job_id(job_id) else None, "Job not found")
        body = shapes.result_object(base_url, self.deps.signer, found)
        if found.kind is JobKind.PROPAGATION:  # API.md v1.2: its progress, in every status
            run = await self.store.get_propagation(found.id)
            body["progress"] = progress_of(run, found.status is JobStatus.COMPLETED)
        return body

    async def batch(self, key: ApiKey, batch_id: str, base_url: str) -> dict[str, Any]:
        record = owned(key, await self.store.get_batch(batch_id) if valid_job_id(batch_id) else None, "Batch not found")
        jobs = await self.store.get_jobs(record.job_ids)
        return shapes.recorded_batch_body(base_url, self.deps.signer, record, jobs, time.time())

    async def account(self, key: ApiKey) -> dict[str, Any]:
        found = await self.store.get_key(key.id)
        if found is None:  # revoked and deleted between the auth check and now
            raise NotFound("Account not found")
        return Account(name=found.name, key_prefix=found.prefix, credits=found.credits).body()

    async def balance(self, key: ApiKey) -> int:
        found = await self.store.get_key(key.id)
        return found.credits if found is not None else 0

    async def file(self, file_id: str, expires: str | None, sig: str | None) -> FileAnswer:
        """A signed link's file (``<job id>`` or ``<job id>_<object index>``; the logits are never served)."""
        self.deps.signer.verify(file_id, expires, sig)
        job_id, _, suffix = file_id.partition("_")
        job = await self.store.get_job(job_id) if valid_file_id(file_id) else None
        location = None if job is None else _location(job, suffix)
        if job is None or location is None:
            raise NotFound("File not found")
        content_type = {"": job.content_type, "preview": "video/mp4"}.get(suffix, "image/png")
        content_type = content_type or "application/octet-stream"
        # an object store in redirect mode: the bytes come from it, through a presigned URL no longer-lived than ours
        elsewhere = await self.files.link(location, content_type, float(expires or 0))
        if elsewhere is not None:
            return FileAnswer(content_type, redirect=elsewhere)
        found = await self.files.get(location)
        if found is None:
            raise NotFound("File not found")
        if isinstance(found, bytes):
            return FileAnswer(content_type, body=found)
        return FileAnswer(content_type, path=found)

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Whether this frontend can serve (store, files, models), and the body ``/readyz`` answers."""
        problems: list[str] = []
        try:
            await self.store.ping()
        except Exception as exc:  # any store failure means not ready
            problems.append(f"store: {exc}")
        try:
            await self.files.ping()
        except StorageUnavailable as exc:
            problems.append(f"files: {exc}")
        models = []
        try:
            models = await self.routing.refresh()
        except InferenceUnavailable as exc:
            problems.append(f"triton: {exc}")
        body = {
            "status": "ready" if not problems else "unavailable",
            "models": [
                {"name": m.name, "version": m.version, "model": m.variant, "weights": m.weights} for m in models
            ],
            "random_weights": any(m.random_weights for m in models),
            "problems": problems,
        }
        return not problems, body


def _location(job: Job, suffix: str) -> str | None:
    """Where the output (no suffix) or an object's mask (``<index>``) lives."""
    if not suffix:
        return job.output_path
    if suffix == "preview":
        return job.details.files.preview
    objects = job.details.files.objects
    return objects[int(suffix)] if suffix.isdigit() and int(suffix) < len(objects) else None
