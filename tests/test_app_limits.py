"""Each resource attack performed against the running app as a stranger would: refused with the limit's message, and
the server keeps serving everyone else."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import httpx
import psutil
import pytest
from app_server import AppServer
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from kit import copy_tiny_plates
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


def test_a_run_over_the_memory_limit_is_refused_before_its_dataset_is_unpacked(
    app, base_name, plates_dir, tmp_path, bus_jpg
):
    """1280 px at batch 64 on this CPU server would need tens of GiB: the estimate (`max_train_mb`) refuses it with
    the batch and image size that fit, right after the image-size check, before the zip is unpacked or a run starts;
    the estimate a visitor reads first says so too."""
    copy_tiny_plates(plates_dir, tmp_path / "plates")
    archive = handle_file(shutil.make_archive(str(tmp_path / "plates"), "zip", tmp_path, "plates"))
    visitor = Client(app.url, verbose=False)
    job = app.jobs / hashlib.sha256(visitor.session_hash.encode()).hexdigest()[:32]
    refusal = (
        r"training \(head only\) at 1280 px with batch 64 needs an estimated [\d,]+ MiB of memory, over the limit of "
        r"7,168 MiB \(max_train_mb\); lower the batch to \d+ or less at 1280 px or the image size to \d+ px or less "
        r"at batch 64 .*HEADKIT_MAX_TRAIN_MB"
    )
    with pytest.raises(AppError, match=refusal):
        visitor.predict(base_name, archive, 1, 1280, 64, False, "head", api_name="/train_head")
    assert not (job / "datasets").exists() and not (job / "runs").exists(), "refused before unpacking or training"

    visitor.predict(base_name, archive, api_name="/load_dataset")
    estimate = visitor.predict(base_name, 1, 1280, 64, False, "head", api_name="/estimate_training")
    assert "**Too much memory for this server:** training (head only) at 1280 px with batch 64" in estimate
    still_serving(visitor, base_name, bus_jpg)


def test_sessions_from_one_address_hold_one_place_in_line_and_stop_takes_a_waiting_run_out(
    client, app, base_name, plates_dir, tmp_path, bus_jpg
):
    """A script opens nine sessions from one address and starts a run from the first: the run holds the address's
    one place (`max_queued_runs_per_client`), so every session's further run is refused at once, not queued behind
    it. A visitor from another address (through a local proxy, which sets X-Forwarded-For) waits for the slot; its
    Stop takes it out of the line, and it never trains."""
    copy_tiny_plates(plates_dir, tmp_path / "plates")
    archive = handle_file(shutil.make_archive(str(tmp_path / "plates"), "zip", tmp_path, "plates"))
    scripts = [Client(app.url, verbose=False) for _ in range(9)]
    running = scripts[0].submit(base_name, archive, 20, 160, 4, False, api_name="/train_head")
    wait_for(running, "Epoch 1/20 done")
    started = time.monotonic()
    for script in scripts:  # the running session itself, and eight more from the same address
        with pytest.raises(
            AppError,
            match=r"training runs of yours \(address 127\.0\.0\.1, however many sessions\) waiting or running at "
            r"once .*: 2 is over the limit of 1 \(max_queued_runs_per_client\)",
        ):
            script.predict(base_name, archive, 1, 160, 4, False, api_name="/train_head")
    assert time.monotonic() - started < 60
    running.cancel()  # the script goes away; its run goes on

    visitor = Client(app.url, verbose=False, headers={"X-Forwarded-For": "203.0.113.7"})
    waiting = visitor.submit(base_name, archive, 1, 160, 4, False, api_name="/train_head")
    wait_for(waiting, "Waiting for the training slot")
    assert visitor.predict(api_name="/stop_training").startswith("Stopped before it started")
    assert waiting.result()[0] == (
        "Training stopped before it started: Stop was pressed while it waited for the training slot; no head was saved."
    )
    assert scripts[0].predict(api_name="/stop_training") == "Stopping after the current batch…"
    assert len(list(app.jobs.glob("*/runs"))) == 1, "only the first run trained"
    still_serving(client, base_name, bus_jpg)


def test_an_invalid_branch_is_refused_with_the_choices(client, base_name, plates_dir, tmp_path):
    """It used to become "head" silently; Gradio's radio refuses a value outside its choices, the handler a missing
    one (a script sending null), both naming the choices, before the dataset is unpacked."""
    copy_tiny_plates(plates_dir, tmp_path / "plates")
    archive = handle_file(shutil.make_archive(str(tmp_path / "plates"), "zip", tmp_path, "plates"))
    choices = r"\['head', 'p3-last-narrow', 'p3-narrow', 'neck'\]"
    with pytest.raises(AppError, match=rf"'bogus'.* is not in the list of choices: {choices}"):
        client.predict(base_name, archive, 1, 160, 4, False, "bogus", api_name="/train_head")
    with pytest.raises(
        AppError, match=r"branch None: expected one of 'head' \(Head only\), 'p3-last-narrow' \(P3 last"
    ):
        client.predict(base_name, archive, 1, 160, 4, False, None, api_name="/train_head")


def test_huge_session_ids_are_refused_at_the_door_and_keep_nothing(app, base_name):
    """Finding 9: /resume stored any posted session id with its key, and Gradio's queue kept it with the event; 20
    joins with 9.5 MiB ids kept +232 MiB. Now an id longer than Gradio's own is refused before the queue sees it."""
    ordinary = Client(app.url, verbose=False)
    event = next(d for d in ordinary.config["dependencies"] if d["api_name"] == "resume")
    assert len(ordinary.predict("", base_name, api_name="/resume")[0]) >= 30  # the base is loaded before measuring
    server = psutil.Process(app.process.pid)

    def join(http: httpx.Client, session: str) -> httpx.Response:
        return http.post(
            "/queue/join", json={"data": ["", base_name], "fn_index": event["id"], "session_hash": session}
        )

    with httpx.Client(base_url=f"{app.url}/gradio_api", timeout=120) as http:
        before = server.memory_info().rss
        huge = [join(http, f"{n:02d}" + "x" * (19 * 2**19)) for n in range(20)]  # 9.5 MiB each, as in the finding
        long = [join(http, f"{n:02d}" + "x" * 2**20) for n in range(20)]  # 1 MiB each: under the body bound
        grown_mb = (server.memory_info().rss - before) / 2**20
    assert {r.status_code for r in huge} == {413} and "request body over 4 MiB" in huge[0].text
    assert {r.status_code for r in long} == {400} and "a session id of 1,048,578 characters" in long[0].text
    assert grown_mb < 50, f"+{grown_mb:.0f} MiB kept after 40 huge session ids"
    assert len(ordinary.predict("", base_name, api_name="/resume")[0]) >= 30  # still serving


