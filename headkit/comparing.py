"""Run base / custom / merged on one image, draw each, and report their detections as records.

"custom" is the base trunk with only the chosen heads (the base head dropped); "merged" is the base with its own head
and the chosen heads side by side; "finetuned", when given, is the whole base fine-tuned the usual way on a head's data
(`headkit.finetune`), shown for what it forgets. The merged model must reproduce the base's detections exactly: `Comparison`
counts its base-class detections and the largest confidence change against the base alone (0 is the right answer).
"""

from __future__ import annotations

import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from ultralytics.utils.metrics import box_iou

from .base import clone_model
from .concat import MAX_DET
from .headfile import Head
from .limits import LimitExceeded, Limits
from .merging import check_output_size, merge
from .retention import detection_rows, kept_detections
from .settings import current_limits
from .trunk import base_facts

MODELS = ("base", "custom", "merged", "finetuned")


@dataclass(frozen=True)
class Detection:
    """One box found by one model; `origin` is "base" or the label of the head whose class it is."""

    model: str
    origin: str
    name: str
    class_id: int
    confidence: float
    xyxy: tuple[float, float, float, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"xyxy": [round(v, 1) for v in self.xyxy], "confidence": round(self.confidence, 4)}


@dataclass
class Comparison:
    """Annotated RGB images per model ("custom" is None without heads), detections, and the base-class check."""

    images: dict[str, np.ndarray | None]
    detections: list[Detection]
    base_count: int
    merged_base_count: int
    max_confidence_change: float
    unmatched: int
    timings_ms: dict[str, float | None]
    kept: dict[str, int]

    def retention(self) -> str:
        """One line: how many of the base's detections each model keeps unchanged (`headkit.retention`'s rule)."""
        shown = {"custom": "custom", "merged": "merged", "finetuned": "naive fine-tune"}
        parts = [f"{shown[name]} {count}/{self.base_count}" for name, count in self.kept.items()]
        return "Base detections kept unchanged (same class, IoU ≥ 0.9, |Δconf| ≤ 1e-4): " + " · ".join(parts)

    def summary(self) -> str:
        """One line: the merged model's base-class detections and their largest confidence change against the base."""
        line = (
            f"Merged model: {self.merged_base_count} base-class detections (base alone: {self.base_count}); "
            f"largest confidence change against the base: {self.max_confidence_change:.3g}"
        )
        return line + (f"; {self.unmatched} detection(s) without a counterpart" if self.unmatched else "")

    def timing(self) -> str:
        """One line: each model's time for this image (pre-process + forward + NMS), so each head's price shows."""
        parts = [f"{name} {ms:.1f} ms" for name, ms in self.timings_ms.items() if ms is not None]
        return "Time for this image (pre-process, inference, NMS): " + " · ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "detections": [d.to_dict() for d in self.detections],
            "base_count": self.base_count,
            "merged_base_count": self.merged_base_count,
            "max_confidence_change": self.max_confidence_change,
            "unmatched": self.unmatched,
            "timings_ms": self.timings_ms,
            "kept": self.kept,
            "summary": self.summary(),
        }


def read_image(source: str | Path | np.ndarray | Image.Image, *, limits: Limits | None = None) -> np.ndarray:
    """An RGB uint8 (H, W, 3) array from a path, a PIL image or an array, EXIF rotation applied.

    The pixel count is checked from the header, before the image is decoded.

    Raises:
        ValueError: unreadable; LimitExceeded: more than `limits.max_image_pixels` pixels.
    """
    limits = limits or current_limits()
    if isinstance(source, np.ndarray):
        limits.check("max_image_pixels", source.shape[0] * source.shape[1], "image pixels")
        array = source if source.ndim == 3 else np.stack([source] * 3, axis=-1)
        return np.ascontiguousarray(array[..., :3].astype(np.uint8))
    name = getattr(source, "name", None) or getattr(source, "filename", None) or "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = source if isinstance(source, Image.Image) else Image.open(source)
            limits.check("max_image_pixels", image.width * image.height, f"{Path(str(name)).name}: image pixels")
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except LimitExceeded:
        raise
    except Exception as e:  # PIL raises many types for malformed files (OSError, SyntaxError, struct.error, ...)
        raise ValueError(f"{Path(str(name)).name}: not a usable image ({e}); give a JPEG or PNG photo") from e


def _origins(names: dict[int, str], heads: Sequence[tuple[Head, str]]) -> list[str]:
    """The origin of each class index of a (merged) model: base classes first, then each (head, label)'s in order."""
    from_heads = [label for head, label in heads for _ in range(head.nc)]
    return ["base"] * (len(names) - len(from_heads)) + from_heads


