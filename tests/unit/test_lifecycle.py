"""Model lifecycle in the fast tier: routing rules, canary share, shadow copies, pins, and the drain."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sys
import time
from urllib.parse import quote, urlsplit

import aiohttp
import pytest

from maskserve.cli import build_parser
from maskserve.devtools.pictures import image_bytes
from maskserve.frontend.adapters.store import SqlStore
from maskserve.frontend.domain.accounts import now
from maskserve.frontend.domain.models import Canary, FrontendReport, Route, Routing, traffic_bucket
from maskserve.frontend.http.state import SERVICES, STORE
from maskserve.frontend.services.lifecycle import Lifecycle, Say
from maskserve.frontend.services.routing import FOLLOW_INTERVAL_S

SEG = "/v1/services/image-segmentation"
POINT = quote(json.dumps([[32, 24]]))


def _digest(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def test_routing_rules():
    ready = {"1", "2", "3"}
    routing = Routing(active="1", canary=Canary("2", 20.0))
    assert routing.route("3", _digest(0), ready) == Route("3")  # a pin wins while its version is ready
    assert routing.route("9", _digest(0), ready).version in {"1", "2"}  # a pin on an unloaded version falls back
    share = sum(routing.route(None, _digest(i), ready).version == "2" for i in range(5000)) / 5000
    assert 0.18 < share < 0.22
    for i in range(50):  # stable: the same image, the same version
        assert routing.route(None, _digest(i), ready) == routing.route(None, _digest(i), ready)
    shadow = Routing(active="1", canary=Canary("2", 100.0, shadow=True))
    assert shadow.route(None, _digest(1), ready) == Route("1", shadow="2")
    retiring = Routing(active="1", canary=Canary("2", 100.0), retiring=("2", "3"))
    assert retiring.route("3", _digest(1), ready) == Route("1")  # retiring versions take no new request
    assert Routing().route(None, _digest(1), ready) == Route("3")  # nothing promoted: the newest loaded
    assert Routing.from_json(routing.to_json()) == routing
    assert Routing.from_json(None, legacy_active="4") == Routing(active="4")


async def _follow(client, change) -> Routing:
    """Change the routing in the store, and wait until the frontend follows it (within its interval)."""
    routing = await client.app[STORE].update_routing(change)
    deadline = time.monotonic() + FOLLOW_INTERVAL_S * 4
    while client.app[SERVICES].routing.routing.generation < routing.generation:
        assert time.monotonic() < deadline, "the frontend did not follow the routing"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)  # its report to the store follows
    return routing


async def _segment(client, secret: str, seed: int) -> aiohttp.ClientResponse:
    data = aiohttp.FormData()
    data.add_field("file", image_bytes(64, 48, seed=seed), filename="p.jpg", content_type="image/jpeg")
    r = await client.post(f"{SEG}?points={POINT}", data=data, headers={"Authorization": f"Bearer {secret}"})
    await r.read()
    return r


async def test_a_canary_at_20_percent_gets_20_percent_of_the_images(make_client, fake):
    fake.versions = {"1", "2"}
    client = await make_client(rate_single_per_min=100_000)
    _, secret = await client.app[STORE].create_key("u", 10_000)
    await _follow(client, lambda r: r.changed(active="1", canary=Canary("2", 20.0)))
    served = {}
    for seed in range(200):
        r = await _segment(client, secret, seed)
        assert r.status == 200
        served[hashlib.sha256(image_bytes(64, 48, seed=seed)).hexdigest()] = r.headers["X-Model-Version"]
    on_2 = [d for d, header in served.items() if header == "sam2.1_hiera_tiny/2"]
    assert all(traffic_bucket(d) < 20 for d in on_2)
    assert 0.15 <= len(on_2) / len(served) <= 0.25, len(on_2)
    again = await _segment(client, secret, 0)  # an image keeps its version
    assert again.headers["X-Model-Version"] == served[next(iter(served))]


async def test_shadow_copies_never_change_a_response_nor_charge(make_client, fake):
    fake.versions = {"1", "2"}
    client = await make_client(rate_single_per_min=100_000)
    key, secret = await client.app[STORE].create_key("u", 100)
    await _follow(client, lambda r: r.changed(active="1"))
    plain = await _segment(client, secret, 5)
    plain_mask = await (await client.get(_file_path((await plain.json())["result"]["output_url"]))).read()
    await _follow(client, lambda r: r.changed(active="1", canary=Canary("2", 100.0, shadow=True, started_at=now())))
    shadowed = []
    for _ in range(10):
        r = await _segment(client, secret, 5)
        assert r.status == 200 and r.headers["X-Model-Version"] == "sam2.1_hiera_tiny/1"
        mask = await (await client.get(_file_path((await r.json())["result"]["output_url"]))).read()
        shadowed.append(mask)
    await asyncio.sleep(0.3)
    assert plain_mask.startswith(b"\x89PNG") and all(mask == plain_mask for mask in shadowed)
    assert (await client.app[STORE].get_key(key.id)).credits == 100 - 11
    results = await client.app[STORE].shadow_results(0)
    assert len(results) == 10 and {r.candidate for r in results} == {"2"} and not any(r.error for r in results)
    assert all(0.5 < r.iou < 0.9 for r in results)  # the fake's version 2 draws a larger disc
    metrics = await (await client.get("/metrics")).text()
    assert 'maskserve_shadow_requests_total{candidate="2",outcome="compared"} 10.0' in metrics


def _file_path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def test_a_pinned_key_runs_on_its_version_while_it_is_loaded(make_client, fake):
    fake.versions = {"1", "2"}
    client = await make_client(rate_single_per_min=100_000)
    store = client.app[STORE]
    key, secret = await store.create_key("u", 100)
    await _follow(client, lambda r: r.changed(active="2"))
    assert (await _segment(client, secret, 1)).headers["X-Model-Version"].endswith("/2")
    assert await store.pin_key(key.id, "1")
    assert (await _segment(client, secret, 1)).headers["X-Model-Version"].endswith("/1")
    fake.versions = {"2"}  # version 1 unloaded (--force): the key follows the promoted version
    await asyncio.sleep(FOLLOW_INTERVAL_S * 3)
    assert (await _segment(client, secret, 1)).headers["X-Model-Version"].endswith("/2")
    assert not await store.pin_key("nope", "1")


async def test_frontends_report_their_routing_and_work_in_flight(make_client, fake):
    client = await make_client()
    routing = await _follow(client, lambda r: r.changed(active="1"))
    reports = await client.app[STORE].frontend_reports(now() - 5)
    assert len(reports) == 1 and reports[0].generation == routing.generation and reports[0].in_flight == {}


async def test_the_drain_waits_for_every_frontend_to_follow_and_finish(tmp_path, capsys):
    store = SqlStore(f"sqlite:///{tmp_path / 'db.sqlite'}")
    await store.open()
    try:
        routing = await store.update_routing(lambda r: r.changed(active="2", retiring=("1",)))
        behind = FrontendReport("a", routing.generation - 1, {}, now())
        busy = FrontendReport("b", routing.generation, {"1": 2, "2": 5}, now())
        gone = FrontendReport("c", 0, {"1": 9}, now() - 60)  # stopped reporting: not waited for
        for report in (behind, busy, gone):
            await store.report_frontend(report)

        async def finish() -> None:
            await asyncio.sleep(0.5)
            await store.report_frontend(FrontendReport("a", routing.generation, {"2": 1}, now()))
            await asyncio.sleep(0.5)
            await store.report_frontend(FrontendReport("b", routing.generation, {"2": 7}, now()))

        say = Say(print, lambda line: print(line, file=sys.stderr))
        lifecycle = Lifecycle(store, admin=None, say=say)  # the drain asks only the store
        started = time.monotonic()
        await asyncio.gather(lifecycle.drain(routing, {"1"}, 30), finish())
        took = time.monotonic() - started
        assert 0.9 < took < 5, took
        assert "no request in flight on version 1" in capsys.readouterr().out
        await store.report_frontend(FrontendReport("b", routing.generation, {"1": 1}, now()))
        started = time.monotonic()
        await lifecycle.drain(routing, {"1"}, 0.5)  # bounded: gives up after --drain-seconds, and says so
        assert time.monotonic() - started < 3
        assert "drain bound of 0 s reached: 1 request(s) still on version 1" in capsys.readouterr().err
    finally:
        await store.close()


@pytest.mark.parametrize(
    "argv",
    [
        ["models", "canary", "2", "--percent", "20", "--shadow", "--triton-url", "h:1", "--data-dir", "d"],
        ["models", "--triton-url", "h:1", "canary", "--off"],
        ["models", "report", "--json", "--since-minutes", "5", "--model-repository", "r"],
        ["models", "promote", "2", "--force", "--drain-seconds", "9", "--database-url", "postgresql://x/y"],
        ["keys", "pin", "abc", "2", "--data-dir", "d"],
        ["keys", "unpin", "abc"],
    ],
)
def test_lifecycle_commands_parse(argv):
    build_parser().parse_args(argv)
