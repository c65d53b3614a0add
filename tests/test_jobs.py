"""Per-session job folders: keyed by a hash, confined, swept when old, bounded on disk."""

from __future__ import annotations

import os
import time

import pytest

import headkit
from headkit.filenames import safe_name
from headkit.keys import UserKeys


@pytest.fixture
def root(tmp_path):
    return headkit.server.JobRoot(tmp_path / "jobs", max_age_s=3600)


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


def fill(folder, mib: float, name: str = "data.bin"):
    """Write `mib` MiB of real bytes (not a sparse file: the disk figure counts blocks written)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(os.urandom(int(mib * 2**20)))


def test_each_session_within_its_allowance_still_cannot_fill_the_server(tmp_path):
    """New sessions get a fresh max_session_mb each; max_server_mb counts them all, and the served outputs too."""
    keys = UserKeys(tmp_path / "keys")
    root = headkit.server.JobRoot(tmp_path / "jobs", max_age_s=3600, served_dir=tmp_path / "served", keys=keys)
    limits = headkit.Limits(max_session_mb=1.0, max_server_mb=2.0)
    for n in range(2):
        job = root.job(f"stranger-{n}")
        fill(job.path, 0.9)
        job.check_disk(limits)  # each session is within its own allowance
        root.check_disk(limits)
    fill(tmp_path / "served" / "a1b2", 0.5, "merged.mp4")  # an annotated video in Gradio's cache
    with pytest.raises(headkit.LimitExceeded, match=r"every session's files and served outputs.*\(max_server_mb\)"):
        root.disk_mb(recount=True)
        root.check_disk(limits)
    assert 2.2 < root.disk_mb() < 2.5

    hours_ago = time.time() - 7200
    for folder in (*root.root.iterdir(), tmp_path / "served" / "a1b2"):
        os.utime(folder, (hours_ago, hours_ago))
    removed = root.sweep()
    assert len(removed) == 3 and not (tmp_path / "served" / "a1b2").exists()
    root.check_disk(limits)  # swept: the server takes new work again
    assert root.disk_mb() < 0.1


def test_the_disk_figure_is_counted_once_per_few_seconds(tmp_path):
    root = headkit.server.JobRoot(tmp_path / "jobs", max_age_s=3600)
    job = root.job("s")
    before = root.disk_mb()
    fill(job.path, 1.0)
    assert root.disk_mb() == before, "a request within the refresh time does not walk the tree"
    assert root.disk_mb(recount=True) >= before + 1.0


def test_user_keys_are_swept_with_their_jobs(tmp_path):
    """A key is forgotten once its job folder is gone and it has been unused for the job age; a used one stays."""
    keys = UserKeys(tmp_path / "keys")
    root = headkit.server.JobRoot(tmp_path / "jobs", max_age_s=3600, keys=keys)
    working, abandoned, fresh = keys.issue(), keys.issue(), keys.issue()
    root.job(keys.owner(working))  # a job folder in use
    hours_ago = time.time() - 7200
    files = {}
    for key in (working, abandoned):
        files[key] = keys.folder / keys.owner(key).removeprefix("user:")
        os.utime(files[key], (hours_ago, hours_ago))
    assert root.sweep() == [files[abandoned]]
    with pytest.raises(PermissionError, match="unknown user key"):
        keys.owner(abandoned)
    assert keys.owner(working) and keys.owner(fresh)  # in use, or too new to forget
