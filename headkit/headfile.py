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
from ultralytics.nn.modules.conv import Conv, DWConv
from ultralytics.nn.modules.head import Detect
from ultralytics.utils.torch_utils import initialize_weights

from .branch import Branch, architecture, branch_tensors, build_layers, check_architecture
from .kinds import HeadKind, branch_inputs
from .limits import Limits
from .model import ensure_detect_base, model_source
from .settings import current_limits
from .sources import resolve
from .trunk import compare_trunks, detection_model, fingerprint, head_index

LOGGER = logging.getLogger(__name__)
FORMAT = "headkit.head/1"  # a Detect head alone
BRANCH_FORMAT = "headkit.head/2"  # a Detect head with its own copy of the base's layers from a branch start on
BRANCH_PREFIX = "branch."  # tensor keys of the branch layers: branch.<layer>.<name>
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
        detect = new_detect(
            self.nc,
            self.channels,
            reg_max=self.metadata["reg_max"],
            legacy=self.metadata["legacy"],
            activation=self.metadata.get("activation") or DEFAULT_ACTIVATION,
            end2end=bool(self.metadata.get("end2end", False)),
        )
        detect.load_state_dict(self.detect_tensors, strict=True)
        detect.stride = torch.tensor(self.metadata["strides"], dtype=torch.float32)
        return detect.to(device=device, dtype=dtype).requires_grad_(False).eval()

    def build_branch(self, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Branch:
        """A ready Branch module (its layers and Detect, eval mode, no gradients) for a branch head."""
        branch = self.metadata["branch"]
        start = int(branch["start"])
        layers = build_layers(branch["architecture"], start, self.nc)
        owned = {k[len(BRANCH_PREFIX) :]: v for k, v in self.tensors.items() if k.startswith(BRANCH_PREFIX)}
        layer_state = {f"{int(key.split('.', 1)[0]) - start}.{key.split('.', 1)[1]}": v for key, v in owned.items()}
        nn.ModuleList(layers).load_state_dict(layer_state, strict=True)
        module = Branch(layers, self.build(), branch["inputs"], branch["detect_from"])
        return module.to(device=device, dtype=dtype).requires_grad_(False).eval()


def _compact(tensor: torch.Tensor) -> torch.Tensor:
    """fp16 when that is exact (heads from Ultralytics checkpoints are fp16 values): half the file, same numbers."""
    if tensor.dtype == torch.float32 and torch.equal(tensor.half().float(), tensor):
        return tensor.half()
    return tensor


def new_detect(
    nc: int,
    channels: list[int],
    *,
    reg_max: int = 16,
    legacy: bool,
    activation: dict | None = None,
    end2end: bool = False,
) -> Detect:
    """Build a Detect head with an explicit layout and activation.

    Ultralytics chooses the classification-branch layout through the class attribute `Detect.legacy`, and the
    activation of every new Conv through `Conv.default_act`; its parser rewrites both for each model it parses, so
    a head built later would inherit whatever the last parsed model set. Both are set on this instance instead.

    Args:
        activation: as `describe_activation` writes it, e.g. {"type": "SiLU"}; default SiLU (every detect family
            Ultralytics ships).
        end2end: also build the one-to-one (NMS-free) branch, as YOLO26 heads have.
    """
    detect = Detect.__new__(Detect)
    object.__setattr__(detect, "legacy", legacy)
    Detect.__init__(detect, nc=nc, reg_max=reg_max, end2end=end2end, ch=tuple(channels))
    for module in detect.modules():
        if isinstance(module, Conv | DWConv):
            module.act = build_activation(activation or DEFAULT_ACTIVATION)
    initialize_weights(detect)  # BatchNorm eps/momentum as every Ultralytics model sets them (eps 1e-3, not 1e-5)
    return detect


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
    kind = type(module).__name__
    if kind not in _ACTIVATIONS:
        raise ValueError(
            f"the base's head uses a {kind} activation; headkit supports {', '.join(_ACTIVATIONS)} — use a base "
            "built with one of these"
        )
    return {"type": kind, **{name: float(getattr(module, name)) for name in _ACTIVATIONS[kind]}}


def build_activation(spec: dict[str, Any]) -> nn.Module:
    """The activation module `describe_activation` described.

    Raises:
        ValueError: an activation headkit does not build (a head file can only name the ones in `_ACTIVATIONS`).
    """
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {spec!r}; expected one of {', '.join(_ACTIVATIONS)}")
    arguments = {name: float(spec[name]) for name in _ACTIVATIONS[kind] if name in spec}
    return getattr(nn, kind)(**arguments)


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
        "activation": describe_activation(detect.cv2[0][0].act),
        "end2end": getattr(detect, "one2one_cv2", None) is not None,
    }


