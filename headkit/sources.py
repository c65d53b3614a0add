"""Where weights come from: a local path, the operator's weights folder, or the Hugging Face Hub.

Two sorts of caller reach the Hub through `resolve`:

- a local user or the operator (`headkit.load_model`, `headkit.load_head`): requests carry `HF_TOKEN`, their own token;
- a visitor of the app, whose typed `hf://` head address is downloaded with `anonymous=True` (never the server's
  token) and a size cap (`limits`), checked against the Hub's metadata before a byte of the file is fetched, into a
  cache headkit owns (in the jobs folder, counted in `max_server_mb`, swept to `max_hub_cache_mb`).

Pickles (`PICKLE_SUFFIXES`) come only from trusted owners, and only from a branch or tag of theirs (or a commit one
points at): a pull-request ref holds whatever a stranger pushed to it. Both are checked before the download.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .disk import sweep_oldest
from .limits import Limits
from .settings import DEFAULT_BASE, SHIPPED_BASES, Settings, restore_hint

LOGGER = logging.getLogger(__name__)

HF_SCHEME = "hf://"
# Official Hub repositories for bare names (`yolov8n.pt` -> Ultralytics/YOLOv8), by family prefix.
OFFICIAL_REPOS = {"yolov8": "Ultralytics/YOLOv8", "yolo11": "Ultralytics/YOLO11", "yolo26": "Ultralytics/YOLO26"}
# File types that are Python pickles (or may be): loading one can run code.
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")
# Full git refs that name a branch or a tag; every other `refs/...` (pull requests, converts) is refused for pickles.
OWNER_REFS = ("refs/heads/", "refs/tags/")
_HUB_PATTERN = re.compile(r"^(?P<repo>[\w.\-]+/[\w.\-]+)/(?P<file>[^@]+?)(?:@(?P<rev>[\w.\-/]+))?$")
_COMMIT = re.compile(r"[0-9a-f]{40}")


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


def _unreachable() -> tuple[type[Exception], ...]:
    """Errors that mean the Hub cannot be asked now (down, or the client is offline): the cache may answer."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub.errors import OfflineModeIsEnabled

    return httpx2.TransportError, OfflineModeIsEnabled


def _why_offline(settings: Settings) -> str:
    return "offline mode is on (HF_HUB_OFFLINE)" if settings.offline else f"{settings.hf_endpoint} cannot be reached"


@contextmanager
def _hub_errors(hub_file: HubFile, settings: Settings, anonymous: bool) -> Iterator[None]:
    """Translate huggingface_hub's errors into builtins that say what to do."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except RepositoryNotFoundError as e:  # also a private or gated repository the caller may not read
        fix = "only public repositories can be used here" if anonymous else "set HF_TOKEN to a token that can read it"
        raise FileNotFoundError(
            f"{hub_file}: Hub repository '{hub_file.repo_id}' not found at {settings.hf_endpoint} (or it is private: "
            f"{fix})"
        ) from e
    except RevisionNotFoundError as e:
        raise FileNotFoundError(
            f"{hub_file}: revision '{hub_file.revision}' not found; check the branch or commit"
        ) from e
    except LocalEntryNotFoundError as e:  # a subclass of EntryNotFoundError: test it first
        raise ConnectionError(
            f"{hub_file}: {_why_offline(settings)} and the file is not in the local Hub cache; connect once to cache "
            "it, or put the file in a folder named by HEADKIT_WEIGHTS_DIR, or pass a local path"
        ) from e
    except EntryNotFoundError as e:
        raise FileNotFoundError(f"{hub_file}: no file '{hub_file.filename}' in '{hub_file.repo_id}'") from e


def _check_on_hub(
    hub_file: HubFile, settings: Settings, token: str | bool | None, limits: Limits | None
) -> tuple[bool, int | None]:
    """Ask the Hub for the file (a HEAD, with `token`) before downloading it: readable, and not over `limits`.

    An error reply (no such repo, private, no such file) is raised here: huggingface_hub would fall back to a cached
    copy, which may have been fetched with other credentials. Returns whether the Hub answered (when it cannot be
    reached the cache answers at once, as huggingface_hub would after retrying for ~23 s, checked on disk after) and
    the size it reported.
    """
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(hub_file.repo_id, hub_file.filename, revision=hub_file.revision, endpoint=settings.hf_endpoint)
    try:
        size = get_hf_file_metadata(url, token=token, endpoint=settings.hf_endpoint).size
    except _unreachable() as e:
        LOGGER.warning("%s: not checked on the Hub before download (%s); checking the cached copy", hub_file, e)
        return False, None
    if limits is None:
        return True, size
    if size is None:
        raise ValueError(
            f"{hub_file}: the Hub did not report the file's size, so it cannot be checked against max_head_mb "
            "before downloading; download the file yourself and upload it"
        )
    limits.check("max_head_mb", size / 2**20, f"{hub_file}: size on the Hub in MiB")
    return True, size


def visitor_cache_bound_mb(limits: Limits) -> float:
    """The most visitors' Hub downloads may keep (`max_hub_cache_mb`, never over `max_server_mb`)."""
    return min(limits.max_hub_cache_mb, limits.max_server_mb)


