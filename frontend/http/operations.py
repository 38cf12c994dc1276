"""What a route is: its method, path, handler and name, and what the OpenAPI document says of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from maskserve.frontend.domain.accounts import RateBucket
from maskserve.frontend.domain.requests import Declared
from maskserve.frontend.domain.responses import Shape

Handler = Any  # an aiohttp handler: async (web.Request) -> web.StreamResponse


@dataclass(frozen=True)
class Body:
    """A multipart body: each file field, and whether it is required."""

    fields: dict[str, bool]
    repeated: bool = False
    required: bool = True  # False: the request may carry no body (an image by its handle)


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    name: str
    handler: Handler
    summary: str
    query: type[Declared] | None = None  # a service endpoint's parameters
    body: Body | None = None
    answer: type[Shape] | None = None  # the JSON body of a 200 (and of a 202 for a service endpoint)
    errors: tuple[int, ...] = ()
    secured: bool = True  # needs an API key (the auth middleware decides by name: see PUBLIC_ROUTES)
    bucket: RateBucket = RateBucket.SINGLE  # the rate limit it counts against
    responses: dict[str, Any] = field(default_factory=dict)  # anything besides the JSON answer and the errors
    parameters: tuple[dict[str, Any], ...] = ()  # path and other parameters
