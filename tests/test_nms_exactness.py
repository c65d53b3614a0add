"""Every head's detections in a merged model are exactly its own: NMS runs per head (`headkit.nms`), so a head's rows in
`predict` and its classes' `val` metrics equal those of trunk + that head alone, bit for bit, wherever the head sits.

Merged models also refuse class-agnostic NMS, where one head's boxes would suppress another head's: an extra head that
is the base head with +2 on its class bias wipes out the base's people on bus.jpg.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml
from kit import assert_rows_exact, detection_rows

import headkit
from headkit.headfile import Head
from headkit.nms import MergedYOLO, _refuse_agnostic_predict, guard_merged

IMGSZ = 320
CONF = 0.001  # val's default: every low-scoring candidate of a weak head takes part, where IoUs sit at every edge
# Ultralytics' defaults otherwise: max_det (300) caps each head of a merged model on its own, as it caps the head alone.
VAL = dict(imgsz=IMGSZ, batch=16, workers=0, plots=False, verbose=False)
REFUSED = "is refused on a merged model: .*class-agnostic NMS lets one head's boxes suppress another head's"


def base_class_count(model, image, **options) -> int:
    """Base-class detections at Ultralytics' predict defaults (640 px, conf 0.25): 4 people on bus.jpg."""
    boxes = model.predict(image, conf=0.25, verbose=False, **options)[0].boxes
    return int((boxes.cls < 2).sum())


@pytest.fixture(scope="module")
def attack_head(base):
    """The base's own head, every class logit raised by 2: the same boxes as the base, each more confident."""
    own = headkit.extract_head(base, base)
    tensors = {key: value.clone() for key, value in own.tensors.items()}
    for key in [k for k in tensors if k.startswith("cv3.") and k.endswith(".2.bias")]:  # last conv of each scale
        tensors[key] += 2
    return Head(tensors, {**own.metadata, "label": "louder base"})


@pytest.fixture(scope="module")
def attacked(base, attack_head):
    return headkit.merge(base, attack_head)


@pytest.fixture(scope="module")
def pseudo_labelled(tmp_path_factory, base, bus_jpg, zidane_jpg, plates_dir):
    """9 images labelled in the base's classes (ids 0/1) by the base itself at 640 px, validated at 320 px."""
    import shutil

    root = tmp_path_factory.mktemp("pseudo")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    images = [bus_jpg, zidane_jpg, *sorted((plates_dir / "images" / "val").glob("*.jpg"))[:7]]
    for image in images:
        shutil.copy(image, root / "images" / image.name)
        boxes = base.predict(image, imgsz=640, conf=0.25, verbose=False)[0].boxes
        rows = [
            f"{int(c)} {' '.join(f'{v:.6f}' for v in xywhn)}\n" for c, xywhn in zip(boxes.cls, boxes.xywhn, strict=True)
        ]
        (root / "labels" / f"{image.stem}.txt").write_text("".join(rows))
    data_yaml(root, base)
    return root


def data_yaml(root, model):
    """`<root>/<n>classes.yaml` over the same images and labels, in `model`'s class names."""
    path = root / f"{len(model.names)}classes.yaml"
    spec = {"path": str(root), "train": "images", "val": "images", "names": {int(k): v for k, v in model.names.items()}}
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_agnostic_nms_would_let_a_head_erase_base_classes(base, attack_head, attacked, bus_jpg):
    """Why the refusal exists: Ultralytics' own NMS over the joined output (as an exported file runs it), with the guard
    taken off one instance and agnostic_nms on, loses every one of the people."""
    from ultralytics.models.yolo.detect import DetectionPredictor

    assert base_class_count(base, bus_jpg) == 4
    assert base_class_count(attacked, bus_jpg) == 4  # NMS per head (the merged model's own): exact
    assert base_class_count(attacked, bus_jpg, predictor=DetectionPredictor) == 4  # one per-class NMS: exact too
    unguarded = headkit.merge(base, attack_head)
    unguarded.callbacks["on_predict_start"].remove(_refuse_agnostic_predict)
    assert base_class_count(unguarded, bus_jpg, agnostic_nms=True, predictor=DetectionPredictor) == 0


def test_predict_agnostic_nms_refused(attacked, bus_jpg):
    with pytest.raises(ValueError, match=f"agnostic_nms=True {REFUSED}.*agnostic_nms=False"):
        attacked.predict(bus_jpg, imgsz=IMGSZ, agnostic_nms=True, verbose=False)
    assert base_class_count(attacked, bus_jpg) == 4  # the same model predicts normally afterwards


@pytest.mark.parametrize("setting", ["single_cls", "agnostic_nms"])
def test_val_class_agnostic_refused(attacked, pseudo_labelled, setting, tmp_path):
    with pytest.raises(ValueError, match=f"{setting}=True {REFUSED}.*{setting}=False"):
        attacked.val(data=data_yaml(pseudo_labelled, attacked), project=str(tmp_path), **VAL, **{setting: True})


