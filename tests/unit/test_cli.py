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


def test_keys_create_shows_a_webhook_secret_once_and_webhook_secret_rotates_it(tmp_path, capsys):
    import asyncio
    import base64

    from maskserve.cli import main
    from maskserve.frontend.adapters.store import build_store
    from maskserve.frontend.config import Settings

    assert main(["keys", "create", "--name", "hooks", "--credits", "5", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    key_id = next(line.split()[-1] for line in out.splitlines() if line.startswith("key id:"))
    first = next(line.split()[-1] for line in out.splitlines() if line.startswith("webhook secret:"))
    assert first.startswith("mswh_") and len(first) > 40
    standard = next(line.split()[-1] for line in out.splitlines() if "(Standard Webhooks)" in line)
    assert standard.startswith("whsec_") and base64.b64decode(standard[6:]) == first.encode()
    assert main(["keys", "webhook-secret", key_id, "--data-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    second = lines[0].split()[-1]
    assert second.startswith("mswh_") and second != first
    assert lines[1].split()[-1] == "whsec_" + base64.b64encode(second.encode()).decode()

    async def stored() -> str | None:
        store = build_store(Settings(data_dir=tmp_path))
        await store.open()
        try:
            return await store.webhook_secret(key_id)
        finally:
            await store.close()

    assert asyncio.run(stored()) == second  # the old one no longer signs
    assert main(["keys", "webhook-secret", "0" * 32, "--data-dir", str(tmp_path)]) == 1
