"""The head artefact: one Detect head's tensors in a .safetensors file, with the metadata that makes it safe to merge."""

from __future__ import annotations

import json
import logging
import math
import os
import struct
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
from ultralytics.nn.modules.conv import Conv, DWConv
from ultralytics.nn.modules.head import Detect
from ultralytics.utils.torch_utils import initialize_weights

from .base import ensure_detect_base, model_source
from .branch import (
    BRANCH_PREFIX,
    Branch,
    architecture,
    branch_tensors,
    check_branch_data,
    check_branch_fits_base,
    check_shapes,
    copy_layers,
    shown,
)
from .kinds import LEGACY_PTH, PLAIN, HeadKind, branch_inputs
from .labels import clip, is_int
from .limits import Limits
from .settings import current_limits
from .sources import resolve
from .trunk import BaseFacts, base_facts, compare_trunks

LOGGER = logging.getLogger(__name__)
FORMAT = "headkit.head/1"  # a Detect head alone
BRANCH_FORMAT = "headkit.head/2"  # a Detect head with its own copy of the base's layers from a branch start on
_LEGACY_PREFIXES = ("model.model.", "model.")
# Bounds on a declared Detect layout, checked before anything is allocated. Ultralytics' widest detect models feed
# their head 640 channels (YOLOv8x/YOLO11x, P6 included) from at most 4 levels (P2..P5, P3..P6) with reg_max 16 (1 for
# YOLO26); these leave 6x, 2x and 4x headroom. The head's size in bytes is bounded separately (max_head_mb).
MAX_LEVELS = 8
MAX_CHANNELS = 4096
MAX_REG_MAX = 64
MAX_STRIDE = 1024
# A head's safetensors header (names, metadata, tensor table) is tens of KiB; 1,500 non-ASCII class names of 100
# characters, escaped twice, stay under 2 MiB.
MAX_HEADER_BYTES = 4 * 2**20


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
        """How people name this head: its `label` metadata, else its class names (read even before they are checked)."""
        label, names = self.metadata.get("label"), self.metadata.get("names")
        if isinstance(label, str) and label:
            return label
        return ", ".join(map(str, names.values())) if isinstance(names, dict) and names else "unnamed head"

    @property
    def where(self) -> str:
        """How refusals name this head: `head '<label>'`, the label cut to 60 characters."""
        return f"head '{clip(self.label, 60)}'"

    @property
    def base_fingerprint(self) -> str:
        return self.metadata["base_fingerprint"]

    @property
    def channels(self) -> list[int]:
        return list(self.metadata["channels"])

    @property
    def kind(self) -> HeadKind:
        return HeadKind.of(self.metadata)

    @property
    def detect_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.tensors.items() if not k.startswith(BRANCH_PREFIX)}

    def save(self, path: str | Path) -> Path:
        """Write atomically (temp file, then rename), so a crash never leaves a half-written head behind."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        form = BRANCH_FORMAT if self.kind.is_branch else FORMAT
        text = {key: json.dumps(value) for key, value in self.metadata.items()} | {"format": json.dumps(form)}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".part")
        os.close(fd)
        try:
            tensors = {key: compact(value.detach().cpu()) for key, value in self.tensors.items()}
            save_file(tensors, tmp, metadata=text)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; a head is an ordinary file
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return path

    def build(self, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Detect:
        """A ready Detect module (eval mode, no gradients) for this head; its layout is bounded before it is built."""
        check_layout(self.metadata, self.where)
        detect = new_detect(
            self.nc,
            self.channels,
            reg_max=self.metadata["reg_max"],
            legacy=self.metadata["legacy"],
            activation=self.metadata.get("activation") or DEFAULT_ACTIVATION,
            end2end=bool(self.metadata.get("end2end", False)),
            class_width=self.metadata.get("class_width"),
        )
        detect.load_state_dict(self.detect_tensors, strict=True)
        detect.stride = torch.tensor(self.metadata["strides"], dtype=torch.float32)
        return detect.to(device=device, dtype=dtype).requires_grad_(False).eval()

    def build_branch(self, base, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Branch:
        """A ready Branch module (eval mode, no gradients) for a branch head joining `base`.

        Its layers are deep copies of the base's own (the base is trusted; the file is not), holding this head's
        tensors; the recorded rows, inputs and tensor shapes must equal the base's, checked before anything is built.

        Raises:
            ValueError: the head's branch differs from the base's layers in any recorded row, index or shape.
        """
        branch = self.metadata.get("branch")
        shapes = {key: tuple(value.shape) for key, value in self.tensors.items()}
        check_branch_fits_base(branch, shapes, base, self.where)
        owned = {k[len(BRANCH_PREFIX) :]: v for k, v in self.tensors.items() if k.startswith(BRANCH_PREFIX)}
        layers = copy_layers(base, branch["start"], owned)
        module = Branch(layers, self.build(), branch["inputs"], branch["detect_from"])
        return module.to(device=device, dtype=dtype).requires_grad_(False).eval()


def compact(tensor: torch.Tensor) -> torch.Tensor:
    """fp16 when that is exact (Ultralytics checkpoints hold fp16 values): half the file, the same numbers."""
    if tensor.is_floating_point() and torch.equal(tensor.half().to(tensor.dtype), tensor):
        return tensor.half().contiguous()
    return tensor.contiguous()


def new_detect(
    nc: int,
    channels: list[int],
    *,
    reg_max: int = 16,
    legacy: bool,
    activation: dict | None = None,
    end2end: bool = False,
    class_width: int | None = None,
) -> Detect:
    """Build a Detect head with an explicit layout and activation.

    Ultralytics chooses the classification-branch layout through the class attribute `Detect.legacy`, and the
    activation of every new Conv through `Conv.default_act`; its parser rewrites both for each model it parses, so
    a head built later would inherit whatever the last parsed model set. Both are set on this instance instead.

    Args:
        activation: as `describe_activation` writes it, e.g. {"type": "SiLU"}; default SiLU (every detect family
            Ultralytics ships).
        end2end: also build the one-to-one (NMS-free) branch, as YOLO26 heads have.
        class_width: the class branch's hidden width, when it is not the one Ultralytics derives from `nc`: training
            on a pretrained base keeps the base's width (80 for a 1-class head on an 80-class yolov8n). None: derived.
    """
    derived = class_branch_width(nc, channels)
    width = derived if class_width is None else class_width
    if width not in class_branch_widths(channels):
        raise ValueError(f"a class branch {width} wide does not fit feature maps of {list(channels)} channels")
    build_nc = nc if width == derived else width  # Ultralytics derives the width from nc: build at it, then cut
    detect = Detect.__new__(Detect)
    object.__setattr__(detect, "legacy", legacy)
    Detect.__init__(detect, nc=build_nc, reg_max=reg_max, end2end=end2end, ch=tuple(channels))
    if build_nc != nc:
        for branches in (detect.cv3, getattr(detect, "one2one_cv3", None) or ()):
            for branch in branches:
                branch[-1] = nn.Conv2d(width, nc, 1)
        detect.nc, detect.no = nc, nc + reg_max * 4
    for module in detect.modules():
        if isinstance(module, Conv | DWConv):
            module.act = build_activation(activation or DEFAULT_ACTIVATION)
    initialize_weights(detect)  # BatchNorm eps/momentum as every Ultralytics model sets them (eps 1e-3, not 1e-5)
    return detect


def class_branch_width(nc: int, channels: list[int]) -> int:
    """The class branch's hidden width Ultralytics gives a Detect of `nc` classes on maps of `channels`."""
    return max(channels[0], min(nc, 100))


