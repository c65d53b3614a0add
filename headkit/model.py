"""Load Ultralytics models from any source; a merged model loaded from its .pt refuses what would make it inexact.

What a loaded model must be to carry heads (`ensure_detect_base`), where it came from and a private copy of it live
in `headkit.base`, which needs no Ultralytics engine.
"""

from __future__ import annotations

import contextlib
import logging
import zipfile
from pathlib import Path

from ultralytics import YOLO
from ultralytics.nn import tasks
from ultralytics.nn.modules.head import Detect

from .basefile import load_base
from .nms import guard_merged
from .sources import resolve
from .trunk import base_facts, detection_model

__all__ = ["ARCHITECTURE_SUFFIXES", "load_model"]

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
            model = load_base(path)  # its facts, fingerprint included, were worked out while checking it
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
    guard_merged(model)  # a merged .pt runs NMS per head and refuses class-agnostic NMS, as when it was merged
    if isinstance(detection_model(model).model[-1], Detect):
        base_facts(model)  # worked out once, here; the modules a base passes through ask this record
    return model


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
