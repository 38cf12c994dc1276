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
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

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


def download_checkpoint(variant: Variant, dest_dir: Path, timeout: float = 30.0) -> Path:
    """Fetch ``variant``'s official checkpoint into ``dest_dir`` and verify it.

    A file already present with the right digest is reused; a wrong digest is
    never accepted, whether the file was already there or just downloaded.
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
            return target
        raise WeightsError(f"{target} exists but its SHA-256 does not match {variant.sha256}")
    fd, tmp_name = tempfile.mkstemp(dir=dest_dir, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(variant.url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out, length=1 << 20)
        got = sha256_of(Path(tmp_name))
        if got != variant.sha256:
            raise WeightsError(f"Downloaded {variant.url} but its SHA-256 is {got}, expected {variant.sha256}")
        os.replace(tmp_name, target)
        return target
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise WeightsError(f"{_offline_hint(variant)} ({exc})") from exc
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def build_model(variant: Variant, seed: int = 0):
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


def load_checkpoint(model, path: Path) -> WeightsSource:
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
