"""The app as its users drive it: `python app.py` on loopback, every endpoint called through gradio_client."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import imageio_ffmpeg
import pytest
import yaml
from app_server import REPO, AppServer
from coco_export import export_coco, zipped
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from hub_server import LoopbackHub
from kit import copy_tiny_plates, make_video
from PIL import Image
from ultralytics import YOLO

import headkit

ENDPOINTS = {
    "load_model", "list_heads", "load_head", "compare", "load_dataset", "estimate_training", "train_head",
    "stop_training", "convert_to_keypoints", "merge", "push_head", "compare_video", "resume", "compare_webcam",
    "find_heads",
}  # fmt: skip
BUS_LINE = "Merged model: 4 base-class detections (base alone: 4); largest confidence change against the base: 0"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    with LoopbackHub(tmp_path_factory.mktemp("hub")) as server:
        yield server


@pytest.fixture(scope="module")
def app(tmp_path_factory, base_weights, hub):
    env = {"HEADKIT_BASE": str(base_weights), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0", "HF_TOKEN": ""}
    with AppServer(tmp_path_factory.mktemp("app"), env) as server:
        yield server


@pytest.fixture(scope="module")
def plates_zip(tmp_path_factory, plates_dir) -> Path:
    root = tmp_path_factory.mktemp("zips")
    copy_tiny_plates(plates_dir, root / "tiny_plates")
    return Path(shutil.make_archive(str(root / "tiny_plates"), "zip", root, "tiny_plates"))


def test_every_event_is_named_after_its_headkit_verb(client):
    names = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert set(names) == {f"/{name}" for name in ENDPOINTS}


def test_load_model_and_list_heads(client, base_name):
    banner, info = client.predict(api_name="/load_model")  # the base picker defaults to HEADKIT_BASE
    assert banner == "" and info["loaded"] and info["base"] == base_name
    assert info["names"] == {"0": "Normal", "1": "Fall"} and len(info["fingerprint"]) == 64
    heads, notes, *_ = client.predict(base_name, api_name="/list_heads")
    assert {"key": "license_plate", "available": True} | heads[0] == heads[0]
    assert "2 classes (Normal, Fall)" in notes


def test_compare_on_bus(client, base_name, bus_jpg):
    *images, table, line, result, finetuned = client.predict(
        base_name, handle_file(bus_jpg), ["license_plate"], 0.25, 0.7, 640, api_name="/compare"
    )
    summary, kept, timing = line.split("  \n")
    assert summary == BUS_LINE and finetuned is None  # no fine-tune was trained for a shipped head
    assert kept == "Base detections kept unchanged (same class, IoU ≥ 0.9, |Δconf| ≤ 1e-4): custom 0/4 · merged 4/4"
    assert re.fullmatch(
        r"Time for this image \(pre-process, inference, NMS\): base [\d.]+ ms · custom [\d.]+ ms · merged [\d.]+ ms",
        timing,
    )
    assert all(result["timings_ms"][m] > 0 for m in ("base", "custom", "merged"))
    assert [Image.open(p).size for p in images] == [Image.open(bus_jpg).size] * 3
    assert result["base_count"] == result["merged_base_count"] == 4 and result["max_confidence_change"] == 0
    rows = result["detections"]
    assert {r["model"] for r in rows} >= {"base", "merged"}
    assert {r["origin"] for r in rows if r["model"] == "custom"} <= {"license_plate"}
    assert table["headers"] == ["model", "origin", "name", "class_id", "confidence", "xyxy"]
    assert len(table["data"]) == len(rows)


def test_a_coco_json_zip_is_accepted_and_a_broken_one_refused(client, base_name, plates_dir, tmp_path):
    archive = zipped(export_coco(plates_dir, tmp_path / "roboflow", layout="roboflow"))
    summary_md, previews, summary, *_ = client.predict(base_name, handle_file(archive), api_name="/load_dataset")
    assert summary["names"] == {"0": "license_plate"} and summary["splits"]["train"]["images"] == 12
    assert "| train | 12 | 12 |" in summary_md and len(previews) == 4
    broken = export_coco(plates_dir, tmp_path / "broken", layout="coco", counts=(("train", 2), ("val", 1)))
    path = broken / "annotations" / "instances_train.json"
    path.write_text(path.read_text().replace('"image_id": 1,', '"image_id": 77,', 1))
    with pytest.raises(AppError, match="annotation id 100 refers to image id 77, which is not in 'images'"):
        client.predict(base_name, handle_file(zipped(broken)), api_name="/load_dataset")


def test_compare_video_returns_a_playable_video_and_counts(client, base_name, bus_jpg, plate_images, tmp_path):
    video = make_video(tmp_path / "street.mp4", [bus_jpg, plate_images[0]])
    path, table, line, result = client.predict(
        base_name, handle_file(video), ["license_plate"], 0.25, 0.7, 320, api_name="/compare_video"
    )
    assert line.startswith("4 frames at 5 fps;") and result["frames"] == 4
    assert {row[0] for row in table["data"]} == set(result["counts"]) >= {"Normal", "license_plate"}
    probe = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-i", path], capture_output=True, text=True).stderr
    assert "Video: h264" in probe and "yuv420p" in probe
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"not a video at all")
    with pytest.raises(AppError, match="fake.mp4: not a video ffmpeg can read"):
        client.predict(base_name, handle_file(fake), [], 0.25, 0.7, 320, api_name="/compare_video")


def test_convert_a_small_dataset_zip(client, plates_zip, tmp_path):
    archive, summary = client.predict(handle_file(plates_zip), api_name="/convert_to_keypoints")
    assert summary["splits"] == {"train": {"images": 8, "boxes": 15}, "val": {"images": 4, "boxes": 4}}
    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp_path)
    root = tmp_path / "tiny_plates-keypoints"
    assert yaml.safe_load((root / "data.yaml").read_text())["kpt_shape"] == [1, 3]
    label = next((root / "labels" / "train").glob("*.txt")).read_text().split()
    assert len(label) % 8 == 0 and label[-1] == "1"


def test_train_then_compare_merge_and_share_within_the_session(client, app, hub, base_name, plates_zip, bus_jpg):
    summary_md, previews, summary, *_ = client.predict(base_name, handle_file(plates_zip), api_name="/load_dataset")
    assert summary["names"] == {"0": "license_plate"} and summary["splits"]["train"]["images"] == 8
    assert "| train | 8 | 8 | 15 |" in summary_md and len(previews) == 4
    assert "Estimated training time: about" in client.predict(base_name, 1, 160, 4, api_name="/estimate_training")

    status, curve, head_file, metrics, report, plots, *_ = client.predict(
        base_name, handle_file(plates_zip), 1, 160, 4, False, "neck", api_name="/train_head"
    )
    key = report["head"]
    assert report["kind"] == "branch from layer 10" and headkit.load_head(head_file).kind.branch_start == 10
    assert key == "session/tiny_plates" and status.startswith("✅ Trained `session/tiny_plates`")
    assert headkit.load_head(head_file).names == {0: "license_plate"}
    assert report["trunk_check"]["untouched"] and set(report["metrics"]) == {"license_plate", "all"}
    assert metrics["headers"] == ["class", "P", "R", "mAP50", "mAP50-95"] and plots
    assert curve["columns"] == ["epoch", "metric", "value"]
    assert sorted(row[1] for row in curve["data"]) == ["P", "R", "mAP50", "mAP50-95"]  # one epoch, four metrics
    assert key in [h["key"] for h in client.predict(base_name, api_name="/list_heads")[0]]

    line = client.predict(base_name, handle_file(bus_jpg), [key], 0.25, 0.7, 320, api_name="/compare")[4]
    assert "largest confidence change against the base: 0" in line

    files, info = client.predict(base_name, ["license_plate", key], True, True, 160, api_name="/merge")
    assert [Path(f).suffix for f in files] == [".pt", ".onnx"]
    assert info["names"] == {"0": "Normal", "1": "Fall", "2": "license_plate", "3": "license_plate_2"}
    assert YOLO(files[0]).names == {0: "Normal", 1: "Fall", 2: "license_plate", 3: "license_plate_2"}

    message, pushed = client.predict(base_name, key, "alice/plates", "hf_test_token", None, api_name="/push_head")
    assert message.startswith("✅ Pushed to [alice/plates]") and pushed["commit_url"].startswith(hub.url)
    assert set(hub.commits[-1]["files"]) == {"tiny_plates.safetensors", "README.md", "example.jpg"}

    stranger = Client(app.url, verbose=False)  # another browser or script: its own session
    assert key not in [h["key"] for h in stranger.predict(base_name, api_name="/list_heads")[0]]
    for endpoint, args in (("/compare", (handle_file(bus_jpg), [key], 0.25, 0.7, 320)),
                           ("/merge", ([key], True, False, 640))):  # fmt: skip
        with pytest.raises(AppError, match="this session has no head 'tiny_plates'"):
            stranger.predict(base_name, *args, api_name=endpoint)
    saved = next(app.jobs.glob("*/heads/tiny_plates.safetensors"))
    with pytest.raises(urllib.error.HTTPError, match="403"):
        urllib.request.urlopen(f"{app.url}/gradio_api/file={saved}")


def test_a_pushed_head_is_listed_for_its_base_and_loads_from_there(app, hub, base_name, plate_head, bus_jpg):
    """Merge & share pushes the shipped plate head; Compare's "Heads on the Hub for this base" (/find_heads: the
    loopback Hub searched by the base's fingerprint tag, each file's header checked) lists it, and its address loads
    into another visitor's session and runs beside the base's detections, unchanged."""
    pusher, visitor = Client(app.url, verbose=False), Client(app.url, verbose=False)
    message, pushed = pusher.predict(
        base_name, "license_plate", "erin/plates", "hf_test_token", None, api_name="/push_head"
    )
    assert pushed["base_tag"] == f"headkit-base-{plate_head.base_fingerprint[:16]}" and pushed["base_tag"] in message

    line, table = visitor.predict(base_name, "downloads", 10, api_name="/find_heads")
    assert table["headers"] == ["repository", "classes", "mAP50", "downloads", "likes", "address"]
    rows = {row[0]: dict(zip(table["headers"], row, strict=True)) for row in table["data"]}
    assert "erin/plates" in rows and set(rows) <= {"erin/plates", "alice/plates"}  # alice: the head trained above
    erin = rows["erin/plates"]
    assert erin["address"] == f"hf://erin/plates/license_plate.safetensors@{hub.head_sha('erin/plates')}"
    assert erin["classes"] == "license_plate"
    assert erin["mAP50"] == round(plate_head.metadata["metrics"]["all"]["mAP50"], 3)
    assert line.startswith(f"{len(rows)} head(s) on {hub.url} fit this base (searched ")

    heads, *_ = visitor.predict(base_name, None, erin["address"], api_name="/load_head")
    (added,) = [h for h in heads if h["origin"] == "session"]
    assert added["available"] and added["classes"] == ["license_plate"]
    compared = visitor.predict(base_name, handle_file(bus_jpg), [added["key"]], 0.25, 0.7, 640, api_name="/compare")
    assert compared[4].split("  \n")[0] == BUS_LINE


def test_a_run_outlives_its_client_and_is_found_again_with_the_key(app, base_name, plates_zip, bus_jpg):
    first = Client(app.url, verbose=False)
    key, message, *_ = first.predict("", base_name, api_name="/resume")
    assert len(key) >= 30 and message == "No training run for this key yet."
    job = first.submit(base_name, handle_file(plates_zip), 3, 160, 4, False, "head", api_name="/train_head")
    deadline = time.monotonic() + 120
    while not any(str(update[0]).startswith("Epoch 1/3 done") for update in job.outputs()):
        assert time.monotonic() < deadline and not job.done()
        time.sleep(0.2)
    job.cancel()  # the script goes away mid-run
    first.close()

    again = Client(app.url, verbose=False)  # later, elsewhere: a new session with the same key
    returned, status, curve, head_file, metrics, report, *_ = again.predict(key, base_name, api_name="/resume")
    assert returned == key and status.startswith("✅ Trained `session/tiny_plates") and report["head"] in status
    assert sorted({row[0] for row in curve["data"]}) == [1, 2, 3]  # the whole run, replayed
    assert headkit.load_head(head_file).names == {0: "license_plate"}
    assert report["head"] in [h["key"] for h in again.predict(base_name, api_name="/list_heads")[0]]
    line = again.predict(base_name, handle_file(bus_jpg), [report["head"]], 0.25, 0.7, 320, api_name="/compare")[4]
    assert "largest confidence change against the base: 0" in line

    stranger = Client(app.url, verbose=False)
    with pytest.raises(AppError, match="unknown user key: this server did not issue it"):
        stranger.predict("not-a-key-this-server-issued-0123456789", base_name, api_name="/resume")
    assert report["head"] not in [h["key"] for h in stranger.predict(base_name, api_name="/list_heads")[0]]


def test_stop_works_from_a_reopened_session(app, base_name, plates_zip):
    """Stop, through the app (the library and the run layer: test_faults.py, test_runs.py): pressed on a reopened
    page, it ends the run its key started elsewhere, and no head is registered."""
    first = Client(app.url, verbose=False)
    key = first.predict("", base_name, api_name="/resume")[0]
    job = first.submit(base_name, handle_file(plates_zip), 100, 160, 4, False, "head", api_name="/train_head")
    deadline = time.monotonic() + 120
    while not any(str(update[0]).startswith("Epoch 1/100 done") for update in job.outputs()):
        assert time.monotonic() < deadline and not job.done()
        time.sleep(0.2)
    job.cancel()
    first.close()
    again = Client(app.url, verbose=False)
    follow = again.submit(key, base_name, api_name="/resume")
    while not follow.outputs():  # the first update: this session now uses the key
        assert time.monotonic() < deadline + 60
        time.sleep(0.1)
    assert again.predict(api_name="/stop_training") == "Stopping after the current batch…"
    status = follow.result()[1]
    assert status == "Training stopped on request; no head was saved."
    assert not [e for e in again.predict(base_name, api_name="/list_heads")[0] if e["origin"] == "session"]


def test_forgetting_side_by_side(client, app, base_name, plates_zip, bus_jpg):
    """Train a head and the usual full fine-tune; Compare shows the fine-tune and counts what each model keeps."""
    estimate = client.predict(base_name, 1, 160, 4, True, api_name="/estimate_training")
    assert "comparison fine-tune" in estimate
    status, *_, report, _plots, _a, _b, _c = client.predict(
        base_name, handle_file(plates_zip), 1, 160, 4, False, "head", True, api_name="/train_head"
    )
    key = report["head"]
    assert status.startswith(f"✅ Trained `{key}`, and the whole model fine-tuned the usual way")
    assert set(report["finetune"]) == {"mAP50", "seconds"}
    assert list(app.jobs.glob(f"*/finetunes/{key.removeprefix('session/')}.safetensors"))  # safetensors, in the job
    *images, table, line, result, finetuned = client.predict(
        base_name, handle_file(bus_jpg), [key], 0.25, 0.7, 640, api_name="/compare"
    )
    assert Image.open(finetuned).size == Image.open(bus_jpg).size
    assert line.split("  \n")[1].endswith("custom 0/4 · merged 4/4 · naive fine-tune 0/4")
    assert result["kept"] == {"custom": 0, "merged": 4, "finetuned": 0}
    assert {r["origin"] for r in result["detections"] if r["model"] == "finetuned"} <= {"fine-tune"}


@pytest.mark.parametrize(
    ("endpoint", "args", "message"),
    [
        ("/compare", ("BASE", None, [], 0.25, 0.7, 640), "give an image"),
        ("/compare", ("BASE", "BUS", ["../../weights/license_plate"], 0.25, 0.7, 640), "unknown head"),
        ("/compare", ("BASE", "BUS", ["hf://someone/models/model.pt"], 0.25, 0.7, 640), "pickle"),
        ("/compare", ("BASE", "BUS", ["license_plate"], 3.0, 0.7, 640), "greater than maximum value 1.0"),
        ("/load_head", ("BASE", "EVIL", ""), "pickle"),
        ("/load_head", ("BASE", None, ""), "is not a Hub address; upload a head"),
        ("/load_head", ("BASE", None, "/etc/passwd"), "is not a Hub address"),
        ("/load_dataset", ("BASE", "GARBAGE"), "GARBAGE.zip"),
        ("/load_dataset", ("BASE", "EVIL"), "pickle"),
        ("/convert_to_keypoints", ("BUS",), r"expected a dataset zip \(.zip file\)"),
        ("/train_head", ("BASE", None, 1, 160, 4, False), "upload a dataset zip first"),
        ("/merge", ("BASE", [], True, False, 640), "choose at least one head"),
        ("/push_head", ("BASE", "license_plate", "not a repo id", "t", None), "not a model repository id"),
        ("/push_head", ("BASE", "license_plate", "alice/plates", "", None), "needs your own Hub token"),
    ],
)
def test_bad_input_is_a_clear_error_and_the_app_keeps_serving(
    client, base_name, bus_jpg, tmp_path, endpoint, args, message
):
    (tmp_path / "head.pt").write_bytes(b"\x80\x04 a pickle")
    (tmp_path / "GARBAGE.zip").write_bytes(b"not a zip")
    files = {"BUS": bus_jpg, "EVIL": tmp_path / "head.pt", "GARBAGE": tmp_path / "GARBAGE.zip"}
    values = {name: handle_file(path) for name, path in files.items()} | {"BASE": base_name}
    with pytest.raises(AppError, match=message):
        client.predict(*[values.get(a, a) if isinstance(a, str) else a for a in args], api_name=endpoint)
    assert client.predict(base_name, api_name="/list_heads")[0]


def test_without_a_base_the_app_starts_and_says_how_to_fix_it(tmp_path, base_weights, bus_jpg):
    missing = "/nonexistent/yolov8n.pt"
    env = {"HEADKIT_BASE": str(base_weights), "HF_HUB_OFFLINE": "1"}
    with AppServer(tmp_path / "app", env, args=("--base", missing)) as server:
        client = Client(server.url, verbose=False)
        banner, info = client.predict(api_name="/load_model")  # --base wins over HEADKIT_BASE
        assert info == {"base": missing, "loaded": False, "error": banner}
        assert f"Base model {missing} is not available" in banner and "--base" in banner  # plain text, no Markdown
        assert "HEADKIT_BASE=/path/to/model.pt" in banner and "`" not in banner and "#" not in banner
        assert client.predict(missing, api_name="/list_heads")[:2] == ([], "")  # said once, by the banner
        with pytest.raises(AppError, match="is not available"):  # and by the action that needs the base
            client.predict(missing, handle_file(bus_jpg), [], 0.25, 0.7, 640, api_name="/compare")


ZERO_GPU_CHECK = """
import json, spaces
from headkit import server
from webapp import state, train
assert train.train_on_gpu.gpu_duration is server.gpu_seconds, "training must run inside one spaces.GPU call"
request = server.TrainingRequest("base", "data.yaml", "job", "plates", 1, 160, 4, gpu_seconds=42)
assert server.gpu_seconds(request) == 42 and train.WORK is not train.train_here
fits = train.estimate_training(state.BASE, {"train": 8, "val": 4}, 1, 640, 16)
refused = train.estimate_training(state.BASE, {"train": 5000, "val": 500}, 300, 1280, 16)
print(json.dumps([fits, refused]))
"""
SPACES_STUB = """
def GPU(duration=60):
    def wrap(fn):
        fn.gpu_duration = duration
        return fn
    return wrap
