"""annotate_video: the merged model on every frame of a real video, written as H.264 that browsers play."""

from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
from conftest import make_video

import headkit
from headkit.limits import LimitExceeded, Limits

SETTINGS = {"conf": 0.25, "iou": 0.7, "imgsz": 320}


@pytest.fixture(scope="module")
def video(tmp_path_factory, bus_jpg, zidane_jpg, plate_images) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "street.mp4", [bus_jpg, zidane_jpg, plate_images[0]])


def codec_of(path: Path) -> str:
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", str(path)], capture_output=True, text=True)
    return next(line for line in probe.stderr.splitlines() if "Video:" in line)


def test_every_frame_is_predicted_and_counted(tmp_path, video, base, plate_head):
    merged = headkit.merge(base, plate_head)
    result = headkit.annotate_video(merged, video, tmp_path / "out.mp4", **SETTINGS)
    assert result.frames == 6 and result.fps == 5
    expected: dict[str, dict[str, int]] = {}
    capture = cv2.VideoCapture(str(video))
    while (frame := capture.read()[1]) is not None:  # the same decoded frames, one predict each
        found = headkit.merge(base, plate_head).predict(frame, max_det=1000, verbose=False, **SETTINGS)[0]
        classes = found.boxes.cls.int().tolist()
        for c in set(classes):
            row = expected.setdefault(found.names[c], {"detections": 0, "frames": 0})
            row["detections"] += classes.count(c)
            row["frames"] += 1
    assert result.counts == expected and "license_plate" in expected and "Normal" in expected
    assert result.table()[0]["detections"] == max(row["detections"] for row in expected.values())


def test_output_is_h264_that_browsers_play(tmp_path, video, base):
    result = headkit.annotate_video(base, video, tmp_path / "out.mp4", **SETTINGS)
    info = codec_of(result.path)
    assert "h264" in info and "yuv420p" in info and "640x480" in info
    assert imageio_ffmpeg.count_frames_and_secs(str(result.path))[0] == 6


def test_progress_reports_each_frame(tmp_path, video, base):
    seen = []
    headkit.annotate_video(base, video, tmp_path / "out.mp4", progress=lambda d, n: seen.append((d, n)), **SETTINGS)
    assert seen == [(n, 6) for n in range(1, 7)]


def test_not_a_video_is_refused(tmp_path, base):
    fake = tmp_path / "holiday.mp4"
    fake.write_text("this is a text file")
    with pytest.raises(ValueError, match="holiday.mp4: not a video OpenCV can read"):
        headkit.annotate_video(base, fake, tmp_path / "out.mp4")
    assert not (tmp_path / "out.mp4").exists()


def test_a_video_without_frames_is_refused(tmp_path, base):
    empty = tmp_path / "empty.mp4"
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48)).release()
    with pytest.raises(ValueError, match=r"empty.mp4: (the video has no frames|not a video)"):
        headkit.annotate_video(base, empty, tmp_path / "out.mp4")


def test_too_long_a_video_is_refused_before_decoding(tmp_path, video, base):
    with pytest.raises(LimitExceeded, match=r"street.mp4: frames: 6 is over the limit of 5 \(max_video_frames\)"):
        headkit.annotate_video(base, video, tmp_path / "out.mp4", limits=Limits(max_video_frames=5))
    assert not (tmp_path / "out.mp4").exists()


def test_odd_frame_sizes_still_encode(tmp_path, bus_jpg, base):
    odd = tmp_path / "odd.mp4"
    writer = cv2.VideoWriter(str(odd), cv2.VideoWriter_fourcc(*"mp4v"), 5, (321, 241))
    for _ in range(3):
        writer.write(cv2.resize(cv2.imread(str(bus_jpg)), (321, 241)))
    writer.release()
    result = headkit.annotate_video(base, odd, tmp_path / "out.mp4", **SETTINGS)
    assert result.frames == 3 and "h264" in codec_of(result.path)
    assert np.all(np.asarray(imageio_ffmpeg.count_frames_and_secs(str(result.path))) > 0)
