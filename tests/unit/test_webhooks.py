"""Webhooks of async requests: where they may go, their signature, delivery with retries (fake model tier)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from urllib.parse import quote

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from maskserve.devtools.pictures import image_bytes
from maskserve.frontend.http import webhooks
from maskserve.frontend.http.state import STORE
from maskserve.frontend.services.webhooks import standard_secret
from tests.plugins.calls import POINT, SEG, auth, documented_verify, form


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/hook",
        "http://localhost:9/hook",  # the name is resolved and its answer checked
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "ftp://example.com/hook",
        "not a url",
    ],
)
async def test_webhook_targets_inside_the_network_are_refused(client, new_key, url):
    _, secret = await new_key(10)
    r = await client.post(
        f"{SEG}?points={POINT}&async=true&webhook_url={quote(url, safe='')}", data=form(), headers=auth(secret)
    )
    assert r.status == 422, await r.text()
    assert (await r.json())["detail"][0]["loc"] == ["query", "webhook_url"]


async def test_a_webhook_needs_async(client, new_key):
    _, secret = await new_key(10)
    r = await client.post(
        f"{SEG}?points={POINT}&webhook_url=https%3A%2F%2Fexample.com%2F", data=form(), headers=auth(secret)
    )
    assert r.status == 422 and "async=true" in (await r.json())["detail"][0]["msg"]


async def test_the_resolver_refuses_answers_it_may_not_reach():
    resolver = webhooks.GuardedResolver(allow_private=False)
    with pytest.raises(OSError, match="webhooks may not reach"):
        await resolver.resolve("localhost", 80)
    assert await webhooks.GuardedResolver(allow_private=True).resolve("localhost", 80)


class Receiver:
    """A webhook endpoint that answers ``statuses`` in turn (then 200) and keeps what it got."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.got: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.got.append((dict(request.headers), await request.read()))
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


async def _receiver(aiohttp_server, statuses: list[int]) -> tuple[Receiver, str]:
    receiver = Receiver(statuses)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = await aiohttp_server(app)
    return receiver, f"http://127.0.0.1:{server.port}/hook"


async def _until(condition, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("timed out")


def verify(secret: str, header: str, body: bytes) -> bool:
    """What a client does, with nothing but hmac and hashlib; the docs' version must agree."""
    fields = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), f"{fields['t']}.".encode() + body, hashlib.sha256).hexdigest()
    ours = hmac.compare_digest(expected, fields["v1"])
    assert documented_verify()(secret, header, body) == ours
    return ours


async def test_a_signed_webhook_is_retried_with_backoff_until_delivered(make_client, aiohttp_server):
    client = await make_client(webhook_private_targets="allow", webhook_backoff_s=0.05, webhook_poll_s=0.02)
    store = client.app[STORE]
    key, secret = await store.create_key("hooks", 10)
    hook_secret = await store.rotate_webhook_secret(key.id)
    receiver, url = await _receiver(aiohttp_server, [500, 503])
    r = await client.post(
        f"{SEG}?points={POINT}&async=true&webhook_url={quote(url, safe='')}",
        data=form("file", image_bytes(seed=70)),
        headers=auth(secret),
    )
    assert r.status == 202
    job_id = (await r.json())["job_id"]
    await _until(lambda: len(receiver.got) == 3)
    standard = Webhook(standard_secret(hook_secret))  # the registry's Standard Webhooks library, unchanged
    for headers, body in receiver.got:
        assert verify(hook_secret, headers["Maskserve-Signature"], body)
        assert standard.verify(body, headers) == json.loads(body)
    # one id per delivery, the same on each of its retries
    assert len({headers["webhook-id"] for headers, _ in receiver.got}) == 1
    with pytest.raises(WebhookVerificationError):
        Webhook(standard_secret("mswh_other")).verify(receiver.got[0][1], receiver.got[0][0])
        sent = json.loads(body)
        assert sent["job_id"] == job_id and sent["status"] == "completed" and sent["result"]["output_url"]
    assert not verify("whsec_other", receiver.got[0][0]["Maskserve-Signature"], receiver.got[0][1])
    rotated = await store.rotate_webhook_secret(key.id)
    assert rotated != hook_secret


async def test_a_batch_webhook_gives_up_after_its_attempts(make_client, aiohttp_server):
    client = await make_client(
        webhook_private_targets="allow", webhook_backoff_s=0.02, webhook_poll_s=0.02, webhook_attempts=3
    )
    store = client.app[STORE]
    key, secret = await store.create_key("hooks", 10)
    await store.rotate_webhook_secret(key.id)
    receiver, url = await _receiver(aiohttp_server, [500] * 10)
    r = await client.post(
        f"{SEG}/batch?points={POINT}&async=true&webhook_url={quote(url, safe='')}",
        data=form("files", image_bytes(seed=71), image_bytes(seed=72)),
        headers=auth(secret),
    )
    assert r.status == 202
    await _until(lambda: len(receiver.got) == 3)
    await asyncio.sleep(0.3)
    assert len(receiver.got) == 3  # given up after webhook_attempts
    body = json.loads(receiver.got[0][1])
    assert body["batch_id"] == (await r.json())["batch_id"] and body["completed"] == 2
