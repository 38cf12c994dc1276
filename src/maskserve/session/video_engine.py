"""Videos next to the model: each one's tracker, its frames' features, and the calls on them.

The engine is plain synchronous Python over two callables (a frame's JPEG → the encoder's
features; the video graphs), so the Triton model (``triton_video``) runs it in worker threads
with BLS calls behind those callables, and the tests drive it with the graphs in-process.

State per video: a ``Tracker`` (its objects' clicks, conditioning frames and memory bank, the
frames far from the one being tracked spilled to disk) and how many of the frontend's recorded
prompts it holds. Frame features live in one LRU bounded in bytes shared by every video; a frame
is encoded once while it stays there. Videos beyond ``max_videos`` are dropped least recently
used first; a call on a dropped or unknown video answers ``restore`` and the frontend replays
its prompts (``op = "restore"``), so a lost state is rebuilt from the stored frames and prompts.
"""

from __future__ import annotations

import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from maskserve.core.video_io import RESTORE, VideoAnswer, VideoCall, VideoPrompt
from maskserve.session.video import FrameOutput, Graphs, Spill, Tracker, TrackingConfig

Encode = Callable[[bytes], tuple[np.ndarray, np.ndarray, np.ndarray]]
"""A frame's JPEG → its image_embed, high_res_feats_0, high_res_feats_1 (batch of one)."""


class NeedFrame(LookupError):
    """The call needs a frame whose features are not held and whose JPEG it did not bring."""

    def __init__(self, frame: int) -> None:
        super().__init__(f"frame {frame} is needed")
        self.frame = frame


class FeatureCache:
    """Frame features of every video, least recently used dropped first, bounded in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.encodes = 0
        self._items: OrderedDict[tuple[str, int], tuple[np.ndarray, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, int]) -> tuple[np.ndarray, ...] | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[str, int], arrays: tuple[np.ndarray, ...]) -> None:
        size = sum(a.nbytes for a in arrays)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= sum(a.nbytes for a in old)
            self._items[key] = arrays
            self.nbytes += size
            while self.nbytes > self.max_bytes and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                self.nbytes -= sum(a.nbytes for a in dropped)

    def drop_video(self, video_id: str) -> None:
        with self._lock:
            for key in [k for k in self._items if k[0] == video_id]:
                self.nbytes -= sum(a.nbytes for a in self._items.pop(key))


class _Video:
    def __init__(self, tracker: Tracker, spill: Spill) -> None:
        self.tracker = tracker
        self.spill = spill
        self.applied = 0  # the frontend's prompts this state holds
        self.lock = threading.Lock()


class VideoEngine:
    def __init__(
        self,
        graphs: Graphs,
        encode: Encode,
        config: TrackingConfig,
        feature_bytes: int = 256 << 20,
        max_videos: int = 64,
        spill_root: Path | None = None,
    ) -> None:
        self.graphs = graphs
        self.encode = encode
        self.config = config
        self.features = FeatureCache(feature_bytes)
        self.max_videos = max_videos
        self.spill_root = spill_root or Path(tempfile.mkdtemp(prefix="maskserve-video-"))
        self._videos: OrderedDict[str, _Video] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._videos)

    # -- state ------------------------------------------------------------------------------------
    def _open(self, call: VideoCall) -> _Video:
        def unbound(frame: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            raise NeedFrame(frame)  # replaced by each call's own (``_bind``)

        spill = Spill(self.spill_root / call.video_id)
        video = _Video(Tracker(self.graphs, unbound, call.frames, self.config, spill), spill)
        with self._lock:
            old = self._videos.pop(call.video_id, None)
            self._videos[call.video_id] = video
            while len(self._videos) > self.max_videos:
                _, dropped = self._videos.popitem(last=False)
                dropped.spill.clear()
        if old is not None:
            old.spill.clear()
        return video

    def _held(self, call: VideoCall) -> _Video | None:
        with self._lock:
            video = self._videos.get(call.video_id)
            if video is not None:
                self._videos.move_to_end(call.video_id)
        if video is None or video.applied != call.history or video.tracker.num_frames != call.frames:
            return None
        return video

    def close(self, video_id: str) -> None:
        with self._lock:
            video = self._videos.pop(video_id, None)
        if video is not None:
            video.spill.clear()
        self.features.drop_video(video_id)

    def close_all(self) -> None:
        with self._lock:
            held = list(self._videos)
        for video_id in held:
            self.close(video_id)

    # -- calls ------------------------------------------------------------------------------------
    def handle(self, call: VideoCall, frames: dict[int, bytes]) -> VideoAnswer:
        """One call; a call that needs a frame it did not bring answers ``frame:<k>`` and changes nothing visible."""
        if call.op == "close":
            self.close(call.video_id)
            return VideoAnswer()
        try:
            if call.op == "restore":
                video = self._open(call)
                with video.lock:
                    self._bind(video, call.video_id, frames)
                    for prompt in call.prompts:
                        self._click(video, prompt)
                    video.applied = len(call.prompts)
                return VideoAnswer()
            held = self._held(call)
            if held is None and call.history > 0:
                return VideoAnswer(status=RESTORE)
            return self._run(held or self._open(call), call, frames)
        except NeedFrame as need:
            return VideoAnswer(status=f"frame:{need.frame}")

    def _run(self, video: _Video, call: VideoCall, frames: dict[int, bytes]) -> VideoAnswer:
        with video.lock:
            self._bind(video, call.video_id, frames)
            video.tracker.features(call.prompt.frame if call.prompt else call.frame)  # before any state changes
            if call.op == "prompt":
                assert call.prompt is not None
                out = self._click(video, call.prompt)
                video.applied += 1
                return _answer({call.prompt.object_id: out})
            if call.begin:
                video.tracker.begin()
            return _answer(video.tracker.track(call.frame, call.reverse))

    def _bind(self, video: _Video, video_id: str, frames: dict[int, bytes]) -> None:
        """The tracker's features read this call's JPEGs for frames not held."""

        def features(frame: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            key = (video_id, frame)
            found = self.features.get(key)
            if found is None:
                data = frames.get(frame)
                if data is None:
                    raise NeedFrame(frame)
                found = self.encode(data)
                self.features.encodes += 1
                self.features.put(key, found)
            embed, s0, s1 = found
            return embed, s0, s1

        video.tracker.features = features

    def _click(self, video: _Video, prompt: VideoPrompt) -> FrameOutput:
        coords = np.asarray(prompt.coords, np.float32).reshape(-1, 2)
        labels = np.asarray(prompt.labels, np.int32)
        return video.tracker.add_points(prompt.frame, prompt.object_id, coords, labels, prompt.clear)


def _answer(outputs: dict[int, FrameOutput]) -> VideoAnswer:
    ids = sorted(outputs)
    return VideoAnswer(
        object_ids=np.array(ids, np.int32),
        logits=np.stack([outputs[i].logits for i in ids]).astype(np.float32),
        score=np.array([outputs[i].iou for i in ids], np.float32),
        object_score=np.array([outputs[i].score for i in ids], np.float32),
    )
