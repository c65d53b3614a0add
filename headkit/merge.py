"""ConcatHead and merge(): the one place that joins Detect heads. Nothing in Ultralytics is patched or subclassed."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from ultralytics import YOLO
from ultralytics.nn.modules.head import Detect

from .headfile import Head, describe_detect
from .model import clone_model, ensure_detect_base
from .trunk import detection_model, fingerprint

LOGGER = logging.getLogger(__name__)


class ConcatHead(nn.Module):
    """Run several Detect heads on the same feature maps and join their predictions into one.

    Inference output has shape (B, 4 + sum(nc), heads * anchors): head k owns anchor columns [k*A, (k+1)*A) with its
    own boxes, and class rows 4 + offset_k ... 4 + offset_k + nc_k; its scores for every other head's classes are
    zero. NMS therefore sees each head's candidates exactly as that head alone would produce them.
    """

    def __init__(self, heads: Sequence[Detect]):
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.nc = sum(head.nc for head in heads)
        self.stride = heads[0].stride.clone()
        self.end2end = False  # read by Ultralytics' predictor, validator and exporter through the model

    def forward(self, x: list[torch.Tensor]):
        """Training mode: each head's raw dict. Export mode: the joined tensor. Otherwise (joined, raw dicts)."""
        outputs = [head(list(x)) for head in self.heads]
        if self.training:
            return {"heads": outputs}
        export = isinstance(outputs[0], torch.Tensor)
        joined = self._join([out if export else out[0] for out in outputs])
        return joined if export else (joined, {"heads": [out[1] for out in outputs]})

    def _join(self, predictions: list[torch.Tensor]) -> torch.Tensor:
        boxes = torch.cat([p[:, :4] for p in predictions], dim=2)
        scores, offset = [], 0
        for p, head in zip(predictions, self.heads, strict=True):
            # zero rows above and below this head's classes (F.pad keeps the graph exportable)
            scores.append(F.pad(p[:, 4:], (0, 0, offset, self.nc - offset - head.nc)))
            offset += head.nc
        return torch.cat((boxes, torch.cat(scores, dim=2)), dim=1)

    def _apply(self, fn, recurse=True):
        """Move the heads' stride/anchor tensors too: Ultralytics does this only for a Detect in the last layer."""
        super()._apply(fn, recurse)
        self.stride = fn(self.stride)
        for head in self.heads:
            head.stride, head.anchors, head.strides = fn(head.stride), fn(head.anchors), fn(head.strides)
        return self


def _unique_names(groups: Sequence[dict[int, str]]) -> dict[int, str]:
    """Concatenate class names in order; a repeated name gets a suffix (`person_2`) so results stay unambiguous."""
    merged: dict[int, str] = {}
    seen: set[str] = set()
    for names in groups:
        for _, name in sorted(names.items()):
            unique, n = name, 1
            while unique in seen:
                n += 1
                unique = f"{name}_{n}"
            seen.add(unique)
            merged[len(merged)] = unique
    return merged


def check_head_fits(head: Head, base, *, base_fingerprint: str | None = None) -> None:
    """Refuse a head made for another trunk or channel layout, with both sides in the message."""
    base_detect = detection_model(base).model[-1]
    layout = describe_detect(base_detect)
    label = head.label
    if head.channels != layout["channels"] or head.metadata["reg_max"] != layout["reg_max"]:
        raise ValueError(
            f"head '{label}' expects feature maps with {head.channels} channels (reg_max {head.metadata['reg_max']}), "
            f"but this base provides {layout['channels']} (reg_max {layout['reg_max']}); it was made for another "
            "model size or family — load the base it was trained on, or train the head on this base"
        )
    ours = base_fingerprint or fingerprint(base)
    if head.base_fingerprint != ours:
        raise ValueError(
            f"head '{label}' was trained on base sha256 {head.base_fingerprint[:12]}…, but this base is "
            f"{ours[:12]}…; load the matching base ({head.metadata.get('base_source') or 'source not recorded'}) "
            "or train the head on this base"
        )


def merge(base: YOLO, *heads: Head, keep_base_head: bool = True) -> YOLO:
    """One model = the base trunk (byte for byte), the base's own head (if kept) and each extra head side by side.

    Class indices: the base's names first, then each head's in the order given. With a single head in total the
    result is a plain Detect model (no ConcatHead), e.g. the trunk + one new head.

    Raises:
        ValueError: the base cannot carry heads, or a head does not fit this base.
    """
    ensure_detect_base(base)
    if not heads and not keep_base_head:
        raise ValueError("nothing to merge: give at least one head, or keep the base head")
    base_fingerprint = fingerprint(base)
    for head in heads:
        check_head_fits(head, base, base_fingerprint=base_fingerprint)

    merged = clone_model(base)
    inner = detection_model(merged)
    old = inner.model[-1]
    parameter = next(old.parameters())
    detects = [old] if keep_base_head else []
    detects += [head.build(device=parameter.device, dtype=parameter.dtype) for head in heads]
    names = _unique_names(([inner.names] if keep_base_head else []) + [head.names for head in heads])

    new = detects[0] if len(detects) == 1 else ConcatHead(detects)
    new.f, new.i, new.type = old.f, old.i, "Detect" if len(detects) == 1 else "headkit.merge.ConcatHead"
    new.np = sum(p.numel() for p in new.parameters())
    new.inplace = getattr(old, "inplace", True)
    new.train(old.training)  # a fresh module starts in training mode; keep the base's mode
    inner.model[-1] = new
    inner.names = names
    inner.nc = len(names)
    inner.yaml = {**inner.yaml, "nc": len(names)}
    merged.headkit_source = getattr(base, "headkit_source", None)
    merged.headkit_heads = [head.metadata for head in heads]
    merged.headkit_fingerprint = base_fingerprint
    LOGGER.info("merged %d head(s) onto %s: %d classes", len(heads), base_fingerprint[:12], len(names))
    return merged
