"""Faults: training stopped or killed registers no head, a crash mid-save keeps the last whole head, the next training
works; in the library, in a killed process and through the app's Stop button."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from app_server import AppServer
from conftest import REPO, copy_tiny_plates
from gradio_client import Client, handle_file

import headkit

TINY = {"imgsz": 160, "batch": 4, "device": "cpu", "workers": 0, "plots": False}


def heads_in(folder: Path) -> list[Path]:
    """Every file under `folder` that load_head or a session listing would take for a head (temporaries are hidden)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in {".safetensors", ".pth"})


def _assert_is_a_working_head(path: Path, base) -> None:
    head = headkit.load_head(path)
    assert head.names == {0: "license_plate"}
    assert head.base_fingerprint == headkit.fingerprint(base) and head.metadata["trunk_check"]["untouched"]
    assert headkit.merge(base, head).names == {0: "Normal", 1: "Fall", 2: "license_plate"}


# --- Stop, in a session's job as the app runs it ---------------------------------------------------------------------


def test_stop_registers_no_head_and_the_next_training_works(base, tiny_plates: Path, tmp_path: Path):
    job = headkit.JobRoot(tmp_path / "jobs", max_age_s=3600).job("session")
    fingerprint = headkit.fingerprint(base)
    events = job.train(base, tiny_plates / "data.yaml", epochs=3, **TINY)
    first_epoch = next(e for e in events if e.stage == "epoch")  # Ultralytics has saved last.pt by now
    assert first_epoch.epoch == 1 and list(job.path.rglob("weights/last.pt")), "a checkpoint exists before the stop"
    job.request_stop()  # the Stop button
    with pytest.raises(headkit.TrainingCancelled, match="no head was saved"):
        list(events)
    assert job.heads() == {} and heads_in(job.path) == []
    assert not list(job.path.rglob("weights/*.pt")), "no checkpoint of the stopped run is left to pick up"
    assert headkit.fingerprint(base) == fingerprint, "the base is untouched by the stopped run"

    *progress, result = job.train(base, tiny_plates / "data.yaml", epochs=1, **TINY)  # same job, same run folder
    assert progress and isinstance(result, headkit.TrainResult)
    saved = job.save_head(result.head, "plates")
    assert job.heads() == {"plates": saved} and heads_in(job.path) == [saved]
    _assert_is_a_working_head(saved, base)


# --- a crash while saving --------------------------------------------------------------------------------------------


def test_failed_save_keeps_the_previous_head_and_leaves_no_partial_file(
    plate_head, base, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from headkit import headfile

    target = plate_head.save(tmp_path / "plates.safetensors")
    before = target.read_bytes()

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)  # half a file, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(headfile, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        plate_head.save(target)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plates.safetensors"]
    _assert_is_a_working_head(target, base)


_SAVE_LOOP = """
import sys, torch, headkit
head = headkit.load_head(sys.argv[1])
head.tensors["padding"] = torch.ones(64 << 20)  # 256 MB: each save takes long enough to be killed in the middle
for i in range(1000):
    head.save(sys.argv[2])
    print("saved", i, flush=True)
"""


