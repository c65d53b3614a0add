"""Run a (merged) model over every frame of a video and write the annotated video so that browsers play it.

Every dimension a stranger's file controls is bounded before it costs anything: the header (frame size, frame rate,
frame count) is read by ffmpeg with its decoder refusing frames over `limits.max_video_pixels`, so a 16000 x 16000
frame is never decoded, not even to probe it. Frames are then decoded by the same ffmpeg (one frame in memory at a
time; a stream that changes size mid-way is scaled back to the header's size by ffmpeg, bounded by the same pixel
cap), predicted one by one, and written by ffmpeg's H.264 encoder (yuv420p, the profile every browser plays) with a
bitrate cap, so the output's size is bounded by frames x pixels. The whole call is bounded by `limits.max_video_s`.

A video names no other file: only the containers in `CONTAINERS` are read, recognised by their first bytes before
ffmpeg sees the file, and ffmpeg itself may use only their demuxers (`-format_whitelist`) and the `file` protocol on the
path given, so a playlist (`.m3u8`, whatever its name) naming `file:/some/server/file.ts`, a concat list or a protocol
is refused and never opened. The ffmpeg that reads a stranger's file runs with hard caps (`ffmpeg_caps`: address space
and CPU seconds, plus a wall-time kill), and its messages, which hold server paths, go to the log, never to the caller.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import subprocess
import tempfile
import threading
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
CONTAINERS = {
    "mov": "MP4 / MOV / 3GP",
    "matroska": "MKV / WebM",
    "avi": "AVI",
    "mpegts": "MPEG-TS",
    "flv": "FLV",
    "mpeg": "MPEG-PS",
}
"""ffmpeg demuxers read (by their short name; ffmpeg's `mov,mp4,...` and `matroska,webm` match): real containers,
none of which opens another file (mov's external references stay off, ffmpeg's default)."""
DECODER_THREADS = 2
FFMPEG_BASE_MB = 512  # ffmpeg's code, libraries, thread stacks and small buffers: ~150 MiB measured, with room
FFMPEG_BYTES_PER_PIXEL = 64  # decoder reference frames (16 x 1.5 B/px for H.264), scaler and BGR frames (3 B/px each)
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


def container_of(head: bytes) -> str | None:
    """The `CONTAINERS` demuxer whose signature `head` (a file's first bytes, 400 or more) starts with; else None."""
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"):
        return "mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    if len(head) > 376 and all(head[i] == 0x47 for i in (0, 188, 376)):  # 188-byte transport packets
        return "mpegts"
    if len(head) > 388 and all(head[i] == 0x47 for i in (4, 196, 388)):  # 192-byte (M2TS) packets
        return "mpegts"
    if head.startswith(b"FLV\x01"):
        return "flv"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "mpeg"
    return None


def check_container(path: Path) -> str:
    """The container of `path`, refused unless it is one of `CONTAINERS` (a playlist or list of files never is).

    Raises:
        ValueError: not one of the containers read; the message names them, never a server path.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise ValueError(f"{path.name}: could not be read ({e.strerror}); upload the video again") from e
    container = container_of(head)
    if container is None:
        raise ValueError(
            f"{path.name}: not a video ffmpeg can read here: headkit reads the containers "
            f"{', '.join(CONTAINERS.values())}; playlists (.m3u8), lists of files and other formats are refused, "
            "re-encode it as an H.264 .mp4"
        )
    return container


def ffmpeg_caps(limits: Limits) -> tuple[int, int]:
    """(address-space bytes, CPU seconds) every ffmpeg that reads a stranger's video runs under: FFMPEG_BASE_MB plus
    FFMPEG_BYTES_PER_PIXEL x `max_video_pixels` (1.0 GiB at 4K UHD), and `max_video_s` + PROBE_S seconds for each
    decoder thread."""
    memory = FFMPEG_BASE_MB * 2**20 + FFMPEG_BYTES_PER_PIXEL * limits.max_video_pixels
    return int(memory), int(DECODER_THREADS * (limits.max_video_s + PROBE_S))


def _input(path: Path, container: str, limits: Limits) -> list[str]:
    """ffmpeg's input options for a stranger's file: its one demuxer, the file protocol, the pixel cap, threads."""
    return [
        "-hide_banner", "-nostdin", "-nostats",
        "-protocol_whitelist", "file",
        "-format_whitelist", container,
        "-max_pixels", str(limits.max_video_pixels),
        "-threads", str(DECODER_THREADS),
        "-i", f"file:{path.resolve()}",
    ]  # fmt: skip


def _capped(limits: Limits) -> dict:
    """Popen arguments that give the child ffmpeg_caps (set in the child, before ffmpeg runs) and few malloc arenas
    (each reserves 64 MiB of address space)."""
    memory, cpu = ffmpeg_caps(limits)

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))

    return {"preexec_fn": cap, "env": {**os.environ, "MALLOC_ARENA_MAX": "2"}, "stdin": subprocess.DEVNULL}


def _unreadable(path: Path, limits: Limits, log: str) -> ValueError:
    """The refusal for a video ffmpeg could not read; ffmpeg's own words (server paths) go to the log only."""
    LOGGER.info("ffmpeg could not read %s:\n%s", path, log[-4000:])
    memory, cpu = ffmpeg_caps(limits)
    return ValueError(
        f"{path.name}: not a video ffmpeg can read within its limits ({memory / 2**20:,.0f} MiB of memory, {cpu:,} s "
        "of CPU); give an .mp4, .webm, .mov or .avi file (H.264 .mp4 plays everywhere)"
    )


def _ffmpeg_header(path: Path, limits: Limits) -> str:
    """ffmpeg's description of `path`; its decoder refuses frames over the pixel limit, so probing decodes none."""
    container = check_container(path)
    command = [imageio_ffmpeg.get_ffmpeg_exe(), *_input(path, container, limits)]
    try:
        return subprocess.run(
            command, capture_output=True, text=True, errors="replace", timeout=PROBE_S, **_capped(limits)
        ).stderr
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
        raise _unreadable(path, limits, text)
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
    `limits.max_video_frames` + 1 (the one over is refused by the caller).

    The decoding ffmpeg runs under `ffmpeg_caps` and is killed after `max_video_s` + PROBE_S of wall time; its
    messages go to a temporary file read for the output's frame size (after autorotation) and for the log.
    """
    command = [imageio_ffmpeg.get_ffmpeg_exe(), *_input(path, check_container(path), limits)]
    command += ["-map", "0:V:0", "-an", "-sn", "-dn", "-frames:v", str(limits.max_video_frames + 1)]
    command += ["-pix_fmt", "bgr24", "-vcodec", "rawvideo", "-f", "rawvideo", "-"]
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, **_capped(limits))
        watchdog = threading.Timer(limits.max_video_s + PROBE_S, process.kill)
        watchdog.daemon = True
        watchdog.start()
        try:
            width, height = _output_size(process, log, path, limits)
            if sorted((width, height)) != sorted((header.width, header.height)):
                raise ValueError(
                    f"{path.name}: frames of {width} x {height} px, but the header says "
                    f"{header.width} x {header.height}; re-encode the video"
                )
            size = width * height * 3
            for number in range(1, limits.max_video_frames + 2):
                data = process.stdout.read(size)
                if not data:
                    break
                if len(data) != size:
                    raise ValueError(f"{path.name}: frame {number} is not {width} x {height} px as the header says")
                yield np.frombuffer(data, np.uint8).reshape(height, width, 3)
            if process.wait() != 0 and number == 1:
                raise _unreadable(path, limits, _text(log))
        finally:
            watchdog.cancel()
            process.kill()
            process.stdout.close()
            process.wait()


_OUTPUT = re.compile(r"Output #0.*?Stream #\d+:\d+.*?: Video: .*?, (\d+)x(\d+)", re.DOTALL)


def _output_size(process: subprocess.Popen, log, path: Path, limits: Limits) -> tuple[int, int]:
    """The decoded frames' size, as ffmpeg announces its output (after autorotation), or the refusal if it stops."""
    deadline = time.monotonic() + PROBE_S
    while time.monotonic() < deadline:
        text = _text(log)
        if match := _OUTPUT.search(text):
            return int(match[1]), int(match[2])
        if process.poll() is not None:
            raise _unreadable(path, limits, _text(log))
        time.sleep(0.01)
    raise ValueError(f"{path.name}: no frame could be decoded within {PROBE_S:g} s; re-encode it (H.264 mp4)")


def _text(log) -> str:
    log.flush()
    log.seek(0)
    return log.read(1 << 20).decode("utf-8", "replace")


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
