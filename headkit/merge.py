"""ConcatHead and merge(): the one place that joins Detect heads. Nothing in Ultralytics is patched.

ConcatHead is a Detect (without branches of its own) so that Ultralytics' own seams reach it: the predictor,
validator and exporter choose the NMS-free branch with `model.end2end = ...`, which only a Detect receives.

A merged model is exact (each class's boxes and confidences are what its own head alone gives) under Ultralytics'
default per-class NMS. Class-agnostic NMS would let one head's boxes suppress another's, so merged models refuse it
through per-model callbacks (`guard_merged`), never through a global patch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from ultralytics import YOLO
from ultralytics.nn.modules.head import Detect

from .branch import Branch, check_branch_fits_base
from .filenames import safe_name
from .headfile import Head, check_layout, describe_detect
from .limits import Limits, output_mb
from .model import clone_model, ensure_detect_base, model_source
from .settings import current_limits
from .trunk import detection_model, fingerprint

LOGGER = logging.getLogger(__name__)


class ConcatHead(Detect):
    """Run several Detect heads on the same feature maps and join their predictions into one.

    A Detect to Ultralytics (so its predictor, validator, exporter and `fuse()` reach it, e.g. to pick the NMS-free
    branch), with no branches of its own. Two output modes, as every head in it:

    - one-to-many (YOLOv8, YOLO11, and YOLO26 with external NMS): shape (B, 4 + sum(nc), heads * anchors); head k owns
      anchor columns [k*A, (k+1)*A) with its own boxes and class rows 4 + offset_k ... 4 + offset_k + nc_k; its
      scores for every other head's classes are zero, so NMS sees each head's candidates as that head alone makes them.
    - end-to-end (YOLO26 with `nms=False`): each head selects its own top `max_det` rows (B, k, 6); their class ids
      are offset and the rows stacked, the base head's first, so a per-image cap keeps the base's detections whole.
    """

    cv2 = None  # no one-to-many branch of its own (read by Ultralytics' fuse checks)

    def __init__(self, heads: Sequence[Detect | Branch], *, features: int = 3, shared: Sequence[int] = ()):
        """
        Args:
            heads: Detect heads (read the base head's feature maps) and Branch heads (read shared layers' outputs).
            features: how many of the inputs are the base head's feature maps; the rest are the outputs of the
                `shared` layers, in that order, for the branches.
        """
        nn.Module.__init__(self)  # Detect.__init__ would build branches this head does not have
        self.heads = nn.ModuleList(heads)
        self.features = int(features)
        self.shared = [int(i) for i in shared]
        self.nc = sum(head.nc for head in heads)
        self.reg_max = _detect(heads[0]).reg_max
        self.nl = _detect(heads[0]).nl
        self.no = self.nc + self.reg_max * 4
        self.stride = _detect(heads[0]).stride.clone()

    @property
    def end2end(self) -> bool:
        """True when every head runs its NMS-free one-to-one branch (Ultralytics reads this through the model)."""
        return all(_detect(head).end2end for head in self.heads)

    @end2end.setter
    def end2end(self, value: bool) -> None:
        for head in map(_detect, self.heads):
            if getattr(head, "one2one_cv2", None) is not None:
                head.end2end = value

    @property
    def max_det(self) -> int:
        return _detect(self.heads[0]).max_det

    @max_det.setter
    def max_det(self, value: int) -> None:  # the predictor and validator set it per call; each head selects its own
        for head in map(_detect, self.heads):
            head.max_det = value

    @property
    def agnostic_nms(self) -> bool:
        return _detect(self.heads[0]).agnostic_nms

    @agnostic_nms.setter
    def agnostic_nms(self, value: bool) -> None:
        for head in map(_detect, self.heads):
            head.agnostic_nms = value

    def forward(self, x: list[torch.Tensor]):
        """Training mode: each head's raw dict. Export mode: the joined tensor. Otherwise (joined, raw dicts)."""
        features, shared = list(x[: self.features]), dict(zip(self.shared, x[self.features :], strict=True))
        outputs = [
            head([shared[i] for i in head.inputs]) if isinstance(head, Branch) else head(list(features))
            for head in self.heads
        ]
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
        for head in map(_detect, self.heads):
            head.stride, head.anchors, head.strides = fn(head.stride), fn(head.anchors), fn(head.strides)
        return self


