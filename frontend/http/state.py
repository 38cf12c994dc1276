"""What the HTTP layer keeps on the app and on each request, under typed keys."""

from __future__ import annotations

from aiohttp import web

from maskserve.frontend.config import Settings
from maskserve.frontend.domain.accounts import ApiKey, RateDecision
from maskserve.frontend.metrics import Metrics
from maskserve.frontend.ports import InferenceClient, Store
from maskserve.frontend.services.container import Services

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
SERVICES = web.AppKey("services", Services)
STORE = web.AppKey("store", Store)
"""The store the services use, for the admin side of tests and tools (handlers go through the services)."""
TRITON = web.AppKey("triton", InferenceClient)

API_KEY = web.RequestKey("api_key", ApiKey)
RATE = web.RequestKey("rate", RateDecision)


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


def api_key(request: web.Request) -> ApiKey:
    """The caller's key; set by the auth middleware on every route that is not public."""
    return request[API_KEY]


def rate_decision(request: web.Request) -> RateDecision | None:
    return request.get(RATE)


def base_url(request: web.Request) -> str:
    """Where the response's links point: ``public_url`` when set, else the origin the request came in on."""
    configured = request.app[SETTINGS].public_url
    return configured.rstrip("/") if configured else f"{request.scheme}://{request.host}"
