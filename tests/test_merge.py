"""merge(): old classes keep their exact boxes and confidences; new classes are exactly what their head alone gives."""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from kit import assert_rows_exact, detection_rows

import headkit
from headkit.base import clone_model
from headkit.headfile import Head
from headkit.limits import ENV
from headkit.merging import check_output_size
from headkit.trunk import trunk_state

CONF = 0.05  # low enough that a few new-head detections appear on plate images


def detections(model, image, *, conf=CONF, imgsz=640):
    """Rows [x1, y1, x2, y2, conf, cls] by class, then confidence; max_det is raised so the per-image cap (300 by
    default, shared by all classes) never cuts a low-confidence box."""
    return detection_rows(model, image, by_class=True, conf=conf, imgsz=imgsz, max_det=3000)


@pytest.fixture(scope="module")
def merged(base, plate_head):
    return headkit.merge(base, plate_head)


def test_names_are_base_then_head(base, plate_head, merged):
    assert merged.names == {0: "Normal", 1: "Fall", 2: "license_plate"}
    assert merged.task == "detect"


def test_base_classes_unchanged(base, merged, bus_jpg, zidane_jpg, plate_images):
    nb = len(base.names)
    for image in [bus_jpg, zidane_jpg, *plate_images]:
        ours = detections(merged, image)
        assert_rows_exact(ours[ours[:, 5] < nb], detections(base, image))
    assert len(detections(base, bus_jpg, conf=0.25)) == 4  # the base finds the 4 people on bus.jpg


def test_head_classes_equal_trunk_plus_that_head(base, plate_head, merged, plate_images):
    custom = headkit.merge(base, plate_head, keep_base_head=False)
    assert custom.names == {0: "license_plate"}
    found = 0
    for image in plate_images:
        ours = detections(merged, image)
        alone = detections(custom, image)
        ours = ours[ours[:, 5] >= 2]
        ours[:, 5] -= 2
        assert_rows_exact(ours, alone)
        found += len(alone)
    assert found > 0, "the plate head should find plates in plate images"


def test_three_heads_stacked(base, plate_head, tiny_head, bus_jpg, plate_images):
    own = headkit.extract_head(base, base)  # the base's own head as a third, independent head
    merged = headkit.merge(base, plate_head, tiny_head, own)
    assert list(merged.names.values()) == ["Normal", "Fall", "license_plate", "license_plate_2", "Normal_2", "Fall_2"]
    offsets = [(plate_head, 2), (tiny_head, 3), (own, 4)]
    for image in [bus_jpg, plate_images[0]]:
        rows = detections(merged, image, conf=0.01)
        assert_rows_exact(rows[rows[:, 5] < 2], detections(base, image, conf=0.01))
        for head, offset in offsets:
            alone = detections(headkit.merge(base, head, keep_base_head=False), image, conf=0.01)
            mine = rows[(rows[:, 5] >= offset) & (rows[:, 5] < offset + head.nc)].copy()
            mine[:, 5] -= offset
            assert_rows_exact(mine, alone)


def test_raw_outputs_exact(base, merged):
    image = torch.rand(1, 3, 320, 320)
    with torch.no_grad():
        y_base = base.model.eval()(image)[0]
        y_merged = merged.model.eval()(image)[0]
    anchors = y_base.shape[2]
    assert y_merged.shape == (1, 4 + 3, 2 * anchors)
    assert torch.equal(y_merged[:, :6, :anchors], y_base)  # boxes and base scores, bit for bit
    assert torch.count_nonzero(y_merged[:, 6:, :anchors]) == 0  # the base anchors score 0 for the new class
    assert torch.count_nonzero(y_merged[:, 4:6, anchors:]) == 0  # the head anchors score 0 for base classes


def test_trunk_is_the_base_byte_for_byte(base, merged):
    ours, theirs = trunk_state(merged), trunk_state(base)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) and ours[k].dtype == theirs[k].dtype for k in ours)
    assert headkit.fingerprint(merged) == headkit.fingerprint(base)


def test_base_object_not_modified(base, plate_head):
    before = headkit.fingerprint(base)
    headkit.merge(base, plate_head)
    assert headkit.fingerprint(base) == before and base.names == {0: "Normal", 1: "Fall"}