def confidence_change(base_rows: np.ndarray, merged_rows: np.ndarray) -> tuple[float, int]:
    """Match base-class detections of the merged model to the base's (same class, best IoU ≥ 0.5).

    Args:
        base_rows, merged_rows: (N, 6) [x1, y1, x2, y2, conf, cls] in pixels.

    Returns:
        The largest |Δconf| over matched pairs (0.0 when none) and how many rows of either side found no match.
    """
    used, deltas = set(), []
    for row in base_rows:
        candidates = [j for j in range(len(merged_rows)) if j not in used and merged_rows[j, 5] == row[5]]
        if not candidates:
            continue
        ious = box_iou(torch.as_tensor(row[None, :4]), torch.as_tensor(merged_rows[candidates, :4]))[0].numpy()
        if ious.max() < 0.5:
            continue
        best = candidates[int(ious.argmax())]
        used.add(best)
        deltas.append(abs(float(merged_rows[best, 4]) - float(row[4])))
    return max(deltas, default=0.0), len(base_rows) + len(merged_rows) - 2 * len(deltas)


class _Runner:
    """A model and the lock that keeps concurrent requests from changing its predictor's settings mid-run."""

    def __init__(self, model) -> None:
        self.model, self.lock = model, threading.Lock()

    def predict(self, bgr: np.ndarray, **kwargs):
        with self.lock:
            return self.model.predict(bgr, verbose=False, **kwargs)[0]


class Comparer:
    """A base model with its custom and merged variants, built once per head selection and kept (LRU)."""

    def __init__(self, base, *, cache_size: int = 4, device: str | None = None, limits: Limits | None = None) -> None:
        self.base = base
        self.limits = limits or current_limits()
        self.device = device
        self.cache_size = cache_size
        self._base = _Runner(base)
        self._variants: OrderedDict[tuple[int, ...], tuple[tuple[Head, ...], _Runner, _Runner]] = OrderedDict()
        self._finetuned: OrderedDict[tuple[str, float], _Runner] = OrderedDict()
        self._lock = threading.Lock()

    def variants(self, heads: Sequence[Head]) -> tuple[_Runner, _Runner]:
        """(custom, merged) for these heads, in this order; built on first use (merge checks that they fit)."""
        key = tuple(id(h) for h in heads)  # the entry holds the heads, so their ids stay theirs while it lives
        with self._lock:
            if key in self._variants:
                self._variants.move_to_end(key)
                return self._variants[key][1:]
        custom = _Runner(merge(self.base, *heads, keep_base_head=False))
        merged = _Runner(merge(self.base, *heads))
        with self._lock:
            self._variants[key] = (tuple(heads), custom, merged)
            while len(self._variants) > self.cache_size:
                self._variants.popitem(last=False)
        return custom, merged

    def finetuned(self, path: str | Path) -> _Runner:
        """The fine-tuned model saved at `path` (safetensors), loaded once per file version and kept (LRU)."""
        path = Path(path)
        key = (str(path), path.stat().st_mtime)
        with self._lock:
            if key in self._finetuned:
                self._finetuned.move_to_end(key)
                return self._finetuned[key]
        from .finetune import load_finetuned  # the training stack loads only when a fine-tuned model is compared

        runner = _Runner(load_finetuned(path, self.base, limits=self.limits))
        with self._lock:
            self._finetuned[key] = runner
            while len(self._finetuned) > self.cache_size:
                self._finetuned.popitem(last=False)
        return runner

    def video_model(self, heads: Sequence[Head], imgsz: int):
        """A merged model of its own for one video run (minutes long), so the cached ones stay free for Compare."""
        self._check_output(heads, imgsz)
        return merge(self.base, *heads) if heads else clone_model(self.base)

    def _check_settings(self, heads: Sequence[Head], conf: float, iou: float, imgsz: int) -> None:
        if not 0 <= conf <= 1 or not 0 <= iou <= 1:
            raise ValueError(f"confidence and IoU thresholds are fractions in [0, 1], got conf={conf}, iou={iou}")
        if imgsz < 32:
            raise ValueError(f"image size should be at least 32 pixels, got {imgsz}")
        self._check_output(heads, imgsz)

    def _check_output(self, heads: Sequence[Head], imgsz: int) -> None:
        """Refuse an image size over the limit, or a merged model's output over `max_output_mb`, before merging."""
        self.limits.check("max_imgsz", imgsz, "image size (model input, pixels)")
        classes = len(base_facts(self.base).names) + sum(h.nc for h in heads)
        check_output_size((classes, 1 + len(heads)), imgsz, self.limits)

    def detect(
        self,
        image: str | Path | np.ndarray | Image.Image,
        heads: Sequence[Head] = (),
        *,
        conf: float = 0.25,
        iou: float = 0.7,
        imgsz: int = 640,
    ):
        """The cached merged model alone on one image (a webcam frame), with Compare's checks; Ultralytics' Results."""
        self._check_settings(heads, conf, iou, imgsz)
        bgr = np.ascontiguousarray(read_image(image, limits=self.limits)[..., ::-1])
        runner = self.variants(heads)[1] if heads else self._base
        return runner.predict(bgr, conf=conf, iou=iou, imgsz=imgsz, max_det=MAX_DET, device=self.device)

    def compare(
        self,
        image: str | Path | np.ndarray | Image.Image,
        heads: Sequence[Head] = (),
        *,
        labels: Sequence[str] | None = None,
        conf: float = 0.25,
        iou: float = 0.7,
        imgsz: int = 640,
        finetuned: str | Path | None = None,
    ) -> Comparison:
        """Predict with base, custom (trunk + `heads`) and merged on one image; `labels` name the heads' rows.

        Args:
            finetuned: a fine-tuned model saved by `headkit.finetune.save_finetuned`, run as a fourth model.
        """
        self._check_settings(heads, conf, iou, imgsz)
        labels = [str(v) for v in labels] if labels is not None else [h.label for h in heads]
        if len(labels) != len(heads):
            raise ValueError(f"expected one label per head, got {len(labels)} label(s) for {len(heads)} head(s)")
        bgr = np.ascontiguousarray(read_image(image, limits=self.limits)[..., ::-1])
        settings = {"conf": conf, "iou": iou, "imgsz": imgsz, "max_det": MAX_DET, "device": self.device}
        results = {"base": self._base.predict(bgr, **settings)}
        if heads:
            custom, merged = self.variants(heads)
            results["custom"] = custom.predict(bgr, **settings)
            results["merged"] = merged.predict(bgr, **settings)
        else:
            results["merged"] = results["base"]
        if finetuned is not None:
            results["finetuned"] = self.finetuned(finetuned).predict(bgr, **settings)
        # Ultralytics' own per-image timings (ms): what each model cost on this image; merged = base without heads
        timings = {name: round(sum(r.speed.values()), 1) for name, r in results.items()}
        images = {name: (r.plot()[..., ::-1].copy() if r is not None else None) for name, r in results.items()}
        for name in MODELS:
            images.setdefault(name, None)
        detections, rows = [], {}
        for name, result in results.items():
            if name == "finetuned":
                origins = ["fine-tune"] * len(result.names)
            else:
                origins = _origins(result.names, [] if name == "base" else list(zip(heads, labels, strict=True)))
            rows[name] = detection_rows(result)
            for x1, y1, x2, y2, score, cls in rows[name]:
                c = int(cls)
                box = (float(x1), float(y1), float(x2), float(y2))
                detections.append(Detection(name, origins[c], result.names[c], c, float(score), box))
        nb = len(base_facts(self.base).names)
        merged_base = rows["merged"][rows["merged"][:, 5] < nb]
        change, unmatched = confidence_change(rows["base"], merged_base)
        kept = {
            name: kept_detections(rows["base"], results["base"].names, rows[name], results[name].names)
            for name in ("custom", "merged", "finetuned")
            if name in results
        }
        return Comparison(
            images={name: images[name] for name in MODELS},
            detections=detections,
            base_count=len(rows["base"]),
            merged_base_count=len(merged_base),
            max_confidence_change=change,
            unmatched=unmatched,
            timings_ms={name: timings.get(name) for name in MODELS if name != "finetuned" or name in timings},
            kept=kept,
        )


