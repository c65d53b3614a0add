"""class_branch="light": a new head with the depthwise class branch of YOLO11/YOLO26 on any base, base outputs exact.

A YOLOv8 base's head has the class branch Conv3x3, Conv3x3, Conv1x1 (`legacy=True`); the light one is
(DWConv3x3, Conv1x1), (DWConv3x3, Conv1x1), Conv1x1. Heads of both styles and of any branch start join one model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kit import REPO, assert_rows_exact, copy_tiny_plates, detection_rows, trainer_before_launch
from ultralytics import YOLO
from ultralytics.utils.dist import ddp_cleanup, generate_ddp_file

import headkit
from headkit.__main__ import main
from headkit.detect import DetectLayout
from headkit.headfile import extract_head
from headkit.kinds import PLAIN
from headkit.train import LightHeadTrainer, train_head
from headkit.trunk import detection_model

TINY = dict(epochs=1, imgsz=64, batch=2, device="cpu", workers=0, plots=False)
EXACT = dict(seed=0, deterministic=True)
KW = {"conf": 0.01, "max_det": 3000, "verbose": False}


@pytest.fixture(scope="module")
def data(tmp_path_factory, plates_dir) -> Path:
    return copy_tiny_plates(plates_dir, tmp_path_factory.mktemp("class_branch") / "data", train=4, val=2) / "data.yaml"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def light(base, data, runs):
    return train_head(base, data, project=runs, name="light", class_branch="light", **TINY, **EXACT)


@pytest.fixture(scope="module")
def light_neck(base, data, runs):
    return train_head(base, data, project=runs, name="neck", branch="neck", class_branch="light", **TINY).head


def light_trainer(base, data: Path, project: Path, name: str, init_head=None) -> LightHeadTrainer:
    """The trainer Ultralytics' `Model.train` builds for a light train_head run, before it trains or launches DDP."""
    return trainer_before_launch(base, data, project, name, trainer_class=LightHeadTrainer, init_head=init_head,
                                 **TINY, **EXACT)  # fmt: skip


def class_parameters(head) -> int:
    return sum(v.numel() for k, v in head.tensors.items() if k.startswith("cv3."))


def rows(model, image, imgsz=320):
    """Detections as (N, 6) [x1, y1, x2, y2, conf, cls], by class then confidence."""
    return detection_rows(model, image, by_class=True, imgsz=imgsz, **KW)


def test_light_head_on_a_yolov8_base_records_the_depthwise_layout(base, light, plate_head):
    head = light.head
    assert head.metadata["legacy"] is False and plate_head.metadata["legacy"] is True
    assert head.metadata["trunk_check"]["untouched"] and head.kind.describe() == "head only"
    assert "cv3.0.0.0.conv.weight" in head.tensors and "cv3.0.0.conv.weight" not in head.tensors
    assert head.tensors["cv3.0.0.0.conv.weight"].shape[1] == 1  # depthwise: one input channel per filter
    assert class_parameters(head) < class_parameters(plate_head) / 4  # YOLOv8s: ~0.19 M vs ~1.0 M for one class
    start = detection_model(base).model[-1].state_dict()["cv2.0.0.conv.weight"]  # the box branch starts as the base's
    assert head.tensors["cv2.0.0.conv.weight"].shape == start.shape
    assert set(light.metrics) == {"license_plate", "all"}


def test_unknown_or_contradicting_class_branch_is_refused_before_training(base, plate_head):
    with pytest.raises(ValueError, match=r"class_branch='slim': expected one of 'base', 'light'"):
        train_head(base, "unused.yaml", class_branch="slim")
    with pytest.raises(ValueError, match="not available with keypoint_trick=True"):
        train_head(base, "unused.yaml", class_branch="light", keypoint_trick=True)
    with pytest.raises(ValueError, match="has the base's class branch"):
        train_head(base, "unused.yaml", class_branch="light", init_head=plate_head)


def test_a_light_init_head_goes_on_training_light(base, data, light, tmp_path):
    start = light_trainer(base, data, tmp_path, "start", init_head=light.head).model.model[-1].state_dict()
    assert all(torch.equal(start[k].float(), v.float()) for k, v in light.head.tensors.items())  # init head's weights
    again = train_head(base, data, project=tmp_path, name="again", init_head=light.head, **TINY, **EXACT).head
    assert again.metadata["legacy"] is False and again.tensors.keys() == light.head.tensors.keys()
    assert again.metadata["trunk_check"]["untouched"]


def test_light_heads_of_any_branch_merge_beside_a_base_style_head_with_base_rows_exact(
    base, light, light_neck, plate_head, bus_jpg, plate_images
):
    assert light_neck.metadata["legacy"] is False and light_neck.kind.branch_start == 10
    heads = [plate_head, light_neck, light.head]
    merged = headkit.merge(base, *heads)
    assert merged.names == {0: "Normal", 1: "Fall", 2: "license_plate", 3: "license_plate_2", 4: "license_plate_3"}
    for image in [bus_jpg, plate_images[0]]:
        ours, theirs = rows(merged, image), rows(base, image)
        assert_rows_exact(ours[ours[:, 5] < 2], theirs, "base rows")
        for offset, head in zip((3, 4), heads[1:], strict=True):
            alone, mine = rows(headkit.merge(base, head, keep_base_head=False), image), ours[ours[:, 5] == offset]
            mine[:, 5] -= offset
            assert_rows_exact(mine, alone, f"head at class {offset}")


