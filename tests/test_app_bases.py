"""Bases load independently: a stalled Hub download of one base never blocks requests for another."""

from __future__ import annotations

import time

import pytest
from app_server import AppServer
from gradio_client import Client, handle_file
from hub_server import LoopbackHub

STALL_S = 10.0


@pytest.fixture(scope="module")
def stalled_app(tmp_path_factory, base_weights):
    with LoopbackHub(tmp_path_factory.mktemp("hub")) as hub:
        hub.slow["Ultralytics/YOLOv8"] = STALL_S  # every request for the official yolov8n.pt hangs this long
        env = {"HEADKIT_BASE": str(base_weights), "HEADKIT_BASES": "yolov8n.pt", "HF_ENDPOINT": hub.url,
               "HF_HUB_OFFLINE": "0", "HF_TOKEN": ""}  # fmt: skip
        with AppServer(tmp_path_factory.mktemp("app"), env) as server:
            yield server


def test_a_slow_base_download_blocks_no_other_base(stalled_app, base_weights, bus_jpg):
    slow, fast = Client(stalled_app.url, verbose=False), Client(stalled_app.url, verbose=False)
    pending = slow.submit("yolov8n.pt", api_name="/load_model")
    time.sleep(1.0)  # the slow download is under way
    started = time.monotonic()
    banner, info = fast.predict(str(base_weights), api_name="/load_model")
    line = fast.predict(str(base_weights), handle_file(bus_jpg), [], 0.25, 0.7, 320, api_name="/compare")[4]
    assert info["loaded"] and "largest confidence change against the base: 0" in line
    assert time.monotonic() - started < STALL_S - 2, "the other base waited for the stalled download"
    assert not pending.done()
    banner, info = pending.result(timeout=STALL_S * 6)
    assert not info["loaded"] and "yolov8n.pt" in banner  # the slow one still ends with a clear message
