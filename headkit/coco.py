"""COCO JSON detection datasets: find their annotation files, check every record, write them out in YOLO folder structure.

Annotation tools (Roboflow, CVAT, Label Studio) and public data sets export COCO JSON as often as YOLO text. Ultralytics'
own `convert_coco` assumes COCO's category ids (1-based, optionally the 91 -> 80 map) and checks nothing, so a file
with ids from 0, an unknown image or a box outside its image would train silently wrong; this module reads the same
format with every record checked, and refuses with the file, the record and what to fix.

Any JSON file near the top of an upload that holds `images`, `annotations` and `categories` lists is read, whatever
its name; its split comes from its folder (`train/`, `valid/`) or its name (`instances_val2017.json`), else it is the
train split. Layouts this covers (in a folder or an extracted zip, possibly inside one top folder):
- Roboflow: `train/_annotations.coco.json`, `valid/...`, `test/...`, each beside its images;
- COCO and CVAT: `annotations/instances_<split>*.json` with images in `<split>*/`, `images/<split>*/`, `images/` or the
  root;
- Label Studio: one `result.json` beside `images/`, whose `file_name`s read `images/<name>` (or `images\\<name>`).
"""

from __future__ import annotations

import json
import os
import reprlib
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from PIL import Image

from .folders import JSON_PARTS, SPLIT_NAMES, visible
from .labels import DatasetError, is_int, load_json
from .limits import Limits

COCO_KEYS = ("images", "annotations", "categories")
BOX_SLACK_PX = 1.0  # exporters round box corners; anything further outside the image is an error
MAX_JSON_FILES = 8
"""JSON files read from one upload: a COCO export has one per split, and each file is parsed whole."""
_COUNT_CHUNK = 1 << 23
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class CocoFile:
    """A COCO detection file of an upload: where it is, the split it holds, its records (parsed within the limits)."""

    path: Path
    split: str
    data: dict


@dataclass(frozen=True)
class CocoSplit:
    """One annotation file's images (path, YOLO label lines) after every record was checked."""

    split: str
    images: list[tuple[Path, list[str]]]
    skipped_crowd: int


def json_files(root: Path) -> list[Path]:
    """Visible JSON files at most `JSON_PARTS` deep under `root` (the upload, or its one wrapping folder), in order."""
    patterns = ["/".join(["*"] * depth) for depth in range(1, JSON_PARTS + 1)]
    return sorted(
        p
        for pattern in patterns
        for p in root.glob(pattern)
        if p.suffix.lower() == ".json" and p.is_file() and all(visible(Path(x)) for x in p.relative_to(root).parts)
    )


def find_coco_files(root: Path, *, limits: Limits) -> tuple[list[CocoFile], list[str]]:
    """The COCO detection files under `root`, each parsed once within the JSON limits; notes on other JSON files.

    Raises:
        DatasetError: Over `MAX_JSON_FILES` JSON files, two files for one split, or a JSON file that cannot be read.
        LimitExceeded: A JSON file, or the upload's JSON files together, over `max_json_mb`, `max_json_records` or
            `max_json_values` (see `check_request_budget`).
    """
    candidates = json_files(root)
    if len(candidates) > MAX_JSON_FILES:
        shown = ", ".join(p.relative_to(root).as_posix() for p in candidates[:5])
        raise DatasetError(
            f"{root.name}: {len(candidates)} JSON files ({shown}, ...), but at most {MAX_JSON_FILES} are read; a COCO "
            "export has one per split: remove the others"
        )
    check_request_budget(candidates, root, limits=limits)
    found: list[CocoFile] = []
    notes = []
    for path in candidates:
        where = path.relative_to(root).as_posix()
        data = load_json(path, where, limits=limits)
        if not (isinstance(data, dict) and all(isinstance(data.get(k), list) for k in COCO_KEYS)):
            notes.append(
                f"{where}: not a COCO detection file (no 'images', 'annotations' and 'categories' lists), ignored"
            )
            continue
        split = _split_of(path)
        twin = next((f for f in found if f.split == split), None)
        if twin is not None:
            raise DatasetError(
                f"{where} and {twin.path.relative_to(root).as_posix()} are both the '{split}' split; keep one "
                "annotation file per split, and name the others instances_val.json / instances_test.json (or put "
                "them in a valid/ or test/ folder)"
            )
        found.append(CocoFile(path, split, data))
    return found, notes


