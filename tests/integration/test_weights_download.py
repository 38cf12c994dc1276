"""Real weights by default: the checkpoint download, tested offline against a local HTTP server.

The server stands in for Meta's CDN: it serves a file with HTTP ranges (or
without them), and can break a response off part-way, as a flaky network does.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

import pytest
import torch

from maskserve.core import signatures as sig
from maskserve.export import checkpoints
from maskserve.export.command import ExportRequest, run_export
from maskserve.export.repository import version_dir
from maskserve.export.variants import get_variant
from maskserve.triton.server import free_port
from tests.plugins.processes import NAME, Cdn


@pytest.fixture()
def cdn(tmp_path) -> Iterator[Cdn]:
    root = tmp_path / "cdn"
    root.mkdir()
    server = Cdn(root)
    yield server
    server.stop()


def variant_at(cdn: Cdn, data: bytes) -> checkpoints.Variant:
    (cdn.root / NAME).write_bytes(data)
    digest = checkpoints.sha256_of(cdn.root / NAME)
    return dataclasses.replace(get_variant("sam2.1_hiera_tiny"), url=f"{cdn.url}/{NAME}", sha256=digest)


def test_a_verified_download_is_cached_and_not_fetched_again(cdn, tmp_path):
    source = variant_at(cdn, b"w" * 3_000_000)
    path = checkpoints.download_checkpoint(source, tmp_path / "cache")
    assert path.read_bytes() == b"w" * 3_000_000 and cdn.requests == [None]
    cdn.stop()  # a second start needs no network at all
    assert checkpoints.download_checkpoint(source, tmp_path / "cache", timeout=2) == path
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [NAME]


def test_a_wrong_hash_is_refused_and_deleted(cdn, tmp_path):
    source = dataclasses.replace(variant_at(cdn, b"tampered" * 1000), sha256="0" * 64)
    with pytest.raises(checkpoints.WeightsError, match="SHA-256") as info:
        checkpoints.download_checkpoint(source, tmp_path / "cache")
    assert not isinstance(info.value, checkpoints.WeightsUnreachable)
    assert not any((tmp_path / "cache").iterdir())  # nothing unverified left behind
    # a cached file that no longer matches is deleted and fetched again
    good = variant_at(cdn, b"good" * 1000)
    (tmp_path / "cache" / NAME).write_bytes(b"corrupted on disk")
    assert checkpoints.download_checkpoint(good, tmp_path / "cache").read_bytes() == b"good" * 1000


def test_an_interrupted_download_resumes_where_it_stopped(cdn, tmp_path):
    data = bytes(range(256)) * 20_000  # 5 MB
    source = variant_at(cdn, data)
    cdn.cut_after = 2_000_000
    with pytest.raises(checkpoints.WeightsUnreachable, match="2000000 bytes kept"):
        checkpoints.download_checkpoint(source, tmp_path / "cache", attempts=1, progress=False)
    assert not (tmp_path / "cache" / NAME).exists()  # never a partial file under the final name
    assert (tmp_path / "cache" / f"{NAME}.part").stat().st_size == 2_000_000
    path = checkpoints.download_checkpoint(source, tmp_path / "cache", attempts=1, progress=False)
    assert path.read_bytes() == data and cdn.requests[-1] == "bytes=2000000-"
    # within one call, a break is retried from where it stopped
    cdn.requests.clear()
    other = tmp_path / "cache2"
    assert checkpoints.download_checkpoint(source, other, progress=False).read_bytes() == data
    assert cdn.requests == [None, "bytes=2000000-"]


def test_a_server_without_ranges_restarts_and_a_bad_part_is_never_used(tmp_path):
    root = tmp_path / "cdn"
    root.mkdir()
    cdn = Cdn(root, ranges=False)
    try:
        data = b"0123456789" * 100_000
        source = variant_at(cdn, data)
        (tmp_path / "cache").mkdir()
        (tmp_path / "cache" / f"{NAME}.part").write_bytes(b"left over from another file")
        assert checkpoints.download_checkpoint(source, tmp_path / "cache", progress=False).read_bytes() == data
    finally:
        cdn.stop()
    # with ranges, a leftover that is not a prefix of the file ends in a hash mismatch: deleted, never used
    ranged = Cdn(root)
    try:
        source = variant_at(ranged, data)
        (tmp_path / "cache3").mkdir()
        (tmp_path / "cache3" / f"{NAME}.part").write_bytes(b"x" * 10)
        with pytest.raises(checkpoints.WeightsError, match="SHA-256"):
            checkpoints.download_checkpoint(source, tmp_path / "cache3", progress=False)
        assert not any((tmp_path / "cache3").iterdir())
        assert checkpoints.download_checkpoint(source, tmp_path / "cache3", progress=False).read_bytes() == data
    finally:
        ranged.stop()


def test_unreachable_server_falls_back_to_random_weights_only_in_auto_mode(tmp_path, caplog):
    offline = dataclasses.replace(get_variant("sam2.1_hiera_tiny"), url=f"http://127.0.0.1:{free_port()}/{NAME}")
    with pytest.raises(checkpoints.WeightsUnreachable) as info:
        checkpoints.download_checkpoint(offline, tmp_path / "cache", timeout=2, attempts=1)
    assert "--checkpoint" in str(info.value) and "--random-weights" in str(info.value)
    out = tmp_path / "repo"
    version = run_export(
        ExportRequest(out=out, auto_weights=True, checkpoint_url=offline.url, download_dir=tmp_path / "cache")
    )
    manifest = json.loads((version_dir(out, sig.ENCODER_MODEL, version) / "manifest.json").read_text())
    assert manifest["weights"]["kind"] == "random"
    assert "exporting with RANDOM WEIGHTS instead" in caplog.text


def test_auto_weights_export_the_fetched_checkpoint(cdn, tmp_path):
    model = checkpoints.build_model(get_variant("sam2.1_hiera_tiny"), seed=4321)
    torch.save({"model": model.state_dict()}, cdn.root / NAME)
    digest = checkpoints.sha256_of(cdn.root / NAME)
    out = tmp_path / "repo"
    request = ExportRequest(
        out=out,
        auto_weights=True,
        checkpoint_url=f"{cdn.url}/{NAME}",
        checkpoint_sha256=digest,
        download_dir=tmp_path / "cache",
    )
    version = run_export(request)
    manifest = json.loads((version_dir(out, sig.ENCODER_MODEL, version) / "manifest.json").read_text())
    assert manifest["weights"] == {"kind": "checkpoint", "file": NAME, "sha256": digest}
    assert (tmp_path / "cache" / NAME).is_file() and len(cdn.requests) == 1
