"""Run a (merged) model over every frame of a video and write the annotated video so that browsers play it.

Frames come from Ultralytics' own streaming prediction (`predict(stream=True)`, one frame in memory at a time) and
go to ffmpeg's H.264 encoder through imageio-ffmpeg (yuv420p, the profile every browser plays). OpenCV's pip wheels
write only mp4v, which browsers do not play.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import imageio_ffmpeg
import numpy as np

from .limits import Limits
from .settings import current_limits

LOGGER = logging.getLogger(__name__)
MAX_DET = 1000  # as in Compare: the per-image cap must not cut base boxes


@dataclass
class VideoResult:
    """The annotated video and what was found: per class, detections over all frames and frames with one or more."""

    path: Path
    frames: int
    fps: float
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One row per class found, most detections first."""
        rows = [{"class": name, **numbers} for name, numbers in self.counts.items()]
        return sorted(rows, key=lambda row: (-row["detections"], row["class"]))

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "fps": self.fps, "counts": self.counts}


def probe_video(path: str | Path, *, limits: Limits | None = None) -> tuple[int, float, int, int]:
    """(frames, fps, width, height) from the container's header, before any frame is decoded.

    Raises:
        ValueError: not a readable video, or no frames.
        LimitExceeded: more frames than `limits.max_video_frames`.
    """
    name = Path(path).name
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise ValueError(f"{name}: not a video OpenCV can read; give an .mp4, .webm, .mov or .avi file")
        frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        readable = capture.read()[0]
    finally:
        capture.release()
    if frames <= 0 or not readable or width <= 0 or height <= 0:
        raise ValueError(f"{name}: the video has no frames to read; give a video with at least one frame")
    (limits or current_limits()).check("max_video_frames", frames, f"{name}: frames")
    return frames, (fps if 0 < fps <= 240 else 25.0), width, height


def annotate_video(
    model,
    source: str | Path,
    out_path: str | Path,
    *,
    conf: float = 0.25,
    iou: float = 0.7,
    imgsz: int = 640,
    progress: Callable[[int, int], None] | None = None,
    limits: Limits | None = None,
) -> VideoResult:
    """Predict on every frame of `source` with `model`, draw the boxes, write an H.264 mp4 to `out_path`.

    Args:
        progress: called after each frame with (frames done, frames in the video).

    Raises:
        ValueError: not a video, or no frames; LimitExceeded: too many frames (checked before any is decoded).
    """
    frames, fps, width, height = probe_video(source, limits=limits)
    out_path = Path(out_path)
    writer = imageio_ffmpeg.write_frames(
        str(out_path),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        macro_block_size=2,  # yuv420p needs even sides; odd ones are resized by one pixel
        output_params=["-movflags", "+faststart"],  # playable while it downloads
        ffmpeg_log_level="error",
    )
    writer.send(None)  # starts ffmpeg
    counts: dict[str, dict[str, int]] = {}
    done = 0
    try:
        stream = model.predict(
            str(source), stream=True, conf=conf, iou=iou, imgsz=imgsz, max_det=MAX_DET, verbose=False
        )
        for result in stream:
            writer.send(np.ascontiguousarray(result.plot()[..., ::-1]))
            classes = result.boxes.cls.int().tolist()
            for c in set(classes):
                row = counts.setdefault(result.names[c], {"detections": 0, "frames": 0})
                row["detections"] += classes.count(c)
                row["frames"] += 1
            done += 1
            if progress:
                progress(done, frames)
            if done >= frames:  # the header's count is the cap: a longer stream than declared stops here
                break
    except BaseException:
        writer.close()
        out_path.unlink(missing_ok=True)
        raise
    writer.close()
    if done == 0:
        out_path.unlink(missing_ok=True)
        raise ValueError(f"{Path(source).name}: no frame could be decoded; re-encode the video (H.264 mp4)")
    return VideoResult(out_path, done, fps, counts)