def test_saved_merged_model_reloads(tmp_path, merged, bus_jpg, plate_images):
    """Saving stores the very tensors: the reloaded model gives bit-identical raw outputs and detections."""
    path = tmp_path / "merged.pt"
    merged.save(path)
    again = headkit.load_model(path)
    assert again.names == merged.names
    image = torch.rand(1, 3, 320, 320, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(again.model.eval()(image)[0], merged.model.eval()(image)[0])
    for image in [bus_jpg, plate_images[0]]:
        assert_rows_exact(detections(again, image), detections(merged, image))


def test_fp16_base_classes_exact(base, plate_head):
    if not torch.cuda.is_available():
        device = "cpu"
    else:
        device = "cuda"
    half_base = headkit.load_model(base.ckpt_path)
    half_base.model.to(device).half().eval()
    merged = headkit.merge(half_base, plate_head)
    assert next(merged.model.parameters()).dtype == torch.float16
    image = torch.rand(1, 3, 128, 128, device=device).half()  # fp16 convolutions are slow on CPU
    with torch.no_grad():
        y_base = half_base.model(image)[0]
        y_merged = merged.model(image)[0]
    anchors = y_base.shape[2]
    assert y_merged.dtype == torch.float16 and y_merged.device == y_base.device
    assert torch.equal(y_merged[:, :6, :anchors], y_base)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_predict_base_classes_unchanged(base, plate_head, bus_jpg):
    merged = headkit.merge(base, plate_head)
    ours = merged.predict(bus_jpg, device=0, max_det=3000, verbose=False)[0].boxes.data.cpu().numpy()
    theirs = base.predict(bus_jpg, device=0, max_det=3000, verbose=False)[0].boxes.data.cpu().numpy()
    ours = ours[ours[:, 5] < 2]
    assert len(theirs) >= 4
    assert_rows_exact(ours[np.lexsort((ours[:, 4], ours[:, 5]))], theirs[np.lexsort((theirs[:, 4], theirs[:, 5]))])


def test_val_on_merged_names(tmp_path, base, plate_head, merged, tiny_plates):
    """A dataset labelled with merged indices validates on the merged model as on the plate head alone, exactly.

    max_det is raised so the per-image cap, shared by all classes, never lets base boxes push a plate box out.
    """
    import shutil

    remapped = tmp_path / "remapped"
    shutil.copytree(tiny_plates, remapped)
    for label in (remapped / "labels").rglob("*.txt"):
        label.write_text("".join("2" + line[1:] for line in label.read_text().splitlines(keepends=True)))
    (remapped / "data.yaml").write_text(
        "train: images/train\nval: images/val\nnames:\n  0: Normal\n  1: Fall\n  2: license_plate\n"
    )
    for cache in remapped.rglob("*.cache"):
        cache.unlink()
    custom = headkit.merge(base, plate_head, keep_base_head=False)
    settings = dict(imgsz=320, batch=4, workers=0, plots=False, verbose=False, project=str(tmp_path), max_det=10_000)
    m = merged.val(data=str(remapped / "data.yaml"), name="m", **settings)
    c = custom.val(data=str(tiny_plates / "data.yaml"), name="c", **settings)
    assert m.box.map50 > 0.3
    assert list(m.box.ap_class_index) == [2] and list(c.box.ap_class_index) == [0]
    assert np.array_equal(m.box.all_ap, c.box.all_ap) and m.box.class_result(0) == c.box.class_result(0)


@pytest.fixture
def default_limits(monkeypatch):
    """The built-in limits, whatever HEADKIT_MAX_* the shell running the tests has set."""
    for name in ENV.values():
        monkeypatch.delenv(name, raising=False)


def widened(head: Head, nc: int) -> Head:
    """A valid head with `nc` classes: the class layer (last conv of each cv3 branch) repeated, names to match."""
    tensors = dict(head.tensors)
    for key in [k for k in tensors if k.startswith("cv3.") and k.endswith((".2.weight", ".2.bias"))]:
        tensors[key] = tensors[key].repeat(nc, *[1] * (tensors[key].dim() - 1))
    names = {str(i): f"class{i}" for i in range(nc)}
    return Head(tensors, {**head.metadata, "names": names, "label": f"{nc} classes"})


def test_nine_heads_refused(base, plate_head, default_limits):
    with pytest.raises(headkit.LimitExceeded, match=r"extra heads in one merge: 9 .*max_heads.*HEADKIT_MAX_HEADS"):
        headkit.merge(base, *[plate_head] * 9)


def test_raised_limits_let_nine_heads_merge(base, plate_head, default_limits):
    merged = headkit.merge(base, *[plate_head] * 9, limits=headkit.Limits(max_heads=9))
    assert len(merged.model.model[-1].heads) == 10 and len(merged.names) == 2 + 9
    assert merged.names[10] == "license_plate_9"


def test_wide_head_refused_before_anything_is_built(base, plate_head, default_limits, monkeypatch):
    wide = widened(plate_head, 3000)
    assert wide.build().nc == 3000  # a well-formed head, only too wide
    module = importlib.import_module("headkit.merging")
    for heavy in ("clone_model", "fingerprint"):  # the first steps that cost time or memory
        monkeypatch.setattr(module, heavy, lambda *a, **k: pytest.fail("merge built before refusing"))
    start = time.perf_counter()
    with pytest.raises(headkit.LimitExceeded, match=r"classes of head 1 \('3000 classes'\): 3,000 .*max_classes"):
        headkit.merge(base, wide)
    with pytest.raises(headkit.LimitExceeded, match=r"classes of the merged model .*: 3,002 .*max_merged_classes"):
        headkit.merge(base, wide, limits=headkit.Limits(max_classes=5000))
    assert time.perf_counter() - start < 0.1  # a full merge takes ~0.5 s; these refuse from the metadata alone


def test_output_size_limit(merged, default_limits):
    assert check_output_size(merged, 640) == pytest.approx((4 + 3) * 2 * 8400 * 4 / 2**20)
    with pytest.raises(headkit.LimitExceeded, match=r"2000 classes, 9 heads, 1280 px.*max_output_mb"):
        check_output_size((2000, 9), 1280)
    assert check_output_size((2000, 9), 1280, headkit.Limits(max_output_mb=4096)) > 512


def test_export_with_baked_nms_is_refused(tmp_path, merged):
    """NMS stays out of a merged model's graph: Ultralytics' NMS wrapper is not proven exact for joined heads."""
    model = clone_model(merged)
    model.model.pt_path = str(tmp_path / "merged.pt")
    with pytest.raises(ValueError, match=r"export\(nms=True\) is refused on a merged model"):
        model.export(format="onnx", imgsz=160, nms=True, verbose=False)
    assert not list(tmp_path.glob("*.onnx"))


NECK_HEAD = Path(__file__).resolve().parents[1] / "weights" / "license_plate_neck.safetensors"


def test_a_merge_checks_each_head_once_and_builds_what_passed(base, plate_head, monkeypatch, bus_jpg):
    """One fit check per head (layout, branch rows and shapes), then building trusts it; the result stays exact."""
    import headkit.branch
    import headkit.detect
    import headkit.headfile
    import headkit.merging

    calls = []
    fits, branch_fits = headkit.detect.DetectLayout.check_fits, headkit.branch.check_branch_fits_base
    monkeypatch.setattr(headkit.detect.DetectLayout, "check_fits", lambda *a: calls.append("layout") or fits(*a))
    for module in (headkit.merging, headkit.headfile):
        monkeypatch.setattr(module, "check_branch_fits_base", lambda *a: calls.append("branch") or branch_fits(*a))
    neck = headkit.load_head(NECK_HEAD)
    merged = headkit.merge(base, plate_head, neck)
    assert sorted(calls) == ["branch", "layout", "layout"]
    rows = detections(merged, bus_jpg)
    assert_rows_exact(rows[rows[:, 5] < len(base.names)], detections(base, bus_jpg))


def test_only_a_head_made_for_another_base_is_refused_as_not_fitting(base, plate_head):
    """`HeadDoesNotFit` is the verdict "made for another base"; a malformed head is a plain ValueError."""
    other_size = headkit.load_model("yolov8n.yaml")
    with pytest.raises(headkit.HeadDoesNotFit, match=r"channels \(reg_max 16\), but this base provides \[64, 128"):
        headkit.merge(other_size, plate_head)
    broken = Head(plate_head.tensors, {**plate_head.metadata, "reg_max": 100_000})
    with pytest.raises(ValueError, match=r"'reg_max' 100000 should be an integer in 1..64") as info:
        headkit.merge(base, broken)
    assert not isinstance(info.value, headkit.HeadDoesNotFit)
