"""Building the adapters from the settings: the one place that chooses between them."""

from __future__ import annotations

from dataclasses import dataclass

from maskserve.frontend.adapters.files import DatabaseFiles, LocalFiles
from maskserve.frontend.adapters.objects import S3Files
from maskserve.frontend.adapters.ratelimit import RateLimiter, SharedRateLimiter
from maskserve.frontend.adapters.store import build_store
from maskserve.frontend.config import Settings
from maskserve.frontend.domain.accounts import RateBucket
from maskserve.frontend.ports import OutputFiles, RateLimits, Store
from maskserve.frontend.signing import UrlSigner, load_or_create_secret, shared_secret


@dataclass(frozen=True)
class Backends:
    store: Store
    files: OutputFiles
    limits: RateLimits
    signer: UrlSigner


async def build_backends(settings: Settings) -> Backends:
    """Open the store and build what goes with it.

    Alone (SQLite), the signing secret is a file in the data directory and the
    rate windows live in memory; sharing a database with other frontends, the
    secret and the rate windows live in the database too, so every frontend
    signs and counts alike.
    """
    store = build_store(settings)
    await store.open()
    limits = {
        RateBucket.SINGLE: settings.rate_single_per_min,
        RateBucket.BATCH: settings.rate_batch_per_min,
        RateBucket.READ: settings.rate_read_per_min,
    }
    if settings.shared:
        secret = await shared_secret(store)
        rate: RateLimits = SharedRateLimiter(limits, store)
    else:
        secret = load_or_create_secret(settings.secret_path)
        rate = RateLimiter(limits)
    files: OutputFiles
    if settings.files_backend == "s3":
        files = S3Files(settings)
    elif settings.files_in_database:
        files = DatabaseFiles(store)
    else:
        files = LocalFiles(settings.files_dir)
    await files.open()
    return Backends(store, files, rate, UrlSigner(secret, settings.url_ttl_s))
