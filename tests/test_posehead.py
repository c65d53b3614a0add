"""The keypoint trick: a pose-trained head comes back as a plain Detect head that merges like any other, at no cost."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from kit import assert_rows_exact, detection_rows, tiny_training
from ultralytics import YOLO
from ultralytics.nn.modules import Pose

import headkit
from headkit.posehead import pose_variant
from headkit.trunk import compare_trunks, head_index


def _detections(model, image):
    """Rows [x1, y1, x2, y2, conf, cls] sorted by class then confidence, uncapped by max_det."""
    return detection_rows(model, image, by_class=True, conf=0.05, max_det=3000)


def _parameters(model) -> int:
    return sum(p.numel() for p in model.model.parameters())


@pytest.fixture(scope="module")
def trick_run(tmp_path_factory, base, plates_dir):
    """A real (tiny) keypoint-trick run: 1 epoch at imgsz 96 on 8 plate images, over the real base."""
    root = tmp_path_factory.mktemp("trick_run")
    return tiny_training(root, base, plates_dir, name="trick", keypoint_trick=True, imgsz=96, plots=False)


def test_pose_variant_shares_the_base_trunk(base):
    pose = pose_variant(base, names={0: "license_plate"})
    assert pose.task == "pose" and isinstance(pose.model.model[-1], Pose)
    assert pose.model.model[-1].kpt_shape == [1, 3] and pose.names == {0: "license_plate"}
    assert head_index(pose) == head_index(base)
    check = compare_trunks(pose, base)
    assert check.identical == check.tensors > 200


def test_trick_head_is_a_detect_head_marked_as_such(trick_run, base, tiny_head):
    result, events = trick_run
    head = result.head
    assert head.names == {0: "license_plate"}
    assert head.metadata["trained_with"] == "keypoint-trick" and tiny_head.metadata["trained_with"] == "plain"
    assert "kind" not in head.metadata and head.metadata["imgsz"] == 96  # written no more: nobody read it
    assert head.base_fingerprint == headkit.fingerprint(base)
    check = head.metadata["trunk_check"]
    assert check["untouched"] and check["identical"] == check["tensors"] and check["max_abs_diff"] == 0.0
    assert not any(key.startswith("cv4") for key in head.tensors)
    assert {k: v.shape for k, v in head.tensors.items()} == {k: v.shape for k, v in tiny_head.tensors.items()}
    assert set(result.metrics) == {"license_plate", "all"}
    assert set(result.metrics["all"]) == {"P", "R", "mAP50", "mAP50-95"}
    assert [e.stage for e in events].count("epoch") == 1


def test_trick_run_used_the_seed_loss_gains(trick_run, base):
    result, _ = trick_run
    args = yaml.safe_load((result.run_dir / "args.yaml").read_text())
    assert args["task"] == "pose" and args["box"] == 0.01 and args["dfl"] == 0.01
    assert args["freeze"] == head_index(base)
    data = yaml.safe_load(Path(args["data"]).read_text())
    assert data["kpt_shape"] == [1, 3]


def test_trick_head_merges_at_no_inference_cost(trick_run, base, tiny_head, bus_jpg):
    head = trick_run[0].head
    merged = headkit.merge(base, head)
    assert merged.names == {0: "Normal", 1: "Fall", 2: "license_plate"}
    ours, theirs = _detections(merged, bus_jpg), _detections(base, bus_jpg)
    assert len(theirs) > 0
    assert_rows_exact(ours[ours[:, 5] < 2], theirs, "base rows")  # bit for bit, as for any other head
    assert _parameters(merged) == _parameters(headkit.merge(base, tiny_head))


def test_trick_head_is_the_trained_pose_heads_box_and_class_part(trick_run):
    result, _ = trick_run
    pose = YOLO(result.run_dir / "weights" / "best.pt")
    state = pose.model.model[-1].state_dict()
    assert sorted(set(state) - set(result.head.tensors)) == sorted(k for k in state if k.startswith("cv4."))
    assert all(torch.equal(value, state[key]) for key, value in result.head.tensors.items())
