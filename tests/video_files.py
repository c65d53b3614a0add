"""Videos the video tests need, made with the ffmpeg that imageio-ffmpeg ships: a resolution bomb and a panned clip."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import imageio_ffmpeg

BOMB_SIDE = 16000


def ffmpeg(*args: str) -> None:
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-v", "error", *args], check=True, timeout=300)


def resolution_bomb(folder: Path) -> Path:
    """A real 2-frame H.264 mp4 of 16000 x 16000 px, under 1 MB (one grey frame decodes to 384 MB of yuv420p).

    Made once per test session (about 8 s, 2 GB in ffmpeg): callers pass the session's base temp folder.
    """
    path = folder / "bomb.mp4"
    if not path.exists():
        size = f"{BOMB_SIDE}x{BOMB_SIDE}"
        partial = folder / "bomb.partial.mp4"
        ffmpeg("-f", "rawvideo", "-pix_fmt", "gray", "-s", size, "-r", "2", "-i", "/dev/zero", "-frames:v", "2",
               "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "gray", str(partial))  # fmt: skip
        partial.rename(path)
    return path


def panned_clip(path: Path, picture: Path, *, frames: int = 10, side: int = 320, step: int = 12) -> Path:
    """A camera panning down a real photo: a square window moving `step` px a frame, scaled to `side` px, H.264."""
    image = cv2.imread(str(picture))
    height, width = image.shape[:2]
    window = min(height - step * frames, width)
    writer = imageio_ffmpeg.write_frames(str(path), (side, side), fps=10, codec="libx264", pix_fmt_out="yuv420p")
    writer.send(None)
    for n in range(frames):
        crop = image[n * step : n * step + window, :window]
        writer.send(cv2.resize(crop, (side, side))[..., ::-1].copy())
    writer.close()
    return path


def size_changing_clip(path: Path, small: tuple[int, int], large: tuple[int, int], frames: int = 5) -> Path:
    """An MPEG-TS whose header (first segment) says `small` while its second segment's frames are `large`."""
    parts = []
    for n, (width, height) in enumerate((small, large)):
        part = path.with_name(f"{path.stem}.{n}.ts")
        ffmpeg("-f", "lavfi", "-i", f"testsrc=s={width}x{height}:r=5", "-frames:v", str(frames),
               "-c:v", "libx264", "-pix_fmt", "yuv420p", str(part))  # fmt: skip
        parts.append(part.read_bytes())
    path.write_bytes(b"".join(parts))
    return path


def private_clip(path: Path, *, frames: int = 5) -> Path:
    """A small MPEG-TS clip standing for a file of the server's that no visitor may read (a bright test pattern)."""
    ffmpeg("-f", "lavfi", "-i", "testsrc=s=64x48:r=5", "-frames:v", str(frames), "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(path))  # fmt: skip
    return path


def playlist_naming(target: Path, out: Path) -> Path:
    """A 100-byte HLS playlist whose one segment is `file:<target>`: ffmpeg follows it to the server's own file."""
    out.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:{target}\n#EXT-X-ENDLIST\n")
    return out


def concat_list_naming(target: Path, out: Path) -> Path:
    """An ffconcat list naming `target` (ffmpeg's concat demuxer opens each file it lists)."""
    out.write_text(f"ffconcat version 1.0\nfile '{target}'\n")
    return out
