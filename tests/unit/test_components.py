"""Parsing, admission, rate limits, the embedding cache, signing and settings, as plain objects."""

from __future__ import annotations

import pytest
from multidict import MultiDict

from maskserve.frontend.adapters.ratelimit import RateLimiter
from maskserve.frontend.config import Settings, SettingsError, settings_table
from maskserve.frontend.domain.accounts import RateBucket
from maskserve.frontend.domain.jobs import JobKind
from maskserve.frontend.domain.requests import ExtractQuery, SegmentQuery
from maskserve.frontend.errors import Forbidden, Unavailable, ValidationFailed
from maskserve.frontend.http.parsing import parse_query
from maskserve.frontend.services.admission import Admission
from maskserve.frontend.signing import UrlSigner
from tests.plugins.stack import ROOT


def query(**values: str) -> MultiDict[str]:
    return MultiDict(values)


def parse_prompt(values: MultiDict[str]):
    prompts = parse_query(values, SegmentQuery).segmentation()
    return prompts.objects[0] if prompts.objects else None


def test_prompts_parse_into_arrays():
    prompt = parse_prompt(query(points="[[1, 2], [3.5, 4]]", labels="[1, 0]", box="[0, 0, 10, 10]"))
    assert prompt.point_array().tolist() == [[1, 2], [3.5, 4]] and prompt.label_array().tolist() == [1, 0]
    assert prompt.box_array().tolist() == [0, 0, 10, 10] and prompt.given
    assert parse_prompt(query(points="[[1, 2]]")).label_array().tolist() == [1]
    assert parse_prompt(query()) is None


@pytest.mark.parametrize(
    ("values", "name"),
    [
        ({"points": "[[1, 2]"}, "points"),
        ({"points": "[[1, NaN]]"}, "points"),
        ({"points": "[[1, true]]"}, "points"),
        ({"points": "[]"}, "points"),
        ({"points": "[" + "[1, 1]," * 16 + "[1, 1]]"}, "points"),
        ({"labels": "[1]"}, "labels"),
        ({"points": "[[1, 2]]", "labels": "[1, 1]"}, "labels"),
        ({"box": "[1, 2, 3]"}, "box"),
        ({"box": "[5, 5, 1, 1]"}, "box"),
        ({"points": "[[1e999, 2]]"}, "points"),
    ],
)
def test_bad_prompts_name_their_field(values, name):
    with pytest.raises(ValidationFailed) as info:
        parse_prompt(query(**values))
    assert info.value.body()["detail"][0]["loc"] == ["query", name]


def test_extraction_options_and_unaccepted_parameters():
    assert parse_query(query(feather="50", output_format="PNG"), ExtractQuery).extraction().output_format == "png"
    for bad in ({"feather": "51"}, {"feather": "x"}, {"output_format": "gif"}):
        with pytest.raises(ValidationFailed):
            parse_query(query(**bad), ExtractQuery)
    with pytest.raises(ValidationFailed):
        parse_query(query(feather="3"), SegmentQuery)  # another endpoint's parameter
    dup = MultiDict([("points", "[[1,1]]"), ("points", "[[2,2]]")])
    with pytest.raises(ValidationFailed):
        parse_prompt(dup)


def test_admission_refuses_past_its_bound_and_frees_on_exit():
    admission = Admission(3)
    with admission.admit(2):
        assert admission.full(2) and not admission.full(1)
        with pytest.raises(Unavailable):
            admission.admit(2).__enter__()
    assert admission.admitted == 0


async def test_rate_window_slides():
    now = [1000.0]
    limiter = RateLimiter({RateBucket.SINGLE: 2}, clock=lambda: now[0])
    assert [(await limiter.check("k", RateBucket.SINGLE)).allowed for _ in range(3)] == [True, True, False]
    refused = await limiter.check("k", RateBucket.SINGLE)
    assert refused.remaining == 0 and refused.reset_s == 60
    now[0] += 60.5
    assert (await limiter.check("k", RateBucket.SINGLE)).allowed
    assert (await limiter.check("other", RateBucket.SINGLE)).allowed


def test_signed_links():
    signer = UrlSigner(b"k" * 32, ttl_s=60)
    expires = signer.expiry(now=1000)
    signer.verify("a" * 32, str(expires), signer.sign("a" * 32, expires), now=1000)
    for args, message in (
        ((str(expires), "0" * 64), "Invalid"),
        ((None, None), "Missing"),
        (("soon", "x"), "Invalid"),
    ):
        with pytest.raises(Forbidden, match=message):
            signer.verify("a" * 32, *args, now=1000)
    with pytest.raises(Forbidden, match="expired"):
        signer.verify("a" * 32, str(expires), signer.sign("a" * 32, expires), now=expires + 1)


