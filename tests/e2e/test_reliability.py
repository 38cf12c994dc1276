"""Faults, overload, shutdown and hostile input: nothing lost, nothing charged wrongly."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
import requests
from PIL import Image

from maskserve.devtools.pictures import image_bytes
from tests.plugins.calls import auth, ledger_state
from tests.plugins.stack import Served, start_api

SEG = "/v1/services/image-segmentation"
POINT = quote(json.dumps([[100, 100]]))


async def _post(session, url: str, key: str, data: bytes, path: str = SEG, field: str = "file", count: int = 1):
    form = aiohttp.FormData()
    for i in range(count):
        form.add_field(
            field,
            data if count == 1 else image_bytes(400, 300, seed=7000 + i),
            filename=f"p{i}.jpg",
            content_type="image/jpeg",
        )
    started = time.monotonic()
    async with session.post(f"{url}{path}?points={POINT}", data=form, headers=auth(key)) as r:
        return r.status, await r.json(), time.monotonic() - started


def test_triton_killed_mid_request_then_restarted(exported_repo, tmp_path, report):
    served = Served(exported_repo, tmp_path)
    try:

        async def scenario():
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
                batch = asyncio.ensure_future(
                    _post(session, served.url, served.key, b"", path=SEG + "/batch", field="files", count=4)
                )
                await asyncio.sleep(1.0)  # the batch's images are inside the encoder now
                triton = served.triton_pid()
                # Triton stopped (not yet dead) while the single request goes out: it is surely in flight when
                # the kill comes, however fast this machine's encoder is
                os.kill(triton, signal.SIGSTOP)
                single = asyncio.ensure_future(_post(session, served.url, served.key, image_bytes(640, 480, seed=6001)))
                await asyncio.sleep(0.5)
                os.kill(triton, signal.SIGKILL)
                return await single, await batch

        (s_status, s_body, s_time), (b_status, b_body, b_time) = asyncio.run(scenario())
        assert s_status == 503 and s_time < 30, s_body
        assert b_status == 200 and b_time < 30
        assert all(
            r["status"] == "failed" and r["credits_used"] == 0 for r in b_body["results"] if r["status"] != "completed"
        )
        assert any("unavailable" in (r["error"] or "") for r in b_body["results"])
        state = ledger_state(served.data / "maskserve.db", served.key_id)
        assert state["processing"] == 0 and state["balance"] == state["ledger"] == 50 - state["charged"]
        # the supervisor restarts Triton; the same frontend serves again
        killed_at = time.monotonic()
        served.wait_ready()
        report(
            f"fault: Triton SIGKILLed mid-request: single answered 503 in {s_time:.2f} s, batch of 4 answered in "
            f"{b_time:.2f} s ({sum(r['status'] == 'failed' for r in b_body['results'])} failed, 0 charged), "
            f"ready again after {time.monotonic() - killed_at:.1f} s; "
            f"balance {state['balance']} = ledger {state['ledger']}"
        )
        r = requests.post(
            f"{served.url}{SEG}?points={POINT}",
            files={"file": ("a.jpg", image_bytes(320, 240, seed=6002))},
            headers=auth(served.key),
            timeout=120,
        )
        assert r.status_code == 200, r.text
        assert "restarting it" in served.log()
    finally:
        assert served.stop() == 0
    assert served.key not in served.log()  # keys are never logged


def test_sigterm_finishes_in_flight_work_then_exits(exported_repo, tmp_path):
    served = Served(exported_repo, tmp_path)

    async def scenario():
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            pending = asyncio.ensure_future(_post(session, served.url, served.key, image_bytes(800, 600, seed=6100)))
            await asyncio.sleep(0.5)
            served.proc.send_signal(signal.SIGTERM)
            return await pending

    status, body, _ = asyncio.run(scenario())
    code = served.stop()
    assert status == 200 and body["status"] == "completed"
    assert code == 0
    state = ledger_state(served.data / "maskserve.db", served.key_id)
    assert state["processing"] == 0 and state["completed"] == 1 and state["charged"] == 1
    assert (served.data / "files" / f"{body['job_id']}.png").is_file()  # charged and stored together
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{served.url}/healthz", timeout=5)


def test_overload_is_refused_fast_and_never_charged(triton_server, tmp_path_factory, report):
    api = start_api(tmp_path_factory, triton_server.opts.grpc_url, max_admitted_images=2)
    try:
        key_id, key = api.create_key(100)

        async def burst():
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
                return await asyncio.gather(
                    *(_post(session, api.url, key, image_bytes(400, 300, seed=6200 + i)) for i in range(8))
                )

        results = asyncio.run(burst())
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] == 503]
        assert len(ok) + len(refused) == 8 and 1 <= len(ok) <= 4 and refused
        assert all(t < 2.0 for _, _, t in refused)  # refused at once, not after queueing
        assert all(isinstance(b["detail"], str) for _, b, _ in refused)
        assert api.call(api.store().get_key(key_id)).credits == 100 - len(ok)
        report(
            f"overload: 8 simultaneous new images, admission limit 2: {len(ok)} served "
            f"(max {max(t for _, _, t in ok):.1f} s), {len(refused)} refused "
            f"503 in <= {max(t for _, _, t in refused) * 1000:.0f} ms"
        )
    finally:
        api.stop()


def _raw_post(url: str, key: str, body: bytes, content_type: str) -> requests.Response:
    return requests.post(
        f"{url}{SEG}?points={POINT}", data=body, timeout=60, headers={**auth(key), "Content-Type": content_type}
    )


def test_multipart_abuse(api):
    _, key = api.create_key(10)
    many = (
        b"".join(b'--XX\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % i for i in range(300))
        + b"--XX--\r\n"
    )
    assert _raw_post(api.url, key, many, "multipart/form-data; boundary=XX").status_code == 400
    giant = b'--XX\r\nContent-Disposition: form-data; name="' + b"n" * 100_000 + b'"\r\n\r\nx\r\n--XX--\r\n'
    assert _raw_post(api.url, key, giant, "multipart/form-data; boundary=XX").status_code in (400, 413)
    assert _raw_post(api.url, key, b"whatever", "multipart/form-data").status_code == 400
    assert _raw_post(api.url, key, b"garbage without parts", "multipart/form-data; boundary=XX").status_code == 400
    assert _raw_post(api.url, key, b"{}", "application/json").status_code == 400


def test_slow_upload_gets_400(triton_server, tmp_path_factory):
    api = start_api(tmp_path_factory, triton_server.opts.grpc_url, upload_timeout_s=2)
    try:
        _, key = api.create_key(10)
        sock = socket.create_connection(("127.0.0.1", api.settings.port))
        head = (
            f"POST {SEG}?points={POINT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: multipart/form-data; boundary=XX\r\nContent-Length: 100000\r\n\r\n"
            '--XX\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        )
        sock.sendall(head.encode())
        sock.settimeout(15)
        started = time.monotonic()
        reply = sock.recv(4096).decode(errors="replace")
        assert reply.startswith("HTTP/1.1 400") and "too slow" in reply
        assert time.monotonic() - started < 10
        sock.close()
    finally:
        api.stop()


def _animated(fmt: str) -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


@pytest.mark.parametrize(
    "data,expected",
    [
        (_animated("WEBP"), 422),
        (_animated("PNG"), 422),
        (image_bytes(64, 48, fmt="PNG", mode="P"), 200),
        (image_bytes(64, 48, fmt="PNG", mode="LA"), 200),
        (image_bytes(64, 48, fmt="PNG", mode="RGBA"), 200),
        (image_bytes(64, 48, fmt="PNG", mode="I;16"), 200),
        (image_bytes(64, 48, fmt="JPEG", mode="CMYK"), 200),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, 422),
        (b"RIFF\x10\0\0\0WEBPVP8 " + b"\0" * 32, 422),
    ],
)
def test_hostile_and_unusual_images(api, data, expected):
    _, key = api.create_key(10)
    # file name and content type lie on purpose: the content decides
    r = requests.post(
        f"{api.url}{SEG}?points={quote(json.dumps([[10, 10]]))}",
        timeout=120,
        headers=auth(key),
        files={"file": ("holiday.gif", data, "text/plain")},
    )
    assert r.status_code == expected, r.text
    if expected == 200:
        assert (r.json()["result"]["original_width"], r.json()["result"]["original_height"]) == (64, 48)


def test_500_concurrent_requests_on_100_credits(api, report):
    """Singles and batches at once: exactly 100 credits of work, everything else refused or failed."""
    key_id, key = api.create_key(100)
    photo = image_bytes(320, 240, seed=6300)
    requests.post(
        f"{api.url}{SEG}?points={POINT}", files={"file": ("w.jpg", photo)}, headers=auth(key), timeout=60
    )  # warm the cache
    api.call(api.store().add_credits(key_id, 1, "test refill"))  # back to 100

    async def storm():
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=600), connector=aiohttp.TCPConnector(limit=0)
        ) as session:

            async def one(i: int):
                form = aiohttp.FormData()
                path = SEG + "/batch" if i % 5 == 0 else SEG
                for _ in range(3 if i % 5 == 0 else 1):
                    form.add_field(
                        "files" if i % 5 == 0 else "file", photo, filename="p.jpg", content_type="image/jpeg"
                    )
                async with session.post(f"{api.url}{path}?points={POINT}", data=form, headers=auth(key)) as r:
                    return r.status, await r.json()

            return await asyncio.gather(*(one(i) for i in range(500)))

    results = asyncio.run(storm())
    statuses = {s for s, _ in results}
    assert statuses <= {200, 402, 429, 503}, statuses
    charged = 0
    for status, body in results:
        if status == 200 and "results" in body:
            charged += body["total_credits_used"]
            assert body["total_credits_used"] == sum(r["credits_used"] for r in body["results"])
        elif status == 200:
            charged += body["result"]["credits_used"]
    state = ledger_state(api.settings.database_path, key_id)
    assert charged == 100 and state["balance"] == 0
    assert state["ledger"] == 0 and state["processing"] == 0
    from collections import Counter

    report(
        f"money: 500 concurrent (400 single + 100 batches of 3) on 100 credits: statuses "
        f"{dict(sorted(Counter(s for s, _ in results).items()))}, charged {charged}, balance 0, ledger sum 0"
    )


def test_secrets_at_rest_and_on_disk(tmp_path):
    from maskserve.frontend.signing import load_or_create_secret

    secret_path = tmp_path / "fresh" / "signing.key"
    first = load_or_create_secret(secret_path)
    assert oct(secret_path.stat().st_mode & 0o777) == "0o600" and len(first) == 32
    assert load_or_create_secret(secret_path) == first  # kept across restarts
    other = load_or_create_secret(tmp_path / "other" / "signing.key")
    assert other != first  # every install generates its own


def test_triton_and_admin_stay_on_loopback(exported_repo, tmp_path):
    from maskserve.cli import build_parser
    from maskserve.triton.server import TritonOptions, find_distribution, server_command, startup_models

    opts = TritonOptions(model_repository=exported_repo)
    cmd = server_command(find_distribution(), opts, tmp_path, startup_models(exported_repo))
    for flag in ("--grpc-address=127.0.0.1", "--http-address=127.0.0.1", "--metrics-address=127.0.0.1"):
        assert flag in cmd
    serve = build_parser().parse_args(["serve"])
    assert serve.host is None  # defaults to 127.0.0.1 in Settings
    from maskserve.frontend.config import Settings

    assert Settings().host == "127.0.0.1"
    from maskserve.frontend.app import create_app

    routes = {r.resource.canonical for r in create_app(Settings(data_dir=tmp_path)).router.routes()}
    assert not any("key" in r or "credit" in r or "admin" in r for r in routes)


def test_schemathesis_finds_no_5xx_and_no_schema_breaks(api, report):
    """Property-based requests generated from our own /openapi.json."""
    _, key = api.create_key(10_000)
    checks = (
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_schema_conformance,response_headers_conformance"
    )
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{api.url}/openapi.json",
            "-H",
            f"Authorization: Bearer {key}",
            "--checks",
            checks,
            "-n",
            "25",
            "--request-timeout",
            "120",
            "--generation-deterministic",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(sys.executable).parent,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    summary = next(line for line in proc.stdout.splitlines() if "generated" in line and "passed" in line)
    report(f"schemathesis: {summary.strip()}")