def extract_head(
    trained,
    base,
    *,
    imgsz: int | None = None,
    metrics: dict | None = None,
    trained_with: str = "plain",
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
    if head_index(trained) != head_index(base):
        raise ValueError(f"trained model's head is layer {head_index(trained)}, the base's is {head_index(base)}")
    check = compare_trunks(trained, base, upto=branch_start)
    if not check.untouched:
        shown = ", ".join(check.changed[:8]) + (" ..." if len(check.changed) > 8 else "")
        raise ValueError(
            f"{len(check.changed)} frozen trunk tensors differ from the base's (max |Δ| {check.max_abs_diff:.3g}): "
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
        "base_fingerprint": fingerprint(base, upto=branch_start),
        "base_names": {str(k): v for k, v in detection_model(base).names.items()},
        "trunk_check": check.to_dict(),
        "trained_with": trained_with,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    tensors = {key: value.detach().cpu().clone() for key, value in detect.state_dict().items()}
    if branch_start is not None:
        metadata["branch"] = {
            "start": branch_start,
            "inputs": branch_inputs(base, branch_start),
            "detect_from": [int(i) for i in detection_model(base).model[-1].f],
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


def _tensor_bytes(shape: list[int], dtype: str) -> int:
    size = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2}.get(dtype, 4)
    count = 1
    for n in shape:
        count *= int(n)
    return count * size


def _read_safetensors(path: Path, limits: Limits) -> Head:
    limits.check("max_head_mb", path.stat().st_size / 2**20, f"{path.name}: file size in MiB")
    try:
        with safe_open(str(path), framework="pt") as f:  # reads the header only
            raw = f.metadata() or {}
            shapes = {key: (f.get_slice(key).get_shape(), f.get_slice(key).get_dtype()) for key in f.keys()}
    except Exception as e:  # safetensors raises its own SafetensorError for any malformed header
        raise ValueError(
            f"{path.name}: not a readable .safetensors file ({e}); download or export the head again"
        ) from e
    try:
        names = json.loads(raw.get("names", "{}"))
    except json.JSONDecodeError:
        names = None  # reported with the rest of the metadata below
    if isinstance(names, dict):
        check_names(names, path.name, limits)  # before a single tensor is read
    total = sum(_tensor_bytes(shape, dtype) for shape, dtype in shapes.values())
    limits.check("max_head_mb", total / 2**20, f"{path.name}: tensor data in MiB")
    with safe_open(str(path), framework="pt") as f:
        tensors = {key: f.get_tensor(key) for key in f.keys()}
    try:
        metadata = {key: json.loads(value) for key, value in raw.items()}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path.name}: metadata is not headkit's JSON ({e}); was this file written by headkit?") from e
    form = metadata.pop("format", None)
    if form not in (FORMAT, BRANCH_FORMAT):
        raise ValueError(
            f"{path.name}: not a headkit head (metadata 'format' should be '{FORMAT}' or '{BRANCH_FORMAT}'); heads "
            "are made by headkit.extract_head / train_head and saved with Head.save"
        )
    if (form == BRANCH_FORMAT) != isinstance(metadata.get("branch"), dict):
        raise ValueError(
            f"{path.name}: format '{form}' but {'no' if form == BRANCH_FORMAT else 'a'} 'branch' entry in its "
            "metadata; the file was altered — save the head again with headkit"
        )
    missing = {"names", "channels", "reg_max", "strides", "legacy", "base_fingerprint"} - metadata.keys()
    if missing:
        raise ValueError(f"{path.name}: head metadata lacks {sorted(missing)}; save the head again with headkit")
    if not isinstance(metadata["names"], dict):
        raise ValueError(f"{path.name}: metadata 'names' should map class ids to names; save the head again")
    head = Head(tensors, metadata)
    if head.kind.is_branch:
        _check_branch_metadata(metadata["branch"], path.name)
    try:
        head.build_branch() if head.kind.is_branch else head.build()
    except (RuntimeError, TypeError, KeyError, ValueError, IndexError) as e:
        raise ValueError(
            f"{path.name}: its tensors do not match its metadata ({e}); save the head again with headkit"
        ) from e
    return head


def _check_branch_metadata(branch: dict, where: str) -> None:
    """Refuse branch metadata that is malformed or names non-layers, before Ultralytics' parser sees it."""
    rows = check_architecture(branch.get("architecture"), where)
    layers = len(rows["backbone"]) + len(rows["head"])
    start, inputs = branch.get("start"), branch.get("inputs")
    if not isinstance(start, int) or not 1 <= start < layers - 1:
        raise ValueError(f"{where}: branch start {start!r} is not a layer between 1 and {layers - 2}; save it again")
    ints = isinstance(inputs, list) and isinstance(branch.get("detect_from"), list)
    if not ints or not all(isinstance(i, int) and 0 <= i < start for i in inputs):
        raise ValueError(f"{where}: branch inputs {inputs!r} should be shared layers before {start}; save it again")


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
    index = head_index(base)
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
    detect = detection_model(base).model[-1]
    nc = stripped["cv3.0.2.bias"].shape[0] if "cv3.0.2.bias" in stripped else None
    if nc is None:
        raise ValueError(f"{path.name}: no classification layer 'cv3.0.2.bias' found; is this a Detect head?")
    names = names or {i: f"class{i}" for i in range(nc)}
    check_names(names, path.name, limits)
    metadata = {
        "names": {str(k): v for k, v in names.items()},
        **describe_detect(detect),
        "ultralytics_version": None,
        "imgsz": None,
        "metrics": None,
        "base_source": model_source(base),
        "base_fingerprint": fingerprint(base),
        "base_fingerprint_verified": False,
        "legacy_layer": layers.pop(),
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
