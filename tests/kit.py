"""The test kit: helpers the test modules import (`from kit import ...`); fixtures live in conftest.py.

One home for what several test modules need: where the real weights and data are, a tiny plate dataset and training
run, the exactness check (detection rows compared at tolerance 0), clearing the environment for a loopback Hub, and a
cache for the bases a test module trains (YOLO26 has no checkpoint reachable offline).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HEADKIT_SHARED", REPO.parent / "shared"))
BASE_WEIGHTS = SHARED / "weights" / "yolov8s-fall.pt"
PLATES = SHARED / "datasets" / "license_plates"
SHIPPED_HEAD = REPO / "weights" / "license_plate.safetensors"
CACHE = Path(os.environ.get("HEADKIT_TEST_CACHE", Path.home() / ".cache" / "headkit-tests"))


# --- exactness: the README's promise is max |Δ| = 0 for base rows (and for each head's rows as alone) ---------------


def detection_rows(model, image, *, by_class: bool = False, **options) -> np.ndarray:
    """(N, 6) rows [x1, y1, x2, y2, conf, cls] as `predict(image, **options)` returns them, in the model's own order,
    or (`by_class`) sorted by class, then confidence (stable), for checks that promise the rows but not their order."""
    rows = model.predict(image, **{"verbose": False} | options)[0].boxes.data.cpu().numpy()
    return rows[np.lexsort((rows[:, 4], rows[:, 5]))] if by_class else rows


def assert_rows_exact(got, expected, what: str = "") -> None:
    """Bit for bit, in order (tolerance 0): same rows, same count, same dtype; numpy arrays or torch tensors."""
    got, expected = (np.asarray(x.cpu() if hasattr(x, "cpu") else x) for x in (got, expected))
    where = f"{what}: " if what else ""
    assert got.shape == expected.shape, (
        f"{where}{len(got)} vs {len(expected)} detections ({got.shape} vs {expected.shape})"
    )
    assert got.dtype == expected.dtype, f"{where}dtype {got.dtype} vs {expected.dtype}"
    if not np.array_equal(got, expected):
        gap = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        raise AssertionError(
            f"{where}max |Δ| = {gap.max()} (expected 0), first differing row {int(gap.max(1).argmax())}"
        )


# --- real data, small ---------------------------------------------------------------------------------------------


def copy_tiny_plates(plates_dir: Path, out: Path, *, train: int = 8, val: int = 4) -> Path:
    """Copy a few plate images per split (YOLO folder structure with data.yaml) into `out`, for fast training tests."""
    for split, count in (("train", train), ("val", val)):
        images = sorted((plates_dir / "images" / split).glob("*.jpg"))[:count]
        for image in images:
            for kind, src in (("images", image), ("labels", plates_dir / "labels" / split / f"{image.stem}.txt")):
                dst = out / kind / split / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dst)
    (out / "data.yaml").write_text("train: images/train\nval: images/val\nnames:\n  0: license_plate\n")
    return out


def tiny_training(root: Path, base, plates_dir: Path, **options):
    """A real (tiny) training run: 1 epoch at imgsz 160 on 8 plate images over the real base; (result, events)."""
    from headkit.train import train_head

    data = copy_tiny_plates(plates_dir, root / "data")
    events = []
    settings = dict(epochs=1, imgsz=160, batch=4, device="cpu", workers=0, project=root / "runs")
    result = train_head(base, data / "data.yaml", progress=events.append, **(settings | options))
    return result, events


def trainer_before_launch(base, data_yaml: Path, project: Path, name: str, *, trainer_class=None, init_head=None,
                          **settings):  # fmt: skip
    """The trainer Ultralytics' `Model.train` builds for a train_head run (`settings`: the run's Ultralytics
    arguments beyond train_head's own), before it trains or launches its multi-GPU workers."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    from headkit.progress import attach_callbacks
    from headkit.train import _settings, _start_model

    shape = {k: settings[k] for k in ("epochs", "imgsz", "batch", "device")}
    args = {**_settings(base, data_yaml, None, project=project, name=name, **shape), **settings}
    model = _start_model(base, init_head)
    attach_callbacks(model)
    trainer = (trainer_class or DetectionTrainer)(
        overrides={**model.overrides, "task": model.task, **args, "mode": "train"}, _callbacks=model.callbacks
    )
    trainer.model = trainer.get_model(weights=model.model, cfg=model.model.yaml)
    return trainer


def make_video(path: Path, pictures: list[Path], *, repeat: int = 2, fps: int = 5, h264: bool = False) -> Path:
    """A small real video from real photos, 640x480: mp4v as OpenCV writes it, or H.264 as phones record it."""
    import cv2

    frames = [cv2.resize(cv2.imread(str(picture)), (640, 480)) for picture in pictures] * repeat
    if h264:
        import imageio_ffmpeg

        writer = imageio_ffmpeg.write_frames(str(path), (640, 480), fps=fps, codec="libx264", pix_fmt_out="yuv420p")
        writer.send(None)
        for frame in frames:
            writer.send(frame[..., ::-1].copy())
        writer.close()
        return path
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (640, 480))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


# --- the environment a loopback Hub test starts from --------------------------------------------------------------

HUB_ENV_KEPT = ("HEADKIT_JOBS_DIR", "HEADKIT_SHARED", "HEADKIT_TEST_CACHE")  # the test's own folders, not settings


def clear_hub_env(monkeypatch, *, keep: tuple[str, ...] = HUB_ENV_KEPT) -> None:
    """Unset every HEADKIT_* and HF_* variable but the test's own folders, so no setting of the machine running the
    suite (a token, offline mode, a weights folder, a trusted owner, a limit) changes what a Hub test sees."""
    for name in list(os.environ):
        if name.startswith(("HEADKIT_", "HF_")) and name not in keep:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


# --- bases a test module trains, cached across runs ---------------------------------------------------------------


def cached_weights(name: str, settings: dict, train: Callable[[Path], Path]) -> Path:
    """A checkpoint `train(workdir)` makes, kept under CACHE keyed by the Ultralytics and torch versions + `settings`.

    Training one costs minutes on 2 CPU cores, and the same versions and settings give the same base; a later run
    reuses the file. Concurrent runs each train into their own folder and publish with an atomic rename: the first
    wins, the others use its file.
    """
    import torch
    import ultralytics

    key = json.dumps({"ultralytics": ultralytics.__version__, "torch": torch.__version__, **settings}, sort_keys=True)
    target = CACHE / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
    if target.is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE, prefix=f".{name}-") as work:
        trained = train(Path(work))
        staged = Path(work) / "staged.pt"
        shutil.copyfile(trained, staged)
        (Path(work) / "key.json").write_text(key)
        os.replace(Path(work) / "key.json", target.with_suffix(".json"))  # what the name's hash stands for
        os.replace(staged, target)  # atomic on one filesystem: readers see no file or the whole file
    return target