def check_request_budget(paths: list[Path], root: Path, *, limits: Limits) -> None:
    """Refuse JSON files whose sizes, records or values add up to more than one file may have, before any is parsed.

    Every file of an upload is parsed and kept until the upload is converted, so the `max_json_*` limits bound all of
    them together: three files each just under `max_json_values` would otherwise cost three times the budget in one
    request. Counted as `labels.load_json` counts one file ('{' and '[' for records; ',' and ':' for values), reading
    each file in chunks (nothing kept), after the sizes alone were checked from the folder.

    Raises:
        LimitExceeded: the files together over `max_json_mb`, `max_json_records` or `max_json_values`.
    """
    if len(paths) < 2:
        return  # one file: `load_json` checks it against the same limits
    what = f"{root.name}: its {len(paths)} JSON files together ({', '.join(p.name for p in paths)})"
    sizes = []
    for path in paths:
        try:
            sizes.append(path.stat().st_size)
        except OSError as e:
            raise DatasetError(f"{path.relative_to(root).as_posix()}: cannot be read ({e.strerror})") from e
    limits.check("max_json_mb", sum(sizes) / 2**20, f"{what}: size in MB")
    records = values = 0
    for path in paths:
        with open(path, "rb") as stream:
            while chunk := stream.read(_COUNT_CHUNK):
                opened = chunk.count(b"{") + chunk.count(b"[")
                records += opened
                values += opened + chunk.count(b",") + chunk.count(b":")
        values += 1
    limits.check("max_json_records", records, f"{what}: objects and arrays ('{{' and '[' characters)")
    limits.check("max_json_values", values, f"{what}: values and keys ('{{', '[', ',' and ':' characters)")


def _split_of(path: Path) -> str:
    """train / val / test from the folder (Roboflow's `valid/`) or the name (`instances_val2017.json`), else train."""
    folder = SPLIT_NAMES.get(path.parent.name.lower())
    if folder:
        return folder
    stem = path.stem.lower().removeprefix("instances").strip("_-")
    return next((split for prefix, split in SPLIT_NAMES.items() if stem.startswith(prefix)), "train")


def _ids(records: list, record_type: str, where: str) -> dict[int, dict]:
    """Records by their integer id; a missing, non-integer or repeated id is an error naming it."""
    by_id: dict[int, dict] = {}
    for n, record in enumerate(records):
        key = record.get("id") if isinstance(record, dict) else None
        if not is_int(key):
            raise DatasetError(f"{where}: {record_type} #{n + 1} has no integer 'id' ({reprlib.repr(record)})")
        if key in by_id:
            raise DatasetError(f"{where}: {record_type} id {key} appears twice; every {record_type} needs its own id")
        by_id[key] = record
    return by_id


def read_categories(data: dict, where: str, limits: Limits) -> dict[int, str]:
    """Category id -> name, without the unused parent category some exporters add (Roboflow's supercategory row)."""
    categories = _ids(data["categories"], "category", where)
    used = {a.get("category_id") for a in data["annotations"] if isinstance(a, dict) and is_int(a.get("category_id"))}
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


def _image_size(record: dict, image_id: int, where: str) -> tuple[int, int]:
    width, height = record.get("width"), record.get("height")
    if not (is_int(width) and is_int(height) and width > 0 and height > 0):
        raise DatasetError(
            f"{where}: image id {image_id} '{record.get('file_name')}' has no integer width and height "
            f"({width!r} x {height!r}); export the annotations again with image sizes"
        )
    return width, height


def image_folders(source: Path, split: str) -> tuple[Path, list[Path]]:
    """The dataset folder of annotation file `source`, and the folders its images are looked for in, in order.

    Beside the annotation file, then in the dataset folder (the parent of `annotations/`): `images/<split>/`,
    `images/`, itself, and its and `images/`'s sub-folders named like the split (`val2017/`). Listed once per file.
    """
    root = source.parent.parent if source.parent.name.lower() == "annotations" else source.parent
    folders = [source.parent, root / "images" / split, root / "images", root]
    folders += sorted(p for p in root.glob("*") if p.is_dir() and p.name.lower().startswith(split))
    folders += sorted(p for p in (root / "images").glob("*") if p.is_dir() and p.name.lower().startswith(split))
    return root, folders


