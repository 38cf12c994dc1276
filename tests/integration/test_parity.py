"""The exported ONNX graphs agree with PyTorch SAM 2.1 tiny on the same weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskserve.core import signatures as sig
from maskserve.core.masks import select_mask
from maskserve.core.prompts import is_multimask, pack_prompt
from maskserve.devtools.pictures import make_image
from maskserve.export import reference
from maskserve.export.repository import version_dir

MIN_AGREEMENT = 0.999
FULL_SIZE = (1080, 1920)  # masks are also compared after the predictor's upsampling


@dataclass(frozen=True)
class Case:
    name: str
    points: list | None = None
    labels: list | None = None
    box: list | None = None
    with_mask: bool = False


CASES = [
    Case("one point", points=[[420.0, 380.0]], labels=[1]),
    Case("points fg+bg", points=[[420.0, 380.0], [700.0, 650.0], [150.0, 900.0]], labels=[1, 0, 1]),
    Case("box", box=[250.0, 200.0, 640.0, 610.0]),
    Case("box+points", points=[[430.0, 400.0], [300.0, 260.0]], labels=[1, 0], box=[250.0, 200.0, 640.0, 610.0]),
    Case("point + mask_input", points=[[420.0, 380.0]], labels=[1], with_mask=True),
]


def _runner(runtime: str, path: str, precision: str = "fp32"):
    if runtime == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return lambda feeds: session.run(None, feeds)
    import openvino as ov

    compiled = ov.Core().compile_model(
        path, "CPU", {"INFERENCE_PRECISION_HINT": {"fp32": "f32", "bf16": "bf16"}[precision]}
    )
    request = compiled.create_infer_request()
    return lambda feeds: [np.array(request.infer(feeds)[o]) for o in compiled.outputs]


@pytest.fixture(scope="module")
def image():
    return make_image()


@pytest.fixture(scope="module")
def torch_features(sam2_model, image):
    return reference.encode(sam2_model, torch.from_numpy(image))


def _mask_input(sam2_model, features) -> np.ndarray:
    """A previous round's low-res logits, as clients pass them back."""
    logits, _ = reference.decode(sam2_model, features, np.array([[420.0, 380.0]]), np.array([1]), None, None, True)
    return logits.numpy()[None, None]


