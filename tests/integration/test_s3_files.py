"""Output files in an S3-compatible bucket, against a real S3 server process and the real Triton.

Covered: upload (key = job id, content types, multipart past the threshold), the
signed link answering 302 to a presigned URL (and proxying in the other mode),
the link rules unchanged (403 tampered/expired, 404 unknown), expiry (lifecycle
rule and the sweep), an unreachable store (503, nothing charged, no result
without its file), and two frontends on PostgreSQL sharing one bucket.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import requests
from PIL import Image

from maskserve.devtools.pictures import image_bytes, png_mask
from maskserve.devtools.s3 import S3Server
from maskserve.frontend.adapters.objects import LIFECYCLE_RULE_ID, S3Files
from maskserve.frontend.config import Settings
from maskserve.frontend.errors import StorageUnavailable
from maskserve.frontend.http.state import SERVICES
from maskserve.triton.server import free_port
from tests.plugins.calls import auth, ledger_state
from tests.plugins.stack import start_api

SEG = "/v1/services/image-segmentation"
EXT = "/v1/services/object-extraction"
POINT = {"points": "[[160,120]]"}


@pytest.fixture()
def s3_api(tmp_path_factory, triton_server, s3_server, s3_bucket):
    api = start_api(
        tmp_path_factory, triton_server.opts.grpc_url, **s3_server.settings(s3_bucket, s3_prefix="outputs/")
    )
    yield api
    api.stop()


def _keys(s3_server, bucket: str) -> list[str]:
    listed = s3_server.client().list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def _segment(api, secret: str, **params) -> requests.Response:
    return requests.post(
        f"{api.url}{SEG}",
        params={**({} if "objects" in params else POINT), **params},
        files={"file": ("../../etc/passwd.jpg", image_bytes(320, 240, seed=77), "image/jpeg")},
        headers=auth(secret),
        timeout=60,
    )


def test_outputs_are_objects_named_by_job_id_and_links_redirect_to_presigned_urls(s3_api, s3_server, s3_bucket):
    key_id, secret = s3_api.create_key(20)
    r = _segment(s3_api, secret, objects=json.dumps([{"points": [[50, 50]]}, {"box": [100, 80, 300, 220]}]))
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    job_id = result["job_id"]
    single = _segment(s3_api, secret)
    assert single.status_code == 200, single.text
    keys = _keys(s3_server, s3_bucket)
    # the key is the job id we generated (with the prefix), never the client's file name
    assert f"outputs/{job_id}.png" in keys and f"outputs/{job_id}_0.png" in keys and f"outputs/{job_id}_1.png" in keys
    assert f"outputs/{single.json()['job_id']}_logits.f32" in keys and not any("passwd" in k for k in keys)
    head = s3_server.client().head_object(Bucket=s3_bucket, Key=f"outputs/{job_id}.png")
    assert head["ContentType"] == "image/png"

    started = time.time()
    link = requests.get(result["output_url"], allow_redirects=False, timeout=30)
    assert link.status_code == 302 and link.headers["Cache-Control"] == "no-store"
    target = urlsplit(link.headers["Location"])
    query = parse_qs(target.query)
    assert f"{target.scheme}://{target.netloc}" == s3_server.url
    assert target.path == f"/{s3_bucket}/outputs/{job_id}.png"
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and "X-Amz-Signature" in query
    assert 1 <= int(query["X-Amz-Expires"][0]) <= 300  # short-lived
    assert query["response-content-type"] == ["image/png"]
    followed = requests.get(result["output_url"], timeout=30)  # what a client's HTTP library does
    assert followed.status_code == 200 and followed.headers["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(followed.content)).size == (320, 240)
    assert (
        followed.content == s3_server.client().get_object(Bucket=s3_bucket, Key=f"outputs/{job_id}.png")["Body"].read()
    )
    for obj in result["objects"]:
        one = requests.get(obj["output_url"], allow_redirects=False, timeout=30)
        assert one.status_code == 302 and f"/outputs/{job_id}_{obj['index']}.png" in one.headers["Location"]

    # the presigned URL never outlives our link
    expires = int(parse_qs(urlsplit(result["output_url"]).query)["expires"][0])
    assert int(query["X-Amz-Expires"][0]) <= expires - started + 1

    # refinement reads the stored logits back from the bucket
    refined = _segment(s3_api, secret, points="[[60,60]]", previous_job_id=single.json()["job_id"])
    assert refined.status_code == 200, refined.text

    # the bucket carries the expiry rule on our prefix
    rules = s3_server.client().get_bucket_lifecycle_configuration(Bucket=s3_bucket)["Rules"]
    ours = [rule for rule in rules if rule["ID"] == LIFECYCLE_RULE_ID]
    assert ours and ours[0]["Filter"] == {"Prefix": "outputs/"} and ours[0]["Expiration"]["Days"] == 1
    assert ledger_state(s3_api.settings.database_path, key_id)["balance"] == 17


def test_extraction_batch_and_async_inputs_live_in_the_bucket(s3_api, s3_server, s3_bucket):
    _, secret = s3_api.create_key(20)
    images = [image_bytes(200, 150, seed=80 + i) for i in range(3)]
    r = requests.post(
        f"{s3_api.url}{EXT}/batch",
        params={"output_format": "png", "feather": "2"},
        files=[
            *(("images", (f"{i}.jpg", b, "image/jpeg")) for i, b in enumerate(images)),
            *(("masks", (f"{i}.png", png_mask(200, 150, (20, 20, 120, 100)), "image/png")) for i in range(3)),
        ],
        headers=auth(secret),
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["completed"] == 3, r.text
    for result in r.json()["results"]:
        assert f"outputs/{result['job_id']}.png" in _keys(s3_server, s3_bucket)
        cut = Image.open(io.BytesIO(requests.get(result["output_url"], timeout=30).content))
        assert cut.mode == "RGBA" and cut.size == (200, 150)

    accepted = _segment(s3_api, secret, **{"async": "true"})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["job_id"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = requests.get(f"{s3_api.url}/v1/jobs/{job_id}", headers=auth(secret), timeout=10).json()
        if job["status"] != "processing":
            break
        time.sleep(0.2)
    assert job["status"] == "completed"
    keys = _keys(s3_server, s3_bucket)
    assert f"outputs/{job_id}.png" in keys and f"outputs/{job_id}_input.bin" not in keys  # the kept input is gone


def test_proxy_mode_streams_the_object_through_the_frontend(tmp_path_factory, triton_server, s3_server, s3_bucket):
    api = start_api(
        tmp_path_factory, triton_server.opts.grpc_url, **s3_server.settings(s3_bucket, s3_downloads="proxy")
    )
    try:
        _, secret = api.create_key(5)
        r = _segment(api, secret)
        assert r.status_code == 200, r.text
        link = requests.get(r.json()["result"]["output_url"], allow_redirects=False, timeout=30)
        assert link.status_code == 200 and link.headers["Content-Type"] == "image/png"
        assert Image.open(io.BytesIO(link.content)).size == (320, 240)
        job_id, image_id = r.json()["job_id"], r.json()["result"]["image_id"]
        assert _keys(s3_server, s3_bucket) == sorted([f"{job_id}.png", f"{job_id}_logits.f32", f"{image_id}.bin"])
    finally:
        api.stop()


def test_signed_link_rules_are_unchanged(s3_api):
    _, secret = s3_api.create_key(5)
    url = _segment(s3_api, secret).json()["result"]["output_url"]
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    tampered = requests.get(base, params={"expires": query["expires"][0], "sig": "0" * 64}, allow_redirects=False)
    assert tampered.status_code == 403
    missing = requests.get(base, allow_redirects=False)
    assert missing.status_code == 403
    signer = s3_api.app[SERVICES].deps.signer
    other = "f" * 32
    expires = signer.expiry()
    sig = signer.sign(other, expires)
    r = requests.get(f"{s3_api.url}/v1/files/{other}", params={"expires": expires, "sig": sig}, allow_redirects=False)
    assert r.status_code == 404


def test_expired_outputs_leave_the_bucket_and_their_links_say_expired(
    tmp_path_factory, triton_server, s3_server, s3_bucket
):
    api = start_api(
        tmp_path_factory,
        triton_server.opts.grpc_url,
        url_ttl_s=1,
        image_id_ttl_s=1,
        sweep_interval_s=0.3,
        **s3_server.settings(s3_bucket),
    )
    try:
        _, secret = api.create_key(5)
        r = _segment(api, secret)
        assert r.status_code == 200, r.text
        job_id, image_id = r.json()["job_id"], r.json()["result"]["image_id"]
        assert _keys(s3_server, s3_bucket) == sorted([f"{job_id}.png", f"{job_id}_logits.f32", f"{image_id}.bin"])
        deadline = time.monotonic() + 15
        while _keys(s3_server, s3_bucket) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _keys(s3_server, s3_bucket) == []  # the sweep deleted the output, its logits and the kept upload
        gone = requests.get(r.json()["result"]["output_url"], allow_redirects=False, timeout=10)
        assert gone.status_code == 403 and "expired" in gone.json()["detail"].lower()
    finally:
        api.stop()


def test_an_unreachable_store_is_503_uncharged_and_leaves_no_result(tmp_path_factory, triton_server, s3_bucket):
    store = S3Server().start()
    api = start_api(tmp_path_factory, triton_server.opts.grpc_url, s3_timeout_s=2, **store.settings(s3_bucket))
    try:
        key_id, secret = api.create_key(10)
        assert _segment(api, secret).status_code == 200
        store.stop()  # the object store goes away
        r = _segment(api, secret)
        assert r.status_code == 503 and r.json() == {"detail": "The output storage is unavailable"}
        extraction = requests.post(
            f"{api.url}{EXT}",
            params=POINT,
            files={"image": ("a.jpg", image_bytes(320, 240, seed=5))},
            headers=auth(secret),
            timeout=60,
        )
        assert extraction.status_code == 503
        accepted = _segment(api, secret, **{"async": "true"})  # async: its inputs cannot be kept either
        assert accepted.status_code == 503
        ready = requests.get(f"{api.url}/readyz", timeout=30)
        assert ready.status_code == 503 and any(p.startswith("files:") for p in ready.json()["problems"])
        state = ledger_state(api.settings.database_path, key_id)
        assert state["balance"] == 9 and state["charged"] == 1 and state["processing"] == 0
        assert state["completed"] == 1  # the failed ones are failed: no result without its file

        store = S3Server(store.port).start()  # back (empty: moto keeps no data), and the service with it
        store.client().create_bucket(Bucket=s3_bucket)
        assert _segment(api, secret).status_code == 200
        assert ledger_state(api.settings.database_path, key_id)["balance"] == 8
    finally:
        api.stop()
        store.stop()


def test_two_frontends_share_one_bucket(tmp_path_factory, triton_server, s3_server, s3_bucket, postgres_url):
    shared = {"database_url": postgres_url, **s3_server.settings(s3_bucket)}
    first = start_api(tmp_path_factory, triton_server.opts.grpc_url, **shared)
    second = start_api(tmp_path_factory, triton_server.opts.grpc_url, **shared)
    try:
        _, secret = first.create_key(10)
        made = _segment(first, secret)
        assert made.status_code == 200, made.text
        job_id = made.json()["job_id"]
        # the other frontend serves the link (same signing secret, same bucket) ...
        url = made.json()["result"]["output_url"].replace(first.url, second.url)
        link = requests.get(url, allow_redirects=False, timeout=30)
        assert link.status_code == 302 and f"/{s3_bucket}/{job_id}.png" in link.headers["Location"]
        assert requests.get(url, timeout=30).content == requests.get(made.json()["result"]["output_url"]).content
        # ... and refines from the logits the first one stored
        refined = _segment(second, secret, points="[[20,20]]", previous_job_id=job_id)
        assert refined.status_code == 200, refined.text
        assert f"{refined.json()['job_id']}.png" in _keys(s3_server, s3_bucket)
    finally:
        first.stop()
        second.stop()


def test_large_outputs_go_up_as_multipart_and_other_lifecycle_rules_are_kept(s3_server, s3_bucket):
    client = s3_server.client()
    client.create_bucket(Bucket=s3_bucket)
    theirs = {"ID": "theirs", "Status": "Enabled", "Filter": {"Prefix": "logs/"}, "Expiration": {"Days": 30}}
    client.put_bucket_lifecycle_configuration(Bucket=s3_bucket, LifecycleConfiguration={"Rules": [theirs]})
    settings = Settings(s3_multipart_mib=5, **s3_server.settings(s3_bucket, s3_prefix="m/"))
    data = np.random.default_rng(0).integers(0, 255, 11 * 1024 * 1024 + 17, dtype=np.uint8).tobytes()

    async def scenario() -> None:
        files = S3Files(settings)
        await files.open()
        try:
            location = await files.put("a" * 32, "png", data)
            assert await files.get(location) == data
            etag = client.head_object(Bucket=s3_bucket, Key="m/" + "a" * 32 + ".png")["ETag"]
            assert etag.strip('"').endswith("-3")  # three parts: 5 + 5 + 1 MiB
            small = await files.put("b" * 32, "webp", b"RIFF....WEBP")
            assert client.head_object(Bucket=s3_bucket, Key="m/" + "b" * 32 + ".webp")["ContentType"] == "image/webp"
            await files.remove(small)
            assert await files.get(small) is None
            with pytest.raises(ValueError):
                await files.put("../escape", "png", b"x")
        finally:
            await files.close()
        away = S3Files(
            Settings(
                s3_timeout_s=1,
                **{**s3_server.settings(s3_bucket), "s3_endpoint_url": f"http://127.0.0.1:{free_port()}"},
            )
        )
        await away.open()  # starts (and says so) while the store is away
        try:
            with pytest.raises(StorageUnavailable):
                await away.put("c" * 32, "png", b"x")
            with pytest.raises(StorageUnavailable):
                await away.ping()
        finally:
            await away.close()

    asyncio.run(scenario())
    rules = {r["ID"]: r for r in client.get_bucket_lifecycle_configuration(Bucket=s3_bucket)["Rules"]}
    assert set(rules) == {"theirs", LIFECYCLE_RULE_ID} and rules[LIFECYCLE_RULE_ID]["Filter"] == {"Prefix": "m/"}
