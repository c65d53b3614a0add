"""Ultralytics' Detect head in one place: its layout as one value, how one is built, and when a head fits a base.

Everything headkit knows of Detect's insides lives here: the box branch `cv2`, the class branch `cv3` (YOLOv8's
Conv3x3 pair, which Ultralytics calls `legacy`, or the depthwise pair of YOLO11/YOLO26), the NMS-free `one2one_*`
copies, the rule that derives the class branch's width from the class count, the Conv activation. The rest of headkit
asks a `DetectLayout`. After an Ultralytics upgrade this is the file to re-read; tests/test_contract.py pins what it
relies on.

A layout comes from a Detect (`from_detect`: a base's, a trained model's), from a head file's metadata
(`from_metadata`: typed and bounded, nothing built yet) or from a legacy state dict's tensor names and shapes
(`from_state_dict`), and is written back as metadata (`to_metadata`). A head fits a base when what their Detects read
and output is equal (`check_fits`); what a head owns (classes, class branch, activation) is its own.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn
from ultralytics.nn.modules.conv import Conv, DWConv
from ultralytics.nn.modules.head import Detect
from ultralytics.utils.torch_utils import initialize_weights

from .labels import is_int
from .limits import Limits
from .schema import indexed_names, shown

# Bounds on a declared Detect layout, checked before anything is allocated. Ultralytics' widest detect models feed
# their head 640 channels (YOLOv8x/YOLO11x, P6 included) from at most 4 levels (P2..P5, P3..P6) with reg_max 16 (1 for
# YOLO26); these leave 6x, 2x and 4x headroom. The head's size in bytes is bounded separately (max_head_mb).
MAX_LEVELS = 8
MAX_CHANNELS = 4096
MAX_REG_MAX = 64
MAX_STRIDE = 1024
DEFAULT_ACTIVATION = "SiLU"  # every detect family Ultralytics ships
# Activations a head may name: plain torch modules and the numeric arguments each takes. Nothing else is built.
ACTIVATIONS = {
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
# State-dict keys: the class branches (one-to-many and NMS-free), and the first level's class output conv, whose bias
# is as long as there are classes and whose weight is as wide as the class branch.
CLASS_BRANCHES = ("cv3.", "one2one_cv3.")
CLASS_BIAS = "cv3.0.2.bias"
_CLASS_WEIGHT = "cv3.0.2.weight"
_LEGACY_FIRST_CONV = "cv3.0.0.conv.weight"  # YOLOv8's class branch starts with a Conv; the depthwise one does not


class HeadDoesNotFit(ValueError):
    """A head refused by a base it was not made for (another Detect layout, trunk or branch); the message names both
    sides and the fix. Not raised for a malformed head: that is a plain `ValueError` (or `FileRefused`)."""


def class_branch_width(nc: int, channels: Sequence[int]) -> int:
    """The class branch's hidden width Ultralytics gives a Detect of `nc` classes on maps of `channels`."""
    return max(channels[0], min(nc, 100))


def class_branch_widths(channels: Sequence[int]) -> range:
    """Every hidden width a Detect on maps of `channels` can have, whatever its class count."""
    return range(channels[0], max(channels[0], 100) + 1)


MIN_CLASS_WIDTH = 8  # a narrow class branch (`narrow_detect`) keeps at least this many channels
NARROW = "narrow"  # train_head(class_width="narrow"): the width `narrow_width` picks for the run's classes
NARROW_FLOOR = 32  # the narrowest class branch "narrow" picks: the frontier's measured point (README, "Head shapes")


def narrow_width(nc: int, channels: Sequence[int]) -> int | None:
    """The class width `class_width="narrow"` gives a head of `nc` classes on maps of `channels`: Ultralytics' own
    rule, max(floor, min(nc, 100)), with a floor of `NARROW_FLOOR` channels in place of the first map's width; None
    where that is not below Ultralytics' width (many classes, or a narrow base): the run keeps the base's width.

    A general rule, not a figure fitted to one dataset: the width grows with the classes as Ultralytics' does.
    """
    width = max(NARROW_FLOOR, min(nc, 100))
    return width if width < class_branch_width(nc, channels) else None


