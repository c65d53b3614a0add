"""merge(): one model from a base and extra heads, after every check that they fit. Nothing in Ultralytics is patched.

Several heads are joined by a `ConcatHead` (`headkit.concat`); `headkit.nms.guard_merged` keeps the merged model exact:
NMS per head, and class-agnostic NMS (one head's boxes suppressing another's) refused, through the model's own seams.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .base import clone_model, ensure_detect_base, model_source
from .branch import Branch, check_branch_fits_base
from .concat import ConcatHead
from .detect import HeadDoesNotFit
from .filenames import safe_name
from .headfile import Head
from .labels import clip, is_int
from .limits import Limits, output_mb
from .settings import current_limits
from .trunk import base_facts, detection_model, fingerprint

if TYPE_CHECKING:
    from ultralytics import YOLO

LOGGER = logging.getLogger(__name__)


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


def check_head_fits(head: Head, base) -> None:
    """Refuse a head made for another trunk or Detect layout, with both sides in the message: the one fit check.

    Everything is compared as data with the base's own facts (`trunk.BaseFacts`: Detect layout, rows, tensor shapes,
    fingerprint) before any module is built; the head's declared layout is bounded first (`Head.layout`). What passes
    is built without being compared again (`Head.build`, `Head.assemble_branch`).

    Raises:
        ValueError: a malformed head (layout out of bounds, branch metadata not of headkit's form).
        HeadDoesNotFit: a well-formed head made for another base.
    """
    where = head.where
    head.layout.check_fits(base_facts(base).layout, where)
    start = head.kind.branch_start
    if start is not None:
        check_branch_fits(head, base)
    ours = fingerprint(base, upto=head.kind.shares_upto)  # a path head reads the base's own later maps too
    if head.base_fingerprint != ours:
        raise HeadDoesNotFit(
            f"{where} was trained on base sha256 {str(head.base_fingerprint)[:12]}…, but this base is "
            f"{ours[:12]}…; load the matching base ({head.metadata.get('base_source') or 'source not recorded'}) "
            "or train the head on this base"
        )


def check_branch_fits(head: Head, base) -> None:
    """Refuse a branch head whose recorded rows, indices or tensor shapes are not the base's own, before building.

    Its layers will be deep copies of the base's layers from its start on, so the file's rows are compared with the
    base's as data (naming the first differing row) and its tensors' shapes with those layers'.

    Raises:
        ValueError: malformed branch metadata.
        HeadDoesNotFit: a start, row, index or shape other than this base's.
    """
    branch = head.metadata.get("branch")
    start, layers = branch.get("start") if isinstance(branch, dict) else None, len(base_facts(base).layers)
    if not (is_int(start) and 1 <= start < layers - 1):
        raise HeadDoesNotFit(
            f"{head.where} owns layers from {start} on, but this base has layers 0..{layers - 1}; load the base "
            "it was trained on"
        )
    shapes = {key: tuple(value.shape) for key, value in head.tensors.items()}
    end = branch.get("end", layers - 1)
    where = f"{head.where} (its own copy of layers {start}..{end - 1 if is_int(end) else end})"
    check_branch_fits_base(branch, shapes, base, where)


def check_merge_size(base_classes: int, heads: Sequence[Head], *, limits: Limits) -> None:
    """Refuse a merge over the limits from the heads' metadata alone, before any module is built.

    Args:
        base_classes: classes the merged model keeps from the base (0 when its head is dropped).

    Raises:
        LimitExceeded: too many heads, a head with too many classes, or too many classes in total.
    """
    limits.check("max_heads", len(heads), "extra heads in one merge")
    for k, head in enumerate(heads):
        limits.check("max_classes", head.nc, f"classes of head {k + 1} ('{clip(head.label, 60)}')")
    total = base_classes + sum(head.nc for head in heads)
    limits.check(
        "max_merged_classes", total, f"classes of the merged model ({base_classes} from the base + the heads')"
    )


def check_output_size(model_or_counts, imgsz: int, limits: Limits | None = None) -> float:
    """Refuse a merged model whose raw output for one `imgsz` image is over `max_output_mb`; return its MiB.

    Args:
        model_or_counts: a (merged) YOLO model, or a (classes, heads) pair counted before merging, where heads
            counts every Detect head the model runs, the base's included.
        imgsz: model input size in pixels (longer side).
        limits: default `headkit.settings.current_limits()`.

    Raises:
        LimitExceeded: (4 + classes) x (heads x anchors) float32 values are over `max_output_mb`.
    """
    if isinstance(model_or_counts, tuple | list):
        classes, heads = (int(n) for n in model_or_counts)
    else:
        facts = base_facts(model_or_counts)
        last = facts.detect
        classes, heads = len(facts.names), len(last.heads) if isinstance(last, ConcatHead) else 1
    size = output_mb(classes, heads, int(imgsz))
    (limits or current_limits()).check(
        "max_output_mb",
        round(size, 1),
        f"raw output of the merged model ({classes} classes, {heads} heads, {imgsz} px) in MiB",
    )
    return size


def merged_file_name(base, heads: Sequence[Head], *, keep_base_head: bool = True) -> Path:
    """`<base>+<head>+….pt` in the working directory: what the merged model's exports are named after.

    Ultralytics names an export after the model's `pt_path` and writes it beside that file; a merged model copied
    that path from its base, so `merged.export()` would have written over the base's own export, next to the base's
    weights (often a shared cache). The merged model gets a name of its own instead, where Ultralytics puts new runs.
    """
    stem = Path(str(model_source(base) or getattr(base_facts(base).inner, "pt_path", None) or "base")).stem
    parts = ([safe_name(stem, default="base")] if keep_base_head else []) + [safe_name(h.label) for h in heads]
    return Path.cwd() / ("+".join(parts)[:120] + ".pt")


def merge(base: YOLO, *heads: Head, keep_base_head: bool = True, limits: Limits | None = None) -> YOLO:
    """One model = the base trunk (byte for byte), the base's own head (if kept) and each extra head side by side.

    Class indices: the base's names first, then each head's in the order given. With a single head in total the
    result is a plain Detect model (no ConcatHead), e.g. the trunk + one new head. A model with several heads runs
    NMS per head, so each head's detections are exactly its own, and refuses class-agnostic NMS (`headkit.nms`).

    Args:
        limits: caps on heads and classes, checked before anything is built; default
            `headkit.settings.current_limits()` (the defaults, or `HEADKIT_MAX_*` variables).

    Raises:
        ValueError: the base cannot carry heads, or a head is malformed.
        HeadDoesNotFit: a head made for another base.
        LimitExceeded: more heads or classes than `limits` allow.
    """
    ensure_detect_base(base)
    if not heads and not keep_base_head:
        raise ValueError("nothing to merge: give at least one head, or keep the base head")
    facts = base_facts(base)
    check_merge_size(len(facts.names) if keep_base_head else 0, heads, limits=limits or current_limits())
    for head in heads:
        check_head_fits(head, base)

    merged = clone_model(base)
    inner = detection_model(merged)  # the copy's own model, rebuilt below
    old = inner.model[-1]
    parameter = next(old.parameters())
    built = [  # checked above, once: built without comparing again
        head.assemble_branch(base, device=parameter.device, dtype=parameter.dtype)
        if head.kind.is_branch
        else head.build(device=parameter.device, dtype=parameter.dtype)
        for head in heads
    ]
    detects = ([old] if keep_base_head else []) + built
    names = _unique_names(([inner.names] if keep_base_head else []) + [head.names for head in heads])

    if len(detects) == 1 and isinstance(detects[0], Branch) and detects[0].end == old.i:  # trunk + branch: plain
        branch = detects[0]
        for layer in branch.layers:
            inner.model[layer.i] = layer
        detects = [branch.detect]
    shared = sorted({i for d in detects if isinstance(d, Branch) for i in d.inputs})
    if len(detects) == 1 and not isinstance(detects[0], Branch):  # a lone path branch reads the base's maps: joined
        new = detects[0]
        new.f, new.type = old.f, "Detect"
    else:
        new = ConcatHead(detects, features=len(old.f), shared=shared, base_inputs=old.f)
        new.f, new.type = [*old.f, *shared], f"{ConcatHead.__module__}.ConcatHead"
        inner.save = sorted(set(inner.save) | set(shared))  # keep the shared layers' outputs for the branches
    new.i = old.i
    new.np = sum(p.numel() for p in new.parameters())
    new.inplace = getattr(old, "inplace", True)
    new.train(old.training)  # a fresh module starts in training mode; keep the base's mode
    inner.model[-1] = new
    inner.names = names
    inner.nc = len(names)
    inner.yaml = {**inner.yaml, "nc": len(names)}
    merged.headkit_source = getattr(base, "headkit_source", None)
    merged.headkit_heads = [head.metadata for head in heads]
    inner.pt_path = merged.ckpt_path = str(merged_file_name(base, heads, keep_base_head=keep_base_head))
    from .nms import guard_merged  # Ultralytics' engine: catalog and hub import this module without running a model

    guard_merged(merged)
    LOGGER.info("merged %d head(s) onto %s: %d classes", len(heads), fingerprint(base)[:12], len(names))
    return merged
