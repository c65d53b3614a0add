"""The head artefact: one Detect head's tensors in a .safetensors file, with the metadata that makes it safe to merge."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from ultralytics import __version__ as ULTRALYTICS_VERSION
from ultralytics.nn.modules.head import Detect
from ultralytics.utils.torch_utils import initialize_weights

from .model import ensure_detect_base, model_source
from .sources import resolve
from .trunk import compare_trunks, detection_model, fingerprint, head_index

LOGGER = logging.getLogger(__name__)
FORMAT = "headkit.head/1"
_LEGACY_PREFIXES = ("model.model.", "model.")


@dataclass
class Head:
    """A trained Detect head for one base trunk.

    Attributes:
        tensors: the Detect module's state dict (`cv2.0.0.conv.weight`, ...).
        metadata: names, base fingerprint, channel layout, training facts (see `describe_detect`).
    """

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> dict[int, str]:
        return {int(k): str(v) for k, v in self.metadata["names"].items()}

    @property
    def nc(self) -> int:
        return len(self.names)

    @property
    def label(self) -> str:
        """How people name this head: its `label` metadata, else its class names."""
        return self.metadata.get("label") or ", ".join(self.names.values())

    @property
    def base_fingerprint(self) -> str:
        return self.metadata["base_fingerprint"]

    @property
    def channels(self) -> list[int]:
        return list(self.metadata["channels"])

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file, then rename), so a crash never leaves a half-written head behind."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = {key: json.dumps(value) for key, value in self.metadata.items()} | {"format": json.dumps(FORMAT)}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".part")
        os.close(fd)
        try:
            tensors = {key: _compact(value.detach().cpu().contiguous()) for key, value in self.tensors.items()}
            save_file(tensors, tmp, metadata=text)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; a head is an ordinary file
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return path

    def build(self, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Detect:
        """A ready Detect module (eval mode, no gradients) for this head."""
        detect = new_detect(self.nc, self.channels, reg_max=self.metadata["reg_max"], legacy=self.metadata["legacy"])
        detect.load_state_dict(self.tensors, strict=True)
        detect.stride = torch.tensor(self.metadata["strides"], dtype=torch.float32)
        return detect.to(device=device, dtype=dtype).requires_grad_(False).eval()


def _compact(tensor: torch.Tensor) -> torch.Tensor:
    """fp16 when that is exact (heads from Ultralytics checkpoints are fp16 values): half the file, same numbers."""
    if tensor.dtype == torch.float32 and torch.equal(tensor.half().float(), tensor):
        return tensor.half()
    return tensor


def new_detect(nc: int, channels: list[int], *, reg_max: int = 16, legacy: bool) -> Detect:
    """Build a Detect head with an explicit layout.

    Ultralytics chooses the classification-branch layout through the class attribute `Detect.legacy`, which its
    parser rewrites per model family; setting it on the instance keeps other models in the process unaffected.
    """
    detect = Detect.__new__(Detect)
    object.__setattr__(detect, "legacy", legacy)
    Detect.__init__(detect, nc=nc, reg_max=reg_max, ch=tuple(channels))
    initialize_weights(detect)  # BatchNorm eps/momentum as every Ultralytics model sets them (eps 1e-3, not 1e-5)
    return detect


def describe_detect(detect: Detect) -> dict[str, Any]:
    """The layout facts a Detect head must share with the base it joins."""
    legacy = not isinstance(detect.cv3[0][0], nn.Sequential)
    channels = [branch[0].conv.in_channels for branch in detect.cv2]
    return {
        "kind": "detect",
        "channels": channels,
        "reg_max": int(detect.reg_max),
        "strides": [float(s) for s in detect.stride],
        "legacy": legacy,
    }


def extract_head(
    trained,
    base,
    *,
    imgsz: int | None = None,
    metrics: dict | None = None,
    trained_with: str = "plain",
    extra: dict | None = None,
) -> Head:
    """Take the Detect head out of a model trained on the base's frozen trunk.

    The trained trunk is compared with the base's first (fp16 rounding tolerated); the verdict goes into the
    metadata, and a trunk that really moved is refused, naming the tensors.
    """
    ensure_detect_base(base)
    ensure_detect_base(trained, role="trained model")
    if head_index(trained) != head_index(base):
        raise ValueError(f"trained model's head is layer {head_index(trained)}, the base's is {head_index(base)}")
    check = compare_trunks(trained, base)
    if not check.untouched:
        shown = ", ".join(check.changed[:8]) + (" ..." if len(check.changed) > 8 else "")
        raise ValueError(
            f"{len(check.changed)} frozen trunk tensors changed during training (max |Δ| {check.max_abs_diff:.3g}): "
            f"{shown}; the head would not fit the base — train again with every layer before the head frozen"
        )
    inner = detection_model(trained)
    detect = inner.model[-1]
    args = getattr(inner, "args", {}) or {}
    metadata = {
        "names": {str(k): v for k, v in inner.names.items()},
        **describe_detect(detect),
        "ultralytics_version": ULTRALYTICS_VERSION,
        "imgsz": imgsz or (args.get("imgsz") if isinstance(args, dict) else None),
        "metrics": metrics,
        "base_source": model_source(base),
        "base_fingerprint": fingerprint(base),
        "base_names": {str(k): v for k, v in detection_model(base).names.items()},
        "trunk_check": check.to_dict(),
        "trained_with": trained_with,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    tensors = {key: value.detach().cpu().clone() for key, value in detect.state_dict().items()}
    return Head(tensors, metadata)


def _read_safetensors(path: Path) -> Head:
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # safetensors raises its own SafetensorError for any malformed header
        raise ValueError(
            f"{path.name}: not a readable .safetensors file ({e}); download or export the head again"
        ) from e
    try:
        metadata = {key: json.loads(value) for key, value in raw.items()}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path.name}: metadata is not headkit's JSON ({e}); was this file written by headkit?") from e
    if metadata.pop("format", None) != FORMAT:
        raise ValueError(
            f"{path.name}: not a headkit head (metadata 'format' should be '{FORMAT}'); heads are made by "
            "headkit.extract_head / train_head and saved with Head.save"
        )
    missing = {"names", "channels", "reg_max", "strides", "legacy", "base_fingerprint"} - metadata.keys()
    if missing:
        raise ValueError(f"{path.name}: head metadata lacks {sorted(missing)}; save the head again with headkit")
    head = Head(tensors, metadata)
    try:
        head.build()
    except (RuntimeError, TypeError, KeyError, ValueError) as e:
        raise ValueError(
            f"{path.name}: its tensors do not match its metadata ({e}); save the head again with headkit"
        ) from e
    return head


def _read_legacy_state_dict(path: Path, base, names: dict[int, str] | None) -> Head:
    """Import a state-dict `.pth` of one Detect layer (e.g. keys `model.model.23.*`), never unpickling code."""
    if base is None:
        raise ValueError(
            f"{path.name}: a legacy .pth head carries no base fingerprint; pass base= the model it was trained on"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses any pickled object that is not plain tensors/containers
        raise ValueError(
            f"{path.name}: refusing to unpickle it — it holds objects other than tensors, and a pickle can run code "
            f"({type(e).__name__}); send the head as .safetensors"
        ) from e
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path.name}: expected a dict of tensors keyed like 'model.model.23.cv2.0.0.conv.weight'")
    stripped = {}
    for key, value in state.items():
        for prefix in _LEGACY_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        layer, _, rest = key.partition(".")
        if not layer.isdigit() or not isinstance(value, torch.Tensor):
            raise ValueError(f"{path.name}: unexpected key '{key}'; expected '<layer>.cv2...' Detect tensors")
        stripped[rest] = value
    ensure_detect_base(base)
    detect = detection_model(base).model[-1]
    nc = stripped["cv3.0.2.bias"].shape[0] if "cv3.0.2.bias" in stripped else None
    if nc is None:
        raise ValueError(f"{path.name}: no classification layer 'cv3.0.2.bias' found; is this a Detect head?")
    names = names or {i: f"class{i}" for i in range(nc)}
    metadata = {
        "names": {str(k): v for k, v in names.items()},
        **describe_detect(detect),
        "ultralytics_version": None,
        "imgsz": None,
        "metrics": None,
        "base_source": model_source(base),
        "base_fingerprint": fingerprint(base),
        "base_names": {str(k): v for k, v in detection_model(base).names.items()},
        "trained_with": "imported-legacy-pth",
    }
    metadata["legacy"] = "cv3.0.0.conv.weight" in stripped
    head = Head(stripped, metadata)
    try:
        head.build()
    except RuntimeError as e:
        raise ValueError(f"{path.name}: tensors do not fit this base's Detect layout ({e})") from e
    return head


def load_head(
    source: str | Path, *, revision: str | None = None, base=None, names: dict[int, str] | None = None
) -> Head:
    """Load a head from a local path or `hf://owner/repo/head.safetensors[@rev]`.

    Args:
        base: only for legacy `.pth` state dicts, which do not record the trunk they belong to.
        names: class names for a legacy `.pth` (default `class0`, `class1`, ...).
    """
    path = resolve(source, revision=revision)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix == ".pth":
        return _read_legacy_state_dict(path, base, names)
    raise ValueError(
        f"{path.name}: heads are .safetensors files (or legacy .pth state dicts); got '{path.suffix}'. A full .pt "
        "model is loaded with headkit.load_model"
    )