def class_branch_widths(channels: list[int]) -> range:
    """Every hidden width a Detect on maps of `channels` can have, whatever its class count."""
    return range(channels[0], max(channels[0], 100) + 1)


def is_legacy(detect: Detect) -> bool:
    """True for the YOLOv8 class branch (Conv3x3, Conv3x3, Conv1x1), False for the depthwise one of YOLO11/YOLO26."""
    return not isinstance(detect.cv3[0][0], nn.Sequential)


def light_detect(detect: Detect, source: Detect | None = None) -> Detect:
    """A copy of `detect` with the depthwise class branch (legacy=False), ready to train in its place.

    The box branch and DFL keep `detect`'s tensors; the class branch starts from `source`'s when that is a
    depthwise Detect of the same shapes (a light head trained before), else fresh, with Ultralytics' class-bias prior.
    The model attributes (`f`, `i`, `type`) are carried over, so the copy stands in `model.model[-1]`.
    """
    channels = [int(branch[0].conv.in_channels) for branch in detect.cv2]
    end2end = getattr(detect, "one2one_cv2", None) is not None
    new = new_detect(
        detect.nc,
        channels,
        reg_max=detect.reg_max,
        legacy=False,
        activation=describe_activation(detect.cv2[0][0].act),
        end2end=end2end,
    )
    new.stride = detect.stride.clone()
    new.bias_init()  # before the box branch's tensors are copied: it also resets the box biases
    ours = new.state_dict()
    classes = ("cv3.", "one2one_cv3.")
    kept = {k: v for k, v in detect.state_dict().items() if not k.startswith(classes)}
    if source is not None and not is_legacy(source):
        kept |= {k: v for k, v in source.state_dict().items() if k.startswith(classes)}
    new.load_state_dict({k: v for k, v in kept.items() if k in ours and v.shape == ours[k].shape}, strict=False)
    for attribute in ("f", "i", "type"):
        if hasattr(detect, attribute):
            setattr(new, attribute, getattr(detect, attribute))
    new.np = sum(p.numel() for p in new.parameters())
    return new.to(next(detect.parameters()).device).train(detect.training)


