"""The unit tier's fixtures: the real app and a real SQLite store, with a fake inference client.

Nothing here exports a model or starts Triton; every behaviour faked here is
also shown through the real Triton in tests/integration.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from maskserve.frontend.app import create_app
from maskserve.frontend.config import Settings
from maskserve.frontend.http.state import STORE
from tests.plugins.fake_inference import FakeInference


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
