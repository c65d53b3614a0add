"""End-to-end (NMS-free) bases: merged models keep the base's detections exactly in both of their modes.

No YOLO26 checkpoint is reachable offline, so the module trains two real end-to-end bases first (once per Ultralytics
version and settings: `kit.cached_weights` keeps them under ~/.cache/headkit-tests for later runs):
- `yolo26`: YOLO26n from its YAML, briefly (its scores are nearly flat, but it is the real architecture: its neck
  rows, reg_max 1, one-to-one branch), for training head-only and neck-branch heads on it;
- `fall_e2e`: the shared YOLOv8s fall base's trained trunk under a YOLO26-style end-to-end head (reg_max 1, one-to-one
  branch), trained on plates with the trunk frozen, so its detections on real images have real, distinct scores.
Every check compares a merged model with the base (or a head alone) on real images, bit for bit.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from kit import assert_rows_exact, cached_weights, copy_tiny_plates, detection_rows

import headkit
from headkit.base import clone_model
from headkit.train import train_head

CONF = 0.001  # a briefly trained YOLO26n scores low; every selected row still counts
MODES = {"one-to-many + NMS": {"conf": 0.01}, "NMS-free (nms=False)": {"nms": False}}
TINY = dict(epochs=1, imgsz=128, batch=4, device="cpu", workers=0, plots=False)


@pytest.fixture(scope="module")
def yolo26_weights(plates_dir) -> Path:
    settings = dict(epochs=2, imgsz=160, batch=16, device="cpu", workers=0, pretrained=False, amp=False, seed=0)

    def train(root: Path) -> Path:
        from ultralytics import YOLO

        data = copy_tiny_plates(plates_dir, root / "data", train=32, val=4)
        model = YOLO("yolo26n.yaml")
        model.train(data=str(data / "data.yaml"), plots=False, verbose=False, project=str(root / "runs"), name="base",
                    exist_ok=True, **settings)  # fmt: skip
        return Path(model.trainer.best)

    return cached_weights("yolo26n-plates", {"images": (32, 4), **settings}, train)


@pytest.fixture(scope="module")
def yolo26(yolo26_weights):
    return headkit.load_model(yolo26_weights)


@pytest.fixture(scope="module")
def fall_e2e(base, base_weights, plates_dir):
    """The fall base's trunk (layers 0-21, bit for bit) with an end-to-end head trained on plates."""
    settings = dict(epochs=3, imgsz=320, batch=16, device="cpu", workers=0, amp=False, seed=0, freeze=22)

    def train(root: Path) -> Path:
        from ultralytics import YOLO
        from ultralytics.nn.tasks import DetectionModel

        data = copy_tiny_plates(plates_dir, root / "data", train=32, val=4)
        layout = {**base.model.yaml, "end2end": True, "reg_max": 1, "nc": 1}
        model = YOLO("yolov8s.yaml")
        model.model = DetectionModel(layout, nc=1, verbose=False)
        model.model.load(base.model)
        model.ckpt = {"model": model.model}
        model.train(data=str(data / "data.yaml"), plots=False, verbose=False, project=str(root / "runs"), name="base",
                    exist_ok=True, **settings)  # fmt: skip
        return Path(model.trainer.best)

    trunk = hashlib.sha256(base_weights.read_bytes()).hexdigest()  # the trunk the cached base was trained over
    return headkit.load_model(cached_weights("fall-e2e-plates", {"trunk": trunk, "images": (32, 4), **settings}, train))


@pytest.fixture(scope="module")
def e2e_heads(tmp_path_factory, yolo26, plates_dir):
    """Three real YOLO26 heads: head-only and neck-branch heads trained by train_head, and the base's own head."""
    root = tmp_path_factory.mktemp("e2e_heads")
    data = copy_tiny_plates(plates_dir, root / "data")
    trained = {
        branch: train_head(yolo26, data / "data.yaml", project=root / "runs", name=branch, branch=branch, **TINY)
        for branch in ("head", "neck")
    }
    own = headkit.extract_head(yolo26, yolo26)
    return [trained["head"].head, trained["neck"].head, own], trained


