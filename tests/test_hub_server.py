"""The loopback Hub answers the real huggingface_hub client over HTTP: download, cache, offline, refs, errors, push.

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` into
``huggingface_hub.constants`` once, at import, so setting them later (``monkeypatch.setenv``) changes nothing by
itself. Code that honours them at call time reads the environment and passes the client's own arguments, as
``download``/``api`` below do (``HF_TOKEN`` needs nothing: the client reads it on every request)::

    endpoint = os.environ.get("HF_ENDPOINT")  # None: huggingface_hub's default
    home = os.environ.get("HF_HOME")
    cache_dir = os.environ.get("HF_HUB_CACHE") or (Path(home) / "hub" if home else None)
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    hf_hub_download(repo_id, filename, revision=revision, endpoint=endpoint, cache_dir=cache_dir,
                    local_files_only=offline)
    HfApi(endpoint=endpoint).upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message)

To switch the client itself offline at run time, set ``huggingface_hub.constants.HF_HUB_OFFLINE``
(``monkeypatch.setattr``; ``is_offline_mode()`` reads it per request): every request then fails inside the process and
downloads fall back to the cache.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import pytest
from hub_server import LoopbackHub
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

REPO_ID = "Ultralytics/YOLOv8"
FILENAME = "yolov8s-fall.pt"
TOKEN = "hf_loopback_test_token"


@pytest.fixture
def hub(tmp_path: Path, base_weights: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackHub]:
    """A hub serving the real base weights as ``Ultralytics/YOLOv8/yolov8s-fall.pt``, with the env pointing at it."""
    with LoopbackHub(tmp_path / "hub") as hub:
        hub.add_file(REPO_ID, FILENAME, base_weights)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield hub


def download(repo_id: str, filename: str, revision: str | None = None, **kwargs) -> Path:
    cache_dir = Path(os.environ["HF_HOME"]) / "hub"
    path = hf_hub_download(
        repo_id, filename, revision=revision, endpoint=os.environ["HF_ENDPOINT"], cache_dir=cache_dir, **kwargs
    )
    return Path(path)


def api() -> HfApi:
    return HfApi(endpoint=os.environ["HF_ENDPOINT"])


def test_download_returns_the_served_bytes_then_the_cache(
    hub: LoopbackHub, base_weights: Path, monkeypatch: pytest.MonkeyPatch
):
    path = download(REPO_ID, FILENAME)

    assert path.read_bytes() == base_weights.read_bytes()
    assert path.is_relative_to(Path(os.environ["HF_HOME"]))
    resolve = f"/{REPO_ID}/resolve/main/{FILENAME}"
    assert hub.requests == [f"HEAD {resolve}", f"GET {resolve}"]
    assert hub.tokens == [TOKEN, TOKEN]

    assert download(REPO_ID, FILENAME) == path  # online again: one HEAD to check the commit, no second GET
    assert hub.requests[2:] == [f"HEAD {resolve}"]

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert download(REPO_ID, FILENAME) == path
    assert download(REPO_ID, FILENAME, local_files_only=True) == path
    assert len(hub.requests) == 3  # offline: nothing left the process


def test_pinned_revision_survives_a_new_commit(hub: LoopbackHub, base_weights: Path):
    pinned = api().model_info(REPO_ID).sha
    assert pinned == hub.head_sha(REPO_ID)
    assert api().list_repo_files(REPO_ID) == [FILENAME]

    api().upload_file(path_or_fileobj=b"not a model", path_in_repo=FILENAME, repo_id=REPO_ID, commit_message="v2")

    assert download(REPO_ID, FILENAME).read_bytes() == b"not a model"
    assert download(REPO_ID, FILENAME, revision=pinned).read_bytes() == base_weights.read_bytes()
    assert hub.head_sha(REPO_ID) == hub.commits[-1]["oid"] != pinned


@pytest.mark.parametrize(
    ("repo_id", "filename", "revision", "error"),
    [
        ("Ultralytics/NoSuchRepo", FILENAME, None, RepositoryNotFoundError),
        (REPO_ID, "no_such_file.pt", None, EntryNotFoundError),
        (REPO_ID, FILENAME, "0" * 40, RevisionNotFoundError),
        (REPO_ID, FILENAME, "no-such-branch", RevisionNotFoundError),
    ],
)
def test_missing_repo_file_or_revision_raise_the_client_errors(
    hub: LoopbackHub, repo_id: str, filename: str, revision: str | None, error: type[Exception]
):
    with pytest.raises(error):
        download(repo_id, filename, revision)
    assert len(hub.requests) == 1  # answered at once, no retries


def test_repository_not_found_without_a_token(hub: LoopbackHub):
    with pytest.raises(RepositoryNotFoundError):
        download("Ultralytics/NoSuchRepo", FILENAME, token=False)
    assert hub.tokens == [None]


def test_upload_folder_round_trips(hub: LoopbackHub, tmp_path: Path):
    folder = tmp_path / "push"
    folder.mkdir()
    (folder / "head.safetensors").write_bytes(bytes(range(256)) * 4)
    (folder / "README.md").write_text("---\nlibrary_name: ultralytics\nlicense: agpl-3.0\n---\n# Plates head\n")

    repo_url = api().create_repo("someone/plates-head", exist_ok=True)
    assert api().create_repo("someone/plates-head", exist_ok=True) == repo_url == f"{hub.url}/someone/plates-head"
    info = api().upload_folder(repo_id="someone/plates-head", folder_path=folder, commit_message="Add plates head")

    (commit,) = hub.commits
    assert commit["summary"] == "Add plates head"
    assert commit["token"] == TOKEN
    assert commit["files"] == {
        "README.md": (folder / "README.md").read_bytes(),
        "head.safetensors": bytes(range(256)) * 4,
    }
    assert info.oid == commit["oid"] == hub.head_sha("someone/plates-head")
    for name in ("head.safetensors", "README.md"):
        assert download("someone/plates-head", name, revision=info.oid).read_bytes() == (folder / name).read_bytes()


def test_writes_need_a_token_and_an_existing_repo(hub: LoopbackHub):
    with pytest.raises(HfHubHTTPError, match="401"):
        HfApi(endpoint=hub.url, token=False).create_repo("someone/plates-head")
    assert hub.tokens == [None]
    assert not (hub.root / "someone" / "plates-head").exists()

    with pytest.raises(RepositoryNotFoundError):
        api().upload_file(path_or_fileobj=b"head", path_in_repo="head.safetensors", repo_id="someone/plates-head")
    assert hub.commits == []


def test_refs_tags_and_pull_requests(hub: LoopbackHub, base_weights: Path):
    main = hub.head_sha(REPO_ID)
    assert hub.create_ref(REPO_ID, "refs/tags/v1") == main
    pr = hub.open_pr(REPO_ID, FILENAME, b"a stranger's pickle")
    assert pr == "refs/pr/1" and hub.head_sha(REPO_ID) == main  # a PR leaves main alone

    refs = api().list_repo_refs(REPO_ID, include_pull_requests=True)
    assert [(r.name, r.ref, r.target_commit) for r in refs.branches] == [("main", "refs/heads/main", main)]
    assert [(r.name, r.target_commit) for r in refs.tags] == [("v1", main)]
    (pull,) = refs.pull_requests
    assert pull.ref == pr and pull.target_commit == hub.head_sha(REPO_ID, pr) != main

    assert download(REPO_ID, FILENAME, "v1").read_bytes() == base_weights.read_bytes()
    assert download(REPO_ID, FILENAME, pr).read_bytes() == b"a stranger's pickle"  # what the fix must never load
    assert download(REPO_ID, FILENAME, pull.target_commit).read_bytes() == b"a stranger's pickle"


def test_private_repo_answers_its_owner_only_and_every_credential_is_recorded(hub: LoopbackHub):
    hub.make_private(REPO_ID, TOKEN)
    assert download(REPO_ID, FILENAME).is_file()  # HF_TOKEN is the owner's
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).model_info(REPO_ID)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token="hf_someone_else").list_repo_refs(REPO_ID)
    assert api().model_info(REPO_ID).private

    resolve = f"/{REPO_ID}/resolve/main/{FILENAME}"
    assert hub.received == [
        ("HEAD", resolve, f"Bearer {TOKEN}"),
        ("GET", resolve, f"Bearer {TOKEN}"),
        ("GET", f"/api/models/{REPO_ID}", None),
        ("GET", f"/api/models/{REPO_ID}/refs", "Bearer hf_someone_else"),
        ("GET", f"/api/models/{REPO_ID}", f"Bearer {TOKEN}"),
    ]
