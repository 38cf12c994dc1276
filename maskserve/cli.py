"""The ``maskserve`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from maskserve.tritonserver import TritonOptions, TritonSetupError, run_forever


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskserve", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    from export.command import add_arguments as add_export_arguments

    export = sub.add_parser("export", help="export SAM 2 to ONNX into a Triton model repository")
    add_export_arguments(export)

    triton = sub.add_parser("triton", help="run the embedded Triton server on the model repository")
    _add_triton_arguments(triton)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "export":
        from export.command import ExportError, request_from_args, run_export

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
    return 2


if __name__ == "__main__":
    sys.exit(main())
