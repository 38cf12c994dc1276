"""A handle outlives the replica that held its image: the image is encoded again on the next replica from
the kept upload, and the client sees a 200 and the same mask."""

from __future__ import annotations

import hashlib

import requests

from benchmarks.images import photo
from maskserve.frontend.adapters.routing import rendezvous_score
from maskserve.triton.server import TritonOptions, TritonServer
from tests.plugins.calls import SEG, auth, fetch
from tests.plugins.stack import start_api


def test_a_lost_replica_costs_a_handle_nothing(exported_repo, tmp_path, tmp_path_factory, report):
    replicas = [TritonServer(TritonOptions.on_free_ports(exported_repo, tmp_path / f"triton{i}")) for i in range(2)]
    for replica in replicas:
        replica.start()
    try:
        for replica in replicas:
            replica.wait_ready()
        urls = [r.opts.grpc_url for r in replicas]
        api = start_api(tmp_path_factory, ",".join(urls), triton_timeout_s=30.0)
        try:
            _, key = api.create_key(10)
            data = photo(7420)
            owner = max(range(2), key=lambda i: rendezvous_score(urls[i], hashlib.sha256(data).hexdigest()))
            first = requests.post(
                f"{api.url}{SEG}?points=[[600,300]]",
                files={"file": ("p.jpg", data, "image/jpeg")},
                headers=auth(key),
                timeout=120,
            )
            assert first.status_code == 200, first.text
            image_id = first.json()["result"]["image_id"]
            replicas[owner].process.kill()  # the replica holding the image's embeddings is gone
            again = requests.post(
                f"{api.url}{SEG}?points=[[600,300]]&image_id={image_id}", headers=auth(key), timeout=120
            )
            assert again.status_code == 200, again.text
            assert "encode;" in again.headers["Server-Timing"]
            assert (
                fetch(again.json()["result"]["output_url"]).content
                == fetch(first.json()["result"]["output_url"]).content
            )
            report(f"image handle after its replica was killed: 200, same mask ({again.headers['Server-Timing']})")
        finally:
            api.stop()
    finally:
        for replica in replicas:
            replica.stop()  # the killed one too: its python-backend stubs and shared memory go
