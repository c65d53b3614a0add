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


def _card(tags: list[str], **front: str) -> bytes:
    lines = ["---", "tags:", *(f"- {tag}" for tag in tags), *(f"{key}: {value}" for key, value in front.items())]
    return ("\n".join([*lines, "---", "# a model", ""])).encode()


def test_list_models_answers_the_real_client_as_the_hub_does(hub: LoopbackHub):
    """`HfApi.list_models` against /api/models: filter values ANDed over tags (the card's and those derived from
    it), search on the id, author, sort + limit, expand and cardData; private repositories to their owner only."""
    for repo_id, tags, front in [
        ("alice/plates", ["headkit", "headkit-base-aaaa"], {"base_model": "Ultralytics/YOLOv8",
                                                            "base_model_relation": "adapter"}),
        ("bob/helmets", ["headkit", "headkit-base-aaaa"], {"license": "agpl-3.0"}),
        ("bob/other-base", ["headkit", "headkit-base-bbbb"], {}),
        ("carol/no-card", [], {}),
    ]:  # fmt: skip
        api().create_repo(repo_id)
        if tags:
            api().upload_file(path_or_fileobj=_card(tags, **front), path_in_repo="README.md", repo_id=repo_id)
    hub.set_stats("alice/plates", downloads=5, likes=1)
    hub.set_stats("bob/helmets", downloads=50, likes=0)

    def ids(**query) -> list[str]:
        return [m.id for m in api().list_models(**query)]

    assert ids(filter=["headkit", "headkit-base-aaaa"], sort="downloads") == ["bob/helmets", "alice/plates"]
    assert ids(filter=["headkit", "headkit-base-aaaa"], sort="created_at") == ["bob/helmets", "alice/plates"]
    assert ids(filter=["headkit", "headkit-base-aaaa"], sort="downloads", limit=1) == ["bob/helmets"]
    assert ids(filter=["headkit-base-aaaa", "headkit-base-bbbb"]) == []  # AND, not OR
    assert ids(filter="base_model:adapter:Ultralytics/YOLOv8") == ["alice/plates"]  # derived from the card
    assert ids(filter="license:agpl-3.0") == ["bob/helmets"]
    assert ids(search="OTHER") == ["bob/other-base"]
    assert ids(author="bob") == ["bob/helmets", "bob/other-base"]

    (model,) = api().list_models(search="plates", expand=["sha", "siblings", "downloads", "likes"])
    assert model.sha == hub.head_sha("alice/plates") and model.downloads == 5 and model.likes == 1
    assert sorted(s.rfilename for s in model.siblings) == ["README.md"]
    assert model.tags is None  # expand returns only what was asked
    (model,) = api().list_models(search="plates", cardData=True)
    assert model.card_data.base_model == "Ultralytics/YOLOv8" and "headkit-base-aaaa" in model.tags

    hub.make_private("bob/helmets", TOKEN)
    assert ids(filter="headkit-base-aaaa") == ["alice/plates", "bob/helmets"]  # HF_TOKEN is the owner's
    assert [m.id for m in HfApi(endpoint=hub.url, token=False).list_models(filter="headkit-base-aaaa")] == [
        "alice/plates"
    ]


def test_ranged_reads_return_the_asked_bytes_only(hub: LoopbackHub, base_weights: Path):
    import httpx

    url = f"{hub.url}/{REPO_ID}/resolve/main/{FILENAME}"
    reply = httpx.get(url, headers={"Range": "bytes=0-7"})
    size = base_weights.stat().st_size
    assert reply.status_code == 206 and reply.content == base_weights.read_bytes()[:8]
    assert reply.headers["Content-Range"] == f"bytes 0-7/{size}"
    assert hub.sent[-1] == ("GET", f"/{REPO_ID}/resolve/main/{FILENAME}", "bytes=0-7", 206, 8)
    assert httpx.get(url, headers={"Range": f"bytes={size}-"}).status_code == 416
