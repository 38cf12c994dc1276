"""Who is calling, and whether their rate limit lets them: the auth middleware's one question."""

from __future__ import annotations

from maskserve.frontend.domain.accounts import KEY_PREFIX, ApiKey, RateBucket, RateDecision
from maskserve.frontend.errors import Unauthorized
from maskserve.frontend.services.base import Deps, Service


class Access(Service):
    def __init__(self, deps: Deps) -> None:
        super().__init__(deps)
        self.limits = deps.limits

    async def authenticate(self, authorization: str) -> ApiKey:
        """The key an ``Authorization: Bearer sk-live-…`` header names; 401 for anything else."""
        scheme, _, secret = authorization.partition(" ")
        secret = secret.strip()
        if scheme.lower() != "bearer" or not secret.startswith(KEY_PREFIX) or len(secret) > 128:
            raise Unauthorized()
        key = await self.store.authenticate(secret)
        if key is None:
            raise Unauthorized()
        return key

    async def rate(self, key: ApiKey, bucket: RateBucket) -> RateDecision:
        """Count this request in the key's window for ``bucket`` (refused ones are not counted)."""
        return await self.limits.check(key.id, bucket)
