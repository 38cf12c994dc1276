"""Clients that load a service throughout a test, one thread each, until the ``with`` block ends."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Self


class ClientThreads:
    """One thread per client name running ``_client(name)``; ``stop`` is set when the block ends."""

    def __init__(self, names: Iterable[str]) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(name,)) for name in names]

    def _client(self, name: str) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(240)