DEFAULT_ACTIVATION = {"type": "SiLU"}
# Activations a head may name: plain torch modules and the numeric arguments each takes. Nothing else is built.
_ACTIVATIONS = {
    "SiLU": (),
    "ReLU": (),
    "ReLU6": (),
    "Hardswish": (),
    "Mish": (),
    "GELU": (),
    "Sigmoid": (),
    "Tanh": (),
    "Identity": (),
    "LeakyReLU": ("negative_slope",),
    "ELU": ("alpha",),
}


def describe_activation(module: nn.Module) -> dict[str, Any]:
    """{"type": "SiLU"} (with numeric arguments where the type has some) for a head's Conv activation."""
    activation = type(module).__name__
    if activation not in _ACTIVATIONS:
        raise ValueError(
            f"the base's head uses a {activation} activation; headkit supports {', '.join(_ACTIVATIONS)} — use a "
            "base built with one of these"
        )
    return {"type": activation, **{name: float(getattr(module, name)) for name in _ACTIVATIONS[activation]}}


def build_activation(spec: dict[str, Any]) -> nn.Module:
    """The activation module `describe_activation` described.

    Raises:
        ValueError: an activation headkit does not build (a head file can only name the ones in `_ACTIVATIONS`).
    """
    activation = spec.get("type") if isinstance(spec, dict) else None
    if activation not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {spec!r}; expected one of {', '.join(_ACTIVATIONS)}")
    arguments = {name: float(spec[name]) for name in _ACTIVATIONS[activation] if name in spec}
    return getattr(nn, activation)(**arguments)


def describe_detect(facts: BaseFacts) -> dict[str, Any]:
    """The layout facts a model's Detect head must share with the base it joins, as head metadata records them."""
    detect = facts.detect
    return {
        "kind": "detect",  # a file-format key every head carries (heads are Detect heads); read by nothing
        "channels": list(facts.channels),
        "reg_max": facts.reg_max,
        "strides": list(facts.strides),
        "legacy": is_legacy(detect),
        "class_width": int(detect.cv3[0][-1].in_channels),
        "activation": describe_activation(detect.cv2[0][0].act),
        "end2end": facts.end2end,
    }


