"""COCO JSON datasets: the shared plates exported as COCO (Roboflow, COCO, CVAT, Label Studio) load as their YOLO
originals do."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from coco_export import export_coco, zipped
from dataset_attack_files import coco_of_tiny_images

import headkit
from headkit.coco import convert_coco, find_coco_files
from headkit.labels import DatasetError
from headkit.limits import Limits


def boxes_of(plates_dir: Path, split: str, count: int) -> int:
    images = sorted((plates_dir / "images" / split).glob("*.jpg"))[:count]
    return sum(len((plates_dir / "labels" / split / f"{p.stem}.txt").read_text().splitlines()) for p in images)


@pytest.mark.parametrize("layout", ["roboflow", "coco"])
def test_coco_export_loads_like_the_yolo_original(tmp_path, plates_dir, layout):
    source = export_coco(plates_dir, tmp_path / layout, layout=layout)
    summary = headkit.load_dataset(zipped(source), work_dir=tmp_path / "work")
    assert summary.names == {0: "license_plate"}
    assert summary.splits["train"].images == 12 and summary.splits["val"].images == 6
    assert summary.splits["train"].boxes == boxes_of(plates_dir, "train", 12)
    assert summary.splits["val"].boxes == boxes_of(plates_dir, "val", 6)
    # the labels are the original YOLO boxes, up to the 6 decimals written
    converted = sorted((summary.root / "labels" / "train").glob("*.txt"))[0]
    original = sorted((plates_dir / "labels" / "train").glob("*.txt"))[0].read_text().split()
    assert [round(float(v), 4) for v in converted.read_text().split()] == [round(float(v), 4) for v in original]


def test_a_folder_converts_and_trains(tmp_path, plates_dir, base):
    source = export_coco(plates_dir, tmp_path / "coco", layout="coco", counts=(("train", 8), ("val", 4)))
    summary = headkit.load_dataset(source, work_dir=tmp_path / "work")
    assert not list(source.rglob("*.txt"))  # the user's folder is never written to
    result = headkit.train_head(
        base, summary.yaml_path, epochs=1, imgsz=160, batch=4, device="cpu", workers=0, project=tmp_path / "runs"
    )
    assert result.head.names == {0: "license_plate"}


def broken(tmp_path: Path, plates_dir: Path, change) -> Path:
    source = export_coco(plates_dir, tmp_path / "bad", layout="coco", counts=(("train", 4), ("val", 2)))
    path = source / "annotations" / "instances_train.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return source


def _outside(data):
    data["annotations"][0]["bbox"] = [data["images"][0]["width"] - 5, 10, 50, 20]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["annotations"][0].update(image_id=999), r"annotation id 100 refers to image id 999"),
        (lambda d: d["annotations"][0].update(category_id=3), r"annotation id 100 has category id 3, which is not"),
        (_outside, r"annotation id 100: box .* lies outside its image"),
        (lambda d: d["images"].append(dict(d["images"][0])), r"image id 1 appears twice"),
        (lambda d: d["images"].append({**d["images"][0], "id": 9}), r"image id 1 and .*image id 9 both name '\w+"),
        (lambda d: d["images"][0].update(width="640"), r"image id 1 .* has no integer width and height \('640'"),
        (lambda d: d["annotations"][0].update(image_id=[1]), r"annotation id 100 refers to image id \[1\]"),
        (lambda d: d["annotations"].append(dict(d["annotations"][0])), r"annotation id 100 appears twice"),
        (lambda d: d["images"][0].update(file_name="missing.jpg"), r"image id 1 'missing.jpg' was not found"),
        (lambda d: d["images"][0].update(width=4000), r"is \d+x\d+ pixels but the annotations say 4000x"),
        (lambda d: d["categories"].append({"id": 8, "name": "license_plate"}), r"'license_plate' is used by two"),
    ],
)
def test_bad_annotations_are_refused_naming_the_record(tmp_path, plates_dir, change, message):
    source = broken(tmp_path, plates_dir, change)
    with pytest.raises(DatasetError, match=message) as refused:
        headkit.load_dataset(zipped(source), work_dir=tmp_path / "work")
    assert "instances_train.json" in str(refused.value)
    assert not list((tmp_path / "work").iterdir())  # nothing half-written is left


def test_malformed_json_names_its_line(tmp_path, plates_dir):
    source = export_coco(plates_dir, tmp_path / "bad", layout="coco", counts=(("train", 2), ("val", 1)))
    (source / "annotations" / "instances_val.json").write_text('{"images": [\n  {"id": 1,,}\n]}')
    with pytest.raises(DatasetError, match=r"instances_val.json, line 2 column \d+: not valid JSON"):
        headkit.load_dataset(source, work_dir=tmp_path / "work")


def test_a_class_named_like_a_base_class_is_reported(tmp_path, plates_dir):
    source = broken(tmp_path, plates_dir, lambda d: d["categories"][0].update(name="Fall"))
    for split in ("val",):
        path = source / "annotations" / f"instances_{split}.json"
        data = json.loads(path.read_text())
        data["categories"][0]["name"] = "Fall"
        path.write_text(json.dumps(data))
    summary = headkit.load_dataset(source, work_dir=tmp_path / "work", base_names=["Normal", "Fall"])
    assert summary.names == {0: "Fall"}
    assert any("'Fall' (id 0) is also a class of the base model" in note for note in summary.warnings)


def rows(label: Path) -> np.ndarray:
    return np.array([line.split() for line in label.read_text().splitlines()], dtype=np.float64).reshape(-1, 5)


def test_a_label_studio_export_loads_box_for_box_with_a_val_split_made(tmp_path, plates_dir):
    """Label Studio: one result.json beside images/, names like images\\x.jpg, ids from 0, no val split."""
    source = export_coco(plates_dir, tmp_path / "ls", layout="label_studio", counts=(("train", 12),))
    (source / "project.json").write_text(json.dumps({"title": "plates", "tasks": [{"id": 1}]}))
    first = headkit.load_dataset(zipped(source), work_dir=tmp_path / "a")
    assert first.names == {0: "license_plate"}
    assert (first.splits["train"].images, first.splits["val"].images) == (10, 2)
    assert [w for w in first.warnings if w.startswith("no val split: 2 of the 12 train images (20%)")]
    assert [w for w in first.warnings if "export/project.json: not a COCO detection file" in w]
    originals = {p.stem: rows(plates_dir / "labels" / "train" / f"{p.stem}.txt") for p in
                 sorted((plates_dir / "images" / "train").glob("*.jpg"))[:12]}  # fmt: skip
    converted = {p.stem.split("_", 1)[1]: rows(p) for p in first.root.glob("labels/*/*.txt")}
    assert converted.keys() == originals.keys()
    for stem, boxes in converted.items():
        np.testing.assert_allclose(boxes, originals[stem], rtol=0, atol=1e-6, err_msg=stem)
    again = headkit.load_dataset(source, work_dir=tmp_path / "b")  # the same val images, from a folder too
    assert sorted(p.name for p in (again.root / "images" / "val").iterdir()) == sorted(
        p.name for p in (first.root / "images" / "val").iterdir()
    )


def test_a_cvat_export_loads_with_a_val_split_made(tmp_path, plates_dir):
    source = export_coco(plates_dir, tmp_path / "cvat", layout="cvat", counts=(("train", 6), ("val", 4)))
    summary = headkit.load_dataset(zipped(source), work_dir=tmp_path / "work")
    assert summary.names == {0: "license_plate"}
    assert (summary.splits["train"].images, summary.splits["val"].images) == (8, 2)
    assert summary.splits["train"].boxes + summary.splits["val"].boxes == boxes_of(plates_dir, "train", 6) + boxes_of(
        plates_dir, "val", 4
    )
    assert any(w.startswith("no val split") for w in summary.warnings)


def test_json_that_is_not_coco_is_named_when_nothing_else_is_found(tmp_path, plates_dir):
    source = export_coco(plates_dir, tmp_path / "ls", layout="label_studio", counts=(("train", 3),))
    (source / "result.json").write_text(json.dumps([{"image": "images/a.jpg", "label": [{"x": 1}]}]))  # JSON-MIN
    with pytest.raises(DatasetError, match=r"no class names.*result\.json: not a COCO detection file .*, ignored"):
        headkit.load_dataset(zipped(source), work_dir=tmp_path / "work")


class FileSystemCalls:
    """Counts this process's directory listings (`os.scandir`, `os.listdir`) and stats (`os.stat`, `os.lstat`)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.listings = self.stats = 0
        for name, kind in (("scandir", "listings"), ("listdir", "listings"), ("stat", "stats"), ("lstat", "stats")):
            monkeypatch.setattr(os, name, self._counting(getattr(os, name), kind))

    def _counting(self, real, kind: str):
        def call(*args, **kwargs):
            setattr(self, kind, getattr(self, kind) + 1)
            return real(*args, **kwargs)

        return call


