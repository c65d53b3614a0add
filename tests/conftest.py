"""Shared fixtures: the real weights and datasets that live beside the project in ../shared."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# huggingface_hub reads its endpoint at import: point it at a closed loopback port so nothing ever leaves this
# machine; tests that use the Hub start a real loopback Hub and pass its address per call (HF_ENDPOINT).
os.environ.setdefault("HF_ENDPOINT", "http://127.0.0.1:9")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HEADKIT_SHARED", REPO.parent / "shared"))
BASE_WEIGHTS = SHARED / "weights" / "yolov8s-fall.pt"
PLATES = SHARED / "datasets" / "license_plates"


def _assets() -> Path:
    import ultralytics

    return Path(ultralytics.__file__).parent / "assets"


@pytest.fixture(scope="session")
def base_weights() -> Path:
    """The real pretrained YOLOv8s (Normal/Fall) used as the base model."""
    assert BASE_WEIGHTS.is_file(), f"missing {BASE_WEIGHTS}: tests need ../shared beside the checkout"
    return BASE_WEIGHTS


@pytest.fixture(scope="session")
def plates_dir() -> Path:
    """The real license-plate dataset (read-only: copy before changing anything)."""
    assert (PLATES / "data.yaml").is_file(), f"missing {PLATES}"
    return PLATES


@pytest.fixture(scope="session")
def bus_jpg() -> Path:
    return _assets() / "bus.jpg"


@pytest.fixture(scope="session")
def zidane_jpg() -> Path:
    return _assets() / "zidane.jpg"


def copy_tiny_plates(plates_dir: Path, out: Path, *, train: int = 8, val: int = 4) -> Path:
    """Copy a few plate images per split (YOLO layout with data.yaml) into `out`, for fast training tests."""
    import shutil

    for split, count in (("train", train), ("val", val)):
        images = sorted((plates_dir / "images" / split).glob("*.jpg"))[:count]
        for image in images:
            for kind, src in (("images", image), ("labels", plates_dir / "labels" / split / f"{image.stem}.txt")):
                dst = out / kind / split / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(src, dst)
    (out / "data.yaml").write_text("train: images/train\nval: images/val\nnames:\n  0: license_plate\n")
    return out


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


@pytest.fixture
def tiny_plates(tmp_path: Path, plates_dir: Path) -> Path:
    """A writable copy of 8 train / 4 val plate images with a data.yaml."""
    return copy_tiny_plates(plates_dir, tmp_path / "tiny_plates")


SHIPPED_HEAD = REPO / "weights" / "license_plate.safetensors"


@pytest.fixture(scope="session")
def base(base_weights: Path):
    """The real base, loaded once (headkit never modifies a base it is given)."""
    import headkit

    return headkit.load_model(base_weights)


@pytest.fixture(scope="session")
def plate_head():
    """The shipped license-plate head, trained by headkit on ../shared/datasets/license_plates (see its card)."""
    import headkit

    assert SHIPPED_HEAD.is_file(), f"missing shipped head {SHIPPED_HEAD}"
    return headkit.load_head(SHIPPED_HEAD)


@pytest.fixture(scope="session")
def plate_images(plates_dir: Path) -> list[Path]:
    """A few real val images with plates in them."""
    return sorted((plates_dir / "images" / "val").glob("*.jpg"))[:3]


def tiny_training(root: Path, base, plates_dir: Path, **options):
    """A real (tiny) training run: 1 epoch at imgsz 160 on 8 plate images over the real base; (result, events)."""
    from headkit.train import train_head

    data = copy_tiny_plates(plates_dir, root / "data")
    events = []
    settings = dict(epochs=1, imgsz=160, batch=4, device="cpu", workers=0, project=root / "runs")
    result = train_head(base, data / "data.yaml", progress=events.append, **(settings | options))
    return result, events


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, base, plates_dir):
    return tiny_training(tmp_path_factory.mktemp("tiny_run"), base, plates_dir)


@pytest.fixture(scope="session")
def offline_app(tmp_path_factory, base_weights):
    """app.py in a child process on loopback, offline (the Hub is a closed port), with its own folders."""
    from app_server import AppServer

    env = {
        "HEADKIT_BASE": str(base_weights),
        "HEADKIT_BASES": "",
        "HF_HUB_OFFLINE": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9",
    }
    with AppServer(tmp_path_factory.mktemp("app"), env) as server:
        yield server


@pytest.fixture(scope="session")
def tiny_head(tiny_run):
    return tiny_run[0].head


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


@pytest.fixture(scope="module")
def client(app):
    """A gradio_client Client of the test module's `app` server (each app test module names its own `app`)."""
    from gradio_client import Client

    return Client(app.url, verbose=False)


@pytest.fixture(scope="session")
def base_name(base_weights) -> str:
    """The base as the app tests name it: the path of the shared checkpoint (its server's HEADKIT_BASE)."""
    return str(base_weights)
