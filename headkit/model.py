"""Load Ultralytics models from any source, and check that a model can carry extra Detect heads."""

from __future__ import annotations

import contextlib
import copy
import logging
import zipfile
from pathlib import Path

from ultralytics import YOLO
from ultralytics.nn import tasks
from ultralytics.nn.modules.head import Detect

from .basefile import load_base
from .sources import resolve
from .trunk import detection_model

LOGGER = logging.getLogger(__name__)
ARCHITECTURE_SUFFIXES = (".yaml", ".yml")


def load_model(source: str | Path, *, revision: str | None = None) -> YOLO:
    """Load a YOLO model from a local path, HEADKIT_WEIGHTS_DIR, `hf://owner/repo/file.pt[@rev]` or a bare name.

    A `.safetensors` file is an embedded base (`headkit.basefile`): tensors only, rebuilt from Ultralytics' own
    architecture files, no pickle. A head file is refused here with a pointer to `headkit.load_head`.
    A bare `*.yaml` name (e.g. `yolo11n.yaml`) builds that architecture with random weights, which is useful for
    structure checks offline. The source is remembered as `model.headkit_source` for head metadata.
    """
    text = str(source).strip()
    if text.lower().endswith(ARCHITECTURE_SUFFIXES) and not text.startswith("hf://"):
        with _no_eval_parsing():
            model = YOLO(text)
    else:
        path = resolve(text, revision=revision)
        if path.suffix.lower() == ".safetensors":
            model = load_base(path)
            model.headkit_source = text
            return model
        if path.suffix.lower() != ".pt":
            raise ValueError(
                f"{path.name}: expected an Ultralytics model checkpoint (.pt) or a headkit base (.safetensors), got a "
                f"'{path.suffix}' file"
            )
        if not zipfile.is_zipfile(path):
            raise ValueError(
                f"{path}: not a PyTorch checkpoint (a .pt file is a zip archive written by torch.save); the file is "
                "damaged or is something else renamed to .pt — download or export it again"
            )
        try:
            model = YOLO(str(path))
        except (TypeError, RuntimeError, ModuleNotFoundError, AttributeError, KeyError) as e:
            raise ValueError(
                f"{path}: could not be loaded as an Ultralytics model ({type(e).__name__}: {e}); expected a .pt "
                "saved by Ultralytics (model.save or a training run's best.pt)"
            ) from e
    model.headkit_source = text
    from .merge import guard_merged  # merge imports this module

    return guard_merged(model)  # a merged .pt refuses class-agnostic NMS as the merged model it was saved from did


@contextlib.contextmanager
def _no_eval_parsing():
    """Build from a YAML with Ultralytics' restricted parser on this thread: no eval() of `activation`, layers only.

    The YAML is the operator's (the app offers only the bases it is configured with) or Ultralytics' own; this is a
    second wall. Ultralytics 8.4.190 exposes the switch only as ULTRALYTICS_SAFE_LOAD (read once, process-wide) and the
    per-thread flag its own restricted loads set, which is used here and restored after.
    """
    state = getattr(tasks, "_SafeLoad", None)
    if state is None or not state.SUPPORTED:  # an Ultralytics without it: the contract test says so
        yield
        return
    before = getattr(state._local, "active", False)
    state._local.active = True
    try:
        yield
    finally:
        state._local.active = before


def model_source(model) -> str | None:
    """Where a model came from, as the user named it, if known."""
    return getattr(model, "headkit_source", None) or getattr(model, "ckpt_path", None)


def ensure_detect_base(model, *, role: str = "base") -> None:
    """Refuse anything but a plain YOLO Detect model (YOLOv8, YOLO11, YOLO26 and alike), saying why.

    Raises:
        ValueError: the model is not a detection model, is already merged, is YOLOv10, or is end-to-end with its
            one-to-many branch fused away.
    """
    inner = detection_model(model)
    head = inner.model[-1]
    task = getattr(model, "task", None) or getattr(inner, "task", "detect")
    if type(head).__name__ == "ConcatHead":
        raise ValueError(
            f"the {role} is already a merged model; merge heads onto the original base model instead of a merged one"
        )
    if type(head).__name__ == "v10Detect":
        raise ValueError(
            f"the {role} is a YOLOv10 model (v10Detect head); headkit merges YOLOv8, YOLO11 and YOLO26 detect models "
            "— use one of those, e.g. yolo26n.pt"
        )
    if task != "detect" or type(head) is not Detect:
        raise ValueError(
            f"the {role} is a '{task}' model with a {type(head).__name__} head; headkit adds Detect heads to plain "
            "object-detection models only — use a detect checkpoint such as yolov8n.pt or yolo11n.pt"
        )
    if head.cv2 is None:
        raise ValueError(
            f"the {role} is a fused end-to-end model (its one-to-many branch was removed); load the original "
            "checkpoint (.pt) instead of a fused or exported copy"
        )


def clone_model(model: YOLO) -> YOLO:
    """Deep copy of a YOLO wrapper (weights bit-exact) without its predictor, trainer or training checkpoint.

    The original is never touched, not even for a moment: other threads may be predicting with it. The copy's
    predictor, trainer and checkpoint are swapped for empty ones through deepcopy's memo.
    """
    memo: dict[int, object] = {}
    for attribute, empty in (("predictor", None), ("trainer", None), ("ckpt", {})):
        value = getattr(model, attribute, None)
        if value is not None:
            memo[id(value)] = empty
    return copy.deepcopy(model, memo)
