"""Which Triton replica serves an image: rendezvous hashing of its digest over the replicas.

Every frontend orders the replicas the same way for the same image (highest
``hash(replica, digest)`` first), so an image's prompts all reach the replica
that holds its embeddings, whichever frontend receives them, and adding or
removing a replica moves only the images that hashed to it. A replica that
fails is skipped for a while (its images are encoded again on the next one in
their order) and tried again after ``retry_after_s``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


def rendezvous_score(replica: str, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{replica}\0{key}".encode(), digest_size=8).digest(), "big")


@dataclass
class Replica(Generic[T]):
    url: str
    client: T
    down_until: float = 0.0
    failures: int = field(default=0)


class ReplicaSet(Generic[T]):
    def __init__(
        self,
        urls: Sequence[str],
        make_client: Callable[[str], T],
        retry_after_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not urls:
            raise ValueError("at least one Triton URL is needed")
        self.replicas = [Replica(url, make_client(url)) for url in dict.fromkeys(urls)]
        self.retry_after_s = retry_after_s
        self._clock = clock

    def order(self, key: str) -> list[Replica[T]]:
        """Every replica, the key's own first; replicas marked down go last (still tried if all are down)."""
        ranked = sorted(self.replicas, key=lambda r: rendezvous_score(r.url, key), reverse=True)
        now = self._clock()
        return [r for r in ranked if r.down_until <= now] + [r for r in ranked if r.down_until > now]

    def failed(self, replica: Replica[T]) -> None:
        replica.failures += 1
        replica.down_until = self._clock() + self.retry_after_s

    def succeeded(self, replica: Replica[T]) -> None:
        replica.failures = 0
        replica.down_until = 0.0