def narrow_widths(channels: Sequence[int]) -> range:
    """Hidden widths below Ultralytics' own that a narrow class branch (`narrow_detect`) may have on maps of
    `channels`: fewer FLOPs where the new head has few classes (Ultralytics never goes below `channels[0]`)."""
    return range(MIN_CLASS_WIDTH, channels[0])


def _width_allowed(width: int, channels: Sequence[int]) -> bool:
    return width in class_branch_widths(channels) or width in narrow_widths(channels)


@dataclass(frozen=True)
class DetectLayout:
    """What decides a Detect's modules and tensor shapes, and what it reads from the trunk.

    Attributes:
        nc: classes.
        channels: the feature maps' widths, one per level: the Detect's inputs.
        strides: their strides in pixels.
        reg_max: box distribution bins per side (16; 1 for YOLO26).
        depthwise: the class branch of YOLO11/YOLO26 (DWConv + Conv1x1, twice); False: YOLOv8's (Conv3x3, twice),
            which Ultralytics calls `legacy` and head files record as `legacy`.
        class_width: the class branch's hidden width; None derives it from `nc` as Ultralytics does. A head trained on
            a pretrained base keeps the base's (80 for a 1-class head on an 80-class yolov8n).
        end2end: also the one-to-one (NMS-free) branches, as YOLO26 has.
        activation: the Conv activation's type, with its numeric arguments in `activation_args`.
    """

    nc: int
    channels: tuple[int, ...]
    strides: tuple[float, ...]
    reg_max: int = 16
    depthwise: bool = False
    class_width: int | None = None
    end2end: bool = False
    activation: str = DEFAULT_ACTIVATION
    activation_args: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        object.__setattr__(self, "strides", tuple(float(s) for s in self.strides))
        if self.class_width is None:
            object.__setattr__(self, "class_width", class_branch_width(self.nc, self.channels))

    @classmethod
    def from_detect(cls, detect: Detect) -> DetectLayout:
        """The layout of a built Detect (a fused end-to-end one, whose one-to-many branches are gone, included)."""
        boxes = detect.cv2 if detect.cv2 is not None else detect.one2one_cv2
        classes = detect.cv3 if detect.cv3 is not None else detect.one2one_cv3
        act = boxes[0][0].act
        name = type(act).__name__
        return cls(
            nc=int(detect.nc),
            channels=tuple(int(branch[0].conv.in_channels) for branch in boxes),
            strides=tuple(float(s) for s in detect.stride),
            reg_max=int(detect.reg_max),
            depthwise=isinstance(classes[0][0], nn.Sequential),
            class_width=int(classes[0][-1].in_channels),
            end2end=getattr(detect, "one2one_cv2", None) is not None,
            activation=name,
            activation_args=tuple((arg, float(getattr(act, arg))) for arg in ACTIVATIONS.get(name, ())),
        )

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], where: str) -> DetectLayout:
        """The layout a head's metadata declares, refused outside headkit's bounds (`MAX_*`) or of the wrong types.

        Raises:
            ValueError: names not keyed 0..n-1, channels/strides/reg_max/class_width out of bounds, legacy/end2end
                not booleans, or an activation headkit does not build.
        """
        names = metadata.get("names")
        if not indexed_names(names):
            raise ValueError(f"{where}: metadata 'names' should map class ids 0..n-1 to names; save the head again")
        channels, strides, reg_max = metadata.get("channels"), metadata.get("strides"), metadata.get("reg_max")
        levels = isinstance(channels, list) and 1 <= len(channels) <= MAX_LEVELS
        if not levels or not all(is_int(c) and 1 <= c <= MAX_CHANNELS for c in channels):
            raise ValueError(
                f"{where}: metadata 'channels' {shown(channels, 60)} should list 1..{MAX_LEVELS} feature-map widths "
                f"of 1..{MAX_CHANNELS}; this is not a head headkit made — save it again with headkit"
            )
        if not is_int(reg_max) or not 1 <= reg_max <= MAX_REG_MAX:
            raise ValueError(
                f"{where}: metadata 'reg_max' {shown(reg_max, 60)} should be an integer in 1..{MAX_REG_MAX}"
            )
        if not (isinstance(strides, list) and len(strides) == len(channels)) or not all(
            _is_number(v) and 0 < v <= MAX_STRIDE for v in strides
        ):
            raise ValueError(
                f"{where}: metadata 'strides' {shown(strides, 60)} should be {len(channels)} numbers in "
                f"(0, {MAX_STRIDE}], one per feature map"
            )
        width, widths, narrow = metadata.get("class_width"), class_branch_widths(channels), narrow_widths(channels)
        if width is not None and not (is_int(width) and _width_allowed(width, channels)):
            raise ValueError(
                f"{where}: metadata 'class_width' {shown(width, 60)} should be an integer in "
                f"{widths.start}..{widths.stop - 1} for these feature maps, or in {narrow.start}..{narrow.stop - 1} "
                "for a narrow class branch"
            )
        for key in ("legacy", "end2end"):
            if not isinstance(metadata.get(key, key == "end2end" or None), bool):
                raise ValueError(
                    f"{where}: metadata '{key}' should be true or false, got {shown(metadata.get(key), 60)}"
                )
        activation = metadata.get("activation") or {"type": DEFAULT_ACTIVATION}
        numbers = isinstance(activation, dict) and all(_is_number(v) for k, v in activation.items() if k != "type")
        if not numbers or activation.get("type") not in ACTIVATIONS:
            raise ValueError(
                f"{where}: metadata 'activation' {shown(activation, 60)} is not an activation headkit builds; "
                f"expected a type among {', '.join(ACTIVATIONS)}"
            )
        kind = activation["type"]
        return cls(
            nc=len(names),
            channels=tuple(channels),
            strides=tuple(strides),
            reg_max=reg_max,
            depthwise=not metadata["legacy"],
            class_width=width,
            end2end=bool(metadata.get("end2end", False)),
            activation=kind,
            activation_args=tuple((arg, float(activation[arg])) for arg in ACTIVATIONS[kind] if arg in activation),
        )

    @classmethod
    def from_state_dict(cls, shapes: Mapping[str, Sequence[int]], like: DetectLayout, where: str) -> DetectLayout:
        """The layout of a Detect state dict's tensors on a base of layout `like`: its classes (the length of
        `CLASS_BIAS`), class branch and width read from tensor names and shapes; what it reads is `like`'s.

        Raises:
            ValueError: no class output layer: not a Detect state dict.
        """
        if CLASS_BIAS not in shapes or len(shapes[CLASS_BIAS]) != 1:
            raise ValueError(f"{where}: no classification layer '{CLASS_BIAS}' found; is this a Detect head?")
        width = shapes.get(_CLASS_WEIGHT)
        return replace(
            like,
            nc=int(shapes[CLASS_BIAS][0]),
            depthwise=_LEGACY_FIRST_CONV not in shapes,
            class_width=int(width[1]) if width is not None and len(width) > 1 else None,
        )

    def to_metadata(self) -> dict[str, Any]:
        """The layout as head metadata records it (class names are the head's own `names`).

        Raises:
            ValueError: an activation headkit does not build (a base built with another one).
        """
        self._check_activation()
        return {
            "channels": list(self.channels),
            "reg_max": self.reg_max,
            "strides": list(self.strides),
            "legacy": not self.depthwise,
            "class_width": self.class_width,
            "activation": {"type": self.activation, **dict(self.activation_args)},
            "end2end": self.end2end,
        }

    def _check_activation(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"the base's head uses a {self.activation} activation; headkit supports {', '.join(ACTIVATIONS)} — "
                "use a base built with one of these"
            )

    @property
    def contract(self) -> tuple:
        """What a head's Detect and its base's must share: feature-map widths and strides, reg_max, end-to-end."""
        return self.channels, self.strides, self.reg_max, self.end2end

    def check_fits(self, base: DetectLayout, where: str) -> None:
        """Refuse this (head's) layout on a base whose Detect reads or outputs otherwise (`contract`).

        Raises:
            HeadDoesNotFit: another end-to-end mode, channels, reg_max or strides; both sides named.
        """
        if self.contract == base.contract:
            return
        fix = "load the base it was trained on, or train the head on this base"
        if self.end2end != base.end2end:

            def name(e2e: bool) -> str:
                return "end-to-end (NMS-free, YOLO26)" if e2e else "one-to-many (NMS, YOLOv8/YOLO11)"

            raise HeadDoesNotFit(
                f"{where} has a {name(self.end2end)} Detect layout, but this base's head is {name(base.end2end)}; a "
                f"head joins only a base of its own layout — {fix}"
            )
        if (self.channels, self.reg_max) != (base.channels, base.reg_max):
            raise HeadDoesNotFit(
                f"{where} expects feature maps with {list(self.channels)} channels (reg_max {self.reg_max}), but this "
                f"base provides {list(base.channels)} (reg_max {base.reg_max}); it was made for another model size or "
                f"family — {fix}"
            )
        raise HeadDoesNotFit(
            f"{where} expects feature maps at strides {list(self.strides)}, but this base's are {list(base.strides)}; "
            f"{fix}"
        )

    def build(self) -> Detect:
        """A new Detect of this layout: fresh weights as Ultralytics initialises them, training mode, strides set.

        Ultralytics chooses the class branch through the class attribute `Detect.legacy`, and the activation of every
        new Conv through `Conv.default_act`; its parser rewrites both for each model it parses, so a head built later
        would inherit whatever the last parsed model set. Both are set on this instance instead.

        Raises:
            ValueError: a class width these feature maps cannot have, or an activation headkit does not build.
        """
        self._check_activation()
        derived = class_branch_width(self.nc, self.channels)
        if not _width_allowed(self.class_width, self.channels):
            raise ValueError(
                f"a class branch {self.class_width} wide does not fit feature maps of {list(self.channels)} channels"
            )
        build_nc = self.nc if self.class_width == derived else self.class_width  # Ultralytics derives it: build, cut
        detect = Detect.__new__(Detect)
        object.__setattr__(detect, "legacy", not self.depthwise)
        Detect.__init__(detect, nc=build_nc, reg_max=self.reg_max, end2end=self.end2end, ch=self.channels)
        if self.class_width < self.channels[0]:  # narrower than Ultralytics builds: its own class branches
            detect.cv3 = nn.ModuleList(self._class_branch(x) for x in self.channels)
            if self.end2end:
                detect.one2one_cv3 = copy.deepcopy(detect.cv3)
            detect.nc, detect.no = self.nc, self.nc + self.reg_max * 4
        elif build_nc != self.nc:
            for branches in (detect.cv3, getattr(detect, "one2one_cv3", None) or ()):
                for branch in branches:
                    branch[-1] = nn.Conv2d(self.class_width, self.nc, 1)
            detect.nc, detect.no = self.nc, self.nc + self.reg_max * 4
        for module in detect.modules():
            if isinstance(module, Conv | DWConv):
                module.act = getattr(nn, self.activation)(**dict(self.activation_args))
        initialize_weights(detect)  # BatchNorm eps/momentum as every Ultralytics model sets them (eps 1e-3, not 1e-5)
        detect.stride = torch.tensor(self.strides, dtype=torch.float32)
        return detect

    def _class_branch(self, x: int) -> nn.Sequential:
        """One level's class branch of this layout's width, shaped as Ultralytics' own (`Detect.__init__`)."""
        w = self.class_width
        if self.depthwise:
            return nn.Sequential(
                nn.Sequential(DWConv(x, x, 3), Conv(x, w, 1)),
                nn.Sequential(DWConv(w, w, 3), Conv(w, w, 1)),
                nn.Conv2d(w, self.nc, 1),
            )
        return nn.Sequential(Conv(x, w, 3), Conv(w, w, 3), nn.Conv2d(w, self.nc, 1))

    def declared_shapes(self, where: str, limits: Limits) -> dict[str, tuple[int, ...]]:
        """The tensor shapes of this layout's Detect, measured on torch's "meta" device: nothing is allocated. Its
        fp32 size is checked against `max_head_mb` first.

        Raises:
            LimitExceeded: the declared head would take more than `limits.max_head_mb`.
        """
        with torch.device("meta"):
            state = self.build().state_dict()
        size = sum(value.numel() * 4 for value in state.values()) / 2**20  # built in float32
        what = (
            f"{self.nc} class{'es' if self.nc != 1 else ''} over channels {list(self.channels)}, reg_max {self.reg_max}"
        )
        limits.check("max_head_mb", round(size, 1), f"{where}: the declared Detect head ({what}) in MiB")
        return {key: tuple(value.shape) for key, value in state.items()}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def light_detect(detect: Detect, source: Detect | None = None) -> Detect:
    """A copy of `detect` with the depthwise class branch, ready to train in its place.

    The box branch and DFL keep `detect`'s tensors; the class branch starts from `source`'s when that is a
    depthwise Detect of the same shapes (a light head trained before), else fresh, with Ultralytics' class-bias prior.
    The model attributes (`f`, `i`, `type`) are carried over, so the copy stands in `model.model[-1]`.
    """
    new = replace(DetectLayout.from_detect(detect), depthwise=True, class_width=None).build()
    new.stride = detect.stride.clone()
    new.bias_init()  # before the box branch's tensors are copied: it also resets the box biases
    ours = new.state_dict()
    kept = {k: v for k, v in detect.state_dict().items() if not k.startswith(CLASS_BRANCHES)}
    if source is not None and DetectLayout.from_detect(source).depthwise:
        kept |= {k: v for k, v in source.state_dict().items() if k.startswith(CLASS_BRANCHES)}
    new.load_state_dict({k: v for k, v in kept.items() if k in ours and v.shape == ours[k].shape}, strict=False)
    for attribute in ("f", "i", "type"):
        if hasattr(detect, attribute):
            setattr(new, attribute, getattr(detect, attribute))
    new.np = sum(p.numel() for p in new.parameters())
    return new.to(next(detect.parameters()).device).train(detect.training)


