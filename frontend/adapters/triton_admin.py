"""Triton's admin side over gRPC: which versions are ready, their provenance, loading, unloading, warm-up.

``TritonAdmin`` speaks to one server; the model tier uses it for readiness and
provenance, and ``TritonFleet`` (the ``ModelAdmin`` port of the lifecycle
service, ``maskserve models``) makes each change on every replica of a
deployment. Every version of a model is a Triton model of its own
(``signatures.served_name``) with its own ``config.pbtxt``, so loading or
unloading a version is a load or an unload of its three models, and the
versions beside it keep their instances and their stores untouched.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from maskserve.core import signatures as sig
from maskserve.core.prompts import pack_prompt
from maskserve.frontend.domain.models import ModelInfo, ready_everywhere
from maskserve.frontend.errors import InferenceUnavailable, LifecycleRefused

ADMIN_TIMEOUT_S = 5.0
LOAD_TIMEOUT_S = 300.0


def _input(name: str, array: np.ndarray) -> grpcaio.InferInput:
    dtype = {np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32"}[array.dtype]
    tensor = grpcaio.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def _ready(entries: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Version -> its lifecycle models a repository index lists as READY."""
    return sig.releases(e.get("name", "") for e in entries if e.get("state") == "READY")


def ready_of(entries: list[dict[str, Any]], model: str) -> set[str]:
    """The versions of ``model`` whose served model a repository index lists as READY."""
    return {version for version, models in _ready(entries).items() if model in models}


class TritonAdmin:
    """One Triton server's repository, readiness and configuration; every failure is ``InferenceUnavailable``."""

    def __init__(self, url: str, client: grpcaio.InferenceServerClient) -> None:
        self.url = url
        self.client = client

    async def _call(self, coro: Any) -> Any:
        try:
            return await coro
        except (InferenceServerException, grpc.aio.AioRpcError) as exc:
            raise InferenceUnavailable(f"{self.url}: {exc}") from exc

    async def index(self) -> list[dict[str, Any]]:
        """Every model version Triton knows in its repository, with its state."""
        found = await self._call(self.client.get_model_repository_index(as_json=True, client_timeout=ADMIN_TIMEOUT_S))
        return list(found.get("models", []))

    async def ready_versions(self) -> set[str]:
        """The versions every lifecycle model has READY on this server."""
        entries = await self.index()
        return ready_everywhere(ready_of(entries, model) for model in sig.LIFECYCLE_MODELS)

    async def model_info(self, version: str) -> list[ModelInfo]:
        """Readiness and provenance of ``version`` of every model; raises if one is not ready."""
        infos = []
        for model in sig.LIFECYCLE_MODELS:
            name = sig.served_name(model, version)
            if not await self._call(self.client.is_model_ready(name, client_timeout=ADMIN_TIMEOUT_S)):
                raise InferenceUnavailable(f"{self.url}: {name} is not ready")
            found = await self._call(self.client.get_model_config(name, client_timeout=ADMIN_TIMEOUT_S))
            params = {k: v.string_value for k, v in found.config.parameters.items()}
            variant, weights = params.get("maskserve_model", "unknown"), params.get("maskserve_weights", "unknown")
            infos.append(ModelInfo(name=model, version=version, variant=variant, weights=weights))
        return infos

    async def load(self, version: str) -> bool:
        """Load ``version``'s models that are not READY here, all at once, each graph that needs it warmed up by
        one real call as soon as it is loaded (``_needs_warm_up``); → whether any was loaded. The models already
        loaded, of any version, are not touched."""
        entries = await self.index()
        missing = [model for model in sig.LIFECYCLE_MODELS if version not in ready_of(entries, model)]

        async def one(model: str) -> None:
            await self._load_model(model, version)
            if await self._needs_warm_up(model, version):
                await self._call(self.client.infer(sig.served_name(model, version), _warm_up_inputs(model)))

        await asyncio.gather(*(one(model) for model in missing))
        return bool(missing)

    async def _needs_warm_up(self, model: str, version: str) -> bool:
        """Whether the first call of a graph costs more than the call itself saves by being made now.

        The decoder's first OpenVINO run takes about 3x a later one (139 ms against 50 ms), and TensorRT
        (the ``gpu`` target) builds its engines on the first run. The ``cpu`` target's encoder (the python
        backend running OpenVINO) is only slower by a quarter the first time (1.28 s against 1.0 s): warming
        it up would spend a whole encoder run, on the cores the traffic uses, to save 0.28 s once.
        """
        if model == sig.DECODER_MODEL:
            return True
        if model != sig.ENCODER_MODEL:
            return False
        found = await self._call(
            self.client.get_model_config(sig.served_name(model, version), client_timeout=ADMIN_TIMEOUT_S)
        )
        return bool(found.config.backend != "python")

    async def _load_model(self, model: str, version: str) -> None:
        name = sig.served_name(model, version)
        try:
            await self.client.load_model(name, client_timeout=LOAD_TIMEOUT_S)
        except (InferenceServerException, grpc.aio.AioRpcError) as exc:
            loaded = ", ".join(sorted(ready_of(await self.index(), model), key=int)) or "none"
            raise LifecycleRefused(
                f"{self.url} could not load {name} (is version {version} exported in the repository this Triton "
                f"serves?): {exc}; loaded versions: {loaded}"
            ) from exc

    async def unload(self, version: str) -> None:
        """Unload ``version``'s models (the session first: it calls the graphs); the other versions run on."""
        for model in (sig.SESSION_MODEL, sig.ENCODER_MODEL, sig.DECODER_MODEL):
            await self._call(self.client.unload_model(sig.served_name(model, version), client_timeout=ADMIN_TIMEOUT_S))
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while version in _ready(await self.index()):
            if time.monotonic() > deadline:
                raise LifecycleRefused(
                    f"{self.url}: version {version} still READY {LOAD_TIMEOUT_S:.0f} s after unloading"
                )
            await asyncio.sleep(0.1)