def test_reloaded_merged_model_refuses(tmp_path, attacked, bus_jpg):
    """Callbacks are not saved in a .pt: guard_merged puts the refusal back on a reloaded merged model."""
    from ultralytics import YOLO

    path = tmp_path / "merged.pt"
    attacked.save(path)
    again = guard_merged(guard_merged(YOLO(str(path))))
    assert again.callbacks["on_predict_start"].count(_refuse_agnostic_predict) == 1  # twice adds nothing
    with pytest.raises(ValueError, match=f"agnostic_nms=True {REFUSED}"):
        again.predict(bus_jpg, imgsz=IMGSZ, agnostic_nms=True, verbose=False)

    loaded = headkit.load_model(path)
    assert isinstance(loaded, MergedYOLO) and isinstance(again, MergedYOLO)  # per-head NMS comes back too
    with pytest.raises(ValueError, match=f"agnostic_nms=True {REFUSED}"):
        loaded.predict(bus_jpg, imgsz=IMGSZ, agnostic_nms=True, verbose=False)


def test_guard_leaves_plain_models_alone(base):
    assert guard_merged(base) is base
    assert _refuse_agnostic_predict not in base.callbacks["on_predict_start"]


@pytest.mark.parametrize("head", ["plate_head", "attack_head"])
def test_base_class_val_metrics_equal_the_base(base, head, pseudo_labelled, tmp_path, request):
    """Per-class precision, recall, mAP50 and mAP50-95 of the base classes: the same numbers, merged or not.

    The attack head puts a more confident copy of every base box on top of it: per-class NMS keeps both.
    """
    merged = headkit.merge(base, request.getfixturevalue(head))
    ours = merged.val(data=data_yaml(pseudo_labelled, merged), project=str(tmp_path), name="merged", **VAL)
    theirs = base.val(data=data_yaml(pseudo_labelled, base), project=str(tmp_path), name="base", **VAL)
    assert sorted(theirs.box.ap_class_index.tolist()) == [0, 1], "the labels should hold both base classes"
    assert list(ours.box.ap_class_index) == list(theirs.box.ap_class_index)
    for i, c in enumerate(theirs.box.ap_class_index):
        assert np.array_equal(ours.box.all_ap[i], theirs.box.all_ap[i]), f"class {c}: AP at 10 IoU thresholds"
        assert ours.box.class_result(i) == theirs.box.class_result(i)  # p, r, mAP50, mAP50-95
    assert 0 < theirs.box.map50 < 1  # labels at 640 px, validated at 320 px: a real, imperfect score
    results = merged.predict(pseudo_labelled / "images", imgsz=IMGSZ, conf=CONF, verbose=False)
    assert sum(int((r.boxes.cls >= 2).sum()) for r in results) > 0, "the head's boxes were there to interfere"


# A weak head (conftest's tiny_head: 1 epoch on 8 plate images) scores thousands of low, overlapping candidates, where
# IoUs sit at every edge of the threshold; the shipped plate head sits between its copies to move their class ids.
MERGES = {
    "first after the base": ("tiny_head",),
    "after another head": ("plate_head", "tiny_head"),
    "twice, around another": ("tiny_head", "plate_head", "tiny_head"),
}


def detections(model, image, **options) -> np.ndarray:
    """Rows [x1, y1, x2, y2, conf, cls] in the model's own order, at conf 0.001 and Ultralytics' default max_det."""
    return detection_rows(model, image, imgsz=IMGSZ, conf=CONF, **options)


def offsets(heads) -> list[int]:
    """Each extra head's first class id in a merge after the base's two classes."""
    return [2 + sum(head.nc for head in heads[:k]) for k in range(len(heads))]


@pytest.fixture(scope="module")
def images(bus_jpg, zidane_jpg, plates_dir):
    return [bus_jpg, zidane_jpg, *sorted((plates_dir / "images" / "val").glob("*.jpg"))[:4]]


@pytest.mark.parametrize("order", MERGES)
def test_each_heads_rows_are_its_rows_alone_wherever_it_sits(base, order, images, request):
    """The merged rows are the base's rows alone, then each head's rows alone with its class ids offset: bit for bit,
    in the same order, each head capped by its own max_det."""
    heads = [request.getfixturevalue(name) for name in MERGES[order]]
    merged = headkit.merge(base, *heads)
    alone = [headkit.merge(base, head, keep_base_head=False) for head in heads]
    weak_rows = 0
    for image in images:
        expected = [detections(base, image)]
        for model, offset in zip(alone, offsets(heads), strict=True):
            rows = detections(model, image)
            rows[:, 5] += offset
            expected.append(rows)
        weak_rows += len(expected[1 + MERGES[order].index("tiny_head")])
        assert_rows_exact(detections(merged, image), np.concatenate(expected), image.name)
    assert weak_rows > 100 * len(images)  # the weak head brought its many low candidates

    last = offsets(heads)[-1]  # `classes` names merged ids; each head keeps its own of them
    got, rows = detections(merged, images[2], classes=[0, last]), detections(alone[-1], images[2], classes=[0])
    rows[:, 5] += last
    assert_rows_exact(got, np.concatenate([detections(base, images[2], classes=[0]), rows]))


