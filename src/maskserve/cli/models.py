"""``maskserve models``: model versions in the running Tritons, and which traffic each one serves.

Admin only (a CLI, never public HTTP), over Triton's repository API in
explicit model-control mode, on every replica named by ``--triton-url``. The
rules (loading with each version's own configuration, routing, canaries, the
drain, pins, reporting) are the lifecycle service's
(``maskserve.frontend.services.lifecycle``); this module parses the command
and prints what the service says.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the command imports the service when it runs: ``maskserve --help`` stays quick
    from maskserve.frontend.services.lifecycle import Lifecycle


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


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print_report(report: dict[str, Any], as_json: bool) -> None:
    routing = report["routing"]
    if as_json:
        print(json.dumps({**report, "routing": json.loads(routing.to_json())}, indent=2))
        return
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report["since"]))
    print(f"since {since}; routing: {routing.describe()}")
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


async def _command(args: argparse.Namespace, lifecycle: Lifecycle) -> None:
    command = args.models_command
    if command == "list":
        for line in await lifecycle.listing():
            print(line)
    elif command == "load":
        await lifecycle.load(args.version)
    elif command == "unload":
        await lifecycle.unload(args.version, args.drain_seconds, args.force)
    elif command == "promote":
        await lifecycle.promote(args.version, args.drain_seconds, args.force)
    elif command == "canary":
        await lifecycle.canary(args.version, args.percent, bool(args.shadow), bool(args.off))
    elif command == "report":
        _print_report(await lifecycle.report(args.since_minutes), args.json)


async def _run(args: argparse.Namespace) -> int:
    from maskserve.frontend.adapters.store import build_store
    from maskserve.frontend.adapters.triton_admin import TritonFleet
    from maskserve.frontend.config import Settings
    from maskserve.frontend.errors import LifecycleRefused
    from maskserve.frontend.services.lifecycle import Lifecycle, Say

    settings = Settings.from_env(data_dir=args.data_dir, database_url=args.database_url)
    store = build_store(settings)
    await store.open()
    urls = [u.strip() for u in args.triton_url.split(",") if u.strip()]
    fleet = TritonFleet(urls, args.model_repository)
    say = Say(info=lambda line: print(line, flush=True), warn=lambda line: print(line, file=sys.stderr, flush=True))
    try:
        await _command(args, Lifecycle(store, fleet, say))
        return 0
    except LifecycleRefused as exc:
        print(f"maskserve models: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a CLI: say what failed, exit non-zero
        print(f"maskserve models: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        await fleet.close()
        await store.close()


def run_models(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))
