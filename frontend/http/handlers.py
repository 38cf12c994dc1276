"""HTTP handlers: parse into typed values, call a service, serialise. Nothing else."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from maskserve.frontend.domain import EverythingOptions, Job, JobKind, JobStatus, Stages
from maskserve.frontend.errors import (
    BadRequest,
    InferenceUnavailable,
    NotFound,
    StorageUnavailable,
    Unavailable,
    ValidationFailed,
)
from maskserve.frontend.http import parsing, playground, retries, webhooks
from maskserve.frontend.http.openapi import openapi_document
from maskserve.frontend.http.state import FILES, JOBS, METRICS, SETTINGS, SIGNER, STORE, api_key
from maskserve.frontend.services import (
    BatchOutcome,
    ExtractionOptions,
    Item,
    Later,
    Prompts,
    Served,
    Upload,
    shapes,
)
from maskserve.frontend.signing import valid_file_id, valid_job_id


def _base_url(request: web.Request) -> str:
    configured = request.app[SETTINGS].public_url
    return configured.rstrip("/") if configured else f"{request.scheme}://{request.host}"


def result_object(request: web.Request, job: Job) -> dict[str, Any]:
    return shapes.result_object(_base_url(request), request.app[SIGNER], job)


def _model_headers(request: web.Request, jobs: list[Job]) -> dict[str, str]:
    """``X-Model-Version``: the versions that served the images (absent when only uploaded masks were used)."""
    versions = sorted({j.model_version for j in jobs if j.model_version}, key=int)
    if not versions:
        return {}
    return {"X-Model-Version": ", ".join(request.app[JOBS].model_label(v) for v in versions)}


async def _balance(request: web.Request) -> dict[str, str]:
    key = await request.app[STORE].get_key(api_key(request).id)
    return {"X-Credits-Remaining": str(key.credits if key is not None else 0)}


async def _service_headers(request: web.Request, jobs: list[Job], stages: Stages) -> dict[str, str]:
    """Cost, balance, model and timing headers of a 2xx service response (API.md v1.1)."""
    return {
        "X-Credits-Charged": str(sum(j.credits_used for j in jobs)),
        **await _balance(request),
        **_model_headers(request, jobs),
        "Server-Timing": stages.header(),
    }


async def _later(request: web.Request) -> Later | None:
    """``async=true`` and ``webhook_url``; a target that resolves to a refused address is 422 at once."""
    later = parsing.parse_later(request.query, _base_url(request))
    if later is not None and later.webhook_url is not None:
        try:
            await webhooks.check_target(later.webhook_url, request.app[SETTINGS].webhook_allow_private)
        except webhooks.TargetRefused as exc:
            raise ValidationFailed.one("query", "webhook_url", str(exc)) from None
    return later


async def _serve_one(
    request: web.Request,
    uploads: dict[str, list[Upload]],
    kind: JobKind,
    item: Item,
    prompts: Prompts | None,
    opts: ExtractionOptions | EverythingOptions | None,
    later: Later | None,
) -> web.Response:
    """One image through the service, under the request's ``Idempotency-Key``."""

    async def run() -> web.Response:
        served = await request.app[JOBS].single(api_key(request), kind, item, prompts, opts, later)
        return await _single_response(request, served)

    return await _once(request, uploads, run)


async def _serve_batch(
    request: web.Request,
    uploads: dict[str, list[Upload]],
    kind: JobKind,
    items: list[Item],
    prompts: Prompts | None,
    opts: ExtractionOptions | None,
    later: Later | None,
) -> web.Response:
    """A batch through the service, under the request's ``Idempotency-Key``."""

    async def run() -> web.Response:
        outcome = await request.app[JOBS].batch(api_key(request), kind, items, prompts, opts, later)
        return await _batch_response(request, outcome)

    return await _once(request, uploads, run)


async def _once(
    request: web.Request, uploads: dict[str, list[Upload]], run: Callable[[], Awaitable[web.Response]]
) -> web.Response:
    """``run()`` under the request's ``Idempotency-Key``, if it brings one."""
    return await retries.idempotent(request, uploads, run, lambda: _balance(request))


async def _single_response(request: web.Request, served: Served) -> web.Response:
    job = served.job
    return web.json_response(
        shapes.single_body(_base_url(request), request.app[SIGNER], job),
        status=202 if job.status in (JobStatus.PENDING, JobStatus.PROCESSING) else 200,
        headers=await _service_headers(request, [job], served.stages),
    )


def _batch_body(request: web.Request, batch_id: str, jobs: list[Job], wall_ms: float) -> dict[str, Any]:
    return shapes.batch_body(_base_url(request), request.app[SIGNER], batch_id, jobs, wall_ms)


async def _batch_response(request: web.Request, outcome: BatchOutcome) -> web.Response:
    body = _batch_body(request, outcome.batch_id, outcome.jobs, outcome.wall_ms)
    return web.json_response(
        body,
        status=202 if body["status"] is JobStatus.PROCESSING else 200,
        headers=await _service_headers(request, outcome.jobs, outcome.stages),
    )


