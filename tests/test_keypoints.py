"""Box labels -> one-keypoint pose labels, and a trained pose model -> a detect model with identical boxes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from ultralytics import YOLO
from ultralytics.nn.modules import Pose

from headkit.keypoints import (
    ConversionSummary,
    boxes_to_keypoint_rows,
    convert_label_text,
    convert_to_keypoints,
    polygon_to_xywhn,
    pose_to_detect,
)


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def _label_rows(path: Path) -> np.ndarray:
    return np.array([line.split() for line in path.read_text().splitlines()], dtype=float).reshape(-1, 5)


# --- pure label maths -------------------------------------------------------------------------------------------------


def test_boxes_to_keypoint_rows_puts_the_keypoint_at_the_box_centre():
    rows = np.array([[0, 0.5, 0.5, 0.2, 0.4], [3, 0.1, 0.9, 0.05, 0.1]])
    expected = np.array([[0, 0.5, 0.5, 0.2, 0.4, 0.5, 0.5, 1], [3, 0.1, 0.9, 0.05, 0.1, 0.1, 0.9, 1]])
    np.testing.assert_array_equal(boxes_to_keypoint_rows(rows), expected)


def test_boxes_to_keypoint_rows_keeps_empty_empty_and_refuses_other_shapes():
    assert boxes_to_keypoint_rows(np.zeros((0, 5))).shape == (0, 8)
    with pytest.raises(ValueError, match=r"\(N, 5\).*\(2, 4\)"):
        boxes_to_keypoint_rows(np.zeros((2, 4)))


@pytest.mark.parametrize(
    ("coords", "xywhn"),
    [
        ([0.1, 0.2, 0.5, 0.2, 0.3, 0.6], [0.3, 0.4, 0.4, 0.4]),  # triangle
        ([0.2, 0.2, 0.6, 0.2, 0.6, 0.4, 0.2, 0.4], [0.4, 0.3, 0.4, 0.2]),  # rectangle
        ([-0.2, 0.5, 0.4, 0.1, 1.3, 0.9], [0.5, 0.5, 1.0, 0.8]),  # clipped to the image
    ],
)
def test_polygon_to_xywhn_is_the_bounding_box(coords, xywhn):
    np.testing.assert_allclose(polygon_to_xywhn(np.array(coords)), xywhn, atol=1e-12)


def test_polygon_to_xywhn_refuses_odd_or_short_input():
    with pytest.raises(ValueError, match="even length >= 6"):
        polygon_to_xywhn(np.array([0.1, 0.2, 0.3, 0.4, 0.5]))
    with pytest.raises(ValueError, match="even length >= 6"):
        polygon_to_xywhn(np.array([0.1, 0.2, 0.3, 0.4]))


def test_convert_label_text_converts_boxes_and_polygons():
    text = "0 0.5 0.5 0.2 0.4\n\n2 0.1 0.2 0.5 0.2 0.3 0.6\n"
    converted, count = convert_label_text(text)
    assert count == 2
    assert converted == "0 0.5 0.5 0.2 0.4 0.5 0.5 1\n2 0.3 0.4 0.4 0.4 0.3 0.4 1\n"


def test_convert_label_text_keeps_an_empty_file_empty():
    assert convert_label_text("") == ("", 0)
    assert convert_label_text("\n  \n") == ("", 0)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("0 0.5 0.5 0.2 0.4 0.5 0.5 1", "already has keypoints"),  # box + one (x, y, v) keypoint
        ("0 0.5 0.5 0.2 0.4 0.9", "already has keypoints"),
        ("0 0.5 0.5", "not YOLO detection data"),
        ("a 0.5 0.5 0.2 0.4", "expected numbers"),
        ("0.5 0.5 0.5 0.2 0.4", "integer class"),
        ("0 320 240 50 40", "normalised coordinates"),
    ],
)
def test_convert_label_text_refuses_non_detection_lines_naming_file_and_line(line, message):
    with pytest.raises(ValueError, match=message) as err:
        convert_label_text(f"0 0.5 0.5 0.2 0.4\n{line}\n", file="labels/train/car.txt")
    assert "labels/train/car.txt:2" in str(err.value)


# --- dataset conversion -----------------------------------------------------------------------------------------------


def test_convert_to_keypoints_writes_a_pose_dataset_and_leaves_the_source_alone(tiny_plates, tmp_path, caplog):
    before = _tree_digest(tiny_plates)
    caplog.set_level("INFO", logger="headkit.keypoints")
    summary = convert_to_keypoints(tiny_plates, tmp_path / "kp")

    assert _tree_digest(tiny_plates) == before
    data = yaml.safe_load(summary.yaml_path.read_text())
    assert data["kpt_shape"] == [1, 3] and data["flip_idx"] == [0]
    assert data["names"] == {0: "license_plate"} and "path" not in data
    assert (data["train"], data["val"]) == ("images/train", "images/val")

    for split in ("train", "val"):
        sources = sorted((tiny_plates / "labels" / split).glob("*.txt"))
        boxes = 0
        for source in sources:
            rows = np.loadtxt(summary.root / "labels" / split / source.name, ndmin=2)
            assert rows.shape[1] == 8
            np.testing.assert_allclose(rows[:, :5], _label_rows(source), atol=1e-12)
            np.testing.assert_array_equal(rows[:, 5:7], rows[:, 1:3])
            assert (rows[:, 7] == 1).all()
            boxes += len(rows)
        images = sorted(p.name for p in (summary.root / "images" / split).iterdir())
        assert images == sorted(p.name for p in (tiny_plates / "images" / split).iterdir())
        assert summary.splits[split] == {"images": len(images), "boxes": boxes}

    assert summary.to_dict()["splits"] == summary.splits
    assert "total" in str(summary) and "total" in caplog.text


def test_convert_to_keypoints_keeps_empty_label_files_empty(tiny_plates, tmp_path):
    background = sorted((tiny_plates / "labels" / "train").glob("*.txt"))[0]
    background.write_text("")
    summary = convert_to_keypoints(tiny_plates, tmp_path / "kp")
    assert (summary.root / "labels" / "train" / background.name).read_text() == ""


def test_convert_to_keypoints_refuses_converted_data_and_bad_destinations(tiny_plates, tmp_path):
    summary = convert_to_keypoints(tiny_plates, tmp_path / "kp")
    assert isinstance(summary, ConversionSummary)
    with pytest.raises(ValueError, match="already has kpt_shape"):
        convert_to_keypoints(summary.root, tmp_path / "kp2")
    with pytest.raises(FileExistsError, match="remove it first"):
        convert_to_keypoints(tiny_plates, tmp_path / "kp")
    with pytest.raises(ValueError, match="outside the source dataset"):
        convert_to_keypoints(tiny_plates, tiny_plates / "kp")
    with pytest.raises(FileNotFoundError, match="data.yaml"):
        convert_to_keypoints(tmp_path / "nowhere", tmp_path / "kp3")


def test_convert_to_keypoints_leaves_nothing_behind_when_a_label_is_refused(tiny_plates, tmp_path):
    bad = sorted((tiny_plates / "labels" / "val").glob("*.txt"))[0]
    bad.write_text("0 0.5 0.5 0.2 0.4 0.5 0.5 1\n")
    with pytest.raises(ValueError, match=f"{bad.name}:1"):
        convert_to_keypoints(tiny_plates, tmp_path / "out" / "kp")
    assert list((tmp_path / "out").iterdir()) == []


# --- pose -> detect ---------------------------------------------------------------------------------------------------


def test_pose_to_detect_refuses_a_detect_model(base_weights):
    with pytest.raises(ValueError, match="expected a pose model.*got task 'detect'"):
        pose_to_detect(YOLO(base_weights))


def test_trained_pose_model_becomes_a_detect_model_with_identical_boxes(tiny_plates, tmp_path, base_weights, bus_jpg):
    before = _tree_digest(tiny_plates)
    data = convert_to_keypoints(tiny_plates, tmp_path / "kp").yaml_path
    pose = YOLO("yolov8s-pose.yaml").load(base_weights)  # the real trunk under a fresh pose head
    pose.train(
        data=str(data), epochs=1, imgsz=160, batch=4, workers=0, device="cpu", plots=False, val=False,
        project=str(tmp_path / "runs"), name="pose", exist_ok=True, verbose=False,
    )  # fmt: skip
    assert pose.task == "pose"
    assert _tree_digest(tiny_plates) == before  # training wrote its caches beside the copy, not into the source

    detect = pose_to_detect(pose, path=tmp_path / "detect.pt")

    assert detect.task == "detect" and YOLO(tmp_path / "detect.pt").task == "detect"
    assert not any(isinstance(m, Pose) for m in detect.model.modules())
    assert detect.names == pose.names == {0: "license_plate"}
    n_pose, n_detect = (sum(p.numel() for p in m.model.parameters()) for m in (pose, detect))
    assert n_detect < n_pose

    plate = sorted((tiny_plates / "images" / "val").glob("*.jpg"))[0]
    for image in (bus_jpg, plate):
        x = torch.from_numpy(cv2.resize(cv2.imread(str(image)), (160, 160))[..., ::-1].copy())
        x = x.permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            raw_pose, raw_detect = pose.model.eval()(x)[0], detect.model.eval()(x)[0]
        assert raw_detect.shape[1] == 4 + 1 and raw_pose.shape[1] == 4 + 1 + 3
        assert (raw_pose[:, :5] - raw_detect).abs().max() <= 1e-5

        kept_pose, kept_detect = (m.predict(image, imgsz=160, conf=0.001, verbose=False)[0] for m in (pose, detect))
        assert len(kept_detect.boxes) == len(kept_pose.boxes) > 0
        assert (kept_pose.boxes.data - kept_detect.boxes.data).abs().max() <= 1e-5
        assert kept_detect.keypoints is None and kept_pose.keypoints is not None
