"""Which model version serves a request: the versions ready in the model tier, the routing the store keeps
(``maskserve models``), and the requests in flight per version that a promotion drains on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterator

from maskserve.frontend.domain.accounts import ApiKey, now
from maskserve.frontend.domain.jobs import Failure
from maskserve.frontend.domain.models import FrontendReport, ModelInfo, Route, Routing
from maskserve.frontend.errors import InferenceUnavailable, Unavailable
from maskserve.frontend.services.base import Deps, Service

log = logging.getLogger("maskserve.frontend")

FOLLOW_INTERVAL_S = 0.5


class ModelRouting(Service):
    def __init__(self, deps: Deps) -> None:
        super().__init__(deps)
        self.inference = deps.inference
        self.models: list[ModelInfo] | None = None  # the serving version's, for /readyz
        self.routing = Routing()  # followed from the store (``maskserve models``)
        self.ready: set[str] = set()  # versions READY in every model, followed from the model tier
        self.variants: dict[str, str] = {}  # version -> model variant, for X-Model-Version
        self.in_flight: Counter[str] = Counter()  # requests (and shadow copies) running, by version

    async def refresh(self) -> list[ModelInfo]:
        """The versions ready, and the provenance of the one unpinned traffic goes to (checked READY)."""
        try:
            self.ready = await self.inference.ready_versions()
            version = self.routing.serving(self.ready)
            if version is None:
                raise InferenceUnavailable("no model version is loaded in every model")
            if self.models is None or self.models[0].version != version:
                self.models = await self.inference.model_info(version)
                self.variants[version] = self.models[0].variant
            for ready in self.ready - set(self.variants):
                self.variants[ready] = (await self.inference.model_info(ready))[0].variant
        except InferenceUnavailable:
            self.models = None
            raise
        return self.models

    def label(self, version: str) -> str:
        """``variant/version``, as ``X-Model-Version`` shows it."""
        return f"{self.variants.get(version, 'sam2')}/{version}"

    async def known(self) -> None:
        """The versions ready are known (asked of the model tier if not yet); 503 if it cannot say."""
        if self.models is None or not self.ready:
            try:
                await self.refresh()
            except InferenceUnavailable as exc:
                raise Unavailable(Failure.UNAVAILABLE) from exc

    async def route(self, key: ApiKey, digest: str) -> Route:
        """The version serving this key's image (its pin, a canary, or the promoted one), and a shadow."""
        await self.known()
        try:
            return self.routing.route(key.pinned_version, digest, self.ready)
        except LookupError as exc:
            raise Unavailable(Failure.UNAVAILABLE) from exc

    async def route_video(self, video_id: str, pinned: str | None = None) -> Route:
        """The version serving a video: routed by its id as an image by its digest (the same on every call)."""
        await self.known()
        try:
            return self.routing.route(pinned, video_id, self.ready)
        except LookupError as exc:
            raise Unavailable(Failure.UNAVAILABLE) from exc

    @contextlib.contextmanager
    def running(self, versions: list[str]) -> Iterator[None]:
        """Count requests in flight per version (reported to the store; a promotion drains on them)."""
        self.in_flight.update(versions)
        try:
            yield
        finally:
            self.in_flight.subtract(versions)

    def in_flight_now(self) -> dict[str, int]:
        return {version: n for version, n in self.in_flight.items() if n > 0}

    async def start(self, triton_url: str) -> None:
        """Read the routing, and say which models serve (and whether their weights are random)."""
        self.routing = await self.store.get_routing()
        try:
            for m in await self.refresh():
                log.info("model %s version %s: %s, weights %s", m.name, m.version, m.variant, m.weights)
                if m.random_weights:
                    log.warning("%s runs RANDOM WEIGHTS: masks are meaningless", m.name)
        except InferenceUnavailable as exc:
            log.warning("Triton at %s is not ready yet (%s); requests get 503 until it is", triton_url, exc)

    async def follow(self, frontend_id: str, interval: float = FOLLOW_INTERVAL_S) -> None:
        """Follow the routing `maskserve models` keeps in the store, and report back what this frontend runs.

        The report (the routing generation now followed, requests in flight per
        version) is written after the new routing took effect, so once every
        frontend reports a generation, no new request goes to a version that
        generation retired, and the in-flight counts say when the old ones ended.
        """
        while True:
            try:
                routing = await self.store.get_routing()
                if routing != self.routing:
                    self.routing = routing
                    log.info("model routing %d: %s", routing.generation, routing.to_json())
                with contextlib.suppress(InferenceUnavailable):  # Triton briefly away: keep the versions known
                    before = self.models[0].version if self.models else None
                    models = await self.refresh()
                    if models[0].version != before:
                        log.info("traffic now goes to model version %s (%s)", models[0].version, models[0].weights)
                report = FrontendReport(frontend_id, routing.generation, self.in_flight_now(), now())
                await self.store.report_frontend(report)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store briefly away: keep the current routing
                log.warning("could not follow the model routing: %s", exc)
            await asyncio.sleep(interval)

    async def forget(self, frontend_id: str) -> None:
        with contextlib.suppress(Exception):
            await self.store.forget_frontend(frontend_id)
