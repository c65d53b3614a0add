"""Box labels as one-keypoint pose labels, and the trained pose model back to a plain detect model.

Training a pose model on box centres adds a centre-distance loss that is kinder to small objects than IoU alone. The
Pose head subclasses Detect, so after training its box and class branches drop into a Detect head unchanged.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from ultralytics import YOLO, __version__
from ultralytics.data.utils import IMG_FORMATS
from ultralytics.nn.modules import Pose
from ultralytics.nn.tasks import DetectionModel

from .folders import SPLITS
from .labels import load_yaml, names_file_bytes, parse_label_line
from .settings import current_limits

LOGGER = logging.getLogger(__name__)

KPT_SHAPE = [1, 3]  # one keypoint (the box centre) with x, y, visibility
FLIP_IDX = [0]  # a centre stays itself under a horizontal flip
_DECIMALS = 8  # 1e-8 of the image side: far below a pixel, and hides float noise from polygon maths


def boxes_to_keypoint_rows(rows: np.ndarray) -> np.ndarray:
    """Give each box its centre as a single visible keypoint.

    Args:
        rows: (N, 5) [cls, cx, cy, w, h], coordinates normalised.

    Returns:
        (N, 8) float64 [cls, cx, cy, w, h, kx, ky, v] with (kx, ky) = (cx, cy) and v = 1.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != 5:
        raise ValueError(f"expected box rows of shape (N, 5) [cls, cx, cy, w, h], got shape {rows.shape}")
    visible = np.ones((len(rows), 1))
    return np.concatenate([rows, rows[:, 1:3], visible], axis=1)


def polygon_to_xywhn(coords: np.ndarray) -> np.ndarray:
    """Bounding box of a polygon, the way Ultralytics turns segment labels into boxes.

    Args:
        coords: flat [x1, y1, x2, y2, ...] with at least 3 points, normalised; points outside [0, 1] are clipped.

    Returns:
        (4,) float64 [cx, cy, w, h], normalised.
    """
    coords = np.asarray(coords, dtype=np.float64)
    if coords.ndim != 1 or coords.size < 6 or coords.size % 2:
        raise ValueError(
            f"expected a flat polygon [x1 y1 x2 y2 x3 y3 ...] (even length >= 6), got shape {coords.shape}"
        )
    xy = np.clip(coords.reshape(-1, 2), 0.0, 1.0)
    (x1, y1), (x2, y2) = xy.min(axis=0), xy.max(axis=0)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])


def convert_label_text(text: str, *, file: str = "") -> tuple[str, int]:
    """Rewrite one YOLO detection label file as one-keypoint pose labels.

    A line with 5 columns is a box; a line with an odd number of columns >= 7 is a polygon (class + x y pairs), which
    becomes its bounding box, as Ultralytics reads it. Anything else (6 columns, an even count >= 8 such as a box with
    keypoints) is refused: the file is not plain detection data. Lines are read by `labels.parse_label_line`, the one
    label parser. Whole keypoint datasets are recognised earlier, by `kpt_shape` in data.yaml.

    Args:
        text: the label file's content; blank lines are ignored.
        file: name used in error messages.

    Returns:
        The converted text (empty when `text` has no labels) and the number of boxes.

    Raises:
        DatasetError: a line that is not a box or polygon row (see `parse_label_line`).
    """
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            where = f"{file or '<label text>'}:{number}"
            cls, coords = parse_label_line(line, nc=None, file=where, allow_polygons=True, dtype=np.float64)
            box = coords if coords.ndim == 1 else polygon_to_xywhn(coords.ravel())
            rows.append(np.concatenate([[cls], box]))
    if not rows:
        return "", 0
    table = boxes_to_keypoint_rows(np.stack(rows))
    lines = [" ".join([str(int(row[0])), *(_format(v) for v in row[1:])]) for row in table]
    return "\n".join(lines) + "\n", len(lines)


def _format(value: float) -> str:
    """Shortest positional text for a value rounded to `_DECIMALS` (0.648000 -> 0.648, 0.39999999999999997 -> 0.4)."""
    return np.format_float_positional(value, precision=_DECIMALS, unique=True, trim="-")


