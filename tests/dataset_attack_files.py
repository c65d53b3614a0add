"""Hostile dataset uploads as files, built the way the attacks work; shared by the tests and `benchmarks/soak.py`.

Each builder writes a dataset zip around one real image (any JPEG, e.g. a plate from ../shared) and returns its path.
Zips are stored, not deflated: the zip checks refuse a highly compressible entry as a bomb before any dataset check
would run, so a stored zip is what reaches the JSON and label checks, as an attacker who wants them would send it.
"""

from __future__ import annotations

import json
import os
import random
import zipfile
from pathlib import Path

from PIL import Image


def _zip(out: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(f"export/{name}", data)
    return out


def _coco(image: Path, out: Path, images: list[dict], annotations: list[dict]) -> Path:
    """A Label Studio style COCO zip: result.json beside images/ holding `image` only."""
    data = {"images": images, "annotations": annotations, "categories": [{"id": 0, "name": "plate"}]}
    return _zip(out, {f"images/{image.name}": image.read_bytes(), "result.json": json.dumps(data).encode()})


def one_image_many_records(image: Path, out: Path, *, records: int = 10_000) -> Path:
    """`records` COCO image records that all name `image`, with one box each: a copy per record is written unless
    records are deduplicated (a 2 MB zip wrote 400 MB)."""
    width, height = Image.open(image).size
    box = [1.0, 1.0, width / 4, height / 4]
    images = [{"id": i, "file_name": f"images/{image.name}", "width": width, "height": height} for i in range(records)]
    annotations = [{"id": i, "image_id": i, "category_id": 0, "bbox": box, "iscrowd": 0} for i in range(records)]
    return _coco(image, out, images, annotations)


def many_boxes_on_one_image(image: Path, out: Path, *, boxes: int = 10_000) -> Path:
    """One COCO image record with `boxes` annotations."""
    width, height = Image.open(image).size
    images = [{"id": 0, "file_name": f"images/{image.name}", "width": width, "height": height}]
    box = [1.0, 1.0, width / 4, height / 4]
    annotations = [{"id": i, "image_id": 0, "category_id": 0, "bbox": box, "iscrowd": 0} for i in range(boxes)]
    return _coco(image, out, images, annotations)


def json_of_empty_objects(image: Path, out: Path, *, objects: int = 5_000_000) -> Path:
    """result.json whose `images` list holds `objects` empty objects: 3 bytes each on disk, ~70 bytes once parsed."""
    text = '{"images": [' + "{}," * (objects - 1) + '{}], "annotations": [], "categories": []}'
    return _zip(out, {f"images/{image.name}": image.read_bytes(), "result.json": text.encode()})


def json_of_short_strings(image: Path, out: Path, *, strings: int = 10_000_000) -> Path:
    """result.json with one list of `strings` two-letter strings: no object but the top one, ~70 bytes per string."""
    text = '{"images": [], "annotations": [], "categories": [], "x": [' + '"ab",' * strings + "0]}"
    return _zip(out, {f"images/{image.name}": image.read_bytes(), "result.json": text.encode()})


def deeply_nested_json(image: Path, out: Path, *, depth: int = 100_000) -> Path:
    """result.json nested `depth` lists deep: `json.loads` raises RecursionError near 1,000 levels."""
    text = '{"images": ' + "[" * depth + "]" * depth + ', "annotations": [], "categories": []}'
    return _zip(out, {f"images/{image.name}": image.read_bytes(), "result.json": text.encode()})


def label_file_with_boxes(image: Path, out: Path, *, boxes: int = 10_000) -> Path:
    """A YOLO dataset (train and val, one image each) whose train label file has `boxes` rows (~20 bytes each)."""
    rows = "0 0.5 0.5 0.01 0.01\n" * boxes
    files = {
        f"images/train/{image.name}": image.read_bytes(),
        f"labels/train/{image.stem}.txt": rows.encode(),
        f"images/val/{image.name}": image.read_bytes(),
        f"labels/val/{image.stem}.txt": b"0 0.5 0.5 0.2 0.2\n",
        "data.yaml": b"train: images/train\nval: images/val\nnames: [plate]\n",
    }
    return _zip(out, files)


def coco_of_tiny_images(out: Path, *, records: int = 20_000) -> Path:
    """A COCO folder of `records` 16 x 16 images (hard links of one PNG: cheap to make) beside
    `annotations/instances_train.json`, one box each: the upload top holds every image, which made a per-record look
    around the top cost O(records) each (19,999 records: > 240 s of CPU per call)."""
    (out / "annotations").mkdir(parents=True)
    one = out.parent / f"{out.name}-pixel.png"
    Image.new("RGB", (16, 16), (90, 90, 90)).save(one)
    images, annotations = [], []
    for i in range(records):
        name = f"img{i:06d}.png"
        os.link(one, out / name)
        images.append({"id": i, "file_name": name, "width": 16, "height": 16})
        annotations.append({"id": i, "image_id": i, "category_id": 1, "bbox": [2, 2, 8, 8], "iscrowd": 0})
    data = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    (out / "annotations" / "instances_train.json").write_text(json.dumps(data))
    return out


def json_files_each_under_the_limit(image: Path, out: Path, *, strings: int) -> Path:
    """Three COCO files (train, val, test), each holding a list of `strings` two-letter strings: each file passes the
    per-file JSON limits, and all three are parsed and kept at once (a 48 MiB zip cost +1.7 GiB per request)."""
    files = {f"images/{image.name}": image.read_bytes()}
    for split in ("train", "val", "test"):
        text = '{"images": [], "annotations": [], "categories": [], "x": [' + '"ab",' * strings + "0]}"
        files[f"annotations/instances_{split}.json"] = text.encode()
    return _zip(out, files)


def zip_of_random_bytes(out: Path, *, files: int, mib: float) -> Path:
    """A stored zip of `files` files of random bytes, `mib` MiB in all: it unpacks to what it declares, no bomb."""
    rng = random.Random(out.name)
    size = int(mib * 2**20 / files)
    return _zip(out, {f"images/train/{n:03d}.jpg": rng.randbytes(size) for n in range(files)})
