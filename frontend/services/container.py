"""Every service of one frontend, built over one set of ports, with the background work they run."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field

from maskserve.frontend.ports import Journal, WebhookSender
from maskserve.frontend.services.access import Access
from maskserve.frontend.services.base import Deps
from maskserve.frontend.services.deferred import AsyncRequests
from maskserve.frontend.services.handles import ImageHandles
from maskserve.frontend.services.housekeeping import Housekeeping
from maskserve.frontend.services.idempotency import Idempotency
from maskserve.frontend.services.images import ImageRequests
from maskserve.frontend.services.preparation import Preparation
from maskserve.frontend.services.propagation import Propagations
from maskserve.frontend.services.reads import Reads
from maskserve.frontend.services.routing import ModelRouting
from maskserve.frontend.services.running import Runner
from maskserve.frontend.services.settlement import Settlements
from maskserve.frontend.services.shadow import Shadows
from maskserve.frontend.services.videos import VideoSessions
from maskserve.frontend.services.webhooks import Webhooks


@dataclass
class Services:
    deps: Deps
    access: Access
    routing: ModelRouting
    images: ImageRequests
    later: AsyncRequests
    reads: Reads
    idempotency: Idempotency
    housekeeping: Housekeeping
    webhooks: Webhooks
    shadows: Shadows
    handles: ImageHandles
    settlements: Settlements
    videos: VideoSessions
    propagations: Propagations
    frontend_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def build(cls, deps: Deps, sender: WebhookSender, journal: Journal) -> Services:
        routing = ModelRouting(deps)
        shadows = Shadows(deps, routing)
        handles = ImageHandles(deps)
        settlements = Settlements(deps, journal)
        preparation = Preparation(deps, routing, handles)
        runner = Runner(deps, shadows, settlements)
        frontend_id = uuid.uuid4().hex
        later = AsyncRequests(deps, routing, preparation, runner, frontend_id)
        videos = VideoSessions(deps, routing, frontend_id)
        return cls(
            deps=deps,
            access=Access(deps),
            routing=routing,
            images=ImageRequests(deps, routing, preparation, runner, later),
            later=later,
            reads=Reads(deps, routing),
            idempotency=Idempotency(deps, settlements),
            housekeeping=Housekeeping(deps, later, handles, videos),
            handles=handles,
            webhooks=Webhooks(deps, sender),
            shadows=shadows,
            settlements=settlements,
            videos=videos,
            propagations=Propagations(videos),
            frontend_id=frontend_id,
        )

    async def start(self) -> None:
        """Settle what a previous run left, learn the models, resume accepted work, start the background loops."""
        await self.settlements.settle_once()
        deferred = await self.housekeeping.recover()
        await self.routing.start(self.deps.settings.triton_url)
        await self.housekeeping.resume(deferred)
        await self.propagations.resume(every=not self.deps.settings.shared)
        self._tasks = [
            asyncio.ensure_future(self.webhooks.run()),
            asyncio.ensure_future(self.settlements.run()),
            asyncio.ensure_future(self.later.leases()),
            asyncio.ensure_future(self.housekeeping.sweep()),
            asyncio.ensure_future(self.propagations.leases()),
            asyncio.ensure_future(self.routing.follow(self.frontend_id)),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.shadows.close()
        await self.later.close()
        await self.webhooks.sender.close()
        await self.routing.forget(self.frontend_id)