async def _uploads(request: web.Request, fields: set[str]) -> dict[str, list[Upload]]:
    """Refuse at once when the process is full (before reading a byte), else read the body."""
    if request.app[JOBS].admission.full():
        raise Unavailable("The server is overloaded; retry later")
    settings = request.app[SETTINGS]
    return await parsing.read_uploads(request, fields, settings.max_upload_bytes, settings.upload_timeout_s)


def _optional(uploads: dict[str, list[Upload]], name: str) -> Upload | None:
    found = uploads.get(name, [])
    if len(found) > 1:
        raise BadRequest(f"Send one '{name}' file per request (use the batch endpoint for more)")
    return found[0] if found else None


def _required(uploads: dict[str, list[Upload]], name: str) -> Upload:
    found = _optional(uploads, name)
    if found is None:
        raise BadRequest(f"No file provided: send the image as the '{name}' field")
    return found


async def segment(request: web.Request) -> web.Response:
    parsing.check_query(request.query, {*parsing.PROMPT_QUERY, *parsing.ASYNC_QUERY, "previous_job_id"})
    prompts = parsing.parse_prompts(request.query, refine=True)
    later = await _later(request)
    settings = request.app[SETTINGS]
    parsing.check_content_length(request, 1, settings.max_upload_bytes)
    uploads = await _uploads(request, {"file"})
    upload = _required(uploads, "file")
    if not prompts.given:
        raise BadRequest("Segmentation needs 'points' or 'box' (or 'objects')")
    return await _serve_one(request, uploads, JobKind.SEGMENTATION, Item(upload), prompts, None, later)


async def segment_everything(request: web.Request) -> web.Response:
    parsing.check_query(request.query, {*parsing.EVERYTHING_QUERY, *parsing.ASYNC_QUERY})
    options = parsing.parse_everything(request.query)
    later = await _later(request)
    parsing.check_content_length(request, 1, request.app[SETTINGS].max_upload_bytes)
    uploads = await _uploads(request, {"file"})
    upload = _required(uploads, "file")
    return await _serve_one(request, uploads, JobKind.EVERYTHING, Item(upload), None, options, later)


async def extract(request: web.Request) -> web.Response:
    parsing.check_query(request.query, {*parsing.EXTRACTION_QUERY, *parsing.ASYNC_QUERY})
    prompts = parsing.parse_prompts(request.query)
    opts = parsing.parse_extraction_options(request.query)
    later = await _later(request)
    settings = request.app[SETTINGS]
    parsing.check_content_length(request, 2, settings.max_upload_bytes)
    uploads = await _uploads(request, {"image", "mask"})
    image = _required(uploads, "image")
    mask = _optional(uploads, "mask")
    _check_mask_source(mask is not None, prompts.given)
    item = Item(image, mask)
    return await _serve_one(request, uploads, JobKind.EXTRACTION, item, None if mask else prompts, opts, later)


def _check_mask_source(has_mask: bool, has_prompt: bool) -> None:
    if not has_mask and not has_prompt:
        raise BadRequest("Extraction needs a 'mask' file or 'points'/'box' prompts")
    if has_mask and has_prompt:
        raise BadRequest("Send either a 'mask' file or prompts, not both")


def _check_count(files: list[Upload], name: str, max_batch: int) -> None:
    if not files:
        raise BadRequest(f"No file provided: send 1 to {max_batch} '{name}' fields")
    if len(files) > max_batch:
        raise BadRequest(f"At most {max_batch} files per batch, got {len(files)}")


async def segment_batch(request: web.Request) -> web.Response:
    parsing.check_query(request.query, {*parsing.PROMPT_QUERY, *parsing.ASYNC_QUERY})
    prompts = parsing.parse_prompts(request.query)
    later = await _later(request)
    settings = request.app[SETTINGS]
    parsing.check_content_length(request, settings.max_batch, settings.max_upload_bytes)
    uploads = await _uploads(request, {"files"})
    _check_count(uploads["files"], "files", settings.max_batch)
    if not prompts.given:
        raise BadRequest("Segmentation needs 'points' or 'box' (or 'objects')")
    items = [Item(u) for u in uploads["files"]]
    return await _serve_batch(request, uploads, JobKind.SEGMENTATION, items, prompts, None, later)


async def extract_batch(request: web.Request) -> web.Response:
    parsing.check_query(request.query, {*parsing.EXTRACTION_QUERY, *parsing.ASYNC_QUERY})
    prompts = parsing.parse_prompts(request.query)
    opts = parsing.parse_extraction_options(request.query)
    later = await _later(request)
    settings = request.app[SETTINGS]
    parsing.check_content_length(request, 2 * settings.max_batch, settings.max_upload_bytes)
    uploads = await _uploads(request, {"images", "masks"})
    images, masks = uploads["images"], uploads["masks"]
    _check_count(images, "images", settings.max_batch)
    if masks and len(masks) != len(images):
        raise BadRequest(f"Got {len(images)} images but {len(masks)} masks; send one mask per image or none")
    _check_mask_source(bool(masks), prompts.given)
    items = [Item(image, masks[i] if masks else None) for i, image in enumerate(images)]
    return await _serve_batch(request, uploads, JobKind.EXTRACTION, items, None if masks else prompts, opts, later)


