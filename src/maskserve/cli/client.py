"""``maskserve segment | extract | everything``: the API over a folder of images, from the command line.

The key comes from ``MASKSERVE_API_KEY``, the URL from ``--url`` or
``MASKSERVE_URL``. Images are given as files, folders or globs; they go to
the batch endpoints (``--batch-size`` at a time, segment-everything one by
one), with a progress bar and a summary of credits used, failures and time.

Exit codes: 0 every image done; 2 bad usage (arguments, no image found, no
key); 3 some images failed (the others are written); 4 the service refused
or could not be reached (key, credits, rate, 5xx, network).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_USAGE, EXIT_FAILED_IMAGES, EXIT_SERVICE = 0, 2, 3, 4
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
COMMANDS = ("segment", "extract", "everything")


def _numbers(text: str, count: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be numbers separated by commas, got {text!r}") from None
    if len(values) not in count:
        raise argparse.ArgumentTypeError(f"{what} takes {' or '.join(map(str, count))} numbers, got {text!r}")
    return values


def point(text: str) -> list[float]:
    """``X,Y`` or ``X,Y,LABEL`` (label 1 foreground, 0 background)."""
    return _numbers(text, (2, 3), "--point")


def box(text: str) -> list[float]:
    return _numbers(text, (4,), "--box")


def add_arguments(sub: Any) -> None:
    for name, text in (
        ("segment", "masks of images (points and/or a box), written as PNGs"),
        ("extract", "cut-outs of images (points and/or a box), written as WebP/PNG/JPEG"),
        ("everything", "segment-everything: a label map PNG and the masks' JSON per image"),
    ):
        cmd = sub.add_parser(name, help=text, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.add_argument("images", nargs="+", help="image files, folders or globs")
        cmd.add_argument("--out", type=Path, default=Path("."), help="where the outputs go (created)")
        cmd.add_argument("--url", help="the API (default MASKSERVE_URL or http://127.0.0.1:8080)")
        if name != "everything":
            cmd.add_argument("--point", type=point, action="append", help="X,Y[,LABEL]; repeat for several")
            cmd.add_argument("--box", type=box, help="X1,Y1,X2,Y2")
            cmd.add_argument("--batch-size", type=int, default=10, help="images per request (1-50)")
            cmd.add_argument(
                "--prompts",
                type=Path,
                help='a file of prompts, one JSON object per line ({"points": [[x, y]], "labels": [1], '
                '"box": [x1, y1, x2, y2]}): each image is uploaded once, then every prompt is sent by its '
                "handle; outputs are <name>_<n>",
            )
        else:
            cmd.add_argument("--points-per-side", type=int, default=16)
        if name == "extract":
            cmd.add_argument("--feather", type=int, default=0)
            cmd.add_argument("--format", dest="output_format", choices=("webp", "png", "jpeg"), default="webp")
            cmd.add_argument("--bg-color", help="#RRGGBB or #RRGGBBAA")
            cmd.add_argument("--crop", action="store_true")


def find_images(patterns: list[str]) -> list[Path]:
    """Files as given, folders' images (sorted), globs; each once, in order."""
    found: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            found += sorted(Path(p) for p in glob.glob(pattern) if Path(p).is_file())
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


def _prompt(args: argparse.Namespace) -> dict[str, Any]:
    prompt: dict[str, Any] = {}
    if args.point:
        prompt["points"] = [p[:2] for p in args.point]
        prompt["labels"] = [int(p[2]) if len(p) == 3 else 1 for p in args.point]
    if args.box:
        prompt["box"] = args.box
    return prompt