def download(
    hub_file: HubFile, *, settings: Settings | None = None, anonymous: bool = False, limits: Limits | None = None
) -> Path:
    """Pull one file through the Hub cache (pinned revision, token and offline mode honoured).

    A Hub outage falls back to the cached copy when there is one (huggingface_hub does this per revision).

    Args:
        anonymous: send no credentials (`token=False`: not even HF_TOKEN), for an address someone else typed; a
            repository the public cannot read is refused even when a copy is cached. The file goes to the visitors'
            cache (`Settings.visitor_hub_cache`, in the jobs folder, counted in `max_server_mb`), swept least
            recently used first to `visitor_cache_bound_mb` before the download (room for the size the Hub reports)
            and after it.
        limits: refuse a file over `limits.max_head_mb`: by the Hub's metadata before downloading (online) and by
            its size on disk after (always); None: no cap.

    Raises:
        FileNotFoundError: no such repository (or not readable), revision or file.
        ConnectionError: offline or unreachable, and not cached.
        LimitExceeded: over `limits.max_head_mb`, or (anonymous) over the visitors' cache bound.
    """
    from huggingface_hub import hf_hub_download

    settings = settings or Settings.from_env()
    token = False if anonymous else settings.token
    cache = settings.visitor_hub_cache if anonymous else settings.hub_cache
    with _hub_errors(hub_file, settings, anonymous):
        cache_only, size = settings.offline, None
        if (anonymous or limits is not None) and not settings.offline:
            answered, size = _check_on_hub(hub_file, settings, token, limits)
            cache_only = not answered
        if anonymous:
            _sweep_visitor_cache(cache, limits or settings.limits, incoming=size or 0, what=str(hub_file))
        path = hf_hub_download(
            hub_file.repo_id,
            hub_file.filename,
            revision=hub_file.revision,
            endpoint=settings.hf_endpoint,
            token=token,
            cache_dir=cache,
            local_files_only=cache_only,
        )
    if anonymous:
        os.utime(Path(path).resolve())  # used now: the sweep removes the least recently used first
        _sweep_visitor_cache(cache, limits or settings.limits, incoming=0, keep=Path(path), what=str(hub_file))
    if limits is not None:
        limits.check("max_head_mb", Path(path).stat().st_size / 2**20, f"{hub_file}: file size in MiB")
    LOGGER.info("pulled %s -> %s", hub_file, path)
    return Path(path)


def _sweep_visitor_cache(cache: Path, limits: Limits, *, incoming: int, what: str, keep: Path | None = None) -> None:
    """Sweep the visitors' cache down to its bound less `incoming` bytes (one sweep at a time, across processes).

    Raises:
        LimitExceeded: `incoming` alone is over the bound.
    """
    bound = visitor_cache_bound_mb(limits)
    name = "max_hub_cache_mb" if limits.max_hub_cache_mb <= limits.max_server_mb else "max_server_mb"
    limits.check(name, incoming / 2**20, f"{what}: size in MiB, for the Hub download cache of typed addresses")
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".sweep.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        removed = sweep_oldest(cache, bound * 2**20 - incoming, keep=keep)
    if removed:
        LOGGER.info("removed %d file(s) from the visitors' Hub cache %s (bound %.0f MiB)", len(removed), cache, bound)


