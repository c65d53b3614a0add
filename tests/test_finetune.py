"""The comparison fine-tune and the forgetting count: what the usual way loses, measured by one shared rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
from kit import copy_tiny_plates
from safetensors import safe_open

import headkit
from headkit.finetune import finetune, load_finetuned, save_finetuned
from headkit.retention import detection_rows, kept_detections

NAMES = {0: "Normal", 1: "Fall"}
ROW = np.array([[10.0, 20.0, 110.0, 220.0, 0.8, 0.0]])


def test_retention_rule():
    assert kept_detections(ROW, NAMES, ROW, NAMES) == 1
    assert kept_detections(ROW, NAMES, ROW, {0: "person"}) == 0  # another class name
    moved = ROW.copy()
    moved[0, 4] += 2e-4
    assert kept_detections(ROW, NAMES, moved, NAMES) == 0  # confidence changed
    shifted = ROW.copy()
    shifted[0, [0, 2]] += 10  # IoU 0.82
    assert kept_detections(ROW, NAMES, shifted, NAMES) == 0
    assert kept_detections(ROW, NAMES, np.zeros((0, 6)), NAMES) == 0


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, base, plates_dir):
    root = tmp_path_factory.mktemp("finetune")
    data = copy_tiny_plates(plates_dir, root / "data")
    settings = dict(epochs=1, imgsz=96, batch=4, device="cpu", workers=0)
    return finetune(base, data / "data.yaml", project=root / "runs", **settings), root


def test_finetuned_model_round_trips_without_pickle(tuned, tmp_path, bus_jpg, base):
    """It loads into a copy of the base it was tuned from: nothing is built from the rows the file records."""
    result, _ = tuned
    path = save_finetuned(result.model, tmp_path / "tuned.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["names"]) == {"0": "license_plate"}
    again = load_finetuned(path, base)
    ours = detection_rows(again.predict(bus_jpg, imgsz=320, conf=0.01, verbose=False)[0])
    theirs = detection_rows(result.model.predict(bus_jpg, imgsz=320, conf=0.01, verbose=False)[0])
    assert ours.shape == theirs.shape and np.array_equal(ours, theirs)


def test_fine_tune_forgets_and_merge_keeps(tuned, base, plate_head, bus_jpg):
    result, _ = tuned
    reference = detection_rows(base.predict(bus_jpg, verbose=False)[0])
    merged = headkit.merge(base, plate_head)
    kept_merged = kept_detections(
        reference, base.names, detection_rows(merged.predict(bus_jpg, verbose=False)[0]), merged.names
    )
    tuned_rows = detection_rows(result.model.predict(bus_jpg, verbose=False)[0])
    assert len(reference) == 4 and kept_merged == 4
    assert kept_detections(reference, base.names, tuned_rows, result.model.names) == 0  # its classes are gone


def test_not_a_finetuned_file_is_refused(tmp_path, plate_head, base):
    head_file = plate_head.save(tmp_path / "head.safetensors")
    with pytest.raises(ValueError, match="head.safetensors: this is a head, not a fine-tuned model; load it with"):
        load_finetuned(head_file, base)


def test_a_fine_tune_written_by_headkit_0_1_still_loads(tuned, tmp_path, base):
    """Before artefact.py, save_finetuned wrote its format bare (not as JSON text); such files stay readable."""
    from safetensors.torch import save_file

    result, _ = tuned
    path = save_finetuned(result.model, tmp_path / "new.safetensors")
    with safe_open(str(path), framework="pt") as f:
        raw, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    assert json.loads(raw["format"]) == "headkit.finetune/1"
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={**raw, "format": "headkit.finetune/1"})
    assert load_finetuned(tmp_path / "old.safetensors", base).names == result.model.names