def has_one_to_many(detect: Detect) -> bool:
    """False for an end-to-end Detect whose one-to-many branches `fuse()` removed (an exported or fused copy)."""
    return detect.cv2 is not None


def narrow_detect(detect: Detect, width: int) -> Detect:
    """A copy of `detect` whose class branches are `width` channels wide, warm: each keeps the `width` hidden channels
    of `detect`'s own with the largest BatchNorm scale |gamma| (how much each channel passes on, the usual pruning
    criterion), and the convolutions after them the matching input slices. The box branch, DFL and class outputs
    are `detect`'s. A class branch started from the base's weights learns in a few epochs what a fresh one needs
    many for (~0.06 mAP50 in 10 epochs on the plates).

    Raises:
        ValueError: a width outside `narrow_widths` of `detect`'s maps or not below its own class width.
    """
    layout = DetectLayout.from_detect(detect)
    check_narrow_width(layout, width)
    built = replace(layout, class_width=width).build()
    with torch.no_grad():
        for name in ("cv3", "one2one_cv3"):
            for source, target in zip(getattr(detect, name, None) or (), getattr(built, name, None) or (), strict=True):
                _copy_strongest(source, target, layout.class_width)
    return _stand_in(_with_class_branch(detect, built), detect)


def check_narrow_width(layout: DetectLayout, width: int) -> None:
    """Refuse a narrow class width a Detect of `layout` cannot take (`narrow_widths`, and below its own width).

    Raises:
        ValueError: the width, the range and the Detect's own width named.
    """
    if width not in narrow_widths(layout.channels) or width >= layout.class_width:
        narrow = narrow_widths(layout.channels)
        raise ValueError(
            f"class_width={width}: a narrow class branch on this base is {narrow.start}..{narrow.stop - 1} channels "
            f"wide (its own is {layout.class_width}, Ultralytics' narrowest {layout.channels[0]}); pick a width in "
            "that range, or leave class_width unset for the base's width"
        )


