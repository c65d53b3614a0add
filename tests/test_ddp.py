"""Multi-GPU readiness, on CPU: what Ultralytics' DDP mode (`device="0,1"`) sends to its workers pickles, and a worker
started from the script Ultralytics generates trains the same head, with the same metrics and progress, as train_head
in this process; Stop written to the run folder stops it.

Ultralytics' DDP parent builds the trainer, writes `generate_ddp_file(trainer)` (a script plus the cloudpickled
trainer class, arguments, model and callbacks) and launches it under `torch.distributed.run`. On a CPU the same
script, run by plain `python`, is one worker with RANK -1: no process group, the same code path otherwise.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import torch
from kit import REPO, copy_tiny_plates, trainer_before_launch
from ultralytics import YOLO
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils.dist import ddp_cleanup, generate_ddp_file

from headkit.base import clone_model
from headkit.headfile import extract_head
from headkit.kinds import PLAIN
from headkit.progress import RunReporter, TrainProgress, attach_callbacks
from headkit.runfiles import RunFiles
from headkit.train import train_head
from headkit.trunk import detection_model

TINY = dict(epochs=1, imgsz=64, batch=2, device="cpu", workers=0)
EXACT = dict(seed=0, deterministic=True, plots=False)  # the same numbers in any process


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, plates_dir) -> Path:
    return copy_tiny_plates(plates_dir, tmp_path_factory.mktemp("ddp") / "data", train=4, val=2) / "data.yaml"


def ddp_trainer(base, data_yaml: Path, project: Path, name: str, **options) -> DetectionTrainer:
    """The trainer Ultralytics' `Model.train` builds, for train_head's model and settings, before it launches DDP."""
    return trainer_before_launch(base, data_yaml, project, name, **{**TINY, **EXACT, **options})


def start_worker(trainer: DetectionTrainer) -> tuple[subprocess.Popen, str]:
    """Run the generated DDP script as one CPU worker (no RANK/WORLD_SIZE: no process group)."""
    script = generate_ddp_file(trainer)
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "LOCAL_RANK", "WORLD_SIZE"}}
    worker = subprocess.Popen(
        [sys.executable, script], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return worker, script


def test_attached_callbacks_pickle_and_hold_no_state_of_this_process(base):
    model = clone_model(base)
    attach_callbacks(model)
    payload = cloudpickle.dumps(model.callbacks)
    ours = [
        cb
        for cbs in pickle.loads(payload).values()
        for cb in cbs
        if isinstance(getattr(cb, "__self__", None), RunReporter)
    ]
    assert len(ours) == 4 and len({id(cb.__self__) for cb in ours}) == 1  # one reporter, its counters shared
    assert vars(ours[0].__self__) == {"batch": 0, "reported": 0}


def test_worker_from_the_ddp_script_trains_the_same_head_as_train_head(base, tiny_data, tmp_path):
    events: list[TrainProgress] = []
    here = train_head(base, tiny_data, project=tmp_path, name="here", progress=events.append, **TINY, **EXACT)

    trainer = ddp_trainer(base, tiny_data, tmp_path, "worker")
    worker, script = start_worker(trainer)
    try:
        _, stderr = worker.communicate(timeout=120)
    finally:
        ddp_cleanup(trainer, script)
    assert worker.returncode == 0, stderr[-3000:]

    run = tmp_path / "worker"
    metrics = RunFiles(run).metrics()
    head = extract_head(YOLO(run / "weights" / "best.pt"), base, imgsz=64, metrics=metrics, trained_with=PLAIN)
    assert head.metadata["trunk_check"]["untouched"]  # the worker kept the trunk frozen too
    start = detection_model(base).model[-1].state_dict()  # the box branch starts as the base head's
    assert not torch.equal(here.head.tensors["cv2.0.0.conv.weight"].float(), start["cv2.0.0.conv.weight"].float())
    assert head.tensors.keys() == here.head.tensors.keys()
    assert all(torch.equal(head.tensors[k], here.head.tensors[k]) for k in head.tensors)
    assert metrics == here.metrics and set(metrics) == {"license_plate", "all"}
    records, _ = RunFiles(run).read()
    assert [TrainProgress(**r) for r in records] == events and [e.stage for e in events] == ["batch", "batch", "epoch"]


def test_stop_file_stops_a_worker_after_its_batch(base, tiny_data, tmp_path):
    trainer = ddp_trainer(base, tiny_data, tmp_path, "stopped", epochs=3)
    files = RunFiles(tmp_path / "stopped")
    worker, script = start_worker(trainer)
    try:
        deadline = time.monotonic() + 120
        while not files.read()[0] and worker.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        files.request_stop()  # what train_head's follower writes when stop() turns True, in whichever process
        _, stderr = worker.communicate(timeout=120)
    finally:
        ddp_cleanup(trainer, script)
    records, _ = files.read()
    assert worker.returncode != 0 and "TrainingCancelled: training stopped on request" in stderr
    assert 1 <= sum(r["stage"] == "batch" for r in records) < 6  # 3 epochs of 2 batches were asked for
    assert not any(r["stage"] == "epoch" and r["epoch"] == 3 for r in records)
