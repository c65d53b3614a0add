"""ConcatHead: several Detect heads on one trunk as one Detect.

ConcatHead is a Detect (without branches of its own) so that Ultralytics' own seams reach it: the predictor,
validator and exporter choose the NMS-free branch with `model.end2end = ...`, which only a Detect receives.

Its output keeps every head's block apart (its own anchor columns and class rows, or its own selected rows), so that
`headkit.nms` can run Ultralytics' NMS on each block as on that head's output alone: that is what makes every head's
detections in a merged model exactly its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from ultralytics.nn.modules.head import Detect

from .branch import Branch, detect_of
from .sharedbox import share_box_branches

MAX_DET = 1000
"""Per-image cap on each head's detections when predicting (a merged model applies it to every head on its own,
`headkit.nms`): far above any real image's count (Compare and video both predict with it)."""


class ConcatHead(Detect):
    """Run several Detect heads on the same feature maps and join their predictions into one.

    A Detect to Ultralytics (so its predictor, validator, exporter and `fuse()` reach it, e.g. to pick the NMS-free
    branch), with no branches of its own. Two output modes, as every head in it:

    - one-to-many (YOLOv8, YOLO11, and YOLO26 with external NMS): shape (B, 4 + sum(nc), heads * anchors); head k owns
      anchor columns [k*A, (k+1)*A) with its own boxes and class rows 4 + offset_k ... 4 + offset_k + nc_k; its
      scores for every other head's classes are zero (an exported file's per-class NMS sees each head's candidates
      only in its own classes); `headkit.nms` cuts the block back out and runs NMS on it as on that head alone.
    - end-to-end (YOLO26 with `nms=False`): each head selects its own top `max_det` rows (B, k, 6); their class ids
      are offset and the rows stacked, the base head's first (rows [k*K, (k+1)*K) are head k's).
    """

    cv2 = None  # no one-to-many branch of its own (read by Ultralytics' fuse checks)

    def __init__(
        self,
        heads: Sequence[Detect | Branch],
        *,
        features: int = 3,
        shared: Sequence[int] = (),
        base_inputs: Sequence[int] = (),
    ):
        """
        Args:
            heads: Detect heads (read the base head's feature maps) and Branch heads (read shared layers' outputs).
            features: how many of the inputs are the base head's feature maps; the rest are the outputs of the
                `shared` layers, in that order, for the branches.
            base_inputs: the base layers those feature maps come from; given, heads whose box branch at a level is
                the same as another's on the same map run it once (`headkit.sharedbox`).
        """
        nn.Module.__init__(self)  # Detect.__init__ would build branches this head does not have
        self.heads = nn.ModuleList(heads)
        self.features = int(features)
        self.shared = [int(i) for i in shared]
        self.nc = sum(head.nc for head in heads)
        self.reg_max = detect_of(heads[0]).reg_max
        self.nl = detect_of(heads[0]).nl
        self.no = self.nc + self.reg_max * 4
        self.stride = detect_of(heads[0]).stride.clone()
        self.shared_boxes = share_box_branches(self.heads, base_inputs) if base_inputs else []

    @property
    def end2end(self) -> bool:
        """True when every head runs its NMS-free one-to-one branch (Ultralytics reads this through the model)."""
        return all(detect_of(head).end2end for head in self.heads)

    @end2end.setter
    def end2end(self, value: bool) -> None:
        for head in map(detect_of, self.heads):
            if getattr(head, "one2one_cv2", None) is not None:
                head.end2end = value

    @property
    def max_det(self) -> int:
        return detect_of(self.heads[0]).max_det

    @max_det.setter
    def max_det(self, value: int) -> None:  # the predictor and validator set it per call; each head selects its own
        for head in map(detect_of, self.heads):
            head.max_det = value

    @property
    def agnostic_nms(self) -> bool:
        return detect_of(self.heads[0]).agnostic_nms

    @agnostic_nms.setter
    def agnostic_nms(self, value: bool) -> None:
        for head in map(detect_of, self.heads):
            head.agnostic_nms = value

    def forward(self, x: list[torch.Tensor]):
        """Training mode: each head's raw dict. Export mode: the joined tensor. Otherwise (joined, raw dicts)."""
        features, shared = list(x[: self.features]), dict(zip(self.shared, x[self.features :], strict=True))
        try:
            outputs = [
                head([shared[i] for i in head.inputs]) if isinstance(head, Branch) else head(list(features))
                for head in self.heads
            ]
        finally:
            for box in getattr(self, "shared_boxes", ()):  # a model pickled before sharing existed has none
                box.forget()
        if self.training:
            return {"heads": outputs}
        export = isinstance(outputs[0], torch.Tensor)
        predictions = [out if export else out[0] for out in outputs]
        joined = self._join_selected(predictions) if self.end2end else self._join(predictions)
        return joined if export else (joined, {"heads": [out[1] for out in outputs]})

    def _join(self, predictions: list[torch.Tensor]) -> torch.Tensor:
        boxes = torch.cat([p[:, :4] for p in predictions], dim=2)
        scores, offset = [], 0
        for p, head in zip(predictions, self.heads, strict=True):
            # zero rows above and below this head's classes (F.pad keeps the graph exportable)
            scores.append(F.pad(p[:, 4:], (0, 0, offset, self.nc - offset - head.nc)))
            offset += head.nc
        return torch.cat((boxes, torch.cat(scores, dim=2)), dim=1)

    def _join_selected(self, predictions: list[torch.Tensor]) -> torch.Tensor:
        """Stack each head's selected rows [x1, y1, x2, y2, score, class], class ids offset to the merged names."""
        rows, offset = [], 0
        for p, head in zip(predictions, self.heads, strict=True):
            rows.append(torch.cat((p[..., :5], p[..., 5:6] + offset, p[..., 6:]), dim=-1))
            offset += head.nc
        return torch.cat(rows, dim=1)

    def fuse(self) -> None:
        """Nothing to drop here: Ultralytics' fuse() reaches each inner head and drops its unused branch itself."""

    def _apply(self, fn, recurse=True):
        """Move the heads' stride/anchor tensors too: Ultralytics does this only for a Detect in the last layer."""
        super()._apply(fn, recurse)
        self.stride = fn(self.stride)
        for head in map(detect_of, self.heads):
            head.stride, head.anchors, head.strides = fn(head.stride), fn(head.anchors), fn(head.strides)
        return self
