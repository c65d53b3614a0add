"""Where weights come from: a local path, the operator's weights folder, or the Hugging Face Hub."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from .settings import Settings

LOGGER = logging.getLogger(__name__)

HF_SCHEME = "hf://"
# Official Hub repositories for bare names (`yolov8n.pt` -> Ultralytics/YOLOv8), by family prefix.
OFFICIAL_REPOS = {"yolov8": "Ultralytics/YOLOv8", "yolo11": "Ultralytics/YOLO11"}
# File types that are Python pickles (or may be): loading one can run code.
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")
_HUB_PATTERN = re.compile(r"^(?P<repo>[\w.\-]+/[\w.\-]+)/(?P<file>[^@]+?)(?:@(?P<rev>[\w.\-/]+))?$")


class UntrustedSourceError(PermissionError):
    """A pickle from a source the operator has not trusted: loading it could run a stranger's code."""


@dataclass(frozen=True)
class HubFile:
    """One file in a Hub model repository, optionally pinned to a revision (branch, tag or commit)."""

    repo_id: str
    filename: str
    revision: str | None = None

    @property
    def owner(self) -> str:
        return self.repo_id.split("/", 1)[0]

    def __str__(self) -> str:
        return f"{HF_SCHEME}{self.repo_id}/{self.filename}" + (f"@{self.revision}" if self.revision else "")


def parse_hub_url(source: str, *, revision: str | None = None) -> HubFile:
    """`hf://owner/repo/path/file.ext[@revision]` -> HubFile; `revision=` wins over the `@` suffix."""
    match = _HUB_PATTERN.match(source[len(HF_SCHEME) :]) if source.startswith(HF_SCHEME) else None
    if not match:
        raise ValueError(
            f"'{source}' is not a Hub file address; expected hf://owner/repo/path/to/file[@revision], "
            "e.g. hf://Ultralytics/YOLOv8/yolov8n.pt"
        )
    return HubFile(match["repo"], match["file"], revision or match["rev"])


def official_hub_file(name: str, *, revision: str | None = None) -> HubFile | None:
    """The official Hub location of a bare Ultralytics weights name, or None for an unknown family."""
    for prefix, repo in OFFICIAL_REPOS.items():
        if name.lower().startswith(prefix):
            return HubFile(repo, name, revision)
    return None


def download(hub_file: HubFile, *, settings: Settings | None = None) -> Path:
    """Pull one file through the Hub cache (pinned revision, token and offline mode honoured).

    A Hub outage falls back to the cached copy when there is one (huggingface_hub does this per revision).
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    settings = settings or Settings.from_env()
    try:
        path = hf_hub_download(
            hub_file.repo_id,
            hub_file.filename,
            revision=hub_file.revision,
            endpoint=settings.hf_endpoint,
            token=settings.token,
            cache_dir=settings.hub_cache,
            local_files_only=settings.offline,
        )
    except RepositoryNotFoundError as e:
        raise FileNotFoundError(
            f"{hub_file}: Hub repository '{hub_file.repo_id}' not found at {settings.hf_endpoint} (or it is private: "
            "set HF_TOKEN to a token that can read it)"
        ) from e
    except RevisionNotFoundError as e:
        raise FileNotFoundError(
            f"{hub_file}: revision '{hub_file.revision}' not found; check the branch or commit"
        ) from e
    except LocalEntryNotFoundError as e:  # a subclass of EntryNotFoundError: test it first
        why = "offline mode is on (HF_HUB_OFFLINE)" if settings.offline else f"{settings.hf_endpoint} cannot be reached"
        raise ConnectionError(
            f"{hub_file}: {why} and the file is not in the local Hub cache; connect once to cache it, or put the file "
            "in a folder named by HEADKIT_WEIGHTS_DIR, or pass a local path"
        ) from e
    except EntryNotFoundError as e:
        raise FileNotFoundError(f"{hub_file}: no file '{hub_file.filename}' in '{hub_file.repo_id}'") from e
    LOGGER.info("pulled %s -> %s", hub_file, path)
    return Path(path)


def _in_weights_dirs(name: str, settings: Settings) -> Path | None:
    for folder in settings.weights_dirs:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def resolve(source: str | Path, *, revision: str | None = None, settings: Settings | None = None) -> Path:
    """Turn a source into a local file: local path, HEADKIT_WEIGHTS_DIR by file name, then the Hub.

    `.pt` files are pickles: from the Hub they are taken only from trusted owners (HEADKIT_TRUSTED_OWNERS), checked
    before anything is downloaded.
    """
    settings = settings or Settings.from_env()
    text = str(source).strip()
    if text.startswith(HF_SCHEME):
        hub_file = parse_hub_url(text, revision=revision)
    else:
        path = Path(text).expanduser()
        if path.is_file():
            return path
        if path.parent != Path(".") or not path.suffix:
            raise FileNotFoundError(
                f"no file at '{text}'; give an existing path, a bare name like yolov8n.pt, or hf://"
            )
        local = _in_weights_dirs(path.name, settings)
        if local:
            return local
        hub_file = official_hub_file(path.name, revision=revision)
        if hub_file is None:
            folders = ", ".join(map(str, settings.weights_dirs)) or "none set"
            raise FileNotFoundError(
                f"'{text}' is not a local file, not in HEADKIT_WEIGHTS_DIR ({folders}), and not an official name "
                f"(known families: {', '.join(OFFICIAL_REPOS)}); pass a path or hf://owner/repo/file"
            )
    suffix = Path(hub_file.filename).suffix.lower()
    if suffix in PICKLE_SUFFIXES and hub_file.owner.lower() not in settings.trusted_owners:
        raise UntrustedSourceError(
            f"{hub_file}: refusing to download a pickle ({suffix}) from '{hub_file.owner}' — "
            f"loading it would run code from that account. Trusted owners: {', '.join(sorted(settings.trusted_owners))}"
            ". Heads travel as .safetensors; an operator who trusts this owner can add it to HEADKIT_TRUSTED_OWNERS"
        )
    return download(hub_file, settings=settings)
