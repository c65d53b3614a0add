"""annotate_video: the merged model on every frame of a real video, written as H.264 that browsers play, objects
tracked, and every dimension of the input bounded before it costs anything."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import cv2
import imageio_ffmpeg
import numpy as np
import psutil
import pytest
import torch
from kit import make_video
from video_files import (
    BOMB_SIDE,
    concat_list_naming,
    panned_clip,
    playlist_naming,
    private_clip,
    resolution_bomb,
    size_changing_clip,
)

import headkit
from headkit.limits import LimitExceeded, Limits
from headkit.tracking import Tracker
from headkit.video import ffmpeg_caps, output_bound_mb, probe_video

SETTINGS = {"conf": 0.25, "iou": 0.7, "imgsz": 320}


@pytest.fixture(scope="module")
def video(tmp_path_factory, bus_jpg, zidane_jpg, plate_images) -> Path:
    return make_video(tmp_path_factory.mktemp("video") / "street.mp4", [bus_jpg, zidane_jpg, plate_images[0]])


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    return resolution_bomb(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def panned(tmp_path_factory, bus_jpg) -> Path:
    return panned_clip(tmp_path_factory.mktemp("panned") / "bus_pan.mp4", bus_jpg)


def decoded(path: Path) -> list[np.ndarray]:
    """The frames as ffmpeg decodes them (BGR), the way annotate_video reads them."""
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="bgr24")
    width, height = next(reader)["size"]
    return [np.frombuffer(data, np.uint8).reshape(height, width, 3) for data in reader]


def codec_of(path: Path) -> str:
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", str(path)], capture_output=True, text=True)
    return next(line for line in probe.stderr.splitlines() if "Video:" in line)


def test_every_frame_is_predicted_and_counted(tmp_path, video, base, plate_head):
    merged = headkit.merge(base, plate_head)
    result = headkit.annotate_video(merged, video, tmp_path / "out.mp4", **SETTINGS)
    assert result.frames == 6 and result.fps == 5
    expected: dict[str, dict[str, int]] = {}
    for frame in decoded(video):  # the same decoded frames, one predict each
        found = headkit.merge(base, plate_head).predict(frame, max_det=1000, verbose=False, **SETTINGS)[0]
        classes = found.boxes.cls.int().tolist()
        for c in set(classes):
            row = expected.setdefault(found.names[c], {"detections": 0, "frames": 0})
            row["detections"] += classes.count(c)
            row["frames"] += 1
    assert (
        {name: {k: row[k] for k in ("detections", "frames")} for name, row in result.counts.items()} == expected
        and "license_plate" in expected
        and "Normal" in expected
    )
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
    with pytest.raises(ValueError, match="holiday.mp4: not a video ffmpeg can read"):
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


def test_tracking_counts_each_person_once_while_detections_count_every_frame(tmp_path, panned, base, plate_head):
    merged = headkit.merge(base, plate_head)
    result = headkit.annotate_video(merged, panned, tmp_path / "out.mp4", **SETTINGS)
    people = result.counts["Normal"]
    assert result.frames == 10 and people["frames"] == 10
    assert people["objects"] == 5 and people["detections"] == 39  # 3 to 5 of the 5 people in each of 10 frames
    assert result.table()[0] == {"class": "Normal", "detections": 39, "frames": 10, "objects": 5}


def test_tracking_leaves_detections_as_predict_finds_them(tmp_path, panned, base):
    tracked = headkit.annotate_video(base, panned, tmp_path / "tracked.mp4", **SETTINGS)
    plain = headkit.annotate_video(base, panned, tmp_path / "plain.mp4", track=False, **SETTINGS)
    assert plain.counts == {"Normal": {"detections": 39, "frames": 10, "objects": None}}
    assert tracked.counts == {"Normal": {"detections": 39, "frames": 10, "objects": 5}}
    tracker = Tracker()
    for frame in decoded(panned):  # the tracker reads each frame's boxes and changes none of them
        result = base.predict(frame, max_det=1000, verbose=False, **SETTINGS)[0]
        before = result.boxes.data.clone()
        ids = tracker.ids(result)
        assert torch.equal(result.boxes.data, before) and len(ids) == len(before)


def test_objects_match_ultralytics_model_track_on_the_merged_model(tmp_path, panned, base, plate_head):
    result = headkit.annotate_video(headkit.merge(base, plate_head), panned, tmp_path / "out.mp4", **SETTINGS)
    merged, seen = headkit.merge(base, plate_head), {}  # ConcatHead under Ultralytics' own track()
    for frame in decoded(panned):
        found = merged.track(frame, persist=True, tracker="bytetrack.yaml", max_det=1000, verbose=False, **SETTINGS)[0]
        for track_id, c in zip(found.boxes.id.int().tolist(), found.boxes.cls.int().tolist(), strict=True):
            seen.setdefault(found.names[c], set()).add(track_id)
    assert {name: len(ids) for name, ids in seen.items()} == {n: r["objects"] for n, r in result.counts.items()}


def test_lap_is_installed_so_ultralytics_installs_nothing():
    import lap
    from ultralytics.trackers.utils import matching

    assert lap.__version__ == "0.5.13" and matching.lap is lap


def test_a_resolution_bomb_is_refused_from_its_header(tmp_path, bomb, base):
    process = psutil.Process()
    rss, started = process.memory_info().rss, time.monotonic()
    message = rf"bomb.mp4: frame pixels \({BOMB_SIDE} x {BOMB_SIDE}\): 256,000,000 is over the limit of 8,294,400"
    with pytest.raises(LimitExceeded, match=message + r" \(max_video_pixels\)"):
        headkit.annotate_video(base, bomb, tmp_path / "out.mp4")
    assert time.monotonic() - started < 3
    assert process.memory_info().rss - rss < 50 * 2**20  # one decoded frame alone would be 384 MB
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("size", [(8200, 2), (1, 64)])
def test_each_side_is_bounded(tmp_path, size):
    path = tmp_path / "strip.avi"  # raw grey frames: any size the container can declare
    subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", f"color=s={size[0]}x{size[1]}:r=5",
         "-frames:v", "2", "-c:v", "rawvideo", "-pix_fmt", "gray", str(path)], check=True, timeout=60,
    )  # fmt: skip
    with pytest.raises(
        ValueError, match=rf"strip.avi: frames of {size[0]} x {size[1]} px; each side must be 2 to 8192"
    ):
        probe_video(path)


def test_a_header_that_lies_about_later_frames_decodes_none_over_the_limit(tmp_path, base):
    clip = size_changing_clip(tmp_path / "lying.ts", (64, 48), (320, 240))
    result = headkit.annotate_video(
        base, clip, tmp_path / "out.mp4", limits=Limits(max_video_pixels=64 * 48), **SETTINGS
    )
    assert result.frames == 5  # the 320 x 240 frames were refused by the decoder, never handed over
    assert "64x48" in codec_of(result.path)
    allowed = headkit.annotate_video(base, clip, tmp_path / "all.mp4", **SETTINGS)
    assert allowed.frames == 10 and "64x48" in codec_of(allowed.path)  # within the limit: scaled to the header's


def test_the_wall_time_limit_stops_the_call_and_removes_the_partial_video(tmp_path, video, base):
    with pytest.raises(LimitExceeded, match=r"street.mp4: seconds of work \(stopped at frame 1\): .* \(max_video_s\)"):
        headkit.annotate_video(base, video, tmp_path / "out.mp4", limits=Limits(max_video_s=0.001), **SETTINGS)
    assert not (tmp_path / "out.mp4").exists()


def test_the_output_is_bounded_by_frames_times_pixels(tmp_path, base):
    noise = tmp_path / "noise.mp4"
    rng = np.random.default_rng(0)
    writer = imageio_ffmpeg.write_frames(str(noise), (320, 240), fps=10, codec="libx264", quality=10)
    writer.send(None)
    for _ in range(20):
        writer.send(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    writer.close()
    result = headkit.annotate_video(base, noise, tmp_path / "out.mp4", **SETTINGS)
    assert result.frames == 20
    assert result.path.stat().st_size <= output_bound_mb(20, 320, 240) * 2**20 < noise.stat().st_size


# --- a video names no other file --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secret(tmp_path_factory) -> Path:
    return private_clip(tmp_path_factory.mktemp("server-private") / "secret.ts")


def test_the_playlist_attack_is_real_for_plain_ffmpeg(tmp_path, secret):
    """The attack as it worked: ffmpeg, asked plainly, reads the server's file through a playlist (this build follows
    one named .m3u8; others also follow .ts and .mkv names) and prints the server's paths."""
    playlist = playlist_naming(secret, tmp_path / "clip.m3u8")
    run = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(playlist), "-f", "null", "-"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert "Opening 'file:" in run.stderr and str(secret) in run.stderr and "Video: h264" in run.stderr


