"""The shared plates exported as COCO JSON, the way annotation tools write it: a real COCO dataset for the tests."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

from PIL import Image

# layout -> (the plate category's id, first image id, first annotation id), as each tool numbers them
NUMBERING = {"roboflow": (1, 1, 100), "coco": (7, 1, 100), "cvat": (1, 1, 1), "label_studio": (0, 0, 0)}


def _places(out: Path, layout: str, split: str) -> tuple[Path, Path, str]:
    """Where one split's images and annotation file go, and the folder its `file_name`s name."""
    if layout == "roboflow":
        folder = out / ("valid" if split == "val" else split)
        return folder, folder / "_annotations.coco.json", ""
    if layout == "coco":
        return out / "images" / split, out / "annotations" / f"instances_{split}.json", ""
    if layout == "cvat":
        return out / "images", out / "annotations" / "instances_default.json", ""
    return out / "images", out / "result.json", "images/"


def export_coco(plates_dir: Path, out: Path, *, layout: str, counts=(("train", 12), ("val", 6))) -> Path:
    """Write a few real plate images with their boxes as COCO JSON, the way annotation tools export them.

    layout "roboflow": train/ and valid/ folders, each with its images and `_annotations.coco.json`; categories start
    with the unused supercategory row at id 0 and the plate class at id 1.
    layout "coco": `annotations/instances_<split>.json` and images in `images/<split>/`; the plate class has id 7.
    layout "cvat": one `annotations/instances_default.json` for all images, in `images/`; ids from 1; no val split.
    layout "label_studio": one `result.json` beside `images/`; `file_name`s `images/<name>`, every other one with a
    Windows separator (`images\\<name>`); category, image and annotation ids from 0; no val split.
    """
    category, first_image, annotation_id = NUMBERING[layout]
    files: dict[Path, dict] = {}
    for split, count in counts:
        images_dir, target, prefix = _places(out, layout, split)
        images_dir.mkdir(parents=True, exist_ok=True)
        data = files.setdefault(target, {"info": {"description": "license plates"}, "images": [], "annotations": []})
        data["categories"] = [{"id": category, "name": "license_plate", "supercategory": "plates"}]
        if layout == "roboflow":
            data["categories"].insert(0, {"id": 0, "name": "plates", "supercategory": "none"})
        for image in sorted((plates_dir / "images" / split).glob("*.jpg"))[:count]:
            shutil.copy(image, images_dir / image.name)
            width, height = Image.open(image).size
            image_id = first_image + len(data["images"])  # numbered per file
            name = f"{prefix.replace('/', chr(92)) if image_id % 2 else prefix}{image.name}"
            data["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
            for line in (plates_dir / "labels" / split / f"{image.stem}.txt").read_text().splitlines():
                _, cx, cy, w, h = (float(v) for v in line.split())
                box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
                data["annotations"].append(
                    {"id": annotation_id, "image_id": image_id, "category_id": category, "bbox": box,
                     "area": box[2] * box[3], "iscrowd": 0}
                )  # fmt: skip
                annotation_id += 1
    for target, data in files.items():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(data))
    return out


def zipped(folder: Path) -> Path:
    archive = folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*")):
            z.write(path, Path("export") / path.relative_to(folder))
    return archive
