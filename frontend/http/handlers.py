"""HTTP handlers: parse into typed values, call a service, serialise. Nothing else."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from maskserve.frontend.domain.jobs import Job, JobKind, JobStatus, Stages
from maskserve.frontend.domain.requests import (
    AsyncFields,
    EverythingOptions,
    EverythingQuery,
    ExtractBatchQuery,
    ExtractionOptions,
    ExtractQuery,
    Later,
    Prompts,
    SegmentBatchQuery,
    SegmentQuery,
)
from maskserve.frontend.errors import BadRequest, ValidationFailed
from maskserve.frontend.http import parsing, retries
from maskserve.frontend.http.state import METRICS, SETTINGS, api_key, base_url, services
from maskserve.frontend.services import shapes
from maskserve.frontend.services.images import BatchOutcome, Served
from maskserve.frontend.services.preparation import Item, Upload
from maskserve.frontend.services.webhooks import accept_target

Uploads = dict[str, list[Upload]]


def _model_headers(request: web.Request, jobs: list[Job]) -> dict[str, str]:
    """``X-Model-Version``: the versions that served the images (absent when only uploaded masks were used)."""
    versions = sorted({j.model_version for j in jobs if j.model_version}, key=int)
    if not versions:
        return {}
    return {"X-Model-Version": ", ".join(services(request).routing.label(v) for v in versions)}


async def _balance(request: web.Request, known: int | None = None) -> dict[str, str]:
    balance = known if known is not None else await services(request).reads.balance(api_key(request))
    return {"X-Credits-Remaining": str(balance)}


async def _service_headers(
    request: web.Request, jobs: list[Job], stages: Stages, balance: int | None = None
) -> dict[str, str]:
    """Cost, balance, model and timing headers of a 2xx service response (API.md v1.1)."""
    return {
        "X-Credits-Charged": str(sum(j.credits_used for j in jobs)),
        **await _balance(request, balance),
        **_model_headers(request, jobs),
        "Server-Timing": stages.header(),
    }


async def _later(request: web.Request, query: AsyncFields) -> Later | None:
    """``async=true`` and ``webhook_url``; a target that resolves to a refused address is 422 at once."""
    later = query.later(base_url(request))
    if later is not None:
        await accept_target(later.webhook_url, request.app[SETTINGS].webhook_allow_private)
    return later


async def _once(request: web.Request, uploads: Uploads, run: Callable[[], Awaitable[web.Response]]) -> web.Response:
    """``run()`` under the request's ``Idempotency-Key``, if it brings one."""
    return await retries.idempotent(request, uploads, run, lambda: _balance(request))


async def _serve_one(
    request: web.Request,
    uploads: Uploads,
    kind: JobKind,
    item: Item,
    prompts: Prompts | None,
    opts: ExtractionOptions | EverythingOptions | None,
    later: Later | None,
) -> web.Response:
    """One image through the service, under the request's ``Idempotency-Key``."""

    async def run() -> web.Response:
        served = await services(request).images.single(api_key(request), kind, item, prompts, opts, later)
        return await _single_response(request, served)

    return await _once(request, uploads, run)


async def _serve_batch(
    request: web.Request,
    uploads: Uploads,
    kind: JobKind,
    items: list[Item],
    prompts: Prompts | None,
    opts: ExtractionOptions | None,
    later: Later | None,
) -> web.Response:
    """A batch through the service, under the request's ``Idempotency-Key``."""

    async def run() -> web.Response:
        outcome = await services(request).images.batch(api_key(request), kind, items, prompts, opts, later)
        return await _batch_response(request, outcome)

    return await _once(request, uploads, run)


async def _single_response(request: web.Request, served: Served) -> web.Response:
    job = served.job
    return web.json_response(
        shapes.single_body(base_url(request), services(request).deps.signer, job),
        status=202 if job.status in (JobStatus.PENDING, JobStatus.PROCESSING) else 200,
        headers=await _service_headers(request, [job], served.stages, served.balance),
    )


async def _batch_response(request: web.Request, outcome: BatchOutcome) -> web.Response:
    signer = services(request).deps.signer
    body = shapes.batch_body(base_url(request), signer, outcome.batch_id, outcome.jobs, outcome.wall_ms)
    return web.json_response(
        body,
        status=202 if body["status"] == JobStatus.PROCESSING else 200,
        headers=await _service_headers(request, outcome.jobs, outcome.stages, outcome.balance),
    )


async def _uploads(request: web.Request, fields: set[str], max_files: int, optional: bool = False) -> Uploads:
    """Refuse at once when the process is full or the body cannot fit (before reading a byte), else read it.

    ``optional``: the image comes by its handle, so the request may carry no body at all.
    """
    settings = request.app[SETTINGS]
    parsing.check_content_length(request, max_files, settings.max_upload_bytes)
    services(request).images.admission.check()
    limit, timeout = settings.max_upload_bytes, settings.upload_timeout_s
    return await parsing.read_uploads(request, fields, limit, timeout, optional)


def _optional(uploads: Uploads, name: str) -> Upload | None:
    found = uploads.get(name, [])
    if len(found) > 1:
        raise BadRequest(f"Send one '{name}' file per request (use the batch endpoint for more)")
    return found[0] if found else None


