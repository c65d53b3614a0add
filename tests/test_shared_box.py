"""Box branches run once in a merged model: a head trained with box_branch="shared" keeps the base's box branch where
it reads the base's own maps, and merging lets it take the base's output there, with every row still exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from kit import assert_rows_exact, copy_tiny_plates, detection_rows
from ultralytics import YOLO

import headkit
from headkit.branch import detect_of
from headkit.headfile import Head
from headkit.sharedbox import SharedBox
from headkit.train import train_head
from headkit.trunk import detection_model

TINY = dict(epochs=1, imgsz=64, batch=2, device="cpu", workers=0, plots=False, seed=0, deterministic=True)
OPTIONS = {"conf": 0.01, "max_det": 3000}


@pytest.fixture(scope="module")
def data(tmp_path_factory, plates_dir):
    return copy_tiny_plates(plates_dir, tmp_path_factory.mktemp("shared") / "data", train=8, val=2) / "data.yaml"


@pytest.fixture(scope="module")
def head_only(base, data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    return train_head(base, data, project=runs, name="head", box_branch="shared", **TINY).head


@pytest.fixture(scope="module")
def p3_last(base, data, tmp_path_factory):
    shape = headkit.SHAPES["p3-last-narrow"]
    runs = tmp_path_factory.mktemp("runs")
    return train_head(
        base, data, project=runs, name="p3l", branch="p3-last", class_width=shape.class_width, box_branch="shared",
        **TINY,
    ).head  # fmt: skip


def box_tensors(head: Head, level: int) -> dict[str, torch.Tensor]:
    prefix = f"cv2.{level}."
    return {k[len(prefix) :]: v.float() for k, v in head.tensors.items() if k.startswith(prefix)}


def base_box(base, level: int) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in detection_model(base).model[-1].cv2[level].state_dict().items()}


def split_rows(merged_rows: np.ndarray, offset: int, classes: int) -> np.ndarray:
    mine = merged_rows[(merged_rows[:, 5] >= offset) & (merged_rows[:, 5] < offset + classes)].copy()
    mine[:, 5] -= offset
    return mine


def test_a_shared_head_keeps_the_base_box_branch_where_it_reads_the_base_maps(base, head_only, p3_last):
    for level in range(3):  # head only: every level reads the base's maps
        ours, theirs = box_tensors(head_only, level), base_box(base, level)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), level
    for level in (1, 2):  # the P3 last stage: its P4 and P5 inputs are the base's layers 18 and 21
        ours, theirs = box_tensors(p3_last, level), base_box(base, level)
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), level
    own, theirs = box_tensors(p3_last, 0), base_box(base, 0)  # at P3 it reads its own map: its box branch trained
    assert not all(torch.equal(own[k], theirs[k]) for k in own)
    assert not torch.equal(head_only.tensors["cv3.0.2.bias"].float(), torch.zeros(1))  # the class branch trained


def test_merged_heads_run_a_shared_level_once_and_every_row_stays_exact(base, head_only, p3_last, plate_head,
                                                                        bus_jpg, plate_images):  # fmt: skip
    merged = headkit.merge(base, head_only, plate_head, p3_last)
    joined = detection_model(merged).model[-1]
    # head only shares all three levels with the base; the P3 last stage P4 and P5; the plate head (own box) none
    detects = [detect_of(head) for head in joined.heads]
    holders = [sum(level is box for detect in detects for level in detect.cv2) for box in joined.shared_boxes]
    assert len(joined.shared_boxes) == 3 and sorted(holders) == [2, 3, 3]
    runs = []  # the first layer of each shared level, once per time it runs
    for box in joined.shared_boxes:
        box[0].register_forward_hook(lambda module, args, out: runs.append(module))
    with torch.no_grad():
        detection_model(merged).eval()(torch.rand(1, 3, 320, 320))
    assert len(runs) == 3 and len({id(m) for m in runs}) == 3  # each shared level ran once for all of its heads
    assert not [box for box in joined.shared_boxes if box._last is not None]  # nothing kept after the forward

    for image in [bus_jpg, plate_images[0]]:
        rows = detection_rows(merged, image, **OPTIONS)
        assert_rows_exact(rows[rows[:, 5] < 2], detection_rows(base, image, **OPTIONS), "base rows")
        for offset, head in ((2, head_only), (3, plate_head), (4, p3_last)):
            alone = headkit.merge(base, head, keep_base_head=False)
            assert_rows_exact(split_rows(rows, offset, 1), detection_rows(alone, image, **OPTIONS), f"{offset}")


def test_a_box_branch_one_bit_off_the_base_is_not_shared_and_stays_exact(base, head_only, bus_jpg):
    tensors = dict(head_only.tensors)
    weight = tensors["cv2.1.0.conv.weight"].clone()
    weight.view(-1)[0] = torch.nextafter(weight.view(-1)[0], torch.tensor(1.0, dtype=weight.dtype))
    tensors["cv2.1.0.conv.weight"] = weight
    nudged = Head(tensors, head_only.metadata)
    merged = headkit.merge(base, nudged)
    assert len(detection_model(merged).model[-1].shared_boxes) == 2  # P3 and P5 still the base's; P4 not
    rows = detection_rows(merged, bus_jpg, **OPTIONS)
    assert_rows_exact(rows[rows[:, 5] < 2], detection_rows(base, bus_jpg, **OPTIONS), "base rows")
    alone = headkit.merge(base, nudged, keep_base_head=False)
    assert_rows_exact(split_rows(rows, 2, 1), detection_rows(alone, bus_jpg, **OPTIONS), "nudged head rows")


def test_a_shared_merged_model_saves_and_reloads(base, head_only, p3_last, tmp_path, bus_jpg):
    merged = headkit.merge(base, head_only, p3_last)
    merged.save(tmp_path / "merged.pt")
    again = headkit.load_model(tmp_path / "merged.pt")
    joined = detection_model(again).model[-1]
    assert len(joined.shared_boxes) == 3 and all(isinstance(box, SharedBox) for box in joined.shared_boxes)
    assert_rows_exact(detection_rows(again, bus_jpg, **OPTIONS), detection_rows(merged, bus_jpg, **OPTIONS))


def test_box_branch_shared_is_refused_where_nothing_could_be_shared(base):
    with pytest.raises(ValueError, match=r"box_branch='wide': expected one of 'own', 'shared'"):
        train_head(base, "unused.yaml", box_branch="wide")
    with pytest.raises(ValueError, match="not available with a branch that owns every map its Detect reads"):
        train_head(base, "unused.yaml", branch="neck", box_branch="shared")
    with pytest.raises(ValueError, match="not available with class_branch='light'"):
        train_head(base, "unused.yaml", class_branch="light", box_branch="shared")


def test_a_merged_model_with_shared_levels_exports_to_onnx(base, head_only, tmp_path, bus_jpg):
    exported = headkit.export_merged(base, [head_only], tmp_path / "out", formats=("onnx",), imgsz=320)
    square = {"imgsz": 320, "rect": False, "conf": 0.25, "verbose": False}  # the export's fixed 320x320 input
    got = detection_rows(YOLO(str(exported.paths["onnx"])), bus_jpg, by_class=True, **square)
    want = detection_rows(headkit.merge(base, head_only), bus_jpg, by_class=True, **square)
    # ONNX Runtime's kernels are not torch's: the export is close, not a promise of bit-exactness (nor of the order)
    assert got.shape == want.shape and np.abs(got[:, :5] - want[:, :5]).max() < 1e-2
