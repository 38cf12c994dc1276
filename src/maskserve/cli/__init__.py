"""The ``maskserve`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from maskserve.triton.server import TritonOptions, TritonSetupError, run_forever


def _add_triton_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--host", default="127.0.0.1", help="address Triton listens on (loopback by default)")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--metrics-port", type=int, default=8002)


def _triton_options(args: argparse.Namespace) -> TritonOptions:
    return TritonOptions(
        model_repository=args.model_repository,
        host=args.host,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
    )


def _add_frontend_arguments(parser: argparse.ArgumentParser, port: int = 8080) -> None:
    parser.add_argument("--port", type=int, help=f"API port (default {port})")
    parser.add_argument("--data-dir", type=Path, help="database, output files and signing secret (default ./data)")
    parser.add_argument("--database-url", help="postgresql://... to share accounts and jobs between frontends")


def _data_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="the same directory `serve` uses (default ./data)")
    parser.add_argument("--database-url", help="postgresql://... when the frontends share PostgreSQL")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskserve", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    from maskserve.export.command import add_arguments as add_export_arguments

    export = sub.add_parser("export", help="export SAM 2 to ONNX into a Triton model repository")
    add_export_arguments(export)

    triton = sub.add_parser("triton", help="run the embedded Triton server on the model repository")
    _add_triton_arguments(triton)

    serve = sub.add_parser("serve", help="run Triton (supervised) and the REST API: the embedded default")
    serve.add_argument("--host", default=None, help="API address (default 127.0.0.1)")
    _add_frontend_arguments(serve)
    serve.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    serve.add_argument("--triton-grpc-port", type=int, default=8001)
    serve.add_argument("--triton-http-port", type=int, default=8000)
    serve.add_argument("--triton-metrics-port", type=int, default=8002)

    front = sub.add_parser("frontend", help="run the REST API alone against an existing Triton")
    front.add_argument(
        "--triton-url",
        help="Triton gRPC address HOST:PORT, or several separated by commas (replicas; default "
        "MASKSERVE_TRITON_URL or 127.0.0.1:8001)",
    )
    front.add_argument("--host", default=None, help="API address (default 127.0.0.1)")
    _add_frontend_arguments(front)

    keys = sub.add_parser("keys", help="manage API keys (admin, never over HTTP)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True)
    create.add_argument("--credits", type=int, required=True)
    _data_dir_argument(create)
    listing = keys_sub.add_parser("list", help="list keys (prefixes only)")
    _data_dir_argument(listing)
    revoke = keys_sub.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id")
    _data_dir_argument(revoke)
    rotate = keys_sub.add_parser(
        "webhook-secret", help="create a new webhook signing secret for a key (the old one stops at once)"
    )
    rotate.add_argument("key_id")
    _data_dir_argument(rotate)
    pin = keys_sub.add_parser("pin", help="run a key's requests on one model version while it is loaded")
    pin.add_argument("key_id")
    pin.add_argument("version")
    _data_dir_argument(pin)
    unpin = keys_sub.add_parser("unpin", help="let a key's requests follow the promoted version again")
    unpin.add_argument("key_id")
    _data_dir_argument(unpin)

    from maskserve.cli.models import add_arguments as add_models_arguments

    models = sub.add_parser("models", help="list, load, unload and promote model versions in Triton (admin)")
    add_models_arguments(models)

    from maskserve.cli.client import add_arguments as add_client_arguments

    add_client_arguments(sub)

    from maskserve.cli.video import add_arguments as add_video_arguments

    add_video_arguments(sub)

    credits = sub.add_parser("credits", help="manage credits (admin)")
    credits_sub = credits.add_subparsers(dest="credits_command", required=True)
    add = credits_sub.add_parser("add", help="add credits to a key")
    add.add_argument("key_id")
    add.add_argument("amount", type=int)
    _data_dir_argument(add)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from maskserve.frontend.config import SettingsError

    try:
        return _dispatch(args)
    except SettingsError as exc:
        print(f"maskserve: bad setting: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # "Context impl SQLiteImpl." on every admin command
    if args.command == "export":
        from maskserve.export.command import ExportError, request_from_args, run_export

        try:
            version = run_export(request_from_args(args))
        except ExportError as exc:
            print(f"maskserve export: {exc}", file=sys.stderr)
            return 2
        print(f"exported version {version} to {args.out}")
        return 0
    if args.command == "triton":
        try:
            return run_forever(_triton_options(args))
        except TritonSetupError as exc:
            print(f"maskserve triton: {exc}", file=sys.stderr)
            return 2
    if args.command in ("serve", "frontend"):
        return _run_service(args)
    if args.command == "models":
        from maskserve.cli.models import run_models

        return run_models(args)
    if args.command in ("segment", "extract", "everything"):
        from maskserve.cli.client import run_client

        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request would drown the progress bar
        return run_client(args)
    if args.command == "video":
        from maskserve.cli.video import run_video

        logging.getLogger("httpx").setLevel(logging.WARNING)
        return run_video(args)
    from maskserve.cli.admin import run_admin

    return run_admin(args)


def _run_service(args: argparse.Namespace) -> int:
    import asyncio

    from maskserve.frontend.config import Settings
    from maskserve.frontend.server import run_embedded, run_frontend

    if args.command == "frontend":
        settings = Settings.from_env(
            host=args.host,
            port=args.port,
            data_dir=args.data_dir,
            triton_url=args.triton_url,
            database_url=args.database_url,
        )
        asyncio.run(run_frontend(settings))
        return 0
    triton = TritonOptions(
        model_repository=args.model_repository,
        grpc_port=args.triton_grpc_port,
        http_port=args.triton_http_port,
        metrics_port=args.triton_metrics_port,
    )
    settings = Settings.from_env(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        triton_url=triton.grpc_url,
        database_url=args.database_url,
    )
    try:
        asyncio.run(run_embedded(settings, triton))
    except TritonSetupError as exc:
        print(f"maskserve serve: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
