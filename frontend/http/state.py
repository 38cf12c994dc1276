"""What the HTTP layer keeps on the app and on each request, under typed keys."""

from __future__ import annotations

from aiohttp import web

from maskserve.frontend.config import Settings
from maskserve.frontend.domain import ApiKey, RateDecision
from maskserve.frontend.metrics import Metrics
from maskserve.frontend.ports import InferenceClient, OutputFiles, RateLimits, Store
from maskserve.frontend.services import ImageJobs
from maskserve.frontend.signing import UrlSigner

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
STORE = web.AppKey("store", Store)
FILES = web.AppKey("files", OutputFiles)
LIMITS = web.AppKey("limits", RateLimits)
SIGNER = web.AppKey("signer", UrlSigner)
TRITON = web.AppKey("triton", InferenceClient)
JOBS = web.AppKey("jobs", ImageJobs)

API_KEY = web.RequestKey("api_key", ApiKey)
RATE = web.RequestKey("rate", RateDecision)


def api_key(request: web.Request) -> ApiKey:
    """The caller's key; set by the auth middleware on every route that is not public."""
    return request[API_KEY]


def rate_decision(request: web.Request) -> RateDecision | None:
    return request.get(RATE)