def _copy_strongest(source: nn.Sequential, target: nn.Sequential, wide: int) -> None:
    """Copy one level's class branch into a narrower one: each hidden Conv keeps its strongest channels (|BN gamma|),
    a depthwise conv follows its input's, each conv takes the input channels kept before it.

    What the dropped channels fed a later conv is compensated, without data: a BatchNorm'd channel's output is about
    `act(beta + gamma * N(0, 1))`, whose mean is taken by quadrature; the later conv's BatchNorm running mean (the
    class output's bias) absorbs the missing mean input, so its kept channels start near the values the base's had
    (border padding aside) instead of shifted by 3/4 of their inputs.
    """
    convs = [m for m in source.modules() if isinstance(m, Conv)], [m for m in target.modules() if isinstance(m, Conv)]
    kept: torch.Tensor | None = None  # input channels kept so far (None: all)
    means: torch.Tensor | None = None  # the expected output of each of the previous layer's channels (all of them)
    for ours, theirs in zip(*convs, strict=True):
        depthwise = ours.conv.groups > 1
        if depthwise:
            out = kept
        elif ours.conv.out_channels == wide and theirs.conv.out_channels < wide:
            out = ours.bn.weight.abs().topk(theirs.conv.out_channels).indices.sort().values
        else:
            out = None
        weight = ours.conv.weight if out is None else ours.conv.weight[out]
        missing = 0.0
        if not depthwise and kept is not None:
            weight = weight[:, kept]
            missing = _missing_input(ours.conv.weight, kept, means)
        theirs.conv.weight.copy_(weight)
        for key in ("weight", "bias", "running_mean", "running_var"):
            value = getattr(ours.bn, key) - (missing if key == "running_mean" else 0.0)
            getattr(theirs.bn, key).copy_(value if out is None else value[out])
        kept, means = out, _expected_output(ours)
    last, new_last = source[-1], target[-1]
    new_last.weight.copy_(last.weight if kept is None else last.weight[:, kept])
    new_last.bias.copy_(last.bias + (0.0 if kept is None else _missing_input(last.weight, kept, means)))


