"""COCO JSON detection datasets: find their annotation files, check every record, write them out in YOLO layout.

Annotation tools (Roboflow, CVAT, Label Studio) and public data sets export COCO JSON as often as YOLO text. Ultralytics'
own `convert_coco` assumes COCO's category ids (1-based, optionally the 91 -> 80 map) and checks nothing, so a file
with ids from 0, an unknown image or a box outside its image would train silently wrong; this module reads the same
format with every record checked, and refuses with the file, the record and what to fix.

Layouts found (in a folder or an extracted zip, possibly inside one top folder):
- Roboflow: `train/_annotations.coco.json`, `valid/...`, `test/...`, each beside its images;
- COCO: `annotations/instances_<split>*.json` with images in `<split>*/`, `images/<split>*/`, `images/` or the root.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .labels import DatasetError
from .limits import Limits

ROBOFLOW_NAME = "_annotations.coco.json"
MAX_JSON_MB = 256  # a COCO train2017 instances file is ~450 MB with segments; a detection export is far smaller
SPLIT_WORDS = (("train", "train"), ("val", "val"), ("valid", "val"), ("test", "test"))
BOX_SLACK_PX = 1.0  # exporters round box corners; anything further outside the image is an error


def is_coco_file(path: Path) -> bool:
    """True for the COCO annotation file names this module reads (`instances*.json`, `_annotations.coco.json`)."""
    name = path.name.lower()
    return name == ROBOFLOW_NAME or (name.startswith("instances") and name.endswith(".json"))


def find_coco_files(root: Path) -> list[Path]:
    """COCO annotation files at most two folders below `root`, in a fixed order."""
    return sorted(p for p in root.rglob("*.json") if is_coco_file(p) and len(p.relative_to(root).parts) <= 3)


def _split_of(path: Path, root: Path) -> str:
    """train / val / test from the file's folder (Roboflow) or its name (`instances_val2017.json`)."""
    words = [path.parent.name.lower()] if path.name.lower() == ROBOFLOW_NAME else []
    words.append(path.stem.lower().removeprefix("instances").strip("_-"))
    for word in words:
        for prefix, split in SPLIT_WORDS:
            if word.startswith(prefix):
                return split
    raise DatasetError(
        f"{path.relative_to(root)}: cannot tell which split this COCO file is; name it instances_train.json / "
        "instances_val.json (COCO) or put it in a train/ or valid/ folder as _annotations.coco.json (Roboflow)"
    )


@dataclass(frozen=True)
class CocoSplit:
    """One annotation file's images (path, YOLO label lines) after every record was checked."""

    split: str
    source: Path
    images: list[tuple[Path, list[str]]]
    skipped_crowd: int


