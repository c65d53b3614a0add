"""export_merged(): TorchScript and ONNX run with plain Ultralytics where headkit is not installed; the .pt does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from kit import detection_rows

import headkit

IMGSZ = 320  # small, fixed export size keeps the traces and the child's predictions quick on 2 CPU cores
CONF = 0.05  # low enough that the plate head finds plates on the plate image
MAX_DET = 3000  # no per-image cap cuts a low-confidence row on either side

# Runs in a child `python -I` (no PYTHONPATH, no user site, cwd a temp dir) where headkit cannot be imported, as on
# the machine of someone who downloaded the files. Writes JSON to argv[2]; stdout is Ultralytics' log.
CHILD = """
import importlib.util, json, sys
job = json.loads(sys.argv[1])
out = {"headkit_found": importlib.util.find_spec("headkit") is not None}
try:
    import headkit
    out["import_headkit"] = "imported"
except ImportError as e:
    out["import_headkit"] = f"{type(e).__name__}: {e}"
from ultralytics import YOLO
out["detections"] = {}
for fmt, path in job["models"].items():
    model = YOLO(path)
    rows = {}
    for image in job["images"]:
        boxes = model.predict(image, conf=job["conf"], max_det=job["max_det"], verbose=False)[0].boxes
        rows[image] = boxes.data.tolist()
    out["detections"][fmt] = {"names": model.names, "rows": rows}
try:
    YOLO(job["pt"])
    out["pt"] = "loaded"
except Exception as e:
    out["pt"] = f"{type(e).__name__}: {e}"
