"""Admin commands (keys, credits): they open the same database as ``serve``.

That is the SQLite file in the same ``--data-dir``, or the PostgreSQL that
``--database-url`` (or ``MASKSERVE_DATABASE_URL``) names.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from maskserve.frontend.adapters.store import build_store
from maskserve.frontend.config import Settings
from maskserve.frontend.services.webhooks import standard_secret


async def _admin(args: argparse.Namespace) -> int:
    settings = Settings.from_env(data_dir=args.data_dir, database_url=getattr(args, "database_url", None))
    store = build_store(settings)
    await store.open()
    try:
        if args.command == "keys" and args.keys_command == "create":
            if args.credits < 0:
                print("credits must be >= 0", file=sys.stderr)
                return 2
            key, secret = await store.create_key(args.name, args.credits)
            webhook = await store.rotate_webhook_secret(key.id)
            assert webhook is not None  # the key was just created
            print(f"key id:  {key.id}\nname:    {key.name}\ncredits: {key.credits}\napi key: {secret}")
            print(f"webhook secret: {webhook}")
            print(f"webhook secret (Standard Webhooks): {standard_secret(webhook)}")
            print("The API key and webhook secret are shown only now; store them safely.", file=sys.stderr)
            return 0
        if args.command == "keys" and args.keys_command == "webhook-secret":
            rotated = await store.rotate_webhook_secret(args.key_id)
            if rotated is None:
                print(f"no key {args.key_id}", file=sys.stderr)
                return 1
            print(f"webhook secret: {rotated}")
            print(f"webhook secret (Standard Webhooks): {standard_secret(rotated)}")
            print("Shown only now; webhooks are signed with it from now on.", file=sys.stderr)
            return 0
        if args.command == "keys" and args.keys_command == "list":
            print(f"{'id':32s}  {'name':20s}  {'prefix':18s}  {'credits':>8s}  {'pinned':>6s}  status")
            for key in await store.list_keys():
                revoked = time.strftime("%Y-%m-%d", time.gmtime(key.revoked_at or 0))
                status = "active" if key.active else f"revoked {revoked}"
                pinned = key.pinned_version or "-"
                print(f"{key.id:32s}  {key.name[:20]:20s}  {key.prefix:18s}  {key.credits:8d}  {pinned:>6s}  {status}")
            return 0
        if args.command == "keys" and args.keys_command == "revoke":
            if await store.revoke_key(args.key_id):
                print(f"revoked {args.key_id}")
                return 0
            print(f"no active key {args.key_id}", file=sys.stderr)
            return 1
        if args.command == "keys" and args.keys_command in ("pin", "unpin"):
            version = getattr(args, "version", None)
            if version is not None and not (version.isdigit() and int(version) > 0):
                print(f"a model version is a positive integer, not {version!r}", file=sys.stderr)
                return 2
            if not await store.pin_key(args.key_id, version):
                print(f"no key {args.key_id}", file=sys.stderr)
                return 1
            if version is None:
                print(f"{args.key_id} unpinned: its requests follow the promoted version")
            else:
                print(f"{args.key_id} pinned to version {version} (its requests run on it while it is loaded)")
            return 0
        if args.command == "credits" and args.credits_command == "add":
            try:
                balance = await store.add_credits(args.key_id, args.amount)
            except KeyError:
                print(f"no key {args.key_id} (or the balance would go negative)", file=sys.stderr)
                return 1
            print(f"{args.key_id}: balance {balance}")
            return 0
    finally:
        await store.close()
    return 2


def run_admin(args: argparse.Namespace) -> int:
    return asyncio.run(_admin(args))