def _load_json(path: Path, where: str) -> dict:
    size_mb = path.stat().st_size / 2**20
    if size_mb > MAX_JSON_MB:
        raise DatasetError(f"{where}: {size_mb:.0f} MB of annotations; at most {MAX_JSON_MB} MB are read, split it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise DatasetError(f"{where}: not UTF-8 text ({e}); export the annotations again as COCO JSON") from e
    except json.JSONDecodeError as e:
        raise DatasetError(f"{where}, line {e.lineno} column {e.colno}: not valid JSON ({e.msg})") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{where}: expected a COCO object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{where}: '{key}' should be a list; is this a COCO detection export?")
    return data


def _ids(records: list, kind: str, where: str) -> dict[int, dict]:
    """Records by their integer id; a missing, non-integer or repeated id is an error naming it."""
    by_id: dict[int, dict] = {}
    for n, record in enumerate(records):
        key = record.get("id") if isinstance(record, dict) else None
        if not isinstance(key, int) or isinstance(key, bool):
            raise DatasetError(f"{where}: {kind} #{n + 1} has no integer 'id' ({str(record)[:80]})")
        if key in by_id:
            raise DatasetError(f"{where}: {kind} id {key} appears twice; every {kind} needs its own id")
        by_id[key] = record
    return by_id


def read_categories(data: dict, where: str, limits: Limits) -> dict[int, str]:
    """Category id -> name, without the unused parent category some exporters add (Roboflow's supercategory row)."""
    categories = _ids(data["categories"], "category", where)
    used = {a.get("category_id") for a in data["annotations"] if isinstance(a, dict)}
    parents = {str(c.get("supercategory")) for c in categories.values()}
    kept = {
        i: c for i, c in categories.items() if i in used or str(c.get("name")) not in parents or len(categories) == 1
    }
    limits.check("max_classes", len(kept), f"{where}: number of categories")
    names: dict[int, str] = {}
    for i, category in sorted(kept.items()):
        name = str(category.get("name") or "").strip()
        limits.check("max_class_name_chars", len(name), f"{where}: length of category {i}'s name")
        if not name or any(ord(ch) < 32 for ch in name):
            raise DatasetError(f"{where}: category id {i} has no usable name ({category.get('name')!r}); name it")
        if name in names.values():
            raise DatasetError(f"{where}: category name '{name}' is used by two ids; merge or rename them")
        names[i] = name
    if not names:
        raise DatasetError(f"{where}: no categories; a detection export lists the classes under 'categories'")
    return names


def _image_path(record: dict, source: Path, split: str) -> Path | None:
    """The image beside the annotation file, or in the dataset folder (the parent of `annotations/`)."""
    name = str(record.get("file_name") or "")
    if not name or Path(name).is_absolute() or ".." in Path(name).parts:
        return None
    root = source.parent.parent if source.parent.name.lower() == "annotations" else source.parent
    folders = [source.parent, root / "images" / split, root / "images", root]
    folders += sorted(p for p in root.glob("*") if p.is_dir() and p.name.lower().startswith(split))
    folders += sorted(p for p in (root / "images").glob("*") if p.is_dir() and p.name.lower().startswith(split))
    return next((folder / name for folder in folders if (folder / name).is_file()), None)


def read_split(source: Path, data: dict, root: Path, class_of: dict[int, int], limits: Limits) -> CocoSplit:
    """Check one annotation file (`data`, as `_load_json` read it) against its images; its boxes as YOLO lines."""
    where = str(source.relative_to(root))
    split = _split_of(source, root)
    images = _ids(data["images"], "image", where)
    _ids(data["annotations"], "annotation", where)
    categories = read_categories(data, where, limits)
    for i, name in categories.items():
        if i not in class_of:
            raise DatasetError(f"{where}: category {i} '{name}' is not in the other annotation files' categories")
    lines: dict[int, list[str]] = {i: [] for i in images}
    crowd = 0
    for annotation in data["annotations"]:
        key, image_id, category = annotation["id"], annotation.get("image_id"), annotation.get("category_id")
        if image_id not in images:
            raise DatasetError(f"{where}: annotation id {key} refers to image id {image_id}, which is not in 'images'")
        if category not in categories:
            raise DatasetError(
                f"{where}: annotation id {key} has category id {category}, which is not in 'categories' "
                f"({', '.join(f'{i}: {n}' for i, n in categories.items())})"
            )
        if annotation.get("iscrowd"):
            crowd += 1
            continue
        width, height = images[image_id].get("width"), images[image_id].get("height")
        box = annotation.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)):
            raise DatasetError(f"{where}: annotation id {key}: 'bbox' should be [x, y, width, height], got {box!r}")
        x, y, w, h = (float(v) for v in box)
        if w <= 0 or h <= 0:
            raise DatasetError(f"{where}: annotation id {key}: box {box} has no area; fix or delete it")
        if x < -BOX_SLACK_PX or y < -BOX_SLACK_PX or x + w > width + BOX_SLACK_PX or y + h > height + BOX_SLACK_PX:
            raise DatasetError(
                f"{where}: annotation id {key}: box {box} (x, y, width, height) lies outside its image "
                f"({width}x{height}, image id {image_id}); fix the box or the image size"
            )
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
        cx, cy, bw, bh = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height
        lines[image_id].append(f"{class_of[category]} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
    found = []
    for image_id, record in images.items():
        path = _image_path(record, source, split)
        if path is None:
            raise DatasetError(
                f"{where}: image id {image_id} '{record.get('file_name')}' was not found beside the annotations "
                f"or in images/{split}/; add the image or remove it from the file"
            )
        width, height = record.get("width"), record.get("height")
        with Image.open(path) as image:
            actual = image.size
        if (width, height) != actual:
            raise DatasetError(
                f"{where}: image id {image_id} '{record.get('file_name')}' is {actual[0]}x{actual[1]} pixels but the "
                f"annotations say {width}x{height}; export the annotations again for these images"
            )
        found.append((path, lines[image_id]))
    return CocoSplit(split, source, found, crowd)


def convert_coco(root: Path, out: Path, *, limits: Limits) -> tuple[Path, list[str]]:
    """Write the COCO dataset under `root` as a YOLO dataset in `out` (images copied); (data.yaml, notes).

    Class ids follow the categories' ids in ascending order; names are the categories' names.

    Raises:
        DatasetError: a file or record that cannot be trained on, naming the file, the record and the fix.
        LimitExceeded: too many categories or too long a name.
    """
    files = find_coco_files(root)
    if not files:
        raise DatasetError(f"{root.name}: no COCO annotation file (instances*.json or {ROBOFLOW_NAME})")
    first = _load_json(files[0], str(files[0].relative_to(root)))
    categories = read_categories(first, str(files[0].relative_to(root)), limits)
    class_of = {category: n for n, category in enumerate(sorted(categories))}
    splits = [  # each file is read once; the first already was, for the categories
        read_split(path, first if path == files[0] else _load_json(path, str(path.relative_to(root))), root,
                   class_of, limits)
        for path in files
    ]  # fmt: skip
    seen: dict[str, Path] = {}
    for part in splits:
        if part.split in seen:
            raise DatasetError(
                f"{part.source.relative_to(root)} and {seen[part.split].relative_to(root)} are both the "
                f"'{part.split}' split; keep one annotation file per split"
            )
        seen[part.split] = part.source
    notes = []
    for part in splits:
        images_out, labels_out = out / "images" / part.split, out / "labels" / part.split
        images_out.mkdir(parents=True, exist_ok=True)
        labels_out.mkdir(parents=True, exist_ok=True)
        for n, (image, lines) in enumerate(part.images):
            stem = f"{n:06d}_{image.stem}"  # unique even when two folders hold the same file name
            shutil.copy2(image, images_out / f"{stem}{image.suffix.lower()}")
            (labels_out / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines))
        if part.skipped_crowd:
            notes.append(f"{part.split}: {part.skipped_crowd} crowd annotation(s) (iscrowd) skipped, as COCO does")
    names = "\n".join(f"  {n}: {json.dumps(categories[c])}" for c, n in class_of.items())
    yaml_path = out / "data.yaml"
    yaml_path.write_text(f"names:\n{names}\n")  # the splits are found from the folders, as for any upload
    return yaml_path, notes
