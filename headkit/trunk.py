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


def trunk_state(model) -> dict[str, torch.Tensor]:
    """Parameters and BatchNorm buffers of every layer before the head, keyed `<layer>.<name>`."""
    index = head_index(model)
    return {
        key: value
        for key, value in detection_model(model).model.state_dict().items()
        if int(key.split(".", 1)[0]) < index and not key.endswith(_IGNORED_SUFFIXES)
    }


def _is_fused(model) -> bool:
    trunk = detection_model(model).model[: head_index(model)]
    convs = [m for m in trunk.modules() if type(m).__name__ in {"Conv", "DWConv", "Conv2"}]
    return bool(convs) and not any(hasattr(m, "bn") for m in convs)


def fingerprint(model) -> str:
    """sha256 over the trunk: sorted keys, shapes and float32 bytes, so fp16/fp32 copies of one trunk agree.

    Raises:
        ValueError: the model was fused (BatchNorm folded into convs), which changes its tensors.
    """
    if _is_fused(model):
        raise ValueError(
            "this model's BatchNorm layers were fused into its convolutions, so its trunk can no longer be "
            "fingerprinted; load the model again (headkit.load_model) and use the unfused copy"
        )
    digest = hashlib.sha256()
    for key, value in sorted(trunk_state(model).items()):
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


def compare_trunks(candidate, base, *, fp16_tolerant: bool = True) -> TrunkComparison:
    """Compare two trunks tensor by tensor.

    Args:
        fp16_tolerant: accept differences within one fp16 rounding step (checkpoints are stored in fp16 and EMA
            averaging of an unchanged tensor can move its last bit).
    """
    mine, theirs = trunk_state(candidate), trunk_state(base)
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
        diff = (a - b).abs()
        worst = max(worst, float(diff.max()))
        # one fp16 step at each value's magnitude (2**-10 relative), plus fp16's smallest subnormal
        allowed = b.abs() * 2.0**-10 + 2.0**-24 if fp16_tolerant else torch.zeros_like(b)
        if bool((diff > allowed).any()):
            changed.append(key)
    return TrunkComparison(len(theirs), identical, worst, tuple(changed))
