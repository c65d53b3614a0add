"""The usual way, for comparison: fine-tune the whole base on the new classes only, and keep it as safetensors.

This is what headkit avoids: every layer trains on the new data, the base head is replaced by one for the new
classes, and the base's own classes are forgotten. The app trains it on request after a head so that Compare can show
the difference on the user's own image. The weights are stored as safetensors (architecture rows and names in the
metadata) and loaded into a copy of the base it was tuned from, its Detect replaced by one for the file's classes:
no pickle is ever written or read, and nothing is built from what the file records (its rows are only compared).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ultralytics import YOLO

from .artefact import FINETUNE, read, write
from .base import clone_model, ensure_detect_base
from .branch import check_rows_match, check_shapes
from .headfile import check_names
from .limits import Limits
from .progress import TrainProgress, train_reporting
from .runfiles import RunFiles
from .schema import indexed_names
from .settings import current_limits
from .trunk import base_facts, detection_model

FORMAT = FINETUNE.name


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
    started = time.perf_counter()
    settings = dict(
        data=str(data), epochs=epochs, imgsz=imgsz, batch=batch, device=device, project=str(project), name=name,
        exist_ok=True, plots=False, verbose=False, **overrides,
    )  # fmt: skip
    run_dir = train_reporting(model, settings, progress, stop)
    map50 = RunFiles(run_dir).metrics()["all"]["mAP50"]  # from the run folder: a DDP parent's trainer never validates
    return FineTuneResult(model, map50, time.perf_counter() - started)


def save_finetuned(model, path: str | Path) -> Path:
    """Write the model's weights (fp16) with its architecture rows and class names as metadata."""
    inner = detection_model(model)
    tensors = {k: (v.half() if v.is_floating_point() else v) for k, v in inner.state_dict().items()}
    metadata = {
        "yaml": json.loads(json.dumps(inner.yaml, default=str)),
        "names": {str(k): v for k, v in inner.names.items()},
    }
    return write(path, tensors, FINETUNE, metadata)


def load_finetuned(path: str | Path, base, *, limits: Limits | None = None) -> YOLO:
    """Load a model saved by `save_finetuned` into a copy of `base` (the model it was tuned from), strictly.

    The file's rows are compared with the base's as data, its class names bounded, and its tensor shapes compared
    with the rebuilt model's before any tensor is read.

    Raises:
        ValueError: not a file written by `save_finetuned`, rows other than the base's, or tensors that do not fit.
        LimitExceeded: too many classes or over-long names (`limits`, default the limits in force).
    """
    path, limits = Path(path), limits or current_limits()
    where = path.name
    # a fine-tune is the whole base (fp16): allow the base's fp32 size on top of a head's
    base_mb = sum(v.numel() * 4 for v in base_facts(base).inner.state_dict().values()) / 2**20
    header = read(path, (FINETUNE,), replace(limits, max_head_mb=limits.max_head_mb + base_mb))
    names, recorded = header.metadata["names"], header.metadata.get("yaml")
    if not indexed_names(names):
        raise ValueError(f"{where}: metadata 'names' should map class ids 0..n-1 to names; train the fine-tune again")
    check_names(names, where, limits)
    if recorded is not None:
        _check_recorded(recorded, base, where)
    model = _base_with_classes(base, {int(k): str(v) for k, v in names.items()})
    inner = detection_model(model)
    expected = {key: tuple(value.shape) for key, value in inner.state_dict().items()}
    check_shapes(expected, header.shapes, where, f"this base fine-tuned on {len(names)} classes")
    inner.load_state_dict(header.tensors(), strict=True)
    inner.eval()
    return model


def _check_recorded(recorded: Any, base, where: str) -> None:
    """Refuse a recorded architecture other than the base's: rows row by row, then other keys by value (not nc).

    Raises:
        ValueError: not a mapping, a key whose value differs from the base's YAML, or rows other than the base's.
    """
    if not isinstance(recorded, dict):
        raise ValueError(f"{where}: its recorded architecture is not a mapping; train the fine-tune again")
    check_rows_match({key: recorded.get(key) for key in ("backbone", "head")}, base, where)
    ours = base_facts(base).inner.yaml
    for key, value in recorded.items():
        if key not in ("nc", "backbone", "head") and json.dumps(value, default=str) != json.dumps(
            ours.get(key), default=str
        ):
            raise ValueError(
                f"{where}: its recorded '{str(key)[:40]}' differs from this base's; it was tuned from another base — "
                "compare it with the base it was tuned from"
            )


def _base_with_classes(base, names: dict[int, str]) -> YOLO:
    """A copy of the base with a fresh Detect for `names` (same layout), as fine-tuning the base on them leaves it."""
    ensure_detect_base(base)
    layout = base_facts(base).layout  # Ultralytics' trainer keeps the base's class-branch width: so does this
    model = clone_model(base)
    inner = detection_model(model)  # the copy's own model, whose Detect is replaced below
    old = inner.model[-1]
    new = replace(layout, nc=len(names)).build()
    new.stride = old.stride.clone()
    new.f, new.i, new.type, new.np = old.f, old.i, old.type, sum(p.numel() for p in new.parameters())
    new.inplace = getattr(old, "inplace", True)
    parameter = next(old.parameters())
    inner.model[-1] = new.to(device=parameter.device, dtype=parameter.dtype).requires_grad_(False).eval()
    inner.names, inner.nc = names, len(names)
    inner.yaml = {**inner.yaml, "nc": len(names)}
    return model
