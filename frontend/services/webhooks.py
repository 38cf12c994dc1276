"""Webhooks (API.md v1.1): where they may go, how they are signed, and how they are delivered.

A target must be ``http``/``https`` and resolve only to public addresses:
loopback, private, link-local, multicast and reserved ones are refused (422 on
``webhook_url``) unless ``webhook_allow_private`` is set. The check runs when
the request is accepted and again on every delivery, and the delivery connects
only to addresses the sender's own resolver checked (``address_allowed``), so a
DNS answer that changes in between (rebinding) cannot reach an internal service.

Each delivery is a POST of the job's or batch's JSON with
``Maskserve-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``
under the API key's webhook secret, and the Standard Webhooks headers
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature: v1,<base64>``, API.md
v1.2) signed with the same secret's bytes, which ``standard_secret`` writes in
the ``whsec_<base64>`` form those libraries take. A non-2xx answer or a timeout is retried
with exponential backoff (``webhook_backoff_s`` × 2ⁿ) up to
``webhook_attempts`` attempts; the deliveries live in the database, so a
restart does not lose them and only one frontend sends each attempt.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import logging
import socket
import time
from urllib.parse import urlsplit

from maskserve.frontend.config import Settings
from maskserve.frontend.domain.fields import MAX_WEBHOOK_URL
from maskserve.frontend.domain.jobs import Delivery
from maskserve.frontend.errors import ValidationFailed, WebhookUnreachable
from maskserve.frontend.ports import WebhookSender
from maskserve.frontend.services.base import Deps, Service

log = logging.getLogger("maskserve.frontend")

SIGNATURE_HEADER = "Maskserve-Signature"
STANDARD_PREFIX = "whsec_"


class TargetRefused(ValueError):
    """A webhook target this server will not call."""


def address_allowed(address: str, allow_private: bool) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return allow_private or (ip.is_global and not ip.is_multicast)


def parse_target(url: str) -> tuple[str, int]:
    """(host, port) of an acceptable webhook URL, or ``TargetRefused``."""
    if len(url) > MAX_WEBHOOK_URL:
        raise TargetRefused(f"at most {MAX_WEBHOOK_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused("must be an http or https URL with a host")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


async def check_target(url: str, allow_private: bool) -> None:
    """Refuse a URL that is not http(s), does not resolve, or resolves to a non-public address."""
    host, port = parse_target(url)
    try:
        answers = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise TargetRefused(f"{host} does not resolve ({exc})") from None
    for *_, sockaddr in answers:
        if not address_allowed(str(sockaddr[0]), allow_private):
            raise TargetRefused(
                f"{host} resolves to {sockaddr[0]}, a loopback, private or link-local address "
                "(refused unless the server allows private webhook targets)"
            )


async def accept_target(url: str | None, allow_private: bool) -> None:
    """At acceptance: a target that may not be called is 422 on ``webhook_url``."""
    if url is None:
        return
    try:
        await check_target(url, allow_private)
    except TargetRefused as exc:
        raise ValidationFailed.one("query", "webhook_url", str(exc)) from None


def signature(secret: str, timestamp: int, body: str) -> str:
    """The ``Maskserve-Signature`` value: a client checks it with ``hmac`` and ``hashlib`` alone."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def standard_secret(secret: str) -> str:
    """The secret in the Standard Webhooks form: ``whsec_`` and the base64 of its bytes."""
    return STANDARD_PREFIX + base64.b64encode(secret.encode()).decode()


def standard_headers(secret: str, message_id: str, timestamp: int, body: str) -> dict[str, str]:
    """``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` of the Standard Webhooks spec."""
    mac = hmac.new(secret.encode(), f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


def retry_delay(settings: Settings, attempts: int) -> float | None:
    """Seconds until the next attempt after ``attempts`` failed ones; None when they are used up."""
    if attempts >= settings.webhook_attempts:
        return None
    return settings.webhook_backoff_s * 2 ** (attempts - 1)


class Webhooks(Service):
    """Sends the store's due deliveries; one loop per frontend (``run``)."""

    def __init__(self, deps: Deps, sender: WebhookSender) -> None:
        super().__init__(deps)
        self.sender = sender

    async def _attempt(self, delivery: Delivery) -> str | None:
        """One POST; the error that makes it count as failed, or None."""
        secret = await self.store.webhook_secret(delivery.key_id)
        if not secret:
            return "the API key has no webhook secret"
        try:
            await check_target(delivery.url, self.settings.webhook_allow_private)
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "maskserve-webhooks",
                SIGNATURE_HEADER: signature(secret, timestamp, delivery.body),
                # one id per delivery, the same on each of its retries
                **standard_headers(secret, f"msg_{delivery.id}", timestamp, delivery.body),
            }
            status = await self.sender.post(delivery.url, delivery.body.encode(), headers)
            return None if 200 <= status < 300 else f"HTTP {status}"
        except (TargetRefused, WebhookUnreachable) as exc:
            return f"{type(exc).__name__}: {exc}"

    async def deliver(self, delivery: Delivery) -> None:
        error = await self._attempt(delivery)
        attempts = delivery.attempts + 1
        delay = None if error is None else retry_delay(self.settings, attempts)
        if error is not None:
            log.warning("webhook %d to %s, attempt %d: %s", delivery.id, delivery.url, attempts, error)
        await self.store.delivery_done(delivery.id, attempts, error, None if delay is None else time.time() + delay)

    async def run(self) -> None:
        while True:
            try:
                due = await self.store.claim_deliveries(lease_s=self.settings.webhook_timeout_s * 3)
                await asyncio.gather(*(self.deliver(d) for d in due))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook deliveries failed")
            await asyncio.sleep(self.settings.webhook_poll_s)