@dataclass(frozen=True)
class ConversionSummary:
    """What `convert_to_keypoints` wrote: the new dataset and per-split counts."""

    root: Path
    yaml_path: Path
    splits: dict[str, dict] = field(default_factory=dict)  # split -> {"images": int, "boxes": int}

    def to_dict(self) -> dict:
        """Plain JSON-ready values, e.g. for a Gradio JSON output."""
        return {"root": str(self.root), "yaml_path": str(self.yaml_path), "splits": copy.deepcopy(self.splits)}

    def __str__(self) -> str:
        rows = [(name, s["images"], s["boxes"]) for name, s in self.splits.items()]
        rows.append(("total", sum(r[1] for r in rows), sum(r[2] for r in rows)))
        table = [f"{'split':<8}{'images':>8}{'boxes':>8}"] + [f"{n:<8}{i:>8}{b:>8}" for n, i, b in rows]
        return "\n".join([f"keypoint dataset {self.yaml_path}", *table])


def convert_to_keypoints(src: str | Path, dst: str | Path, *, link: bool = True) -> ConversionSummary:
    """Write a one-keypoint pose copy of a YOLO detection dataset; `src` is only read.

    Args:
        src: folder with data.yaml whose train/val/test point to images/{split}/ beside labels/{split}/.
        dst: new folder (absent or empty), outside `src`.
        link: hard-link images where the filesystem allows instead of copying them.

    Returns:
        The summary, also logged.
    """
    src, dst = Path(src).resolve(), Path(dst).resolve()
    data = _read_detect_yaml(src)
    if dst == src or src in dst.parents:
        raise ValueError(f"expected dst outside the source dataset {src}, got {dst}; pick a folder elsewhere")
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise FileExistsError(f"expected dst to be absent or an empty folder, but {dst} has content; remove it first")
    splits = _split_folders(data, src)

    dst.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))  # renamed into place only when complete
    try:
        counts = {key: _convert_split(src, work, folder, link=link) for key, folder in splits.items()}
        out = {k: v for k, v in data.items() if k != "path"}  # relative splits then resolve against the yaml folder
        out.update({key: Path("images", folder).as_posix() for key, folder in splits.items()})
        out.update(kpt_shape=KPT_SHAPE, flip_idx=FLIP_IDX)
        header = f"# One keypoint per box at its centre, converted from {src}\n"
        (work / "data.yaml").write_text(header + yaml.safe_dump(out, sort_keys=False, default_flow_style=None))
        if dst.exists():
            dst.rmdir()
        work.rename(dst)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    summary = ConversionSummary(root=dst, yaml_path=dst / "data.yaml", splits=counts)
    LOGGER.info("converted %s to keypoint labels\n%s", src, summary)
    return summary


def _read_detect_yaml(src: Path) -> dict:
    """The dataset's data.yaml, refused when it already describes keypoints."""
    yaml_path = src / "data.yaml"
    if not yaml_path.is_file():
        raise FileNotFoundError(f"expected {yaml_path} (a YOLO dataset folder with data.yaml), but it does not exist")
    data = load_yaml(yaml_path, str(yaml_path), max_bytes=names_file_bytes(current_limits()))
    if "kpt_shape" in data:
        raise ValueError(
            f"expected a detection dataset, but {yaml_path} already has kpt_shape: {data['kpt_shape']}; "
            "it is keypoint data already, train a pose model on it directly"
        )
    return data


def _split_folders(data: dict, src: Path) -> dict[str, Path]:
    """data.yaml split key -> image folder relative to src/images."""
    base = src / data["path"] if data.get("path") else src
    images = src / "images"
    splits = {}
    for key in SPLITS:
        value = data.get(key)
        if not value:
            continue
        folder = (base / value).resolve() if isinstance(value, str) else None
        if folder is None or not folder.is_dir() or not folder.is_relative_to(images):
            raise ValueError(
                f"expected data.yaml {key}: to name a folder under {images}, got {value!r}; "
                "use the folder structure images/{split}/ + labels/{split}/ beside data.yaml"
            )
        splits[key] = folder.relative_to(images)
    if "train" not in splits:
        raise ValueError(f"expected a train: split in {src / 'data.yaml'}, found keys {sorted(data)}")
    return splits


