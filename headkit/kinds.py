"""What kind of head a head is: how it was trained and which of the base's layers it owns.

The one place `headfile`, `merge` and `train` read a head's kind from. A head-only head owns just its Detect layer and
reads the base's own neck outputs; a branch head owns a trained copy of every layer from its branch start on (the
neck, for `branch="neck"`) and reads only the shared layers before that. A path head (`branch="p3"`) owns only the
layers that feed the Detect's first input after the backbone (YOLOv8: the top-down path 10-15) and reads the base's
own maps for the other inputs, so it costs a few neck layers where the neck branch costs them all; `branch="p3-last"`
owns only that path's last stage (YOLOv8: 13-15), cheaper still.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .detect import NARROW
from .labels import is_int
from .trunk import base_facts

PLAIN = "plain"
KEYPOINT_TRICK = "keypoint-trick"
LEGACY_PTH = "imported-legacy-pth"
BRANCH_CHOICES = ("head", "neck", "p3", "p3-last")


@dataclass(frozen=True)
class PathChoice:
    """A path branch: the Detect input (level) whose feeding layers the head owns; `last_stage`: only the layers
    after the path's last map that the base reads elsewhere too (`path_range`)."""

    level: int
    last_stage: bool = False


PATH_CHOICES = {"p3": PathChoice(0), "p3-last": PathChoice(0, last_stage=True)}


@dataclass(frozen=True)
class Shape:
    """A named head shape the app and the run layer offer: what `train_head` gets as `branch`, `class_width` and
    `box_branch`."""

    branch: str
    class_width: int | str | None = None
    box_branch: str = "own"


# Measured on the plates (README, "Head shapes"): "p3-last-narrow" is the cheap exact point (fine-tune accuracy at
# 1.18x the base's GFLOPs); "p3-narrow" a little more accurate and costlier; "head" the smallest file; "neck" the most
# accurate.
SHAPES = {
    "head": Shape("head"),
    "p3-last-narrow": Shape("p3-last", NARROW),
    "p3-narrow": Shape("p3", NARROW),
    "neck": Shape("neck"),
}


@dataclass(frozen=True)
class HeadKind:
    """How a head was made and what it owns.

    Attributes:
        trained_with: "plain", "keypoint-trick" or "imported-legacy-pth".
        branch_start: the first base layer the head owns a copy of; None for a head-only head (the Detect alone).
        branch_end: one past the last layer a path head owns (its other Detect inputs are the base's own maps);
            None when the head owns every layer from its start to the Detect.
    """

    trained_with: str = PLAIN
    branch_start: int | None = None
    branch_end: int | None = None

    @property
    def is_branch(self) -> bool:
        return self.branch_start is not None

    @property
    def shares_upto(self) -> int | None:
        """The layers its base fingerprint covers (those before this index; None: the whole trunk). A path head reads
        the base's own maps after its layers, which depend on the whole trunk."""
        return self.branch_start if self.branch_end is None else None

    def describe(self) -> str:
        """How people name it: "head only", "branch from layer 10", "branch of layers 10-15" (a path head), with
        ", keypoint trick" where it applies."""
        text = f"branch from layer {self.branch_start}" if self.is_branch else "head only"
        if self.is_branch and self.branch_end is not None:
            text = f"branch of layers {self.branch_start}-{self.branch_end - 1}"
        return text + (", keypoint trick" if self.trained_with == KEYPOINT_TRICK else "")

    @classmethod
    def of(cls, metadata: dict[str, Any]) -> HeadKind:
        branch = metadata.get("branch") or {}
        start = branch.get("start") if isinstance(branch, dict) else None
        end = branch.get("end") if isinstance(branch, dict) else None
        if not is_int(start):  # a file's text; `headfile` refuses a bad start
            start = None
        return cls(
            str(metadata.get("trained_with") or PLAIN), start, end if is_int(end) and start is not None else None
        )