def import_cost(source: Path, out: Path, monkeypatch: pytest.MonkeyPatch) -> FileSystemCalls:
    """Listings and stats of one COCO import of `source` (find the files, check every record, write YOLO)."""
    with monkeypatch.context() as patch:
        calls = FileSystemCalls(patch)
        found, _ = find_coco_files(source, limits=Limits())
        convert_coco(found, source, out, limits=Limits(), move=True)
    return calls


def test_20000_image_records_import_in_linear_work(tmp_path, monkeypatch):
    """Attack: each image record listed and stat-ed the top of the upload, so 19,999 records
    cost > 240 s of CPU per call. Counted here, not timed: an import lists each folder once whatever the number of
    records, and stats no more often per record than for 200 records (the quadratic lookup made ~N stats per record).
    """
    small = import_cost(coco_of_tiny_images(tmp_path / "small", records=200), tmp_path / "small-out", monkeypatch)
    large = import_cost(coco_of_tiny_images(tmp_path / "large", records=20_000), tmp_path / "large-out", monkeypatch)
    assert large.listings == small.listings, (small.listings, large.listings)
    assert large.stats / 20_000 <= small.stats / 200, f"stats per record: {small.stats / 200}, {large.stats / 20_000}"
    assert len(list((tmp_path / "large-out" / "labels" / "train").iterdir())) == 20_000
