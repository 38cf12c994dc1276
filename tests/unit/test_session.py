"""The model tier's session: the embedding store and the engine, with fake encoder and decoder."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from maskserve.core import everything
from maskserve.core.images import ImageRejected, encoder_input
from maskserve.core.prompts import PackedPrompt, pack_prompt
from maskserve.core.session_io import EverythingParams
from maskserve.devtools.pictures import image_bytes
from maskserve.session.engine import SessionEngine
from maskserve.session.store import EmbeddingStore, Entry

SHAPES = ((1, 256, 64, 64), (1, 32, 256, 256), (1, 64, 128, 128))


def fp32_outputs(value: float = 1.0) -> list[np.ndarray]:
    return [np.full(shape, value, np.float32) for shape in SHAPES]


def test_store_holds_half_the_bytes_in_fp16_and_evicts_least_recent():
    fp32 = EmbeddingStore(10**9, "fp32").pack(fp32_outputs())
    fp16 = EmbeddingStore(10**9, "fp16").pack(fp32_outputs())
    assert fp32.nbytes == 16 * 2**20 and fp16.nbytes == 8 * 2**20
    store = EmbeddingStore(2 * fp16.nbytes, "fp16")
    store.put("a", fp16)
    store.put("b", fp16)
    assert store.get("a") is not None  # a is now the most recent
    assert store.put("c", fp16) == 1
    assert "a" in store and "c" in store and "b" not in store
    assert store.nbytes <= store.max_bytes and store.stats.evictions == 1
    assert store.get("b") is None and store.stats.misses == 1
    with pytest.raises(ValueError):
        EmbeddingStore(1, "int8")


def test_device_store_packs_torch_tensors_it_owns_and_bounds_them_the_same_way():
    """The gpu target's store (torch tensors; on this machine's CPU): same precision, bytes and eviction."""
    import torch

    from maskserve.session.store import DeviceEmbeddingStore

    outputs = [torch.from_numpy(a) for a in fp32_outputs(0.5)]
    store = DeviceEmbeddingStore(16 * 2**20, "fp16", torch.device("cpu"))
    entry = store.pack(outputs)
    assert [a.dtype for a in entry.arrays] == [torch.float16] * 3 and entry.nbytes == 8 * 2**20
    outputs[0].fill_(9.0)  # the encoder's buffers may be reused: the store holds its own copy
    assert float(entry.arrays[0].max()) == 0.5
    store.put("a", entry)
    store.put("b", store.pack(outputs))
    assert store.put("c", store.pack(outputs)) == 1 and "a" not in store and store.nbytes <= store.max_bytes


class Fakes:
    def __init__(self) -> None:
        self.encodes = 0
        self.decodes = 0
        self.batches: list[int] = []  # prompts per decoder call
        self.fail = False
        self.decode_s = 0.0  # how long one decoder call takes

    def preprocess(self, data: bytes) -> np.ndarray:
        return encoder_input(data)

    async def encode(self, image: np.ndarray) -> list[np.ndarray]:
        self.encodes += 1
        await asyncio.sleep(0.05)
        if self.fail:
            raise RuntimeError("encoder failed")
        return fp32_outputs()

    async def decode(self, digest: str, entry: Entry, prompts: list[PackedPrompt]) -> tuple[np.ndarray, np.ndarray]:
        """Four stable masks per prompt; for a grid point, squares of three sizes around it."""
        self.decodes += 1
        self.batches.append(len(prompts))
        await asyncio.sleep(self.decode_s)
        masks = np.stack([np.full((4, 256, 256), -10.0, np.float32) for _ in prompts])
        for i, p in enumerate(prompts):
            x, y = (p.point_coords[0] / 4).astype(int)
            for token, half in enumerate((0, 2, 10, 11)):
                masks[i, token, max(y - half, 0) : y + half + 1, max(x - half, 0) : x + half + 1] = 10.0 + token
        iou = np.tile(np.array([0.5, 0.1, 0.9, 0.85], np.float32), (len(prompts), 1))
        return masks, iou


def engine(fakes: Fakes, max_bytes: int = 10**9) -> SessionEngine:
    return SessionEngine(EmbeddingStore(max_bytes), fakes.preprocess, fakes.encode, fakes.decode)


def prompt(multimask: bool = True, x: float = 100.0) -> list[PackedPrompt]:
    coords, labels = pack_prompt(np.array([[x, 100.0]]), np.array([1]), None)
    return [PackedPrompt(coords, labels, None, multimask)]


async def test_unknown_image_without_bytes_asks_for_them_then_encodes_once():
    fakes = Fakes()
    session = engine(fakes)
    first = await session.segment("d1", None, prompt())
    assert first.needs_image and fakes.encodes == 0
    image = image_bytes(64, 48)
    outcomes = await asyncio.gather(*(session.segment("d1", image, prompt()) for _ in range(4)))
    assert fakes.encodes == 1 and sum(o.encoded for o in outcomes) == 1
    assert all(o.scores is not None and o.scores[0] == pytest.approx(0.9) for o in outcomes)  # best multimask token
    assert (await session.segment("d1", None, prompt(multimask=False))).scores[0] == pytest.approx(0.5)


async def test_requests_without_bytes_join_an_encode_in_flight():
    fakes = Fakes()
    session = engine(fakes)
    with_bytes = asyncio.ensure_future(session.segment("d2", image_bytes(64, 48), prompt()))
    await asyncio.sleep(0.01)
    without = await session.segment("d2", None, prompt())
    assert not without.needs_image and (await with_bytes).encoded and fakes.encodes == 1


async def test_a_failed_encode_reaches_every_waiter_and_is_not_kept():
    fakes = Fakes()
    fakes.fail = True
    session = engine(fakes)
    results = await asyncio.gather(
        *(session.segment("d3", image_bytes(64, 48), prompt()) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results) and fakes.encodes == 1
    assert (await session.segment("d3", None, prompt())).needs_image


async def test_unreadable_bytes_are_refused_not_raised():
    session = engine(Fakes())
    outcome = await session.segment("d4", b"not an image", prompt())
    assert outcome.rejected.startswith("image is not a JPEG") and outcome.logits is None


def test_encoder_input_reads_images_like_the_frontend():
    tensor = encoder_input(image_bytes(640, 480))
    assert tensor.shape == (1, 3, 1024, 1024) and tensor.dtype == np.float32
    with pytest.raises(ImageRejected):
        encoder_input(image_bytes(640, 480), max_pixels=1000)


async def test_several_objects_go_through_one_decoder_call():
    fakes = Fakes()
    session = engine(fakes)
    await session.segment("d5", image_bytes(64, 48), prompt())
    objects = [p for x in (100.0, 300.0, 500.0) for p in prompt(x=x)]
    outcome = await session.segment("d5", None, objects)
    assert fakes.batches[-1] == 3 and outcome.logits is not None and outcome.logits.shape == (3, 256, 256)
    assert outcome.logits.max() <= 32.0  # clamped as the predictor returns them for refinement


async def test_everything_filters_and_suppresses_next_to_the_embeddings():
    fakes = Fakes()
    session = SessionEngine(EmbeddingStore(10**9), fakes.preprocess, fakes.encode, fakes.decode, points_per_batch=4)
    grid = (everything.point_grid(4) * 1024).astype(np.float32)
    prompts = [PackedPrompt(*pack_prompt(p[None], np.ones(1, np.int32), None), None, True) for p in grid]
    params = EverythingParams(0.8, 0.9, height=512, width=512, budget_s=float("inf"))
    outcome = await session.everything("d6", image_bytes(64, 48), prompts, params)
    assert fakes.batches == [4, 4, 4, 4] and outcome.encoded and outcome.masks is not None
    # per point: tokens 2 (0.9) and 3 (0.85) pass the IoU filter; their boxes overlap (IoU 0.83), NMS keeps 0.9
    assert len(outcome.masks) == len(grid)
    assert sorted(m.prompt for m in outcome.masks) == list(range(len(grid)))
    assert all(m.score == pytest.approx(0.9) for m in outcome.masks)


async def test_a_grid_that_would_pass_its_budget_stops_after_its_first_batches():
    fakes = Fakes()
    fakes.decode_s = 0.05  # 4 points per 50 ms: the 16×16 grid's 64 batches take ~3 s
    session = SessionEngine(EmbeddingStore(10**9), fakes.preprocess, fakes.encode, fakes.decode, points_per_batch=4)
    grid = (everything.point_grid(16) * 1024).astype(np.float32)
    prompts = [PackedPrompt(*pack_prompt(p[None], np.ones(1, np.int32), None), None, True) for p in grid]
    params = EverythingParams(0.8, 0.9, height=512, width=512, budget_s=1.0)
    outcome = await session.everything("d7", image_bytes(64, 48), prompts, params)
    assert outcome.masks is None and outcome.overrun is not None and outcome.encoded
    before_s, per_point_s = outcome.overrun
    assert before_s >= 0.05 and per_point_s == pytest.approx(0.05 / 4, rel=0.5)
    await asyncio.sleep(0.2)  # the batches not yet started were cancelled, not run
    assert len(fakes.batches) <= 4
    generous = EverythingParams(0.8, 0.9, height=512, width=512, budget_s=10.0)
    done = await session.everything("d7", None, prompts[:16], generous)
    assert done.overrun is None and done.masks is not None and len(done.masks) == 16