def extract_head(
    trained,
    base,
    *,
    imgsz: int | None = None,
    metrics: dict | None = None,
    trained_with: str = PLAIN,
    extra: dict | None = None,
    branch_start: int | None = None,
) -> Head:
    """Take the Detect head (and, for a branch head, its layers from `branch_start` on) out of a trained model.

    The trained trunk (every layer before the head, or before `branch_start`) is compared with the base's first,
    tensor by tensor, for exact equality; the verdict goes into the metadata, and a trunk that moved by even one bit
    is refused, naming the tensors. A branch head's fingerprint covers the shared layers only.
    """
    ensure_detect_base(base)
    ensure_detect_base(trained, role="trained model")
    ours, theirs = base_facts(trained), base_facts(base)
    if ours.head_index != theirs.head_index:
        raise ValueError(f"trained model's head is layer {ours.head_index}, the base's is {theirs.head_index}")
    check = compare_trunks(trained, base, upto=branch_start)
    if not check.untouched:
        listed = ", ".join(check.changed[:8]) + (" ..." if len(check.changed) > 8 else "")
        raise ValueError(
            f"{len(check.changed)} frozen trunk tensors differ from the base's (max |Δ| {check.max_abs_diff:.3g}): "
            f"{listed}; the head would not fit the base — train again with every layer before the head frozen"
        )
    args = getattr(ours.inner, "args", {}) or {}
    metadata = {
        "names": {str(k): v for k, v in ours.names.items()},
        **describe_detect(ours),
        "ultralytics_version": ULTRALYTICS_VERSION,
        "imgsz": imgsz or (args.get("imgsz") if isinstance(args, dict) else None),
        "metrics": metrics,
        "base_source": model_source(base),
        "base_fingerprint": theirs.trunk_fingerprint(branch_start),
        "base_names": {str(k): v for k, v in theirs.names.items()},
        "trunk_check": check.to_dict(),
        "trained_with": trained_with,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    tensors = {key: value.detach().cpu().clone() for key, value in ours.detect.state_dict().items()}
    if branch_start is not None:
        metadata["branch"] = {
            "start": branch_start,
            "inputs": branch_inputs(base, branch_start),
            "detect_from": list(theirs.detect_from),
            "architecture": architecture(base),
        }
        tensors |= {BRANCH_PREFIX + key: value for key, value in branch_tensors(trained, branch_start).items()}
    return Head(tensors, metadata)


def check_names(names: dict, where: str, limits: Limits) -> None:
    """Refuse too many classes, over-long names and names with control characters, before anything is built.

    Names reach tables, plots and model cards; a newline or a 10,000-character name would break them.
    """
    limits.check("max_classes", len(names), f"{where}: number of classes")
    for key, name in names.items():
        text = str(name)
        limits.check("max_class_name_chars", len(text), f"{where}: length of class {key}'s name")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
            raise ValueError(f"{where}: class {key}'s name {text[:40]!r} holds control characters; rename the class")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def indexed_names(names: Any) -> bool:
    """True for a non-empty class table keyed "0".."n-1", as every headkit file writes its names."""
    return isinstance(names, dict) and bool(names) and set(names) == {str(i) for i in range(len(names))}


def check_layout(metadata: dict[str, Any], where: str) -> None:
    """Refuse a declared Detect layout outside headkit's bounds (`MAX_*`) or of the wrong types, before it is built.

    Raises:
        ValueError: names not keyed 0..n-1, channels/strides/reg_max out of bounds, or legacy/end2end not booleans.
    """
    names = metadata.get("names")
    if not indexed_names(names):
        raise ValueError(f"{where}: metadata 'names' should map class ids 0..n-1 to names; save the head again")
    channels, strides, reg_max = metadata.get("channels"), metadata.get("strides"), metadata.get("reg_max")
    levels = isinstance(channels, list) and 1 <= len(channels) <= MAX_LEVELS
    if not levels or not all(is_int(c) and 1 <= c <= MAX_CHANNELS for c in channels):
        raise ValueError(
            f"{where}: metadata 'channels' {shown(channels, 60)} should list 1..{MAX_LEVELS} feature-map widths of "
            f"1..{MAX_CHANNELS}; this is not a head headkit made — save it again with headkit"
        )
    if not is_int(reg_max) or not 1 <= reg_max <= MAX_REG_MAX:
        raise ValueError(f"{where}: metadata 'reg_max' {shown(reg_max, 60)} should be an integer in 1..{MAX_REG_MAX}")
    if not (isinstance(strides, list) and len(strides) == len(channels)) or not all(
        _is_number(v) and 0 < v <= MAX_STRIDE for v in strides
    ):
        raise ValueError(
            f"{where}: metadata 'strides' {shown(strides, 60)} should be {len(channels)} numbers in (0, {MAX_STRIDE}], one "
            "per feature map"
        )
    width = metadata.get("class_width")
    if width is not None and not (is_int(width) and width in class_branch_widths(channels)):
        widths = class_branch_widths(channels)
        raise ValueError(
            f"{where}: metadata 'class_width' {shown(width, 60)} should be an integer in {widths.start}..{widths.stop - 1} "
            "for these feature maps"
        )
    for key in ("legacy", "end2end"):
        if not isinstance(metadata.get(key, key == "end2end" or None), bool):
            raise ValueError(f"{where}: metadata '{key}' should be true or false, got {shown(metadata.get(key), 60)}")
    activation = metadata.get("activation") or DEFAULT_ACTIVATION
    numbers = isinstance(activation, dict) and all(_is_number(v) for k, v in activation.items() if k != "type")
    if not numbers or activation.get("type") not in _ACTIVATIONS:
        raise ValueError(
            f"{where}: metadata 'activation' {shown(activation, 60)} is not an activation headkit builds; expected a "
            f"type among {', '.join(_ACTIVATIONS)}"
        )


def declared_detect(metadata: dict[str, Any], where: str, limits: Limits) -> dict[str, tuple[int, ...]]:
    """The tensor shapes of the Detect a (layout-checked) head declares, measured on torch's "meta" device.

    Nothing is allocated: the meta module has shapes only. Its fp32 size is checked against `max_head_mb` first.

    Raises:
        LimitExceeded: the declared head would take more than `limits.max_head_mb`.
    """
    with torch.device("meta"):
        detect = new_detect(
            len(metadata["names"]),
            metadata["channels"],
            reg_max=metadata["reg_max"],
            legacy=metadata["legacy"],
            activation=metadata.get("activation") or DEFAULT_ACTIVATION,
            end2end=bool(metadata.get("end2end", False)),
            class_width=metadata.get("class_width"),
        )
    state = detect.state_dict()
    size = sum(value.numel() * 4 for value in state.values()) / 2**20  # built in float32
    nc = len(metadata["names"])
    what = f"{nc} class{'es' if nc != 1 else ''} over channels {metadata['channels']}, reg_max {metadata['reg_max']}"
    limits.check("max_head_mb", round(size, 1), f"{where}: the declared Detect head ({what}) in MiB")
    return {key: tuple(value.shape) for key, value in state.items()}


def _tensor_bytes(shape: list[int], dtype: str) -> int:
    size = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2}.get(dtype, 4)
    count = 1
    for n in shape:
        count *= int(n)
    return count * size


