"""Head keys: shipped names, session/<name>, hf:// — never paths; pickles refused; unfit heads listed with the reason."""

from __future__ import annotations

import pytest
from hub_server import LoopbackHub

import headkit
from headkit.catalog import load_head_key

PICKLE = "pickle.*could run code"


@pytest.fixture
def shipped(tmp_path, plate_head):
    folder = tmp_path / "weights"
    plate_head.save(folder / "license_plate.safetensors")
    stranger = headkit.Head(plate_head.tensors, {**plate_head.metadata, "base_fingerprint": "0" * 64})
    stranger.save(folder / "stranger.safetensors")
    (folder / "broken.safetensors").write_bytes(b"not a head")
    return folder


@pytest.fixture
def jobs(tmp_path):
    return headkit.server.JobRoot(tmp_path / "jobs", max_age_s=3600)


def test_list_marks_what_fits_and_says_why_not(base, shipped, jobs):
    entries = {e.key: e for e in headkit.server.list_heads(base, shipped_dir=shipped, job=jobs.job("s"))}

    assert entries["license_plate"].available and entries["license_plate"].names == {0: "license_plate"}
    assert not entries["stranger"].available
    assert "was trained on base sha256 000000000000" in entries["stranger"].reason
    assert entries["broken"].reason.startswith("unreadable: broken.safetensors")
    assert entries["license_plate"].to_dict()["classes"] == ["license_plate"]


def test_keys_never_reach_files_by_path(shipped, jobs, tmp_path):
    job = jobs.job("s")
    assert load_head_key("license_plate", shipped_dir=shipped).names == {0: "license_plate"}
    outside = shipped / "license_plate.safetensors"
    for key in (str(outside), "../weights/license_plate", "session/../../weights/license_plate", "nope"):
        with pytest.raises((FileNotFoundError, PermissionError)):
            load_head_key(key, shipped_dir=shipped, job=job)
    for key in ("model.pt", "hf://someone/repo/evil.pth@main", "weights.bin"):
        with pytest.raises(ValueError, match=PICKLE):
            load_head_key(key, shipped_dir=shipped, job=job)


def test_added_heads_belong_to_their_session(base, shipped, jobs, tmp_path):
    mine, theirs = jobs.job("mine"), jobs.job("theirs")
    key = headkit.server.add_head(shipped / "license_plate.safetensors", mine, name="plates")

    assert key == "session/plates"
    assert load_head_key(key, job=mine).metadata["label"] == "plates"
    assert [e.key for e in headkit.server.list_heads(base, job=mine)] == ["session/plates"]
    assert headkit.server.list_heads(base, job=theirs) == []
    with pytest.raises(FileNotFoundError, match="no head 'plates'"):
        load_head_key(key, job=theirs)
    evil = tmp_path / "head.pt"
    evil.write_bytes(b"\x80\x04pickle")
    with pytest.raises(ValueError, match=PICKLE):
        headkit.server.add_head(evil, mine)


def test_heads_from_the_hub(base, plate_head, jobs, tmp_path, monkeypatch):
    with LoopbackHub(tmp_path / "hub") as hub:
        hub.add_file("someone/plates", "plates.safetensors", plate_head.save(tmp_path / "plates.safetensors"))
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        address = "hf://someone/plates/plates.safetensors"
        assert load_head_key(address).names == plate_head.names
        key = headkit.server.add_head(address, jobs.job("s"))
    assert key == "session/plates"
    with pytest.raises(ValueError, match="heads on the Hub are .safetensors"):
        load_head_key("hf://someone/plates/README.md")


def test_heads_kept_in_memory_stay_within_their_byte_budget(plate_head, tmp_path):
    """Many distinct head files (each up to max_head_mb) must not pile up in memory: the cache is bounded by bytes."""
    from headkit.catalog import _HeadCache

    paths = [plate_head.save(tmp_path / f"h{i}.safetensors") for i in range(3)]
    cache = _HeadCache(budget_mb=2.5 * paths[0].stat().st_size / 2**20)  # room for two of them
    first = cache.get(paths[0], None)
    assert cache.get(paths[0], None) is first  # read once per file version
    for path in paths[1:]:
        cache.get(path, None)
    assert len(cache._heads) == 2 and cache.get(paths[0], None) is not first  # the oldest was dropped, read again
    assert cache.get(paths[0], None).names == plate_head.names


def test_kept_heads_are_counted_by_what_they_take_in_memory(plate_head, tmp_path):
    """The budget counts tensors and parsed metadata, not file bytes: parsed JSON takes several times its text (a head
    once cost ~183 MiB of memory for a 4 MiB file), so counting files let ~66 such heads past a 512 MiB budget."""
    import json
    import tracemalloc

    from headkit.catalog import _HeadCache, head_bytes

    row = {"P": 0.5, "R": 0.25, "mAP50": 0.125, "mAP50-95": 0.0625}
    metrics = {f"class {i}": dict(row) for i in range(1500)} | {"all": row}  # the most rows the schema allows
    path = headkit.Head(plate_head.tensors, {**plate_head.metadata, "metrics": metrics}).save(
        tmp_path / "m.safetensors"
    )
    head = headkit.load_head(path)
    tracemalloc.start()
    parsed = json.loads(json.dumps(head.metadata))
    taken = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert parsed == head.metadata
    tensors = sum(t.numel() * t.element_size() for t in head.tensors.values())
    assert head_bytes(head) >= tensors + 0.8 * taken and taken > 200_000
    cache = _HeadCache(budget_mb=1.5 * head_bytes(head) / 2**20)  # room for one such head, not two
    cache.get(path, None)
    cache.get(headkit.Head(head.tensors, head.metadata).save(tmp_path / "n.safetensors"), None)
    assert len(cache._heads) == 1