def resolve_branch(base, branch: str | int) -> int | None:
    """The first layer a new head owns: None for "head", the first layer after the backbone for "neck", else the int.

    The backbone's length is read from the base's architecture (`backbone:` rows), never assumed: 10 for YOLOv8, 11
    for YOLO11.

    Raises:
        ValueError: an unknown choice, or a layer outside the trunk (it must leave at least one shared layer and end
            before the Detect layer).
    """
    facts = base_facts(base)
    head = facts.head_index
    if isinstance(branch, str) and not branch.strip().lstrip("-").isdigit():
        choice = branch.strip().lower()
        if choice == "head":
            return None
        if choice == "neck":
            backbone = (getattr(facts.inner, "yaml", None) or {}).get("backbone")
            if not backbone:
                raise ValueError(
                    "the base records no architecture (`backbone:` rows); pass the branch start as a layer"
                )
            return len(backbone)
        if choice in PATH_CHOICES:
            return path_range(base, PATH_CHOICES[choice])[0]
        raise ValueError(
            f"branch={branch!r}: expected 'head', 'neck' or a layer index (1..{head - 1}), 'p3' (only the layers "
            "feeding the Detect's P3 input) or 'p3-last' (only that path's last stage)"
        )
    start = int(branch)
    if start == head:
        return None
    if not 1 <= start < head:
        where = "is the Detect head or beyond" if start > head else "leaves no shared layer"
        raise ValueError(
            f"branch={start}: layer {start} {where}; this base has layers 0..{head} with its Detect head at {head}, "
            f"so a branch starts at a layer in 1..{head - 1} ('neck' picks the first layer after the backbone)"
        )
    return start


def branch_end(base, branch: str | int) -> int | None:
    """One past the last layer a new head owns: the end of a path branch ("p3", "p3-last"), else None (up to the
    Detect)."""
    choice = branch.strip().lower() if isinstance(branch, str) else None
    return path_range(base, PATH_CHOICES[choice])[1] if choice in PATH_CHOICES else None


def _sources(layer, count: int) -> list[int]:
    return [layer.i - 1 if s == -1 else s % count for s in ([layer.f] if isinstance(layer.f, int) else layer.f)]


def path_range(base, choice: PathChoice) -> tuple[int, int]:
    """The layers after the backbone that feed the Detect's input `choice.level` (0: the finest, P3), as start, end.

    Worked out from the base's rows (each layer's `f`), never assumed: YOLOv8's P3 path is 10..15 (10, 16), YOLO11's
    11..16. They must be one run of layers after the backbone that none of the other Detect inputs is among. Its last
    stage (`choice.last_stage`) starts after the path's last layer that a layer outside the path also reads (YOLOv8:
    C2f 12, which the bottom-up path reads again), so the branch's input there is a map the base computes anyway:
    YOLOv8 13..15, YOLO11 14..16.

    Raises:
        ValueError: the base records no backbone, its input `level` comes straight from the backbone, the path is not
            one run of layers, it holds another Detect input (owning it would be the neck branch), or (last stage)
            no layer of the path is read from outside it (the last stage would be the whole path: use the path).
    """
    facts = base_facts(base)
    backbone = (getattr(facts.inner, "yaml", None) or {}).get("backbone")
    level = choice.level
    name = f"branch='p{level + 3}{'-last' if choice.last_stage else ''}'"
    if not backbone:
        raise ValueError(f"{name}: the base records no architecture (`backbone:` rows); use branch='neck' or a layer")
    first, count, target = len(backbone), len(facts.layers), facts.detect_from[level]
    owned, todo = set(), [target]
    while todo:
        index = todo.pop()
        if index >= first and index not in owned:
            owned.add(index)
            todo.extend(_sources(facts.layers[index], count))
    span = set(range(min(owned, default=first), target + 1))
    others = [j for j in facts.detect_from if j != target and j in span]
    if not owned or owned != span or others:
        why = (
            "comes straight from the backbone" if not owned
            else f"is fed by layers {sorted(owned)}, not one run of layers" if owned != span
            else f"takes in the Detect's other input(s) {others}"
        )  # fmt: skip
        raise ValueError(
            f"{name}: on this base the Detect's input {level} (layer {target}) {why}; a path branch does not apply "
            "here — use branch='neck' or branch='head'"
        )
    start, end = min(owned), target + 1
    if not choice.last_stage:
        return start, end
    read_outside = [
        index
        for layer in [*facts.layers[:start], *facts.layers[end:]]
        for index in _sources(layer, count)
        if start <= index < target
    ]
    if not read_outside:
        raise ValueError(
            f"{name}: on this base no layer of the path {start}..{target} to the Detect's input {level} is read from "
            f"outside it, so its last stage is the whole path — use branch='p{level + 3}'"
        )
    return max(read_outside) + 1, end


def branch_inputs(base, start: int, end: int | None = None) -> list[int]:
    """The base layers a branch owning layers `start`..end-1 reads (default end: the Detect), ascending: those its
    layers and its Detect read that it does not own (for a path branch, also the base's own later maps)."""
    facts = base_facts(base)
    layers, end = facts.layers, facts.head_index if end is None else end
    needed: set[int] = set()
    for layer in [*layers[start:end], layers[facts.head_index]]:
        needed |= {index for index in _sources(layer, len(layers)) if not start <= index < end}
    return sorted(needed)
