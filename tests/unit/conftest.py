"""The unit tier's fixtures: the real app and a real SQLite store, with a fake inference client.

Nothing here exports a model or starts Triton; every behaviour faked here is
also shown through the real Triton in tests/integration.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from maskserve.core.signatures import LOW_RES_MASK_SIZE
from maskserve.frontend.app import create_app
from maskserve.frontend.config import Settings
from maskserve.frontend.domain import Embeddings, ModelInfo
from maskserve.frontend.errors import InferenceUnavailable
from maskserve.frontend.http.state import STORE


class FakeInference:
    """Stands in for Triton: a mask is a disc of radius 100 (model frame) around the first prompt point."""

    def __init__(self) -> None:
        self.encodes = 0
        self.decodes = 0
        self.down = False
        self.encode_delay = 0.0

    def _check(self) -> None:
        if self.down:
            raise InferenceUnavailable("fake Triton is down")

    async def encode(self, image: np.ndarray, version: str = "") -> Embeddings:
        self._check()
        self.encodes += 1
        await asyncio.sleep(self.encode_delay)
        tiny = np.zeros((1, 1, 1, 1), np.float32)
        return Embeddings(tiny, tiny.copy(), tiny.copy())

    async def decode(
        self,
        emb: Embeddings,
        point_coords: np.ndarray,
        point_labels: np.ndarray,
        mask_input: np.ndarray | None = None,
        version: str = "",
    ) -> tuple[np.ndarray, np.ndarray]:
        self._check()
        self.decodes += 1
        cx, cy = point_coords[0] / 4  # model frame (1024) -> low-res mask (256)
        yy, xx = np.mgrid[0:LOW_RES_MASK_SIZE, 0:LOW_RES_MASK_SIZE]
        disc = np.where((xx - cx) ** 2 + (yy - cy) ** 2 < 25**2, 10.0, -10.0).astype(np.float32)
        return np.stack([disc] * 4), np.array([0.9, 0.5, 0.8, 0.7], np.float32)

    async def latest_ready_version(self) -> str:
        self._check()
        return "1"

    async def model_info(self, version: str) -> list[ModelInfo]:
        self._check()
        return [ModelInfo(name, version, "sam2.1_hiera_tiny", "random (seed 0)") for name in ("enc", "dec")]

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
