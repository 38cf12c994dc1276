"""``maskserve models``: model versions in the running Tritons, and which traffic each one serves.

Admin only (a CLI, never public HTTP), over Triton's repository API in
explicit model-control mode, on every replica named by ``--triton-url``.

* Loading a version sends Triton the configuration composed from the
  version's own ``config.pbtxt`` on disk (``maskserve.core.model_config``), so
  the settings of the export being loaded always apply, never the ones
  Triton held for another version. A version that is not in the repository
  fails at once, naming the versions that are.
* Which version serves what lives in the store (``Routing``): the promoted
  version, a canary (a share of unpinned images, or a shadow copy of them),
  and versions being retired. Every frontend follows it and reports the
  generation it follows and its requests in flight per version; a version is
  unloaded once every frontend follows the new routing and none has a
  request on it (or ``--drain-seconds`` passed).
* Keys pinned to a version (``maskserve keys pin``) keep it loaded through
  promotions unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from maskserve.core import model_config
from maskserve.core import signatures as sig
from maskserve.core.prompts import pack_prompt
from maskserve.frontend.adapters.backends import build_store
from maskserve.frontend.config import Settings
from maskserve.frontend.domain import Canary, Routing, now
from maskserve.frontend.ports import Store

STALE_REPORT_S = 5.0
"""A frontend that has not reported for this long is gone (they report twice a second)."""


class CommandError(Exception):
    """What the operator is told, with exit status 1."""


def _connection_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """Where Triton, the repository and the store are; accepted before and after the subcommand."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--triton-url",
        default=default(os.environ.get("MASKSERVE_TRITON_URL", "127.0.0.1:8001")),
        help="Triton gRPC address(es), HOST:PORT[,HOST:PORT...] (MASKSERVE_TRITON_URL)",
    )
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=default(Path(os.environ.get("MASKSERVE_MODEL_REPOSITORY", "model_repository"))),
        help="the repository the Tritons serve; each version's own config.pbtxt is read from it "
        "(MASKSERVE_MODEL_REPOSITORY)",
    )
    parser.add_argument("--data-dir", type=Path, default=default(None), help="the directory `serve` uses")
    parser.add_argument("--database-url", default=default(None), help="postgresql://... of shared frontends")


