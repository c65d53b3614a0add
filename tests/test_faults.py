"""Faults: training stopped or killed registers no head, a crash mid-save keeps the last whole head, the next training
works; in the library and in a killed process (Stop through the app: tests/test_app.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from kit import REPO

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


# --- Stop, in the library (the run layer: tests/test_runs.py; the app: tests/test_app.py) --------------------------


EPOCHS = 30  # the stopped run's length: far more than a late stop can let through


def test_stop_registers_no_head_and_the_next_training_works(base, tiny_plates: Path, tmp_path: Path):
    """Stop once the first epoch is reported (Ultralytics has saved last.pt by then): TrainingCancelled, no head, no
    checkpoint left to pick up, the base untouched; the next training in the same run folder works.

    Stop is asynchronous, as a visitor's is: the run's follower thread sees the epoch record, then writes STOP, and the
    trainer stops after its current batch, so a tiny epoch or two more may finish on a loaded machine. The run is long
    (`EPOCHS`) so that "stopped" cannot be mistaken for "finished"."""
    from headkit.train import train_head

    fingerprint, epochs = headkit.fingerprint(base), []
    with pytest.raises(headkit.TrainingCancelled, match="no head was saved"):
        train_head(base, tiny_plates / "data.yaml", project=tmp_path / "runs", epochs=EPOCHS,
                   progress=lambda e: e.stage == "epoch" and epochs.append(e.epoch), stop=lambda: bool(epochs),
                   **TINY)  # fmt: skip
    assert epochs[0] == 1 and len(epochs) < EPOCHS, f"stopped after epochs {epochs} of {EPOCHS}"
    assert heads_in(tmp_path) == []
    assert not list(tmp_path.rglob("weights/*.pt")), "no checkpoint of the stopped run is left to pick up"
    assert headkit.fingerprint(base) == fingerprint, "the base is untouched by the stopped run"

    result = train_head(base, tiny_plates / "data.yaml", project=tmp_path / "runs", epochs=1, **TINY)
    saved = headkit.server.Job(tmp_path / "job").save_head(result.head, "plates")
    assert heads_in(tmp_path) == [saved]
    _assert_is_a_working_head(saved, base)


# --- a crash while saving --------------------------------------------------------------------------------------------


def test_failed_save_keeps_the_previous_head_and_leaves_no_partial_file(
    plate_head, base, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    from headkit import artefact

    target = plate_head.save(tmp_path / "plates.safetensors")
    before = target.read_bytes()

    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)  # half a file, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artefact, "save_file", disk_full)
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
        deadline = time.monotonic() + 60
        while not [p for p in folder.iterdir() if p != target] and time.monotonic() < deadline:
            time.sleep(0.005)  # until the next save has opened its temporary file: the kill lands inside it
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
from headkit.server import Job

base = headkit.load_model(sys.argv[1])
job = Job(sys.argv[3])
result = headkit.train_head(
    base, sys.argv[2], project=job.file("runs"), epochs=int(sys.argv[4]), imgsz=160, batch=4, device="cpu", workers=0,
    plots=False, progress=lambda e: print("\\nPROGRESS", e.stage, e.epoch, round(e.fraction, 3), flush=True),
)
print("\\nSAVED", job.save_head(result.head, "plates"), flush=True)
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
    assert headkit.server.Job(job_dir).heads() == {} and heads_in(job_dir) == []

    again = _train_in_a_process(base_weights, data, job_dir, 1, tmp_path / "again.log")
    out, _ = again.communicate(timeout=900)
    assert again.returncode == 0, (tmp_path / "again.log").read_text()[-3000:]
    saved = headkit.server.Job(job_dir).heads()
    assert list(saved) == ["plates"] and f"SAVED {saved['plates']}" in out
    assert heads_in(job_dir) == [saved["plates"]]
    _assert_is_a_working_head(saved["plates"], base)
