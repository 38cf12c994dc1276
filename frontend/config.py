"""Frontend settings: one frozen dataclass, read once at start-up, passed explicitly.

Each field declares its environment variable, its help text and its range or
allowed values; ``Settings.from_env`` parses each by its declared type and
``Settings`` validates itself on construction, so a bad value stops the
service at start-up with a message naming the variable. The settings table in
``docs/API.md`` is generated from the same metadata (``settings_table``) and a
test keeps the two equal.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_type_hints

MB = 1024 * 1024
FILES_BACKENDS = ("auto", "local", "database", "s3")


class SettingsError(ValueError):
    """A setting has a value outside its declared type, range or choices."""


def setting(
    default: Any,
    help: str,
    *,
    env: str | None = None,
    min: float | None = None,
    max: float | None = None,
    choices: tuple[str, ...] | None = None,
    shown: str | None = None,
) -> Any:
    """A field with the metadata that parsing, validation and the docs table read."""
    meta = {"env": env, "help": help, "min": min, "max": max, "choices": choices, "shown": shown}
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    host: str = setting("127.0.0.1", "address the API listens on")
    port: int = setting(8080, "API port", min=1, max=65535)
    data_dir: Path = setting(Path("data"), "SQLite database, output files and signing secret", shown="./data")
    database_url: str = setting(
        "", "empty: SQLite in `data_dir`; or `postgresql://user:pass@host:port/db` shared by several frontends"
    )
    files_backend: str = setting(
        "auto",
        "where output files live: `local` (the data directory, e.g. a shared mount), `database` (rows of the "
        "database, readable by every frontend), `s3` (an S3-compatible bucket: the choice for several "
        "frontends); `auto` = `database` with a database URL, else `local`",
        choices=FILES_BACKENDS,
    )
    s3_endpoint_url: str = setting(
        "", "S3 endpoint the frontends use, e.g. `http://minio:9000` (empty: AWS S3 in `s3_region`)"
    )
    s3_public_endpoint_url: str = setting(
        "", "S3 endpoint clients reach, when it differs from `s3_endpoint_url` (presigned links name it)"
    )
    s3_bucket: str = setting("", "bucket for output files (created if missing); required with `files_backend=s3`")
    s3_region: str = setting("us-east-1", "S3 region (also the signing region)")
    s3_prefix: str = setting("", "key prefix for our objects, e.g. `maskserve/` (letters, digits, `/._-`)")
    s3_access_key_id: str = setting(
        "", "S3 access key; empty: the standard AWS chain (`AWS_ACCESS_KEY_ID`, profiles, instance roles)"
    )
    s3_secret_access_key: str = setting(
        "", "S3 secret key; empty: the standard AWS chain (`AWS_SECRET_ACCESS_KEY`, ...)", shown="(secret)"
    )
    s3_addressing_style: str = setting(
        "path",
        "bucket in the path (MinIO, Ceph) or in the host name (`virtual`, AWS)",
        choices=("path", "virtual", "auto"),
    )
    s3_downloads: str = setting(
        "redirect",
        "valid file links answer 302 to a presigned URL (`redirect`: bytes flow from the store) or stream "
        "the object through the frontend (`proxy`: for stores clients cannot reach)",
        choices=("redirect", "proxy"),
    )
    s3_presign_ttl_s: int = setting(
        300, "longest life of a presigned URL, seconds (never past the file link's own expiry)", min=1, max=604800
    )
    s3_multipart_mib: int = setting(
        8, "outputs larger than this are sent as multipart uploads of this part size, MiB", min=5, max=512
    )
    s3_timeout_s: float = setting(10.0, "connect and read timeout of one S3 call, seconds", min=0.1)
    triton_url: str = setting(
        "127.0.0.1:8001",
        "Triton gRPC address HOST:PORT, or several separated by commas: each image goes to one replica by "
        "rendezvous hashing of its digest (the same one from every frontend)",
    )
    public_url: str = setting("", "base of output URLs (empty: the request's own scheme and host)")
    max_upload_bytes: int = setting(25 * MB, "largest uploaded file", min=1, shown="25 MiB")
    max_pixels: int = setting(40_000_000, "largest image, in pixels", min=1)
    max_batch: int = setting(50, "files per batch", min=1, max=50)
    url_ttl_s: int = setting(3600, "lifetime of output links, seconds", min=1)
    image_id_ttl_s: float = setting(
        3600.0, "an image handle (`image_id`) stays valid this long after its last use, seconds", min=1
    )
    max_video_bytes: int = setting(200 * MB, "largest uploaded video", min=1, shown="200 MiB")
    max_video_frames: int = setting(600, "frames a video may keep (after fps resampling)", min=2)
    max_open_videos: int = setting(5, "videos one API key may hold at once", min=1)
    video_ttl_s: float = setting(3600.0, "a video stays open this long after its last use, seconds", min=1)
    sweep_interval_s: float = setting(60.0, "how often expired files are deleted, seconds", min=0.01)
    triton_timeout_s: float = setting(60.0, "deadline of one Triton call, seconds", min=0.1)
    everything_budget_s: float = setting(
        60.0,
        "longest a segment-everything request may run, seconds: a grid the model tier projects to take "
        "longer is stopped after its first decoder batches and refused with 422",
        min=1.0,
    )
    webhook_private_targets: str = setting(
        "refuse",
        "webhook URLs resolving to loopback, private or link-local addresses: refused (422), or allowed "
        "(for webhooks inside a private network)",
        choices=("refuse", "allow"),
    )
    webhook_attempts: int = setting(7, "webhook delivery attempts before it is given up", min=1, max=20)
    webhook_backoff_s: float = setting(
        60.0, "wait before a webhook's first retry, seconds; doubled for each further one", min=0.01
    )
    webhook_timeout_s: float = setting(10.0, "time a webhook target gets to answer, seconds", min=0.1)
    webhook_poll_s: float = setting(1.0, "how often each frontend looks for due webhook deliveries, seconds", min=0.01)
    rate_single_per_min: int = setting(
        60, "single-image requests per key and minute", env="MASKSERVE_RATE_SINGLE", min=1
    )
    rate_batch_per_min: int = setting(30, "batch requests per key and minute", env="MASKSERVE_RATE_BATCH", min=1)
    rate_read_per_min: int = setting(
        600, "job and account lookups per key and minute", env="MASKSERVE_RATE_READ", min=1
    )
    inflight_images: int = setting(16, "images decoded or encoded at once per process", min=1)
    max_admitted_images: int = setting(
        100, "images accepted and not yet answered per process; more get a fast 503", min=1
    )
    async_backlog_images: int = setting(
        500, "asynchronous images accepted and not yet ended per process; more get a fast 503 with Retry-After", min=1
    )
    upload_timeout_s: float = setting(120.0, "time to receive a request's whole body; slower uploads get 400", min=1)
    shutdown_timeout_s: float = setting(60.0, "time in-flight requests get to finish after SIGTERM", min=0)

    def __post_init__(self) -> None:
        for f in fields(self):
            _check(f, getattr(self, f.name))
        if self.files_backend == "s3" and not self.s3_bucket:
            raise SettingsError("MASKSERVE_S3_BUCKET: required with MASKSERVE_FILES_BACKEND=s3")
        if any(not (c.isalnum() or c in "/._-") for c in self.s3_prefix):
            raise SettingsError(f"MASKSERVE_S3_PREFIX={self.s3_prefix!r}: letters, digits and /._- only")
        for url in self.triton_urls or [""]:
            host, _, port = url.rpartition(":")
            if not host or not port.isdigit():
                raise SettingsError(f"MASKSERVE_TRITON_URL: {url!r} is not HOST:PORT")

    @property
    def database_path(self) -> Path:
        return self.data_dir / "maskserve.db"

    @property
    def journal_path(self) -> Path:
        """Local durable state: what database faults left to settle (``adapters/journal.py``)."""
        return self.data_dir / "settlements.db"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

    @property
    def secret_path(self) -> Path:
        return self.data_dir / "signing.key"

    @property
    def triton_urls(self) -> list[str]:
        return [url.strip() for url in self.triton_url.split(",") if url.strip()]

    @property
    def webhook_allow_private(self) -> bool:
        return self.webhook_private_targets == "allow"

    @property
    def shared(self) -> bool:
        """Whether other frontends may share this one's database (PostgreSQL)."""
        return bool(self.database_url)

    @property
    def files_in_database(self) -> bool:
        return self.files_backend == "database" or (self.files_backend == "auto" and self.shared)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Defaults, then ``MASKSERVE_*`` variables, then explicit (CLI) overrides that are not None."""
        env = os.environ if env is None else env
        types = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            var = env_name(f)
            if var in env:
                values[f.name] = _parse(var, types[f.name], env[var])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)


def env_name(f: Field[Any]) -> str:
    return f.metadata.get("env") or "MASKSERVE_" + f.name.upper()


def _parse(var: str, kind: type, raw: str) -> Any:
    try:
        return kind(raw.strip()) if kind in (int, float) else kind(raw)
    except ValueError:
        raise SettingsError(f"{var}={raw!r}: expected {'an integer' if kind is int else 'a number'}") from None


def _check(f: Field[Any], value: Any) -> None:
    meta, var = f.metadata, env_name(f)
    if meta["choices"] is not None and value not in meta["choices"]:
        raise SettingsError(f"{var}={value!r}: must be one of {', '.join(meta['choices'])}")
    if meta["min"] is not None and value < meta["min"]:
        raise SettingsError(f"{var}={value!r}: must be at least {meta['min']:g}")
    if meta["max"] is not None and value > meta["max"]:
        raise SettingsError(f"{var}={value!r}: must be at most {meta['max']:g}")


def settings_table() -> str:
    """The Markdown table of every setting (docs/API.md holds exactly this)."""
    rows = ["| setting | env | default | allowed | meaning |", "| --- | --- | --- | --- | --- |"]
    for f in fields(Settings):
        meta = f.metadata
        default = meta["shown"] or (f.default if f.default is not MISSING else "")
        allowed = ", ".join(f"`{c}`" for c in meta["choices"]) if meta["choices"] else _range(meta)
        rows.append(
            f"| {f.name} | `{env_name(f)}` | {default if default != '' else '(empty)'} | {allowed} | {meta['help']} |"
        )
    return "\n".join(rows)


def _range(meta: Mapping[str, Any]) -> str:
    low, high = meta["min"], meta["max"]
    if low is None and high is None:
        return ""
    if high is None:
        return f"≥ {low:g}"
    return f"{low:g}–{high:g}"


if __name__ == "__main__":  # python -m maskserve.frontend.config > the table for docs/API.md
    print(settings_table())