def _missing_input(weight: torch.Tensor, kept: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """What a conv's output channels lose on average when only its `kept` input channels remain (means: the inputs')."""
    dropped = torch.ones(weight.shape[1], dtype=torch.bool)
    dropped[kept] = False
    return weight[:, dropped].sum(dim=(2, 3)) @ means[dropped]


def _expected_output(layer: Conv) -> torch.Tensor:
    """Each channel's mean output of a Conv (conv, BatchNorm, activation), taking the BatchNorm'd value as
    beta + gamma * N(0, 1): the mean of the activation over a 161-point grid of the standard normal."""
    grid = torch.linspace(-4.0, 4.0, 161)
    density = torch.exp(-(grid**2) / 2)
    density /= density.sum()
    values = layer.act(layer.bn.bias[:, None] + layer.bn.weight[:, None] * grid[None, :])
    return values @ density


def class_branch_like(detect: Detect, source: Detect) -> Detect:
    """A Detect of `detect`'s classes with `source`'s class-branch layout (style and width), ready to train in
    `detect`'s place: the box branch and DFL are `detect`'s, the class branch `source`'s (its class output too where
    the class count is the same; else fresh, with Ultralytics' class-bias prior)."""
    built = replace(DetectLayout.from_detect(source), nc=detect.nc).build()
    built.stride = detect.stride.clone()
    built.bias_init()
    ours = built.state_dict()
    warm = {k: v for k, v in source.state_dict().items() if k.startswith(CLASS_BRANCHES)}
    built.load_state_dict({k: v for k, v in warm.items() if k in ours and v.shape == ours[k].shape}, strict=False)
    return _stand_in(_with_class_branch(detect, built), detect)


def _with_class_branch(detect: Detect, built: Detect) -> Detect:
    """A copy of `detect` (a Pose head stays one, its keypoint branch kept) whose class branches are `built`'s."""
    new = copy.deepcopy(detect)
    for name in ("cv3", "one2one_cv3"):
        if getattr(built, name, None) is not None:
            setattr(new, name, getattr(built, name))
    return new


def plain_detect(head: Detect) -> Detect:
    """A plain Detect of `head`'s layout holding its tensors: a Pose head's box, class and DFL branches, its keypoint
    branch dropped (the keypoint trick keeps only these)."""
    new = DetectLayout.from_detect(head).build()
    new.stride = head.stride.clone()
    ours = new.state_dict()
    new.load_state_dict({k: v for k, v in head.state_dict().items() if k in ours}, strict=True)
    new = _stand_in(new, head)
    new.type = f"{Detect.__module__}.Detect"
    return new


def _stand_in(new: Detect, detect: Detect) -> Detect:
    """`new` made ready to stand in `detect`'s model slot: model attributes, parameter count, device and mode."""
    for attribute in ("f", "i", "type"):
        if hasattr(detect, attribute):
            setattr(new, attribute, getattr(detect, attribute))
    new.np = sum(p.numel() for p in new.parameters())
    return new.to(next(detect.parameters()).device).train(detect.training)