def test_settings_parse_by_type_and_refuse_bad_values():
    settings = Settings.from_env({"MASKSERVE_PORT": "9000", "MASKSERVE_RATE_SINGLE": "5", "MASKSERVE_DATA_DIR": "/x"})
    assert settings.port == 9000 and settings.rate_single_per_min == 5 and str(settings.data_dir) == "/x"
    for env, words in (
        ({"MASKSERVE_PORT": "eighty"}, "MASKSERVE_PORT='eighty': expected an integer"),
        ({"MASKSERVE_PORT": "70000"}, "at most 65535"),
        ({"MASKSERVE_MAX_BATCH": "0"}, "MASKSERVE_MAX_BATCH=0: must be at least 1"),
        ({"MASKSERVE_FILES_BACKEND": "s4"}, "must be one of auto, local, database"),
        ({"MASKSERVE_TRITON_TIMEOUT_S": "-1"}, "MASKSERVE_TRITON_TIMEOUT_S"),
    ):
        with pytest.raises(SettingsError, match=words):
            Settings.from_env(env)
    assert Settings(database_url="postgresql://h/db").files_in_database
    assert not Settings().files_in_database and Settings(files_backend="database").files_in_database


def test_the_documented_settings_table_is_generated_from_the_settings():
    docs = (ROOT / "docs" / "API.md").read_text()
    assert settings_table() in docs, "regenerate: python -c 'from maskserve.frontend.config import settings_table'"


def test_kinds_cost_what_the_contract_says():
    assert (JobKind.SEGMENTATION.cost, JobKind.EXTRACTION.cost) == (1, 2)


def test_several_triton_urls_are_one_setting():
    settings = Settings.from_env({"MASKSERVE_TRITON_URL": "10.0.0.1:8001, 10.0.0.2:8001"})
    assert settings.triton_urls == ["10.0.0.1:8001", "10.0.0.2:8001"]
    with pytest.raises(SettingsError, match="not HOST:PORT"):
        Settings(triton_url="triton")


def test_the_s3_backend_needs_a_bucket_and_a_safe_prefix():
    with pytest.raises(SettingsError, match="MASKSERVE_S3_BUCKET: required"):
        Settings(files_backend="s3")
    with pytest.raises(SettingsError, match="MASKSERVE_S3_PREFIX"):
        Settings(files_backend="s3", s3_bucket="b", s3_prefix="../x?")
    with pytest.raises(SettingsError, match="MASKSERVE_S3_MULTIPART_MIB"):
        Settings(files_backend="s3", s3_bucket="b", s3_multipart_mib=1)  # S3's smallest part is 5 MiB
    env = {"MASKSERVE_FILES_BACKEND": "s3", "MASKSERVE_S3_BUCKET": "out", "MASKSERVE_S3_DOWNLOADS": "proxy"}
    settings = Settings.from_env(env)
    assert (settings.s3_bucket, settings.s3_downloads, settings.s3_presign_ttl_s) == ("out", "proxy", 300)


def test_shared_memory_a_killed_triton_left_is_released_unless_mapped_or_new(tmp_path, monkeypatch):
    import mmap
    import os
    import time

    from maskserve.triton import leftovers as tritonserver

    monkeypatch.setattr(tritonserver, "SHM_DIR", tmp_path)
    old = time.time() - 3600
    leaked, mapped, fresh = (tmp_path / (tritonserver.SHM_PREFIX + n) for n in ("leaked", "mapped", "fresh"))
    for region in (leaked, mapped, fresh):
        region.write_bytes(b"\0" * 4096)
    for region in (leaked, mapped):
        os.utime(region, (old, old))
    (tmp_path / "PostgreSQL.1").write_bytes(b"x")  # not ours
    os.utime(tmp_path / "PostgreSQL.1", (old, old))
    with open(mapped, "r+b") as fh, mmap.mmap(fh.fileno(), 4096):  # a live server still maps it
        assert tritonserver.release_leaked_shm() == 1
    assert not leaked.exists() and mapped.exists() and fresh.exists() and (tmp_path / "PostgreSQL.1").exists()
