"""train_head(): a new Detect head on the base's frozen trunk, with progress, cancel and proof the trunk is untouched."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .headfile import Head, extract_head
from .kinds import PLAIN, resolve_branch
from .merge import merge
from .model import clone_model, ensure_detect_base
from .posehead import detect_head_from_pose, train_pose_head
from .progress import TrainingCancelled, TrainProgress, attach_callbacks, discard_checkpoints
from .trunk import detection_model, head_index

LOGGER = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a training run produced: the head, val metrics per class, Ultralytics' run folder and the wall time."""

    head: Head
    metrics: dict[str, dict[str, float]]
    run_dir: Path
    seconds: float

    def plots(self) -> list[Path]:
        """Ultralytics' result plots (results, PR curve, confusion matrix, ...), if it made them."""
        return sorted(p for p in self.run_dir.glob("*.png"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": self.head.names,
            "metrics": self.metrics,
            "run_dir": str(self.run_dir),
            "seconds": round(self.seconds, 2),
            "trunk_check": self.head.metadata.get("trunk_check"),
            "kind": self.head.kind.describe(),
        }


def default_device() -> str:
    """ "0" (first GPU) when CUDA is available, else "cpu"."""
    return "0" if torch.cuda.is_available() else "cpu"


def _data_yaml(data: str | Path, base) -> Path:
    path = Path(data)
    if path.suffix in {".yaml", ".yml"} and path.is_file():
        return path
    from .datasets import load_dataset

    base_names = detection_model(base).names.values()
    return load_dataset(path, base_names=base_names).yaml_path


def _per_class_metrics(trainer) -> dict[str, dict[str, float]]:
    """Per-class box P, R, mAP50, mAP50-95 on the val split from the trainer's final validation, plus "all"."""
    metrics = trainer.validator.metrics.box  # a pose validator adds keypoint metrics beside the box ones
    names = trainer.validator.names
    table = {}
    for i, class_index in enumerate(metrics.ap_class_index):
        p, r, map50, map5095 = metrics.class_result(i)
        table[names[int(class_index)]] = {"P": p, "R": r, "mAP50": map50, "mAP50-95": map5095}
    p, r, map50, map5095 = metrics.mean_results()
    table["all"] = {"P": p, "R": r, "mAP50": map50, "mAP50-95": map5095}
    return {name: {k: round(float(v), 4) for k, v in row.items()} for name, row in table.items()}


def train_head(
    base,
    data: str | Path,
    *,
    epochs: int = 30,
    imgsz: int = 640,
    batch: int = 16,
    device: str = "auto",
    progress: Callable[[TrainProgress], None] | None = None,
    stop: Callable[[], bool] | None = None,
    project: str | Path | None = None,
    name: str = "head",
    keypoint_trick: bool = False,
    init_head: Head | None = None,
    branch: str | int = "head",
    **overrides: Any,
) -> TrainResult:
    """Train a new head for the dataset's classes on the base's frozen layers with Ultralytics' own trainer.

    `branch="head"` trains a Detect head alone on the frozen trunk; `branch="neck"` also trains the head's own copy
    of every layer after the backbone (more accurate, costs the neck again at inference); an int is the first layer
    the head owns. Every layer before that is frozen (`freeze=`, read from the model) and Ultralytics 8.4 keeps their
    BatchNorm layers in eval mode. The head is taken from the trained model after checking its shared layers still
    equal the base's bit for bit; merging later uses the base's own layers.

    Args:
        data: a data.yaml, a dataset folder or a .zip (validated by `load_dataset`).
        device: "auto" (GPU if present), "cpu", or a CUDA index such as "0".
        progress: called per batch and per epoch with a TrainProgress.
        stop: polled after every batch; returning True cancels (TrainingCancelled) and nothing is saved.
        keypoint_trick: train a one-keypoint Pose head on box centres (box/dfl gains 0.01) and keep its Detect part
            (`headkit.posehead`); the head is marked `trained_with: keypoint-trick`.
        init_head: start from this head's weights instead of the base head's (e.g. to go on training a head at a
            larger image size); it must fit the base, and its branch decides the branch.
        branch: "head", "neck" or a layer index (see `headkit.kinds.resolve_branch`).
        **overrides: passed to Ultralytics' trainer (lr0, patience, mosaic, ...).
    """
    ensure_detect_base(base)
    start = init_head.kind.branch_start if init_head is not None else resolve_branch(base, branch)
    yaml_path = _data_yaml(data, base)
    device = default_device() if device == "auto" else device
    settings = {
        "data": str(yaml_path),
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "device": device,
        "freeze": head_index(base) if start is None else start,
        "project": str(Path(project or "runs/headkit").resolve()),
        "name": name,
        "exist_ok": True,
        "plots": True,
        "verbose": False,
        "workers": min(4, os.cpu_count() or 1) if device != "cpu" else min(2, os.cpu_count() or 1),
        **overrides,
    }
    started = time.perf_counter()
    if keypoint_trick:
        model, trainer = train_pose_head(base, yaml_path, settings=settings, progress=progress, stop=stop)
    else:
        model = merge(base, init_head, keep_base_head=False) if init_head else clone_model(base)
        model.ckpt = {"model": detection_model(model)}  # makes Ultralytics start from these weights, not random ones
        attach_callbacks(model, progress, stop)
        try:
            model.train(**settings)
        except TrainingCancelled:
            discard_checkpoints(model.trainer)
            raise
        trainer = model.trainer
    seconds = time.perf_counter() - started
    metrics = _per_class_metrics(trainer)
    if keypoint_trick:
        head = detect_head_from_pose(model, base, imgsz=imgsz, metrics=metrics, branch_start=start)
    else:
        head = extract_head(model, base, imgsz=imgsz, metrics=metrics, trained_with=PLAIN, branch_start=start)
    LOGGER.info("trained head %s in %.1fs: %s", head.names, seconds, metrics.get("all"))
    return TrainResult(head=head, metrics=metrics, run_dir=Path(trainer.save_dir), seconds=seconds)