def test_process_killed_mid_save_leaves_the_last_whole_head(plate_head, tmp_path: Path):
    source = plate_head.save(tmp_path / "source.safetensors")
    folder = tmp_path / "heads"
    target = folder / "plates.safetensors"
    child = subprocess.Popen(
        [sys.executable, "-c", _SAVE_LOOP, str(source), str(target)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().startswith("saved 0"), "the first save completed"
        time.sleep(0.15)  # well inside the next save
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
    leftovers = [p for p in folder.iterdir() if p != target]
    assert leftovers, "the kill should land inside a save, leaving its temporary file"
    assert all(p.name.startswith(".") and p.suffix != ".safetensors" for p in leftovers), leftovers  # hidden, no head
    assert heads_in(folder) == [target]
    # the padding makes it no valid head (load_head refuses extra tensors), so read the file itself: it is whole
    from safetensors.torch import load_file

    tensors = load_file(str(target))
    assert tensors["padding"].shape == (64 << 20,) and bool((tensors["padding"] == 1).all())
    assert torch.equal(tensors["cv3.0.2.bias"], plate_head.tensors["cv3.0.2.bias"])


# --- the training process killed -------------------------------------------------------------------------------------

_TRAIN = """
import sys
import headkit

base = headkit.load_model(sys.argv[1])
job = headkit.Job(sys.argv[3])
for event in job.train(base, sys.argv[2], epochs=int(sys.argv[4]), imgsz=160, batch=4, device="cpu", workers=0,
                       plots=False):
    if isinstance(event, headkit.TrainProgress):
        print("\\nPROGRESS", event.stage, event.epoch, round(event.fraction, 3), flush=True)
print("\\nSAVED", job.save_head(event.head, "plates"), flush=True)
"""


def _train_in_a_process(base_weights: Path, data: Path, job_dir: Path, epochs: int, log: Path) -> subprocess.Popen:
    args = [sys.executable, "-c", _TRAIN, str(base_weights), str(data), str(job_dir), str(epochs)]
    with log.open("w") as err:
        return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True)


def test_killed_training_registers_no_head_and_the_next_run_does(
    base, base_weights: Path, tiny_plates: Path, tmp_path: Path
):
    job_dir, data = tmp_path / "job", tiny_plates / "data.yaml"
    child = _train_in_a_process(base_weights, data, job_dir, 3, tmp_path / "killed.log")
    seen = []
    try:
        deadline = time.monotonic() + 300
        for line in child.stdout:  # Ultralytics' progress bars end in \r, which text mode reads as line ends
            if line.startswith("PROGRESS"):
                seen.append(line.strip())
            if seen or time.monotonic() > deadline:
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert seen and seen[0].startswith("PROGRESS batch 1 "), (seen, (tmp_path / "killed.log").read_text()[-2000:])
    assert headkit.Job(job_dir).heads() == {} and heads_in(job_dir) == []

    again = _train_in_a_process(base_weights, data, job_dir, 1, tmp_path / "again.log")
    out, _ = again.communicate(timeout=900)
    assert again.returncode == 0, (tmp_path / "again.log").read_text()[-3000:]
    saved = headkit.Job(job_dir).heads()
    assert list(saved) == ["plates"] and f"SAVED {saved['plates']}" in out
    assert heads_in(job_dir) == [saved["plates"]]
    _assert_is_a_working_head(saved["plates"], base)


# --- the Stop button, through the app -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app(offline_app: AppServer) -> AppServer:
    return offline_app


def _session_heads(client: Client, base: str) -> list[str]:
    return [e["key"] for e in client.predict(base, api_name="/list_heads")[0] if e["origin"] == "session"]


def test_stop_button_registers_no_head_and_the_next_training_works(
    app: AppServer, plates_dir: Path, tmp_path: Path, base_weights: Path
):
    data = copy_tiny_plates(plates_dir, tmp_path / "plates")
    archive = handle_file(shutil.make_archive(str(tmp_path / "plates"), "zip", data))
    client, base = Client(app.url, verbose=False), str(base_weights)
    assert _session_heads(client, base) == []
    before = set(heads_in(app.jobs))  # the shared server holds other tests' heads

    training = client.submit(base, archive, 3, 160, 4, False, api_name="/train_head")
    deadline = time.monotonic() + 300
    while not (training.status().progress_data or training.done()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert training.status().progress_data, "training reported progress"
    assert "Stopping" in client.predict(api_name="/stop_training")
    status = training.result(timeout=300)[0]
    assert "stopped" in status.lower() and "no head was saved" in status
    assert _session_heads(client, base) == [] and set(heads_in(app.jobs)) == before

    status, _, head_file, *_ = client.predict(base, archive, 1, 160, 4, False, api_name="/train_head")
    assert status.startswith("✅") and head_file.endswith(".safetensors")
    assert _session_heads(client, base) == ["session/plates"]
    assert len(set(heads_in(app.jobs)) - before) == 1
    assert headkit.load_head(head_file).names == {0: "license_plate"}
