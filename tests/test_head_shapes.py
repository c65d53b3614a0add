"""Head shapes that cost less than the neck branch, saved, loaded and merged with the base's rows bit-exact,
refused where they do not fit: a narrow class branch started from the base's own (train_head class_width=N), a
path branch (branch="p3") owning only the layers that feed the Detect's P3 input, its P4/P5 inputs the base's own, and
that path's last stage (branch="p3-last"); each with the keypoint trick too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kit import REPO, copy_tiny_plates
from ultralytics.utils.metrics import box_iou
from ultralytics.utils.torch_utils import get_flops

import headkit
from headkit.__main__ import main
from headkit.branch import Branch, BranchDetect, branch_tensors
from headkit.detect import DetectLayout, HeadDoesNotFit, narrow_detect, narrow_width
from headkit.headfile import Head
from headkit.kinds import PathChoice, path_range
from headkit.train import _start_model, train_head
from headkit.trunk import detection_model, fingerprint

TINY = dict(epochs=1, imgsz=64, batch=2, device="cpu", workers=0, plots=False, seed=0, deterministic=True)
KW = {"conf": 0.01, "max_det": 3000, "verbose": False}
WIDTH = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory, plates_dir) -> Path:
    return copy_tiny_plates(plates_dir, tmp_path_factory.mktemp("shapes") / "data", train=8, val=2) / "data.yaml"


@pytest.fixture(scope="module")
def narrow(base, data, tmp_path_factory):
    return train_head(base, data, project=tmp_path_factory.mktemp("runs"), name="narrow", class_width=WIDTH, **TINY)


@pytest.fixture(scope="module")
def p3(base, data, tmp_path_factory):
    return train_head(base, data, project=tmp_path_factory.mktemp("runs"), name="p3", branch="p3", **TINY).head


@pytest.fixture(scope="module")
def p3_narrow(base, data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    return train_head(base, data, project=runs, name="p3n", branch="p3", class_width="narrow", **TINY).head


@pytest.fixture(scope="module")
def p3_last_trick(base, data, tmp_path_factory):
    """The cheap exact point ("p3-last-narrow") trained with the keypoint trick: its pose loss reaches the branch."""
    runs = tmp_path_factory.mktemp("runs")
    shape = headkit.SHAPES["p3-last-narrow"]
    return train_head(
        base, data, project=runs, name="p3lk", branch=shape.branch, class_width=shape.class_width,
        keypoint_trick=True, **TINY,
    ).head  # fmt: skip


def rows(model, image, imgsz=320) -> torch.Tensor:
    """Detections as (N, 6) [x1, y1, x2, y2, conf, cls], in a fixed order."""
    data = model.predict(image, imgsz=imgsz, **KW)[0].boxes.data
    return data[torch.argsort(data[:, 4], descending=True, stable=True)]


def test_a_narrow_class_branch_starts_from_the_base_strongest_channels(base):
    own = detection_model(base).model[-1]
    narrowed = narrow_detect(own, WIDTH)
    assert DetectLayout.from_detect(narrowed).class_width == WIDTH and DetectLayout.from_detect(own).class_width == 128
    first, theirs = narrowed.cv3[0][0], own.cv3[0][0]
    strongest = theirs.bn.weight.abs().topk(WIDTH).indices.sort().values
    assert torch.equal(first.conv.weight, theirs.conv.weight[strongest])  # warm: the base's channels, not fresh
    assert torch.equal(first.bn.weight, theirs.bn.weight[strongest])
    second = own.cv3[0][1].bn.weight.abs().topk(WIDTH).indices.sort().values
    assert torch.equal(narrowed.cv3[0][1].conv.weight, own.cv3[0][1].conv.weight[second][:, strongest])
    assert all(torch.equal(v, own.state_dict()[k]) for k, v in narrowed.state_dict().items() if k.startswith("cv2."))
    assert own.cv3[0][0].conv.weight.shape[0] == 128  # the base's own head is untouched


def test_narrow_picks_32_channels_for_few_classes_and_grows_with_them_as_ultralytics_does(p3_narrow):
    assert p3_narrow.metadata["class_width"] == 32  # the 1-class plates, class_width="narrow"
    assert p3_narrow.tensors["cv3.0.0.conv.weight"].shape[0] == 32
    assert [narrow_width(nc, (128, 256, 512)) for nc in (1, 32, 64, 100, 500)] == [32, 32, 64, 100, 100]
    # where Ultralytics' own width is no wider (yolov8n's 64-channel maps, 80 classes), the run keeps it
    assert [narrow_width(nc, (64, 128, 256)) for nc in (1, 40, 64, 80)] == [32, 40, None, None]


def test_a_narrow_head_trains_records_its_width_and_costs_less(narrow, plate_head):
    head = narrow.head
    assert head.metadata["class_width"] == WIDTH and head.metadata["trunk_check"]["untouched"]
    assert head.tensors["cv3.0.0.conv.weight"].shape == (WIDTH, 128, 3, 3)
    assert head.tensors["cv3.0.2.weight"].shape == (1, WIDTH, 1, 1)
    count = lambda h: sum(v.numel() for k, v in h.tensors.items() if k.startswith("cv3."))  # noqa: E731
    assert count(head) < count(plate_head) / 4
    assert set(narrow.metrics) == {"license_plate", "all"}


def test_a_narrow_head_survives_save_load_and_merges_with_base_rows_exact(
    base, narrow, tmp_path, bus_jpg, plate_images
):
    head = narrow.head
    again = headkit.load_head(head.save(tmp_path / "narrow.safetensors"))
    assert again.metadata == head.metadata
    assert all(torch.equal(again.tensors[k].float(), head.tensors[k].float()) for k in head.tensors)
    merged = headkit.merge(base, again)
    alone = headkit.merge(base, again, keep_base_head=False)
    for image in [bus_jpg, plate_images[0]]:
        ours, theirs = rows(merged, image), rows(base, image)
        kept = ours[ours[:, 5] < 2]
        assert kept.shape == theirs.shape and torch.equal(kept, theirs), "base rows bit-exact"
        mine, solo = ours[ours[:, 5] == 2], rows(alone, image)
        mine[:, 5] -= 2
        assert mine.shape == solo.shape and torch.equal(mine, solo)


def test_a_narrow_width_out_of_range_or_clashing_is_refused_before_training(base, plate_head):
    with pytest.raises(ValueError, match=r"class_width=4: a narrow class branch on this base is 8\.\.127"):
        train_head(base, "unused.yaml", class_width=4)
    with pytest.raises(ValueError, match=r"class_width=4: a narrow class branch on this base is 8\.\.127"):
        train_head(base, "unused.yaml", class_width=4, keypoint_trick=True)  # before the dataset is read
    with pytest.raises(ValueError, match=r"class_width=128: .*its own is 128"):
        train_head(base, "unused.yaml", class_width=128)
    with pytest.raises(ValueError, match="not available with class_branch='light'"):
        train_head(base, "unused.yaml", class_width=32, class_branch="light")
    with pytest.raises(ValueError, match="not available with init_head"):
        train_head(base, "unused.yaml", class_width=32, init_head=plate_head)


def test_a_file_declaring_a_width_below_the_narrowest_is_refused(narrow, tmp_path):
    head = narrow.head
    forged = Head(head.tensors, {**head.metadata, "class_width": 4})
    with pytest.raises(ValueError, match=r"'class_width' 4 should be an integer in 128\.\.128 .* or in 8\.\.127"):
        headkit.load_head(forged.save(tmp_path / "forged.safetensors"))


def test_cli_trains_a_narrow_head(base_weights, data, tmp_path, capsys):
    out = tmp_path / "narrow.safetensors"
    shape = ["--epochs", "1", "--imgsz", "64", "--batch", "2", "--device", "cpu", "--class-width", "16"]
    main(["train", "--base", str(base_weights), "--data", str(data), "--out", str(out), *shape,
          "--project", str(tmp_path / "runs")])  # fmt: skip
    assert headkit.load_head(out).metadata["class_width"] == 16
    assert '"kind": "head only"' in capsys.readouterr().out


def test_the_p3_path_and_its_last_stage_are_read_from_the_base_rows(base):
    yolo11 = headkit.load_model("yolo11n.yaml")  # the rows are what counts: no weights needed
    assert path_range(base, PathChoice(0)) == (10, 16)  # YOLOv8: Upsample 10 .. C2f 15, which feeds Detect input 0
    # its last stage starts after C2f 12, which the bottom-up path reads again (layer 17): Upsample 13 .. C2f 15
    assert path_range(base, PathChoice(0, last_stage=True)) == (13, 16)
    assert path_range(yolo11, PathChoice(0)) == (11, 17)  # a longer backbone (YOLO26's rows read the same)
    assert path_range(yolo11, PathChoice(0, last_stage=True)) == (14, 17)
    with pytest.raises(ValueError, match=r"input 1 \(layer 18\) takes in the Detect's other input\(s\) \[15\]"):
        path_range(base, PathChoice(1))  # P4's path runs through P3's output: owning it is the neck branch


def test_a_p3_head_owns_the_p3_path_and_reads_the_base_p4_p5(base, p3):
    branch = p3.metadata["branch"]
    assert (branch["start"], branch["end"], branch["detect_from"]) == (10, 16, [15, 18, 21])
    assert branch["inputs"] == [4, 6, 9, 18, 21]  # the backbone's maps, and the base's own P4 and P5 outputs
    assert p3.kind.describe() == "branch of layers 10-15" and p3.metadata["trunk_check"]["untouched"]
    assert p3.base_fingerprint == fingerprint(base)  # its P4/P5 inputs depend on the whole trunk
    owned = {k.split(".")[1] for k in p3.tensors if k.startswith("branch.")}
    assert owned == {"12", "15"}  # the C2f blocks; 10, 11, 13, 14 (Upsample, Concat) have no tensors
    own = detection_model(base).model[15].state_dict()
    assert not torch.equal(p3.tensors["branch.15.cv2.conv.weight"].float(), own["cv2.conv.weight"].float())  # trained
    module = p3.build_branch(base)
    assert isinstance(module, Branch) and (module.start, module.end) == (10, 16)


def test_a_p3_last_head_with_the_keypoint_trick_owns_the_last_stage_and_keeps_no_keypoint_branch(base, p3_last_trick):
    head = p3_last_trick
    branch = head.metadata["branch"]
    assert (branch["start"], branch["end"], branch["inputs"]) == (13, 16, [4, 12, 18, 21])  # the base's own C2f 12
    assert head.kind.describe() == "branch of layers 13-15, keypoint trick"
    assert head.metadata["trained_with"] == "keypoint-trick" and head.metadata["class_width"] == WIDTH
    assert head.metadata["trunk_check"]["untouched"] and not [k for k in head.tensors if "cv4" in k]
    assert {k.split(".")[1] for k in head.tensors if k.startswith("branch.")} == {"15"}  # 13, 14 hold no tensors
    own = detection_model(base).model[15].state_dict()["cv2.conv.weight"]
    assert not torch.equal(head.tensors["branch.15.cv2.conv.weight"].float(), own.float())  # the pose loss trained it


def test_p3_heads_survive_save_load_and_merge_with_base_rows_exact(base, p3, p3_narrow, p3_last_trick, plate_head,
                                                                     tmp_path, bus_jpg, plate_images):  # fmt: skip
    trained = (p3, p3_narrow, p3_last_trick)
    heads = [headkit.load_head(h.save(tmp_path / f"{k}.safetensors")) for k, h in enumerate(trained)]
    assert heads[0].metadata == p3.metadata and heads[1].metadata["class_width"] == WIDTH
    assert heads[2].metadata == p3_last_trick.metadata
    merged = headkit.merge(base, plate_head, *heads)
    for image in [bus_jpg, plate_images[0]]:
        ours, theirs = rows(merged, image), rows(base, image)
        kept = ours[ours[:, 5] < 2]
        assert kept.shape == theirs.shape and torch.equal(kept, theirs), "base rows bit-exact"
        for offset, head in zip((3, 4, 5), heads, strict=True):
            mine, alone = ours[ours[:, 5] == offset], rows(headkit.merge(base, head, keep_base_head=False), image)
            mine[:, 5] -= offset
            assert mine.shape == alone.shape and torch.equal(mine, alone)


def test_a_p3_head_with_an_altered_end_or_another_trunk_is_refused(base, p3, tmp_path, plate_head):
    moved = Head(p3.tensors, {**p3.metadata, "branch": {**p3.metadata["branch"], "end": 17}})
    with pytest.raises(HeadDoesNotFit, match=r"layers 10\.\.16\).* lacks 'branch\.16\.bn\.bias'"):
        headkit.merge(base, moved)
    outside = Head(p3.tensors, {**p3.metadata, "branch": {**p3.metadata["branch"], "end": 99}})
    with pytest.raises(ValueError, match=r"branch end 99 is not a layer in 11\.\.22"):
        headkit.load_head(outside.save(tmp_path / "outside.safetensors"))
    stray = Head(p3.tensors | {"branch.18.cv1.conv.weight": torch.zeros(1)}, p3.metadata)
    with pytest.raises(ValueError, match=r"tensor 'branch\.18\.cv1\.conv\.weight' is not .* a layer in 10\.\.15"):
        headkit.load_head(stray.save(tmp_path / "stray.safetensors"))  # the base's own P4 path is not the head's
    neck_print = Head(p3.tensors, {**p3.metadata, "base_fingerprint": fingerprint(base, upto=10)})
    with pytest.raises(HeadDoesNotFit, match="was trained on base sha256"):
        headkit.merge(base, neck_print)  # a path head's fingerprint covers the whole trunk, not the layers before 10
    with pytest.raises(
        ValueError, match=r"a path branch \('p3', 'p3-last'\) is not available with class_branch='light'"
    ):
        train_head(base, "unused.yaml", branch="p3", class_branch="light")


def test_a_path_head_goes_on_training_from_its_own_weights(base, p3_narrow, data, tmp_path):
    start = _start_model(base, p3_narrow)
    slot = detection_model(start).model[-1]  # the branch in the Detect slot, as it trained, warm from the head's
    assert isinstance(slot, BranchDetect) and (slot.branch.start, slot.branch.end) == (10, 16)
    own = {f"branch.{k}": v for k, v in branch_tensors(start, 10).items()}
    assert all(torch.equal(v.half(), p3_narrow.tensors[k].half()) for k, v in own.items()) and len(own) > 0
    again = train_head(base, data, project=tmp_path / "runs", name="more", init_head=p3_narrow, **TINY).head
    assert again.kind.describe() == "branch of layers 10-15" and again.metadata["class_width"] == WIDTH
    assert again.metadata["trunk_check"]["untouched"]
    assert not torch.equal(again.tensors["branch.15.cv2.conv.weight"], p3_narrow.tensors["branch.15.cv2.conv.weight"])


def test_shipped_cheap_exact_point_head_finds_the_example_plate_and_keeps_the_base_exact(base):
    """weights/license_plate_p3_last.safetensors (see its card): the P3 last stage, narrow, at 640 px."""
    head = headkit.load_head(REPO / "weights" / "license_plate_p3_last.safetensors")
    assert head.kind.describe() == "branch of layers 13-15" and head.metadata["class_width"] == WIDTH
    assert head.metadata["metrics"]["all"]["mAP50"] >= 0.90 and head.metadata["imgsz"] == 640
    merged = headkit.merge(base, head)
    assert get_flops(merged.model, 640) / get_flops(base.model, 640) <= 1.30
    example = REPO / "examples" / "bus_plate.jpg"
    ours, theirs = rows(merged, example, imgsz=640), rows(base, example, imgsz=640)
    assert torch.equal(ours[ours[:, 5] < 2], theirs), "base rows bit-exact"
    plate = torch.tensor([[7.7, 408.1, 63.5, 437.2]])  # where the neck-branch head finds the plate (its card)
    best = ours[ours[:, 5] == 2][:1, :4]  # this head's most confident plate
    assert box_iou(best, plate).item() > 0.7
