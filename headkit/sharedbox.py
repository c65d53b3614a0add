"""Box branches computed once in a merged model: a head whose box branch at a level is the base's, reading the base's
own map there, takes the base's output instead of running the same layers again.

A head trained with `box_branch="shared"` (`headkit.train`) keeps the base's box branch frozen at the levels where its
Detect reads the base's own maps (a head-only head: every level; a P3-path head: P4 and P5). Its tensors there equal
the base's bit for bit, so the same layers on the same input give the same output: sharing them changes no value,
it only saves the time. Nothing is taken on trust: levels are shared only where the tensors are equal and the input
is the same base layer's output.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from ultralytics.nn.modules.head import Detect

from .branch import Branch, BranchDetect, detect_of

BOX_BRANCHES = ("cv2", "one2one_cv2")  # the one-to-many and NMS-free box branches, one Sequential per level


class SharedBox(nn.Sequential):
    """One level's box branch that several heads of a merged model hold: the same layers (the same modules, so
    Ultralytics fuses them once), run once per input map. The last input and output are kept until `forget`."""

    def __init__(self, layers: nn.Sequential):
        super().__init__(*layers)
        self._last: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = self._last
        if last is not None and last[0] is x:  # the same map object: another head already ran these layers on it
            return last[1]
        out = super().forward(x)
        self._last = (x, out)
        return out

    def forget(self) -> None:
        """Drop the kept map and output (the merged Detect calls this when a forward ends)."""
        self._last = None


def _sources(head: Detect | Branch, base_inputs: Sequence[int]) -> list[int | None]:
    """Per level, the base layer whose output this head's Detect reads there; None where it reads a map of its own."""
    if not isinstance(head, Branch):
        return list(base_inputs)
    return [j if j in head.inputs else None for j in head.detect_from]


def _same(a: nn.Module, b: nn.Module) -> bool:
    ours, theirs = a.state_dict(), b.state_dict()
    return ours.keys() == theirs.keys() and all(
        ours[k].shape == theirs[k].shape and ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k])
        for k in ours
    )


def share_box_branches(heads: Sequence[Detect | Branch], base_inputs: Sequence[int]) -> list[SharedBox]:
    """Let heads whose box branch at a level reads the same base map with equal tensors hold one `SharedBox` there.

    Args:
        heads: the merged Detect's heads (Detects reading the base's maps, Branches).
        base_inputs: the base Detect's input layers, one per level (what a plain Detect head reads).

    Returns:
        The shared levels' modules (each held by at least two heads), for `forget` after each forward.
    """
    shared: list[SharedBox] = []
    for name in BOX_BRANCHES:
        groups: dict[tuple[int, int], list[tuple[nn.ModuleList, nn.Sequential]]] = {}
        for head in heads:
            levels = getattr(detect_of(head), name, None)
            if levels is None:
                continue
            for level, source in enumerate(_sources(head, base_inputs)):
                if source is None:
                    continue
                owners = groups.setdefault((level, source), [])
                first = next((held for _, held in owners if _same(held, levels[level])), None)
                owners.append((levels, first if first is not None else levels[level]))
        for (level, _), owners in groups.items():
            for module in {id(held): held for _, held in owners}.values():
                holders = [levels for levels, held in owners if held is module]
                if len(holders) < 2:
                    continue
                box = SharedBox(module)
                for levels in holders:
                    levels[level] = box
                shared.append(box)
    return shared


def base_box_levels(slot: Detect) -> list[int]:
    """The levels at which a training model's Detect slot reads the base's own maps: every level of a head-only
    head's Detect, the levels a path branch (`BranchDetect`) takes from the base (P4, P5 for "p3")."""
    head = slot.branch if isinstance(slot, BranchDetect) else slot
    return [level for level, source in enumerate(_sources(head, range(slot.nl))) if source is not None]


def freeze_base_box(model: nn.Module, frozen_names: list[str]) -> list[str]:
    """Keep the box branch of a training model's Detect slot the base's where it reads the base's own maps: those
    parameters stop training and their BatchNorm layers stay in eval mode (their names join the trainer's frozen
    names, which Ultralytics reads each epoch), so the trained head's tensors there equal the base's.

    Returns:
        The name prefixes frozen (none when the slot does not ask for it: `shares_base_box`).
    """
    slot = model.model[-1]
    if not getattr(slot, "shares_base_box", False):
        return []
    detect = slot.detect if isinstance(slot, BranchDetect) else slot
    inner = f"model.{slot.i}." + ("branch.detect." if isinstance(slot, BranchDetect) else "")
    prefixes = [
        f"{inner}{name}.{level}."
        for name in BOX_BRANCHES
        if getattr(detect, name, None) is not None
        for level in base_box_levels(slot)
    ]
    for name, parameter in model.named_parameters():
        if name.startswith(tuple(prefixes)):
            parameter.requires_grad = False
    frozen_names.extend(prefixes)
    return prefixes
