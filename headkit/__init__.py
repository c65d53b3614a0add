"""headkit: teach a pretrained Ultralytics YOLO detector new classes without touching a single old weight."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .archive import ArchiveError
from .budget import TrainingEstimate, estimate_training, seconds_per_image, zero_gpu_duration
from .catalog import HeadEntry, add_head, list_heads, load_head_key, refuse_pickle
from .compare import Comparer, Comparison, Detection, compare, label_previews
from .concat import ConcatHead
from .datasets import DatasetSummary, load_dataset
from .export import ExportedModel, export_merged
from .headfile import Head, extract_head, load_head
from .hub import push_head, render_model_card
from .kinds import BRANCH_CHOICES, HeadKind
from .labels import DatasetError
from .limits import LimitExceeded, Limits
from .merge import merge
from .settings import Settings
from .sources import UntrustedSourceError
from .trunk import fingerprint
from .video import VideoResult, annotate_video

if TYPE_CHECKING:
    from .jobs import Job, JobRoot
    from .keypoints import ConversionSummary, convert_to_keypoints, pose_to_detect
    from .model import load_model
    from .progress import TrainingCancelled, TrainProgress
    from .train import TrainResult, train_head

# Names whose modules construct Ultralytics models (and so load its engine and trainer) are imported on first use,
# so `import headkit.hub` or `headkit.catalog` stays light; each module here is named after none of its names.
_ON_FIRST_USE = {
    "Job": "jobs",
    "JobRoot": "jobs",
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
    if name not in _ON_FIRST_USE:
        raise AttributeError(f"module 'headkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_ON_FIRST_USE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_ON_FIRST_USE))


__version__ = "0.1.0"

__all__ = [
    "ArchiveError",
    "DatasetError",
    "BRANCH_CHOICES",
    "Comparer",
    "Comparison",
    "ConcatHead",
    "ConversionSummary",
    "DatasetSummary",
    "Detection",
    "ExportedModel",
    "Head",
    "HeadEntry",
    "HeadKind",
    "Job",
    "JobRoot",
    "LimitExceeded",
    "Limits",
    "Settings",
    "TrainProgress",
    "TrainResult",
    "TrainingCancelled",
    "TrainingEstimate",
    "UntrustedSourceError",
    "VideoResult",
    "add_head",
    "annotate_video",
    "compare",
    "convert_to_keypoints",
    "estimate_training",
    "export_merged",
    "extract_head",
    "fingerprint",
    "label_previews",
    "list_heads",
    "load_dataset",
    "load_head",
    "load_head_key",
    "load_model",
    "merge",
    "pose_to_detect",
    "push_head",
    "refuse_pickle",
    "render_model_card",
    "seconds_per_image",
    "train_head",
    "zero_gpu_duration",
]
