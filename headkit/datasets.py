"""Uploaded zip or folder → validated YOLO detection dataset with a data.yaml Ultralytics accepts, or a clear refusal."""

from __future__ import annotations

import logging
import shutil
import tempfile
import warnings as pywarnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from ultralytics.data.utils import IMG_FORMATS, check_det_dataset, img2label_paths

from headkit.archive import ArchiveError, ZipLimits, extract_zip
from headkit.coco import convert_coco, find_coco_files
from headkit.folders import (
    DATASET_FILES,
    FOLDER_STRUCTURES,
    SPLITS,
    Record,
    find_classes_txt,
    find_root,
    find_splits,
    is_dataset_file,
    is_normalized,
    labels_dir,
    materialize,
    rel,
    split_val,
    visible,
)
from headkit.labels import DatasetError, load_yaml, names_file_bytes, parse_label_line, read_label_rows, read_names
from headkit.limits import Limits
from headkit.settings import current_limits
from headkit.worker import run_in_worker

__all__ = ["DatasetError", "DatasetSummary", "SplitCounts", "ZipLimits", "load_dataset", "parse_label_line"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitCounts:
    """What one split holds; `per_class` maps every class id to its box count (zeros included)."""

    images: int
    labelled: int
    boxes: int
    per_class: dict[int, int]


@dataclass(frozen=True)
class DatasetSummary:
    """A validated dataset: `yaml_path` has no `path:` key, so its splits resolve against `root` from any cwd."""

    root: Path
    yaml_path: Path
    names: dict[int, str]
    splits: dict[str, SplitCounts]
    warnings: list[str]

    def to_dict(self) -> dict:
        """JSON-friendly view (string keys, class names instead of ids) for the app and `gradio_client`."""
        splits = {
            split: {
                "images": c.images,
                "labelled": c.labelled,
                "boxes": c.boxes,
                "per_class": {self.names[i]: n for i, n in c.per_class.items()},
            }
            for split, c in self.splits.items()
        }
        return {
            "root": str(self.root),
            "yaml_path": str(self.yaml_path),
            "names": {str(i): n for i, n in self.names.items()},
            "splits": splits,
            "warnings": list(self.warnings),
        }


def load_dataset(
    source: str | Path,
    *,
    work_dir: str | Path | None = None,
    base_names: Iterable[str] = (),
    val_fraction: float = 0.2,
    limits: Limits | None = None,
    zip_limits: ZipLimits = ZipLimits(),  # noqa: B008 (frozen dataclass, immutable)
) -> DatasetSummary:
    """Validate a YOLO or COCO JSON detection dataset (folder or .zip) and return where Ultralytics can train on it.

    Without YOLO label files, any JSON file near the top holding COCO `images`, `annotations` and `categories` lists
    (Roboflow's `_annotations.coco.json`, COCO's and CVAT's `instances_*.json`, Label Studio's `result.json`; see
    `headkit.coco`) is checked record by record and written out in YOLO folder structure in a new folder; class ids follow the
    category ids in ascending order. Other JSON files are ignored with a note.

    Without a val split, `val_fraction` of the train images (chosen by a hash of their names: the same every time)
    become the val split, and a note says so.

    A zip is always rebuilt: only images, label .txt files, classes.txt and the root yaml are extracted, and the
    dataset is laid out afresh in a new folder under `work_dir` (a new temporary folder when None), so nothing else
    from the upload (a `labels/*.cache` Ultralytics would unpickle, say) ever sits beside the data it trains on.

    A folder is the caller's own: one that already has train and val splits and a data.yaml pointing at them without
    `path:` is used in place and never written to, `*.cache` files included; pass anything from a stranger as a zip.
    Other folders (Roboflow folder structure, no val split, no data.yaml) are rebuilt like zips. The new folder is removed again
    on refusal.

    The reading runs in a worker process (`headkit.worker`) with `limits.max_worker_mb` of memory and
    `max_worker_s` of wall time: whatever an upload costs beyond them (a bound no check foresaw) stops that worker,
    never the caller. Its refusals reach the caller as the same types with the same messages.

    Args:
        source: Dataset folder or .zip, in Ultralytics or Roboflow YOLO folder structure, possibly inside one top folder.
        work_dir: Where zips are extracted and datasets rebuilt.
        base_names: The base model's class names; a new class with the same name is warned about.
        val_fraction: Share of train images moved to val when there is no val split.
        limits: `max_classes` and `max_class_name_chars`, checked as soon as data.yaml or classes.txt is
            read, before anything per class or per image; `max_boxes_per_image` per label file or COCO image; the
            `max_json_*` limits before a JSON file is parsed; None: `current_limits()` (defaults raised or lowered by
            `HEADKIT_MAX_*` environment variables). The same `Limits` as `load_head(limits=)` and `merge(limits=)`.
        zip_limits: Bounds for zip uploads (entries, bytes, the disk budget they draw on).

    Raises:
        LimitExceeded: Too many classes (data.yaml `names:`/`nc:`, classes.txt), a too long class name, too many boxes
            on one image, or a JSON file too big, with too many records or values.
        DatasetError: The dataset cannot be trained on as it is; the message says where, why and how to fix it.
        WorkerLimitExceeded: Reading the dataset needed more memory than `max_worker_mb` or more time than
            `max_worker_s` (a `LimitExceeded`).
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if isinstance(limits, ZipLimits):  # the keyword's meaning before 0.1: say so rather than misread it
        raise TypeError("load_dataset(limits=) takes headkit.Limits; pass zip bounds as zip_limits=ZipLimits(...)")
    limits = current_limits() if limits is None else limits
    # made here, not in the worker: what a killed worker wrote is removed here
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="headkit-dataset-", dir=work_dir))
    try:
        summary = run_in_worker(
            _read_dataset, Path(source), folder, tuple(base_names), val_fraction, zip_limits, limits,
            task="reading the dataset", advice="upload fewer or smaller images and annotation files",
            limits=limits,
        )  # fmt: skip
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if not any(folder.iterdir()):  # used in place: nothing was written
        folder.rmdir()
    return summary


def _read_dataset(
    source: Path,
    folder: Path,
    base_names: tuple[str, ...],
    val_fraction: float,
    zip_limits: ZipLimits,
    limits: Limits,
) -> DatasetSummary:
    """`load_dataset`'s work, in its worker: the dataset read, checked and rebuilt (if need be) in `folder`."""
    job = _Job(folder)
    options = {"base_names": base_names, "val_fraction": val_fraction, "limits": limits}
    try:
        if source.is_dir():
            return _load_any(source, job, from_zip=False, notes=[], **options)
        if source.is_file() and source.suffix.lower() == ".zip":
            extracted = job.path / "extracted"
            notes = extract_zip(source, extracted, limits=zip_limits, keep=is_dataset_file, kept=DATASET_FILES)
            summary = _load_any(extracted, job, from_zip=True, notes=notes, **options)
            shutil.rmtree(extracted, ignore_errors=True)  # what is left: files no split uses
            return summary
        found = "nothing" if not source.exists() else f"a {source.suffix or 'extension-less'} file"
        raise DatasetError(f"{source}: expected a dataset folder or a .zip, found {found}")
    except ArchiveError as e:
        raise DatasetError(str(e)) from e


class _Job:
    """The folder for extracted or rebuilt data (made by `load_dataset`, left empty for datasets used in place)."""

    def __init__(self, path: Path) -> None:
        self.path = path


def _has_yolo_labels(folder: Path) -> bool:
    return any(p.name != "classes.txt" for p in folder.rglob("*.txt") if "labels" in p.parts)


def _load_any(base: Path, job: _Job, *, from_zip: bool, notes: list[str], **options) -> DatasetSummary:
    """YOLO labels if there are any; else COCO JSON (every record checked, converted into a YOLO folder in the job).

    JSON files are parsed only when there are no YOLO labels; the ones that are not COCO are named in the notes, and
    in the refusal when no other annotations are found either.
    """
    if _has_yolo_labels(base):
        return _load(base, job, from_zip=from_zip, notes=notes, **options)
    found, ignored = find_coco_files(base, limits=options["limits"])
    if not found:
        try:
            return _load(base, job, from_zip=from_zip, notes=[*notes, *ignored], **options)
        except DatasetError as e:
            if not ignored:
                raise
            raise DatasetError(f"{e}; JSON files seen: {'; '.join(ignored)}") from e
    converted = job.path / "converted"
    more = convert_coco(found, base, converted, limits=options["limits"], move=from_zip)  # an extraction is ours
    del found  # the parsed JSON, before the converted dataset is checked
    summary = _load(converted, job, from_zip=True, notes=[*notes, *ignored, *more], **options)
    shutil.rmtree(converted, ignore_errors=True)
    return summary


def _load(
    base: Path,
    job: _Job,
    *,
    from_zip: bool,
    notes: list[str],
    base_names: Iterable[str],
    val_fraction: float,
    limits: Limits,
) -> DatasetSummary:
    root = find_root(base)
    dirs = find_splits(root, base)
    yaml_path = next((root / n for n in ("data.yaml", "data.yml") if (root / n).is_file()), None)
    yaml_rel = rel(yaml_path, base) if yaml_path else ""
    data = load_yaml(yaml_path, yaml_rel, max_bytes=names_file_bytes(limits)) if yaml_path else {}
    txt = find_classes_txt(root, dirs)
    names = read_names(data, yaml_rel, txt, rel(txt, base) if txt else "", limits=limits)
    records = {split: _scan_split(d, base, len(names), notes, split, limits) for split, d in dirs.items()}
    records = {split: records[split] for split in SPLITS if records.get(split)}
    if not records:
        formats = ", ".join(sorted(IMG_FORMATS))
        raise DatasetError(f"{root.name}: no images found; expected image files ({formats}) in {FOLDER_STRUCTURES}")
    if "train" not in records:
        raise DatasetError(f"{root.name}: the train split has no images; expected {FOLDER_STRUCTURES}")
    # Never in place for a zip: its folder may hold what Ultralytics loads unchecked (labels/*.cache is unpickled).
    in_place = not from_zip and "val" in records and is_normalized(data, yaml_path, root, {s: dirs[s] for s in records})
    if "val" not in records:
        records["train"], records["val"] = split_val(records["train"], val_fraction, root.name)
        notes.append(
            f"no val split: {len(records['val'])} of the {len(records['val']) + len(records['train'])} train images "
            f"({val_fraction:.0%}) were set aside as val, chosen by a hash of their file names (the same every time); "
            "add a val split to choose them yourself"
        )
    out = root if in_place else job.path / "dataset"
    yaml_out = yaml_path if in_place else materialize(records, names, out, move=from_zip)
    try:
        check_det_dataset(str(yaml_out), autodownload=False)
    except (SyntaxError, TypeError, KeyError, AssertionError, FileNotFoundError, ValueError) as e:
        raise DatasetError(f"{yaml_out.name}: Ultralytics refused the dataset ({e})") from e
    taken = {n.strip().lower() for n in base_names}
    for i, name in names.items():
        if name.lower() in taken:
            notes.append(
                f"class '{name}' (id {i}) is also a class of the base model; the merged model will report both, "
                "rename it if it means something else"
            )
    for note in notes:
        logger.warning(note)
    counts = {split: _count(recs, len(names)) for split, recs in records.items()}
    return DatasetSummary(root=out, yaml_path=yaml_out, names=names, splits=counts, warnings=notes)


def _check_image(path: Path, where: str, limits: Limits) -> None:
    """Refuse what Ultralytics would drop or choke on: unreadable, truncated, tiny, exotic or huge images.

    Huge means over `limits.max_image_pixels`, the cap Compare applies too, checked from the header before decoding.
    """
    try:
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                size, fmt = im.size, (im.format or "").lower()
                if size[0] * size[1] > limits.max_image_pixels:
                    raise Image.DecompressionBombError(f"{size[0]}x{size[1]} pixels")
                im.verify()
            with Image.open(path) as im:
                im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DatasetError(
            f"{where}: image too large ({e}); at most {limits.max_image_pixels} pixels are accepted; resize it"
        ) from e
    except Exception as e:  # PIL raises many types on malformed files (OSError, SyntaxError, struct.error, ...)
        raise DatasetError(f"{where}: not a readable image ({e}); re-export it as JPEG or PNG, or delete it") from e
    if fmt not in IMG_FORMATS | {"jpeg2000"}:
        raise DatasetError(f"{where}: is a {fmt.upper()} file; Ultralytics reads {', '.join(sorted(IMG_FORMATS))}")
    if min(size) < 10:
        raise DatasetError(f"{where}: {size[0]}x{size[1]} pixels; Ultralytics skips images under 10 px, delete it")


def _scan_split(images_dir: Path, base: Path, nc: int, notes: list[str], split: str, limits: Limits) -> list[Record]:
    """Check every image and label of one split; record its boxes and note background images and orphan labels."""
    images = sorted(
        p
        for p in images_dir.rglob("*")
        if p.suffix[1:].lower() in IMG_FORMATS
        and p.is_file()
        and all(visible(Path(part)) for part in p.relative_to(images_dir).parts)
    )
    labels = [Path(p) for p in img2label_paths(images)]
    records, background = [], []
    for image, label in zip(images, labels, strict=True):
        _check_image(image, rel(image, base), limits)
        classes = []
        if label.is_file():
            where = rel(label, base)
            for no, line in read_label_rows(label, where, limits=limits):
                classes.append(parse_label_line(line, nc=nc, file=where, line_no=no)[0])
        if not classes:
            background.append(rel(image, base))
        records.append(Record(image, images_dir, classes))
    folder = labels_dir(images_dir)
    orphans = sorted(set(folder.rglob("*.txt")) - set(labels) - set(folder.rglob("classes.txt")))
    for what, files in (
        ("image(s) without boxes (background images)", background),
        ("label file(s) without an image, ignored", [rel(p, base) for p in orphans]),
    ):
        if files:
            more = f" and {len(files) - 5} more" if len(files) > 5 else ""
            notes.append(f"{split}: {len(files)} {what}: {', '.join(files[:5])}{more}")
    return records


def _count(records: list[Record], nc: int) -> SplitCounts:
    classes = [c for r in records for c in r.classes]
    per_class = dict(enumerate(np.bincount(np.asarray(classes, dtype=np.int64), minlength=nc).tolist()))
    labelled = sum(bool(r.classes) for r in records)
    return SplitCounts(images=len(records), labelled=labelled, boxes=len(classes), per_class=per_class)
