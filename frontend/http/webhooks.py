"""Sending webhooks over HTTP (aiohttp), connecting only to addresses its own resolver checked.

What to send, when, signed how, and which targets are allowed is the
services' (``services/webhooks.py``); this is the client that carries it.
"""

from __future__ import annotations

import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from maskserve.frontend.errors import WebhookUnreachable
from maskserve.frontend.services.webhooks import address_allowed


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing any answer outside the allowed addresses: the connection uses what it checked."""

    def __init__(self, allow_private: bool) -> None:
        self._inner = DefaultResolver()
        self._allow_private = allow_private

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        for entry in found:
            if not address_allowed(entry["host"], self._allow_private):
                raise OSError(f"{host} resolves to {entry['host']}, which webhooks may not reach")
        return found

    async def close(self) -> None:
        await self._inner.close()


class HttpSender:
    """The ``WebhookSender`` port over one aiohttp session (opened on first use)."""

    def __init__(self, allow_private: bool, timeout_s: float) -> None:
        self._allow_private = allow_private
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=GuardedResolver(self._allow_private))
            timeout = aiohttp.ClientTimeout(total=self._timeout_s)
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self._session

    async def post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        try:
            async with self._client().post(url, data=body, headers=headers, allow_redirects=False) as resp:
                await resp.read()
                return resp.status
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise WebhookUnreachable(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
