"""headkit: teach a pretrained Ultralytics YOLO detector new classes without touching a single old weight."""

from __future__ import annotations

from .headfile import Head, extract_head, load_head
from .merge import ConcatHead, merge
from .model import load_model
from .sources import UntrustedSourceError
from .trunk import fingerprint

__version__ = "0.1.0"

__all__ = [
    "ConcatHead",
    "Head",
    "UntrustedSourceError",
    "extract_head",
    "fingerprint",
    "load_head",
    "load_model",
    "merge",
]
