"""headkit: teach a pretrained Ultralytics YOLO detector new classes without touching a single old weight."""

from __future__ import annotations

from .archive import ArchiveError
from .budget import TrainingEstimate, estimate_training, seconds_per_image, zero_gpu_duration
from .catalog import HeadEntry, add_head, list_heads, load_head_key, refuse_pickle
from .compare import Comparer, Comparison, Detection, compare, label_previews
from .datasets import DatasetSummary, load_dataset
from .export import ExportedModel, export_merged
from .headfile import Head, extract_head, load_head
from .hub import push_head, render_model_card
from .jobs import Job, JobRoot
from .keypoints import ConversionSummary, convert_to_keypoints, pose_to_detect
from .kinds import BRANCH_CHOICES, HeadKind
from .labels import DatasetError
from .limits import LimitExceeded, Limits
from .merge import ConcatHead, merge
from .model import load_model
from .settings import Settings
from .sources import UntrustedSourceError
from .train import TrainingCancelled, TrainProgress, TrainResult, train_head
from .trunk import fingerprint
from .video import VideoResult, annotate_video

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
