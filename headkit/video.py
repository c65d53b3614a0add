"""Run a (merged) model over every frame of a video and write the annotated video so that browsers play it.

Every dimension a stranger's file controls is bounded before it costs anything: the header (frame size, frame rate,
frame count) is read by ffmpeg with its decoder refusing frames over `limits.max_video_pixels`, so a 16000 x 16000
frame is never decoded, not even to probe it. Frames are then decoded by the same ffmpeg (one frame in memory at a
time; a stream that changes size mid-way is scaled back to the header's size by ffmpeg, bounded by the same pixel
cap), predicted one by one, and written by ffmpeg's H.264 encoder (yuv420p, the profile every browser plays) with a
bitrate cap, so the output's size is bounded by frames x pixels. The whole call is bounded by `limits.max_video_s`.
"""

from __future__ import annotations

import logging
import re
import subprocess
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np

from .concat import MAX_DET
from .limits import Limits
from .settings import current_limits
from .tracking import Tracker, plot_tracked

LOGGER = logging.getLogger(__name__)
MIN_SIDE, MAX_SIDE = 2, 8192  # yuv420p needs 2 px; 8192 px is the widest H.264 level (6.2) there is
MIN_FPS, MAX_FPS = 0.1, 240.0
DEFAULT_FPS = 25.0  # when the header names none; it sets the output's playback speed only
OUTPUT_BITS_PER_PIXEL = 0.5  # bitrate cap per frame: 1080p at 30 fps gets 31 Mbit/s, far above what it needs
OUTPUT_BUFFER_FRAMES = 10  # the encoder's buffer, in frames at the cap: room for key frames
PROBE_S = 30.0
_STREAM = re.compile(r"Stream #\d+:\d+.*?: Video: (.*)")
_SIZE = re.compile(r", (\d+)x(\d+)[ ,]")
_FPS = re.compile(r"([\d.]+) fps")
_DURATION = re.compile(r"Duration: (\d+):(\d+):([\d.]+)")


@dataclass(frozen=True)
class VideoHeader:
    """What the container says, before any frame is decoded; `frames` is duration x fps (0: unknown)."""

    frames: int
    fps: float
    width: int
    height: int


@dataclass
class VideoResult:
    """The annotated video and what was found, per class: detections over all frames, frames with one or more,
    and objects (distinct track ids; None when not tracked)."""

    path: Path
    frames: int
    fps: float
    counts: dict[str, dict[str, int | None]] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """One row per class found, most detections first."""
        rows = [{"class": name, **numbers} for name, numbers in self.counts.items()]
        return sorted(rows, key=lambda row: (-row["detections"], row["class"]))

    def to_dict(self) -> dict[str, Any]:
        return {"frames": self.frames, "fps": self.fps, "counts": self.counts}


def _ffmpeg_header(path: Path, limits: Limits) -> str:
    """ffmpeg's description of `path`; its decoder refuses frames over the pixel limit, so probing decodes none."""
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-nostdin"]
    command += ["-max_pixels", str(limits.max_video_pixels), "-i", str(path)]
    try:
        return subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=PROBE_S).stderr
    except subprocess.TimeoutExpired as e:
        raise ValueError(
            f"{path.name}: its header could not be read within {PROBE_S:g} s; re-encode it (H.264 mp4)"
        ) from e


def probe_video(path: str | Path, *, limits: Limits | None = None) -> VideoHeader:
    """Frame size, frame rate and frame count from the container's header, checked before any frame is decoded.

    Raises:
        ValueError: not a readable video, no frames, sides outside 2-8192 px, or a frame rate outside 0.1-240 fps.
        LimitExceeded: a frame over `limits.max_video_pixels`, or more frames than `limits.max_video_frames`.
    """
    path, limits = Path(path), limits or current_limits()
    text = _ffmpeg_header(path, limits)
    streams = [m.group(1) for m in _STREAM.finditer(text)]
    sizes = [(int(m.group(1)), int(m.group(2))) for s in streams if (m := _SIZE.search(s))]
    if not sizes:
        raise ValueError(f"{path.name}: not a video ffmpeg can read; give an .mp4, .webm, .mov or .avi file")
    for width, height in sizes:  # every video stream, the one decoded first
        limits.check("max_video_pixels", width * height, f"{path.name}: frame pixels ({width} x {height})")
        if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
            raise ValueError(
                f"{path.name}: frames of {width} x {height} px; each side must be {MIN_SIDE} to {MAX_SIDE} px, "
                "resize the video first"
            )
    fps = float(m.group(1)) if (m := _FPS.search(streams[0])) else 0.0
    if fps and not MIN_FPS <= fps <= MAX_FPS:
        raise ValueError(f"{path.name}: {fps:g} fps is outside {MIN_FPS:g} to {MAX_FPS:g} fps; re-encode the video")
    duration = 3600 * int(m[1]) + 60 * int(m[2]) + float(m[3]) if (m := _DURATION.search(text)) else 0.0
    frames = round(duration * fps)
    limits.check("max_video_frames", frames, f"{path.name}: frames")
    return VideoHeader(frames, fps or DEFAULT_FPS, *sizes[0])