"""


def test_zero_gpu_training_runs_in_one_gpu_call_or_is_refused_with_advice(tmp_path, base_weights):
    (tmp_path / "spaces.py").write_text(SPACES_STUB)  # stands in for the `spaces` package, present on Spaces only
    env = {"PYTHONPATH": str(tmp_path), "SPACES_ZERO_GPU": "true", "SPACE_ID": "someone/headkit",
           "HEADKIT_BASE": str(base_weights), "HEADKIT_JOBS_DIR": str(tmp_path / "jobs"), "HF_HUB_OFFLINE": "1"}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", ZERO_GPU_CHECK], cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    fits, refused = json.loads(done.stdout.strip().splitlines()[-1])
    assert fits.startswith("Estimated training time: about") and "Fits one ZeroGPU call (30 s)" in fits
    assert "Too long for ZeroGPU" in refused and "duplicate this Space on dedicated GPU hardware" in refused


CONCURRENCY_CHECK = """
import json
from webapp.page import build_demo
demo = build_demo()
named = lambda group: None if str(group).isdigit() else group  # an event of its own gets its id as its group
print(json.dumps({fn.api_name: [named(fn.concurrency_id), fn.concurrency_limit] for fn in demo.fns.values()
                  if fn.api_name}))
"""


def test_heavy_endpoints_have_concurrency_limits(tmp_path, base_weights):
    """N concurrent requests must not cost N times one request's memory: each heavy endpoint belongs to a Gradio
    concurrency group with the limit the README's Limits table gives; more requests wait in Gradio's queue.
    /train_head holds no Gradio slot (it follows its run for hours): the run line admits it, and its dataset import
    takes one of the import slots /load_dataset and /convert_to_keypoints share."""
    env = {"HEADKIT_BASE": str(base_weights), "HEADKIT_JOBS_DIR": str(tmp_path / "jobs"), "HF_HUB_OFFLINE": "1",
           "GRADIO_TEMP_DIR": str(tmp_path / "gradio"), "HEADKIT_MAX_CONCURRENT_IMPORTS": "3"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", CONCURRENCY_CHECK], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    groups = json.loads(done.stdout.strip().splitlines()[-1])
    assert {name: groups[name] for name in ("load_dataset", "convert_to_keypoints", "compare_video", "merge",
                                            "push_head", "compare", "compare_webcam", "train_head",
                                            "find_heads")} == {
        "load_dataset": ["dataset", 3],  # HEADKIT_MAX_CONCURRENT_IMPORTS
        "convert_to_keypoints": ["dataset", 3],
        "compare_video": ["video", 1],
        "merge": ["merge", 1],
        "push_head": ["push", 1],
        "compare": ["inference", 4],
        "compare_webcam": ["inference", 4],
        "train_head": [None, None],
        "find_heads": ["hub", 2],  # each search reads up to max_hub_results headers
    }  # fmt: skip
