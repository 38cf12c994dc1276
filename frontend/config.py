"""Frontend settings: one frozen dataclass, read once at start-up, passed explicitly.

Every setting, its environment variable and default:

| setting | env | default |
| --- | --- | --- |
| host | MASKSERVE_HOST | 127.0.0.1 |
| port | MASKSERVE_PORT | 8080 |
| data_dir | MASKSERVE_DATA_DIR | ./data (SQLite database, output files, signing secret) |
| files_backend | MASKSERVE_FILES_BACKEND | `database` (with a database URL: output files in PostgreSQL, readable by every frontend) or `local` (the data directory, e.g. on a shared mount) |
| database_url | MASKSERVE_DATABASE_URL | (empty: SQLite in data_dir) or `postgresql://user:pass@host:port/db` shared by several frontends |
| triton_url | MASKSERVE_TRITON_URL | 127.0.0.1:8001 |
| public_url | MASKSERVE_PUBLIC_URL | (empty: output URLs use the request's own host) |
| max_upload_bytes | MASKSERVE_MAX_UPLOAD_BYTES | 25 MB (25 * 1024 * 1024) per file |
| max_pixels | MASKSERVE_MAX_PIXELS | 40,000,000 per image |
| max_batch | MASKSERVE_MAX_BATCH | 50 |
| url_ttl_s | MASKSERVE_URL_TTL_S | 3600 |
| sweep_interval_s | MASKSERVE_SWEEP_INTERVAL_S | 60 |
| cache_bytes | MASKSERVE_CACHE_BYTES | 512 MiB of image embeddings |
| triton_timeout_s | MASKSERVE_TRITON_TIMEOUT_S | 60 |
| rate_single_per_min | MASKSERVE_RATE_SINGLE | 60 |
| rate_batch_per_min | MASKSERVE_RATE_BATCH | 30 |
| rate_read_per_min | MASKSERVE_RATE_READ | 600 (job and account lookups) |
| inflight_images | MASKSERVE_INFLIGHT_IMAGES | 16 images decoded/encoded at once per process |
| max_admitted_images | MASKSERVE_MAX_ADMITTED_IMAGES | 100 images accepted and not yet answered per process; more get a fast 503 |
| upload_timeout_s | MASKSERVE_UPLOAD_TIMEOUT_S | 120 s to receive a request's whole body; slower uploads get 400 |
| shutdown_timeout_s | MASKSERVE_SHUTDOWN_TIMEOUT_S | 60 s for in-flight requests to finish after SIGTERM |
| triton_shm_slots | MASKSERVE_TRITON_SHM_SLOTS | 8 shared-memory slots of 32 MiB for tensors to a Triton on loopback (0 = plain gRPC) |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

MB = 1024 * 1024
_PARSERS = {"str": str, "int": int, "float": float, "Path": Path}


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path("data")
    database_url: str = ""
    files_backend: str = "database"
    triton_url: str = "127.0.0.1:8001"
    public_url: str = ""
    max_upload_bytes: int = 25 * MB
    max_pixels: int = 40_000_000
    max_batch: int = 50
    url_ttl_s: int = 3600
    sweep_interval_s: float = 60.0
    cache_bytes: int = 512 * MB
    triton_timeout_s: float = 60.0
    rate_single_per_min: int = 60
    rate_batch_per_min: int = 30
    rate_read_per_min: int = 600
    inflight_images: int = 16
    triton_shm_slots: int = 8
    max_admitted_images: int = 100
    upload_timeout_s: float = 120.0
    shutdown_timeout_s: float = 60.0

    @property
    def database_path(self) -> Path:
        return self.data_dir / "maskserve.db"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def secret_path(self) -> Path:
        return self.data_dir / "signing.key"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> "Settings":
        """Defaults, then ``MASKSERVE_*`` variables, then explicit (CLI) overrides."""
        env = os.environ if env is None else env
        names = {
            "rate_single_per_min": "MASKSERVE_RATE_SINGLE",
            "rate_batch_per_min": "MASKSERVE_RATE_BATCH",
            "rate_read_per_min": "MASKSERVE_RATE_READ",
        }
        values: dict[str, object] = {}
        for f in fields(cls):
            var = names.get(f.name, "MASKSERVE_" + f.name.upper())
            if var in env:
                values[f.name] = _PARSERS[str(f.type)](env[var])
        settings = replace(cls(), **values)
        return replace(settings, **{k: v for k, v in overrides.items() if v is not None})
