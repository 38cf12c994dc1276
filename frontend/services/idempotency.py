"""Safe retries (``Idempotency-Key``, API.md v1.1): a key's claim, its stored response, its release.

A request that brings a key claims it in the store (scoped to the API key)
before any credit moves. The first one runs; its 2xx response is stored with
the key for 24 h and sent again to a retry of the same request, with nothing
charged. A retry while the first still runs gets 409; the same key on a
different request 422. A request that ends without a 2xx releases the key,
so a retry runs it: it was never charged.
"""

from __future__ import annotations

import asyncio

from maskserve.frontend.domain.accounts import IDEMPOTENCY_TTL_S, ApiKey, Claim, StoredResponse
from maskserve.frontend.errors import Conflict, DatabaseUnavailable, ValidationFailed
from maskserve.frontend.services.base import Deps, Service
from maskserve.frontend.services.settlement import Settlements

HEADER = "Idempotency-Key"
MAX_LENGTH = 255
IN_PROGRESS = "A request with this Idempotency-Key is still in progress"


def check_key(values: list[str]) -> str | None:
    """The header's value, checked: 1-255 printable ASCII characters, given once."""
    if not values:
        return None
    value = values[0]
    if len(values) > 1 or not 1 <= len(value) <= MAX_LENGTH or not all(" " <= c <= "~" for c in value):
        raise ValidationFailed.one("header", HEADER, f"must be 1 to {MAX_LENGTH} printable ASCII characters, once")
    return value


class Idempotency(Service):
    def __init__(self, deps: Deps, settlements: Settlements) -> None:
        super().__init__(deps)
        self.settlements = settlements

    async def claim(self, key: ApiKey, idem_key: str, fingerprint: str) -> StoredResponse | None:
        """The stored response to replay, or None: this request runs (409/422 when it may not)."""
        claim, stored = await self.store.claim_idempotency(key.id, idem_key, fingerprint, IDEMPOTENCY_TTL_S)
        if claim is Claim.MISMATCH:
            raise ValidationFailed.one("header", HEADER, "this key was used for a different request in the last 24 h")
        if claim is Claim.RUNNING:
            raise Conflict(IN_PROGRESS)
        if claim is Claim.REPLAY:
            assert stored is not None
            return stored
        return None

    async def settle(self, key: ApiKey, idem_key: str, response: StoredResponse | None) -> None:
        """Store the 2xx response under the key, or release the key (``None``: the request did not succeed)."""
        try:
            if response is not None:
                await asyncio.shield(self.store.store_idempotent(key.id, idem_key, response))
            else:
                await asyncio.shield(self.store.release_idempotency(key.id, idem_key))
        except DatabaseUnavailable:
            # released once the database is back, so a retry runs; the response itself stands (a 2xx was
            # charged and stored with its result, and is the client's; an error is already on its way)
            await self.settlements.owe_release(key.id, idem_key)