def _frames(path: Path, header: VideoHeader, limits: Limits):
    """BGR frames (H, W, 3) of the first video stream, each checked to have the header's size; at most
    `limits.max_video_frames` + 1 (the one over is refused by the caller)."""
    reader = imageio_ffmpeg.read_frames(
        str(path),
        pix_fmt="bgr24",
        input_params=["-max_pixels", str(limits.max_video_pixels)],
        output_params=["-map", "0:V:0", "-an", "-sn", "-dn", "-frames:v", str(limits.max_video_frames + 1)],
    )
    try:
        width, height = reader.__next__()["size"]  # after autorotation: sides may swap, never grow
        if sorted((width, height)) != sorted((header.width, header.height)):
            raise ValueError(
                f"{path.name}: frames of {width} x {height} px, but the header says "
                f"{header.width} x {header.height}; re-encode the video"
            )
        for number, data in enumerate(reader, 1):
            if len(data) != width * height * 3:
                raise ValueError(f"{path.name}: frame {number} is not {width} x {height} px as the header says")
            yield np.frombuffer(data, np.uint8).reshape(height, width, 3)
    finally:
        reader.close()  # stops ffmpeg


def _writer(out_path: Path, width: int, height: int, fps: float):
    """ffmpeg's H.264 encoder; the bitrate cap bounds the file at OUTPUT_BITS_PER_PIXEL x pixels per frame."""
    rate = OUTPUT_BITS_PER_PIXEL * width * height * fps
    writer = imageio_ffmpeg.write_frames(
        str(out_path),
        (width, height),
        fps=fps,
        codec="libx264",
        pix_fmt_in="bgr24",
        pix_fmt_out="yuv420p",
        macro_block_size=2,  # yuv420p needs even sides; odd ones are resized by one pixel
        output_params=[
            "-movflags",
            "+faststart",  # playable while it downloads
            "-maxrate",
            f"{rate:.0f}",
            "-bufsize",
            f"{rate / fps * OUTPUT_BUFFER_FRAMES:.0f}",
        ],  # fmt: skip
        ffmpeg_log_level="error",
    )
    writer.send(None)  # starts ffmpeg
    return writer


def output_bound_mb(frames: int, width: int, height: int) -> float:
    """Largest annotated video the bitrate cap lets through, in MiB (the encoder's buffer included)."""
    return OUTPUT_BITS_PER_PIXEL / 8 * width * height * (frames + OUTPUT_BUFFER_FRAMES) / 2**20


def _count(counts: dict[str, dict[str, Any]], result, ids: np.ndarray | None) -> None:
    """Add one frame: per class, its detections, one frame, and the track ids seen (a set, turned into a count)."""
    classes = result.boxes.cls.int().tolist()
    for c in set(classes):
        empty = {"detections": 0, "frames": 0, "objects": None if ids is None else set()}
        row = counts.setdefault(result.names[c], empty)
        row["detections"] += classes.count(c)
        row["frames"] += 1
        if ids is not None:
            row["objects"].update(int(i) for i, k in zip(ids, classes, strict=True) if k == c and i >= 0)


def annotate_video(
    model,
    source: str | Path,
    out_path: str | Path,
    *,
    conf: float = 0.25,
    iou: float = 0.7,
    imgsz: int = 640,
    track: bool = True,
    progress: Callable[[int, int], None] | None = None,
    limits: Limits | None = None,
) -> VideoResult:
    """Predict on every frame of `source` with `model`, draw the boxes, write an H.264 mp4 to `out_path`.

    Args:
        track: also follow objects with Ultralytics' ByteTrack: boxes are labelled 'id:N' and each class counts its
            distinct objects; the detections themselves stay exactly `predict`'s.
        progress: called after each frame with (frames done, frames in the video).

    Raises:
        ValueError: not a video, no frames, odd sides or frame rate; LimitExceeded: frame size or frame count over
            the limits (checked before any frame is decoded), or the call ran longer than `limits.max_video_s`.
    """
    started = time.monotonic()
    source, out_path, limits = Path(source), Path(out_path), limits or current_limits()
    header = probe_video(source, limits=limits)
    tracker = Tracker() if track else None
    counts: dict[str, dict[str, Any]] = {}
    writer, done = None, 0
    try:
        with closing(_frames(source, header, limits)) as frames:
            for frame in frames:
                done += 1
                limits.check("max_video_frames", done, f"{source.name}: frames (more than its header declared)")
                result = model.predict(frame, conf=conf, iou=iou, imgsz=imgsz, max_det=MAX_DET, verbose=False)[0]
                ids = tracker.ids(result) if tracker else None
                if writer is None:
                    writer = _writer(out_path, frame.shape[1], frame.shape[0], header.fps)
                writer.send(np.ascontiguousarray(result.plot() if ids is None else plot_tracked(result, ids)))
                _count(counts, result, ids)
                if progress:
                    progress(done, max(done, header.frames))
                elapsed = time.monotonic() - started
                limits.check("max_video_s", elapsed, f"{source.name}: seconds of work (stopped at frame {done})")
    except BaseException:
        if writer is not None:
            writer.close()
        out_path.unlink(missing_ok=True)
        raise
    if writer is None:
        raise ValueError(f"{source.name}: the video has no frames to read; give a video with at least one frame")
    writer.close()
    for row in counts.values():
        row["objects"] = None if row["objects"] is None else len(row["objects"])
    return VideoResult(out_path, done, header.fps, counts)