@pytest.fixture(scope="module")
def fall_heads(tmp_path_factory, fall_e2e, plates_dir):
    """Heads for `fall_e2e`: a neck-branch head trained by train_head, and the base's own (real plate scores)."""
    root = tmp_path_factory.mktemp("fall_heads")
    data = copy_tiny_plates(plates_dir, root / "data")
    trained = train_head(fall_e2e, data / "data.yaml", project=root / "runs", branch="neck", **TINY)
    return [headkit.extract_head(fall_e2e, fall_e2e), trained.head, headkit.extract_head(fall_e2e, fall_e2e)]


BASES = {"yolo26": "e2e_heads", "fall_e2e": "fall_heads"}


def rows(model, image, **options) -> np.ndarray:
    """Detections [x1, y1, x2, y2, conf, cls] in the model's order, at 320 px unless `imgsz` is given."""
    return detection_rows(model, image, **{"imgsz": 320, "conf": CONF, "max_det": 20000} | options)  # no cap cuts


def test_pinned_ultralytics_end_to_end_contract(yolo26):
    """What the merge relies on; an Ultralytics upgrade that changes it fails here first."""
    from ultralytics.nn.modules.head import Detect
    from ultralytics.nn.tasks import DetectionModel

    detect = yolo26.model.model[-1]
    assert type(detect) is Detect and detect.one2one_cv2 is not None and detect.reg_max == 1
    x = torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    model = clone_model(yolo26).model.eval()
    with torch.no_grad():
        many = model(x)[0]
        model.end2end = True
        selected = model(x)[0]
    assert many.shape == (1, 4 + 1, 525)  # xywh + class scores per anchor, for external NMS
    assert selected.shape == (1, min(detect.max_det, 525), 6)  # [x1, y1, x2, y2, score, class], best first
    assert torch.all(selected[0, :-1, 4] >= selected[0, 1:, 4])

    merged = headkit.merge(yolo26, headkit.extract_head(yolo26, yolo26))
    assert isinstance(merged.model, DetectionModel)
    for value in (True, False):  # DetectionModel's setter hands the switch to any Detect, a ConcatHead included
        merged.model.end2end = value
        assert merged.model.model[-1].end2end is value
    image = np.zeros((160, 160, 3), dtype=np.uint8)
    for options, end2end in (({}, False), ({"nms": False}, True)):  # the predictor selects the branch from nms=
        model = clone_model(merged)
        model.predict(image, imgsz=160, verbose=False, **options)
        assert model.predictor.model.end2end is end2end


def test_heads_record_the_end_to_end_layout_and_a_bit_exact_trunk(e2e_heads):
    heads, trained = e2e_heads
    for head in heads:
        assert head.metadata["end2end"] is True
        assert any(key.startswith("one2one_cv3.") for key in head.detect_tensors)
    for result in trained.values():
        check = result.head.metadata["trunk_check"]
        assert check["untouched"] and check["max_abs_diff"] == 0.0
    assert heads[1].kind.branch_start == 11  # YOLO26's backbone has 11 rows, read from the model


@pytest.fixture(scope="module")
def base_rows():
    """What a base alone returns, by (base, mode, image): computed once, compared with every merge."""
    return {}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("which", BASES)
def test_base_detections_exact_with_one_two_three_heads(
    request, which, mode, count, base_rows, bus_jpg, zidane_jpg, plates_dir
):
    base = request.getfixturevalue(which)
    heads = request.getfixturevalue(BASES[which])
    heads = (heads[0] if isinstance(heads, tuple) else heads)[:count]
    plate = sorted((plates_dir / "images" / "val").glob("*.jpg"))[0]
    merged = headkit.merge(base, *heads)
    for image in (bus_jpg, zidane_jpg, plate):
        key = (which, mode, image)
        if key not in base_rows:
            base_rows[key] = rows(clone_model(base), image, **MODES[mode])
        expected = base_rows[key]
        got = rows(merged, image, **MODES[mode])
        assert len(expected) > 0
        assert_rows_exact(got[got[:, 5] < 1], expected, image.name)  # base rows first, in the base's order


