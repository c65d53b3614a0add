"""Shared fixtures: the real weights and datasets that live beside the project in ../shared.

Helper functions live in tests/kit.py; test modules import them from there (`from kit import ...`), not from here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# huggingface_hub reads its endpoint at import: point it at a closed loopback port so nothing ever leaves this
# machine; tests that use the Hub start a real loopback Hub and pass its address per call (HF_ENDPOINT).
os.environ.setdefault("HF_ENDPOINT", "http://127.0.0.1:9")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from kit import (  # noqa: E402 (after the Hub endpoint is set)
    BASE_WEIGHTS,
    PLATES,
    SHIPPED_HEAD,
    clear_hub_env,
    copy_tiny_plates,
    tiny_training,
)


def _assets() -> Path:
    import ultralytics

    return Path(ultralytics.__file__).parent / "assets"


@pytest.fixture(autouse=True)
def own_jobs_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test its own HEADKIT_JOBS_DIR (unless it sets one): visitors' Hub downloads are cached there
    (`Settings.visitor_hub_cache`), so no test finds another's (or an earlier run's) downloads."""
    if not os.environ.get("HEADKIT_JOBS_DIR"):
        monkeypatch.setenv("HEADKIT_JOBS_DIR", str(tmp_path_factory.mktemp("jobs")))


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


@pytest.fixture
def tiny_plates(tmp_path: Path, plates_dir: Path) -> Path:
    """A writable copy of 8 train / 4 val plate images with a data.yaml."""
    return copy_tiny_plates(plates_dir, tmp_path / "tiny_plates")


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


@pytest.fixture(scope="module")
def client(app):
    """A gradio_client Client of the test module's `app` server (each app test module names its own `app`)."""
    from gradio_client import Client

    return Client(app.url, verbose=False)


@pytest.fixture(scope="session")
def base_name(base_weights) -> str:
    """The base as the app tests name it: the path of the shared checkpoint (its server's HEADKIT_BASE)."""
    return str(base_weights)


@pytest.fixture
def loopback_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A factory of real Hubs on loopback (`tests/hub_server.py`): each call starts one, clears every HEADKIT_*/HF_*
    variable (`kit.clear_hub_env`), points huggingface_hub at it with its own HF_HOME, and sets HF_TOKEN if given.

        hub = loopback_hub(token="hf_secret")  # a LoopbackHub, stopped after the test
    """
    from contextlib import ExitStack

    from hub_server import LoopbackHub

    started: list[LoopbackHub] = []
    with ExitStack() as running:

        def start(*, token: str | None = None) -> LoopbackHub:
            server = running.enter_context(LoopbackHub(tmp_path / f"hub{len(started) or ''}"))  # one folder each
            started.append(server)
            clear_hub_env(monkeypatch)
            monkeypatch.setenv("HF_ENDPOINT", server.url)
            monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
            if token is not None:
                monkeypatch.setenv("HF_TOKEN", token)
            return server

        yield start