@pytest.mark.parametrize("name", ["clip.m3u8", "clip.ts", "clip.mkv", "clip.mp4", "clip.mov"])
@pytest.mark.parametrize("maker", [playlist_naming, concat_list_naming])
def test_a_file_naming_a_server_file_is_refused_without_reading_it(tmp_path, base, secret, name, maker):
    attack = maker(secret, tmp_path / name)
    with pytest.raises(ValueError, match=f"{name}: not a video ffmpeg can read here") as refused:
        headkit.annotate_video(base, attack, tmp_path / "out.mp4")
    assert str(tmp_path) not in str(refused.value) and str(secret.parent) not in str(refused.value)  # no server path
    assert not (tmp_path / "out.mp4").exists()
    assert "playlists (.m3u8)" in str(refused.value)


@pytest.mark.parametrize(
    "segment",
    ["file:{secret}", "concat:{secret}|{secret}", "subfile,,start,0,end,0,,:{secret}", "http://127.0.0.1:9/a.ts"],
)
def test_ffmpeg_itself_refuses_other_demuxers_and_protocols(tmp_path, monkeypatch, secret, segment):
    """Second wall: were a playlist to pass the first bytes check, ffmpeg may use only the file's one demuxer and the
    file protocol, so neither the playlist nor any segment it names is opened; its messages are not shown."""
    playlist = tmp_path / "clip.ts"
    playlist.write_text(f"#EXTM3U\n#EXTINF:10,\n{segment.format(secret=secret)}\n#EXT-X-ENDLIST\n")
    monkeypatch.setattr(headkit.video, "container_of", lambda head: "mpegts")  # as if it looked like MPEG-TS
    with pytest.raises(ValueError, match="clip.ts: not a video ffmpeg can read within its limits") as refused:
        probe_video(playlist)
    assert str(tmp_path) not in str(refused.value) and str(secret) not in str(refused.value)
    monkeypatch.setattr(headkit.video, "container_of", lambda head: "hls")  # even naming the playlist's demuxer:
    with pytest.raises(ValueError, match="not a video ffmpeg can read within its limits"):  # only `file` reads
        probe_video(playlist)


