"""The trunk: every layer before the Detect head. Its identity (fingerprint) is what lets heads be shared safely."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import nn
from ultralytics.nn.modules.head import Detect

# Bookkeeping counters, not weights: they change during training without changing a single output.
_IGNORED_SUFFIXES = ("num_batches_tracked",)


def detection_model(model) -> nn.Module:
    """Return the `DetectionModel` inside a `YOLO` wrapper (or the model itself)."""
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and isinstance(getattr(inner, "model", None), nn.Sequential):
        return inner
    if isinstance(inner, nn.Sequential):
        return model
    raise TypeError(f"expected an ultralytics YOLO model or DetectionModel, got {type(model).__name__}")


def head_index(model) -> int:
    """Index of the (last) Detect layer, read from the model: 22 for YOLOv8, 23 for YOLO11, never assumed."""
    layers = detection_model(model).model
    for layer in reversed(layers):
        if isinstance(layer, Detect) or type(layer).__name__ == "ConcatHead":
            return layer.i
    raise ValueError("this model has no Detect head; expected an Ultralytics detection model")


def trunk_state(model, *, upto: int | None = None) -> dict[str, torch.Tensor]:
    """Parameters and BatchNorm buffers of every layer before `upto` (default: the head), keyed `<layer>.<name>`.

    A branch head owns the layers from its branch start on, so its trunk (the shared part) ends there.
    """
    index = head_index(model) if upto is None else upto
    return {
        key: value
        for key, value in detection_model(model).model.state_dict().items()
        if int(key.split(".", 1)[0]) < index and not key.endswith(_IGNORED_SUFFIXES)
    }


def _is_fused(model, upto: int | None = None) -> bool:
    trunk = detection_model(model).model[: head_index(model) if upto is None else upto]
    convs = [m for m in trunk.modules() if type(m).__name__ in {"Conv", "DWConv", "Conv2"}]
    return bool(convs) and not any(hasattr(m, "bn") for m in convs)


def fingerprint(model, *, upto: int | None = None) -> str:
    """sha256 over the trunk (layers before `upto`, default the head): sorted keys, shapes and float32 bytes, so
    fp16/fp32 copies of one trunk agree.

    Raises:
        ValueError: the model was fused (BatchNorm folded into convs), which changes its tensors.
    """
    if _is_fused(model, upto):
        raise ValueError(
            "this model's BatchNorm layers were fused into its convolutions, so its trunk can no longer be "
            "fingerprinted; load the model again (headkit.load_model) and use the unfused copy"
        )
    digest = hashlib.sha256()
    for key, value in sorted(trunk_state(model, upto=upto).items()):
        tensor = value.detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class TrunkComparison:
    """How a (trained) trunk differs from the base's. `changed` lists tensors beyond tolerance."""

    tensors: int
    identical: int
    max_abs_diff: float
    changed: tuple[str, ...]

    @property
    def untouched(self) -> bool:
        return not self.changed

    def to_dict(self) -> dict:
        return {
            "tensors": self.tensors,
            "identical": self.identical,
            "max_abs_diff": self.max_abs_diff,
            "changed": list(self.changed),
            "untouched": self.untouched,
        }


def compare_trunks(candidate, base, *, upto: int | None = None) -> TrunkComparison:
    """Compare two trunks tensor by tensor; anything but bit-for-bit equality counts as changed.

    A frozen layer is never written by the trainer, and Ultralytics' checkpoints hold fp16 values that round-trip
    exactly, so a trunk that really stayed frozen comes back identical; no tolerance hides a moved weight.
    """
    mine, theirs = trunk_state(candidate, upto=upto), trunk_state(base, upto=upto)
    if mine.keys() != theirs.keys():
        missing = sorted(set(theirs) ^ set(mine))[:5]
        raise ValueError(f"the two models have different trunks (keys differ, e.g. {missing})")
    identical, worst, changed = 0, 0.0, []
    for key, ref in theirs.items():
        a, b = mine[key].detach().cpu().float(), ref.detach().cpu().float()
        if a.shape != b.shape:
            changed.append(key)
            continue
        if torch.equal(a, b):
            identical += 1
            continue
        worst = max(worst, float((a - b).abs().max()))
        changed.append(key)
    return TrunkComparison(len(theirs), identical, worst, tuple(changed))