out["headkit_found_after"] = importlib.util.find_spec("headkit") is not None
open(sys.argv[2], "w").write(json.dumps(out))
"""


def without_headkit(job: dict, cwd) -> dict:
    """Run CHILD on `job` in a fresh interpreter that cannot import headkit and must not install anything."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env |= {"YOLO_AUTOINSTALL": "false", "YOLO_OFFLINE": "true", "PIP_NO_INDEX": "1", "UV_OFFLINE": "1"}
    result_file = cwd / "child.json"
    run = subprocess.run(
        [sys.executable, "-I", "-c", CHILD, json.dumps(job), str(result_file)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(result_file.read_text())


def detections(model, image) -> np.ndarray:
    """In-process rows [x1, y1, x2, y2, conf, cls], letterboxed square as the fixed-size exports are."""
    return detection_rows(model, image, imgsz=IMGSZ, rect=False, conf=CONF, max_det=MAX_DET)


def assert_same_detections(got: np.ndarray, expected: np.ndarray, *, box_tol: float, conf_tol: float) -> None:
    """Same number of rows per class; each expected row has its own got row within the tolerances."""
    assert got.shape == expected.shape, f"{len(got)} vs {len(expected)} detections"
    for c in np.unique(expected[:, 5]):
        g, e = got[got[:, 5] == c], expected[expected[:, 5] == c]
        assert len(g) == len(e), f"class {c}: {len(g)} vs {len(e)} detections"
        gap = np.abs(e[:, None, :4] - g[None, :, :4]).max(-1)  # expected x got, pixels
        nearest = gap.argmin(1)
        assert len(set(nearest.tolist())) == len(e), f"class {c}: two expected boxes match one exported box"
        assert gap[np.arange(len(e)), nearest].max() <= box_tol
        assert np.abs(e[:, 4] - g[nearest, 4]).max() <= conf_tol


@pytest.fixture(scope="module")
def exported(tmp_path_factory, base, plate_head):
    folder = tmp_path_factory.mktemp("exported")
    return headkit.export_merged(
        base, [plate_head], folder, name="plates", formats=("pt", "torchscript", "onnx"), imgsz=IMGSZ
    )


@pytest.fixture(scope="module")
def merged(base, plate_head):
    return headkit.merge(base, plate_head)


@pytest.fixture(scope="module")
def child(tmp_path_factory, exported, bus_jpg, plate_images):
    images = [str(bus_jpg), str(plate_images[0])]
    job = {
        "models": {fmt: str(exported.paths[fmt]) for fmt in ("torchscript", "onnx")},
        "images": images,
        "pt": str(exported.paths["pt"]),
        "conf": CONF,
        "max_det": MAX_DET,
    }
    return without_headkit(job, tmp_path_factory.mktemp("no_headkit"))


def test_export_writes_each_format(exported):
    assert list(exported.paths) == ["pt", "torchscript", "onnx"]
    assert exported.files == [exported.paths[f] for f in ("pt", "torchscript", "onnx")]
    assert {p.parent for p in exported.files} == {exported.files[0].parent}  # all in the folder, none by the base
    assert all(p.is_file() and p.stem == "plates" for p in exported.files)
    assert exported.needs_headkit == [exported.paths["pt"]]  # a ConcatHead is pickled in the .pt only
    assert exported.names == {0: "Normal", 1: "Fall", 2: "license_plate"}


def test_child_cannot_import_headkit(child):
    assert not child["headkit_found"] and child["import_headkit"].startswith("ModuleNotFoundError")


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_exports_run_without_headkit(child, fmt, merged, bus_jpg, plate_images):
    """Plain Ultralytics gives the merged model's detections: base classes (people on bus.jpg) and plates."""
    result = child["detections"][fmt]
    assert {int(k): v for k, v in result["names"].items()} == {0: "Normal", 1: "Fall", 2: "license_plate"}
    for image in [bus_jpg, plate_images[0]]:
        expected = detections(merged, image)
        got = np.array(result["rows"][str(image)], dtype=np.float32).reshape(-1, 6)
        # Another runtime (ONNX Runtime, a traced graph) in another process: close, not promised bit-exact.
        assert_same_detections(got, expected, box_tol=1e-2, conf_tol=1e-3)
    bus = np.array(result["rows"][str(bus_jpg)]).reshape(-1, 6)
    plate = np.array(result["rows"][str(plate_images[0])]).reshape(-1, 6)
    assert (bus[:, 5] < 2).sum() >= 4, "the base's people on bus.jpg are in the export's output"
    assert (plate[:, 5] == 2).any(), "the head's license_plate class is in the export's output"


def test_pt_needs_headkit_and_installs_nothing(child):
    """The .pt pickles headkit.concat.ConcatHead: without headkit it fails, naming headkit; AutoInstall stays off."""
    assert child["pt"] != "loaded"
    assert "headkit" in child["pt"]
    assert not child["headkit_found_after"], "nothing may have installed a 'headkit' package"


def test_onnx_raw_output_matches_torch(exported, merged):
    import onnxruntime

    image = torch.rand(1, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = merged.model.eval()(image)[0].numpy()
    session = onnxruntime.InferenceSession(str(exported.paths["onnx"]), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    assert got.shape == expected.shape == (1, 4 + 3, 2 * 2100)
    # ONNX Runtime's kernels are not torch's: close, not bit-exact; the zero blocks below are exact.
    np.testing.assert_allclose(got[:, :4], expected[:, :4], rtol=1e-4, atol=1e-2)  # boxes, in pixels
    np.testing.assert_allclose(got[:, 4:], expected[:, 4:], atol=1e-4)  # class scores
    assert not got[:, 6:, :2100].any() and not got[:, 4:6, 2100:].any()  # each head scores only its own classes


def test_onnx_keyword_still_works(tmp_path, base, plate_head):
    result = headkit.export_merged(base, [plate_head], tmp_path, keep_base_head=False, onnx=True, imgsz=160)
    assert list(result.paths) == ["pt", "onnx"] and result.needs_headkit == []  # one head: a plain Detect .pt


def test_unknown_format_refused_before_merging(tmp_path, base, plate_head):
    with pytest.raises(ValueError, match="unknown export format.*'engine'.*pt, torchscript, onnx"):
        headkit.export_merged(base, [plate_head], tmp_path, formats=("engine",))
    assert not any(tmp_path.iterdir())


def test_a_merged_models_own_export_is_named_for_it_and_never_overwrites_the_bases(
    base_weights, plate_head, tmp_path, monkeypatch
):
    """`merged.export()` (Ultralytics' own call) names the file after the merged model, in the working directory."""
    shelf = tmp_path / "shelf"  # where the base's weights and its own export live
    shelf.mkdir()
    (shelf / base_weights.name).write_bytes(base_weights.read_bytes())
    base_export = shelf / f"{base_weights.stem}.torchscript"
    base_export.write_bytes(b"the base's own export")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    merged = headkit.merge(headkit.load_model(shelf / base_weights.name), plate_head)
    written = merged.export(format="torchscript", imgsz=IMGSZ, verbose=False)
    assert written == str(work / f"{base_weights.stem}+license_plate.torchscript")
    assert base_export.read_bytes() == b"the base's own export"
    assert sorted(p.name for p in shelf.iterdir()) == sorted([base_weights.name, base_export.name])
