"""NMS for merged models: Ultralytics' own, run once per head, so every head's detections are exactly its own.

Ultralytics' per-class NMS separates classes by shifting each box by `class index x 7,680` pixels in float32. An extra
head's classes sit at other indices in a merged model than alone, so its shifted boxes round differently and an IoU at
the edge of the threshold can fall the other way: a box kept alone is dropped merged, or the reverse. Its caps
(`max_det`, `max_nms`) would also be shared by every head. Here each head's own block of the merged output (its anchor
columns and class rows, or its selected rows when NMS-free) goes through `ultralytics.utils.nms.non_max_suppression`
as the head's output alone would, with its own caps; the kept rows get their class ids offset and are joined, the
base's first. So each head's rows in `predict`, `track` and `val` are bit for bit the rows trunk + that head alone
gives, whatever the machine rounds.

A merged model reaches this through Ultralytics' seams: `guard_merged` makes its wrapper a `MergedYOLO`, whose
`task_map` names `HeadwisePredictor` and `HeadwiseValidator` (the class switch is how Ultralytics' own `YOLO()` turns
into `YOLOWorld`). The same model's callbacks refuse class-agnostic NMS and NMS baked into an export.

Ultralytics' engine is imported here, so modules that catalogue heads without running a model (`catalog`, `hub`)
import this one only inside the functions that need it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from ultralytics import YOLO
from ultralytics.models.yolo.detect import DetectionPredictor, DetectionValidator
from ultralytics.utils import ops
from ultralytics.utils.metrics import DetMetrics, ap_per_class
from ultralytics.utils.nms import non_max_suppression

from .concat import ConcatHead
from .trunk import detection_model

__all__ = ["HeadwisePredictor", "HeadwiseValidator", "MergedYOLO", "guard_merged", "head_blocks", "headwise_nms"]

Blocks = Sequence[tuple[int, int]]
"""(class offset, class count) of each head of a merged model, in order (the base's first when kept)."""


def head_blocks(model: nn.Module | YOLO) -> list[tuple[int, int]] | None:
    """(offset, nc) of each head when the model's last layer is a ConcatHead; None for a one-head model."""
    last = detection_model(model).model[-1]
    if not isinstance(last, ConcatHead):
        return None
    offsets = np.cumsum([0] + [head.nc for head in last.heads])[:-1]
    return [(int(offset), int(head.nc)) for offset, head in zip(offsets, last.heads, strict=True)]


def head_output(prediction: torch.Tensor, blocks: Blocks, k: int, *, end2end: bool) -> torch.Tensor:
    """Head k's block of a merged output, as that head's own model outputs it (class ids from 0).

    Args:
        prediction: one-to-many (B, 4 + sum(nc), heads x anchors), or NMS-free (B, heads x k, 6) rows.
    """
    offset, nc = blocks[k]
    count = len(blocks)
    if end2end:
        rows = prediction.shape[1] // count
        own = prediction[:, k * rows : (k + 1) * rows]
        return torch.cat((own[..., :5], own[..., 5:6] - offset, own[..., 6:]), dim=-1)
    anchors = prediction.shape[2] // count
    own = prediction[..., k * anchors : (k + 1) * anchors]
    return torch.cat((own[:, :4], own[:, 4 + offset : 4 + offset + nc]), dim=1)


def headwise_nms(
    prediction: torch.Tensor | Sequence[torch.Tensor],
    blocks: Blocks,
    *,
    end2end: bool = False,
    classes: Sequence[int] | None = None,
    return_idxs: bool = False,
    **settings,
):
    """`non_max_suppression` once per head on its own block; kept rows class-offset and joined per image, head by head.

    Args:
        prediction: the merged model's output (a tuple's first item is used, as Ultralytics does).
        classes: merged class ids to keep; each head gets its own of them, counted from 0.
        return_idxs: also return, per image, each kept row's index in its head's own output (its anchor).
        settings: `non_max_suppression`'s other keywords (conf_thres, iou_thres, max_det, multi_label, agnostic...),
            applied to each head alone: `max_det` and `max_nms` cap each head's rows.

    Returns:
        Per image (N, 6) rows [x1, y1, x2, y2, conf, merged class], each head's rows in its own order, the first
        head's first; with return_idxs, (rows, indices).
    """
    if isinstance(prediction, list | tuple):
        prediction = prediction[0]
    total = sum(nc for _, nc in blocks)
    expected = prediction.shape[1] % len(blocks) == 0 if end2end else prediction.shape[1] == 4 + total
    if not expected or (not end2end and prediction.shape[2] % len(blocks)):
        raise ValueError(
            f"expected a merged output of {len(blocks)} heads ({total} classes), got shape {tuple(prediction.shape)}; "
            "the model's last layer is not the ConcatHead these blocks were read from"
        )
    wanted = None if classes is None else [int(c) for c in np.atleast_1d(classes)]
    kept, indices = [], []
    for k, (offset, nc) in enumerate(blocks):
        own = None if wanted is None else [c - offset for c in wanted if offset <= c < offset + nc]
        rows, idxs = non_max_suppression(
            head_output(prediction, blocks, k, end2end=end2end),
            classes=own,
            end2end=end2end,
            return_idxs=True,
            **settings,
        )
        kept.append([torch.cat((image[:, :5], image[:, 5:6] + offset, image[:, 6:]), dim=1) for image in rows])
        indices.append(idxs)
    joined = [torch.cat(per_head) for per_head in zip(*kept, strict=True)]
    if not return_idxs:
        return joined
    return joined, [torch.cat([i.view(-1).long() for i in per_head]) for per_head in zip(*indices, strict=True)]


class HeadwisePredictor(DetectionPredictor):
    """DetectionPredictor whose NMS runs per head on a merged model (predict, stream and track alike)."""

    blocks: list[tuple[int, int]] | None = None

    def setup_model(self, model, verbose: bool = True):
        """Read the heads' class blocks from the model (a DetectionModel here) before AutoBackend wraps a copy."""
        self.blocks = head_blocks(model) if isinstance(model, nn.Module) else None
        super().setup_model(model, verbose)

    def postprocess(self, preds, img, orig_imgs, **kwargs):
        """DetectionPredictor.postprocess with `headwise_nms` in place of one NMS over every head's classes."""
        if not self.blocks:
            return super().postprocess(preds, img, orig_imgs, **kwargs)
        save_feats = getattr(self, "_feats", None) is not None
        found = headwise_nms(
            preds,
            self.blocks,
            conf_thres=self.args.conf,
            iou_thres=kwargs.pop("iou", self.args.iou),  # TrackTrack's loose-NMS pass overrides it
            classes=self.args.classes,
            agnostic=self.args.agnostic_nms,
            max_det=self.args.max_det,
            end2end=getattr(self.model, "end2end", False),
            return_idxs=save_feats,
        )
        if not isinstance(orig_imgs, list):
            orig_imgs = ops.convert_torch2numpy_batch(orig_imgs)[..., ::-1]
        rows, idxs = found if save_feats else (found, None)
        results = self.construct_results(rows, img, orig_imgs, **kwargs)
        if save_feats:
            for result, feats in zip(results, self.get_obj_feats(self._feats, idxs), strict=True):
                result.feats = feats
        return results


class HeadwiseMetrics(DetMetrics):
    """DetMetrics that scores each head's classes on that head's statistics alone, exactly as its own val would.

    Ultralytics ranks every row in one unstable sort and picks one max-F1 confidence for all classes, so a class's
    precision and recall, and its AP where scores tie, would depend on the other heads' rows and labels. Here each
    head's per-image statistics are rebuilt as its own validation records them (an image where it keeps nothing
    records empty float64 arrays, as Ultralytics does) and go through `ap_per_class` alone; the per-class results are
    joined, and the means are over every labelled class, as Ultralytics reports them. Plots are Ultralytics' own.
    """

    blocks: list[tuple[int, int]] | None = None

    def process(self, save_dir: Path = Path("."), plot: bool = False, on_plot=None) -> dict[str, np.ndarray]:
        if not self.blocks:
            return super().process(save_dir=save_dir, plot=plot, on_plot=on_plot)
        parts = [_head_results(self.stats, offset, nc) for offset, nc in self.blocks]
        parts = [part for part in parts if len(part[4])]  # heads whose classes have labels
        stats = {k: np.concatenate(v, 0) for k, v in self.stats.items()}
        if plot or not parts:
            everything = ap_per_class(
                stats["tp"],
                stats["conf"],
                stats["pred_cls"],
                stats["target_cls"],
                plot=plot,
                on_plot=on_plot,
                save_dir=save_dir,
                names=self.names,
                prefix="Box",
            )[2:]
        self.box.nc = len(self.names)
        self.box.update(_joined(parts) if parts else everything)
        self.nt_per_class = np.bincount(stats["target_cls"].astype(int), minlength=len(self.names))
        self.nt_per_image = np.bincount(stats["target_img"].astype(int), minlength=len(self.names))
        return stats


def _head_results(stats: dict[str, list[np.ndarray]], offset: int, nc: int) -> tuple:
    """ap_per_class on one head's per-image rows and labels, classes counted from 0 as alone, then offset back."""
    rows = [_own_rows(*image, offset, nc) for image in zip(stats["tp"], stats["conf"], stats["pred_cls"], strict=True)]
    labels = [c[(c >= offset) & (c < offset + nc)] - offset for c in stats["target_cls"]]
    tp, conf, pred_cls = (np.concatenate(v, 0) for v in zip(*rows, strict=True))
    found = list(ap_per_class(tp, conf, pred_cls, np.concatenate(labels, 0))[2:])
    found[4] = found[4] + offset  # ap_class_index
    return tuple(found)


def _own_rows(tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, offset: int, nc: int) -> tuple:
    """One image's (tp, conf, pred_cls) of one head, as DetectionValidator.update_metrics records them alone."""
    mine = (pred_cls >= offset) & (pred_cls < offset + nc)
    if not mine.any():  # its record of an image without detections: float64 empties, which set the joined dtype
        return np.zeros((0, tp.shape[1]), dtype=bool), np.zeros(0), np.zeros(0)
    return tp[mine], conf[mine], pred_cls[mine] - offset


def _joined(parts: list[tuple]) -> tuple:
    """Metric.update's tuple (p, r, f1, all_ap, ap_class_index, p/r/f1 curves, px, prec_values) over several heads."""
    p, r, f1, ap, index, p_curve, r_curve, f1_curve, px, prec = zip(*parts, strict=True)
    joined = [np.concatenate(values, 0) for values in (p, r, f1, ap, index, p_curve, r_curve, f1_curve)]
    return (*joined, px[0], np.concatenate(prec, 0))


class HeadwiseValidator(DetectionValidator):
    """DetectionValidator whose NMS and per-class metrics run per head on a merged model."""

    blocks: list[tuple[int, int]] | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.metrics = HeadwiseMetrics()

    def get_model(self, model, trainer=None, **kwargs):
        """Read the heads' class blocks from the model being validated (standalone val only)."""
        found = head_blocks(model) if trainer is None and isinstance(model, nn.Module) else None
        self.blocks = self.metrics.blocks = found
        return super().get_model(model, trainer, **kwargs)

    def postprocess(self, preds) -> list[dict[str, torch.Tensor]]:
        if not self.blocks:
            return super().postprocess(preds)
        outputs = headwise_nms(
            preds,
            self.blocks,
            conf_thres=self.args.conf,
            iou_thres=self.args.iou,
            multi_label=True,
            agnostic=self.args.single_cls or self.args.agnostic_nms,
            max_det=self.args.max_det,
            end2end=self.end2end,
        )
        return [{"bboxes": x[:, :4], "conf": x[:, 4], "cls": x[:, 5], "extra": x[:, 6:]} for x in outputs]


class MergedYOLO(YOLO):
    """A YOLO whose detect predictor and validator run NMS per head (`headwise_nms`); training is Ultralytics' own."""

    @property
    def task_map(self) -> dict:
        tasks = super().task_map
        detect = {**tasks["detect"], "predictor": HeadwisePredictor, "validator": HeadwiseValidator}
        return {**tasks, "detect": detect}


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
    """Make a model whose last layer is a ConcatHead exact: NMS per head, class-agnostic and baked-in NMS refused.

    Its wrapper becomes a `MergedYOLO` (per-head NMS in every predict, track and val) and the refusals live in its own
    callbacks (`model.add_callback`), so nothing global changes. Call it on any merged model loaded from a `.pt`
    (neither the class nor callbacks are saved with the weights); other models pass unchanged; twice adds nothing.

    Raises:
        TypeError: the merged model's wrapper is a YOLO subclass other than YOLO itself (its own task map would be lost).
    """
    if head_blocks(model) is None:
        return model
    if not isinstance(model, MergedYOLO):
        if type(model) is not YOLO:
            raise TypeError(
                f"expected an ultralytics.YOLO wrapper around the merged model, got {type(model).__name__}; load the "
                "merged .pt with headkit.load_model"
            )
        model.__class__ = MergedYOLO  # as YOLO() itself turns into YOLOWorld; the next predict builds our predictor
        model.predictor = None
    for event, guard in _GUARDS:
        if guard not in model.callbacks.get(event, []):
            model.add_callback(event, guard)
    return model
