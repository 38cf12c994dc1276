"""Two Triton replicas behind one frontend: each image sticks to one replica, and losing one costs no request."""

from __future__ import annotations

import hashlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import requests

from benchmarks.images import photo
from maskserve.frontend.adapters.routing import rendezvous_score
from tests.plugins.stack import encoder_runs, start_api

SEG = "/v1/services/image-segmentation"


def test_affinity_and_a_replica_killed_under_load(exported_repo, tmp_path, tmp_path_factory, report):
    from maskserve.triton.server import TritonOptions, TritonServer

    replicas = [TritonServer(TritonOptions.on_free_ports(exported_repo, tmp_path / f"triton{i}")) for i in range(2)]
    urls = [r.opts.grpc_url for r in replicas]
    for replica in replicas:
        replica.start()
    try:
        for replica in replicas:
            replica.wait_ready()
        api = start_api(tmp_path_factory, ",".join(urls), triton_timeout_s=30.0, rate_single_per_min=100_000)
        key_id, key = api.create_key(1000)
        images = [photo(7300 + i) for i in range(6)]
        digests = [hashlib.sha256(data).hexdigest() for data in images]
        owner = {i: max(urls, key=lambda url, d=digest: rendezvous_score(url, d)) for i, digest in enumerate(digests)}
        stop = threading.Event()
        statuses: list[tuple[float, int]] = []
        lock = threading.Lock()

        def post(i: int, x: int) -> int:
            r = requests.post(
                f"{api.url}{SEG}?points={quote(f'[[{x},500]]')}",
                files={"file": ("p.jpg", images[i], "image/jpeg")},
                headers={"Authorization": f"Bearer {key}"},
                timeout=120,
            )
            return r.status_code

        # affinity: two prompts on each image, from the one frontend, land on the image's own replica
        for i in range(len(images)):
            assert post(i, 100) == 200 and post(i, 200) == 200
        per_replica = [encoder_runs(url) for url in urls]
        expected = [sum(1 for i in owner if owner[i] == url) for url in urls]
        assert per_replica == expected, (per_replica, expected)

        def worker(offset: int) -> None:
            n = offset
            while not stop.is_set():
                status = post(n % len(images), 300 + n % 7)
                with lock:
                    statuses.append((time.monotonic(), status))
                n += 1

        with ThreadPoolExecutor(3) as pool:
            for w in range(3):
                pool.submit(worker, w)
            time.sleep(3)
            killed_at = time.monotonic()
            replicas[0].process.kill()  # SIGKILL: no goodbye
            time.sleep(15)
            stop.set()
        after = [s for t, s in statuses if t > killed_at + 1]
        codes = {s: sum(1 for _, c in statuses if c == s) for s in {c for _, c in statuses}}
        report(
            f"replicas: 6 images on 2 Triton replicas, encoder calls per replica {per_replica} (= images each owns); "
            f"replica killed under load: statuses {codes}, {sum(s == 200 for s in after)} of {len(after)} "
            f"requests after the kill answered 200 by the other replica"
        )
        assert set(codes) <= {200, 503}
        assert after and all(s == 200 for s in after)
        charged = sum(1 for _, s in statuses if s == 200) + 2 * len(images)
        key = api.call(api.store().get_key(key_id))
        assert key.credits == 1000 - charged == api.call(api.store().ledger_sum(key_id))
        api.stop()
    finally:
        for replica in replicas:
            if replica.process is not None and replica.process.poll() is None:
                replica.stop()