def test_the_fall_trunk_base_finds_plates_with_distinct_scores(fall_e2e, plates_dir):
    plate = sorted((plates_dir / "images" / "val").glob("*.jpg"))[0]
    assert rows(fall_e2e, plate)[:, 4].max() > 0.02  # one-to-many branch: well above the flat start (~0.003)
    selected = rows(fall_e2e, plate, nms=False)[:20, 4]  # the one-to-one branch learns slower, but not flat
    assert len(unique_rows(rows(fall_e2e, plate, nms=False)[:20])) >= 5 and selected.max() > selected.min()


@pytest.mark.parametrize("mode", MODES)
def test_each_head_gives_what_trunk_plus_that_head_gives(mode, yolo26, e2e_heads, plates_dir):
    heads = e2e_heads[0][:2]
    plate = sorted((plates_dir / "images" / "val").glob("*.jpg"))[1]
    got = rows(headkit.merge(yolo26, *heads), plate, **MODES[mode])
    for k, head in enumerate(heads, start=1):
        alone = rows(headkit.merge(yolo26, head, keep_base_head=False), plate, **MODES[mode])
        mine = got[got[:, 5] == k]
        mine[:, 5] = 0
        assert len(alone) > 0
        assert_rows_exact(mine, alone, f"head {k}")


def test_max_det_caps_each_head_as_alone(yolo26, e2e_heads, bus_jpg):
    """NMS-free: max_det caps each head's rows on its own, as it caps that head alone; the base's rows come first."""
    cap = len(rows(clone_model(yolo26), bus_jpg, nms=False)) + 3
    options = dict(conf=CONF, imgsz=320, max_det=cap, nms=False)
    expected = [detection_rows(clone_model(yolo26), bus_jpg, **options)]
    for k, head in enumerate(e2e_heads[0], start=1):
        alone = detection_rows(headkit.merge(yolo26, head, keep_base_head=False), bus_jpg, **options)
        alone[:, 5] += k
        expected.append(alone)
    got = detection_rows(headkit.merge(yolo26, *e2e_heads[0]), bus_jpg, **options)
    assert len(got) > cap
    assert_rows_exact(got, np.concatenate(expected))


def test_saved_merged_model_reloads(tmp_path, yolo26, e2e_heads, bus_jpg):
    merged = headkit.merge(yolo26, *e2e_heads[0][:2])
    merged.save(tmp_path / "merged.pt")
    again = headkit.load_model(tmp_path / "merged.pt")
    for options in MODES.values():
        assert_rows_exact(rows(again, bus_jpg, **options), rows(merged, bus_jpg, **options))


def test_fp16_base_rows_exact(yolo26, e2e_heads):
    half_base = headkit.load_model(yolo26.ckpt_path)
    half_base.model.half().eval()
    merged = headkit.merge(half_base, *e2e_heads[0][:2])
    image = torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(1)).half()
    for inner in (half_base.model, merged.model):
        inner.end2end = True
    with torch.no_grad():
        base_rows, merged_rows = half_base.model(image)[0], merged.model(image)[0]
    assert next(merged.model.parameters()).dtype == torch.float16
    assert torch.equal(merged_rows[:, : base_rows.shape[1]], base_rows)


def unique_rows(rows: np.ndarray, gap: float = 2e-5) -> np.ndarray:
    """Selected rows whose score no other row comes within `gap` of, best first: comparable across runtimes."""
    rows = rows[np.argsort(-rows[:, 4], kind="stable")]
    apart = np.abs(np.diff(rows[:, 4])) > gap
    alone = np.concatenate(([True], apart)) & np.concatenate((apart, [True]))
    return rows[alone]


