"""Output files: a local directory (the embedded default) or rows of the shared database
(an S3-compatible bucket: ``objects.S3Files``).

File names are the job id (a UUID we generated) or a file id derived from it
(``<job id>_<n>`` for an object's mask, ``<job id>_logits`` for the logits a
refinement reuses), never anything a client sent, so a path cannot leave the
files directory.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

from maskserve.frontend.ports import FileRows
from maskserve.frontend.signing import valid_file_id

EXTENSIONS = ("png", "webp", "jpeg", "f32", "bin", "jpg", "json", "mp4")
"""Images, refinement logits (raw float32), async inputs; video frames, propagation results and previews."""


class _ServedHere:
    """A backend whose files the frontend serves itself, with nothing to open or check."""

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def link(self, location: str, content_type: str, valid_until: float) -> str | None:
        return None


class LocalFiles(_ServedHere):
    """Output files under one directory, written atomically.

    Several frontends can share it when the directory is on shared storage
    (an NFS or similar mount); otherwise use ``DatabaseFiles``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    async def put(self, job_id: str, extension: str, data: bytes) -> str:
        return str(await asyncio.to_thread(self._write, job_id, extension, data))

    async def get(self, location: str) -> Path | bytes | None:
        return await asyncio.to_thread(self._resolve, location)

    def _resolve(self, location: str) -> Path | None:
        path = Path(location)
        if path.parent.resolve() != self.root.resolve() or not path.is_file():
            return None
        return path

    async def remove(self, location: str) -> None:
        path = Path(location)
        if path.parent.resolve() == self.root.resolve():
            await asyncio.to_thread(path.unlink, missing_ok=True)

    def _write(self, job_id: str, extension: str, data: bytes) -> Path:
        if not valid_file_id(job_id) or extension not in EXTENSIONS:
            raise ValueError("bad output file name")
        target = self.root / f"{job_id}.{extension}"
        tmp = target.with_suffix(f"{target.suffix}.{uuid.uuid4().hex[:8]}.tmp")  # writers of one name never meet
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
        return target


class DatabaseFiles(_ServedHere):
    """Output files as rows of the shared database, readable by every frontend on every host.

    Outputs are small (a mask PNG is tens of kB for a real object, a cut-out a
    few MB at most) and short-lived (deleted when their link expires), which
    suits a table; the database is already shared by every frontend.
    """

    PREFIX = "db:"

    def __init__(self, rows: FileRows) -> None:
        self._rows = rows

    async def put(self, job_id: str, extension: str, data: bytes) -> str:
        if not valid_file_id(job_id):
            raise ValueError("bad output file name")
        await self._rows.put_file(job_id, data)
        return self.PREFIX + job_id

    async def get(self, location: str) -> Path | bytes | None:
        if not location.startswith(self.PREFIX):
            return None
        return await self._rows.get_file(location.removeprefix(self.PREFIX))

    async def remove(self, location: str) -> None:
        if location.startswith(self.PREFIX):
            await self._rows.delete_file(location.removeprefix(self.PREFIX))
