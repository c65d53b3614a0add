"""The usual way, for comparison: fine-tune the whole base on the new classes only, and keep it as safetensors.

This is what headkit avoids: every layer trains on the new data, the base head is replaced by one for the new
classes, and the base's own classes are forgotten. The app trains it on request after a head so that Compare can show
the difference on the user's own image. The weights are stored as safetensors (architecture rows and names in the
metadata) and rebuilt with Ultralytics' own model builder: no pickle is ever written or read.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from safetensors import safe_open
from safetensors.torch import save_file
from ultralytics import YOLO

from .model import clone_model, ensure_detect_base
from .progress import TrainingCancelled, TrainProgress, attach_callbacks, discard_checkpoints
from .trunk import detection_model

FORMAT = "headkit.finetune/1"
# Measured on the plates (benchmarks/head_vs_finetune.py, 10 epochs at 320 px, CPU): the full fine-tune took 704 s
# where the head alone took 335 s; the app's time estimate for the fine-tune is the head's times this factor.
COST_VS_HEAD = 2.1


@dataclass
class FineTuneResult:
    """The fine-tuned model (all layers trained, the new classes only), its val mAP50 and its wall time."""

    model: YOLO
    map50: float
    seconds: float


def finetune(
    base,
    data: str | Path,
    *,
    epochs: int,
    imgsz: int,
    batch: int,
    device: str,
    project: str | Path,
    name: str = "finetune",
    progress: Callable[[TrainProgress], None] | None = None,
    stop: Callable[[], bool] | None = None,
    **overrides: Any,
) -> FineTuneResult:
    """Train a copy of the base, every layer, on `data` (a data.yaml), as Ultralytics users usually do.

    Raises:
        TrainingCancelled: `stop` returned True; nothing is kept.
    """
    ensure_detect_base(base)
    model = clone_model(base)
    model.ckpt = {"model": detection_model(model)}  # start from the base's weights, not random ones
    attach_callbacks(model, progress, stop)
    started = time.perf_counter()
    try:
        model.train(
            data=str(data), epochs=epochs, imgsz=imgsz, batch=batch, device=device, project=str(project), name=name,
            exist_ok=True, plots=False, verbose=False, **overrides,
        )  # fmt: skip
    except TrainingCancelled:
        discard_checkpoints(model.trainer)
        raise
    map50 = float(model.trainer.validator.metrics.box.map50)
    return FineTuneResult(model, round(map50, 4), time.perf_counter() - started)


def save_finetuned(model, path: str | Path) -> Path:
    """Write the model's weights (fp16) with its architecture rows and class names as metadata."""
    inner = detection_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in inner.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "yaml": json.dumps(inner.yaml),
        "names": json.dumps({str(k): v for k, v in inner.names.items()}),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_finetuned(path: str | Path) -> YOLO:
    """Rebuild a model saved by `save_finetuned` with Ultralytics' builder and load its weights (strictly).

    Raises:
        ValueError: not a file written by `save_finetuned`, or its tensors do not fit its architecture.
    """
    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path.name}: not a fine-tuned model saved by headkit (format {metadata.get('format')!r})")
    names = {int(k): v for k, v in json.loads(metadata["names"]).items()}
    layout = {**json.loads(metadata["yaml"]), "nc": len(names)}
    with tempfile.TemporaryDirectory() as folder:  # Ultralytics builds a model from a YAML file
        architecture = Path(folder) / "finetuned.yaml"
        architecture.write_text(yaml.safe_dump(layout, sort_keys=False))
        model = YOLO(str(architecture), task="detect")
    inner = detection_model(model)
    try:
        inner.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path.name}: its tensors do not fit its architecture ({e})") from e
    inner.names = names
    inner.eval()
    return model