def _upsample(logits: np.ndarray) -> np.ndarray:
    return F.interpolate(torch.from_numpy(logits)[None, None], FULL_SIZE, mode="bilinear", align_corners=False)[
        0, 0
    ].numpy()


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_encoder_and_decoder_match_pytorch(runtime, exported_repo, sam2_model, image, torch_features, report):
    encoder = _runner(runtime, str(version_dir(exported_repo, sig.ENCODER_MODEL, 1) / "model.onnx"))
    decoder = _runner(runtime, str(version_dir(exported_repo, sig.DECODER_MODEL, 1) / "model.onnx"))
    embed, s0, s1 = encoder({"image": image})
    ref = torch_features
    errors = {
        "image_embed": np.abs(embed - ref["image_embed"].numpy()).max(),
        "high_res_feats_0": np.abs(s0 - ref["high_res_feats"][0].numpy()).max(),
        "high_res_feats_1": np.abs(s1 - ref["high_res_feats"][1].numpy()).max(),
    }
    report(f"parity {runtime} encoder max|err|: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
    assert max(errors.values()) < 1e-3

    mask_input = _mask_input(sam2_model, ref)
    for case in CASES:
        points, labels, box = _prompt(case)
        multimask = is_multimask(points, box)
        coords, labs = pack_prompt(points, labels, box)
        feeds = {
            "image_embed": embed,
            "high_res_feats_0": s0,
            "high_res_feats_1": s1,
            "point_coords": coords[None],
            "point_labels": labs[None],
            "mask_input": mask_input if case.with_mask else np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.array([1.0 if case.with_mask else 0.0], np.float32),
        }
        low_res, iou = decoder(feeds)
        ours, our_score = select_mask(low_res[0], iou[0], multimask)
        want, want_score = reference.decode(
            sam2_model, ref, points, labels, box, mask_input if case.with_mask else None, multimask
        )
        want = want.numpy()
        logit_err = float(np.abs(ours - want).max())
        low_agree = float(np.mean((ours > 0) == (want > 0)))
        full_agree = float(np.mean((_upsample(ours) > 0) == (_upsample(want) > 0)))
        report(
            f"parity {runtime} decoder [{case.name}]: max|logit err| {logit_err:.2e}, "
            f"|iou err| {abs(our_score - float(want_score)):.2e}, mask agreement "
            f"{100 * low_agree:.4f}% (256²) {100 * full_agree:.4f}% (1920x1080)"
        )
        assert low_agree >= MIN_AGREEMENT and full_agree >= MIN_AGREEMENT, case.name
        assert abs(our_score - float(want_score)) < 1e-3, case.name


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_the_held_decoder_on_a_prepared_image_equals_the_exported_decoder(
    runtime, exported_repo, sam2_model, torch_features, report
):
    """The cpu decoder's graphs for held images give model.onnx's masks: every case in one batch on one prepared
    image (broadcast), the same batch with the image repeated per prompt, and the cases without a mask through
    the graph that takes none."""
    where = version_dir(exported_repo, sig.DECODER_MODEL, 1)
    decoder = _runner(runtime, str(where / "model.onnx"))
    prepare = _runner(runtime, str(where / sig.PREPARE_GRAPH))
    held = {masks: _runner(runtime, str(where / name)) for masks, name in sig.HELD_GRAPHS.items()}
    ref = torch_features
    embeddings = {
        "image_embed": ref["image_embed"].numpy(),
        "high_res_feats_0": ref["high_res_feats"][0].numpy(),
        "high_res_feats_1": ref["high_res_feats"][1].numpy(),
    }
    prepared = dict(zip((s.name for s in sig.PREPARED_IMAGE), prepare(embeddings), strict=True))
    assert [v.shape[1:] for v in prepared.values()] == [s.dims for s in sig.PREPARED_IMAGE]
    packed = [pack_prompt(*_prompt(case)) for case in CASES]
    mask_input = _mask_input(sam2_model, ref)[0]
    prompts = {
        "point_coords": np.stack([coords for coords, _ in packed]),
        "point_labels": np.stack([labels for _, labels in packed]),
        "mask_input": np.stack([mask_input if c.with_mask else np.zeros_like(mask_input) for c in CASES]),
        "has_mask_input": np.array([float(c.with_mask) for c in CASES], np.float32),
    }
    want, want_iou = decoder({**embeddings, **prompts})
    n = len(CASES)
    repeated = {name: np.repeat(value, n, 0) for name, value in prepared.items()}
    for label, image in (("broadcast", prepared), ("per prompt", repeated)):
        masks, iou = held[True]({**image, **prompts})
        err, agree = float(np.abs(masks - want).max()), float(np.mean((masks > 0) == (want > 0)))
        report(f"held decoder {runtime} ({label}, with masks): max|logit err| {err:.2e}, agreement {100 * agree:.4f}%")
        assert err < 1e-3 and agree >= MIN_AGREEMENT and np.abs(iou - want_iou).max() < 1e-4
    plain = [i for i, c in enumerate(CASES) if not c.with_mask]
    masks, iou = held[False]({**prepared, **{k: prompts[k][plain] for k in ("point_coords", "point_labels")}})
    assert np.abs(masks - want[plain]).max() < 1e-3 and np.abs(iou - want_iou[plain]).max() < 1e-4


def _prompt(case: Case) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """A case's points, labels and box as the predictor takes them."""
    points = None if case.points is None else np.array(case.points, np.float32)
    labels = None if case.labels is None else np.array(case.labels, np.int32)
    box = None if case.box is None else np.array(case.box, np.float32)
    return points, labels, box


def test_padding_slots_change_nothing(exported_repo, sam2_model, torch_features):
    """Extra label -1 slots are masked: one padded prompt equals the unpadded model call."""
    decoder = _runner("onnxruntime", str(version_dir(exported_repo, sig.DECODER_MODEL, 1) / "model.onnx"))
    ref = torch_features
    embed = ref["image_embed"].numpy()
    s0, s1 = (f.numpy() for f in ref["high_res_feats"])
    # the same prompt in every slot count from 1 real point to the maximum
    for n_points in (1, 5, sig.MAX_PROMPT_POINTS):
        points = np.stack([np.linspace(100, 900, n_points), np.linspace(150, 850, n_points)], 1).astype(np.float32)
        labels = (np.arange(n_points) % 2 == 0).astype(np.int32)
        coords, labs = pack_prompt(points, labels, None)
        low_res, iou = decoder(
            {
                "image_embed": embed,
                "high_res_feats_0": s0,
                "high_res_feats_1": s1,
                "point_coords": coords[None],
                "point_labels": labs[None],
                "mask_input": np.zeros((1, 1, 256, 256), np.float32),
                "has_mask_input": np.zeros(1, np.float32),
            }
        )
        ours, _ = select_mask(low_res[0], iou[0], multimask=False)
        want, _ = reference.decode(sam2_model, ref, points, labels, None, None, False)
        assert np.abs(ours - want.numpy()).max() < 1e-3


def test_batched_decoder_equals_single_requests(exported_repo, torch_features):
    """Different clients' prompts in one batch give each client its own answer."""
    decoder = _runner("onnxruntime", str(version_dir(exported_repo, sig.DECODER_MODEL, 1) / "model.onnx"))
    ref = torch_features
    embed = ref["image_embed"].numpy()
    s0, s1 = (f.numpy() for f in ref["high_res_feats"])
    prompts = [pack_prompt(np.array([[100.0 * (i + 1), 80.0 * (i + 2)]]), np.array([1]), None) for i in range(4)]

    def feeds(batch):
        n = len(batch)
        return {
            "image_embed": np.repeat(embed, n, 0),
            "high_res_feats_0": np.repeat(s0, n, 0),
            "high_res_feats_1": np.repeat(s1, n, 0),
            "point_coords": np.stack([p[0] for p in batch]),
            "point_labels": np.stack([p[1] for p in batch]),
            "mask_input": np.zeros((n, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(n, np.float32),
        }

    batched, _ = decoder(feeds(prompts))
    for i, prompt in enumerate(prompts):
        single, _ = decoder(feeds([prompt]))
        assert np.abs(batched[i] - single[0]).max() < 1e-4


@pytest.mark.parametrize("decoder_precision", ["fp32", "bf16"])
def test_bf16_agreement_with_fp32_pytorch(exported_repo, sam2_model, image, torch_features, report, decoder_precision):
    """The cpu target's default (OpenVINO bf16 for both models) stays within IoU 0.98 of fp32 PyTorch."""
    encoder = _runner("openvino", str(version_dir(exported_repo, sig.ENCODER_MODEL, 1) / "model.onnx"), "bf16")
    decoder = _runner(
        "openvino", str(version_dir(exported_repo, sig.DECODER_MODEL, 1) / "model.onnx"), decoder_precision
    )
    embed, s0, s1 = encoder({"image": image})
    ious = []
    for case in CASES[:4]:
        points = None if case.points is None else np.array(case.points, np.float32)
        labels = None if case.labels is None else np.array(case.labels, np.int32)
        box = None if case.box is None else np.array(case.box, np.float32)
        coords, labs = pack_prompt(points, labels, box)
        low_res, iou = decoder(
            {
                "image_embed": embed,
                "high_res_feats_0": s0,
                "high_res_feats_1": s1,
                "point_coords": coords[None],
                "point_labels": labs[None],
                "mask_input": np.zeros((1, 1, 256, 256), np.float32),
                "has_mask_input": np.zeros(1, np.float32),
            }
        )
        ours, _ = select_mask(low_res[0], iou[0], is_multimask(points, box))
        want, _ = reference.decode(sam2_model, torch_features, points, labels, box, None, is_multimask(points, box))
        a, b = _upsample(ours) > 0, _upsample(want.numpy()) > 0
        ious.append(float((a & b).sum() / max((a | b).sum(), 1)))
    report(
        f"parity openvino bf16 encoder + {decoder_precision} decoder: mask IoU vs fp32 PyTorch "
        f"min {min(ious):.4f}, per case {[round(x, 4) for x in ious]}"
    )
    assert min(ious) >= 0.98
