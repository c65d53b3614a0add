"""What a headkit server (the web app, or your own) is built from, beside the library's verbs in `headkit`:
settings from the environment, session folders and user keys, the base cache, the head catalog a visitor picks from,
training runs in line for the server's slot, and the time budget they are checked against."""

from __future__ import annotations

from .admission import LoginRequired, RunsPerClient, client_of
from .archive import ZipLimits
from .basecache import BaseCache, BaseUnavailable, display_name
from .budget import (
    COST_VS_HEAD,
    TOO_LONG_ADVICE,
    MemoryEstimate,
    TrainingEstimate,
    check_fits,
    check_memory,
    estimate_memory,
    estimate_run,
    estimate_training,
    explain_estimate,
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
    session_name,
    shipped_names,
)
from .comparing import label_previews
from .heap import keep_heap_trimmed
from .hub import base_tag
from .jobs import Job, JobRoot
from .keys import SessionOwners, UserKeys, check_session
from .runs import (
    ON_REQUEST,
    Failed,
    Finished,
    Run,
    Runs,
    SavedFineTune,
    SavedHead,
    Stopped,
    TrainingRequest,
    Waiting,
    perform,
    perform_in_worker,
    stopped_stage,
    streamed,
)
from .settings import Settings
from .zerogpu import gpu_seconds, in_gpu_call

__all__ = [
    "COST_VS_HEAD",
    "ON_REQUEST",
    "OPENING_HEAD",
    "SESSION_PREFIX",
    "TOO_LONG_ADVICE",
    "BaseCache",
    "BaseUnavailable",
    "Failed",
    "Finished",
    "HeadEntry",
    "Job",
    "JobRoot",
    "LoginRequired",
    "MemoryEstimate",
    "Run",
    "Runs",
    "RunsPerClient",
    "SavedFineTune",
    "SavedHead",
    "SessionOwners",
    "Stopped",
    "Settings",
    "TrainingEstimate",
    "TrainingRequest",
    "UserKeys",
    "Waiting",
    "ZipLimits",
    "add_head",
    "base_tag",
    "keep_heap_trimmed",
    "check_fits",
    "check_memory",
    "check_session",
    "client_of",
    "display_name",
    "estimate_memory",
    "estimate_run",
    "estimate_training",
    "explain_estimate",
    "gpu_seconds",
    "in_gpu_call",
    "label_previews",
    "list_heads",
    "load_head_key",
    "opening_heads",
    "perform",
    "perform_in_worker",
    "refuse_pickle",
    "seconds_per_image",
    "session_name",
    "shipped_names",
    "stopped_stage",
    "streamed",
    "zero_gpu_duration",
]
