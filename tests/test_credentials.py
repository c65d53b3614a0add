"""Whose credentials reach the Hub: a visitor's typed address never travels with the server's HF_TOKEN.

The loopback Hub records the ``Authorization`` header of every request (``hub.received``), so each test asserts what
reached the Hub, not only what came back. HF_TOKEN is set to a secret throughout, as on a deployed Space.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hub_server import LoopbackHub
from kit import SHIPPED_HEAD

import headkit
from headkit.sources import resolve

SECRET = "hf_server_secret"  # the operator's token: may read private heads, may write
HEAD = "license_plate.safetensors"  # the shipped head, 4.05 MiB
PUBLIC = f"hf://someone/plates/{HEAD}"
PRIVATE = f"hf://operator/private-heads/{HEAD}"
BASE = "hf://Ultralytics/YOLOv8/yolov8s-fall.pt"


@pytest.fixture
def hub(loopback_hub, base_weights: Path):
    """Public and private copies of the shipped head, the real base under a trusted owner, and a stranger's PR."""
    server = loopback_hub(token=SECRET)
    server.add_file("someone/plates", HEAD, SHIPPED_HEAD)
    server.add_file("operator/private-heads", HEAD, SHIPPED_HEAD)
    server.make_private("operator/private-heads", SECRET)
    server.add_file("Ultralytics/YOLOv8", "yolov8s-fall.pt", base_weights)
    return server


def credentials(hub: LoopbackHub, since: int = 0) -> set[str | None]:
    return {r.authorization for r in hub.received[since:]}


def file_gets(hub: LoopbackHub) -> list[str]:
    return [r.path for r in hub.received if r.method == "GET" and "/resolve/" in r.path]


# --- (a) typed head addresses: anonymous, and capped before download -------------------------------------------------


def test_typed_address_is_fetched_without_the_server_token(hub: LoopbackHub, plate_head, tmp_path: Path):
    head = headkit.server.load_head_key(PUBLIC)
    assert head.names == plate_head.names and head.base_fingerprint == plate_head.base_fingerprint
    assert file_gets(hub) == [f"/someone/plates/resolve/main/{HEAD}"]
    assert credentials(hub) == {None}

    job = headkit.server.JobRoot(tmp_path / "jobs", max_age_s=3600).job("visitor")
    assert headkit.server.add_head(f"{PUBLIC}@main", job) == "session/license_plate"
    assert credentials(hub) == {None}

    before = len(hub.received)
    headkit.load_head(PUBLIC)  # a local user's own call keeps using their HF_TOKEN
    assert credentials(hub, before) == {f"Bearer {SECRET}"}


def test_private_head_is_not_readable_through_a_typed_address(hub: LoopbackHub, plate_head):
    with pytest.raises(FileNotFoundError, match="not found .* private: only public repositories"):
        headkit.server.load_head_key(PRIVATE)
    assert credentials(hub) == {None} and file_gets(hub) == []

    assert headkit.load_head(PRIVATE).names == plate_head.names  # the operator's own call: now in the Hub cache
    before = len(hub.received)
    with pytest.raises(FileNotFoundError, match="private"):  # the cached copy is not handed to a visitor either
        headkit.server.load_head_key(PRIVATE)
    assert credentials(hub, before) == {None}


def test_head_over_the_size_cap_is_refused_before_its_bytes_are_fetched(hub: LoopbackHub, monkeypatch):
    monkeypatch.setenv("HEADKIT_MAX_HEAD_MB", "1")
    with pytest.raises(headkit.LimitExceeded, match=r"size on the Hub in MiB: 4\.0 is over .* HEADKIT_MAX_HEAD_MB"):
        headkit.server.load_head_key(PUBLIC)
    with pytest.raises(headkit.LimitExceeded, match=r"\(max_head_mb\)"):
        headkit.server.load_head_key(PUBLIC, limits=headkit.Limits(max_head_mb=2))
    assert [r.method for r in hub.received] == ["HEAD", "HEAD"] and file_gets(hub) == []


def test_offline_keys_come_from_the_cache_and_the_cap_still_holds(hub: LoopbackHub, plate_head, monkeypatch):
    headkit.server.load_head_key(PUBLIC)
    before = len(hub.received)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert headkit.server.load_head_key(PUBLIC).names == plate_head.names
    monkeypatch.setenv("HEADKIT_MAX_HEAD_MB", "1")
    with pytest.raises(headkit.LimitExceeded, match="file size in MiB"):  # checked on disk: no metadata offline
        headkit.server.load_head_key(PUBLIC)
    assert len(hub.received) == before


# --- (c) pickles only from a trusted owner's branches and tags -------------------------------------------------------


