"""A run's start model takes the new head's shape, and Ultralytics' trainers rebuild that shape.

Two shapes change what stands in the model's Detect slot: a narrow class branch (`narrow_detect`, warm from the
base's strongest channels) and a path branch (`BranchDetect`: copies of the layers feeding one Detect input, trained
beside the frozen base). The same goes for a plain Detect and for the keypoint trick's Pose head, so both trainers
here share one `get_model`.
"""

from __future__ import annotations

import copy

import torch
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.pose import PoseTrainer
from ultralytics.nn.modules.head import Detect
from ultralytics.utils.torch_utils import unwrap_model

from .branch import Branch, BranchDetect, copy_layers
from .detect import DetectLayout, class_branch_like, narrow_detect, plain_detect
from .kinds import branch_inputs
from .sharedbox import freeze_base_box
from .trunk import base_facts


def path_detect(layers: list, detect: Detect, like: Branch, index: int) -> BranchDetect:
    """A `BranchDetect` of `layers` and `detect`, reading what `like` reads, for model slot `index`."""
    slot = BranchDetect(Branch(layers, detect, like.inputs, like.detect_from))
    slot.i = index
    slot.np = sum(p.numel() for p in slot.parameters())
    return slot.train(detect.training)


def inject_path(inner, base, branch: Branch) -> None:
    """Put a path branch in `inner`'s Detect slot (a `BranchDetect` of its layers and Detect), its inputs kept."""
    inner.model[-1] = path_detect(list(branch.layers), branch.detect, branch, base_facts(base).head_index)
    inner.save = sorted(set(inner.save) | set(branch.inputs))


def shape_slot(
    inner, base, class_width: int | None = None, path: tuple[int, int] | None = None, *, shared_box: bool = False
) -> None:
    """Give `inner` (a detection or pose network of the base's architecture) the shape in its Detect slot: the class
    branch narrowed to `class_width` (warm), then, for a path branch of base layers `path` (start, end), a
    `BranchDetect` of copies of those layers around it; `shared_box` marks the slot so that training keeps its box
    branch the base's where it reads the base's maps (`headkit.sharedbox.freeze_base_box`)."""
    if class_width is not None:
        inner.model[-1] = narrow_detect(inner.model[-1], class_width)
    if path is not None:
        facts, (start, end) = base_facts(base), path
        layers = copy_layers(base, start, end=end)
        inject_path(inner, base, Branch(layers, inner.model[-1], branch_inputs(base, start, end), facts.detect_from))
    if shared_box:
        inner.model[-1].shares_base_box = True


def detect_slot(slot: Detect) -> Detect:
    """A trained pose model's Detect slot as a detection model's: a Pose head's keypoint branch dropped, its shape
    (narrow class branch, path branch around it) kept."""
    if isinstance(slot, BranchDetect):
        return path_detect(
            [copy.deepcopy(m) for m in slot.branch.layers], plain_detect(slot.detect), slot.branch, slot.i
        )
    return plain_detect(slot)


class _ShapedModel:
    """`get_model` for a run whose start model has a shaped Detect slot (`shape_slot`).

    The trainer builds its model from the base's architecture (Ultralytics' class width) and loads the tensors whose
    shapes match; a narrow start matches none of the class branch's, so its Detect takes the start's class-branch
    layout and the run's classes (`class_branch_like`), warm from the start's tensors. A path branch's start has a
    `BranchDetect` in the Detect slot: the run's gets copies of its layers around a head of the run's classes, warm
    from the start's. The shape travels with the start model, so a multi-GPU run's workers build the same.
    """

    def get_model(self, cfg=None, weights=None, verbose: bool = True):
        model = super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        source = (weights.get("ema") or weights.get("model")) if isinstance(weights, dict) else weights
        layer = getattr(source, "model", [None])[-1] if isinstance(source, torch.nn.Module) else None
        shares_base_box = getattr(layer, "shares_base_box", False)
        path = layer if isinstance(layer, BranchDetect) else None
        layer = path.detect if path is not None else layer
        detect = model.model[-1]
        if path is not None:  # the slot's tensors had other names: none were loaded from the start
            ours = detect.state_dict()
            warm = {k: v for k, v in layer.state_dict().items() if k in ours and v.shape == ours[k].shape}
            detect.load_state_dict(warm, strict=False)
        if isinstance(layer, Detect) and (
            DetectLayout.from_detect(layer).class_width != DetectLayout.from_detect(detect).class_width
        ):
            detect = class_branch_like(detect, layer)
        if path is not None:
            detect = path_detect([copy.deepcopy(m) for m in path.branch.layers], detect, path.branch, detect.i)
            model.save = sorted(set(model.save) | set(detect.f))
        if shares_base_box:
            detect.shares_base_box = True
        model.model[-1] = detect
        return model

    def _setup_train(self):
        super()._setup_train()
        freeze_base_box(unwrap_model(self.model), self.freeze_layer_names)  # after Ultralytics' own freezing


class ShapedHeadTrainer(_ShapedModel, DetectionTrainer):
    """Ultralytics' detect trainer for a shaped start (module-level: its multi-GPU launch pickles it by name)."""


class ShapedPoseTrainer(_ShapedModel, PoseTrainer):
    """Ultralytics' pose trainer for a shaped start: the keypoint trick on a narrow or path-branch head."""
