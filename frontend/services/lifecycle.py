"""The model lifecycle (``maskserve models``): loading versions, routing traffic between them, draining and
retiring the old ones, and reporting how each one serves.

Which version serves what lives in the store (``Routing``): the promoted
version, a canary (a share of unpinned images, or a shadow copy of them), and
versions being retired. Every frontend follows it and reports the generation
it follows and its requests in flight per version; a version is unloaded once
every frontend follows the new routing and none has a request on it (or the
drain bound passed). Keys pinned to a version (``maskserve keys pin``) keep it
loaded through promotions unless forced. The CLI only parses and prints.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from maskserve.core import signatures as sig
from maskserve.frontend.domain.accounts import now
from maskserve.frontend.domain.models import Canary, Routing, newest
from maskserve.frontend.errors import LifecycleRefused
from maskserve.frontend.ports import ModelAdmin, Store

STALE_REPORT_S = 5.0
"""A frontend that has not reported for this long is gone (they report twice a second)."""


@dataclass(frozen=True)
class Say:
    """Where the lifecycle tells the operator what it does (``info``) and what went other than planned."""

    info: Callable[[str], None]
    warn: Callable[[str], None]


def _versions(versions: set[str]) -> str:
    return ", ".join(sorted(versions, key=int))


class Lifecycle:
    def __init__(self, store: Store, admin: ModelAdmin, say: Say) -> None:
        self.store = store
        self.admin = admin
        self.say = say

    async def pinned_versions(self) -> dict[str, list[str]]:
        """Version -> ids of the active keys pinned to it."""
        pins: dict[str, list[str]] = {}
        for key in await self.store.list_keys():
            if key.active and key.pinned_version:
                pins.setdefault(key.pinned_version, []).append(key.id)
        return pins

    async def drain(self, routing: Routing, leaving: set[str], seconds: float) -> None:
        """Wait until every frontend follows ``routing`` and none has a request on ``leaving`` (at most ``seconds``)."""
        if not leaving:
            return
        started = time.monotonic()
        names = _versions(leaving)
        while True:
            reports = await self.store.frontend_reports(now() - STALE_REPORT_S)
            behind = [r.id for r in reports if r.generation < routing.generation]
            busy = sum(r.in_flight.get(v, 0) for r in reports for v in leaving)
            waited = time.monotonic() - started
            if not behind and busy == 0:
                self.say.info(
                    f"drained in {waited:.1f} s: {len(reports)} frontend(s) follow routing {routing.generation}, "
                    f"no request in flight on version {names}"
                )
                return
            if waited > seconds:
                self.say.warn(
                    f"drain bound of {seconds:.0f} s reached: {busy} request(s) still on version {names}, "
                    f"{len(behind)} frontend(s) not yet following routing {routing.generation}; unloading anyway"
                )
                return
            await asyncio.sleep(0.1)

    async def _retire(self, changes: Callable[[Routing], dict[str, Any]], leaving: set[str], seconds: float) -> Routing:
        """Change the routing (``leaving`` marked retiring), drain ``leaving``, unload it."""

        def change(routing: Routing) -> Routing:
            fields = changes(routing)
            retiring = set(fields.pop("retiring", routing.retiring)) | leaving
            return routing.changed(retiring=tuple(sorted(retiring, key=int)), **fields)

        routing = await self.store.update_routing(change)
        self.say.info(f"routing {routing.generation}: {routing.describe()}")
        await self.drain(routing, leaving, seconds)
        if leaving:
            await self.admin.unload(leaving)
            self.say.info(f"version {_versions(leaving)} unloaded")
        return routing

    async def _load(self, version: str) -> None:
        for line in await self.admin.load(version):
            self.say.info(line)

    async def _hold_active(self) -> None:
        """Before loading another version: with nothing promoted yet, the newest loaded one stays active.

        Unpinned traffic otherwise goes to the newest version loaded, and loading
        a candidate would switch everyone to it before any canary.
        """
        routing = await self.store.get_routing()
        loaded = newest(await self.admin.loaded())
        if routing.active is None and loaded is not None:
            await self.store.update_routing(lambda r: r if r.active is not None else r.changed(active=loaded))
            self.say.info(f"version {loaded} (the newest loaded) is now recorded as the active version")

    async def load(self, version: str) -> Routing:
        """Load ``version`` beside the others (traffic unchanged): it is no longer retired."""
        await self._hold_active()
        await self._load(version)
        return await self.store.update_routing(_loaded_again(version))

    async def promote(self, version: str, drain_seconds: float, force: bool = False) -> Routing:
        """Load and warm up ``version``, switch unpinned traffic to it, drain and unload the others."""
        await self._load(version)
        pins = await self.pinned_versions()
        leaving = await self.admin.loaded() - {version}
        kept = {v for v in leaving if v in pins} if not force else set()
        for v in sorted(kept, key=int):
            self.say.info(f"version {v} stays loaded: {len(pins[v])} key(s) pinned to it (unpin them, or --force)")
        previous = (await self.store.get_routing()).active
        self.say.info(f"switching traffic to version {version} (was {previous or 'the newest loaded'})")
        routing = await self._retire(
            lambda r: {
                "active": version,
                "canary": None,
                "retiring": [v for v in r.retiring if v not in kept | {version}],
            },
            leaving - kept,
            drain_seconds,
        )
        self.say.info(f"version {version} promoted")
        return routing

    async def unload(self, version: str, drain_seconds: float, force: bool = False) -> Routing:
        """Stop sending traffic to ``version``, drain it, then unload it."""
        routing = await self.store.get_routing()
        if routing.active == version:
            raise LifecycleRefused(f"version {version} is active; promote another version first")
        pins = await self.pinned_versions()
        if version in pins and not force:
            raise LifecycleRefused(
                f"{len(pins[version])} key(s) are pinned to version {version} ({', '.join(pins[version])}); "
                "unpin them (maskserve keys unpin KEY_ID) or pass --force"
            )
        canary = routing.canary if routing.canary is None or routing.canary.version != version else None
        return await self._retire(lambda r: {"canary": canary}, {version}, drain_seconds)

    async def canary(self, version: str | None, percent: float | None, shadow: bool, off: bool) -> Routing:
        """Send ``percent`` % of unpinned images to ``version`` (or a shadow copy of them); ``off`` ends it."""
        if off:
            routing = await self.store.update_routing(lambda r: r.changed(canary=None))
            self.say.info(f"canary ended; routing {routing.generation}: {routing.describe()}")
            return routing
        if version is None or percent is None:
            raise LifecycleRefused("give VERSION and --percent P (or --off)")
        if not 0 <= percent <= 100:
            raise LifecycleRefused("--percent must be between 0 and 100")
        if version == (await self.store.get_routing()).active:
            raise LifecycleRefused(f"version {version} is the active version; a canary needs another one")
        if version not in await self.admin.loaded():
            await self._hold_active()
            await self._load(version)
        chosen = Canary(version, float(percent), shadow, now())
        routing = await self.store.update_routing(_loaded_again(version, canary=chosen))
        self.say.info(f"routing {routing.generation}: {routing.describe()}")
        return routing

    async def listing(self) -> list[str]:
        """The versions in every Triton with their state, the routing, the pins and the frontends reporting."""
        lines = [f"{'triton':22s} {'model':22s} {'version':>7s}  state"]
        for url, index in await self.admin.indexes():
            served = [(release, m.get("state", "")) for m in index if (release := sig.release_of(m["name"]))]
            for (model, version), state in sorted(served, key=lambda s: (s[0][0], int(s[0][1]))):
                lines.append(f"{url:22s} {model:22s} {version:>7s}  {state}")
        routing = await self.store.get_routing()
        lines.append(f"routing {routing.generation}: {routing.describe()}")
        lines.append(f"active version: {routing.active or '(newest loaded)'}")
        for version, keys in sorted((await self.pinned_versions()).items()):
            lines.append(f"pinned to version {version}: {len(keys)} key(s) ({', '.join(keys)})")
        reports = await self.store.frontend_reports(now() - STALE_REPORT_S)
        lines.append(f"frontends reporting: {len(reports)}")
        return lines

    async def report(self, since_minutes: float | None) -> dict[str, Any]:
        """Per version: requests, latency and errors; per candidate: the shadow IoU distribution."""
        routing = await self.store.get_routing()
        if since_minutes is not None:
            since = now() - since_minutes * 60
        elif routing.canary is not None:
            since = routing.canary.started_at
        else:
            since = now() - 3600
        return {**await version_report(self.store, since), "routing": routing}


def _loaded_again(version: str, **changes: Any) -> Callable[[Routing], Routing]:
    """The routing once ``version`` is loaded again (no longer retired), with ``changes``."""
    return lambda r: r.changed(retiring=tuple(v for v in r.retiring if v != version), **changes)


def _quantile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


async def version_report(store: Store, since: float) -> dict[str, Any]:
    """Per version: requests, latency and errors; per candidate: the shadow IoU distribution."""
    versions: dict[str, dict[str, Any]] = {}
    for version, status, ms in await store.version_requests(since):
        row = versions.setdefault(version, {"requests": 0, "completed": 0, "errors": 0, "ms": []})
        row["requests"] += 1
        if status == "completed":
            row["completed"] += 1
            row["ms"].append(ms or 0.0)
        elif status == "failed":
            row["errors"] += 1
    for row in versions.values():
        times = row.pop("ms")
        row["p50_ms"], row["p99_ms"] = _quantile(times, 50), _quantile(times, 99)
    shadows: dict[str, dict[str, Any]] = {}
    for result in await store.shadow_results(since):
        row = shadows.setdefault(
            result.candidate, {"baseline": result.baseline, "compared": 0, "errors": 0, "iou": [], "ms": []}
        )
        row["ms"].append(result.latency_ms)
        if result.iou is None:
            row["errors"] += 1
        else:
            row["compared"] += 1
            row["iou"].append(result.iou)
    for row in shadows.values():
        ious, times = row.pop("iou"), row.pop("ms")
        row["iou_mean"] = float(np.mean(ious)) if ious else None
        row["iou_p5"] = _quantile(ious, 5)
        row["share_below_0.9"] = float(np.mean(np.array(ious) < 0.9)) if ious else None
        row["p50_ms"] = _quantile(times, 50)
    return {"since": since, "versions": versions, "shadow": shadows}
