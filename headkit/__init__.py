"""headkit: teach a pretrained Ultralytics YOLO detector new classes without touching a single old weight.

The library's verbs and types are here; what a server is built from (session folders, the head catalog, training
runs in line, settings) is in `headkit.server`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .archive import ArchiveError
from .comparing import Comparer, Comparison, Detection, compare
from .concat import ConcatHead
from .datasets import DatasetSummary, load_dataset
from .detect import HeadDoesNotFit
from .discovery import HeadSearch, HubHead, find_heads
from .export import ExportedModel, export_merged
from .headfile import Head, extract_head, load_head
from .hub import push_head
from .kinds import BRANCH_CHOICES, SHAPES, HeadKind, Shape
from .labels import DatasetError
from .limits import LimitExceeded, Limits
from .merging import merge
from .sources import UntrustedSourceError
from .trunk import fingerprint
from .video import VideoResult, annotate_video

if TYPE_CHECKING:
    from .keypoints import ConversionSummary, convert_to_keypoints, pose_to_detect
    from .model import load_model
    from .progress import TrainingCancelled, TrainProgress
    from .train import TrainResult, train_head

# Names whose modules construct Ultralytics models (and so load its engine and trainer) are imported on first use,
# so `import headkit.hub` or `headkit.catalog` stays light.
_ON_FIRST_USE = {
    "ConversionSummary": "keypoints",
    "convert_to_keypoints": "keypoints",
    "pose_to_detect": "keypoints",
    "load_model": "model",
    "TrainingCancelled": "progress",
    "TrainProgress": "progress",
    "TrainResult": "train",
    "train_head": "train",
}


def __getattr__(name: str):
    if name == "server":  # loads the training stack: not at `import headkit`
        return importlib.import_module(".server", __name__)
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module 'headkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_ON_FIRST_USE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ON_FIRST_USE))


__version__ = "0.1.0"

__all__ = [
    "BRANCH_CHOICES",
    "SHAPES",
    "Shape",
    "ArchiveError",
    "Comparer",
    "Comparison",
    "ConcatHead",
    "ConversionSummary",
    "DatasetError",
    "DatasetSummary",
    "Detection",
    "ExportedModel",
    "Head",
    "HeadDoesNotFit",
    "HeadKind",
    "HeadSearch",
    "HubHead",
    "LimitExceeded",
    "Limits",
    "TrainProgress",
    "TrainResult",
    "TrainingCancelled",
    "UntrustedSourceError",
    "VideoResult",
    "annotate_video",
    "compare",
    "convert_to_keypoints",
    "export_merged",
    "extract_head",
    "find_heads",
    "fingerprint",
    "load_dataset",
    "load_head",
    "load_model",
    "merge",
    "pose_to_detect",
    "push_head",
    "train_head",
]
