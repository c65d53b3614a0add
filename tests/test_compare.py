"""Comparer: base / custom / merged on one image; the merged model keeps every base detection exactly."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import headkit
from headkit.comparing import confidence_change, read_image

BUS_NORMALS = 4  # the base finds the 4 people on bus.jpg at 640 px (see ../shared/weights/SOURCES.md)


@pytest.fixture(scope="module")
def comparer(base):
    return headkit.Comparer(base)


def test_bus_merged_equals_base_and_custom_has_only_head_classes(comparer, plate_head, bus_jpg):
    result = comparer.compare(bus_jpg, [plate_head], labels=["plates"], conf=0.05)

    assert result.base_count >= BUS_NORMALS
    assert result.merged_base_count == result.base_count
    assert result.max_confidence_change == 0 and result.unmatched == 0
    assert "largest confidence change against the base: 0" in result.summary()
    assert all(result.timings_ms[m] > 0 for m in ("base", "custom", "merged"))  # Ultralytics' per-image speed, ms
    assert result.timing().startswith("Time for this image (pre-process, inference, NMS): base ")
    by_model = {m: [d for d in result.detections if d.model == m] for m in ("base", "custom", "merged")}
    assert {d.origin for d in by_model["base"]} == {"base"}
    assert {(d.origin, d.name) for d in by_model["custom"]} <= {("plates", "license_plate")}
    assert all(d.class_id >= 2 for d in by_model["merged"] if d.origin == "plates")
    merged_base = sorted((d.class_id, d.confidence, d.xyxy) for d in by_model["merged"] if d.origin == "base")
    assert merged_base == sorted((d.class_id, d.confidence, d.xyxy) for d in by_model["base"])
    height, width = read_image(bus_jpg).shape[:2]
    assert all(result.images[m].shape == (height, width, 3) for m in ("base", "custom", "merged"))
    assert result.images["finetuned"] is None and result.kept == {"custom": 0, "merged": result.base_count}
    assert not np.array_equal(result.images["base"], read_image(bus_jpg))  # boxes were drawn


def test_people_found_at_640(comparer, bus_jpg):
    result = comparer.compare(bus_jpg)
    assert result.base_count == BUS_NORMALS
    assert result.images["custom"] is None  # no heads chosen: nothing to show for trunk + heads
    assert result.to_dict()["summary"] == result.summary()


def test_variants_are_built_once_per_selection(comparer, plate_head):
    first = comparer.variants([plate_head])
    assert comparer.variants([plate_head]) == first
    custom, merged = first
    assert custom.model.names == {0: "license_plate"}
    assert merged.model.names == {0: "Normal", 1: "Fall", 2: "license_plate"}


def test_concurrent_requests_keep_their_own_settings(comparer, plate_head, zidane_jpg):
    sizes = [160, 320, 160, 320]
    alone = {s: comparer.compare(zidane_jpg, [plate_head], imgsz=s).to_dict()["detections"] for s in set(sizes)}
    got: dict[int, list] = {}

    def run(i: int, size: int) -> None:
        got[i] = comparer.compare(zidane_jpg, [plate_head], imgsz=size).to_dict()["detections"]

    threads = [threading.Thread(target=run, args=(i, s)) for i, s in enumerate(sizes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(got[i] == alone[s] for i, s in enumerate(sizes))


def test_confidence_change_by_hand():
    base = np.array([[0, 0, 10, 10, 0.9, 0], [20, 20, 40, 40, 0.5, 1]], dtype=np.float32)
    same = base[::-1].copy()
    assert confidence_change(base, same) == (0.0, 0)
    shifted = base.copy()
    shifted[1, 4] = 0.25
    assert confidence_change(base, shifted) == (0.25, 0)
    assert confidence_change(base, base[:1]) == (0.0, 1)  # one base box has no counterpart
    other_class = base.copy()
    other_class[0, 5] = 1
    assert confidence_change(base, other_class)[1] == 2
    assert confidence_change(np.zeros((0, 6)), np.zeros((0, 6))) == (0.0, 0)


def test_bad_images_and_settings_are_refused(comparer, tmp_path, bus_jpg):
    fake = tmp_path / "photo.jpg"
    fake.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="photo.jpg: not a usable image"):
        comparer.compare(fake)
    with pytest.raises(ValueError, match="fractions in"):
        comparer.compare(bus_jpg, conf=2)
    with pytest.raises(ValueError, match="image size"):
        comparer.compare(bus_jpg, imgsz=8)
    gray = read_image(np.zeros((20, 30), dtype=np.uint8))
    assert gray.shape == (20, 30, 3)


def test_label_previews_draw_the_boxes(tiny_plates):
    summary = headkit.load_dataset(tiny_plates)
    previews = headkit.server.label_previews(summary, count=3)

    assert len(previews) == 3
    for image, caption in previews:
        original = read_image(summary.root / "images" / "train" / caption)
        assert image.shape == original.shape
        assert not np.array_equal(image, original)
