"""How the tests call the API: paths, prompts, auth headers and forms, requests against a running
service, the contract's schemas from its own OpenAPI document, and the ledger behind a SQLite store."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path
from urllib.parse import quote

import aiohttp
import requests

from maskserve.devtools.pictures import image_bytes

SEG = "/v1/services/image-segmentation"
EXT = "/v1/services/object-extraction"
POINT = quote(json.dumps([[320, 240]]))


def q(value) -> str:
    return quote(json.dumps(value))


def auth(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def form(field: str = "file", *images: bytes) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for i, image in enumerate(images or (image_bytes(),)):
        data.add_field(field, image, filename=f"p{i}.jpg", content_type="image/jpeg")
    return data


def post(api, path: str, secret: str | None, files, **params) -> requests.Response:
    query = "&".join(f"{k}={q(v) if not isinstance(v, str) else quote(v)}" for k, v in params.items())
    return requests.post(
        f"{api.url}{path}{'?' + query if query else ''}",
        files=files,
        headers=auth(secret) if secret else {},
        timeout=120,
    )


def schema(api, name: str) -> dict:
    doc = requests.get(f"{api.url}/openapi.json", timeout=10).json()
    return {**doc["components"]["schemas"][name], "components": doc["components"]}


def fetch(url: str) -> requests.Response:
    return requests.get(url, timeout=30)


def ledger_state(db_path: Path, key_id: str) -> dict:
    with sqlite3.connect(db_path) as db:
        return {
            "balance": db.execute("SELECT credits FROM api_keys WHERE id = ?", (key_id,)).fetchone()[0],
            "ledger": db.execute("SELECT COALESCE(SUM(delta), 0) FROM ledger WHERE key_id = ?", (key_id,)).fetchone()[
                0
            ],
            "charged": db.execute(
                "SELECT COALESCE(SUM(credits_used), 0) FROM jobs WHERE key_id = ?", (key_id,)
            ).fetchone()[0],
            "processing": db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'processing'").fetchone()[0],
            "completed": db.execute(
                "SELECT COUNT(*) FROM jobs WHERE key_id = ? AND status = 'completed'", (key_id,)
            ).fetchone()[0],
        }


def documented_verify():
    """docs/API.md's verification code, run as written."""
    text = (Path(__file__).parents[2] / "docs" / "API.md").read_text()
    part = text.split("## Asynchronous jobs and webhooks (v1.1)", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", part, re.S)
    namespace: dict = {}
    exec(code, namespace)
    return namespace["verify"]
