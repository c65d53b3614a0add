"""What headkit asks of a base model in memory: a plain Detect model, where it came from, and a private copy of it.

Below loading (`headkit.model`) and the head file (`headkit.headfile`), which both ask these questions: they need no
Ultralytics engine, so importing them loads none.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from ultralytics.nn.modules.head import Detect

from .detect import has_one_to_many
from .trunk import FACTS_ATTRIBUTE, detection_model

if TYPE_CHECKING:
    from ultralytics import YOLO


def model_source(model) -> str | None:
    """Where a model came from, as the user named it, if known."""
    return getattr(model, "headkit_source", None) or getattr(model, "ckpt_path", None)


def ensure_detect_base(model, *, role: str = "base") -> None:
    """Refuse anything but a plain YOLO Detect model (YOLOv8, YOLO11, YOLO26 and alike), saying why.

    Raises:
        ValueError: the model is not a detection model, is already merged, is YOLOv10, or is end-to-end with its
            one-to-many branch fused away.
    """
    inner = detection_model(model)  # not `base_facts`: those are a detection model's, which this checks it is
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
    if not has_one_to_many(head):
        raise ValueError(
            f"the {role} is a fused end-to-end model (its one-to-many branch was removed); load the original "
            "checkpoint (.pt) instead of a fused or exported copy"
        )


def clone_model(model: YOLO) -> YOLO:
    """Deep copy of a YOLO wrapper (weights bit-exact) without its predictor, trainer, training checkpoint or facts.

    The original is never touched, not even for a moment: other threads may be predicting with it. The copy's
    predictor, trainer and checkpoint are swapped for empty ones through deepcopy's memo, and its `BaseFacts` are
    left behind: the copy is another object (often one about to be trained), which works out its own.
    """
    memo: dict[int, object] = {}
    for attribute, empty in (("predictor", None), ("trainer", None), ("ckpt", {}), (FACTS_ATTRIBUTE, None)):
        value = getattr(model, attribute, None)
        if value is not None:
            memo[id(value)] = empty
    return copy.deepcopy(model, memo)