def _convert_split(src: Path, work: Path, folder: Path, *, link: bool) -> dict:
    """Copy one split's images and convert its labels; returns its counts."""
    images, boxes = 0, 0
    for image in sorted((src / "images" / folder).rglob("*")):
        if image.is_file() and image.suffix[1:].lower() in IMG_FORMATS:
            _place(image, work / image.relative_to(src), link=link)
            images += 1
    for label in sorted((src / "labels" / folder).rglob("*.txt")):
        text, count = convert_label_text(label.read_text(), file=str(label))
        target = work / label.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        boxes += count
    return {"images": images, "boxes": boxes}


def _place(source: Path, target: Path, *, link: bool) -> None:
    """Hard-link when allowed (no extra disk), else copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(source, target)
            return
        except OSError:  # other filesystem, or links to files of other users are forbidden
            pass
    shutil.copy2(source, target)


def pose_to_detect(
    model: YOLO, *, path: str | Path | None = None, detect_slot: Callable[[Any], Any] | None = None
) -> YOLO:
    """The detect model inside a trained pose model: same trunk, boxes and classes, no keypoint branch.

    The detect network is built from the pose model's own architecture with its head row switched to Detect, through
    the same parser, so the head layout (its class-branch style) matches; then every tensor it has is copied across.

    Args:
        model: a YOLO pose model (task 'pose', Pose head).
        path: where to keep the detect checkpoint; by default it lives only in memory.
        detect_slot: turns the pose model's last layer into the detect model's (`headkit.shaping.detect_slot`, for
            shaped heads); by default it is rebuilt from the architecture.

    Returns:
        A YOLO detect model whose box and class outputs equal the pose model's.
    """
    pose_net = model.model
    head = pose_net.model[-1] if isinstance(pose_net, torch.nn.Module) and hasattr(pose_net, "model") else None
    pose = getattr(head, "detect", head)  # a Pose, or a slot holding one (a path branch around it)
    if not isinstance(pose, Pose):
        raise ValueError(
            f"expected a pose model (task 'pose' with a Pose head), got task {model.task!r} with head "
            f"{type(pose).__name__}; train a pose model on convert_to_keypoints() output first"
        )
    cfg = _detect_cfg(pose_net.yaml)
    detect_net = DetectionModel(cfg, ch=cfg.get("channels", 3), verbose=False)
    if detect_slot is not None:  # the trained slot's own shape (a narrow class branch, a path branch) is kept
        detect_net.model[-1] = detect_slot(head)
        detect_net.save = sorted(set(detect_net.save) | set(pose_net.save))
    if pose_net.is_fused():
        detect_net.fuse(verbose=False)
    pose_state, detect_state = pose_net.state_dict(), detect_net.state_dict()
    mismatched = [k for k, v in detect_state.items() if k not in pose_state or pose_state[k].shape != v.shape]
    if mismatched:
        raise RuntimeError(f"pose model has no matching tensor for {mismatched[:5]} ({len(mismatched)} in all)")
    detect_net.load_state_dict({k: pose_state[k] for k in detect_state})
    detect_net.names = dict(pose_net.names)
    args = getattr(pose_net, "args", None) or {}
    imgsz = args.get("imgsz") if isinstance(args, dict) else getattr(args, "imgsz", None)
    ckpt = {
        "model": detect_net.eval(),
        "ema": None,
        "train_args": {"task": "detect", **({"imgsz": imgsz} if imgsz else {})},
        "date": datetime.now().astimezone().isoformat(),
        "version": __version__,
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
    }
    if path is not None:
        torch.save(ckpt, path)
        detect = YOLO(path)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(ckpt, Path(tmp) / "detect.pt")
            detect = YOLO(Path(tmp) / "detect.pt")
        detect.ckpt_path = detect.model.pt_path = None  # like Model.load(module): no file to resume from
    LOGGER.info("pose -> detect: %d -> %d parameters", _count(pose_net), _count(detect.model))
    return detect


def _detect_cfg(pose_cfg: dict) -> dict:
    """The pose architecture dict with its last row turned into a Detect head (nc only, no kpt_shape)."""
    cfg = copy.deepcopy(pose_cfg)
    frm, repeats, module, args = cfg["head"][-1]
    cfg["head"][-1] = [frm, repeats, "Detect", args[:1]]
    cfg.pop("kpt_shape", None)
    if "yaml_file" in cfg:
        cfg["yaml_file"] = str(cfg["yaml_file"]).replace("-pose", "")
    return cfg


def _count(net: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in net.parameters())