def _parts(items: list[Path], size: int) -> Iterator[list[Path]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def run_client(args: argparse.Namespace) -> int:
    import httpx
    from tqdm import tqdm

    from maskserve.client import Client, MaskserveError

    images = find_images(args.images)
    if not images:
        print("no image found in " + " ".join(args.images), file=sys.stderr)
        return EXIT_USAGE
    prompts = None
    if getattr(args, "prompts", None) is not None:
        try:
            prompts = read_prompts(args.prompts)
        except (OSError, ValueError) as exc:
            print(f"maskserve {args.command}: --prompts {args.prompts}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.command != "everything" and not (args.point or args.box or prompts):
        print(f"maskserve {args.command}: give --point X,Y[,LABEL] and/or --box X1,Y1,X2,Y2", file=sys.stderr)
        return EXIT_USAGE
    size = getattr(args, "batch_size", 1)
    if not 1 <= size <= 50:
        print("--batch-size must be from 1 to 50", file=sys.stderr)
        return EXIT_USAGE
    if not os.environ.get("MASKSERVE_API_KEY"):
        print("set MASKSERVE_API_KEY to your API key", file=sys.stderr)
        return EXIT_USAGE
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    credits = failed = 0
    try:
        with Client(args.url) as client, tqdm(total=len(images), unit="image", desc=args.command) as bar:
            for part in _parts(images, 1 if prompts else size):
                done = _on_each_image(client, args, part, prompts) if prompts else _run_part(client, args, part)
                for path, name, result, extra in done:
                    credits += result.credits_used
                    if result.status != "completed":
                        failed += 1
                        tqdm.write(f"{path}: {result.error}", file=sys.stderr)
                        continue
                    data = client.download(result)
                    suffix = "." + args.output_format if args.command == "extract" else ".png"
                    (args.out / (name + suffix)).write_bytes(data)
                    if extra is not None:
                        (args.out / (name + ".json")).write_text(json.dumps(extra, indent=1))
                bar.update(len(part))
    except MaskserveError as exc:
        print(f"the service refused: {exc.status} {exc.detail}", file=sys.stderr)
        return EXIT_SERVICE
    except httpx.TransportError as exc:
        print(f"could not reach the service: {exc}", file=sys.stderr)
        return EXIT_SERVICE
    took = time.monotonic() - started
    print(
        f"{len(images) - failed} of {len(images)} images done, {failed} failed, "
        f"{credits} credits used, {took:.1f} s; outputs in {args.out}",
        file=sys.stderr,
    )
    return EXIT_FAILED_IMAGES if failed else EXIT_OK


def read_prompts(path: Path) -> list[dict[str, Any]]:
    """One prompt object per non-empty line: ``points`` (with ``labels``) and/or ``box``."""
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        prompt = json.loads(line)
        if not isinstance(prompt, dict) or not ({"points", "box"} & set(prompt)) or set(prompt) - PROMPT_KEYS:
            raise ValueError(f"line {number}: a JSON object with 'points' (and 'labels') and/or 'box'")
        prompts.append(prompt)
    if not prompts:
        raise ValueError("no prompt in the file")
    return prompts


PROMPT_KEYS = {"points", "labels", "box"}


def _styling(args: argparse.Namespace) -> dict[str, Any]:
    styling = {"feather": args.feather, "output_format": args.output_format, "bg_color": args.bg_color}
    if args.crop:
        styling["crop"] = True
    return {k: v for k, v in styling.items() if v is not None}


def _on_each_image(
    client: Any, args: argparse.Namespace, part: list[Path], prompts: list[dict[str, Any]]
) -> list[tuple[Path, str, Any, Any]]:
    """Every prompt on each image: the image travels once, then its handle (``image_id``)."""
    out = []
    for path in part:
        image = client.on_image(path)
        send = image.segment if args.command == "segment" else partial(image.extract, **_styling(args))
        for number, prompt in enumerate(prompts, start=1):
            job = send(**prompt)
            out.append((path, f"{path.stem}_{number}", job.result, None))
    return out


def _run_part(client: Any, args: argparse.Namespace, part: list[Path]) -> list[tuple[Path, str, Any, Any]]:
    if args.command == "everything":
        out = []
        for path in part:
            job = client.everything(path, points_per_side=args.points_per_side)
            out.append((path, path.stem, job.result, job.result.extras.get("masks")))
        return out
    if args.command == "segment":
        batch = client.batch_segment(part, **_prompt(args))
    else:
        batch = client.batch_extract(part, None, **_prompt(args), **_styling(args))
    return [(path, path.stem, result, None) for path, result in zip(part, batch.results, strict=True)]