def _required(uploads: Uploads, name: str) -> Upload:
    found = _optional(uploads, name)
    if found is None:
        raise BadRequest(f"No file provided: send the image as the '{name}' field")
    return found


def _image(uploads: Uploads, name: str, image_id: str | None) -> tuple[Upload | None, str | None]:
    """The image: uploaded as ``name``, or by its handle; both is 422 on ``image_id``, neither 400."""
    upload = _optional(uploads, name)
    if upload is not None and image_id is not None:
        raise ValidationFailed.one("query", "image_id", f"send either the '{name}' file or image_id, not both")
    if upload is None and image_id is None:
        raise BadRequest(f"No file provided: send the image as the '{name}' field (or image_id)")
    return upload, image_id


def _check_prompts(prompts: Prompts) -> None:
    if not prompts.given:
        raise BadRequest("Segmentation needs 'points' or 'box' (or 'objects')")


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


async def segment(request: web.Request) -> web.Response:
    query = parsing.parse_query(request.query, SegmentQuery)
    later = await _later(request, query)
    uploads = await _uploads(request, {"file"}, 1, optional=query.image_id is not None)
    upload, image_id = _image(uploads, "file", query.image_id)
    prompts = query.segmentation()
    _check_prompts(prompts)
    item = Item(upload, image_id=image_id)
    return await _serve_one(request, uploads, JobKind.SEGMENTATION, item, prompts, None, later)


async def segment_everything(request: web.Request) -> web.Response:
    query = parsing.parse_query(request.query, EverythingQuery)
    later = await _later(request, query)
    uploads = await _uploads(request, {"file"}, 1, optional=query.image_id is not None)
    upload, image_id = _image(uploads, "file", query.image_id)
    item = Item(upload, image_id=image_id)
    return await _serve_one(request, uploads, JobKind.EVERYTHING, item, None, query.everything(), later)


async def extract(request: web.Request) -> web.Response:
    query = parsing.parse_query(request.query, ExtractQuery)
    later = await _later(request, query)
    uploads = await _uploads(request, {"image", "mask"}, 2, optional=query.image_id is not None)
    image, image_id = _image(uploads, "image", query.image_id)
    mask = _optional(uploads, "mask")
    prompts = query.prompts()
    _check_mask_source(mask is not None, prompts.given)
    item = Item(image, mask, image_id)
    opts = query.extraction()
    return await _serve_one(request, uploads, JobKind.EXTRACTION, item, None if mask else prompts, opts, later)


async def segment_batch(request: web.Request) -> web.Response:
    query = parsing.parse_query(request.query, SegmentBatchQuery)
    later = await _later(request, query)
    max_batch = request.app[SETTINGS].max_batch
    uploads = await _uploads(request, {"files"}, max_batch)
    _check_count(uploads["files"], "files", max_batch)
    prompts = query.segmentation()
    _check_prompts(prompts)
    items = [Item(u) for u in uploads["files"]]
    return await _serve_batch(request, uploads, JobKind.SEGMENTATION, items, prompts, None, later)


async def extract_batch(request: web.Request) -> web.Response:
    query = parsing.parse_query(request.query, ExtractBatchQuery)
    later = await _later(request, query)
    max_batch = request.app[SETTINGS].max_batch
    uploads = await _uploads(request, {"images", "masks"}, 2 * max_batch)
    images, masks = uploads["images"], uploads["masks"]
    _check_count(images, "images", max_batch)
    if masks and len(masks) != len(images):
        raise BadRequest(f"Got {len(images)} images but {len(masks)} masks; send one mask per image or none")
    prompts = query.prompts()
    _check_mask_source(bool(masks), prompts.given)
    items = [Item(image, masks[i] if masks else None) for i, image in enumerate(images)]
    opts = query.extraction()
    return await _serve_batch(request, uploads, JobKind.EXTRACTION, items, None if masks else prompts, opts, later)


async def get_job(request: web.Request) -> web.Response:
    found = await services(request).reads.job(api_key(request), request.match_info["job_id"], base_url(request))
    return web.json_response(found)


async def get_batch(request: web.Request) -> web.Response:
    batch_id = request.match_info["batch_id"]
    return web.json_response(await services(request).reads.batch(api_key(request), batch_id, base_url(request)))


async def delete_image(request: web.Request) -> web.Response:
    await services(request).handles.forget(api_key(request), request.match_info["image_id"])
    return web.Response(status=204)


async def get_account(request: web.Request) -> web.Response:
    return web.json_response(await services(request).reads.account(api_key(request)))


async def get_file(request: web.Request) -> web.StreamResponse:
    query = request.query
    found = await services(request).reads.file(request.match_info["job_id"], query.get("expires"), query.get("sig"))
    if found.redirect is not None:
        raise web.HTTPFound(found.redirect, headers={"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"})
    headers = {
        "Content-Type": found.content_type,
        "Cache-Control": "private, max-age=300",
        "X-Content-Type-Options": "nosniff",
    }
    if found.body is not None:
        return web.Response(body=found.body, headers=headers)
    assert found.path is not None
    return web.FileResponse(found.path, headers=headers)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready, body = await services(request).reads.readiness()
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format (next to Triton's own metrics on its metrics port)."""
    return web.Response(
        body=request.app[METRICS].render(),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )
