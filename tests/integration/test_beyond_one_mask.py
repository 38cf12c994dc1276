"""Several objects, scores and inline masks, refinement and segment-everything (API.md v1.1), through the real Triton.

Where a model is involved the answer is compared with SAM 2's own PyTorch code
on the same random weights: the predictor's two-step refinement, and Meta's
``SAM2AutomaticMaskGenerator`` (imported with a test-only torchvision stand-in).
"""

from __future__ import annotations

import io
import json
import time

import cv2
import jsonschema
import numpy as np
import pytest
import requests
import torch
from PIL import Image
from pycocotools import mask as coco_mask

from maskserve.core.images import encoder_input
from maskserve.devtools import torchvision_standin
from maskserve.devtools.pictures import image_bytes
from maskserve.devtools.torchvision_standin import meta_mask_generator
from maskserve.export import reference
from tests.plugins.calls import EXT, SEG, fetch, ledger_state, post, schema
from tests.plugins.stack import start_api

EVERYTHING = f"{SEG}/everything"
OBJECTS = [
    {"points": [[160, 120]]},
    {"box": [300, 200, 600, 460]},
    {"points": [[500, 100], [80, 400]], "labels": [1, 0]},
]


def balance(api, secret: str) -> int:
    r = requests.get(f"{api.url}/v1/account", headers={"Authorization": f"Bearer {secret}"}, timeout=10)
    return r.json()["credits"]


def png_of(url: str) -> np.ndarray:
    r = fetch(url)
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


def rasterise(polygons: dict, height: int, width: int) -> np.ndarray:
    """What a client does with ``mask_format=polygons``: fill the outer rings, clear the holes' insides."""
    out = np.zeros((height, width), np.uint8)
    rings = [np.array(r, np.int32).reshape(-1, 2) for r in polygons["polygons"]]
    cv2.fillPoly(out, rings, 1)
    cv2.polylines(out, rings, True, 1)
    holes = np.zeros_like(out)
    cv2.fillPoly(holes, [np.array(r, np.int32).reshape(-1, 2) for r in polygons["holes"]], 1)
    edges = np.zeros_like(out)
    cv2.polylines(edges, [np.array(r, np.int32).reshape(-1, 2) for r in polygons["holes"]], True, 1)
    out[(holes == 1) & (edges == 0)] = 0
    return out.astype(bool)


def test_objects_give_a_union_and_a_mask_per_object_for_one_credit(api, key):
    photo = image_bytes(640, 480, seed=21)
    before = balance(api, key)
    r = post(api, SEG, key, {"file": ("p.jpg", photo, "image/jpeg")}, objects=OBJECTS, mask_format="rle")
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert result["credits_used"] == 1 and balance(api, key) == before - 1
    union = png_of(result["output_url"]) > 127
    objects = result["objects"]
    assert [o["index"] for o in objects] == [0, 1, 2]
    masks = []
    for o in objects:
        mask = png_of(o["output_url"]) > 127
        masks.append(mask)
        assert o["area"] == np.count_nonzero(mask) and -1.0 < o["score"] < 2.0
        assert np.array_equal(coco_mask.decode({**o["mask"], "counts": o["mask"]["counts"].encode()}) > 0, mask)
        if o["area"]:
            ys, xs = np.nonzero(mask)
            assert o["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    assert np.array_equal(union, np.logical_or.reduce(masks))
    assert result["area"] == np.count_nonzero(union)


def test_objects_work_in_batches_and_extraction(api, key):
    files = [("files", (f"{i}.png", image_bytes(320, 240, fmt="PNG", seed=30 + i), "image/png")) for i in range(2)]
    small = [{"points": [[50, 40]]}, {"box": [100, 80, 300, 220]}, {"points": [[100, 100]]}]
    r = post(api, f"{SEG}/batch", key, files, objects=small)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total_credits_used"] == 2 and all(len(res["objects"]) == 3 for res in body["results"])
    photo = image_bytes(640, 480, fmt="PNG", seed=22)
    seg = post(api, SEG, key, {"file": ("p.png", photo, "image/png")}, objects=OBJECTS).json()["result"]
    r = post(api, EXT, key, {"image": ("p.png", photo, "image/png")}, objects=OBJECTS, output_format="png")
    assert r.status_code == 200, r.text
    assert r.json()["result"]["credits_used"] == 2
    cutout = np.asarray(Image.open(io.BytesIO(fetch(r.json()["result"]["output_url"]).content)))
    assert np.array_equal(cutout[..., 3] > 0, png_of(seg["output_url"]) > 127)


def test_rle_is_exact_and_polygons_redraw_the_mask(api, key):
    photo = image_bytes(640, 480, seed=23)
    files = {"file": ("p.jpg", photo, "image/jpeg")}
    rle = post(api, SEG, key, files, box=[100, 80, 520, 400], mask_format="rle").json()["result"]
    jsonschema.validate({"job_id": "x", "status": "completed", "result": rle, "error": None}, schema(api, "Single"))
    mask = png_of(rle["output_url"]) > 127
    decoded = coco_mask.decode({"size": rle["mask"]["size"], "counts": rle["mask"]["counts"].encode()}) > 0
    assert rle["mask"]["format"] == "rle" and rle["mask"]["size"] == [480, 640]
    assert np.array_equal(decoded, mask) and rle["area"] == np.count_nonzero(mask)
    poly = post(api, SEG, key, files, box=[100, 80, 520, 400], mask_format="polygons").json()["result"]
    assert poly["mask"]["format"] == "polygons" and poly["mask"]["polygons"]
    drawn = rasterise(poly["mask"], 480, 640)
    assert mask.sum() > 1000 and iou(drawn, mask) >= 0.98


def test_refinement_feeds_the_logits_back_like_the_predictor(api, key, sam2_model):
    photo = image_bytes(640, 480, fmt="PNG", seed=24)
    files = {"file": ("p.png", photo, "image/png")}
    first = post(api, SEG, key, files, points=[[200, 150]])
    assert first.status_code == 200, first.text
    job = first.json()["job_id"]
    second = post(api, SEG, key, files, points=[[200, 150], [420, 330]], labels=[1, 0], previous_job_id=job)
    assert second.status_code == 200, second.text
    assert second.json()["result"]["credits_used"] == 1
    ours = png_of(second.json()["result"]["output_url"]) > 127
    # the predictor's loop: the first answer's low-res logits (clamped to ±32) as mask_input
    features = reference.encode(sam2_model, torch.from_numpy(encoder_input(photo)))
    scale = np.array([1024 / 640, 1024 / 480])
    logits, _ = reference.decode(sam2_model, features, np.array([[200, 150]]) * scale, np.array([1]), None, None, True)
    mask_input = torch.clamp(logits, -32, 32).numpy()[None, None]
    points = np.array([[200, 150], [420, 330]]) * scale
    refined, _ = reference.decode(sam2_model, features, points, np.array([1, 0]), None, mask_input, False)
    full = torch.nn.functional.interpolate(refined[None, None], (480, 640), mode="bilinear", align_corners=False)
    theirs = full[0, 0].numpy() > 0
    assert iou(ours, theirs) >= 0.97
    # refusals: another key's job (404), another image (422), nonsense (422), not a single mask (422)
    _, other = api.create_key(10)
    assert post(api, SEG, other, files, points=[[1, 1]], previous_job_id=job).status_code == 404
    elsewhere = {"file": ("q.png", image_bytes(640, 480, fmt="PNG", seed=25), "image/png")}
    r = post(api, SEG, key, elsewhere, points=[[1, 1]], previous_job_id=job)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "previous_job_id"]
    assert post(api, SEG, key, files, points=[[1, 1]], previous_job_id="0" * 32).status_code == 404
    assert post(api, SEG, key, files, points=[[1, 1]], previous_job_id="\x01junk").status_code == 422
    several = post(api, SEG, key, files, objects=OBJECTS[:2]).json()["job_id"]
    assert post(api, SEG, key, files, points=[[1, 1]], previous_job_id=several).status_code == 422


