"""``maskserve video track``: a video through the API from the command line.

    maskserve video track clip.mp4 --point 0:320,240 --point 12:300,200,0 --out masks/

Uploads the video, sends each ``--point FRAME:X,Y[,LABEL]`` (``--object`` picks the object the
points after it belong to; default 1) and each ``--box FRAME:X1,Y1,X2,Y2``, propagates with a
progress bar, and writes ``<out>/masks.json`` (the result), ``<out>/preview.mp4`` and one PNG per
frame and object (``<out>/<frame>_<object>.png``). The video is closed at the end (``--keep``
leaves it open and prints its id). Exit codes as for ``maskserve segment``.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

from maskserve.cli.client import EXIT_OK, EXIT_SERVICE, EXIT_USAGE


def _framed(text: str, count: tuple[int, ...], what: str) -> tuple[int, list[float]]:
    frame, sep, rest = text.partition(":")
    try:
        values = [float(v) for v in rest.split(",")]
        if not sep or len(values) not in count:
            raise ValueError
        return int(frame), values
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{what} takes FRAME:{'X,Y[,LABEL]' if 2 in count else 'X1,Y1,X2,Y2'}, got {text!r}"
        ) from None


class _Prompt(argparse.Action):
    """Keeps --point, --box and --object in the order given (an --object applies to the prompts after it)."""

    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option: str | None = None) -> None:
        found = list(getattr(namespace, "prompts", None) or [])
        if option == "--object":
            namespace.current_object = int(values)
        else:
            kind = "point" if option == "--point" else "box"
            frame, numbers = _framed(values, (2, 3) if kind == "point" else (4,), option or kind)
            found.append((kind, getattr(namespace, "current_object", 1), frame, numbers))
        namespace.prompts = found


def add_arguments(sub: Any) -> None:
    video = sub.add_parser("video", help="track objects through a video (upload, click, propagate)")
    video_sub = video.add_subparsers(dest="video_command", required=True)
    track = video_sub.add_parser(
        "track",
        help="upload, prompt, propagate, write the masks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    track.add_argument("video", type=Path)
    track.add_argument("--point", action=_Prompt, metavar="FRAME:X,Y[,LABEL]")
    track.add_argument("--box", action=_Prompt, metavar="FRAME:X1,Y1,X2,Y2")
    track.add_argument("--object", action=_Prompt, metavar="N", help="the object (1-16) of the prompts after it")
    track.add_argument("--direction", choices=("forward", "backward", "both"), default="both")
    track.add_argument("--fps", type=float)
    track.add_argument("--out", type=Path, default=Path("."))
    track.add_argument("--url")
    track.add_argument("--keep", action="store_true", help="leave the video open (print its id)")


def run_video(args: argparse.Namespace) -> int:
    from maskserve.client import Client, MaskserveError

    prompts = getattr(args, "prompts", None) or []
    if not any(kind for kind, *_ in prompts):
        print("maskserve video track: give at least one --point or --box", file=sys.stderr)
        return EXIT_USAGE
    try:
        client = Client(args.url)
    except ValueError as exc:
        print(f"maskserve video track: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        with client:
            return _track(client, args, prompts)
    except MaskserveError as exc:
        print(f"maskserve video track: {exc.status}: {exc}", file=sys.stderr)
        return EXIT_SERVICE


def _track(client: Any, args: argparse.Namespace, prompts: list[tuple[str, int, int, list[float]]]) -> int:
    from tqdm import tqdm

    opened = client.open_video(args.video, fps=args.fps)
    video_id = opened["video_id"]
    try:
        for kind, obj, frame, numbers in prompts:
            if kind == "point":
                label = [int(numbers[2])] if len(numbers) == 3 else [1]
                client.video_prompt(video_id, frame, obj, points=[numbers[:2]], labels=label)
            else:
                client.video_prompt(video_id, frame, obj, box=numbers)
        job = client.propagate(video_id, direction=args.direction)
        with tqdm(total=job["progress"]["frames_total"], unit="frame", desc="propagate") as bar:

            def advance(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            job = client.wait_propagation(job["job_id"], progress=advance)
        if job["status"] != "completed":
            print(f"maskserve video track: the propagation failed: {job.get('error')}", file=sys.stderr)
            return EXIT_SERVICE
        _write(client, job, args.out)
        print(f"{opened['frames']} frames, {job['credits_used']} credits; masks in {args.out}")
        return EXIT_OK
    finally:
        if args.keep:
            print(f"video_id {video_id}")
        else:
            client.delete_video(video_id)


def _write(client: Any, job: dict[str, Any], out: Path) -> None:
    from PIL import Image

    from maskserve.core.encodings import rle_decode

    out.mkdir(parents=True, exist_ok=True)
    document = json.loads(client.download(job["output_url"]))
    (out / "masks.json").write_text(json.dumps(document))
    (out / "preview.mp4").write_bytes(client.download(job["preview_url"]))
    for frame in document["frames"]:
        for obj in frame["objects"]:
            if obj["mask"].get("format") != "rle":
                continue
            png = io.BytesIO()
            Image.fromarray(rle_decode(obj["mask"]).astype("uint8") * 255, "L").save(png, "PNG")
            (out / f"{frame['frame']:05d}_{obj['object_id']}.png").write_bytes(png.getvalue())
