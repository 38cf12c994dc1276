"""The command line as an operator types it."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskserve.cli import build_parser


@pytest.mark.parametrize(
    "argv",
    [
        # the form docs/DEPLOYMENT.md and the README show: options after the subcommand
        ["models", "promote", "2", "--triton-url", "h:9001", "--database-url", "postgresql://db/m", "--data-dir", "d"],
        # and before it
        ["models", "--triton-url", "h:9001", "--database-url", "postgresql://db/m", "--data-dir", "d", "promote", "2"],
    ],
)
def test_models_options_work_before_and_after_the_subcommand(argv):
    args = build_parser().parse_args(argv)
    assert (args.triton_url, args.database_url, args.data_dir) == ("h:9001", "postgresql://db/m", Path("d"))
    assert args.models_command == "promote" and args.version == "2" and args.drain_seconds == 30.0


def test_models_defaults_when_no_option_is_given():
    args = build_parser().parse_args(["models", "list"])
    assert (args.triton_url, args.database_url, args.data_dir) == ("127.0.0.1:8001", None, None)
