"""Each resource attack performed against the running app as a stranger would: refused with the limit's message, and
the server keeps serving everyone else."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from app_server import AppServer
from conftest import copy_tiny_plates
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from test_limits import WIDE, widened

BUS_LINE = "Merged model: 4 base-class detections (base alone: 4); largest confidence change against the base: 0"


@pytest.fixture(scope="module")
def app(tmp_path_factory, base_weights):
    """Default limits, except the longest training job: 60 s, so an ordinary tiny zip can be 'too long'."""
    env = {"HEADKIT_BASE": str(base_weights), "HEADKIT_BASES": "", "HF_HUB_OFFLINE": "1", "HEADKIT_MAX_TRAIN_S": "60"}
    with AppServer(tmp_path_factory.mktemp("limits_app"), env) as server:
        yield server


def still_serving(client, base_name, bus_jpg) -> None:
    line = client.predict(base_name, handle_file(bus_jpg), ["license_plate"], 0.25, 0.7, 640, api_name="/compare")[4]
    assert line.split("  \n")[0] == BUS_LINE


def test_widened_head_upload_is_refused(client, base_name, plate_head, tmp_path, bus_jpg):
    path = widened(plate_head, WIDE).save(tmp_path / "wide.safetensors")
    with pytest.raises(AppError, match=r"wide.safetensors: number of classes: 50,000 .*HEADKIT_MAX_CLASSES"):
        client.predict(base_name, handle_file(path), "", api_name="/load_head")
    still_serving(client, base_name, bus_jpg)


def test_huge_names_list_in_a_dataset_zip_is_refused(client, base_name, plates_dir, tmp_path, bus_jpg):
    root = copy_tiny_plates(plates_dir, tmp_path / "names")
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames:\n" + "".join(
        f"  - c{i}\n" for i in range(100_000)))  # fmt: skip
    archive = shutil.make_archive(str(tmp_path / "names"), "zip", tmp_path, "names")
    assert Path(archive).stat().st_size < 2 * 2**20
    with pytest.raises(AppError, match=r"100,000 is over the limit of 1,500 \(max_classes\)"):
        client.predict(base_name, handle_file(archive), api_name="/load_dataset")
    still_serving(client, base_name, bus_jpg)


def test_too_many_heads_in_one_merge_are_refused(client, base_name, plate_head, tmp_path, bus_jpg):
    path = plate_head.save(tmp_path / "plate.safetensors")
    for _ in range(9):
        client.predict(base_name, handle_file(path), "", api_name="/load_head")
    keys = [h["key"] for h in client.predict(base_name, api_name="/list_heads")[0] if h["origin"] == "session"]
    assert len(keys) == 9
    with pytest.raises(AppError, match=r"9 is over the limit of 8 \(max_heads\).*HEADKIT_MAX_HEADS"):
        client.predict(base_name, keys, True, False, 640, api_name="/merge")
    with pytest.raises(AppError, match="max_heads"):
        client.predict(base_name, handle_file(bus_jpg), keys, 0.25, 0.7, 640, api_name="/compare")
    still_serving(client, base_name, bus_jpg)


def test_too_many_head_addresses_are_refused_before_any_is_fetched(client, base_name, bus_jpg):
    """Nine hf:// addresses would be nine downloads of up to max_head_mb each: counted first, fetched never."""
    keys = [f"hf://stranger/heads/h{i}.safetensors" for i in range(9)]
    for endpoint, arguments in (
        ("/compare", (handle_file(bus_jpg), keys, 0.25, 0.7, 640)),
        ("/merge", (keys, True, False, 640)),
    ):
        with pytest.raises(AppError, match=r"heads chosen .*: 9 is over the limit of 8 \(max_heads\)"):
            client.predict(base_name, *arguments, api_name=endpoint)
    with pytest.raises(AppError, match="head keys are names or hf:// addresses"):
        client.predict(base_name, handle_file(bus_jpg), ["hf://" + "a" * 10_000], 0.25, 0.7, 640, api_name="/compare")
    still_serving(client, base_name, bus_jpg)


def test_oversized_compare_is_refused(client, base_name, bus_jpg):
    """The size sliders end at the limit (HEADKIT_MAX_IMGSZ), so Gradio itself refuses a larger value."""
    with pytest.raises(AppError, match="Value 4096 is greater than maximum value 1280"):
        client.predict(base_name, handle_file(bus_jpg), ["license_plate"], 0.25, 0.7, 4096, api_name="/compare")
    still_serving(client, base_name, bus_jpg)


def test_over_long_training_job_is_refused_before_it_starts(client, app, base_name, plates_dir, tmp_path, bus_jpg):
    copy_tiny_plates(plates_dir, tmp_path / "plates")
    archive = handle_file(shutil.make_archive(str(tmp_path / "plates"), "zip", tmp_path, "plates"))
    client.predict(base_name, archive, api_name="/load_dataset")  # the session now knows the dataset's size
    estimate = client.predict(base_name, 300, 640, 16, api_name="/estimate_training")
    assert "Too long for this server" in estimate
    with pytest.raises(
        AppError, match=r"estimated training time \(about .*\) in seconds: .* \(max_train_s\).*HEADKIT_MAX_TRAIN_S"
    ):
        client.predict(base_name, archive, 300, 640, 16, False, api_name="/train_head")
    assert not list(app.jobs.glob("*/runs/*")), "no run was started"
    still_serving(client, base_name, bus_jpg)


def test_one_queued_run_per_client_and_stop_takes_a_waiting_run_out_of_line(
    client, app, base_name, plates_dir, tmp_path, bus_jpg
):
    """A script starts a run and lets it go on without it, then tries to queue another: refused. A second client's
    run waits for the slot; its Stop takes it out of the line, and it never trains."""
    copy_tiny_plates(plates_dir, tmp_path / "plates")
    archive = handle_file(shutil.make_archive(str(tmp_path / "plates"), "zip", tmp_path, "plates"))
    owner = Client(app.url, verbose=False)
    running = owner.submit(base_name, archive, 20, 160, 4, False, api_name="/train_head")
    wait_for(running, "Epoch 1/20 done")
    started = time.monotonic()
    with pytest.raises(  # while the first request still follows its run: refused at once, not queued behind it
        AppError, match=r"training runs of yours waiting or running at once.*max_queued_runs_per_client"
    ):
        owner.predict(base_name, archive, 1, 160, 4, False, api_name="/train_head")
    assert time.monotonic() - started < 30
    running.cancel()  # the script goes away; its run goes on

    other = Client(app.url, verbose=False)
    waiting = other.submit(base_name, archive, 1, 160, 4, False, api_name="/train_head")
    wait_for(waiting, "Waiting for the training slot")
    assert other.predict(api_name="/stop_training").startswith("Stopped before it started")
    assert waiting.result()[0] == (
        "Training stopped before it started: Stop was pressed while it waited for the training slot; no head was saved."
    )
    assert owner.predict(api_name="/stop_training") == "Stopping after the current batch…"
    assert len(list(app.jobs.glob("*/runs"))) == 1, "only the first run trained"
    still_serving(client, base_name, bus_jpg)


def wait_for(job, status: str, timeout: float = 120) -> None:
    """Until one of the job's updates starts with `status`."""
    deadline = time.monotonic() + timeout
    while not any(str(update[0]).startswith(status) for update in job.outputs()):
        assert time.monotonic() < deadline and not job.done(), f"no '{status}' within {timeout} s: {job.outputs()}"
        time.sleep(0.2)
