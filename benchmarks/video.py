"""Video tracking through the API against SAM 2's own ``SAM2VideoPredictor`` in-process, side by side.

    python -m benchmarks.video                       # 1 and 4 objects on a 12-frame clip, first mask
    python -m benchmarks.video --memory-frames 600   # also: the video model's memory over a long video

Both sides track the same JPEG frames (what the service keeps of an upload) with the same random
weights (seed 0) on the same CPU, 2 threads for the predictor; ours is the whole API path (prompts,
then a propagation job polled to its end). Frames/s count frames processed, all objects included.
The memory run propagates one object through a long clip and samples the ``sam2_video`` stub's RSS:
after the memory window fills, it must stay flat (frames far from the tracked one wait on disk).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import requests
import torch

from benchmarks.stack import Stack, rss_mb, running_stack
from maskserve.devtools.pictures import moving_shapes_clip
from maskserve.frontend.media import decode_video

W, H = 640, 480
CLICKS = [(0.2, 0.4), (0.75, 0.6), (0.5, 0.15), (0.1, 0.9)]  # fractions of the frame: one object each


def _auth(stack: Stack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.key}"}


def _clip(where: Path, frames: int) -> tuple[bytes, list[Path]]:
    """The MP4 the API gets, and the JPEG frames the service keeps of it (what the predictor reads too)."""
    from maskserve.devtools.pictures import clip_file

    data = clip_file(moving_shapes_clip(where / "source", frames, W, H), "mp4")
    kept = where / "kept"
    kept.mkdir()
    paths = []
    for i, jpeg in enumerate(decode_video(data, frames + 1).frames):
        paths.append(kept / f"{i:05d}.jpg")
        paths[-1].write_bytes(jpeg)
    return data, paths


def _api(stack: Stack, data: bytes, objects: int) -> dict:
    r = requests.post(f"{stack.url}/v1/videos", files={"file": ("c.mp4", data)}, headers=_auth(stack), timeout=600)
    r.raise_for_status()
    video = r.json()
    first = []
    for obj, (fx, fy) in enumerate(CLICKS[:objects], start=1):
        began = time.perf_counter()
        r = requests.post(
            f"{stack.url}/v1/videos/{video['video_id']}/prompts",
            params={"frame": 0, "object_id": obj, "points": json.dumps([[fx * W, fy * H]])},
            headers=_auth(stack),
            timeout=600,
        )
        r.raise_for_status()
        first.append(time.perf_counter() - began)
    began = time.perf_counter()
    r = requests.post(f"{stack.url}/v1/videos/{video['video_id']}/propagate", headers=_auth(stack), timeout=600)
    r.raise_for_status()
    job_id = r.json()["job_id"]
    while True:
        job = requests.get(f"{stack.url}/v1/jobs/{job_id}", headers=_auth(stack), timeout=60).json()
        if job["status"] in ("completed", "failed"):
            break
        time.sleep(0.2)
    seconds = time.perf_counter() - began
    requests.delete(f"{stack.url}/v1/videos/{video['video_id']}", headers=_auth(stack), timeout=60)
    if job["status"] != "completed":
        raise RuntimeError(f"propagation failed: {job['error']}")
    return {"frames_per_s": video["frames"] / seconds, "first_mask_s": first[0], "seconds": seconds}


@torch.no_grad()
def _reference(frames_dir: Path, objects: int) -> dict:
    from sam2.build_sam import build_sam2_video_predictor

    from maskserve.export import checkpoints
    from maskserve.export.variants import get_variant

    torch.set_num_threads(2)
    variant = get_variant("sam2.1_hiera_tiny")
    predictor = build_sam2_video_predictor(variant.config, None, device="cpu")
    predictor.load_state_dict(checkpoints.build_model(variant, seed=0).state_dict())
    state = predictor.init_state(video_path=str(frames_dir))
    first = []
    for obj, (fx, fy) in enumerate(CLICKS[:objects], start=1):
        began = time.perf_counter()
        predictor.add_new_points_or_box(
            state, frame_idx=0, obj_id=obj, points=np.array([[fx * W, fy * H]], np.float32), labels=np.array([1])
        )
        first.append(time.perf_counter() - began)
    began = time.perf_counter()
    count = sum(1 for _ in predictor.propagate_in_video(state))
    seconds = time.perf_counter() - began
    return {"frames_per_s": count / seconds, "first_mask_s": first[0], "seconds": seconds}


def _video_stub_rss(model: str = "sam2_video_v") -> float:
    """RSS of the python-backend stub that runs the video model (MB)."""
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "triton_python_backend_stub" in cmd and model in cmd:
                return rss_mb(int(proc.name))
        except (OSError, ValueError):
            continue
    return float("nan")


def memory(stack: Stack, frames: int, where: Path) -> dict:
    """The video model's RSS while one object is tracked through ``frames`` frames."""
    from maskserve.devtools.pictures import clip_file

    data = clip_file(moving_shapes_clip(where / "long", frames, 320, 240), "mp4")
    r = requests.post(f"{stack.url}/v1/videos", files={"file": ("l.mp4", data)}, headers=_auth(stack), timeout=600)
    r.raise_for_status()
    video_id = r.json()["video_id"]
    requests.post(
        f"{stack.url}/v1/videos/{video_id}/prompts",
        params={"frame": 0, "object_id": 1, "points": json.dumps([[64, 96]])},
        headers=_auth(stack),
        timeout=600,
    ).raise_for_status()
    job_id = requests.post(f"{stack.url}/v1/videos/{video_id}/propagate", headers=_auth(stack), timeout=60).json()[
        "job_id"
    ]
    samples = []
    while True:
        job = requests.get(f"{stack.url}/v1/jobs/{job_id}", headers=_auth(stack), timeout=60).json()
        samples.append((job["progress"]["frames_done"], _video_stub_rss()))
        if job["status"] in ("completed", "failed"):
            break
        time.sleep(2)
    window = [rss for done, rss in samples if done >= 40]
    return {
        "frames": frames,
        "status": job["status"],
        "rss_mb_at_40_frames": window[0] if window else None,
        "rss_mb_at_end": window[-1] if window else None,
        "rss_mb_max_after_40": max(window) if window else None,
        "samples": samples[:: max(1, len(samples) // 20)],
    }


def measure(stack: Stack, frames: int, objects: tuple[int, ...], memory_frames: int = 0) -> dict:
    work = Path(tempfile.mkdtemp(prefix="maskserve-video-bench-"))
    data, paths = _clip(work, frames)
    found: dict = {"frames": frames, "size": [W, H]}
    for n in objects:
        ours, theirs = _api(stack, data, n), _reference(paths[0].parent, n)
        found[f"objects_{n}"] = {
            "ours": ours,
            "reference": theirs,
            "ratio": ours["frames_per_s"] / theirs["frames_per_s"],
        }
    if memory_frames:
        found["memory"] = memory(stack, memory_frames, work)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--objects", default="1,4")
    parser.add_argument("--memory-frames", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/video.json"))
    args = parser.parse_args(argv)
    with running_stack() as stack:
        found = measure(stack, args.frames, tuple(int(n) for n in args.objects.split(",")), args.memory_frames)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(found, indent=2))
    for n in args.objects.split(","):
        row = found[f"objects_{n}"]
        print(
            f"{n} object(s), {args.frames} frames {W}x{H}: ours {row['ours']['frames_per_s']:.3f} frames/s, "
            f"SAM2VideoPredictor {row['reference']['frames_per_s']:.3f} frames/s = {row['ratio']:.2f}x; "
            f"first mask {row['ours']['first_mask_s']:.2f} s vs {row['reference']['first_mask_s']:.2f} s"
        )
    if "memory" in found:
        m = found["memory"]
        print(
            f"memory over {m['frames']} frames: sam2_video RSS {m['rss_mb_at_40_frames']} MB at frame 40, "
            f"max {m['rss_mb_max_after_40']} MB after, {m['rss_mb_at_end']} MB at the end"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