def wait_for(job, status: str, timeout: float = 120) -> None:
    """Until one of the job's updates starts with `status`."""
    deadline = time.monotonic() + timeout
    while not any(str(update[0]).startswith(status) for update in job.outputs()):
        assert time.monotonic() < deadline and not job.done(), f"no '{status}' within {timeout} s: {job.outputs()}"
        time.sleep(0.2)


def test_on_a_space_an_anonymous_training_request_is_refused_with_how_to_sign_in(
    tmp_path, base_weights, plates_dir, bus_jpg
):
    """Run as a public Space with `hf_oauth: true` (SPACE_ID and the OAuth variables the Hub sets), the app counts
    training runs per Hugging Face account: sign-in is on by default, and a request without one is refused with what
    to do before its dataset is unpacked. Everything else stays open to anonymous visitors."""
    copy_tiny_plates(plates_dir, tmp_path / "plates")
    archive = handle_file(shutil.make_archive(str(tmp_path / "plates"), "zip", tmp_path, "plates"))
    env = {
        "HEADKIT_BASE": str(base_weights),
        "HEADKIT_BASES": "",
        "HF_HUB_OFFLINE": "1",
        "SYSTEM": "spaces",
        "SPACE_ID": "someone/headkit",
        "OAUTH_CLIENT_ID": "headkit-test",
        "OAUTH_CLIENT_SECRET": "not-a-secret",
        "OAUTH_SCOPES": "openid profile",
        "OPENID_PROVIDER_URL": "http://127.0.0.1:9",  # never reached: nobody signs in here
    }
    with AppServer(tmp_path / "space", env) as space:
        visitor = Client(space.url, verbose=False)
        with pytest.raises(
            AppError, match=r"training here needs a Hugging Face sign-in, so that each person holds one place .*"
            r"sign in with Hugging Face \(the button at the top of the page\)"
        ):  # fmt: skip
            visitor.predict(str(base_weights), archive, 1, 160, 4, False, api_name="/train_head")
        assert not list(space.jobs.glob("*/datasets/*")), "refused before the dataset was unpacked"
        still_serving(visitor, str(base_weights), bus_jpg)


def test_a_zip_that_fits_the_upload_limits_but_not_the_servers_free_disk_is_refused_unwritten(
    tmp_path, base_weights, plates_dir
):
    """The server's disk figure is seconds old, so uploads arriving together could each take the last free space.
    What a zip will write is reserved first, in the ledger every process of the server shares (`max_server_mb`): on a
    server with 8 MiB, a 9 MiB dataset (within every per-upload limit) is refused before a byte of it is written, and
    a small one is still taken."""
    copy_tiny_plates(plates_dir, tmp_path / "small" / "plates")
    big = copy_tiny_plates(plates_dir, tmp_path / "big" / "plates")
    (big / "images" / "train" / "noise.jpg").write_bytes(os.urandom(9 * 2**20))  # incompressible: no ratio refusal
    archives = {
        name: handle_file(shutil.make_archive(str(tmp_path / name), "zip", tmp_path / name, "plates"))
        for name in ("small", "big")
    }
    env = {"HEADKIT_BASE": str(base_weights), "HEADKIT_BASES": "", "HF_HUB_OFFLINE": "1", "HEADKIT_MAX_SERVER_MB": "8"}
    with AppServer(tmp_path / "app", env) as small_server:
        visitor = Client(small_server.url, verbose=False)
        with pytest.raises(
            AppError,
            match=r"big.zip \(9\.\d MiB once extracted\): disk taken and reserved by every session's files on this "
            r"server, in MiB .*: [\d.]+ is over the limit of 8 \(max_server_mb\)",
        ):
            visitor.predict(str(base_weights), archives["big"], api_name="/load_dataset")
        assert not list(small_server.jobs.rglob("noise.jpg")), "nothing of the refused zip was written"
        summary = visitor.predict(str(base_weights), archives["small"], api_name="/load_dataset")[2]
        assert summary["splits"]["train"]["images"] == 8