def test_track_hands_the_tracker_each_heads_rows_alone(base, tiny_head, plate_head, images):
    """`track` and `predict(stream=True)` post-process with the same per-head NMS (the tracker reads those rows)."""
    heads = [tiny_head, plate_head, tiny_head]
    merged, seen = headkit.merge(base, *heads), []
    merged.add_callback("on_predict_postprocess_end", lambda p: seen.append(p.results[0].boxes.data.numpy().copy()))
    for image in images[2:4]:
        merged.track(image, persist=True, tracker="bytetrack.yaml", imgsz=IMGSZ, conf=CONF, verbose=False)
    other = headkit.merge(base, *heads)
    for frame, image in zip(seen, images[2:4], strict=True):
        streamed = list(other.predict(image, stream=True, imgsz=IMGSZ, conf=CONF, verbose=False))[0]
        assert_rows_exact(frame, detections(other, image), f"tracked {image.name}")
        assert_rows_exact(streamed.boxes.data.numpy(), frame, f"streamed {image.name}")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, pseudo_labelled, plates_dir):
    """The pseudo-labelled images under three label sets: 'merged' (the base's classes 0/1 and every real plate box as
    class 2, 3 and 4: one per extra head of tiny + plate + tiny), 'base' (0/1) and 'plates' (the plate boxes as 0)."""
    roots = {"base": pseudo_labelled}
    for name in ("merged", "plates"):
        roots[name] = tmp_path_factory.mktemp(name)
        shutil.copytree(pseudo_labelled / "images", roots[name] / "images")
        (roots[name] / "labels").mkdir()
    for image in sorted((pseudo_labelled / "images").iterdir()):
        real = plates_dir / "labels" / "val" / f"{image.stem}.txt"
        plates = [line.split(maxsplit=1)[1] for line in real.read_text().splitlines()] if real.is_file() else []
        base_rows = (pseudo_labelled / "labels" / f"{image.stem}.txt").read_text()
        merged_rows = "".join(f"{c} {box}\n" for c in (2, 3, 4) for box in plates)
        (roots["merged"] / "labels" / f"{image.stem}.txt").write_text(base_rows + merged_rows)
        (roots["plates"] / "labels" / f"{image.stem}.txt").write_text("".join(f"0 {box}\n" for box in plates))
    return roots


def test_each_heads_val_metrics_are_its_metrics_alone(base, tiny_head, plate_head, labelled, tmp_path):
    """Every class's P, R, F1 and AP at all ten IoU thresholds equal its head's own val, exactly, though the labels
    hold every head's classes (Ultralytics would pick one max-F1 confidence for all of them)."""
    heads = [tiny_head, plate_head, tiny_head]
    merged = headkit.merge(base, *heads)
    ours = merged.val(data=data_yaml(labelled["merged"], merged), project=str(tmp_path), name="merged", **VAL)
    tiny, plate = (headkit.merge(base, head, keep_base_head=False) for head in (tiny_head, plate_head))
    own = {
        "base": base.val(data=data_yaml(labelled["base"], base), project=str(tmp_path), name="base", **VAL).box,
        "tiny": tiny.val(data=data_yaml(labelled["plates"], tiny), project=str(tmp_path), name="tiny", **VAL).box,
        "plate": plate.val(data=data_yaml(labelled["plates"], plate), project=str(tmp_path), name="plate", **VAL).box,
    }
    whose = {0: ("base", 0), 1: ("base", 0), 2: ("tiny", 2), 3: ("plate", 3), 4: ("tiny", 4)}  # class: (head, offset)
    assert list(ours.box.ap_class_index) == [0, 1, 2, 3, 4]
    for i, c in enumerate(ours.box.ap_class_index):
        theirs, offset = own[whose[c][0]], whose[c][1]
        j = list(theirs.ap_class_index).index(c - offset)
        assert np.array_equal(ours.box.all_ap[i], theirs.all_ap[j]), f"class {c}: AP at 10 IoU thresholds"
        assert (ours.box.p[i], ours.box.r[i], ours.box.f1[i]) == (theirs.p[j], theirs.r[j], theirs.f1[j]), f"class {c}"
        assert np.array_equal(ours.box.p_curve[i], theirs.p_curve[j]) and np.array_equal(
            ours.box.r_curve[i], theirs.r_curve[j]
        )
    assert 0 < own["plate"].map50 and own["tiny"].map50 < own["plate"].map50  # a real head and a weak one
