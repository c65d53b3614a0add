"""What a headkit server (the web app, or your own) is built from, beside the library's verbs in `headkit`:
settings from the environment, session folders and user keys, the base cache, the head catalog a visitor picks from,
training runs in line for the server's slot, and the time budget they are checked against."""

from __future__ import annotations

from .basecache import BaseCache, BaseUnavailable, display_name
from .budget import (
    COST_VS_HEAD,
    TOO_LONG_ADVICE,
    TrainingEstimate,
    check_fits,
    estimate_run,
    estimate_training,
    seconds_per_image,
    zero_gpu_duration,
)
from .catalog import (
    OPENING_HEAD,
    SESSION_PREFIX,
    HeadEntry,
    add_head,
    list_heads,
    load_head_key,
    opening_heads,
    refuse_pickle,
    shipped_names,
)
from .comparing import label_previews
from .jobs import Job, JobRoot
from .keys import UserKeys
from .runs import ON_REQUEST, Run, Runs, TrainingRequest, perform, streamed
from .settings import Settings

__all__ = [
    "COST_VS_HEAD",
    "ON_REQUEST",
    "OPENING_HEAD",
    "SESSION_PREFIX",
    "TOO_LONG_ADVICE",
    "BaseCache",
    "BaseUnavailable",
    "HeadEntry",
    "Job",
    "JobRoot",
    "Run",
    "Runs",
    "Settings",
    "TrainingEstimate",
    "TrainingRequest",
    "UserKeys",
    "add_head",
    "check_fits",
    "display_name",
    "estimate_run",
    "estimate_training",
    "label_previews",
    "list_heads",
    "load_head_key",
    "opening_heads",
    "perform",
    "refuse_pickle",
    "seconds_per_image",
    "shipped_names",
    "streamed",
    "zero_gpu_duration",
]
