"""Videos in and out: decoding an upload with PyAV under the contract's limits, and the preview.

Pure CPU work (run in an executor). An upload is probed before any frame is decoded (container,
codec, frame size), then decoded frame by frame, resampled to at most ``fps`` frames per second,
and each kept frame stored as a JPEG (quality 95): the form SAM 2's video predictor reads a clip
in, so the model tier sees the same pixels as Meta's code given the same frames. Decoding stops
as soon as a limit is passed, whatever the container claims (a header that announces 10⁶ frames
costs nothing; a stream that holds them is stopped at the limit).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass

import av
import numpy as np
from PIL import Image

CONTAINERS = {"mov,mp4,m4a,3gp,3g2,mj2": "MP4/MOV", "matroska,webm": "WebM", "gif": "GIF", "webp": "WebP"}
CODECS = {"h264", "hevc", "vp8", "vp9", "av1", "libdav1d", "gif", "webp"}
MAX_LONG_SIDE, MAX_SHORT_SIDE = 1920, 1080
JPEG_QUALITY = 95
DECODE_FACTOR = 8
"""Frames decoded per frame kept at most (``fps`` resampling of a fast source), before decoding stops."""
COLOURS = ((255, 64, 64), (64, 200, 64), (64, 128, 255), (255, 200, 0), (200, 64, 255), (0, 220, 220))


class VideoRejected(ValueError):
    """An upload the contract refuses: 422 (not a decodable video) or 413 (over a limit)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class DecodedVideo:
    frames: list[bytes]  # each kept frame as a JPEG
    width: int
    height: int
    fps: float  # frames per second of what was kept


def _probe(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    if container.format.name not in CONTAINERS:
        raise VideoRejected(422, "Not a video: send MP4 (H.264/H.265), WebM (VP8/VP9/AV1), MOV or animated GIF/WebP")
    if not container.streams.video:
        raise VideoRejected(422, "The file holds no video stream")
    stream = container.streams.video[0]
    if stream.codec_context.name not in CODECS:
        raise VideoRejected(422, f"Unsupported video codec {stream.codec_context.name!r}")
    _check_size(stream.codec_context.width, stream.codec_context.height)
    return stream


def _check_size(width: int, height: int) -> None:
    if max(width, height) > MAX_LONG_SIDE or min(width, height) > MAX_SHORT_SIDE:
        raise VideoRejected(
            413,
            f"Frames of {width}x{height} exceed the limit of {MAX_LONG_SIDE} pixels on the longer side "
            f"and {MAX_SHORT_SIDE} on the shorter",
        )


def _jpeg(rgb: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def _frames(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> Iterator[tuple[float, np.ndarray]]:
    """(seconds, RGB pixels) of each decoded frame; a stream that breaks off is an error, not a shorter video."""
    try:
        for index, frame in enumerate(container.decode(stream)):
            seconds = float(frame.time) if frame.time is not None else index / float(stream.average_rate or 25)
            yield seconds, frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, ValueError, MemoryError) as exc:
        raise VideoRejected(422, f"The video could not be decoded: {exc}") from exc


def decode_video(data: bytes, max_frames: int, fps: float | None = None) -> DecodedVideo:
    """The upload's frames (at most ``fps`` a second) as JPEGs, within the limits, or ``VideoRejected``."""
    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, ValueError, MemoryError) as exc:
        raise VideoRejected(422, "Not a decodable video") from exc
    with container:
        stream = _probe(container)
        stream.thread_type = "AUTO"
        kept: list[bytes] = []
        times: list[float] = []
        size: tuple[int, int] | None = None
        next_at = -math.inf
        decoded = 0
        for seconds, rgb in _frames(container, stream):
            decoded += 1
            if size is None:
                size = (rgb.shape[1], rgb.shape[0])
                _check_size(*size)
            elif size != (rgb.shape[1], rgb.shape[0]):
                raise VideoRejected(422, "The video's frame size changes; send frames of one size")
            if fps is not None and seconds + 1e-6 < next_at:
                if decoded > DECODE_FACTOR * (max_frames + 1):
                    break
                continue
            if len(kept) == max_frames:
                raise VideoRejected(413, f"The video has more than max_video_frames={max_frames} frames")
            kept.append(_jpeg(rgb))
            times.append(seconds)
            next_at = (seconds if fps is None else max(next_at, seconds)) + (0 if fps is None else 1.0 / fps)
    if size is None or len(kept) < 2:
        raise VideoRejected(422, "A video needs at least 2 frames (a still image is not a video)")
    span = times[-1] - times[0]
    measured = (len(kept) - 1) / span if span > 0 else float(stream.average_rate or fps or 25)
    return DecodedVideo(kept, size[0], size[1], round(min(measured, fps or measured), 3))


def _overlay(rgb: np.ndarray, masks: list[np.ndarray]) -> np.ndarray:
    out = rgb.astype(np.float32)
    for i, mask in enumerate(masks):
        if mask is None or not mask.any():
            continue
        colour = np.array(COLOURS[i % len(COLOURS)], np.float32)
        where = mask > 0
        out[where] = 0.45 * out[where] + 0.55 * colour
    return out.astype(np.uint8)


def encode_preview(frames: Iterator[tuple[bytes, list[np.ndarray]]], fps: float, width: int, height: int) -> bytes:
    """An MP4 (H.264) of ``frames`` (each JPEG with its objects' masks, in video order), masks overlaid in colour."""
    out = io.BytesIO()
    even_w, even_h = width + width % 2, height + height % 2  # 4:2:0 needs even sides: pad by one pixel
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=max(1, round(fps)))
        stream.width, stream.height, stream.pix_fmt = even_w, even_h, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for jpeg, masks in frames:
            rgb = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
            shown = np.zeros((even_h, even_w, 3), np.uint8)
            shown[:height, :width] = _overlay(rgb, masks)
            for packet in stream.encode(av.VideoFrame.from_ndarray(shown, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return out.getvalue()