def test_ffmpeg_errors_never_show_server_paths(tmp_path, base):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\0\0\0\x18ftypisom" + b"\0" * 64 + b"garbage" * 100)  # an mp4 signature, then nothing
    with pytest.raises(ValueError, match="broken.mp4: not a video ffmpeg can read within its limits") as refused:
        headkit.annotate_video(base, broken, tmp_path / "out.mp4")
    assert str(tmp_path) not in str(refused.value)


def test_real_containers_are_read_and_ffmpeg_runs_capped(tmp_path, video, secret):
    """MP4 and MPEG-TS still read; every ffmpeg reading a stranger's file has an address-space and CPU cap."""
    assert probe_video(video).frames > 0 and probe_video(secret).width == 64
    memory, cpu = ffmpeg_caps(Limits())
    assert memory == 512 * 2**20 + 64 * 3840 * 2160 and cpu == 2 * (900 + 30)
    assert memory < 1.1 * 2**30  # 1.0 GiB at 4K UHD
    seen = []
    real = subprocess.Popen

    def spy(command, *args, **kwargs):
        process = real(command, *args, **kwargs)
        seen.append(psutil.Process(process.pid))
        return process

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess, "Popen", spy)
        frames = headkit.video._frames(secret, probe_video(secret), Limits())
        next(frames)
        limits = seen[-1].rlimit(psutil.RLIMIT_AS), seen[-1].rlimit(psutil.RLIMIT_CPU)
        frames.close()
    assert limits[0] == (memory, memory) and limits[1][0] == cpu
