"""``maskserve models list|load|unload|promote``: model versions in a running Triton.

Admin only (a CLI, never public HTTP), over Triton's repository API in explicit
model-control mode. Which versions are loaded is set by loading each model
with its own configuration plus a ``specific`` version policy; which version
the frontends send traffic to is recorded in the store (``service_state``),
which every frontend follows within a second. A promote loads the new version
beside the old, waits until it is READY, warms it up, switches the traffic,
waits for requests still running on the old version to drain, then unloads
it. Rolling back is promoting the previous version again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from maskserve.core import signatures as sig
from maskserve.core.prompts import pack_prompt
from maskserve.frontend.adapters.backends import build_store
from maskserve.frontend.config import Settings
from maskserve.frontend.domain import ACTIVE_MODEL_VERSION


def _connection_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """Where Triton and the store are; accepted before the subcommand and after it (as the docs write it)."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--triton-url", default=default("127.0.0.1:8001"), help="Triton gRPC address, HOST:PORT")
    parser.add_argument("--data-dir", type=Path, default=default(None), help="the directory `serve` uses")
    parser.add_argument("--database-url", default=default(None), help="postgresql://... of shared frontends")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Subcommands, each taking the Triton and store options too."""
    _connection_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="models_command", required=True)
    _connection_options(
        sub.add_parser("list", help="versions in the repository, their state, and the active one"), False
    )
    for name, text in (
        ("load", "load VERSION beside the loaded ones"),
        ("unload", "unload VERSION (not the active one)"),
        ("promote", "load, warm up and switch traffic to VERSION, then unload the others"),
    ):
        cmd = sub.add_parser(name, help=text)
        _connection_options(cmd, defaults=False)
        cmd.add_argument("version")
        if name == "promote":
            cmd.add_argument(
                "--drain-seconds",
                type=float,
                default=30.0,
                help="how long requests already on the old version may still run",
            )


def _state(settings: Settings, value: str | None = None) -> str | None:
    async def go() -> str | None:
        store = build_store(settings)
        await store.open()
        try:
            if value is not None:
                await store.set_state(ACTIVE_MODEL_VERSION, value)
            return await store.get_state(ACTIVE_MODEL_VERSION)
        finally:
            await store.close()

    return asyncio.run(go())


def loaded_versions(client: grpcclient.InferenceServerClient, model: str) -> set[str]:
    index = client.get_model_repository_index(as_json=True).get("models", [])
    return {m["version"] for m in index if m["name"] == model and m.get("state") == "READY"}


def apply_versions(client: grpcclient.InferenceServerClient, model: str, versions: set[str]) -> None:
    config = client.get_model_config(model, as_json=True)["config"]
    config["version_policy"] = {"specific": {"versions": sorted(int(v) for v in versions)}}
    client.load_model(model, config=json.dumps(config))


def check_loaded(client: grpcclient.InferenceServerClient, version: str) -> None:
    """Right after a load: every model must list ``version``; one that does not has no such directory.

    Triton loads the versions it finds and says nothing to the client about a
    missing one, so without this a promote would wait for a version that can
    never become ready.
    """
    index = client.get_model_repository_index(as_json=True).get("models", [])
    for model in sig.LIFECYCLE_MODELS:
        found = [m for m in index if m["name"] == model and m.get("version") == version]
        if not found:
            loaded = ", ".join(sorted(loaded_versions(client, model), key=int)) or "none"
            raise RuntimeError(
                f"{model} has no version {version} in Triton's model repository; export it first "
                f"(maskserve export ... --version {version}); loaded versions: {loaded}"
            )
        if found[0].get("state") not in ("READY", "LOADING"):
            raise RuntimeError(f"{model} version {version} is {found[0].get('state')}: {found[0].get('reason', '')}")


def wait_ready(client: grpcclient.InferenceServerClient, version: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not all(client.is_model_ready(m, version) for m in sig.LIFECYCLE_MODELS):
        if time.monotonic() > deadline:
            raise RuntimeError(f"version {version} not READY after {timeout:.0f} s")
        time.sleep(0.5)


def warm_up(client: grpcclient.InferenceServerClient, version: str) -> None:
    """One real encoder and decoder call on the new version before any client sees it."""
    image = grpcclient.InferInput("image", [1, 3, sig.IMAGE_SIZE, sig.IMAGE_SIZE], "FP32")
    image.set_data_from_numpy(np.zeros((1, 3, sig.IMAGE_SIZE, sig.IMAGE_SIZE), np.float32))
    result = client.infer(sig.ENCODER_MODEL, [image], model_version=version)
    coords, labels = pack_prompt(np.array([[512.0, 512.0]]), np.array([1]), None)
    arrays = {spec.name: result.as_numpy(spec.name) for spec in sig.ENCODER_OUTPUTS}
    arrays.update(
        point_coords=coords[None],
        point_labels=labels[None],
        mask_input=np.zeros((1, 1, 256, 256), np.float32),
        has_mask_input=np.zeros((1, 1), np.float32),
    )
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), "INT32" if array.dtype == np.int32 else "FP32")
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    client.infer(sig.DECODER_MODEL, inputs, model_version=version)


def run_models(args: argparse.Namespace) -> int:
    settings = Settings.from_env(data_dir=args.data_dir, database_url=args.database_url)
    client = grpcclient.InferenceServerClient(args.triton_url)
    try:
        if args.models_command == "list":
            active = _state(settings)
            index = client.get_model_repository_index(as_json=True).get("models", [])
            print(f"{'model':22s} {'version':>7s}  state")
            for m in sorted(index, key=lambda m: (m["name"], int(m.get("version") or 0))):
                print(f"{m['name']:22s} {m.get('version', ''):>7s}  {m.get('state', '')}")
            print(f"active version: {active or '(newest loaded)'}")
            return 0
        version = args.version
        if args.models_command == "load":
            for model in sig.LIFECYCLE_MODELS:
                apply_versions(client, model, loaded_versions(client, model) | {version})
            check_loaded(client, version)
            wait_ready(client, version)
            print(f"version {version} loaded")
            return 0
        if args.models_command == "unload":
            if _state(settings) == version:
                print(f"version {version} is active; promote another version first", file=sys.stderr)
                return 1
            for model in sig.LIFECYCLE_MODELS:
                apply_versions(client, model, loaded_versions(client, model) - {version})
            print(f"version {version} unloaded")
            return 0
        # promote
        for model in sig.LIFECYCLE_MODELS:
            apply_versions(client, model, loaded_versions(client, model) | {version})
        check_loaded(client, version)
        wait_ready(client, version)
        warm_up(client, version)
        previous = _state(settings)
        _state(settings, version)
        print(f"traffic switched to version {version} (was {previous or 'the newest loaded'}); draining", flush=True)
        time.sleep(args.drain_seconds)
        for model in sig.LIFECYCLE_MODELS:
            apply_versions(client, model, {version})
        print(f"version {version} promoted; other versions unloaded")
        return 0
    except Exception as exc:  # a CLI: say what failed, exit non-zero
        print(f"maskserve models: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