def _warm_up_inputs(model: str) -> list[grpcaio.InferInput]:
    """One item of zeros for ``model`` (a point in the middle for the decoder)."""
    if model == sig.ENCODER_MODEL:
        return [_input("image", np.zeros((1, 3, sig.IMAGE_SIZE, sig.IMAGE_SIZE), np.float32))]
    coords, labels = pack_prompt(np.array([[512.0, 512.0]]), np.array([1]), None)
    arrays = {spec.name: np.zeros((1, *spec.dims), np.float32) for spec in sig.ENCODER_OUTPUTS}
    arrays.update(
        point_coords=coords[None],
        point_labels=labels[None],
        mask_input=np.zeros((1, 1, sig.LOW_RES_MASK_SIZE, sig.LOW_RES_MASK_SIZE), np.float32),
        has_mask_input=np.zeros((1, 1), np.float32),
    )
    return [_input(name, array) for name, array in arrays.items()]


class TritonFleet:
    """The Triton servers of one deployment (``ModelAdmin``): every change is made on each of them."""

    def __init__(self, urls: list[str], repository: Path) -> None:
        self.urls = urls
        self.repository = repository
        self.servers = [TritonAdmin(url, grpcaio.InferenceServerClient(url)) for url in urls]

    async def close(self) -> None:
        for server in self.servers:
            await server.client.close()

    async def indexes(self) -> list[tuple[str, list[dict[str, Any]]]]:
        return [(server.url, await server.index()) for server in self.servers]

    async def loaded(self) -> set[str]:
        """Versions READY in every model on every replica."""
        return ready_everywhere([await server.ready_versions() for server in self.servers])

    async def load(self, version: str) -> list[str]:
        """Load ``version`` beside the loaded ones on every replica at once, each with its own configuration,
        then warm it up where it was not loaded yet; → what happened on each replica."""
        for model in sig.LIFECYCLE_MODELS:
            path = self.repository / sig.served_name(model, version)
            if not (path / "config.pbtxt").is_file():
                raise LifecycleRefused(
                    f"{path} does not exist: export version {version} first "
                    f"(or pass --model-repository, the directory the Tritons serve)"
                )

        async def on(server: TritonAdmin) -> str:
            started = time.monotonic()
            if not await server.load(version):
                return f"{server.url}: version {version} already loaded"
            return f"{server.url}: version {version} loaded and warmed up in {time.monotonic() - started:.1f} s"

        return list(await asyncio.gather(*(on(server) for server in self.servers)))

    async def unload(self, versions: set[str]) -> None:
        """Unload ``versions`` on every replica; the versions that stay are not touched."""
        for server in self.servers:
            entries = await server.index()
            loaded = ready_everywhere(ready_of(entries, model) for model in sig.LIFECYCLE_MODELS)
            if loaded and not loaded - versions:
                raise LifecycleRefused(f"{server.url}: refusing to unload every loaded version")
        for server in self.servers:
            for version in sorted(versions, key=int):
                await server.unload(version)
