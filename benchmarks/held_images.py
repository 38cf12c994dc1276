"""The decoder holding images vs the embeddings sent with every prompt, side by side in one run.

One export; two copies of its repository that differ only in two parameters: the
decoder's ``held_images`` (4, or 0) and the session's ``decoder_holds_images``
(true, or false: the session sends an image's 16 MiB of fp32 embeddings with
every prompt, as before). Each variant runs in a fresh stack, alternated
``--rounds`` times: clicks by ``image_id`` at c=1 (p50, the decoder graph's own
compute, the rest) and at c=8 (clicks/s).

    python -m benchmarks.held_images [--clicks 40] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from benchmarks.images import photo
from benchmarks.interactive import clicks
from benchmarks.stack import export_default, running_stack

VARIANTS = {
    "held": {},
    "sent": {"held_images": ("4", "0"), "decoder_holds_images": ("true", "false")},
}


def _param(key: str, value: str) -> str:
    return f'key: "{key}" value: {{ string_value: "{value}" }}'


def variant(repo: Path, name: str) -> Path:
    """A copy of ``repo`` with the variant's parameters."""
    out = repo.parent / name
    shutil.copytree(repo, out, symlinks=True)
    for config in out.glob("*/config.pbtxt"):
        text = config.read_text()
        for key, (before, after) in VARIANTS[name].items():
            text = text.replace(_param(key, before), _param(key, after))
        config.write_text(text)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clicks", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/held_images.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="maskserve-held-"))
    repo = export_default(work)
    repos = {name: variant(repo, name) for name in VARIANTS}
    image = photo(1)
    rows = []
    print("| round | variant | c=1 p50 ms | decoder graph ms | the rest ms | stages ms | c=8 clicks/s |")
    print("| --- | --- | ---: | ---: | ---: | --- | ---: |")
    for round_ in range(1, args.rounds + 1):
        for name in ("sent", "held"):
            with running_stack(repos[name]) as stack:
                clicks(stack, image, "click", 10, 1)  # warm-up: the upload and the first clicks
                one = clicks(stack, image, "click", args.clicks, 1)
                eight = clicks(stack, image, "click", args.clicks, 8)
            stages = ", ".join(f"{k} {v:.1f}" for k, v in one["stages_ms"].items())
            print(
                f"| {round_} | {name} | {one['ours_p50_ms']:.1f} | {one['decoder_compute_ms']:.1f} "
                f"| {one['overhead_ms']:.1f} | {stages} | {eight['prompts_per_s']:.2f} |",
                flush=True,
            )
            rows.append({"round": round_, "variant": name, "c1": one, "c8": eight})
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
