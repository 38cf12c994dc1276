"""Image handles (API.md v1.2): an upload kept for its key, named by ``img_<32 hex>``, valid while it is used."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

IMAGE_ID = re.compile(r"^img_[0-9a-f]{32}$")
UNKNOWN_IMAGE = "Unknown or expired image_id"


def handle_id(key_id: str, digest: str) -> str:
    """The same image content uploaded by the same key gives the same handle; another key's differs."""
    return "img_" + hashlib.sha256(f"{key_id}\0{digest}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class ImageHandle:
    """What the service keeps for a handle: the upload (in the output storage) and what was read of it."""

    id: str
    key_id: str
    digest: str  # SHA-256 of the upload, as the model tier keys its embeddings
    location: str  # the upload in the output storage
    filename: str | None
    field: str  # the form field it came in (what an error about its pixels names)
    width: int  # oriented
    height: int
    input_bytes: int
    created_at: float
    stored_at: float  # when the upload was (last) written: an object store's expiry rule counts from there
    expires_at: float  # renewed by every use

    def live(self, at: float) -> bool:
        return self.expires_at > at
