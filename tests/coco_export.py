"""The shared plates exported as COCO JSON, the way annotation tools write it: a real COCO dataset for the tests."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

from PIL import Image


def export_coco(plates_dir: Path, out: Path, *, layout: str, counts=(("train", 12), ("val", 6))) -> Path:
    """Write a few real plate images with their boxes as COCO JSON, the way annotation tools export them.

    layout "roboflow": train/ and valid/ folders, each with its images and `_annotations.coco.json`; categories start
    with the unused supercategory row at id 0 and the plate class at id 1.
    layout "coco": `annotations/instances_<split>.json` and images in `images/<split>/`; the plate class has id 7.
    """
    category = 1 if layout == "roboflow" else 7
    annotation_id = 100
    for split, count in counts:
        images_dir = out / ("valid" if split == "val" else split) if layout == "roboflow" else out / "images" / split
        images_dir.mkdir(parents=True, exist_ok=True)
        data = {"info": {"description": "license plates"}, "images": [], "annotations": [], "categories": []}
        data["categories"] = [{"id": category, "name": "license_plate", "supercategory": "plates"}]
        if layout == "roboflow":
            data["categories"].insert(0, {"id": 0, "name": "plates", "supercategory": "none"})
        for image_id, image in enumerate(sorted((plates_dir / "images" / split).glob("*.jpg"))[:count], start=1):
            shutil.copy(image, images_dir / image.name)
            width, height = Image.open(image).size
            data["images"].append({"id": image_id, "file_name": image.name, "width": width, "height": height})
            for line in (plates_dir / "labels" / split / f"{image.stem}.txt").read_text().splitlines():
                _, cx, cy, w, h = (float(v) for v in line.split())
                box = [(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height]
                data["annotations"].append(
                    {"id": annotation_id, "image_id": image_id, "category_id": category, "bbox": box,
                     "area": box[2] * box[3], "iscrowd": 0}
                )  # fmt: skip
                annotation_id += 1
        target = images_dir / "_annotations.coco.json" if layout == "roboflow" else out / "annotations"
        if layout == "coco":
            target.mkdir(exist_ok=True)
            target = target / f"instances_{split}.json"
        target.write_text(json.dumps(data))
    return out


def zipped(folder: Path) -> Path:
    archive = folder.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w") as z:
        for path in sorted(folder.rglob("*")):
            z.write(path, Path("export") / path.relative_to(folder))
    return archive
