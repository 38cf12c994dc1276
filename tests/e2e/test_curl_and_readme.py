"""The contract's curl examples, the README's quick start and the admin commands, as a user runs them."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import time

import requests
from PIL import Image

from maskserve.devtools.pictures import image_bytes, png_mask
from tests.plugins.stack import ROOT


def fetch(url: str) -> requests.Response:
    return requests.get(url, timeout=30)


def _curl(api, secret: str, url: str, *forms: str) -> dict:
    cmd = ["curl", "-s", "-X", "POST", url, "-H", f"Authorization: Bearer {secret}"]
    for form in forms:
        cmd += ["-F", form]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def test_contract_examples_with_curl(api, key, tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(image_bytes(1920, 1080, seed=4))
    mask = tmp_path / "mask.png"
    mask.write_bytes(png_mask(1920, 1080, (400, 300, 1400, 800)))
    base = api.url + "/v1/services"
    # 1. extraction with a mask file
    body = _curl(api, key, f"{base}/object-extraction", f"image=@{photo}", f"mask=@{mask}")
    assert body["status"] == "completed" and body["result"]["credits_used"] == 2
    out = Image.open(io.BytesIO(fetch(body["result"]["output_url"]).content))
    assert out.format == "WEBP" and out.mode == "RGBA" and out.size == (1920, 1080)
    # 2. point prompts
    body = _curl(
        api,
        key,
        f"{base}/image-segmentation?points=%5B%5B100,200%5D,%5B300,400%5D%5D&labels=%5B1,0%5D",
        f"file=@{photo}",
    )
    assert body["status"] == "completed" and body["result"]["credits_used"] == 1
    # 3. box
    body = _curl(api, key, f"{base}/object-extraction?box=%5B100,100,900,700%5D&output_format=png", f"image=@{photo}")
    assert body["status"] == "completed"
    assert Image.open(io.BytesIO(fetch(body["result"]["output_url"]).content)).format == "PNG"
    # 4. batch
    body = _curl(
        api, key, f"{base}/image-segmentation/batch?points=%5B%5B960,540%5D%5D", f"files=@{photo}", f"files=@{photo}"
    )
    assert body["completed"] == 2 and body["total_credits_used"] == 2


def test_admin_commands_share_the_database(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "maskserve.cli", *args, "--data-dir", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = run("keys", "create", "--name", "ops", "--credits", "7")
    assert created.returncode == 0, created.stderr
    secret = next(line.split()[-1] for line in created.stdout.splitlines() if line.startswith("api key:"))
    key_id = next(line.split()[-1] for line in created.stdout.splitlines() if line.startswith("key id:"))
    assert secret.startswith("sk-live-")
    listed = run("keys", "list")
    assert key_id in listed.stdout and secret not in listed.stdout and secret[:16] in listed.stdout
    assert run("credits", "add", key_id, "5").stdout.strip().endswith("balance 12")
    assert run("keys", "revoke", key_id).returncode == 0
    assert "revoked" in run("keys", "list").stdout
    with sqlite3.connect(tmp_path / "maskserve.db") as db:
        stored = db.execute("SELECT key_hash, prefix FROM api_keys").fetchone()
        assert secret not in stored and stored[1] == secret[:16]
        assert db.execute("SELECT SUM(delta) FROM ledger").fetchone()[0] == 12


def test_readme_quick_start_works_as_written(api, tmp_path):
    """The curl command of the README's quick start, against this server."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    command = re.search(r"^curl .*?(?<!\\)$", block.replace("\\\n", " "), re.M | re.S).group(0)
    command = command.replace("http://127.0.0.1:8080", api.url)
    (tmp_path / "photo.jpg").write_bytes(image_bytes(1000, 750, seed=55))
    _, secret = api.create_key(3)
    out = subprocess.run(
        shlex.split(os.path.expandvars(command.replace("$KEY", secret))),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    body = json.loads(out.stdout)
    assert body["status"] == "completed" and fetch(body["result"]["output_url"]).status_code == 200


def _doc_curls(section: str) -> list[str]:
    """The ``curl`` commands of one section of docs/API.md, joined across their line continuations."""
    text = (ROOT / "docs" / "API.md").read_text()
    part = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", part, re.S)
    return [b.replace("\\\n", " ").strip() for b in blocks]


def _doc_examples(section: str, api, key: str, tmp_path, seed: int) -> tuple[list[str], dict]:
    """A docs section's curls aimed at this server, and what they expect: ``photo.jpg`` (1024×768) and ``$KEY``."""
    (tmp_path / "photo.jpg").write_bytes(image_bytes(1024, 768, seed=seed))
    commands = [c.replace("http://127.0.0.1:8080", api.url) for c in _doc_curls(section)]
    return commands, {**os.environ, "KEY": key}


def test_v11_examples_in_the_docs_run_as_written(api, key, tmp_path):
    """Each curl of docs/API.md's v1.1 section, with the shell variables the text names, against this server."""
    commands, env = _doc_examples("Beyond one mask (v1.1)", api, key, tmp_path, seed=8)
    bodies = []
    for command in commands:
        body = json.loads(_shell(command, tmp_path, env))
        assert body["status"] == "completed", body
        bodies.append(body["result"])
        env["JOB"] = body["job_id"]  # the refinement example refines the previous example's job
    objects, rle, refined, everything = bodies
    assert len(objects["objects"]) == 2 and objects["credits_used"] == 1
    assert rle["mask"]["format"] == "rle" and rle["mask"]["size"] == [768, 1024]
    assert refined["credits_used"] == 1
    assert everything["credits_used"] == 4 and everything["masks"]


def test_image_handle_examples_in_the_docs_run_as_written(api, key, tmp_path):
    """docs/API.md's image-handle lines: the upload's handle, a click by it, then DELETE."""
    (script,), env = _doc_examples("Image handles (v1.2)", api, key, tmp_path, seed=10)
    lines = _shell(script, tmp_path, env).strip().splitlines()
    clicked, deleted = json.loads(lines[0]), lines[-1]
    assert clicked["status"] == "completed" and clicked["result"]["image_id"].startswith("img_")
    assert deleted == "204"


def _shell(command: str, cwd, env: dict) -> str:
    """A documented command line, run by bash as a reader would; its stdout."""
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300, cwd=cwd, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_paying_client_examples_in_the_docs_run_as_written(api, key, tmp_path):
    """docs/API.md's retry and styling curls: the retry replays, the styled cut-out is a cropped JPEG."""
    (retry, styled), env = _doc_examples("What paying clients rely on (v1.1)", api, key, tmp_path, seed=9)

    def run(command: str) -> str:
        return _shell(command, tmp_path, env)

    first, second = run(retry), run(retry)
    head1, body1 = first.split("\n\n", 1)
    head2, body2 = second.split("\n\n", 1)
    assert json.loads(body1) == json.loads(body2) and json.loads(body1)["status"] == "completed"
    assert "x-credits-charged: 1" in head1.lower() and "idempotent-replayed: true" in head2.lower()
    assert "x-credits-charged: 0" in head2.lower() and "server-timing: decode;dur=" in head1.lower()
    result = json.loads(run(styled))["result"]
    assert result["credits_used"] == 2 and result["output_url"]
    got = requests.get(result["output_url"], timeout=30)
    assert got.headers["Content-Type"] == "image/jpeg"
    assert (result["output_width"], result["output_height"]) != (1024, 768)


def test_async_examples_in_the_docs_run_as_written(api, key, tmp_path):
    """docs/API.md's async batch: 202 at once, then GET /v1/batches/{id} until it completed."""
    (accept, poll), env = _doc_examples("Asynchronous jobs and webhooks (v1.1)", api, key, tmp_path, seed=10)

    def run(command: str) -> dict:
        return json.loads(_shell(command, tmp_path, env))

    accepted = run(accept)
    assert accepted["status"] == "processing" and accepted["total_files"] == 2
    env["BATCH"] = accepted["batch_id"]
    for _ in range(600):
        batch = run(poll)
        if batch["status"] != "processing":
            break
        time.sleep(0.2)
    assert batch["status"] == "completed" and batch["completed"] == 2 and batch["total_credits_used"] == 2


def test_readme_sdk_example_works_as_written(api, tmp_path):
    """The README's five-line SDK example, run by Python in a folder holding photo.jpg."""
    readme = (ROOT / "README.md").read_text()
    code = readme.split("The same from Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 6
    (tmp_path / "photo.jpg").write_bytes(image_bytes(1000, 750, seed=56))
    _, secret = api.create_key(3)
    env = {**os.environ, "MASKSERVE_URL": api.url, "MASKSERVE_API_KEY": secret}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "mask.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
