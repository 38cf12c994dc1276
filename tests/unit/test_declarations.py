"""The one declaration per request: the SDK sends what it declares, the OpenAPI document is generated from
it and valid, and the typed records an async request keeps survive the store."""

from __future__ import annotations

import json

import pytest
from openapi_spec_validator import validate

from maskserve.client import _calls
from maskserve.frontend.config import Settings
from maskserve.frontend.domain.requests import (
    Declared,
    EverythingQuery,
    ExtractBatchQuery,
    ExtractQuery,
    Prompt,
    Prompts,
    RequestParams,
    SegmentBatchQuery,
    SegmentQuery,
)
from maskserve.frontend.http.openapi import document, parameters
from maskserve.frontend.http.routes import ALL

HEADERS = {"idempotency_key"}  # sent as the Idempotency-Key header
RENAMED = {"run_async": "async"}


def _sdk_names(options: type) -> set[str]:
    keys = set(options.__required_keys__ | options.__optional_keys__) - HEADERS
    return {RENAMED.get(k, k) for k in keys}


def _declared(query: type[Declared]) -> set[str]:
    return {f.alias or name for name, f in query.model_fields.items()}


@pytest.mark.parametrize(
    ("options", "query"),
    [
        (_calls.SegmentOptions, SegmentQuery),
        (_calls.BatchSegmentOptions, SegmentBatchQuery),
        (_calls.EverythingOptions, EverythingQuery),
        (_calls.ExtractOptions, ExtractQuery),
        (_calls.BatchExtractOptions, ExtractBatchQuery),
    ],
)
def test_the_sdk_takes_exactly_the_declared_parameters(options, query):
    """The SDK imports nothing of the server; this keeps its options and the declarations the same set."""
    assert _sdk_names(options) == _declared(query)


def test_the_generated_document_is_valid_openapi_and_lists_each_declared_parameter():
    doc = document(Settings(), ALL)
    validate(doc)
    segment = doc["paths"]["/v1/services/image-segmentation"]["post"]
    names = [p["name"] for p in segment["parameters"] if p["in"] == "query"]
    assert names == [p["name"] for p in parameters(SegmentQuery)]
    assert set(names) == _declared(SegmentQuery)
    assert {"Single", "Batch", "Result", "Error", "Validation", "Account"} <= set(doc["components"]["schemas"])
    feather = next(
        p for p in doc["paths"]["/v1/services/object-extraction"]["post"]["parameters"] if p["name"] == "feather"
    )
    assert feather["schema"] == {"type": "integer", "minimum": 0, "maximum": 50, "default": 0}


def test_an_async_request_keeps_typed_records_that_survive_a_round_trip():
    query = ExtractQuery.model_validate(
        {"objects": [{"points": [[1, 2]], "labels": [1]}, {"box": [0, 0, 5, 5]}], "bg_color": "#102030", "crop": "true"}
    )
    kept = RequestParams(prompts=query.prompts(), extraction=query.extraction())
    again = RequestParams.model_validate_json(kept.model_dump_json())
    assert again == kept
    assert again.extraction is not None and again.extraction.background == (16, 32, 48, 255)
    assert again.prompts == Prompts(
        objects=(Prompt(points=[(1, 2)], labels=[1]), Prompt(box=(0, 0, 5, 5))), several=True
    )


def test_requests_accepted_by_the_previous_release_still_run():
    """Before the declarations, the styling was kept nested with the colour as RGBA values."""
    older = {
        "prompts": {
            "objects": [{"points": [[3.0, 4.0]], "labels": [1], "box": None}],
            "several": False,
            "mask_format": "png",
            "previous_job_id": None,
        },
        "extraction": {
            "feather": 2,
            "output_format": "png",
            "style": {"bg_color": [1, 2, 3, 255], "crop": True, "crop_margin": 4, "channels": "rgba"},
        },
        "everything": None,
    }
    params = RequestParams.model_validate_json(json.dumps(older))
    assert params.extraction is not None and params.extraction.bg_color == "#010203ff"
    assert params.extraction.crop_margin == 4 and params.prompts is not None
    assert params.prompts.objects[0].point_array().tolist() == [[3.0, 4.0]]


def test_the_sdk_reads_every_field_the_result_shape_declares():
    """The SDK's Result mirrors the contract's result object (it may not import it): the same fields."""
    from dataclasses import fields

    from maskserve.client._types import Result as SdkResult
    from maskserve.frontend.domain.responses import Result

    required = {name for name, f in Result.model_fields.items() if f.is_required()}
    assert {f.name for f in fields(SdkResult)} - {"extras"} == required
