"""The contract's JSON shapes of a job and a batch (``domain.responses``), built where a response or a webhook
needs them.

Links are signed for ``base_url``: the request's own origin (or ``public_url``),
or, for a webhook delivered later, the origin the request came in on.
"""

from __future__ import annotations

from typing import Any

from maskserve.frontend.domain.jobs import BatchRecord, Job, JobStatus
from maskserve.frontend.domain.responses import Batch, Result, Single
from maskserve.frontend.signing import UrlSigner


def file_url(base_url: str, signer: UrlSigner, file_id: str, expires_at: float) -> str:
    return f"{base_url}/v1/files/{file_id}?{signer.query(file_id, int(expires_at))}"


def _extras(base_url: str, signer: UrlSigner, job: Job) -> dict[str, Any]:
    """A completed job's stored extras; each object's mask gets its own signed link."""
    extras = job.details.result.public()
    if "objects" in extras and job.expires_at is not None:
        expires = job.expires_at
        extras["objects"] = [
            {"index": o["index"], "output_url": file_url(base_url, signer, f"{job.id}_{o['index']}", expires)}
            | {k: v for k, v in o.items() if k != "index"}
            for o in extras["objects"]
        ]
    if job.details.files.preview and job.expires_at is not None:  # a propagation's preview video (API.md v1.2)
        extras["preview_url"] = file_url(base_url, signer, f"{job.id}_preview", job.expires_at)
    return extras


def result(base_url: str, signer: UrlSigner, job: Job) -> Result:
    url = None
    completed = job.status is JobStatus.COMPLETED and job.expires_at is not None
    if completed and job.expires_at is not None:
        url = file_url(base_url, signer, job.id, job.expires_at)
    return Result.model_validate(
        {
            "job_id": job.id,
            "status": job.status,
            "input_filename": job.input_filename,
            "output_url": url,
            "processing_time_ms": round(job.processing_ms or 0.0, 1),
            "error": job.error,
            "original_width": job.original_width,
            "original_height": job.original_height,
            "output_width": job.output_width,
            "output_height": job.output_height,
            "credits_used": job.credits_used,
            **(_extras(base_url, signer, job) if completed else {}),
        }
    )


def result_object(base_url: str, signer: UrlSigner, job: Job) -> dict[str, Any]:
    return result(base_url, signer, job).body()


def single_body(base_url: str, signer: UrlSigner, job: Job) -> dict[str, Any]:
    body = Single(job_id=job.id, status=job.status, result=result(base_url, signer, job), error=job.error)
    return body.body()


def batch_body(base_url: str, signer: UrlSigner, batch_id: str, jobs: list[Job], wall_ms: float) -> dict[str, Any]:
    completed = sum(1 for j in jobs if j.status is JobStatus.COMPLETED)
    failed = sum(1 for j in jobs if j.status is JobStatus.FAILED)
    running = len(jobs) - completed - failed
    status = JobStatus.PROCESSING if running else (JobStatus.FAILED if completed == 0 else JobStatus.COMPLETED)
    body = Batch(
        batch_id=batch_id,
        status=status,
        total_files=len(jobs),
        completed=completed,
        failed=failed,
        results=[result(base_url, signer, j) for j in jobs],
        total_processing_time_ms=round(wall_ms, 1),
        total_credits_used=sum(j.credits_used for j in jobs),
        error=f"All {failed} images failed" if status is JobStatus.FAILED else None,
    )
    return body.body()


def recorded_batch_body(
    base_url: str, signer: UrlSigner, record: BatchRecord, jobs: list[Job], now: float
) -> dict[str, Any]:
    """A recorded batch as ``GET /v1/batches/{id}`` (and its webhook) answers it: the time is its wall time
    so far, or until its last image ended."""
    ends = [j.finished_at for j in jobs]
    end = max(e for e in ends if e is not None) if ends and all(e is not None for e in ends) else now
    return batch_body(base_url, signer, record.id, jobs, (end - record.created_at) * 1000)
