"""The forgetting check: how many of the base's own detections another model still makes, unchanged.

One rule for the benchmark and the app: a base detection is kept when the other model has a detection of the
same class name with IoU >= 0.9 and a confidence within 1e-4. A merged headkit model keeps every one (its base rows
are bit-exact); a model fine-tuned the usual way on new classes keeps none, having forgotten the base's classes.
"""

from __future__ import annotations

import numpy as np
import torch
from ultralytics.utils.metrics import box_iou

KEEP_IOU = 0.9
KEEP_CONF = 1e-4


def kept_detections(base_rows: np.ndarray, base_names: dict, rows: np.ndarray, names: dict) -> int:
    """How many base detections `rows` reproduce (same class name, IoU >= KEEP_IOU, |Δconf| <= KEEP_CONF).

    Args:
        base_rows, rows: (N, 6) [x1, y1, x2, y2, conf, cls] in pixels, from the base and from the other model.
        base_names, names: their models' class names by index.
    """
    kept = 0
    other = [names[int(c)] for c in rows[:, 5]] if len(rows) else []
    for row in base_rows:
        same = [i for i, name in enumerate(other) if name == base_names[int(row[5])]]
        if not same:
            continue
        iou = box_iou(torch.as_tensor(row[None, :4]), torch.as_tensor(rows[same, :4]))[0]
        best = int(iou.argmax())
        kept += int(float(iou[best]) >= KEEP_IOU and abs(float(rows[same[best], 4]) - float(row[4])) <= KEEP_CONF)
    return kept


def detection_rows(result) -> np.ndarray:
    """An Ultralytics result's boxes as (N, 6) float rows [x1, y1, x2, y2, conf, cls]."""
    boxes = result.boxes
    return np.concatenate(
        [boxes.xyxy.cpu().numpy(), boxes.conf.cpu().numpy()[:, None], boxes.cls.cpu().numpy()[:, None]], 1
    )
