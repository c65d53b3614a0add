"""Where a YOLO dataset's parts are (Ultralytics or Roboflow folder structure), and how to rebuild it in the Ultralytics one."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import yaml
from ultralytics.data.utils import IMG_FORMATS, img2label_paths

from headkit.labels import DatasetError

SPLITS = ("train", "val", "test")
"""The splits a dataset is written with, in this order (data.yaml keys and folder names alike)."""
SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
"""Each folder name (or file-name prefix) a split is found under -> its split; Roboflow writes `valid/`."""
FOLDER_STRUCTURES = "images/train + labels/train (Ultralytics) or train/images + train/labels (Roboflow)"
_SKIPPED = {"__MACOSX"}
JSON_PARTS = 3
"""Deepest JSON file read as COCO annotations, in path parts: `export/annotations/instances_train.json`."""
DATASET_FILES = (
    "images (" + ", ".join(sorted(IMG_FORMATS)) + "), .txt labels and classes.txt, the dataset's yaml, and JSON "
    f"annotations (COCO, any name, at most {JSON_PARTS - 1} folders deep)"
)
"""What `is_dataset_file` accepts, in words."""


class Record(NamedTuple):
    """One checked image: where it is, the images folder of its split, and the class id of each of its boxes."""

    image: Path
    images_dir: Path
    classes: list[int]


def rel(path: Path, base: Path) -> str:
    """`path` as the user sees it inside their upload, for messages."""
    return path.relative_to(base).as_posix()


def visible(path: Path) -> bool:
    """False for hidden files and macOS resource folders, which zips from a Mac carry along."""
    return not (path.name.startswith(".") or path.name in _SKIPPED)


def is_dataset_file(path: PurePosixPath) -> bool:
    """True for the files a dataset is made of: images, `.txt` (labels, classes.txt), a yaml at its top, COCO JSON.

    Everything else in an upload (`*.cache`, `*.npy`, `*.pt`, ...) is dropped: Ultralytics unpickles a `labels/*.cache`
    it finds beside the labels, so such a file from a stranger would run code on the server.
    """
    suffix = path.suffix[1:].lower()
    if suffix == "json":  # COCO annotations under any name (read as JSON within the limits, never unpickled)
        return len(path.parts) <= JSON_PARTS
    if suffix in {"yaml", "yml"}:
        return len(path.parts) <= 2  # the dataset root, or the one folder a zip wraps it in
    return suffix == "txt" or suffix in IMG_FORMATS


def labels_dir(images_dir: Path) -> Path:
    """The labels folder Ultralytics pairs with `images_dir` (last `images` component → `labels`)."""
    return Path(img2label_paths([images_dir / "_.jpg"])[0]).parent


def find_root(base: Path) -> Path:
    """The dataset folder: `base` itself or its single visible subfolder (zips often wrap everything in one)."""
    if _looks_like_dataset(base):
        return base
    children = sorted(p for p in base.iterdir() if visible(p))
    if len(children) == 1 and children[0].is_dir() and _looks_like_dataset(children[0]):
        return children[0]
    found = ", ".join(p.name for p in children[:8]) or "nothing"
    raise DatasetError(f"{base.name}: no dataset folder structure found; expected {FOLDER_STRUCTURES}, found {found}")


def find_splits(root: Path, base: Path) -> dict[str, Path]:
    """Split name → its images folder; Roboflow's `valid` becomes `val`; a bare images/ folder is the train split."""
    images = root / "images"
    candidates = [(d.name, d) for d in sorted(images.iterdir()) if d.is_dir()] if images.is_dir() else []
    candidates += [(d.name, d / "images") for d in sorted(root.iterdir()) if (d / "images").is_dir()]
    found: dict[str, Path] = {}
    for name, folder in candidates:
        split = SPLIT_NAMES.get(name.lower())
        if split in found:
            raise DatasetError(
                f"{rel(folder, base)} and {rel(found[split], base)} are both the {split} split; keep one of them"
            )
        if split:
            found[split] = folder
    if not found and images.is_dir():
        found["train"] = images
    return found


def find_classes_txt(root: Path, splits: dict[str, Path]) -> Path | None:
    """classes.txt beside the splits or inside a split or labels folder, where LabelImg and Roboflow put it."""
    spots = [root] + [p for d in splits.values() for p in (d.parent, labels_dir(d))]
    return next((p / "classes.txt" for p in spots if (p / "classes.txt").is_file()), None)


def is_normalized(data: dict, yaml_path: Path | None, root: Path, splits: dict[str, Path]) -> bool:
    """True if the existing data.yaml points at exactly these splits, train and val included, without `path:`."""
    if yaml_path is None or yaml_path.parent != root or not {"train", "val"} <= splits.keys():
        return False
    if "path" in data or "download" in data:  # `path: .` follows the cwd; `download` is code Ultralytics may run
        return False
    for split in SPLITS:
        value = data.get(split)
        if split not in splits:
            if value is not None:
                return False
        elif not isinstance(value, str) or (root / value).resolve() != splits[split].resolve():
            return False
    return True


def split_val(train: list[Record], fraction: float, where: str) -> tuple[list[Record], list[Record]]:
    """Deterministic train/val split: files ranked by a hash of their name, so adding files moves few others."""
    if len(train) < 2:
        raise DatasetError(f"{where}: no val split and only {len(train)} train image; add a val split or more images")
    ranked = sorted(train, key=lambda r: hashlib.sha1(r.image.relative_to(r.images_dir).as_posix().encode()).digest())
    val = {r.image for r in ranked[: min(len(train) - 1, max(1, round(len(train) * fraction)))]}
    return [r for r in train if r.image not in val], [r for r in train if r.image in val]


def materialize(records: dict[str, list[Record]], names: dict[int, str], out: Path, *, move: bool) -> Path:
    """Lay the dataset out as images/<split> + labels/<split> under `out`; returns its data.yaml (no `path:` key)."""
    transfer = shutil.move if move else shutil.copyfile
    for split, recs in records.items():
        for image, images_dir, _ in recs:
            target = out / "images" / split / image.relative_to(images_dir)
            label = Path(img2label_paths([image])[0])
            pairs = [(image, target)]
            if label.is_file():
                pairs.append((label, Path(img2label_paths([target])[0])))
            for src, dst in pairs:
                dst.parent.mkdir(parents=True, exist_ok=True)
                transfer(src, dst)
    data = {split: f"images/{split}" for split in SPLITS if split in records}
    text = yaml.safe_dump({**data, "names": names}, sort_keys=False, allow_unicode=True)
    yaml_path = out / "data.yaml"
    yaml_path.write_text(
        "# No `path:` key: Ultralytics resolves the splits against this file's folder.\n" + text, "utf-8"
    )
    return yaml_path


def _looks_like_dataset(folder: Path) -> bool:
    return (folder / "images").is_dir() or any((folder / s / "images").is_dir() for s in SPLIT_NAMES)