def read_header(path: Path, limits: Limits) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """A safetensors file's metadata strings and tensor shapes, from its header only (no tensor data is read).

    Raises:
        LimitExceeded: the file, or its tensors, are over `max_head_mb`.
        ValueError: not a safetensors file, or a header over `MAX_HEADER_BYTES`.
    """
    size = path.stat().st_size
    limits.check("max_head_mb", size / 2**20, f"{path.name}: file size in MiB")
    with path.open("rb") as f:
        start = f.read(8)
    declared = struct.unpack("<Q", start)[0] if len(start) == 8 else 0
    if MAX_HEADER_BYTES < declared <= size - 8:  # a longer claim than the file is safe_open's to report
        raise ValueError(
            f"{path.name}: its header takes {declared / 2**20:.1f} MiB; a head's takes at most "
            f"{MAX_HEADER_BYTES // 2**20} MiB — this is not a head headkit made"
        )
    try:
        with safe_open(str(path), framework="pt") as f:  # reads the header only
            raw = f.metadata() or {}
            shapes = {key: (f.get_slice(key).get_shape(), f.get_slice(key).get_dtype()) for key in f.keys()}
    except Exception as e:  # safetensors raises its own SafetensorError for any malformed header
        raise ValueError(
            f"{path.name}: not a readable .safetensors file ({e}); download or export the head again"
        ) from e
    total = sum(_tensor_bytes(shape, dtype) for shape, dtype in shapes.values())
    limits.check("max_head_mb", total / 2**20, f"{path.name}: tensor data in MiB")
    return raw, {key: tuple(shape) for key, (shape, _) in shapes.items()}