async def get_job(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    job = await request.app[STORE].get_job(job_id) if valid_job_id(job_id) else None
    if job is None or job.key_id != api_key(request).id:
        raise NotFound("Job not found")
    return web.json_response(result_object(request, job))


async def get_batch(request: web.Request) -> web.Response:
    batch_id = request.match_info["batch_id"]
    store = request.app[STORE]
    record = await store.get_batch(batch_id) if valid_job_id(batch_id) else None
    if record is None or record.key_id != api_key(request).id:
        raise NotFound("Batch not found")
    jobs = await store.get_jobs(record.job_ids)
    return web.json_response(
        shapes.recorded_batch_body(_base_url(request), request.app[SIGNER], record, jobs, time.time())
    )


async def get_account(request: web.Request) -> web.Response:
    key = await request.app[STORE].get_key(api_key(request).id)
    if key is None:  # revoked and deleted between the auth check and now
        raise NotFound("Account not found")
    return web.json_response({"name": key.name, "key_prefix": key.prefix, "credits": key.credits})


def _object_location(job: Job, suffix: str) -> str | None:
    """Where an object's mask lives (``<job id>_<index>``); the logits are never served."""
    objects = (job.details or {}).get("files", {}).get("objects", [])
    return objects[int(suffix)] if suffix.isdigit() and int(suffix) < len(objects) else None


async def get_file(request: web.Request) -> web.StreamResponse:
    file_id = request.match_info["job_id"]
    request.app[SIGNER].verify(file_id, request.query.get("expires"), request.query.get("sig"))
    job_id, _, suffix = file_id.partition("_")
    job = await request.app[STORE].get_job(job_id) if valid_file_id(file_id) else None
    location = None
    if job is not None:
        location = _object_location(job, suffix) if suffix else job.output_path
    if job is None or location is None:
        raise NotFound("File not found")
    content_type = (job.content_type if not suffix else "image/png") or "application/octet-stream"
    # an object store in redirect mode: the bytes come from it, through a presigned URL no longer-lived than ours
    elsewhere = await request.app[FILES].link(location, content_type, float(request.query["expires"]))
    if elsewhere is not None:
        raise web.HTTPFound(elsewhere, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
    found = await request.app[FILES].get(location)
    if found is None:
        raise NotFound("File not found")
    headers = {
        "Content-Type": content_type,
        "Cache-Control": "private, max-age=300",
        "X-Content-Type-Options": "nosniff",
    }
    if isinstance(found, bytes):
        return web.Response(body=found, headers=headers)
    return web.FileResponse(found, headers=headers)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    problems: list[str] = []
    try:
        await request.app[STORE].ping()
    except Exception as exc:  # any store failure means not ready
        problems.append(f"store: {exc}")
    try:
        await request.app[FILES].ping()
    except StorageUnavailable as exc:
        problems.append(f"files: {exc}")
    models = []
    try:
        models = await request.app[JOBS].refresh_models()
    except InferenceUnavailable as exc:
        problems.append(f"triton: {exc}")
    body = {
        "status": "ready" if not problems else "unavailable",
        "models": [{"name": m.name, "version": m.version, "model": m.variant, "weights": m.weights} for m in models],
        "random_weights": any(m.random_weights for m in models),
        "problems": problems,
    }
    return web.json_response(body, status=200 if not problems else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format (next to Triton's own metrics on its metrics port)."""
    return web.Response(
        body=request.app[METRICS].render(),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app[SETTINGS]))


def add_routes(app: web.Application) -> None:
    """Every route has a name: the auth middleware lets only names in ``PUBLIC_ROUTES`` through without a key."""
    app.router.add_post("/v1/services/image-segmentation", segment, name="segment")
    app.router.add_post("/v1/services/image-segmentation/batch", segment_batch, name="segment_batch")
    app.router.add_post("/v1/services/image-segmentation/everything", segment_everything, name="segment_everything")
    app.router.add_post("/v1/services/object-extraction", extract, name="extract")
    app.router.add_post("/v1/services/object-extraction/batch", extract_batch, name="extract_batch")
    app.router.add_get("/v1/jobs/{job_id}", get_job, name="job")
    app.router.add_get("/v1/batches/{batch_id}", get_batch, name="batch")
    app.router.add_get("/v1/account", get_account, name="account")
    app.router.add_get("/v1/files/{job_id}", get_file, name="file")
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/readyz", readyz, name="readyz")
    app.router.add_get("/openapi.json", openapi, name="openapi")
    app.router.add_get("/metrics", metrics, name="metrics")
    playground.add_routes(app)
