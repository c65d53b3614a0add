"""What kind of head a head is: how it was trained and which of the base's layers it owns.

The one place `headfile`, `merge` and `train` read a head's kind from. A head-only head owns just its Detect layer and
reads the base's own neck outputs; a branch head owns a trained copy of every layer from its branch start on (the
neck, for `branch="neck"`) and reads only the shared layers before that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .labels import is_int
from .trunk import base_facts

PLAIN = "plain"
KEYPOINT_TRICK = "keypoint-trick"
LEGACY_PTH = "imported-legacy-pth"
BRANCH_CHOICES = ("head", "neck")


@dataclass(frozen=True)
class HeadKind:
    """How a head was made and what it owns.

    Attributes:
        trained_with: "plain", "keypoint-trick" or "imported-legacy-pth".
        branch_start: the first base layer the head owns a copy of; None for a head-only head (the Detect alone).
    """

    trained_with: str = PLAIN
    branch_start: int | None = None

    @property
    def is_branch(self) -> bool:
        return self.branch_start is not None

    def describe(self) -> str:
        """How people name it: "head only", "branch from layer 10", with ", keypoint trick" where it applies."""
        text = f"branch from layer {self.branch_start}" if self.is_branch else "head only"
        return text + (", keypoint trick" if self.trained_with == KEYPOINT_TRICK else "")

    @classmethod
    def of(cls, metadata: dict[str, Any]) -> HeadKind:
        branch = metadata.get("branch") or {}
        start = branch.get("start") if isinstance(branch, dict) else None
        if not is_int(start):  # a file's text; `headfile` refuses a bad start
            start = None
        return cls(str(metadata.get("trained_with") or PLAIN), start)


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
        raise ValueError(f"branch={branch!r}: expected 'head', 'neck' or a layer index (1..{head - 1})")
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


def branch_inputs(base, start: int) -> list[int]:
    """The shared layers (before `start`) whose outputs the layers from `start` on read, in ascending order."""
    layers = base_facts(base).layers
    needed: set[int] = set()
    for layer in layers[start:]:
        sources = [layer.f] if isinstance(layer.f, int) else list(layer.f)
        for source in sources:
            index = layer.i - 1 if source == -1 else source % len(layers)
            if index < start:
                needed.add(index)
    return sorted(needed)