def compare(base, image, heads: Sequence[Head] = (), **kwargs: Any) -> Comparison:
    """One-off comparison (see `Comparer.compare`); keep a Comparer to reuse the merged models across images."""
    return Comparer(base).compare(image, heads, **kwargs)


def draw_labels(image: str | Path, names: dict[int, str]) -> np.ndarray:
    """An image with its YOLO label boxes drawn (RGB uint8), as a check that labels sit where they should."""
    from ultralytics.data.utils import img2label_paths
    from ultralytics.utils.plotting import Annotator, colors

    from .labels import parse_label_line

    rgb = read_image(image)
    height, width = rgb.shape[:2]
    annotator = Annotator(Image.fromarray(rgb), line_width=max(2, round(max(width, height) / 300)), pil=True)
    label = Path(img2label_paths([str(image)])[0])
    lines = label.read_text(errors="replace").splitlines() if label.is_file() else []
    for no, line in enumerate(lines, 1):
        if line.strip():
            cls, (cx, cy, w, h) = parse_label_line(line, nc=len(names), file=label.name, line_no=no)
            box = [(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height]
            annotator.box_label(box, names[cls], color=colors(cls, bgr=False))
    return np.asarray(annotator.result())


def label_previews(summary, count: int = 4) -> list[tuple[np.ndarray, str]]:
    """Up to `count` labelled train images of a validated dataset (`load_dataset`'s summary), drawn, with captions."""
    from ultralytics.data.utils import IMG_FORMATS, check_det_dataset

    data = check_det_dataset(str(summary.yaml_path), autodownload=False)
    folders = data["train"] if isinstance(data["train"], list) else [data["train"]]
    images = sorted(p for f in folders for p in Path(f).rglob("*") if p.suffix[1:].lower() in IMG_FORMATS)
    return [(draw_labels(p, summary.names), p.name) for p in images[:count]]