def test_onnx_export_of_both_modes(tmp_path, fall_e2e, fall_heads, plates_dir):
    """The exported graph carries the chosen mode: one-to-many columns, or each head's selected rows stacked."""
    import onnxruntime
    from ultralytics import YOLO

    merged = headkit.merge(fall_e2e, fall_heads[1])
    merged.model.pt_path = str(tmp_path / "merged.pt")
    plate = sorted((plates_dir / "images" / "val").glob("*.jpg"))[0]
    picture = cv2.resize(cv2.imread(str(plate)), (320, 320))[..., ::-1].copy()  # a real image: distinct scores
    image = torch.from_numpy(picture).permute(2, 0, 1)[None].float() / 255
    for e2e, options, shape in ((False, {}, (1, 4 + 2, 2 * 2100)), (True, {"nms": False}, (1, 2 * 300, 6))):
        target = tmp_path / f"e2e_{e2e}.onnx"
        shutil.move(merged.export(format="onnx", imgsz=320, verbose=False, **options), target)
        session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        (got,) = session.run(None, {session.get_inputs()[0].name: image.numpy()})
        reference = clone_model(merged).model.eval()
        reference.end2end = e2e
        reference.model[-1].max_det = 300  # what the exporter sets
        with torch.no_grad():
            expected = reference(image)[0].numpy()
        assert got.shape == expected.shape == shape
        # ONNX Runtime's kernels are not torch's: close, not a promise of bit-exactness (that is for torch models).
        if e2e:  # base rows first with class 0, then the head's with class 1; equal scores may come in any order
            assert np.array_equal(got[0, :, 5], np.repeat([0.0, 1.0], 300))
            for block in (slice(0, 300), slice(300, 600)):
                ours, theirs = unique_rows(got[0, block]), unique_rows(expected[0, block])
                assert len(ours) > 0 and ours.shape == theirs.shape
                np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-2)
        else:
            np.testing.assert_allclose(got[:, :4], expected[:, :4], rtol=1e-4, atol=1e-2)  # boxes, in pixels
            np.testing.assert_allclose(got[:, 4:], expected[:, 4:], atol=1e-4)  # class scores
        exported = YOLO(str(target), task="detect")
        result = exported.predict(
            sorted((plates_dir / "images" / "val").glob("*.jpg"))[0], imgsz=320, conf=CONF, verbose=False, **options
        )[0]
        assert exported.predictor.model.end2end == e2e and len(result.boxes) > 0
        assert result.names == merged.names


@pytest.mark.parametrize("mode", MODES)
def test_validator_runs_the_merged_model_in_the_chosen_mode(tmp_path, mode, fall_e2e, fall_heads, plates_dir):
    data = copy_tiny_plates(plates_dir, tmp_path / "plates", train=1, val=4)
    merged = headkit.merge(fall_e2e, fall_heads[0])
    seen = []
    merged.add_callback("on_val_end", lambda validator: seen.append(validator.end2end))
    options = {"nms": False} if MODES[mode].get("nms") is False else {}
    metrics = merged.val(data=str(data / "data.yaml"), imgsz=320, batch=4, workers=0, plots=False, verbose=False,
                         project=str(tmp_path), **options)  # fmt: skip
    assert seen == [bool(options)] and metrics.box.nc == 2


def test_layouts_do_not_mix(yolo26, e2e_heads, base, plate_head):
    with pytest.raises(ValueError, match=r"end-to-end \(NMS-free, YOLO26\).*one-to-many \(NMS, YOLOv8/YOLO11\)"):
        headkit.merge(base, e2e_heads[0][0])
    with pytest.raises(ValueError, match=r"one-to-many \(NMS, YOLOv8/YOLO11\).*end-to-end \(NMS-free, YOLO26\)"):
        headkit.merge(yolo26, plate_head)


def test_yolov10_and_fused_end_to_end_bases_are_refused(yolo26):
    with pytest.raises(ValueError, match="YOLOv10 model"):
        headkit.merge(headkit.load_model("yolov10n.yaml"))
    fused = clone_model(yolo26)
    fused.model.end2end = True
    fused.model.fuse(verbose=False)
    with pytest.raises(ValueError, match="fused end-to-end model"):
        headkit.merge(fused)


def test_bare_yolo26_name_pulls_from_the_official_repo(loopback_hub, yolo26_weights):
    hub = loopback_hub()
    hub.add_file("Ultralytics/YOLO26", "yolo26n.pt", yolo26_weights)
    model = headkit.load_model("yolo26n.pt")
    assert any(r.startswith("GET /Ultralytics/YOLO26/resolve/main/yolo26n.pt") for r in hub.requests)
    assert model.model.model[-1].one2one_cv2 is not None