def _parse_metadata(raw: dict[str, str], where: str) -> dict[str, Any]:
    try:
        return {key: json.loads(value) for key, value in raw.items()}
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{where}: metadata is not headkit's JSON ({e}); was this file written by headkit?") from e


def _check_format(metadata: dict[str, Any], where: str) -> None:
    form = metadata.pop("format", None)
    if form not in (FORMAT, BRANCH_FORMAT):
        raise ValueError(
            f"{where}: not a headkit head (metadata 'format' should be '{FORMAT}' or '{BRANCH_FORMAT}'); heads "
            "are made by headkit.extract_head / train_head and saved with Head.save"
        )
    if (form == BRANCH_FORMAT) != isinstance(metadata.get("branch"), dict):
        raise ValueError(
            f"{where}: format '{form}' but {'no' if form == BRANCH_FORMAT else 'a'} 'branch' entry in its "
            "metadata; the file was altered — save the head again with headkit"
        )
    missing = {"names", "channels", "reg_max", "strides", "legacy", "base_fingerprint"} - metadata.keys()
    if missing:
        raise ValueError(f"{where}: head metadata lacks {sorted(missing)}; save the head again with headkit")
    if not isinstance(metadata["names"], dict):
        raise ValueError(f"{where}: metadata 'names' should map class ids to names; save the head again")


