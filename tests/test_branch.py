"""Branch heads: a head that owns a trained copy of the neck, merged beside the base with base outputs bit-exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from kit import assert_rows_exact, detection_rows, tiny_training
from safetensors import safe_open
from safetensors.torch import save_file
from ultralytics import YOLO

import headkit
from headkit.headfile import BRANCH_FORMAT, BRANCH_PREFIX
from headkit.kinds import branch_inputs, resolve_branch
from headkit.trunk import detection_model, head_index

KW = {"conf": 0.01, "max_det": 3000, "verbose": False}


@pytest.fixture(scope="module")
def branch_run(tmp_path_factory, base, plates_dir):
    return tiny_training(tmp_path_factory.mktemp("branch_run"), base, plates_dir, branch="neck", imgsz=96, plots=False)


@pytest.fixture(scope="module")
def branch_head(branch_run):
    return branch_run[0].head


def rows(model, image, imgsz=320):
    """Detections as (N, 6) [x1, y1, x2, y2, conf, cls], by class then confidence."""
    return detection_rows(model, image, by_class=True, imgsz=imgsz, **KW)


def test_branch_start_is_read_from_the_model_and_bad_values_say_why(base):
    assert resolve_branch(base, "neck") == 10 and resolve_branch(base, "head") is None  # YOLOv8: 10 backbone rows
    assert resolve_branch(headkit.load_model("yolo11n.yaml"), "neck") == 11
    assert resolve_branch(base, 22) is None and resolve_branch(base, "12") == 12
    assert branch_inputs(base, 10) == [4, 6, 9]
    for bad, message in ((0, "leaves no shared layer"), (23, "is the Detect head or beyond"), ("trunk", "expected")):
        with pytest.raises(ValueError, match=message):
            resolve_branch(base, bad)


def test_neck_branch_training_keeps_the_backbone_bit_exact(branch_head, base):
    meta = branch_head.metadata
    assert branch_head.kind == headkit.HeadKind("plain", 10)
    check = meta["trunk_check"]
    assert check["untouched"] and check["identical"] == check["tensors"] and check["max_abs_diff"] == 0.0
    assert meta["base_fingerprint"] == headkit.fingerprint(base, upto=10) != headkit.fingerprint(base)
    assert meta["branch"]["inputs"] == [4, 6, 9] and meta["branch"]["detect_from"] == [15, 18, 21]
    owned = {int(k.split(".")[1]) for k in branch_head.tensors if k.startswith(BRANCH_PREFIX)}
    with_weights = {int(k.split(".")[0]) for k in detection_model(base).model.state_dict()}
    assert owned == with_weights & set(range(10, head_index(base))) == {12, 15, 16, 18, 19, 21}
    base_neck = detection_model(base).model[12].cv1.conv.weight
    assert not torch.equal(branch_head.tensors["branch.12.cv1.conv.weight"].float(), base_neck.float())  # it trained


def test_branch_file_round_trip(branch_head, tmp_path):
    path = branch_head.save(tmp_path / "branch.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["format"]) == BRANCH_FORMAT
    again = headkit.load_head(path)
    assert again.kind == branch_head.kind and again.metadata == branch_head.metadata
    assert all(torch.equal(again.tensors[k], branch_head.tensors[k]) for k in branch_head.tensors)
    assert path.stat().st_size < 16 * 2**20  # ~6 M parameters in fp16


def exact_rows(model, image):
    """Every detection at conf 0.001 (a weak head's thousands of low candidates), in the model's own order."""
    return detection_rows(model, image, imgsz=320, conf=0.001)


def test_every_heads_rows_are_bit_exact_with_any_mix_of_heads(base, branch_head, plate_head, bus_jpg, plate_images):
    """Merged rows = the base's rows alone, then each head's rows alone with class ids offset, bit for bit.

    The branch head is weak (1 epoch at 96 px): its many low candidates overlap at every IoU. NMS runs per head
    (`headkit.nms`), so its rows do not depend on the class ids it gets in the merge, or on how a machine rounds.
    """
    custom = headkit.merge(base, branch_head, keep_base_head=False)
    assert type(detection_model(custom).model[-1]).__name__ == "Detect"  # trunk + one branch head: a plain model
    alone = {id(branch_head): custom, id(plate_head): headkit.merge(base, plate_head, keep_base_head=False)}
    for heads in ([branch_head], [plate_head, branch_head], [branch_head, plate_head, branch_head]):
        merged = headkit.merge(base, *heads)
        for image in [bus_jpg, *plate_images]:
            expected, offset = [exact_rows(base, image)], 2
            for head in heads:
                rows = exact_rows(alone[id(head)], image)
                rows[:, 5] += offset
                expected.append(rows)
                offset += head.nc
            assert_rows_exact(exact_rows(merged, image), np.concatenate(expected), f"{image.name}, {len(heads)} heads")


def test_merged_branch_model_saves_reloads_and_exports(base, branch_head, plate_head, tmp_path, bus_jpg):
    merged = headkit.merge(base, plate_head, branch_head)
    merged.save(tmp_path / "merged.pt")
    again = headkit.load_model(tmp_path / "merged.pt")
    assert_rows_exact(rows(again, bus_jpg), rows(merged, bus_jpg))
    exported = headkit.export_merged(base, [branch_head], tmp_path / "out", formats=("onnx",), imgsz=320)
    square = {"imgsz": 320, "rect": False, "conf": 0.25, "verbose": False}  # the export's fixed 320x320 input
    got = YOLO(str(exported.paths["onnx"])).predict(bus_jpg, **square)[0].boxes.data
    want = headkit.merge(base, branch_head).predict(bus_jpg, **square)[0].boxes.data
    # ONNX Runtime's kernels are not torch's: the export is close, not a promise of bit-exactness.
    assert got.shape == want.shape and (got[:, :5] - want[:, :5]).abs().max() < 1e-2


def test_fp16_merge_keeps_base_classes_exact(base, branch_head):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    half = headkit.load_model(base.ckpt_path)
    half.model.to(device).half().eval()
    merged = headkit.merge(half, branch_head)
    assert next(detection_model(merged).model[-1].heads[1].parameters()).dtype == torch.float16
    image = torch.rand(1, 3, 128, 128, device=device).half()  # fp16 convolutions are slow on CPU
    with torch.no_grad():
        ours, theirs = merged.model(image)[0], half.model(image)[0]
    anchors = theirs.shape[2]
    assert torch.equal(ours[:, :6, :anchors], theirs)


def test_branch_head_on_another_base_is_refused(branch_head):
    other = headkit.load_model("yolov8s.yaml")  # same layers, other weights
    with pytest.raises(ValueError, match="was trained on base sha256"):
        headkit.merge(other, branch_head)
    with pytest.raises(ValueError, match="built for another architecture than this base"):
        headkit.merge(headkit.load_model("yolo11s.yaml"), branch_head)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m, t: m.pop("branch"), "no 'branch' entry"),
        (lambda m, t: m["branch"]["architecture"]["head"][0].__setitem__(2, "check_requirements"), "not a model layer"),
        (lambda m, t: m["branch"]["architecture"].__setitem__("activation", "__import__('os')"), "unexpected keys"),
        (lambda m, t: m["branch"].__setitem__("start", 30), "is not a layer between"),
        (lambda m, t: m["branch"].__setitem__("detect_from", [15, 18, 99]), "should be layers it owns or reads"),
        (lambda m, t: t.__setitem__("branch.99.w", torch.zeros(1)), r"tensor 'branch.99.w' is not"),
    ],
)
def test_altered_branch_files_are_refused_before_anything_runs(branch_head, tmp_path, change, message):
    bad = altered(branch_head, tmp_path, change)
    with pytest.raises(ValueError, match=message):
        headkit.load_head(bad)


def altered(head, folder, change):
    """A copy of `head`'s file with `change(metadata, tensors)` applied."""
    path = head.save(folder / "ok.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(meta, tensors)
    save_file(tensors, str(folder / "bad.safetensors"), metadata={k: json.dumps(v) for k, v in meta.items()})
    return folder / "bad.safetensors"


def test_branch_tensors_are_checked_against_the_base_before_building(branch_head, base, tmp_path):
    """Without a base, load_head cannot know a branch's tensors; the merge compares them with the base's layers."""
    bad = altered(branch_head, tmp_path, lambda m, t: t.pop("branch.12.cv1.conv.weight"))
    head = headkit.load_head(bad)
    with pytest.raises(ValueError, match=r"do not match its metadata \(1 missing, 0 unexpected; it lacks 'branch.12"):
        headkit.merge(base, head)


def test_keypoint_trick_with_a_branch_trains_the_branch_neck(tmp_path, base, plates_dir):
    """On a frozen trunk the keypoint loss only reached the dropped keypoint branch; with a branch it shapes the neck."""
    result, _ = tiny_training(tmp_path, base, plates_dir, branch="neck", keypoint_trick=True, imgsz=96, plots=False)
    head = result.head
    assert head.kind == headkit.HeadKind("keypoint-trick", 10) and head.metadata["trunk_check"]["untouched"]
    assert not any(k.startswith("cv4") for k in head.tensors)  # the keypoint branch is dropped
    base_neck = detection_model(base).model[15].cv1.conv.weight.float()
    assert not torch.equal(head.tensors["branch.15.cv1.conv.weight"].float(), base_neck)
    assert headkit.merge(base, head).names == {0: "Normal", 1: "Fall", 2: "license_plate"}


def test_training_continues_from_a_branch_head(tmp_path, base, plates_dir, branch_head):
    options = {"lr0": 0.0, "optimizer": "SGD", "warmup_epochs": 0, "imgsz": 96, "plots": False}
    result, _ = tiny_training(tmp_path, base, plates_dir, init_head=branch_head, **options)
    assert result.head.kind.branch_start == 10
    key = "branch.12.cv1.conv.weight"
    # Not an exactness claim: the head comes from the checkpoint's EMA weights (d·w + (1 - d)·w rounds), in fp16.
    assert torch.allclose(result.head.tensors[key].float(), branch_head.tensors[key].float(), atol=1e-4)


def test_shipped_neck_branch_head_finds_plates_and_keeps_the_base_exact(base, bus_jpg, plate_images):
    """weights/license_plate_neck.safetensors (see its card): a branch from layer 10, base classes bit-exact."""
    from kit import REPO

    head = headkit.load_head(REPO / "weights" / "license_plate_neck.safetensors")
    assert head.kind.branch_start == 10 and head.metadata["metrics"]["all"]["mAP50"] >= 0.90
    merged = headkit.merge(base, head)
    assert merged.names == {0: "Normal", 1: "Fall", 2: "license_plate"}
    ours, theirs = rows(merged, bus_jpg, imgsz=640), rows(base, bus_jpg, imgsz=640)
    assert_rows_exact(ours[ours[:, 5] < 2], theirs)
    plates = rows(merged, plate_images[0], imgsz=640)
    assert (plates[:, 5] == 2).any() and plates[plates[:, 5] == 2, 4].max() > 0.5