def test_light_head_survives_save_load_and_merge(base, light, light_neck, tmp_path, bus_jpg):
    for head in (light.head, light_neck):
        again = headkit.load_head(head.save(tmp_path / "light.safetensors"))
        assert again.metadata == head.metadata and again.tensors.keys() == head.tensors.keys()
        assert all(torch.equal(again.tensors[k].float(), head.tensors[k].float()) for k in head.tensors)
        assert DetectLayout.from_detect(again.build()).depthwise
        assert_rows_exact(rows(headkit.merge(base, again), bus_jpg), rows(headkit.merge(base, head), bus_jpg))


def test_cli_trains_a_light_head(base_weights, data, tmp_path, capsys):
    out = tmp_path / "light.safetensors"
    shape = ["--epochs", "1", "--imgsz", "64", "--batch", "2", "--device", "cpu"]
    main(["train", "--base", str(base_weights), "--data", str(data), "--out", str(out), "--class-branch", "light"]
         + shape + ["--project", str(tmp_path / "runs")])  # fmt: skip
    assert headkit.load_head(out).metadata["legacy"] is False
    assert '"kind": "head only"' in capsys.readouterr().out


def test_a_multi_gpu_worker_trains_the_same_light_head(base, data, light, tmp_path):
    """Ultralytics' DDP script, run as one CPU worker, rebuilds the light model from what it pickles."""
    trainer = light_trainer(base, data, tmp_path, "worker")
    script = generate_ddp_file(trainer)
    env = {k: v for k, v in os.environ.items() if k not in {"RANK", "LOCAL_RANK", "WORLD_SIZE"}}
    try:
        worker = subprocess.run(
            [sys.executable, script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        ddp_cleanup(trainer, script)
    assert worker.returncode == 0, worker.stderr[-3000:]
    head = extract_head(YOLO(tmp_path / "worker" / "weights" / "best.pt"), base, imgsz=64, trained_with=PLAIN)
    assert head.metadata["legacy"] is False and head.tensors.keys() == light.head.tensors.keys()
    assert all(torch.equal(head.tensors[k], light.head.tensors[k]) for k in head.tensors)


def test_on_a_yolo26_base_light_is_the_base_style(data, tmp_path, bus_jpg):
    """YOLO26's own head is depthwise already: "light" trains exactly what "base" trains."""
    # yolo26s: its class branch is as wide as its first feature map for 80 classes and for 1 (yolo26n's is not)
    YOLO("yolo26s.yaml").save(tmp_path / "yolo26s.pt")  # the architecture, its weights in fp16 as in a checkpoint
    yolo26 = headkit.load_model(tmp_path / "yolo26s.pt")
    heads = {
        style: train_head(yolo26, data, project=tmp_path, name=style, class_branch=style, **TINY, **EXACT).head
        for style in ("base", "light")
    }
    own = detection_model(yolo26).model[-1].state_dict()
    for head in heads.values():
        assert head.metadata["legacy"] is False and head.metadata["end2end"] is True
        assert {k for k in head.tensors if "cv3" in k} == {k for k in own if "cv3" in k}
    assert all(torch.equal(heads["base"].tensors[k], heads["light"].tensors[k]) for k in heads["base"].tensors)
    merged = headkit.merge(yolo26, heads["light"])
    ours, theirs = rows(merged, bus_jpg, imgsz=64), rows(yolo26, bus_jpg, imgsz=64)
    assert_rows_exact(ours[ours[:, 5] < len(yolo26.names)], theirs, "base rows")


def test_a_head_on_an_80_class_n_base_keeps_its_class_width_and_merges_exactly(tmp_path, tiny_plates, bus_jpg):
    """On yolov8n (64-channel P3 maps, 80 classes) Ultralytics' trainer keeps the base's 80-wide class branch for a
    1-class head; the file records that width, so the head rebuilds, loads and merges (it used to fail to merge)."""
    YOLO("yolov8n.yaml").save(tmp_path / "yolov8n-coco-layout.pt")  # the COCO layout; weights need no download
    base = headkit.load_model(tmp_path / "yolov8n-coco-layout.pt")
    result = headkit.train_head(base, tiny_plates / "data.yaml", project=tmp_path / "runs", epochs=1, imgsz=64,
                                batch=4, device="cpu", workers=0, plots=False)  # fmt: skip
    assert result.head.metadata["class_width"] == 80 and result.head.tensors["cv3.0.2.weight"].shape == (1, 80, 1, 1)
    head = headkit.load_head(result.head.save(tmp_path / "plates.safetensors"))
    merged = headkit.merge(base, head)
    assert merged.names[80] == "license_plate"
    ours, theirs = (detection_rows(m, bus_jpg, imgsz=128, conf=0.0001, max_det=20000) for m in (merged, base))
    assert_rows_exact(ours[ours[:, 5] < 80], theirs, "base rows")
