"""Triton's admin side over gRPC: which versions are ready, their provenance, loading, unloading, warm-up.

``TritonAdmin`` speaks to one server; the model tier uses it for readiness and
provenance, and ``TritonFleet`` (the ``ModelAdmin`` port of the lifecycle
service, ``maskserve models``) makes each change on every replica of a
deployment. Loading a version sends Triton the configuration composed from
the version's own ``config.pbtxt`` on disk (``maskserve.triton.config``), so
the settings of the export being loaded always apply, never the ones Triton
held for another version.
"""

from __future__ import annotations

import asyncio
import json
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
from maskserve.triton import config as model_config

ADMIN_TIMEOUT_S = 5.0
LOAD_TIMEOUT_S = 300.0


def _input(name: str, array: np.ndarray) -> grpcaio.InferInput:
    dtype = {np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32"}[array.dtype]
    tensor = grpcaio.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def ready_of(entries: list[dict[str, Any]], model: str) -> set[str]:
    """The versions of ``model`` a repository index lists as READY."""
    return {e["version"] for e in entries if e.get("name") == model and e.get("state") == "READY" and e.get("version")}


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
            if not await self._call(self.client.is_model_ready(model, version, client_timeout=ADMIN_TIMEOUT_S)):
                raise InferenceUnavailable(f"{self.url}: {model} version {version} is not ready")
            found = await self._call(self.client.get_model_config(model, client_timeout=ADMIN_TIMEOUT_S))
            params = {k: v.string_value for k, v in found.config.parameters.items()}
            infos.append(
                ModelInfo(
                    name=model,
                    version=version,
                    variant=params.get(f"maskserve_model_v{version}", params.get("maskserve_model", "unknown")),
                    weights=params.get(f"maskserve_weights_v{version}", params.get("maskserve_weights", "unknown")),
                )
            )
        return infos

    async def load(self, model: str, config: str) -> None:
        await self._call(self.client.load_model(model, config=config))

    async def config(self, model: str) -> dict[str, Any]:
        found = await self._call(self.client.get_model_config(model, as_json=True, client_timeout=ADMIN_TIMEOUT_S))
        return dict(found["config"])

    async def check_loaded(self, version: str) -> None:
        """Right after a load: every model must list ``version``; one that does not has no such directory.

        Triton loads the versions it finds and says nothing to the client about a
        missing one, so without this a promote would wait for a version that can
        never become ready.
        """
        entries = await self.index()
        for model in sig.LIFECYCLE_MODELS:
            found = [e for e in entries if e["name"] == model and e.get("version") == version]
            if not found:
                loaded = ", ".join(sorted(ready_of(entries, model), key=int)) or "none"
                raise LifecycleRefused(
                    f"{model} has no version {version} in Triton's model repository; export it first "
                    f"(maskserve export ... --version {version}); loaded versions: {loaded}"
                )
            if found[0].get("state") not in ("READY", "LOADING"):
                state, reason = found[0].get("state"), found[0].get("reason", "")
                raise LifecycleRefused(f"{model} version {version} is {state}: {reason}")

    async def wait_ready(self, version: str) -> None:
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while True:
            ready = [await self._call(self.client.is_model_ready(m, version)) for m in sig.LIFECYCLE_MODELS]
            if all(ready):
                return
            if time.monotonic() > deadline:
                raise LifecycleRefused(f"version {version} not READY after {LOAD_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.5)

    async def warm_up(self, version: str) -> None:
        """One real encoder and decoder call on the new version before any client sees it."""
        image = np.zeros((1, 3, sig.IMAGE_SIZE, sig.IMAGE_SIZE), np.float32)
        result = await self._call(self.client.infer(sig.ENCODER_MODEL, [_input("image", image)], model_version=version))
        coords, labels = pack_prompt(np.array([[512.0, 512.0]]), np.array([1]), None)
        arrays = {spec.name: result.as_numpy(spec.name) for spec in sig.ENCODER_OUTPUTS}
        arrays.update(
            point_coords=coords[None],
            point_labels=labels[None],
            mask_input=np.zeros((1, 1, sig.LOW_RES_MASK_SIZE, sig.LOW_RES_MASK_SIZE), np.float32),
            has_mask_input=np.zeros((1, 1), np.float32),
        )
        inputs = [_input(name, array) for name, array in arrays.items()]
        await self._call(self.client.infer(sig.DECODER_MODEL, inputs, model_version=version))


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
        """Load ``version`` beside the loaded ones with its export's configuration, then warm it up; → what
        happened on each replica."""
        for model in sig.LIFECYCLE_MODELS:
            if not (self.repository / model / version).is_dir():
                raise LifecycleRefused(
                    f"{self.repository / model / version} does not exist: export version {version} first "
                    f"(or pass --model-repository, the directory the Tritons serve)"
                )
        done = []
        for server in self.servers:
            entries = await server.index()
            for model in sig.LIFECYCLE_MODELS:
                versions = ready_of(entries, model) | {version}
                config = model_config.compose(self.repository / model, versions, version)
                await server.load(model, model_config.to_json(model_config.with_versions(config, versions)))
            await server.check_loaded(version)
            await server.wait_ready(version)
            await server.warm_up(version)
            done.append(f"{server.url}: version {version} loaded with its own configuration and warmed up")
        return done

    async def unload(self, versions: set[str]) -> None:
        """Unload ``versions``; the versions that stay keep the configuration they are running with."""
        for server in self.servers:
            entries = await server.index()
            for model in sig.LIFECYCLE_MODELS:
                loaded = ready_of(entries, model)
                keep = loaded - versions
                if keep == loaded:
                    continue
                if not keep:
                    raise LifecycleRefused(f"refusing to unload every version of {model}")
                config = await server.config(model)
                config["version_policy"] = {"specific": {"versions": sorted(int(v) for v in keep)}}
                await server.load(model, json.dumps(config))
