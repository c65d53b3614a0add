"""Compare's video and webcam sections as users drive them through the running app (gradio_client on loopback)."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import psutil
import pytest
from app_server import AppServer
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image
from video_files import panned_clip, resolution_bomb


@pytest.fixture(scope="module")
def app(offline_app: AppServer) -> AppServer:
    return offline_app  # the suite's shared offline server: one start for every test that needs the plain app


@pytest.fixture(scope="module")
def panned(tmp_path_factory, bus_jpg):
    return panned_clip(tmp_path_factory.mktemp("panned") / "bus_pan.mp4", bus_jpg)


def run_video(client, base_name, video):
    return client.predict(base_name, handle_file(video), [], 0.25, 0.7, 320, api_name="/compare_video")


def test_compare_video_counts_objects_by_track_and_detections_by_frame(client, base_name, panned):
    path, table, line, result = run_video(client, base_name, panned)
    assert line == "10 frames at 10 fps; 39 detections by the merged model, 5 distinct objects tracked"
    assert table["headers"] == ["class", "detections", "frames", "objects"]
    assert table["data"] == [["Normal", 39, 10, 5]]
    assert result["counts"] == {"Normal": {"detections": 39, "frames": 10, "objects": 5}}
    assert path.endswith(".mp4")


def test_a_resolution_bomb_is_refused_and_the_server_keeps_serving(client, app, base_name, panned, tmp_path_factory):
    bomb = resolution_bomb(tmp_path_factory.getbasetemp())
    server = psutil.Process(app.process.pid)
    rss, started = server.memory_info().rss, time.monotonic()
    with pytest.raises(AppError, match=r"bomb.mp4: frame pixels \(16000 x 16000\): .* \(max_video_pixels\)"):
        run_video(client, base_name, bomb)
    assert time.monotonic() - started < 5  # upload included
    assert server.memory_info().rss - rss < 100 * 2**20  # one decoded frame alone would be 384 MB
    assert run_video(client, base_name, panned)[2].startswith("10 frames at 10 fps; 39 detections")


def test_the_compare_image_takes_webcam_snapshots(client):
    image = next(c for c in client.config["components"] if c.get("props", {}).get("elem_id") == "in-image")
    assert image["props"]["sources"] == ["upload", "webcam", "clipboard"]
    camera = next(c for c in client.config["components"] if c.get("props", {}).get("elem_id") == "webcam")
    assert camera["props"]["sources"] == ["webcam"] and camera["props"]["streaming"]


def stream_frame(app, client, picture, heads: list[str], base: str) -> dict:
    """One frame through the webcam stream event, as the page sends it (gradio_client cannot drive stream events):
    upload, join the queue, read the server's events until the frame's output (or error) arrives."""
    event = next(d for d in client.config["dependencies"] if d["api_name"] == "compare_webcam")
    with httpx.Client(base_url=f"{app.url}/gradio_api", timeout=60) as http:
        with open(picture, "rb") as f:
            uploaded = http.post("/upload", files={"files": (picture.name, f)}).json()[0]
        frame = {"path": uploaded, "orig_name": picture.name, "meta": {"_type": "gradio.FileData"}}
        session = uuid.uuid4().hex
        body = {"data": [base, frame, heads, 0.25, 0.7, 640], "fn_index": event["id"], "session_hash": session}
        http.post("/queue/join", json=body).raise_for_status()
        with http.stream("GET", "/queue/data", params={"session_hash": session}) as reply:
            for line in reply.iter_lines():
                message = json.loads(line[5:]) if line.startswith("data:") else {}
                if message.get("msg") in ("process_streaming", "process_completed"):
                    return message["output"]
    raise AssertionError("the stream event sent no output")


def test_a_webcam_frame_runs_through_the_merged_model(app, client, base_name, bus_jpg):
    output = stream_frame(app, client, bus_jpg, ["license_plate"], base_name)
    shown = output["data"][0]
    assert (shown["meta"]["_type"], Image.open(shown["path"]).size) == ("gradio.FileData", Image.open(bus_jpg).size)


def test_a_webcam_frame_over_the_image_limit_is_refused(app, client, base_name, bus_jpg, tmp_path):
    huge = tmp_path / "frame.png"
    Image.new("1", (8000, 8000)).save(huge)  # 64 MP in a few kB: a frame no camera sends
    output = stream_frame(app, client, huge, [], base_name)
    assert "image pixels: 64,000,000 is over the limit of 50,000,000 (max_image_pixels)" in output["error"]
    assert stream_frame(app, client, bus_jpg, [], base_name)["data"][0]["path"]  # and the next frame still runs
