"""The decoder's own copies of the last images' embeddings, so that a click sends only its prompt.

On the ``cpu`` target the session model calls the decoder model through BLS.
Sending an image's fp32 embeddings with every prompt costs three 16 MiB
copies per click: into the session's shared memory, from there into the
decoder's, and into the runtime's input tensors. The decoder therefore keeps
the embeddings of the last few images it was sent, under the image's key
(``sig.IMAGE_KEY``): a prompt names its image, and only when the decoder no
longer holds it (evicted, restarted, another instance) does it answer
``sig.NOT_HELD`` and the session sends the embeddings once more.

Where the decoder has the graphs for it, an image is held prepared: the
first transformer layer's image side computed and the high-resolution
features laid out for the upscaling (``maskserve.export.wrappers.ImagePreparation``),
once, and its prompts run the held decoder graph on that.

The held arrays are fed to the runtime as they are (no copy) when every
prompt of a call is on the same image, however many prompts: the graph
broadcasts one image over its prompts. Prompts on several images are stacked
one item per prompt.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Prepare = Callable[[tuple[np.ndarray, ...]], tuple[np.ndarray, ...]]
"""An image's embeddings (one item each) → the tensors the decoder holds for it instead (one item each)."""


class NotHeld(Exception):
    """A request named an image whose embeddings this decoder does not hold, and did not send them."""


@dataclass
class HeldStats:
    hits: int = 0
    misses: int = 0
    stored: int = 0


class HeldImages:
    """An LRU of ``capacity`` images' embedding tensors (one item each, batch axis of 1), by key."""

    def __init__(self, capacity: int, prepare: Prepare | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._prepare = prepare
        self._items: OrderedDict[bytes, tuple[np.ndarray, ...]] = OrderedDict()
        self.stats = HeldStats()

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def arrays(self, key: bytes, sent: tuple[np.ndarray, ...] | None) -> tuple[np.ndarray, ...]:
        """The image's tensors: those ``sent`` with the request (then held), else the held ones.

        ``sent`` arrays carry one item per prompt of the request, all the same
        image: the first item is kept, copied out of the request's memory, or
        what ``prepare`` makes of it (new arrays) when the decoder prepares
        its images.
        """
        if sent is not None:
            first = tuple(np.ascontiguousarray(array[:1]) for array in sent)
            kept = self._prepare(first) if self._prepare is not None else tuple(array.copy() for array in first)
            self._items[key] = kept
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
            self.stats.stored += 1
            return kept
        found = self._items.get(key)
        if found is None:
            self.stats.misses += 1
            raise NotHeld(key)
        self._items.move_to_end(key)
        self.stats.hits += 1
        return found


def stacked(parts: list[tuple[tuple[np.ndarray, ...], int]]) -> list[np.ndarray]:
    """The image tensors to feed for requests in order: (an image's tensors, its request's prompt count) each.

    The tensors carry one item (a held image) or one per prompt (as a request
    sent them). When every request is on the same held image, that single
    item is fed as it is: the graph broadcasts it over all the prompts
    (``sig.DECODER_IMAGE_AXIS``), so many prompts on one image copy nothing.
    Otherwise each image is repeated once per prompt of its request.
    """
    first = parts[0][0]
    if all(tensors is first for tensors, _ in parts) and first[0].shape[0] == 1:
        return list(first)
    if len(parts) == 1 and first[0].shape[0] == parts[0][1]:
        return list(first)
    total = sum(count for _, count in parts)
    out = []
    for i, template in enumerate(first):
        array = np.empty((total, *template.shape[1:]), template.dtype)
        start = 0
        for tensors, count in parts:
            array[start : start + count] = tensors[i]  # broadcast over the request's prompts
            start += count
        out.append(array)
    return out