class FolderIndex:
    """The file names of each folder, listed once on first use, so finding N images costs O(N) and not N listings.

    Looking an image up by `Path.is_file` in each candidate folder, with the candidates found by listing the upload's
    top for every record, made a 20,000-image COCO file cost hours of CPU (quadratic); here each folder is listed at
    most once per import, whatever the number of records.
    """

    def __init__(self) -> None:
        self._names: dict[Path, frozenset[str]] = {}

    def has_file(self, path: Path) -> bool:
        """Whether `path` is a file (links followed, as `Path.is_file`), from its folder's one listing."""
        names = self._names.get(path.parent)
        if names is None:
            names = self._names[path.parent] = _file_names(path.parent)
        return path.name in names


def _file_names(folder: Path) -> frozenset[str]:
    try:
        with os.scandir(folder) as entries:
            return frozenset(e.name for e in entries if _is_file(e))
    except OSError:  # no such folder (a name with folders that do not exist), or not a folder
        return frozenset()


def _is_file(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:
        return False


def _image_path(record: dict, root: Path, folders: list[Path], index: FolderIndex) -> Path | None:
    """The image of `record` in the first of `folders` (see `image_folders`) that holds it; None if none does.

    Windows separators are read as `/`; a name with folders (Label Studio's `images/x.jpg`, or an upload path of the
    machine it came from) is also looked for by its file name alone, never outside the dataset folder `root`.
    """
    name = str(record.get("file_name") or "").replace("\\", "/")
    parts = PurePosixPath(name).parts
    if not parts:
        return None
    inside = not (name.startswith("/") or PureWindowsPath(name).drive or ".." in parts)
    names = ([name] if inside else []) + ([parts[-1]] if len(parts) > 1 and parts[-1] != ".." else [])
    top = root.resolve()
    paths = (folder / n for n in names for folder in folders)
    return next((p for p in paths if index.has_file(p) and p.resolve().is_relative_to(top)), None)


def _box_lines(
    data: dict,
    images: dict[int, dict],
    categories: dict[int, str],
    class_of: dict[int, int],
    where: str,
    limits: Limits,
) -> tuple[dict[int, list[str]], int]:
    """Image id -> YOLO label lines of its boxes, and how many crowd annotations were skipped."""
    lines: dict[int, list[str]] = {i: [] for i in images}
    crowd = 0
    for annotation in data["annotations"]:
        key, image_id, category = annotation["id"], annotation.get("image_id"), annotation.get("category_id")
        if not is_int(image_id) or image_id not in images:
            raise DatasetError(f"{where}: annotation id {key} refers to image id {image_id}, which is not in 'images'")
        if not is_int(category) or category not in categories:
            raise DatasetError(
                f"{where}: annotation id {key} has category id {category}, which is not in 'categories' "
                f"({', '.join(f'{i}: {n}' for i, n in categories.items())})"
            )
        if annotation.get("iscrowd"):
            crowd += 1
            continue
        rows = lines[image_id]
        if len(rows) >= limits.max_boxes_per_image:
            count = sum(a.get("image_id") == image_id and not a.get("iscrowd") for a in data["annotations"])
            name = images[image_id].get("file_name")
            limits.check("max_boxes_per_image", count, f"{where}: boxes of image id {image_id} '{name}'")
        rows.append(_yolo_line(annotation, images[image_id], class_of[category], where))
    return lines, crowd


def _yolo_line(annotation: dict, image: dict, class_id: int, where: str) -> str:
    key, (width, height), box = annotation["id"], (image["width"], image["height"]), annotation.get("bbox")
    numbers = isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box)
    if not numbers or any(isinstance(v, bool) for v in box):
        raise DatasetError(f"{where}: annotation id {key}: 'bbox' should be [x, y, width, height], got {box!r}")
    x, y, w, h = (float(v) for v in box)
    if w <= 0 or h <= 0:
        raise DatasetError(f"{where}: annotation id {key}: box {box} has no area; fix or delete it")
    if x < -BOX_SLACK_PX or y < -BOX_SLACK_PX or x + w > width + BOX_SLACK_PX or y + h > height + BOX_SLACK_PX:
        raise DatasetError(
            f"{where}: annotation id {key}: box {box} (x, y, width, height) lies outside its image "
            f"({width}x{height}, image id {annotation['image_id']}); fix the box or the image size"
        )
    x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
    cx, cy, bw, bh = (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height
    return f"{class_id} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}"


def read_split(
    coco: CocoFile,
    root: Path,
    class_of: dict[int, int],
    limits: Limits,
    seen: dict[Path, str],
    index: FolderIndex | None = None,
) -> CocoSplit:
    """Check one annotation file against its images; its boxes as YOLO lines.

    `seen` maps each image file already used (by any file) to its record, so that no file serves two records: a
    thousand records naming one image would otherwise write it a thousand times. `index` lists each folder once for
    every file of the upload (a new one when None).
    """
    index = FolderIndex() if index is None else index
    where = coco.path.relative_to(root).as_posix()
    images = _ids(coco.data["images"], "image", where)
    sizes = {i: _image_size(record, i, where) for i, record in images.items()}
    _ids(coco.data["annotations"], "annotation", where)
    categories = read_categories(coco.data, where, limits)
    for i, name in categories.items():
        if i not in class_of:
            raise DatasetError(f"{where}: category {i} '{name}' is not in the other annotation files' categories")
    lines, crowd = _box_lines(coco.data, images, categories, class_of, where, limits)
    dataset, folders = image_folders(coco.path, coco.split)
    found = []
    for image_id, record in images.items():
        name, path = record.get("file_name"), _image_path(record, dataset, folders, index)
        if path is None:
            raise DatasetError(
                f"{where}: image id {image_id} '{name}' was not found beside the annotations or in "
                f"images/{coco.split}/; add the image or remove it from the file"
            )
        if (first := seen.get(path.resolve())) is not None:
            raise DatasetError(
                f"{first} and {where} image id {image_id} both name '{name}'; each image file may have one image "
                "record: merge their annotations into one record and delete the other"
            )
        seen[path.resolve()] = f"{where} image id {image_id}"
        try:
            with Image.open(path) as image:
                actual = image.size
        except _IMAGE_ERRORS as e:
            raise DatasetError(f"{where}: image id {image_id} '{name}' is not a readable image ({e})") from e
        if sizes[image_id] != actual:
            raise DatasetError(
                f"{where}: image id {image_id} '{name}' is {actual[0]}x{actual[1]} pixels but the annotations say "
                f"{sizes[image_id][0]}x{sizes[image_id][1]}; export the annotations again for these images"
            )
        found.append((path, lines[image_id]))
    return CocoSplit(coco.split, found, crowd)


def convert_coco(found: list[CocoFile], root: Path, out: Path, *, limits: Limits, move: bool = False) -> list[str]:
    """Write the COCO files `found` under `root` as a YOLO dataset in `out` (data.yaml, images, labels); notes.

    Class ids follow the categories' ids in ascending order; names are the categories' names. Each image file is
    written once (moved when `move`, for an extracted upload; else copied), so the output is no bigger than the input.

    Raises:
        DatasetError: a file or record that cannot be trained on, naming the file, the record and the fix.
        LimitExceeded: too many categories, too long a name, or too many boxes on one image.
    """
    categories = read_categories(found[0].data, found[0].path.relative_to(root).as_posix(), limits)
    class_of = {category: n for n, category in enumerate(sorted(categories))}
    seen: dict[Path, str] = {}
    index = FolderIndex()  # the upload's folders, each listed once for all its annotation files
    splits = [read_split(coco, root, class_of, limits, seen, index) for coco in found]
    transfer = shutil.move if move else shutil.copy2
    notes = []
    for part in splits:
        images_out, labels_out = out / "images" / part.split, out / "labels" / part.split
        images_out.mkdir(parents=True, exist_ok=True)
        labels_out.mkdir(parents=True, exist_ok=True)
        for n, (image, lines) in enumerate(part.images):
            stem = f"{n:06d}_{image.stem}"  # unique even when two folders hold the same file name
            transfer(image, images_out / f"{stem}{image.suffix.lower()}")
            (labels_out / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines))
        if part.skipped_crowd:
            notes.append(f"{part.split}: {part.skipped_crowd} crowd annotation(s) (iscrowd) skipped, as COCO does")
    names = "\n".join(f"  {n}: {json.dumps(categories[c])}" for c, n in class_of.items())
    (out / "data.yaml").write_text(f"names:\n{names}\n")  # the splits are found from the folders, as for any upload
    return notes
