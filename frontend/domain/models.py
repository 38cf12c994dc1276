"""Model versions: what each one is, which traffic it serves (routing, canaries) and how a candidate compares."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

ACTIVE_MODEL_VERSION = "active_model_version"
"""Service state of older releases: the promoted version (now part of ``MODEL_ROUTING``)."""
MODEL_ROUTING = "model_routing"
"""Service state: which model version serves what (``Routing`` as JSON, set by ``maskserve models``)."""


def ready_everywhere(ready_sets: Iterable[set[str]]) -> set[str]:
    """The versions in every one of ``ready_sets`` (each model on each replica): the one place this is decided."""
    common: set[str] | None = None
    for ready in ready_sets:
        common = set(ready) if common is None else common & ready
    return common or set()


def newest(versions: Iterable[str]) -> str | None:
    return max(versions, key=int, default=None)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    variant: str
    weights: str

    @property
    def random_weights(self) -> bool:
        return self.weights.startswith("random")


@dataclass(frozen=True)
class Canary:
    """A candidate version taking ``percent`` % of unpinned images (or, with ``shadow``, a copy of them)."""

    version: str
    percent: float
    shadow: bool = False
    started_at: float = 0.0


@dataclass(frozen=True)
class Route:
    version: str  # the version that serves the request
    shadow: str | None = None  # a candidate that gets a copy of it, compared and never billed


def traffic_bucket(digest: str) -> float:
    """Where an image falls in [0, 100): a stable function of its SHA-256, so an image keeps its version."""
    return int(digest[:12], 16) % 10_000 / 100


@dataclass(frozen=True)
class Routing:
    """Which model version serves what, shared by every frontend through the store.

    ``generation`` grows with every change; each frontend reports the
    generation it follows and its requests in flight per version, which is
    how a promotion knows when a version it is about to unload is idle.
    ``retiring`` versions take no new requests (they are being unloaded).
    """

    generation: int = 0
    active: str | None = None  # None: the newest version loaded
    canary: Canary | None = None
    retiring: tuple[str, ...] = field(default_factory=tuple)

    def serving(self, ready: Iterable[str]) -> str | None:
        """The version unpinned traffic goes to: the promoted one, else the newest of ``ready``."""
        return self.active or newest(ready)

    def route(self, pinned: str | None, digest: str, ready: Iterable[str]) -> Route:
        """The version for one image of a key pinned to ``pinned`` (or not), given the versions ready."""
        usable = {v for v in ready if v not in self.retiring}
        if pinned is not None and pinned in usable:
            return Route(pinned)
        base = self.serving(usable)
        if base is None:
            raise LookupError("no model version is ready")
        canary = self.canary
        if canary is None or canary.version not in usable or canary.version == base:
            return Route(base)
        if traffic_bucket(digest) >= canary.percent:
            return Route(base)
        return Route(base, shadow=canary.version) if canary.shadow else Route(canary.version)

    def changed(self, **changes: Any) -> Routing:
        return replace(self, generation=self.generation + 1, **changes)

    def describe(self) -> str:
        parts = [f"active version {self.active or '(newest loaded)'}"]
        if self.canary is not None:
            c = self.canary
            parts.append(f"canary version {c.version} at {c.percent:g} %{' (shadow)' if c.shadow else ''}")
        if self.retiring:
            parts.append(f"unloaded or unloading {', '.join(self.retiring)}")
        return "; ".join(parts)

    def to_json(self) -> str:
        canary = None if self.canary is None else self.canary.__dict__
        return json.dumps(
            {"generation": self.generation, "active": self.active, "canary": canary, "retiring": list(self.retiring)}
        )

    @classmethod
    def from_json(cls, text: str | None, legacy_active: str | None = None) -> Routing:
        if not text:
            return cls(active=legacy_active)
        data = json.loads(text)
        canary = data.get("canary")
        return cls(
            generation=int(data.get("generation", 0)),
            active=data.get("active"),
            canary=Canary(**canary) if canary else None,
            retiring=tuple(data.get("retiring", ())),
        )


@dataclass(frozen=True)
class FrontendReport:
    """What one frontend last told the store: the routing generation it follows, and its work in flight."""

    id: str
    generation: int
    in_flight: dict[str, int]
    seen_at: float


@dataclass(frozen=True)
class ShadowResult:
    """One shadowed prompt: the candidate's mask against the served one (IoU), or the candidate's error."""

    candidate: str
    baseline: str
    iou: float | None
    latency_ms: float
    error: str | None = None