PARITY = {"points_per_side": 8, "pred_iou_thresh": 0.5, "stability_score_thresh": 0.0}


def test_everything_agrees_with_meta_mask_generator(api, key, sam2_model, report):
    photo = image_bytes(512, 384, fmt="PNG", seed=3)
    before = balance(api, key)
    r = post(api, EVERYTHING, key, {"file": ("p.png", photo, "image/png")}, **{k: str(v) for k, v in PARITY.items()})
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert result["credits_used"] == 4 and balance(api, key) == before - 4
    jsonschema.validate({"job_id": "x", "status": "completed", "result": result, "error": None}, schema(api, "Single"))
    labels = png_of(result["output_url"])
    ours = [coco_mask.decode({**m["mask"], "counts": m["mask"]["counts"].encode()}) > 0 for m in result["masks"]]
    areas = [m["area"] for m in result["masks"]]
    assert areas == sorted(areas, reverse=True) and all(
        a == np.count_nonzero(o) for a, o in zip(areas, ours, strict=True)
    )
    painted = np.zeros_like(labels)
    for i, mask in enumerate(ours):
        painted[mask] = i + 1
    assert np.array_equal(labels, painted)
    rgb = np.asarray(Image.open(io.BytesIO(photo)).convert("RGB"))
    generator = meta_mask_generator(sam2_model, **PARITY)
    theirs = [
        coco_mask.decode({**a["segmentation"], "counts": a["segmentation"]["counts"]}) > 0
        for a in generator.generate(rgb)
    ]
    matched = sum(1 for t in theirs if any(iou(t, o) >= 0.9 for o in ours))
    report(
        f"segment-everything parity: {matched}/{len(theirs)} of the generator's masks "
        f"matched at IoU >= 0.9 ({len(ours)} ours)"
    )
    assert theirs and matched >= 0.95 * len(theirs)
    assert abs(len(ours) - len(theirs)) <= max(1, len(theirs) // 20)


@pytest.mark.parametrize(
    ("params", "name"),
    [
        ({"points_per_side": "3"}, "points_per_side"),
        ({"points_per_side": "65"}, "points_per_side"),
        ({"points_per_side": "1e999"}, "points_per_side"),
        ({"pred_iou_thresh": "-0.1"}, "pred_iou_thresh"),
        ({"stability_score_thresh": "nan"}, "stability_score_thresh"),
        ({"min_mask_region_area": "-1"}, "min_mask_region_area"),
        ({"max_masks": "256"}, "max_masks"),
        ({"max_masks": "[1]"}, "max_masks"),
        ({"mask_format": "png"}, "mask_format"),
    ],
)
def test_everything_refuses_out_of_range_parameters(api, key, params, name):
    r = requests.post(
        f"{api.url}{EVERYTHING}",
        params=params,
        files={"file": ("p.png", image_bytes(64, 48, fmt="PNG"), "image/png")},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", name], r.text


def test_a_grid_over_the_budget_stops_early_with_422_and_no_charge(triton_server, tmp_path_factory, report):
    """The session measures its decoder's speed on the first batches and stops a grid that cannot fit."""
    api = start_api(tmp_path_factory, triton_server.opts.grpc_url, everything_budget_s=1.0)
    try:
        key_id, secret = api.create_key(10)
        started = time.monotonic()
        r = requests.post(
            f"{api.url}{EVERYTHING}",
            params={"points_per_side": "64"},
            files={"file": ("p.png", image_bytes(64, 48, fmt="PNG"), "image/png")},
            headers={"Authorization": f"Bearer {secret}"},
            timeout=120,
        )
        took = time.monotonic() - started
        assert r.status_code == 422, r.text
        (error,) = r.json()["detail"]
        assert error["loc"] == ["query", "points_per_side"] and "over its 1 s limit" in error["msg"], error
        state = ledger_state(api.settings.database_path, key_id)
        assert state["balance"] == 10 and state["charged"] == 0 and state["processing"] == 0
        report(f"segment-everything over its budget: 64×64 grid refused after {took:.1f} s ({error['msg']})")
    finally:
        api.stop()


@pytest.mark.parametrize(
    "objects",
    [
        [{"points": [[1, 1]]}] * 17,
        [],
        [{"points": [[1, 1]], "extra": 1}],
        [{"labels": [1]}],
        [[1, 2]],
        [{"points": [[1e400, 1]]}],
        [{"points": [[1, 1]], "labels": [2]}],
        [{"box": [5, 5, 1, 1]}],
        [{"points": [[[[[1]]]]]}],
        [{"points": [[9999, 1]]}],
        {"points": [[1, 1]]},
    ],
)
def test_hostile_objects_get_422(api, key, objects):
    files = {"file": ("p.png", image_bytes(64, 48, fmt="PNG"), "image/png")}
    r = requests.post(
        f"{api.url}{SEG}",
        params={"objects": json.dumps(objects)},
        files=files,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "objects"], r.text


def test_everything_steps_match_meta_generator_on_the_same_logits(sam2_model):
    """The filters, full-size stability, boxes, RLE and NMS against Meta's own functions, mask for mask.

    Random weights give logits within about ±0.4, so no mask has pixels above
    the stability thresholds (±1) and the end-to-end comparison above runs
    with the stability filter off and keeps one large mask. Here the same
    decoder logits, scaled so that the stability scores spread over (0, 1),
    go through our steps and through the generator's (``_process_batch``'s
    filters, ``calculate_stability_score``, ``batched_mask_to_box``,
    ``mask_to_rle_pytorch`` and ``batched_nms`` with the stand-in): the
    candidate sets must be the same.
    """
    from maskserve.core import everything

    with torchvision_standin.installed():
        from sam2.utils import amg

    rgb = np.asarray(Image.open(io.BytesIO(image_bytes(300, 200, fmt="PNG", seed=4))).convert("RGB"))
    generator = meta_mask_generator(sam2_model, points_per_side=8)
    generator.predictor.set_image(rgb)
    grid = everything.point_grid(8) * np.array([300, 200])
    coords = generator.predictor._transforms.transform_coords(
        torch.as_tensor(grid, dtype=torch.float32), True, (200, 300)
    )
    _, iou_preds, low_res = generator.predictor._predict(
        coords[:, None, :], torch.ones(len(grid), 1, dtype=torch.int), multimask_output=True, return_logits=True
    )
    low_res = low_res * 40.0  # stability scores spread over (0, 1)
    ours = everything.candidates(low_res.numpy(), iou_preds.numpy(), 0, 200, 300, 0.5, 0.6)
    masks = generator.predictor._transforms.postprocess_masks(low_res, (200, 300)).flatten(0, 1)
    flat_iou = iou_preds.flatten()
    keep = flat_iou > 0.5
    stability = amg.calculate_stability_score(masks[keep], 0.0, 1.0)
    theirs_masks = masks[keep][stability >= 0.6] > 0
    theirs_boxes = amg.batched_mask_to_box(theirs_masks)
    theirs_rles = amg.mask_to_rle_pytorch(theirs_masks)
    assert 10 <= len(ours) == len(theirs_rles) < len(flat_iou)
    for candidate, rle, box in zip(ours, theirs_rles, theirs_boxes, strict=True):
        assert candidate.box == box.tolist()
        mine = coco_mask.decode({**candidate.rle, "counts": candidate.rle["counts"].encode()}) > 0
        assert iou(mine, amg.rle_to_mask(rle)) >= 0.999
    scores = flat_iou[keep][stability >= 0.6]
    theirs_kept = torchvision_standin.batched_nms(
        theirs_boxes.float(), scores, torch.zeros(len(scores)), iou_threshold=0.7
    ).tolist()
    assert [c.prompt * 3 for c in everything.suppress(ours)] == [[c.prompt * 3 for c in ours][i] for i in theirs_kept]