def _detect(head: Detect | Branch) -> Detect:
    return head.detect if isinstance(head, Branch) else head


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
    """Refuse a head made for another trunk or channel layout, with both sides in the message.

    Everything is compared as data with the base's own facts (layout, rows, tensor shapes, fingerprint) before any
    module is built; a head's declared layout is bounded first (`headfile.check_layout`).
    """
    check_layout(head.metadata, f"head '{_short(str(head.metadata.get('label') or 'unnamed'))}'")
    base_detect = detection_model(base).model[-1]
    layout = describe_detect(base_detect)
    label = head.label
    ours_e2e, theirs_e2e = bool(layout["end2end"]), bool(head.metadata.get("end2end", False))
    if ours_e2e != theirs_e2e:

        def name(e2e: bool) -> str:
            return "end-to-end (NMS-free, YOLO26)" if e2e else "one-to-many (NMS, YOLOv8/YOLO11)"

        raise ValueError(
            f"head '{label}' has a {name(theirs_e2e)} Detect layout, but this base's head is {name(ours_e2e)}; a head "
            "joins only a base of its own layout — load the base it was trained on, or train the head on this base"
        )
    if head.channels != layout["channels"] or head.metadata["reg_max"] != layout["reg_max"]:
        raise ValueError(
            f"head '{label}' expects feature maps with {head.channels} channels (reg_max {head.metadata['reg_max']}), "
            f"but this base provides {layout['channels']} (reg_max {layout['reg_max']}); it was made for another "
            "model size or family — load the base it was trained on, or train the head on this base"
        )
    if [float(s) for s in head.metadata["strides"]] != layout["strides"]:
        raise ValueError(
            f"head '{label}' expects feature maps at strides {head.metadata['strides']}, but this base's are "
            f"{layout['strides']}; load the base it was trained on, or train the head on this base"
        )
    start = head.kind.branch_start
    if start is not None:
        check_branch_fits(head, base)
    ours = fingerprint(base, upto=start) if start is not None else base_fingerprint or fingerprint(base)
    if head.base_fingerprint != ours:
        raise ValueError(
            f"head '{label}' was trained on base sha256 {str(head.base_fingerprint)[:12]}…, but this base is "
            f"{ours[:12]}…; load the matching base ({head.metadata.get('base_source') or 'source not recorded'}) "
            "or train the head on this base"
        )


def check_branch_fits(head: Head, base) -> None:
    """Refuse a branch head whose recorded rows, indices or tensor shapes are not the base's own, before building.

    Its layers will be deep copies of the base's layers from its start on, so the file's rows are compared with the
    base's as data (naming the first differing row) and its tensors' shapes with those layers'.
    """
    branch = head.metadata.get("branch")
    start, layers = branch.get("start") if isinstance(branch, dict) else None, len(detection_model(base).model)
    if not (isinstance(start, int) and 1 <= start < layers - 1):
        raise ValueError(
            f"head '{head.label}' owns layers from {start} on, but this base has layers 0..{layers - 1}; load the base "
            "it was trained on"
        )
    shapes = {key: tuple(value.shape) for key, value in head.tensors.items()}
    where = f"head '{head.label}' (its own copy of layers {start}..{layers - 2})"
    check_branch_fits_base(branch, shapes, base, where)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_merge_size(base_classes: int, heads: Sequence[Head], *, limits: Limits) -> None:
    """Refuse a merge over the limits from the heads' metadata alone, before any module is built.

    Args:
        base_classes: classes the merged model keeps from the base (0 when its head is dropped).

    Raises:
        LimitExceeded: too many heads, a head with too many classes, or too many classes in total.
    """
    limits.check("max_heads", len(heads), "extra heads in one merge")
    for k, head in enumerate(heads):
        limits.check("max_classes", head.nc, f"classes of head {k + 1} ('{_short(head.label)}')")
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
        inner = detection_model(model_or_counts)
        last = inner.model[-1]
        classes, heads = len(inner.names), len(last.heads) if isinstance(last, ConcatHead) else 1
    size = output_mb(classes, heads, int(imgsz))
    (limits or current_limits()).check(
        "max_output_mb",
        round(size, 1),
        f"raw output of the merged model ({classes} classes, {heads} heads, {imgsz} px) in MiB",
    )
    return size


_AGNOSTIC_WHY = (
    "class-agnostic NMS lets one head's boxes suppress another head's (a new head's box can remove a base "
    "detection), so the base classes would no longer be exactly the base's"
)


def _refuse_agnostic_predict(predictor) -> None:
    """on_predict_start: predict/track with agnostic_nms on a merged model would not be exact."""
    if getattr(predictor.args, "agnostic_nms", False):
        raise ValueError(
            f"agnostic_nms=True is refused on a merged model: {_AGNOSTIC_WHY}; predict with agnostic_nms=False (the "
            "default), or run the base and each head's model (merge(base, head, keep_base_head=False)) separately "
            "and apply class-agnostic NMS to each"
        )


def _refuse_agnostic_val(validator) -> None:
    """on_val_start: single_cls / agnostic_nms validation runs class-agnostic NMS across the heads."""
    for setting in ("single_cls", "agnostic_nms"):
        if getattr(validator.args, setting, False):
            raise ValueError(
                f"{setting}=True is refused on a merged model: it validates with class-agnostic NMS, and "
                f"{_AGNOSTIC_WHY}; validate with {setting}=False (per-class NMS, the default), or validate the base "
                "or each head's model (merge(base, head, keep_base_head=False)) on its own"
            )