def _drain_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=30.0,
        help="the longest to wait for requests still running on a version before it is unloaded",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Subcommands, each taking the connection options too."""
    _connection_options(parser, defaults=True)
    sub = parser.add_subparsers(dest="models_command", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=text, description=text)
        _connection_options(cmd, defaults=False)
        return cmd

    command("list", "versions in Triton, their state, the routing and the pins")
    command("load", "load VERSION beside the loaded ones, with its own configuration").add_argument("version")
    unload = command("unload", "stop sending traffic to VERSION, drain it, then unload it")
    unload.add_argument("version")
    _drain_option(unload)
    unload.add_argument("--force", action="store_true", help="unload it even if keys are pinned to it")
    promote = command("promote", "load, warm up and switch traffic to VERSION, drain and unload the others")
    promote.add_argument("version")
    _drain_option(promote)
    promote.add_argument("--force", action="store_true", help="unload versions keys are pinned to as well")
    canary = command("canary", "send PERCENT %% of unpinned images to a candidate VERSION (or a shadow copy)")
    canary.add_argument("version", nargs="?")
    canary.add_argument("--percent", type=float, help="share of unpinned images, 0-100, by a hash of the image")
    canary.add_argument(
        "--shadow",
        action="store_true",
        help="serve those images from the promoted version and send the candidate a copy to compare (IoU)",
    )
    canary.add_argument("--off", action="store_true", help="end the canary (the candidate stays loaded)")
    report = command("report", "per version: requests, latency p50/p99, errors, and the shadow IoU")
    report.add_argument("--since-minutes", type=float, help="window (default: since the canary started, else 60)")
    report.add_argument("--json", action="store_true", help="machine-readable output")


# --- Triton: every replica --------------------------------------------------------


def loaded_versions(client: grpcclient.InferenceServerClient, model: str) -> set[str]:
    index = client.get_model_repository_index(as_json=True).get("models", [])
    return {m["version"] for m in index if m["name"] == model and m.get("state") == "READY"}


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
            raise CommandError(
                f"{model} has no version {version} in Triton's model repository; export it first "
                f"(maskserve export ... --version {version}); loaded versions: {loaded}"
            )
        if found[0].get("state") not in ("READY", "LOADING"):
            raise CommandError(f"{model} version {version} is {found[0].get('state')}: {found[0].get('reason', '')}")


def wait_ready(client: grpcclient.InferenceServerClient, version: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not all(client.is_model_ready(m, version) for m in sig.LIFECYCLE_MODELS):
        if time.monotonic() > deadline:
            raise CommandError(f"version {version} not READY after {timeout:.0f} s")
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


class Replicas:
    """The Triton servers of one deployment; every change is made on each of them."""

    def __init__(self, urls: str, repository: Path) -> None:
        self.urls = [u.strip() for u in urls.split(",") if u.strip()]
        self.repository = repository
        self.clients = [grpcclient.InferenceServerClient(url) for url in self.urls]

    def close(self) -> None:
        for client in self.clients:
            client.close()

    def loaded(self) -> set[str]:
        """Versions READY in every model on every replica."""
        found: set[str] | None = None
        for client in self.clients:
            for model in sig.LIFECYCLE_MODELS:
                versions = loaded_versions(client, model)
                found = versions if found is None else found & versions
        return found or set()

    def load(self, version: str) -> None:
        """Load ``version`` (beside the loaded ones) with the configuration its export wrote, then warm it up."""
        for model in sig.LIFECYCLE_MODELS:
            if not (self.repository / model / version).is_dir():
                raise CommandError(
                    f"{self.repository / model / version} does not exist: export version {version} first "
                    f"(or pass --model-repository, the directory the Tritons serve)"
                )
        for url, client in zip(self.urls, self.clients, strict=True):
            for model in sig.LIFECYCLE_MODELS:
                versions = loaded_versions(client, model) | {version}
                config = model_config.compose(self.repository / model, versions, version)
                client.load_model(model, config=model_config.to_json(model_config.with_versions(config, versions)))
            check_loaded(client, version)
            wait_ready(client, version)
            warm_up(client, version)
            print(f"{url}: version {version} loaded with its own configuration and warmed up", flush=True)

    def unload(self, versions: set[str]) -> None:
        """Unload ``versions``; the versions that stay keep the configuration they are running with."""
        for client in self.clients:
            for model in sig.LIFECYCLE_MODELS:
                loaded = loaded_versions(client, model)
                keep = loaded - versions
                if keep == loaded:
                    continue
                if not keep:
                    raise CommandError(f"refusing to unload every version of {model}")
                config: dict[str, Any] = client.get_model_config(model, as_json=True)["config"]
                config["version_policy"] = {"specific": {"versions": sorted(int(v) for v in keep)}}
                client.load_model(model, config=json.dumps(config))


# --- the store: routing, pins, drain -------------------------------------------------


async def pinned_versions(store: Store) -> dict[str, list[str]]:
    """Version -> ids of the active keys pinned to it."""
    pins: dict[str, list[str]] = {}
    for key in await store.list_keys():
        if key.active and key.pinned_version:
            pins.setdefault(key.pinned_version, []).append(key.id)
    return pins


async def drain(store: Store, routing: Routing, leaving: set[str], seconds: float) -> None:
    """Wait until every frontend follows ``routing`` and none has a request on ``leaving`` (at most ``seconds``)."""
    if not leaving:
        return
    started = time.monotonic()
    names = ", ".join(sorted(leaving, key=int))
    while True:
        reports = await store.frontend_reports(now() - STALE_REPORT_S)
        behind = [r.id for r in reports if r.generation < routing.generation]
        busy = sum(r.in_flight.get(v, 0) for r in reports for v in leaving)
        waited = time.monotonic() - started
        if not behind and busy == 0:
            print(
                f"drained in {waited:.1f} s: {len(reports)} frontend(s) follow routing {routing.generation}, "
                f"no request in flight on version {names}",
                flush=True,
            )
            return
        if waited > seconds:
            print(
                f"drain bound of {seconds:.0f} s reached: {busy} request(s) still on version {names}, "
                f"{len(behind)} frontend(s) not yet following routing {routing.generation}; unloading anyway",
                file=sys.stderr,
                flush=True,
            )
            return
        await asyncio.sleep(0.1)


async def _retire(
    store: Store,
    replicas: Replicas,
    changes: Callable[[Routing], dict[str, Any]],
    leaving: set[str],
    seconds: float,
) -> None:
    """Change the routing (``leaving`` marked retiring), drain ``leaving``, unload it."""

    def change(routing: Routing) -> Routing:
        fields = changes(routing)
        retiring = set(fields.pop("retiring", routing.retiring)) | leaving
        return routing.changed(retiring=tuple(sorted(retiring, key=int)), **fields)

    routing = await store.update_routing(change)
    print(f"routing {routing.generation}: {_describe(routing)}", flush=True)
    await drain(store, routing, leaving, seconds)
    if leaving:
        replicas.unload(leaving)
        print(f"version {', '.join(sorted(leaving, key=int))} unloaded", flush=True)


def _describe(routing: Routing) -> str:
    parts = [f"active version {routing.active or '(newest loaded)'}"]
    if routing.canary is not None:
        c = routing.canary
        parts.append(f"canary version {c.version} at {c.percent:g} %{' (shadow)' if c.shadow else ''}")
    if routing.retiring:
        parts.append(f"unloaded or unloading {', '.join(routing.retiring)}")
    return "; ".join(parts)


def _loaded_again(version: str, **changes: Any) -> Callable[[Routing], Routing]:
    """The routing once ``version`` is loaded again (no longer retired), with ``changes``."""
    return lambda r: r.changed(retiring=tuple(v for v in r.retiring if v != version), **changes)


async def _hold_active(store: Store, replicas: Replicas) -> None:
    """Before loading another version: with nothing promoted yet, the newest loaded one stays active.

    Unpinned traffic otherwise goes to the newest version loaded, and loading
    a candidate would switch everyone to it before any canary.
    """
    routing = await store.get_routing()
    loaded = replicas.loaded()
    if routing.active is None and loaded:
        newest = max(loaded, key=int)
        await store.update_routing(lambda r: r if r.active is not None else r.changed(active=newest))
        print(f"version {newest} (the newest loaded) is now recorded as the active version", flush=True)


# --- the commands ---------------------------------------------------------------------


async def _list(store: Store, replicas: Replicas) -> None:
    print(f"{'triton':22s} {'model':22s} {'version':>7s}  state")
    for url, client in zip(replicas.urls, replicas.clients, strict=True):
        index = client.get_model_repository_index(as_json=True).get("models", [])
        for m in sorted(index, key=lambda m: (m["name"], int(m.get("version") or 0))):
            print(f"{url:22s} {m['name']:22s} {m.get('version', ''):>7s}  {m.get('state', '')}")
    routing = await store.get_routing()
    print(f"routing {routing.generation}: {_describe(routing)}")
    print(f"active version: {routing.active or '(newest loaded)'}")
    for version, keys in sorted((await pinned_versions(store)).items()):
        print(f"pinned to version {version}: {len(keys)} key(s) ({', '.join(keys)})")
    reports = await store.frontend_reports(now() - STALE_REPORT_S)
    print(f"frontends reporting: {len(reports)}")


async def _promote(args: argparse.Namespace, store: Store, replicas: Replicas) -> None:
    version = args.version
    replicas.load(version)
    pins = await pinned_versions(store)
    leaving = replicas.loaded() - {version}
    kept = {v for v in leaving if v in pins} if not args.force else set()
    for v in sorted(kept, key=int):
        print(f"version {v} stays loaded: {len(pins[v])} key(s) pinned to it (unpin them, or --force)", flush=True)
    previous = (await store.get_routing()).active
    print(f"switching traffic to version {version} (was {previous or 'the newest loaded'})", flush=True)
    await _retire(
        store,
        replicas,
        lambda r: {"active": version, "canary": None, "retiring": [v for v in r.retiring if v not in kept | {version}]},
        leaving - kept,
        args.drain_seconds,
    )
    print(f"version {version} promoted")


async def _unload(args: argparse.Namespace, store: Store, replicas: Replicas) -> None:
    version = args.version
    routing = await store.get_routing()
    if routing.active == version:
        raise CommandError(f"version {version} is active; promote another version first")
    pins = await pinned_versions(store)
    if version in pins and not args.force:
        raise CommandError(
            f"{len(pins[version])} key(s) are pinned to version {version} ({', '.join(pins[version])}); "
            "unpin them (maskserve keys unpin KEY_ID) or pass --force"
        )
    canary = routing.canary if routing.canary is None or routing.canary.version != version else None
    await _retire(store, replicas, lambda r: {"canary": canary}, {version}, args.drain_seconds)


async def _canary(args: argparse.Namespace, store: Store, replicas: Replicas) -> None:
    if args.off:
        routing = await store.update_routing(lambda r: r.changed(canary=None))
        print(f"canary ended; routing {routing.generation}: {_describe(routing)}")
        return
    if args.version is None or args.percent is None:
        raise CommandError("give VERSION and --percent P (or --off)")
    if not 0 <= args.percent <= 100:
        raise CommandError("--percent must be between 0 and 100")
    routing = await store.get_routing()
    if args.version == routing.active:
        raise CommandError(f"version {args.version} is the active version; a canary needs another one")
    if args.version not in replicas.loaded():
        await _hold_active(store, replicas)
        replicas.load(args.version)
    canary = Canary(args.version, float(args.percent), bool(args.shadow), now())
    routing = await store.update_routing(_loaded_again(args.version, canary=canary))
    print(f"routing {routing.generation}: {_describe(routing)}")


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


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


async def _report(args: argparse.Namespace, store: Store) -> None:
    routing = await store.get_routing()
    if args.since_minutes is not None:
        since = now() - args.since_minutes * 60
    elif routing.canary is not None:
        since = routing.canary.started_at
    else:
        since = now() - 3600
    report = await version_report(store, since)
    report["routing"] = json.loads(routing.to_json())
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}; routing: {_describe(routing)}")
    print(f"{'version':>7s} {'requests':>9s} {'errors':>7s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for version, row in sorted(report["versions"].items(), key=lambda item: int(item[0])):
        print(
            f"{version:>7s} {row['requests']:9d} {row['errors']:7d} "
            f"{_fmt(row['p50_ms'], '8.1f')} {_fmt(row['p99_ms'], '8.1f')}"
        )
    for candidate, row in sorted(report["shadow"].items()):
        print(
            f"shadow: version {candidate} against {row['baseline']}: {row['compared']} compared, "
            f"{row['errors']} errors, IoU mean {_fmt(row['iou_mean'], '.4f')}, p5 {_fmt(row['iou_p5'], '.4f')}, "
            f"below 0.9 {_fmt(row['share_below_0.9'], '.1%')}, candidate p50 {_fmt(row['p50_ms'], '.1f')} ms"
        )


async def _run(args: argparse.Namespace) -> int:
    settings = Settings.from_env(data_dir=args.data_dir, database_url=args.database_url)
    store = build_store(settings)
    await store.open()
    replicas = Replicas(args.triton_url, args.model_repository)
    try:
        command = args.models_command
        if command == "list":
            await _list(store, replicas)
        elif command == "load":
            await _hold_active(store, replicas)
            replicas.load(args.version)
            await store.update_routing(_loaded_again(args.version))
        elif command == "unload":
            await _unload(args, store, replicas)
        elif command == "promote":
            await _promote(args, store, replicas)
        elif command == "canary":
            await _canary(args, store, replicas)
        elif command == "report":
            await _report(args, store)
        return 0
    except CommandError as exc:
        print(f"maskserve models: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a CLI: say what failed, exit non-zero
        print(f"maskserve models: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        replicas.close()
        await store.close()


def run_models(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
