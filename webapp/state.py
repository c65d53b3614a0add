"""The server's state, made once per process: settings, the bases loaded once, session folders and user keys, the
sessions that presented a key, the line of training runs and the places each client holds in it, and the slots of
the heavy endpoints."""

from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr
import torch
from ultralytics.utils import ASSETS

from headkit import server

SETTINGS = server.Settings.from_env()
LIMITS = SETTINGS.limits
BASE = SETTINGS.base  # `python app.py --base X` sets HEADKIT_BASE (cli.parse) before this module is imported
BASES = list(dict.fromkeys([BASE, *SETTINGS.bases]))
REPO = Path(__file__).resolve().parents[1]
WEIGHTS_DIR = REPO / "weights"
SHIPPED_HEADS = server.shipped_names(WEIGHTS_DIR)
EXAMPLES_DIR = REPO / "examples"
# First a composite headkit makes (tools/make_demo_assets.py): bus.jpg with a drawn plate the shipped head finds
EXAMPLES = [str(EXAMPLES_DIR / "bus_plate.jpg"), str(ASSETS / "bus.jpg"), str(ASSETS / "zidane.jpg")]
VIDEO_EXAMPLES = [str(EXAMPLES_DIR / "bus_plate.mp4")]
GPU = SETTINGS.zero_gpu or torch.cuda.is_available()
INFERENCE_DEVICE = "cpu" if SETTINGS.zero_gpu else None  # ZeroGPU attaches a GPU only inside spaces.GPU calls
TRAIN_OPTIONS = {} if GPU else {"workers": 0}  # on CPU, loader processes would only compete with training
INFERENCE_SLOTS = 4  # compares and webcam frames at once (Gradio's queue; README "Limits")
HUB_SEARCHES = 2  # /find_heads searches at once: each reads up to max_hub_results headers for max_hub_search_s
WEBCAM_SECONDS = 60

SERVED_DIR = Path(gr.utils.get_upload_folder()) / "headkit"  # outputs are served from here only
USER_KEYS = server.UserKeys(Path(SETTINGS.jobs_dir).parent / f"{Path(SETTINGS.jobs_dir).name}-keys")
# the sweep removes old jobs, served outputs and forgotten keys; max_server_mb bounds all of them together
JOBS = server.JobRoot(SETTINGS.jobs_dir, max_age_s=SETTINGS.job_max_age_s, served_dir=SERVED_DIR, keys=USER_KEYS)
OWNERS = server.SessionOwners(max_age_s=SETTINGS.job_max_age_s)  # session -> the job of the user key it presented
RUNS = server.Runs(slots=1, limits=LIMITS)  # training runs outlive their pages; one trains at a time
PLACES = server.RunsPerClient(LIMITS)  # runs in line per client (account or address), not per session
BASE_MODELS = server.BaseCache(BASES, device=INFERENCE_DEVICE, limits=LIMITS)
# Dataset imports at once, whichever endpoint asks (/load_dataset, /convert_to_keypoints, /train_head): /train_head
# holds no Gradio slot (it follows its run for hours), so its import takes this one instead.
IMPORTS = threading.BoundedSemaphore(LIMITS.max_concurrent_imports)
