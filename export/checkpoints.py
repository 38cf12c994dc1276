"""Building SAM 2 models from the sam2 package's configs, and their weights.

Weights come from Meta's checkpoint format (``{"model": state_dict}``), either a
file the user already has or one fetched by :func:`download_checkpoint`, which
verifies the published SHA-256. Random initialisation is only ever explicit
(``--random-weights``), and the export manifest records which one was used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskserve.export.variants import Variant

log = logging.getLogger(__name__)


class WeightsError(RuntimeError):
    """Weights are missing, unverifiable or do not fit the architecture."""


@dataclass(frozen=True)
class WeightsSource:
    """What the exported model was built with; stored in every manifest."""

    kind: str  # "checkpoint" | "random"
    checkpoint_file: str | None = None
    sha256: str | None = None
    seed: int | None = None

    def as_dict(self) -> dict[str, object]:
        if self.kind == "random":
            return {"kind": "random", "seed": self.seed}
        return {"kind": "checkpoint", "file": self.checkpoint_file, "sha256": self.sha256}

    def describe(self) -> str:
        if self.kind == "random":
            return f"random (seed {self.seed})"
        return f"checkpoint {self.checkpoint_file} (sha256 {self.sha256})"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _offline_hint(variant: Variant) -> str:
    return (
        f"Could not download {variant.url}. Without network access, pass "
        f"--checkpoint PATH to a local copy of {variant.checkpoint_filename}, or "
        "--random-weights [--seed N] to export the real architecture with random "
        "weights (outputs are then meaningless, for tests and benchmarks only)."
    )


class WeightsUnreachable(WeightsError):
    """The checkpoint's server could not be reached, or the download kept breaking off."""


DOWNLOAD_ATTEMPTS = 3
CHUNK = 1 << 20


def _fetch_into(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Append the rest of ``url`` to ``part`` (an HTTP range request from its size); restart if unsupported."""
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        resp = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing left after ``offset``: the part is complete (or too long)
            return
        raise
    with resp:
        if offset and resp.status != 206:  # the server ignored the range: start again from the first byte
            offset = 0
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        from tqdm import tqdm

        with (
            open(part, "ab" if offset else "wb") as out,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name.removesuffix(".part"),
                disable=not progress,
            ) as bar,
        ):
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
        if total is not None and part.stat().st_size < total:
            raise ConnectionError(f"the connection closed after {part.stat().st_size} of {total} bytes")


def download_checkpoint(
    variant: Variant, dest_dir: Path, timeout: float = 30.0, progress: bool = True, attempts: int = DOWNLOAD_ATTEMPTS
) -> Path:
    """Fetch ``variant``'s official checkpoint into ``dest_dir`` (the cache) and verify it.

    A cached file with the right digest is reused without any network access.
    The bytes arrive in ``<name>.pt.part``: a download that breaks off is
    resumed from where it stopped (an HTTP range request; from the start when
    the server does not take ranges), up to ``attempts`` times in this call and
    again on the next. Only a file whose SHA-256 matches is ever moved to its
    final name; a mismatch deletes it. A cached file that does not match is
    deleted and fetched again.
    """
    if variant.sha256 is None:
        raise WeightsError(
            f"No published SHA-256 is pinned for {variant.name}; download it yourself "
            f"from {variant.url} and pass --checkpoint PATH."
        )
    dest_dir.mkdir(parents=True, exist_ok=True)
    target = dest_dir / variant.checkpoint_filename
    if target.exists():
        if sha256_of(target) == variant.sha256:
            log.info("checkpoint %s: cached, SHA-256 verified", target)
            return target
        log.warning("cached %s does not match its SHA-256: deleted, fetching it again", target)
        target.unlink()
    part = dest_dir / f"{variant.checkpoint_filename}.part"
    last: Exception | None = None
    for _ in range(max(1, attempts)):
        try:
            _fetch_into(variant.url, part, timeout, progress)
            last = None
            break
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            last = exc  # unreachable, or broke off: the part stays for the next attempt
    if last is not None:
        kept = part.stat().st_size if part.exists() else 0
        raise WeightsUnreachable(f"{_offline_hint(variant)} ({last}; {kept} bytes kept to resume)") from last
    got = sha256_of(part)
    if got != variant.sha256:
        part.unlink()
        raise WeightsError(f"Downloaded {variant.url} but its SHA-256 is {got}, expected {variant.sha256}: deleted")
    os.replace(part, target)
    log.info("checkpoint %s: downloaded, SHA-256 verified", target)
    return target


def build_model(variant: Variant, seed: int = 0) -> Any:
    """The real SAM 2 architecture from the package's config.

    Parameters get the modules' own initialisation under ``seed``, so a seed
    names one set of random weights; a checkpoint then overwrites all of them.
    ``apply_postprocessing`` matches what SAM 2's image predictor builds (the
    mask decoder's dynamic multimask fallback is part of it).
    """
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(seed)
    return build_sam2(variant.config, ckpt_path=None, device="cpu", mode="eval")


def load_checkpoint(model: Any, path: Path) -> WeightsSource:
    """Load Meta's checkpoint format strictly: every key must fit the architecture."""
    import torch

    if not path.is_file():
        raise WeightsError(f"checkpoint {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise WeightsError(f"checkpoint {path} could not be read: {exc}") from exc
    if not isinstance(blob, dict) or not isinstance(blob.get("model"), dict):
        raise WeightsError(f"checkpoint {path} is not in SAM 2's format (a dict with a 'model' state dict)")
    result = model.load_state_dict(blob["model"], strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"checkpoint {path} does not fit this architecture: "
            f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), "
            f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})"
        )
    model.eval()
    return WeightsSource("checkpoint", checkpoint_file=path.name, sha256=sha256_of(path))


def random_weights(seed: int) -> WeightsSource:
    log.warning("RANDOM WEIGHTS (seed %d): model outputs are meaningless", seed)
    return WeightsSource("random", seed=seed)