def check_trusted(hub_file: HubFile, *, settings: Settings | None = None, anonymous: bool = False) -> None:
    """Refuse a pickle unless a trusted owner published it on a branch or tag; asks the Hub for refs only if needed.

    No revision (main), or a branch/tag name or commit that one of the repository's branches or tags points at:
    accepted. `refs/pr/*` and other non-branch refs: refused by name, before any request. Offline or unreachable:
    a name is taken from the cache, a commit sha is refused (it cannot be verified).

    Raises:
        UntrustedSourceError: not a trusted owner, or not a branch or tag of theirs.
    """
    settings = settings or Settings.from_env()
    suffix = Path(hub_file.filename).suffix.lower()
    if suffix not in PICKLE_SUFFIXES:
        return
    if hub_file.owner.lower() not in settings.trusted_owners:
        raise UntrustedSourceError(
            f"{hub_file}: refusing to download a pickle ({suffix}) from '{hub_file.owner}' — "
            f"loading it would run code from that account. Trusted owners: {', '.join(sorted(settings.trusted_owners))}"
            ". Heads travel as .safetensors; an operator who trusts this owner can add it to HEADKIT_TRUSTED_OWNERS"
        )
    revision = hub_file.revision
    if revision is None:
        return
    if revision.startswith("refs/") and not revision.startswith(OWNER_REFS):
        raise UntrustedSourceError(
            f"{hub_file}: refusing a pickle ({suffix}) at '{revision}' — that ref (a pull request or other non-branch "
            f"ref) holds files anyone may have pushed, not '{hub_file.owner}'. Use a branch or tag of "
            f"{hub_file.repo_id}, or leave the revision out for main"
        )
    if _points_at_branch_or_tag(hub_file, settings, anonymous):
        return
    raise UntrustedSourceError(
        f"{hub_file}: refusing a pickle ({suffix}) at revision '{revision}' — it is not a branch or tag of "
        f"{hub_file.repo_id}, nor a commit one points at (no such revision, or one '{hub_file.owner}' did not "
        "publish, such as a pull request's commit). Use a branch or tag, or the commit a tag points at"
    )


def _points_at_branch_or_tag(hub_file: HubFile, settings: Settings, anonymous: bool) -> bool:
    """Whether `hub_file.revision` names a branch or tag, or the commit one points at (Hub refs; offline: by name)."""
    from huggingface_hub import HfApi

    revision = str(hub_file.revision)
    is_commit = bool(_COMMIT.fullmatch(revision.lower()))
    if not settings.offline:
        api = HfApi(endpoint=settings.hf_endpoint)
        try:
            with _hub_errors(hub_file, settings, anonymous):
                refs = api.list_repo_refs(hub_file.repo_id, token=False if anonymous else settings.token)
        except _unreachable() as e:
            LOGGER.warning("%s: refs not checked (%s)", hub_file, e)
        else:
            owned = refs.branches + refs.tags
            return revision in {r.name for r in owned} | {r.ref for r in owned} or (
                is_commit and revision.lower() in {r.target_commit.lower() for r in owned}
            )
    if is_commit:
        raise UntrustedSourceError(
            f"{hub_file}: refusing a pickle at commit '{revision}' — {_why_offline(settings)}, so whether a branch or "
            f"tag of {hub_file.repo_id} points at it cannot be verified offline. Use the branch or tag name, or "
            "connect once"
        )
    return True  # a branch or tag name: huggingface_hub serves it from the cache only if it was fetched online


def _in_weights_dirs(name: str, settings: Settings) -> Path | None:
    for folder in (*settings.weights_dirs, SHIPPED_BASES):
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


