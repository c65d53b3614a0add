"""find_heads against a real (loopback) Hub: heads pushed for two bases, each found by its own base only, checked
from their headers alone (anonymous, bounded) before they are listed; decoys under the right tag are not listed; an
outage answers at once from the cache; `hf://owner/repo` loads a repository's single head."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from safetensors.torch import save_file

import headkit
from headkit.hub import base_tag

TOKEN = "hf_loopback_write_token"
NECK_HEAD = Path(__file__).resolve().parents[1] / "weights" / "license_plate_neck.safetensors"


@pytest.fixture(scope="module")
def base_n():
    """A second base, yolov8n-shaped (random weights: only its trunk's identity matters here)."""
    torch.manual_seed(0)
    return headkit.load_model("yolov8n.yaml")


@pytest.fixture(scope="module")
def stranger_s():
    """Another yolov8s-shaped base: the same Detect layout as the real base, another trunk."""
    torch.manual_seed(1)
    return headkit.load_model("yolov8s.yaml")


def head_of(model) -> headkit.Head:
    """The model's own Detect head as a headkit head for it (extracted from the model itself)."""
    head = headkit.extract_head(model, model)
    head.metadata["label"] = f"own head of {Path(str(head.metadata.get('base_source'))).name}"
    return head


@pytest.fixture
def hub(loopback_hub):
    return loopback_hub(token="hf_the_servers_own_token")  # must never reach the hub from find_heads


def upload(repo_id: str, files: dict[str, bytes | Path]) -> None:
    api = HfApi(endpoint=os.environ["HF_ENDPOINT"], token=TOKEN)
    api.create_repo(repo_id, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            target = Path(tmp) / name
            target.write_bytes(content.read_bytes() if isinstance(content, Path) else content)
        api.upload_folder(repo_id=repo_id, folder_path=tmp)


def card_tagged(fingerprint: str) -> bytes:
    return f"---\ntags:\n- headkit\n- {base_tag(fingerprint)}\n---\n# claims to fit\n".encode()


@pytest.fixture
def shelf(hub, base, base_n, stranger_s, plate_head, tmp_path):
    """The Hub as a visitor finds it: heads for two bases, and decoys under the real base's tag."""
    neck = headkit.load_head(NECK_HEAD)
    headkit.push_head(plate_head, "alice/plates", token=TOKEN)
    headkit.push_head(neck, "bob/plates-neck", token=TOKEN)
    headkit.push_head(head_of(base_n), "carol/n-head", token=TOKEN)
    real_tag = plate_head.base_fingerprint
    save_file({"weight": torch.zeros(4, 4)}, tmp_path / "plain.safetensors", metadata={"format": '"safetensors"'})
    upload(
        "mallory/not-a-head", {"README.md": card_tagged(real_tag), "head.safetensors": tmp_path / "plain.safetensors"}
    )
    head_of(stranger_s).save(tmp_path / "stranger.safetensors")
    upload(
        "mallory/other-trunk",
        {"README.md": card_tagged(real_tag), "head.safetensors": tmp_path / "stranger.safetensors"},
    )
    head_of(base_n).save(tmp_path / "n.safetensors")
    upload("mallory/other-size", {"README.md": card_tagged(real_tag), "head.safetensors": tmp_path / "n.safetensors"})
    headkit.push_head(plate_head, "dave/private-plates", token=TOKEN)
    hub.make_private("dave/private-plates", TOKEN)
    hub.set_stats("alice/plates", downloads=7, likes=2)
    hub.set_stats("bob/plates-neck", downloads=40, likes=1)
    return hub


def test_each_base_finds_exactly_its_own_heads(shelf, base, base_n, plate_head):
    found = headkit.find_heads(base)

    assert [(h.repo_id, h.filename) for h in found] == [
        ("bob/plates-neck", "license_plate_neck.safetensors"),  # a neck-branch head: found by its shared trunk
        ("alice/plates", "license_plate.safetensors"),
    ]  # most downloaded first; decoys and the private repository are not listed
    assert found.offline is None and len(found) == 2
    alice = found.heads[1]
    assert alice.classes == ["license_plate"] and alice.metrics == plate_head.metadata["metrics"]
    assert (alice.downloads, alice.likes) == (7, 2)
    assert alice.address == f"hf://alice/plates/{alice.filename}@{shelf.head_sha('alice/plates')}"
    why = {line.split(": ", 1)[0]: line for line in found.skipped}
    assert why.keys() == {"mallory/not-a-head", "mallory/other-trunk", "mallory/other-size"}
    assert "not a headkit head" in why["mallory/not-a-head"]
    assert "trained on base sha256" in why["mallory/other-trunk"]  # same layout, another trunk
    assert "expects feature maps with [64, 128, 256] channels" in why["mallory/other-size"]

    newest = headkit.find_heads(base, sort="newest", limit=1)
    assert [h.repo_id for h in newest] == ["bob/plates-neck"]
    (n_head,) = headkit.find_heads(base_n)
    assert n_head.repo_id == "carol/n-head"

    merged = headkit.merge(base, *(headkit.load_head(h.address) for h in found))  # nothing listed fails to merge
    assert list(merged.names.values())[-2:] == ["license_plate", "license_plate_2"]


def test_headers_alone_are_read_anonymously_and_bounded(shelf, base):
    start = len(shelf.sent)
    headkit.find_heads(base)

    assert {auth for _, _, auth in shelf.received[start:]} == {None}  # never HF_TOKEN, nor any token
    reads = [(path, rng, size) for method, path, rng, status, size in shelf.sent[start:] if "/resolve/" in path]
    assert reads and all(rng and rng.startswith("bytes=") for _, rng, _ in reads)
    for path, _, size in reads:  # a header's bytes only: a head is MBs, its header KBs
        owner, repo, _, _, name = path.strip("/").split("/", 4)
        whole = (shelf.root / owner / repo / name).stat().st_size
        assert size <= 32 * 2**10 + 8 and (size < whole / 10 or whole < 2**10)
    searches = [path for method, path, *_ in shelf.sent[start:] if path.startswith("/api/models")]
    assert searches == ["/api/models", "/api/models"]  # the whole trunk's tag, then the neck branch's

    with pytest.raises(headkit.LimitExceeded, match="max_hub_results"):
        headkit.find_heads(base, limit=21)
    small = headkit.find_heads(base, limits=headkit.Limits(max_hub_header_kb=4))  # the heads' headers are 8-19 KiB
    assert len(small) == 0 and all("max_hub_header_kb" in why for why in small.skipped if "mallory" not in why)


def test_an_outage_answers_at_once_from_the_last_listing(shelf, base, base_n, monkeypatch):
    live = headkit.find_heads(base)
    shelf.down = 503
    asked = len(shelf.requests)

    cached = headkit.find_heads(base)
    assert len(shelf.requests) == asked + 1  # one request, no retries
    assert cached.heads == live.heads and cached.searched_at == live.searched_at
    assert "HTTP 503" in cached.offline
    with pytest.raises(ConnectionError, match="no earlier search for this base is cached"):
        headkit.find_heads(base_n)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    asked = len(shelf.requests)
    assert headkit.find_heads(base).heads == live.heads
    assert headkit.find_heads(base).offline.startswith("offline mode is on")
    assert len(shelf.requests) == asked  # offline: nothing left the process


def test_a_repository_address_loads_its_single_head(shelf, plate_head, tmp_path):
    pulled = headkit.load_head("hf://alice/plates")
    assert pulled.names == plate_head.names and pulled.base_fingerprint == plate_head.base_fingerprint

    plate_head.save(tmp_path / "second.safetensors")
    upload("alice/plates", {"second.safetensors": tmp_path / "second.safetensors"})
    with pytest.raises(FileNotFoundError, match=r"head files license_plate.safetensors, second.safetensors"):
        headkit.load_head("hf://alice/plates")
    assert headkit.load_head("hf://alice/plates/second.safetensors").names == plate_head.names
    upload("erin/card-only", {"README.md": b"# nothing to load\n"})
    with pytest.raises(FileNotFoundError, match="holds no head file"):
        headkit.load_head("hf://erin/card-only")
    with pytest.raises(FileNotFoundError, match="not found"):
        headkit.load_head("hf://erin/no-such-repo")