def _refuse_baked_nms(exporter) -> None:
    """on_export_start: a merged model exports its raw joined output; NMS runs where the file is loaded.

    Ultralytics' NMS wrapper was written for one Detect head; its exactness for several joined heads is unproven, so
    it is refused rather than trusted.
    """
    if getattr(exporter.args, "nms", None):
        raise ValueError(
            "export(nms=True) is refused on a merged model: NMS is not baked into its graph, so that every head's "
            "candidates stay exactly its own; export with nms unset (the default) — ultralytics.YOLO(file).predict "
            "runs per-class NMS on the output — or, for a YOLO26 base, nms=False for its NMS-free output"
        )


_GUARDS = (
    ("on_predict_start", _refuse_agnostic_predict),
    ("on_val_start", _refuse_agnostic_val),
    ("on_export_start", _refuse_baked_nms),
)


def guard_merged(model: YOLO) -> YOLO:
    """Make a model whose last layer is a ConcatHead refuse class-agnostic NMS and baked-in NMS; others pass unchanged.

    The refusal lives in this model's own callbacks (`model.add_callback`), so it holds for every predict, track, val
    and export call on it and touches nothing global. Call it on any merged model loaded from a `.pt` (callbacks are not
    saved with the weights); calling it twice adds nothing.
    """
    if isinstance(detection_model(model).model[-1], ConcatHead):
        for event, guard in _GUARDS:
            if guard not in model.callbacks.get(event, []):
                model.add_callback(event, guard)
    return model


def merged_file_name(base, heads: Sequence[Head], *, keep_base_head: bool = True) -> Path:
    """`<base>+<head>+….pt` in the working directory: what the merged model's exports are named after.

    Ultralytics names an export after the model's `pt_path` and writes it beside that file; a merged model copied
    that path from its base, so `merged.export()` would have written over the base's own export, next to the base's
    weights (often a shared cache). The merged model gets a name of its own instead, where Ultralytics puts new runs.
    """
    stem = Path(str(model_source(base) or getattr(detection_model(base), "pt_path", None) or "base")).stem
    parts = ([safe_name(stem, default="base")] if keep_base_head else []) + [safe_name(h.label) for h in heads]
    return Path.cwd() / ("+".join(parts)[:120] + ".pt")


def merge(base: YOLO, *heads: Head, keep_base_head: bool = True, limits: Limits | None = None) -> YOLO:
    """One model = the base trunk (byte for byte), the base's own head (if kept) and each extra head side by side.

    Class indices: the base's names first, then each head's in the order given. With a single head in total the
    result is a plain Detect model (no ConcatHead), e.g. the trunk + one new head. A model with several heads
    refuses class-agnostic NMS (see `guard_merged`).

    Args:
        limits: caps on heads and classes, checked before anything is built; default
            `headkit.settings.current_limits()` (the defaults, or `HEADKIT_MAX_*` variables).

    Raises:
        ValueError: the base cannot carry heads, or a head does not fit this base.
        LimitExceeded: more heads or classes than `limits` allow.
    """
    ensure_detect_base(base)
    if not heads and not keep_base_head:
        raise ValueError("nothing to merge: give at least one head, or keep the base head")
    base_classes = len(detection_model(base).names) if keep_base_head else 0
    check_merge_size(base_classes, heads, limits=limits or current_limits())
    base_fingerprint = fingerprint(base)
    for head in heads:
        check_head_fits(head, base, base_fingerprint=base_fingerprint)

    merged = clone_model(base)
    inner = detection_model(merged)
    old = inner.model[-1]
    parameter = next(old.parameters())
    built = [
        head.build_branch(base, device=parameter.device, dtype=parameter.dtype)
        if head.kind.is_branch
        else head.build(device=parameter.device, dtype=parameter.dtype)
        for head in heads
    ]
    detects = ([old] if keep_base_head else []) + built
    names = _unique_names(([inner.names] if keep_base_head else []) + [head.names for head in heads])

    if len(detects) == 1 and isinstance(detects[0], Branch):  # the trunk + one branch head: a plain model
        branch = detects[0]
        for layer in branch.layers:
            inner.model[layer.i] = layer
        detects = [branch.detect]
    shared = sorted({i for d in detects if isinstance(d, Branch) for i in d.inputs})
    if len(detects) == 1:
        new = detects[0]
        new.f, new.type = old.f, "Detect"
    else:
        new = ConcatHead(detects, features=len(old.f), shared=shared)
        new.f, new.type = [*old.f, *shared], "headkit.merge.ConcatHead"
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
    merged.headkit_fingerprint = base_fingerprint
    inner.pt_path = merged.ckpt_path = str(merged_file_name(base, heads, keep_base_head=keep_base_head))
    guard_merged(merged)
    LOGGER.info("merged %d head(s) onto %s: %d classes", len(heads), base_fingerprint[:12], len(names))
    return merged