_REPO_ADDRESS = re.compile(r"^hf://(?P<repo>[\w.\-]+/[\w.\-]+)/?(?:@(?P<rev>[\w.\-/]+))?$")
_LISTED_FILES = 1000  # files of a repository's top folder read to find its head


def _single_head_file(repo_id: str, revision: str | None, settings: Settings, anonymous: bool) -> HubFile:
    """`hf://owner/repo` names its one head: the only `.safetensors` file in the repository's top folder.

    Raises:
        FileNotFoundError: no head file there, or several (named, so the caller can pick one).
        ConnectionError: offline or unreachable: the files cannot be listed; name the file.
    """
    from itertools import islice

    from huggingface_hub import HfApi

    where = HubFile(repo_id, "", revision)
    if settings.offline:
        raise ConnectionError(
            f"hf://{repo_id}: {_why_offline(settings)}, so its files cannot be listed; give the file name, "
            f"hf://{repo_id}/<file>.safetensors"
        )
    api = HfApi(endpoint=settings.hf_endpoint)
    try:
        with _hub_errors(where, settings, anonymous):
            entries = api.list_repo_tree(
                repo_id, revision=revision, recursive=False, token=False if anonymous else settings.token
            )
            names = [getattr(e, "path", "") for e in islice(entries, _LISTED_FILES)]
    except _unreachable() as e:
        raise ConnectionError(
            f"hf://{repo_id}: {_why_offline(settings)}, so its files cannot be listed ({e}); give the file name, "
            f"hf://{repo_id}/<file>.safetensors"
        ) from e
    heads = sorted(name for name in names if name.endswith(".safetensors"))
    if len(heads) != 1:
        found = f"head files {', '.join(heads[:10])}{' ...' if len(heads) > 10 else ''}" if heads else "no head file"
        raise FileNotFoundError(
            f"hf://{repo_id} holds {found} (.safetensors) in its top folder; name the one to load, "
            f"hf://{repo_id}/{heads[0] if heads else '<file>.safetensors'}"
        )
    return HubFile(repo_id, heads[0], revision)


def resolve(
    source: str | Path,
    *,
    revision: str | None = None,
    settings: Settings | None = None,
    anonymous: bool = False,
    limits: Limits | None = None,
) -> Path:
    """Turn a source into a local file: local path, HEADKIT_WEIGHTS_DIR then weights/bases/ by file name, then the Hub.

    Pickles (`.pt`, ...) from the Hub are taken only from trusted owners (HEADKIT_TRUSTED_OWNERS), at a branch or tag
    of theirs, checked before anything is downloaded.

    Args:
        anonymous: fetch Hub files without credentials. The default sends HF_TOKEN: right for a local user's own
            token, wrong for an address someone else typed (a server would lend them its token).
        limits: cap a Hub download at `limits.max_head_mb` (see `download`); None: no cap.
    """
    settings = settings or Settings.from_env()
    text = str(source).strip()
    if text.startswith(HF_SCHEME) and (repo_only := _REPO_ADDRESS.fullmatch(text)):
        hub_file = _single_head_file(repo_only["repo"], revision or repo_only["rev"], settings, anonymous)
    elif text.startswith(HF_SCHEME):
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
        if path.name == DEFAULT_BASE:  # the embedded base lives in weights/, never on the Hub
            folders = ", ".join(map(str, (*settings.weights_dirs, SHIPPED_BASES)))
            raise FileNotFoundError(f"the embedded base '{text}' is missing from {folders}; {restore_hint(Path(text))}")
        hub_file = official_hub_file(path.name, revision=revision)
        if hub_file is None:
            folders = ", ".join(map(str, settings.weights_dirs)) or "none set"
            raise FileNotFoundError(
                f"'{text}' is not a local file, not in HEADKIT_WEIGHTS_DIR ({folders}), and not an official name "
                f"(known families: {', '.join(OFFICIAL_REPOS)}); pass a path or hf://owner/repo/file"
            )
    check_trusted(hub_file, settings=settings, anonymous=anonymous)
    return download(hub_file, settings=settings, anonymous=anonymous, limits=limits)
