"""Output files: local storage and HMAC-signed, expiring links.

A link signs ``<job_id>:<expires>`` with the server's secret (HMAC-SHA256). The
secret is generated on first start into the data directory (mode 0600) and
never leaves it. File names are the job id (a UUID we generated), never
anything a client sent, so a path cannot leave the files directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path

from frontend.errors import Forbidden

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


def load_or_create_secret(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        secret = bytes.fromhex(path.read_text().strip())
        if len(secret) < 32:
            raise RuntimeError(f"{path} holds a signing secret shorter than 32 bytes")
        return secret
    secret = secrets.token_bytes(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret.hex())
    return secret


def valid_job_id(job_id: str) -> bool:
    return bool(_JOB_ID.match(job_id))


class UrlSigner:
    def __init__(self, secret: bytes, ttl_s: int) -> None:
        self._secret = secret
        self.ttl_s = ttl_s

    def _sig(self, job_id: str, expires: int) -> str:
        return hmac.new(self._secret, f"{job_id}:{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, job_id: str, expires: int) -> str:
        return self._sig(job_id, expires)

    def expiry(self, now: float | None = None) -> int:
        return int(now if now is not None else time.time()) + self.ttl_s

    def query(self, job_id: str, expires: int) -> str:
        return f"expires={expires}&sig={self._sig(job_id, expires)}"

    def verify(self, job_id: str, expires: str | None, sig: str | None, now: float | None = None) -> None:
        """Raise 403 for a missing, malformed, tampered or expired signature."""
        if not expires or not sig:
            raise Forbidden("Missing signature")
        try:
            expires_at = int(expires)
        except ValueError:
            raise Forbidden("Invalid signature") from None
        if not hmac.compare_digest(self._sig(job_id, expires_at), sig):
            raise Forbidden("Invalid signature")
        if expires_at < (now if now is not None else time.time()):
            raise Forbidden("This link has expired")


class LocalFiles:
    """Output files under one directory, written atomically (the embedded default).

    Several frontends can share it when the directory is on shared storage
    (an NFS or similar mount); otherwise use ``DatabaseFiles``. The async
    methods are the storage interface the services use; the sync ones do the
    work in an executor.
    """

    async def put(self, job_id: str, extension: str, data: bytes) -> str:
        return str(await asyncio.to_thread(self.write, job_id, extension, data))

    async def get(self, location: str) -> Path | bytes | None:
        return self.resolve(location)

    async def remove(self, location: str) -> None:
        await asyncio.to_thread(self.delete, location)

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path_for(self, job_id: str, extension: str) -> Path:
        if not valid_job_id(job_id) or extension not in ("png", "webp"):
            raise ValueError("bad output file name")
        return self.root / f"{job_id}.{extension}"

    def write(self, job_id: str, extension: str, data: bytes) -> Path:
        target = self.path_for(job_id, extension)
        tmp = target.with_suffix(target.suffix + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
        return target

    def resolve(self, stored: str) -> Path | None:
        path = Path(stored)
        if path.parent.resolve() != self.root.resolve() or not path.is_file():
            return None
        return path

    def delete(self, stored: str) -> None:
        path = Path(stored)
        if path.parent.resolve() == self.root.resolve():
            path.unlink(missing_ok=True)


class DatabaseFiles:
    """Output files in PostgreSQL, readable by every frontend on every host.

    Outputs are small (a mask PNG is tens of kB for a real object, a cut-out a
    few MB at most) and short-lived (deleted when their link expires), which
    suits a table; the database is already shared by every frontend.
    """

    PREFIX = "db:"

    def __init__(self, store) -> None:
        self._store = store

    async def put(self, job_id: str, extension: str, data: bytes) -> str:
        if not valid_job_id(job_id):
            raise ValueError("bad output file name")
        await self._store.put_file(job_id, data)
        return self.PREFIX + job_id

    async def get(self, location: str) -> Path | bytes | None:
        if not location.startswith(self.PREFIX):
            return None
        return await self._store.get_file(location[len(self.PREFIX):])

    async def remove(self, location: str) -> None:
        if location.startswith(self.PREFIX):
            await self._store.delete_file(location[len(self.PREFIX):])


async def shared_secret(store) -> bytes:
    """One signing secret for every frontend on a shared database, generated by the first."""
    await store.set_state_if_absent("signing_secret", secrets.token_bytes(32).hex())
    return bytes.fromhex(await store.get_state("signing_secret"))
