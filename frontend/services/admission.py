"""Bounding the images this process has accepted and not yet answered (and, apart, its waiting async images)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from maskserve.frontend.errors import Unavailable

OVERLOADED = "The server is overloaded; retry later"


class Admission:
    """Past the bound a request is refused at once with 503 (before its credits move).

    A burst cannot grow queues and memory without limit, and the latency of
    admitted requests stays bounded by the bound over the service rate.
    """

    def __init__(self, limit: int, refusal: str = OVERLOADED) -> None:
        self.limit = limit
        self.refusal = refusal
        self.admitted = 0

    def full(self, images: int = 1) -> bool:
        return self.admitted + images > self.limit

    def check(self, images: int = 1) -> None:
        """503 at once when ``images`` more would not fit (before the body is read)."""
        if self.full(images):
            raise Unavailable(self.refusal)

    @contextlib.contextmanager
    def admit(self, images: int) -> Iterator[None]:
        self.check(images)
        self.admitted += images
        try:
            yield
        finally:
            self.admitted -= images