@pytest.mark.parametrize("revision", ["refs/pr/1", "refs/pr/5", "refs/convert/parquet", "refs/notes/x"])
def test_pickle_at_a_pull_request_ref_is_refused_before_any_request(hub: LoopbackHub, revision: str):
    hub.open_pr("Ultralytics/YOLOv8", "yolov8s-fall.pt", b"a stranger's pickle")
    with pytest.raises(headkit.UntrustedSourceError, match=f"at '{revision}' .* pull request"):
        headkit.load_model(f"{BASE}@{revision}")
    with pytest.raises(headkit.UntrustedSourceError, match="pull request"):
        headkit.load_model(BASE, revision=revision)
    assert hub.received == []


def test_pickle_at_a_branch_or_tag_of_a_trusted_owner_loads(hub: LoopbackHub):
    sha = hub.create_ref("Ultralytics/YOLOv8", "refs/tags/v1")
    hub.create_ref("Ultralytics/YOLOv8", "refs/heads/dev")
    assert headkit.load_model(f"{BASE}@v1").names == {0: "Normal", 1: "Fall"}
    for revision in ("refs/tags/v1", "dev", "refs/heads/dev", "main", sha):
        assert resolve(BASE, revision=revision).is_file(), revision


@pytest.mark.parametrize("revision", ["not-a-ref", "0" * 40, "PR"])
def test_pickle_at_a_revision_no_branch_or_tag_names_is_refused(hub: LoopbackHub, revision: str):
    revision = hub_pr_commit(hub) if revision == "PR" else revision
    with pytest.raises(headkit.UntrustedSourceError, match="not a branch or tag of Ultralytics/YOLOv8"):
        headkit.load_model(f"{BASE}@{revision}")
    assert [r.path for r in hub.received] == ["/api/models/Ultralytics/YOLOv8/refs"] and file_gets(hub) == []


def hub_pr_commit(hub: LoopbackHub) -> str:
    """The commit of a stranger's pull request: served by the Hub at its sha, but on no branch or tag."""
    return hub.head_sha("Ultralytics/YOLOv8", hub.open_pr("Ultralytics/YOLOv8", "yolov8s-fall.pt", b"a pickle"))


# --- (b) pushing: a server passes use_env_token=False ----------------------------------------------------------------


def test_push_without_a_token_and_without_the_env_token_is_refused_sending_nothing(hub: LoopbackHub, plate_head):
    with pytest.raises(ValueError, match="pushing needs your own Hub token: sign in with Hugging Face or paste"):
        headkit.push_head(plate_head, "alice/plates", use_env_token=False)
    with pytest.raises(ValueError, match="your own Hub token"):
        headkit.push_head(plate_head, "alice/plates", token="  ", use_env_token=False)
    assert hub.received == []

    headkit.push_head(plate_head, "alice/plates", token="hf_alice", use_env_token=False)
    assert credentials(hub) == {"Bearer hf_alice"} and hub.commits[-1]["token"] == "hf_alice"

    headkit.push_head(plate_head, "alice/plates")  # a script's own HF_TOKEN, as before
    assert hub.commits[-1]["token"] == SECRET


# --- the app, as a visitor drives it (python app.py against this hub, HF_TOKEN set on the server) --------------------


@pytest.fixture
def app_hub(tmp_path: Path):
    with LoopbackHub(tmp_path / "hub") as server:
        server.add_file("someone/plates", HEAD, SHIPPED_HEAD)
        server.add_file("operator/private-heads", HEAD, SHIPPED_HEAD)
        server.make_private("operator/private-heads", SECRET)
        yield server


def test_app_never_lends_the_server_token_to_a_visitor(app_hub: LoopbackHub, base_weights: Path, tmp_path: Path):
    from app_server import AppServer
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    env = {
        "HEADKIT_BASE": str(base_weights),
        "HEADKIT_BASES": "",
        "HF_ENDPOINT": app_hub.url,
        "HF_HUB_OFFLINE": "0",
        "HF_TOKEN": SECRET,
    }
    base = str(base_weights)
    with AppServer(tmp_path / "app", env) as server:
        client = Client(server.url, verbose=False)
        with pytest.raises(AppError, match="your own Hub token"):
            client.predict(base, "license_plate", "alice/plates", "", None, api_name="/push_head")
        assert app_hub.commits == [] and f"Bearer {SECRET}" not in credentials(app_hub)

        heads, *_ = client.predict(base, None, PUBLIC, api_name="/load_head")
        assert "session/license_plate" in [h["key"] for h in heads]
        assert file_gets(app_hub) == [f"/someone/plates/resolve/main/{HEAD}"]
        with pytest.raises(AppError, match="private"):
            client.predict(base, None, PRIVATE, api_name="/load_head")
        assert app_hub.received and credentials(app_hub) == {None}, server.tail()
