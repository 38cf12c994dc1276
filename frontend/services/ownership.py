"""The one rule of every read: a key sees only what it created (jobs, batches, image handles, videos)."""

from __future__ import annotations

from typing import Protocol, TypeVar

from maskserve.frontend.domain.accounts import ApiKey
from maskserve.frontend.errors import NotFound


class Owned(Protocol):
    @property
    def key_id(self) -> str: ...


T = TypeVar("T", bound=Owned)


def owned(key: ApiKey, found: T | None, missing: str) -> T:
    """``found`` if it exists and belongs to ``key``; otherwise 404 with ``missing`` (never "forbidden":
    another key's ids are indistinguishable from unknown ones)."""
    if found is None or found.key_id != key.id:
        raise NotFound(missing)
    return found
