"""Per-session job folders: keyed by a hash, confined, swept when old; training runs in them and stops on request."""

from __future__ import annotations

import os
import time

import pytest

import headkit
from headkit.jobs import safe_name


@pytest.fixture
def root(tmp_path):
    return headkit.JobRoot(tmp_path / "jobs", max_age_s=3600)


def test_one_folder_per_session_named_by_a_hash(root):
    a, again, b = root.job("session-a"), root.job("session-a"), root.job("session-b")
    assert a.path == again.path != b.path
    assert "session-a" not in a.path.name and len(a.path.name) == 32
    assert root.job(None).path != root.job(None).path  # no session: a fresh folder each time


def test_paths_stay_inside_the_job(root, tmp_path):
    job = root.job("s")
    assert job.file("heads", "x.safetensors") == job.path / "heads" / "x.safetensors"
    for escape in (("..", "other"), ("/etc/passwd",), ("heads", "..", "..", "x")):
        with pytest.raises(PermissionError, match="outside this session's folder"):
            job.file(*escape)
    (job.path / "link").symlink_to(tmp_path)
    with pytest.raises(PermissionError):
        job.file("link", "secret")
    with pytest.raises(PermissionError, match="only folders inside this session's job"):
        job.archive(tmp_path, "everything")


def test_sweep_removes_only_old_jobs(root):
    old, fresh = root.job("old"), root.job("fresh")
    hour_ago = time.time() - 7200
    os.utime(old.path, (hour_ago, hour_ago))
    assert root.sweep() == [old.path]
    assert not old.path.exists() and fresh.path.exists()


def test_session_heads_get_unique_safe_names(root, plate_head):
    job = root.job("s")
    first = job.save_head(plate_head, "../../plates")
    second = job.save_head(plate_head, "plates")
    assert (first.name, second.name) == ("plates.safetensors", "plates_2.safetensors")
    assert list(job.heads()) == ["plates", "plates_2"]
    assert job.head_path("plates") == first
    with pytest.raises(FileNotFoundError, match="no head 'nope'.*plates, plates_2"):
        job.head_path("nope")
    assert safe_name(".hidden") == "hidden" and safe_name("a b/c") == "c" and safe_name("///") == "head"


def test_training_streams_progress_and_stops_on_request(root, base, tiny_plates):
    job = root.job("trainer")
    events = job.train(base, tiny_plates / "data.yaml", epochs=2, imgsz=160, batch=4, device="cpu", workers=0)
    first = next(events)
    assert isinstance(first, headkit.TrainProgress) and first.kind == "batch"
    job.request_stop()
    with pytest.raises(headkit.TrainingCancelled):
        list(events)
    assert not job.stop_requested()  # a new run starts clean
    assert not job.heads()
