"""The trunk: every layer before the Detect head. Its identity (fingerprint) is what lets heads be shared safely.

What every module asks of a model (its inner DetectionModel, head index, the Detect's inputs and layout, class names,
trunk fingerprint) is worked out once per model object by `base_facts` and kept on the model, so a base passed through
loading, training, extraction and merging is read once, not at every stop.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import torch
from torch import nn
from ultralytics.nn.modules.head import Detect

from .detect import DetectLayout

# Bookkeeping counters, not weights: they change during training without changing a single output.
_IGNORED_SUFFIXES = ("num_batches_tracked",)
FACTS_ATTRIBUTE = "headkit_facts"
"""Where a YOLO wrapper keeps its `BaseFacts` (never on the inner model: that one is pickled into checkpoints)."""


def detection_model(model) -> nn.Module:
    """Return the `DetectionModel` inside a `YOLO` wrapper (or the model itself)."""
    inner = getattr(model, "model", None)
    if isinstance(inner, nn.Module) and isinstance(getattr(inner, "model", None), nn.Sequential):
        return inner
    if isinstance(inner, nn.Sequential):
        return model
    raise TypeError(f"expected an ultralytics YOLO model or DetectionModel, got {type(model).__name__}")


@dataclass(frozen=True, eq=False)
class BaseFacts:
    """What headkit asks of a detection model, worked out once per model object (see `base_facts`).

    Attributes:
        inner: the `DetectionModel`.
        head_index: index of the (last) Detect layer: 22 for YOLOv8, 23 for YOLO11, read, never assumed.
        detect: that layer (a `ConcatHead` on a merged model).
        detect_from: the layers whose outputs it reads.
        names: class id -> name.
    """

    inner: nn.Module = field(repr=False)
    head_index: int
    detect: nn.Module = field(repr=False)
    detect_from: tuple[int, ...]
    names: Mapping[int, str]
    stamp: tuple = field(repr=False)
    _fingerprints: dict = field(default_factory=dict, repr=False)

    @property
    def layers(self) -> nn.Sequential:
        return self.inner.model

    @functools.cached_property
    def layout(self) -> DetectLayout:
        """The Detect's layout (`headkit.detect`); a merged model's is its first head's (the base's own, if kept)."""
        first = self.detect.heads[0] if isinstance(getattr(self.detect, "heads", None), nn.ModuleList) else self.detect
        return DetectLayout.from_detect(getattr(first, "detect", first))  # a Branch head's Detect

    @property
    def channels(self) -> tuple[int, ...]:
        """The Detect's input widths, one per feature map."""
        return self.layout.channels

    @property
    def strides(self) -> tuple[float, ...]:
        return self.layout.strides

    @property
    def reg_max(self) -> int:
        return self.layout.reg_max

    @property
    def end2end(self) -> bool:
        return self.layout.end2end

    @property
    def fingerprint(self) -> str:
        """sha256 of the whole trunk (every layer before the head); see `fingerprint`."""
        return self.trunk_fingerprint()

    def trunk_fingerprint(self, upto: int | None = None) -> str:
        """sha256 of the layers before `upto` (default: the head), computed once per model and layer."""
        upto = self.head_index if upto is None else upto
        if upto not in self._fingerprints:
            self._fingerprints[upto] = _hash_trunk(self.inner, upto)
        return self._fingerprints[upto]


def base_facts(model) -> BaseFacts:
    """The model's `BaseFacts`: kept on a YOLO wrapper after the first ask, worked out again only if it changed.

    The kept record is checked against a stamp of the model (its layers, class table, and each tensor's storage and
    version counter, which every in-place write bumps: an optimizer step, `load_state_dict`, `fuse`), so a model
    changed in place, or given a new inner model (Ultralytics' `train` does that), gets fresh facts. A bare
    DetectionModel keeps nothing (anything set on it would be pickled with it), and `headkit.base.clone_model` leaves
    the record behind, so a copy that is then trained never reuses its original's.
    """
    kept = getattr(model, FACTS_ATTRIBUTE, None)
    if isinstance(kept, BaseFacts) and getattr(model, "model", None) is kept.inner and kept.stamp == _stamp(kept.inner):
        return kept
    inner = detection_model(model)
    facts = _work_out(inner, _stamp(inner))
    if model is not inner:
        setattr(model, FACTS_ATTRIBUTE, facts)
    return facts


