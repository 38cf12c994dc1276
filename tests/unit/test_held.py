"""The decoder's held images: an LRU by key, and the batch it feeds."""

from __future__ import annotations

import numpy as np
import pytest

from maskserve.session.held import HeldImages, NotHeld, stacked


def _image(value: float, items: int = 1) -> tuple[np.ndarray, ...]:
    return (np.full((items, 2, 3), value, np.float32), np.full((items, 4), value, np.float32))


def test_a_sent_image_is_held_and_an_unknown_one_is_asked_for() -> None:
    held = HeldImages(2)
    with pytest.raises(NotHeld):
        held.arrays(b"a", None)
    sent = _image(1.0, items=3)
    kept = held.arrays(b"a", sent)
    assert [k.shape[0] for k in kept] == [1, 1]
    sent[0][...] = 9.0  # the request's memory is reused after the call: the held copy stays
    assert held.arrays(b"a", None)[0][0, 0, 0] == 1.0
    assert (held.stats.hits, held.stats.misses, held.stats.stored) == (1, 1, 1)


def test_a_decoder_that_prepares_its_images_holds_what_the_preparation_makes_once() -> None:
    calls = []

    def prepare(first: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
        calls.append([a.shape[0] for a in first])  # the first item only, of each tensor
        return (first[0].sum(axis=-1) * 2.0,)

    held = HeldImages(2, prepare)
    kept = held.arrays(b"a", _image(1.0, items=3))
    assert calls == [[1, 1]] and len(kept) == 1 and kept[0].shape == (1, 2)
    assert held.arrays(b"a", None) is kept and calls == [[1, 1]]


def test_the_least_recently_used_image_goes_first() -> None:
    held = HeldImages(2)
    held.arrays(b"a", _image(1.0))
    held.arrays(b"b", _image(2.0))
    held.arrays(b"a", None)
    held.arrays(b"c", _image(3.0))
    assert b"a" in held and b"c" in held and b"b" not in held
    with pytest.raises(NotHeld):
        held.arrays(b"b", None)


def test_prompts_on_one_image_are_fed_without_a_copy_and_several_images_are_stacked_per_prompt() -> None:
    one = _image(1.0)
    for parts in ([(one, 1)], [(one, 16)], [(one, 3), (one, 5)]):  # the graph broadcasts the one image
        fed = stacked(parts)
        assert all(f is o for f, o in zip(fed, one, strict=True))
    sent = _image(4.0, items=3)
    assert all(f is o for f, o in zip(stacked([(sent, 3)]), sent, strict=True))
    per_item = _image(5.0, items=2)
    fed = stacked([(one, 3), (_image(2.0), 1), (per_item, 2)])
    assert fed[0].shape == (6, 2, 3) and fed[1].shape == (6, 4)
    assert fed[0][:, 0, 0].tolist() == [1.0, 1.0, 1.0, 2.0, 5.0, 5.0]
    assert fed[0].flags.c_contiguous


def test_capacity_must_hold_an_image() -> None:
    with pytest.raises(ValueError):
        HeldImages(0)
