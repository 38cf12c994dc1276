"""HTTP handlers of ``/v1/videos`` (API.md v1.2, "Video"): parse, call the video service, serialise."""

from __future__ import annotations

from aiohttp import web

from maskserve.frontend.domain.videos import PropagateQuery, VideoPromptQuery, VideoUploadQuery
from maskserve.frontend.errors import BadRequest
from maskserve.frontend.http import parsing
from maskserve.frontend.http.state import SETTINGS, api_key, base_url, services
from maskserve.frontend.services.videos import state_body
from maskserve.frontend.services.webhooks import accept_target


async def _headers(request: web.Request, charged: int, balance: int | None = None) -> dict[str, str]:
    """The v1.1 response headers of a 2xx answer (a video's routes run no image stage of their own)."""
    if balance is None:
        balance = await services(request).reads.balance(api_key(request))
    return {"X-Credits-Charged": str(charged), "X-Credits-Remaining": str(balance), "Server-Timing": ""}


async def upload(request: web.Request) -> web.Response:
    query = parsing.parse_query(request.query, VideoUploadQuery)
    limit = request.app[SETTINGS].max_video_bytes
    parsing.check_content_length(request, 1, limit)
    uploads = await parsing.read_uploads(request, {"file"}, limit, request.app[SETTINGS].upload_timeout_s)
    files = uploads.get("file", [])
    if not files:
        raise BadRequest("No file provided: send the video as the 'file' field")
    if len(files) > 1:
        raise BadRequest("Send one 'file' per request")
    body = await services(request).videos.upload(api_key(request), files[0].data, query.fps)
    return web.json_response(body, status=201, headers=await _headers(request, 0))


async def state(request: web.Request) -> web.Response:
    video = await services(request).videos.find(api_key(request), request.match_info["video_id"])
    return web.json_response(state_body(video), headers=await _headers(request, 0))


async def delete(request: web.Request) -> web.Response:
    await services(request).videos.delete(api_key(request), request.match_info["video_id"])
    return web.Response(status=204)


async def prompt(request: web.Request) -> web.Response:
    query = parsing.parse_query(request.query, VideoPromptQuery)
    video_id = request.match_info["video_id"]
    body, balance = await services(request).videos.prompt(api_key(request), video_id, query, base_url(request))
    return web.json_response(body, headers=await _headers(request, 1, balance))


async def propagate(request: web.Request) -> web.Response:
    query = parsing.parse_query(request.query, PropagateQuery)
    if query.webhook_url is not None:
        await accept_target(query.webhook_url, request.app[SETTINGS].webhook_allow_private)
    video_id = request.match_info["video_id"]
    body = await services(request).propagations.propagate(api_key(request), video_id, query, base_url(request))
    return web.json_response(body, status=202, headers=await _headers(request, 0))