def _stamp(inner: nn.Module) -> tuple:
    tensors = tuple((t.data_ptr(), t._version) for t in itertools.chain(inner.parameters(), inner.buffers()))
    return tuple(map(id, inner.model)), id(getattr(inner, "names", None)), tensors


def _work_out(inner: nn.Module, stamp: tuple) -> BaseFacts:
    layers = inner.model
    index = next(
        (layer.i for layer in reversed(layers) if isinstance(layer, Detect) or type(layer).__name__ == "ConcatHead"),
        None,
    )
    if index is None:
        raise ValueError("this model has no Detect head; expected an Ultralytics detection model")
    detect = layers[index]
    return BaseFacts(
        inner=inner,
        head_index=index,
        detect=detect,
        detect_from=tuple(int(i) for i in ([detect.f] if isinstance(detect.f, int) else detect.f)),
        names=MappingProxyType({int(k): str(v) for k, v in (getattr(inner, "names", None) or {}).items()}),
        stamp=stamp,
    )


def head_index(model) -> int:
    """Index of the (last) Detect layer: 22 for YOLOv8, 23 for YOLO11, never assumed."""
    return base_facts(model).head_index


def layer_state(model, start: int, end: int | None = None, *, counters: bool = True) -> dict[str, torch.Tensor]:
    """State of layers `start`..end-1 (default: up to the head), keyed `<layer>.<name>`.

    Args:
        counters: keep BatchNorm's `num_batches_tracked` (a bookkeeping counter, not a weight).
    """
    facts = base_facts(model)
    end = facts.head_index if end is None else end
    return _layer_state(facts.inner, start, end, counters=counters)


def _layer_state(inner: nn.Module, start: int, end: int, *, counters: bool) -> dict[str, torch.Tensor]:
    return {
        key: value
        for key, value in inner.model.state_dict().items()
        if start <= int(key.split(".", 1)[0]) < end and (counters or not key.endswith(_IGNORED_SUFFIXES))
    }


def trunk_state(model, *, upto: int | None = None) -> dict[str, torch.Tensor]:
    """Parameters and BatchNorm buffers of every layer before `upto` (default: the head), keyed `<layer>.<name>`.

    A branch head owns the layers from its branch start on, so its trunk (the shared part) ends there.
    """
    return layer_state(model, 0, upto, counters=False)


def fingerprint(model, *, upto: int | None = None) -> str:
    """sha256 over the trunk (layers before `upto`, default the head): sorted keys, shapes and float32 bytes, so
    fp16/fp32 copies of one trunk agree. Computed once per model and `upto` (`BaseFacts.trunk_fingerprint`).

    Raises:
        ValueError: the model was fused (BatchNorm folded into convs), which changes its tensors.
    """
    return base_facts(model).trunk_fingerprint(upto)


def _hash_trunk(inner: nn.Module, upto: int) -> str:
    convs = [m for m in inner.model[:upto].modules() if type(m).__name__ in {"Conv", "DWConv", "Conv2"}]
    if convs and not any(hasattr(m, "bn") for m in convs):
        raise ValueError(
            "this model's BatchNorm layers were fused into its convolutions, so its trunk can no longer be "
            "fingerprinted; load the model again (headkit.load_model) and use the unfused copy"
        )
    digest = hashlib.sha256()
    for key, value in sorted(_layer_state(inner, 0, upto, counters=False).items()):
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
