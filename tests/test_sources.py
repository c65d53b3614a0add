"""load_model / load_head from every source: local, HEADKIT_WEIGHTS_DIR, and the Hub over real HTTP on loopback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hub_server import LoopbackHub

import headkit
from headkit.disk import tree_bytes
from headkit.sources import parse_hub_url

BUS_NORMALS = 4  # the base finds the 4 people on bus.jpg (see ../shared/weights/SOURCES.md)


@pytest.fixture
def hub(loopback_hub, tmp_path: Path, base_weights: Path, plate_head):
    head_file = plate_head.save(tmp_path / "license_plate.safetensors")
    server = loopback_hub()
    server.add_file("Ultralytics/YOLOv8", "yolov8s-fall.pt", base_weights)
    server.add_file("someone/plates", "heads/license_plate.safetensors", head_file)
    server.add_file("someone/models", "model.pt", base_weights)
    return server


def pulls(server: LoopbackHub) -> list[str]:
    return [r for r in server.requests if r.startswith("GET ") and "/resolve/" in r]


def test_hub_url_parsing():
    ref = parse_hub_url("hf://owner/repo/sub/dir/file.pt@v1.0")
    assert (ref.repo_id, ref.filename, ref.revision) == ("owner/repo", "sub/dir/file.pt", "v1.0")
    assert parse_hub_url("hf://owner/repo/file.pt", revision="abc").revision == "abc"
    with pytest.raises(ValueError, match="hf://owner/repo/path/to/file"):
        parse_hub_url("hf://just-a-name")


def test_local_path(base_weights, bus_jpg):
    model = headkit.load_model(base_weights)
    assert model.names == {0: "Normal", 1: "Fall"}
    assert len(model.predict(bus_jpg, verbose=False)[0].boxes) == BUS_NORMALS


def test_pull_from_hub_over_http(hub, bus_jpg):
    model = headkit.load_model("hf://Ultralytics/YOLOv8/yolov8s-fall.pt")
    assert pulls(hub) == ["GET /Ultralytics/YOLOv8/resolve/main/yolov8s-fall.pt"]
    assert len(model.predict(bus_jpg, verbose=False)[0].boxes) == BUS_NORMALS


def test_bare_name_maps_to_the_official_repo(hub):
    model = headkit.load_model("yolov8s-fall.pt")
    assert model.names == {0: "Normal", 1: "Fall"}
    assert any("/Ultralytics/YOLOv8/resolve/" in r for r in hub.requests)


def test_pinned_revision_and_cache_then_offline(hub, monkeypatch):
    sha = hub.create_ref("Ultralytics/YOLOv8", "refs/tags/v1")
    headkit.load_model(f"hf://Ultralytics/YOLOv8/yolov8s-fall.pt@{sha}")  # the commit tag v1 points at
    headkit.load_model("hf://Ultralytics/YOLOv8/yolov8s-fall.pt@v1")
    assert pulls(hub) == [f"GET /Ultralytics/YOLOv8/resolve/{sha}/yolov8s-fall.pt"]  # v1 is that commit: cached
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(hub.requests)
    again = headkit.load_model("hf://Ultralytics/YOLOv8/yolov8s-fall.pt", revision="v1")
    assert again.names == {0: "Normal", 1: "Fall"} and len(hub.requests) == before  # served from the cache
    with pytest.raises(headkit.UntrustedSourceError, match="cannot be verified offline"):  # a pickle by bare commit
        headkit.load_model("hf://Ultralytics/YOLOv8/yolov8s-fall.pt", revision=sha)
    with pytest.raises(ConnectionError, match="offline mode is on .* not in the local Hub cache"):
        headkit.load_head("hf://someone/plates/heads/license_plate.safetensors")
    assert len(hub.requests) == before


def test_outage_uses_cache_else_clear_error(hub, tmp_path, monkeypatch):
    headkit.load_model("hf://Ultralytics/YOLOv8/yolov8s-fall.pt")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: the Hub is down
    assert headkit.load_model("hf://Ultralytics/YOLOv8/yolov8s-fall.pt").names == {0: "Normal", 1: "Fall"}
    with pytest.raises(ConnectionError, match="cannot be reached and the file is not in the local Hub cache"):
        headkit.load_head("hf://someone/plates/heads/license_plate.safetensors")


def test_weights_dir_is_searched_first(hub, base_weights, monkeypatch):
    monkeypatch.setenv("HEADKIT_WEIGHTS_DIR", str(base_weights.parent))
    model = headkit.load_model("yolov8s-fall.pt")
    assert model.names == {0: "Normal", 1: "Fall"} and hub.requests == []


def test_head_from_hub(hub, plate_head):
    head = headkit.load_head("hf://someone/plates/heads/license_plate.safetensors")
    assert head.names == plate_head.names and head.base_fingerprint == plate_head.base_fingerprint
    assert hub.requests, "the head must really come over HTTP"


def test_untrusted_pickle_refused_before_download(hub):
    with pytest.raises(headkit.UntrustedSourceError, match="refusing to download a pickle .* 'someone'"):
        headkit.load_model("hf://someone/models/model.pt")
    assert hub.requests == []


def test_trusted_owner_from_environment(hub, monkeypatch):
    monkeypatch.setenv("HEADKIT_TRUSTED_OWNERS", "Ultralytics,someone")
    assert headkit.load_model("hf://someone/models/model.pt").names == {0: "Normal", 1: "Fall"}


@pytest.mark.parametrize(
    ("source", "error", "message"),
    [
        ("hf://Ultralytics/Nope/yolov8n.pt", FileNotFoundError, "repository 'Ultralytics/Nope' not found"),
        ("hf://Ultralytics/YOLOv8/missing.pt", FileNotFoundError, "no file 'missing.pt'"),
        ("hf://Ultralytics/YOLOv8/yolov8s-fall.pt@" + "0" * 40, PermissionError, "'0000.* not a branch or tag"),
        ("hf://someone/plates/heads/license_plate.safetensors@nope", FileNotFoundError, "revision 'nope' not found"),
        ("no/such/file.pt", FileNotFoundError, "no file at 'no/such/file.pt'"),
        ("mystery.pt", FileNotFoundError, "not an official name"),
    ],
)
def test_missing_sources_say_what_to_do(hub, source, error, message):
    with pytest.raises(error, match=message):
        headkit.load_model(source)


def test_files_that_are_not_models(tmp_path):
    fake = tmp_path / "model.pt"
    fake.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a PyTorch checkpoint"):
        headkit.load_model(fake)
    wrong = tmp_path / "weights.onnx"
    wrong.write_bytes(b"\0")
    with pytest.raises(ValueError, match="expected an Ultralytics model checkpoint"):
        headkit.load_model(wrong)


def test_typed_addresses_fill_no_more_than_the_visitors_hub_cache(hub, tmp_path, monkeypatch):
    """Attack: six typed addresses of 150 MiB non-head files left 900 MiB in a cache nobody
    counted. Here (scaled down: 3 MiB files, a 8 MiB cache) the visitors' cache is a folder of the jobs root, counted
    in its disk figure, and swept least recently used first after every download."""
    jobs = tmp_path / "jobs"
    monkeypatch.setenv("HEADKIT_JOBS_DIR", str(jobs))
    monkeypatch.setenv("HEADKIT_MAX_HUB_CACHE_MB", "8")
    monkeypatch.setenv("HEADKIT_MAX_HEAD_MB", "4")
    rng = np.random.default_rng(0)
    for n in range(6):
        junk = tmp_path / f"junk{n}.safetensors"
        junk.write_bytes(rng.bytes(3 * 2**20))  # not a head: refused once read, but downloaded first
        hub.add_file("stranger/junk", junk.name, junk)
    cache = headkit.server.Settings.from_env().visitor_hub_cache
    assert cache == jobs / ".hub-cache"
    for n in range(6):
        with pytest.raises(ValueError):
            headkit.server.load_head_key(f"hf://stranger/junk/junk{n}.safetensors")
        assert tree_bytes(cache) <= 8 * 2**20, f"after load {n + 1}: {tree_bytes(cache) / 2**20:.1f} MiB"
    assert len(pulls(hub)) == 6  # each was really downloaded
    assert len(list((cache / "models--stranger--junk" / "blobs").iterdir())) == 2  # the two most recent stay
    root = headkit.server.JobRoot(jobs, max_age_s=0)
    assert root.disk_mb(recount=True) >= tree_bytes(cache) / 2**20 > 5  # counted in max_server_mb
    root.sweep()  # the age sweep of job folders leaves the cache to its own sweep
    assert cache.is_dir()
    assert not (tmp_path / "hf_home" / "hub" / "models--stranger--junk").exists()  # never the operator's cache