def _read_safetensors(path: Path, limits: Limits) -> Head:
    """Check the header (sizes, metadata, declared layout, tensor shapes) in full, then read the tensors.

    A branch head's layers are not built here: that needs the base they copy (`Head.build_branch`).
    """
    where = path.name
    raw, shapes = read_header(path, limits)
    try:
        names = json.loads(raw.get("names", "{}"))
    except (json.JSONDecodeError, RecursionError):
        names = None  # reported with the rest of the metadata below
    if isinstance(names, dict):
        check_names(names, where, limits)
    metadata = _parse_metadata(raw, where)
    _check_format(metadata, where)
    check_layout(metadata, where)
    expected = declared_detect(metadata, where, limits)
    given = {key: shape for key, shape in shapes.items() if not key.startswith(BRANCH_PREFIX)}
    check_shapes(expected, given, where, f"the Detect head its metadata declares ({len(metadata['names'])} classes)")
    if metadata.get("branch") is not None:
        check_branch_data(metadata["branch"], list(shapes), where)
    with safe_open(str(path), framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    head = Head(tensors, metadata)
    try:
        head.build()
    except (RuntimeError, TypeError, KeyError, ValueError, IndexError) as e:
        raise ValueError(
            f"{where}: its tensors do not match its metadata ({e}); save the head again with headkit"
        ) from e
    return head


def _read_legacy_state_dict(path: Path, base, names: dict[int, str] | None, limits: Limits) -> Head:
    """Import a state-dict `.pth` of one Detect layer (e.g. keys `model.model.23.*`), never unpickling code.

    A .pth records no trunk, so the head is stamped with this base's fingerprint as an assumption
    (`base_fingerprint_verified: false`); its layer index must be the base's head layer, or the next one (the blog
    recipe this format comes from renames the trained head `22` → `23` to sit beside the base head).
    """
    if base is None:
        raise ValueError(
            f"{path.name}: a legacy .pth head carries no base fingerprint; pass base= the model it was trained on"
        )
    limits.check("max_head_mb", path.stat().st_size / 2**20, f"{path.name}: file size in MiB")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses any pickled object that is not plain tensors/containers
        raise ValueError(
            f"{path.name}: refusing to unpickle it — it holds objects other than tensors, and a pickle can run code "
            f"({type(e).__name__}); send the head as .safetensors"
        ) from e
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path.name}: expected a dict of tensors keyed like 'model.model.23.cv2.0.0.conv.weight'")
    ensure_detect_base(base)
    facts = base_facts(base)
    index = facts.head_index
    stripped, layers = {}, set()
    for key, value in state.items():
        for prefix in _LEGACY_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        layer, _, rest = key.partition(".")
        if not layer.isdigit() or not isinstance(value, torch.Tensor):
            raise ValueError(f"{path.name}: unexpected key '{key}'; expected '<layer>.cv2...' Detect tensors")
        layers.add(int(layer))
        stripped[rest] = value
    if len(layers) != 1 or not layers <= {index, index + 1}:
        found = ", ".join(map(str, sorted(layers)))
        raise ValueError(
            f"{path.name}: holds layer(s) {found}, but this base's Detect head is layer {index} (a head saved beside "
            f"it is {index + 1}); this .pth was made for another model family or size — load it with its own base"
        )
    nc = stripped["cv3.0.2.bias"].shape[0] if "cv3.0.2.bias" in stripped else None
    if nc is None:
        raise ValueError(f"{path.name}: no classification layer 'cv3.0.2.bias' found; is this a Detect head?")
    names = names or {i: f"class{i}" for i in range(nc)}
    check_names(names, path.name, limits)
    metadata = {
        "names": {str(k): v for k, v in names.items()},
        **describe_detect(facts),
        "ultralytics_version": None,
        "imgsz": None,
        "metrics": None,
        "base_source": model_source(base),
        "base_fingerprint": facts.fingerprint,
        "base_fingerprint_verified": False,
        "legacy_layer": layers.pop(),
        "base_names": {str(k): v for k, v in facts.names.items()},
        "trained_with": LEGACY_PTH,
    }
    metadata["legacy"] = "cv3.0.0.conv.weight" in stripped
    metadata["class_width"] = int(stripped["cv3.0.2.weight"].shape[1]) if "cv3.0.2.weight" in stripped else None
    head = Head(stripped, metadata)
    try:
        head.build()
    except RuntimeError as e:
        raise ValueError(f"{path.name}: tensors do not fit this base's Detect layout ({e})") from e
    return head


def load_head(
    source: str | Path,
    *,
    revision: str | None = None,
    base=None,
    names: dict[int, str] | None = None,
    limits: Limits | None = None,
) -> Head:
    """Load a head from a local path or `hf://owner/repo/head.safetensors[@rev]`.

    Args:
        base: only for legacy `.pth` state dicts, which do not record the trunk they belong to.
        names: class names for a legacy `.pth` (default `class0`, `class1`, ...).
        limits: refuse files over these (classes, name length, size) before reading their tensors; default the
            limits in force (`HEADKIT_MAX_*`).
    """
    limits = limits or current_limits()
    path = resolve(source, revision=revision, limits=limits)
    if path.suffix == ".safetensors":
        return _read_safetensors(path, limits)
    if path.suffix == ".pth":
        return _read_legacy_state_dict(path, base, names, limits)
    raise ValueError(
        f"{path.name}: heads are .safetensors files (or legacy .pth state dicts); got '{path.suffix}'. A full .pt "
        "model is loaded with headkit.load_model"
    )
