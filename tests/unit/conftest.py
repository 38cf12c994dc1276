"""The unit tier's fixtures: the real app and a real SQLite store, with a fake inference client.

Nothing here exports a model or starts Triton; every behaviour faked here is
also shown through the real Triton in tests/integration.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from maskserve.core.prompts import PackedPrompt
from maskserve.core.signatures import LOW_RES_MASK_SIZE
from maskserve.frontend.app import create_app
from maskserve.frontend.config import Settings
from maskserve.frontend.domain import ModelInfo, Segmentation
from maskserve.frontend.errors import InferenceUnavailable
from maskserve.frontend.http.state import STORE


class FakeInference:
    """Stands in for the model tier: a mask is a disc of radius 100 (model frame) around the first prompt point.

    Like the session model, it holds the images it has seen (by digest) and
    counts the times it had to "encode" one.
    """

    def __init__(self) -> None:
        self.encodes = 0
        self.decodes = 0
        self.down = False
        self.seen: set[str] = set()
        self.reject: str = ""
        self.versions = {"1"}  # loaded versions; version N draws its disc a little larger than version 1
        self.calls: list[str] = []  # the version of every segment call

    def _check(self) -> None:
        if self.down:
            raise InferenceUnavailable("fake Triton is down")

    async def segment(self, digest: str, image: bytes, prompt: PackedPrompt, version: str) -> Segmentation:
        self._check()
        if version not in self.versions:
            raise InferenceUnavailable(f"version {version} is not loaded")
        self.calls.append(version)
        if self.reject:
            return Segmentation(rejected=self.reject)
        encoded = digest not in self.seen
        if encoded:
            self.encodes += 1
            self.seen.add(digest)
        self.decodes += 1
        cx, cy = prompt.point_coords[0] / 4  # model frame (1024) -> low-res mask (256)
        yy, xx = np.mgrid[0:LOW_RES_MASK_SIZE, 0:LOW_RES_MASK_SIZE]
        radius = 25 + 5 * (int(version) - 1)
        disc = np.where((xx - cx) ** 2 + (yy - cy) ** 2 < radius**2, 10.0, -10.0).astype(np.float32)
        return Segmentation(logits=disc, score=0.9, encoded=encoded)

    async def ready_versions(self) -> set[str]:
        self._check()
        return set(self.versions)

    async def model_info(self, version: str) -> list[ModelInfo]:
        self._check()
        return [ModelInfo(name, version, "sam2.1_hiera_tiny", "random (seed 0)") for name in ("enc", "dec", "session")]

    async def close(self) -> None:
        pass


@pytest.fixture()
def fake() -> FakeInference:
    return FakeInference()


@pytest.fixture()
def make_client(aiohttp_client, tmp_path, fake) -> Callable:
    async def make(**overrides):
        settings = Settings(data_dir=tmp_path / "data", **overrides)
        return await aiohttp_client(create_app(settings, inference=fake))

    return make


@pytest.fixture()
async def client(make_client):
    return await make_client()


@pytest.fixture()
def new_key(client) -> Callable:
    async def create(credits: int = 10) -> tuple[str, str]:
        key, secret = await client.app[STORE].create_key("unit", credits)
        return key.id, secret

    return create
