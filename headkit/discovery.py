"""find_heads: the heads on the Hub that fit a base, found by the base's fingerprint tag and checked before listing.

A pushed head's card carries the tag `headkit-base-<16 hex digits>` of the trunk it was trained on (`hub.base_tag`),
so a search is a filter on tags, which the Hub answers server-side (`/api/models?filter=headkit&filter=<tag>`, the
query `HfApi.list_models(filter=[...], sort=..., limit=..., expand=[...])` sends). A tag is only a claim: before a
repository is listed, its `.safetensors` files' headers alone (a ranged GET, anonymous, bounded by
`max_hub_header_kb` and the search's time) go through the checks `load_head` runs on a header and the fit check
`merge` runs (`merging.check_head_fits`), so nothing listed fails to load or merge. Each entry is pinned to the commit
that was checked.

The search is one request per tag, sent once: `HfApi.list_models` goes through `http_backoff`, which retries an
unreachable or failing (5xx) Hub for ~23 s and cannot be told not to; here an outage is said at once and the last
listing for this base (kept beside the Hub cache) is returned, marked as such.
"""

from __future__ import annotations

import json
import logging
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import torch

from .detect import HeadDoesNotFit
from .headfile import Head, read_head_header
from .hub import base_tag
from .kinds import resolve_branch
from .limits import LimitExceeded, Limits
from .merging import check_head_fits
from .schema import FileRefused
from .settings import Settings
from .sources import HF_SCHEME
from .trunk import fingerprint

LOGGER = logging.getLogger(__name__)
SORTS = {"downloads": "downloads", "newest": "createdAt"}  # find_heads' words -> the Hub's sort keys
_EXPAND = ["sha", "siblings", "downloads", "likes", "createdAt", "tags"]
_FILES_PER_REPO = 4  # .safetensors files checked in one repository; a head repo holds one or two
_FIRST_READ = 32 * 2**10  # one ranged GET covers a typical header (8-20 KiB); a longer one takes a second GET
_LIST_BYTES = 8 * 2**20  # the search's JSON reply, read no further (siblings lists of huge repos)


@dataclass(frozen=True)
class HubHead:
    """One head on the Hub that fits the searched base: where it is, what it detects, how it is rated.

    Attributes:
        revision: the commit whose file was checked; `address` pins it, so what loads is what was checked.
        classes: the head's class names in index order.
        metrics: per-class validation metrics as the head records them ({"all": {"mAP50": ...}, ...}), or {}.
    """

    repo_id: str
    filename: str
    revision: str
    label: str
    classes: list[str]
    metrics: dict[str, dict[str, Any]]
    downloads: int
    likes: int
    created: str | None = None

    @property
    def address(self) -> str:
        """What `headkit.load_head` takes: `hf://owner/repo/file@commit`."""
        return f"{HF_SCHEME}{self.repo_id}/{self.filename}@{self.revision}"


@dataclass(frozen=True)
class HeadSearch:
    """What `find_heads` found: the heads (best first), and whether they come from the Hub now or from the cache.

    Attributes:
        searched_at: when the Hub gave this listing (ISO 8601, UTC).
        offline: None when the Hub answered now; else why it was not asked or did not answer (the heads are then
            the listing cached at `searched_at`).
        skipped: `owner/repo: file: why` for each candidate file under the tag that was not listed.
    """

    fingerprint: str
    heads: tuple[HubHead, ...]
    searched_at: str
    offline: str | None = None
    skipped: tuple[str, ...] = field(default=())

    def __iter__(self) -> Iterator[HubHead]:
        return iter(self.heads)

    def __len__(self) -> int:
        return len(self.heads)


class HubUnreachable(ConnectionError):
    """The Hub did not answer the search (offline, down, or too slow)."""


def find_heads(
    base,
    *,
    limit: int = 10,
    sort: Literal["downloads", "newest"] = "downloads",
    settings: Settings | None = None,
    limits: Limits | None = None,
) -> HeadSearch:
    """The heads on the Hub that fit `base`, most downloaded (or newest) first, each checked against it.

    Every request is anonymous (public repositories only; never HF_TOKEN) and bounded: `limit` results at most
    `max_hub_results`, each header at most `max_hub_header_kb`, the whole search at most `max_hub_search_s`.

    Args:
        base: the YOLO model the heads must fit (its trunk fingerprint, layout and branch rows are compared).
        limit: repositories asked for; fewer are listed when some do not pass the checks.
        sort: "downloads" or "newest".

    Raises:
        LimitExceeded: `limit` over `max_hub_results`.
        ConnectionError: offline or the Hub did not answer, and no earlier search for this base is cached.
    """
    settings = settings or Settings.from_env()
    limits = limits or settings.limits
    if sort not in SORTS:
        raise ValueError(f"sort={sort!r}: expected one of {', '.join(SORTS)}")
    if limit < 1:
        raise ValueError(f"limit={limit}: ask for at least one head")
    limits.check("max_hub_results", limit, "find_heads: heads asked for")
    prints = _searched_fingerprints(base)
    cache = _cache_file(settings, prints[0], sort)
    if settings.offline:
        return _cached(cache, limit, "offline mode is on (HF_HUB_OFFLINE)", settings)
    deadline = time.monotonic() + limits.max_hub_search_s
    try:
        candidates = [model for fp in prints for model in _search(base_tag(fp), sort, limit, settings, deadline)]
    except HubUnreachable as e:
        return _cached(cache, limit, str(e), settings)
    heads, skipped = [], []
    for model in _ordered(candidates, sort):
        if len(heads) == limit:
            break
        for filename in _head_files(model)[:_FILES_PER_REPO]:
            if time.monotonic() > deadline:
                why = f"{filename}: not checked, the search took max_hub_search_s ({limits.max_hub_search_s} s)"
                skipped.append(f"{model['id']}: {why}")
                continue
            try:
                head = _remote_head(model, filename, settings, limits, deadline)
                check_head_fits(head, base)
            except (FileRefused, LimitExceeded, HeadDoesNotFit, OSError, HubUnreachable) as e:  # each names the file
                skipped.append(f"{model['id']}: {e}")
                LOGGER.info("find_heads: not listing %s: %s", model["id"], e)
                continue
            heads.append(_entry(model, filename, head))
            break  # one head per repository: the first that fits
    result = HeadSearch(prints[0], tuple(heads), _now(), None, tuple(skipped))
    _store(cache, result)
    return result


def _searched_fingerprints(base) -> list[str]:
    """The fingerprints heads for `base` are tagged with: the whole trunk's, then the shared part a neck branch
    head records (a branch head fits the base whose layers before its start match)."""
    whole = fingerprint(base)
    try:
        neck = resolve_branch(base, "neck")
    except ValueError:  # a base that records no architecture has no neck start to search by
        return [whole]
    return [whole] + ([fingerprint(base, upto=neck)] if neck is not None else [])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise HubUnreachable("the Hub did not answer within max_hub_search_s")
    return left


def _get(url: str, deadline: float, *, cap: int, params: Any = None, headers: dict | None = None):
    """One anonymous GET through huggingface_hub's session, sent once; (response, body of at most `cap` bytes).

    The body is streamed and cut at `cap`: a server that ignores a Range header cannot make us read the whole file.
    """
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub.errors import OfflineModeIsEnabled
    from huggingface_hub.utils import build_hf_headers, get_session

    request_headers = {**build_hf_headers(token=False), **(headers or {})}
    try:
        with get_session().stream(
            "GET", url, params=params, headers=request_headers, timeout=_remaining(deadline)
        ) as response:
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk[: cap - len(body)]
                if len(body) >= cap:
                    break
                _remaining(deadline)
            return response, bytes(body)
    except (httpx2.TransportError, OfflineModeIsEnabled) as e:
        parts = urlsplit(url)
        raise HubUnreachable(f"{parts.scheme}://{parts.netloc} cannot be reached ({type(e).__name__}: {e})") from e


def _search(tag: str, sort: str, limit: int, settings: Settings, deadline: float) -> list[dict[str, Any]]:
    """The Hub's models carrying `tag`, as `list_models(filter=["headkit", tag], ...)` asks for them."""
    params = [("filter", "headkit"), ("filter", tag), ("sort", SORTS[sort]), ("direction", "-1")]
    params += [("limit", str(limit))] + [("expand", key) for key in _EXPAND]
    response, body = _get(f"{settings.hf_endpoint}/api/models", deadline, cap=_LIST_BYTES, params=params)
    if response.status_code >= 500 or response.status_code == 429:
        raise HubUnreachable(f"{settings.hf_endpoint} answered the search with HTTP {response.status_code}")
    if response.status_code != 200:
        raise HubUnreachable(f"{settings.hf_endpoint} refused the search (HTTP {response.status_code})")
    try:
        models = json.loads(body)
    except json.JSONDecodeError as e:
        raise HubUnreachable(f"{settings.hf_endpoint} sent a search reply that is not JSON ({e})") from e
    if not isinstance(models, list):
        raise HubUnreachable(f"{settings.hf_endpoint} sent a search reply that is not a list")
    return [m for m in models[:limit] if isinstance(m, dict) and isinstance(m.get("id"), str) and m.get("sha")]


def _ordered(models: list[dict[str, Any]], sort: str) -> list[dict[str, Any]]:
    """One entry per repository, in the Hub's order for `sort` (two tag searches are merged)."""
    unique = list({m["id"]: m for m in reversed(models)}.values())[::-1]
    if sort == "newest":
        return sorted(unique, key=lambda m: str(m.get("createdAt") or ""), reverse=True)
    return sorted(unique, key=lambda m: _count(m.get("downloads")), reverse=True)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _head_files(model: dict[str, Any]) -> list[str]:
    siblings = model.get("siblings") or []
    names = [s.get("rfilename") for s in siblings if isinstance(s, dict)]
    return sorted(n for n in names if isinstance(n, str) and n.endswith(".safetensors"))


def _remote_head(model: dict[str, Any], filename: str, settings: Settings, limits: Limits, deadline: float) -> Head:
    """The head a Hub file declares, from its header alone: checked by `load_head`'s own header reader, its tensors
    shapes on torch's meta device (no data exists), ready for `check_head_fits`."""
    from huggingface_hub import hf_hub_url

    url = hf_hub_url(model["id"], filename, revision=model["sha"], endpoint=settings.hf_endpoint)
    cap = int(limits.max_hub_header_kb * 2**10)
    header, total = _read_range(url, 0, min(cap, _FIRST_READ) + 8, deadline)
    declared = struct.unpack("<Q", header[:8])[0] if len(header) >= 8 else 0
    limits.check("max_hub_header_kb", declared / 2**10, f"{filename}: its safetensors header in KiB")
    if 8 + declared > total:
        raise ValueError(f"{filename}: its header claims {declared:,} bytes of a {total:,}-byte file; not a head")
    if len(header) < 8 + declared:
        rest, _ = _read_range(url, len(header), 8 + declared - len(header), deadline)
        header += rest
    with tempfile.TemporaryDirectory(prefix="headkit-header-") as tmp:
        path = Path(tmp) / Path(filename).name
        with path.open("wb") as f:  # the header, then a hole up to the file's size: its data is never fetched
            f.write(header[: 8 + declared])
            f.truncate(max(total, 8 + declared))
        header = read_head_header(path, limits)  # every check load_head runs before it reads a tensor
    tensors = {key: torch.empty(shape, device="meta") for key, shape in header.shapes.items()}
    return Head(tensors, header.metadata)


def _read_range(url: str, start: int, length: int, deadline: float) -> tuple[bytes, int]:
    """Bytes [start, start+length) of a Hub file and the file's total size (from Content-Range)."""
    response, body = _get(url, deadline, cap=length, headers={"Range": f"bytes={start}-{start + length - 1}"})
    if response.status_code not in (200, 206):
        raise FileNotFoundError(f"{url}: HTTP {response.status_code} (private, gated or removed)")
    span = response.headers.get("Content-Range", "")
    total = span.rsplit("/", 1)[-1] if response.status_code == 206 else response.headers.get("Content-Length", "")
    if not total.isdigit():
        raise ValueError(f"{url}: the Hub did not give the file's size, so it cannot be checked against max_head_mb")
    if response.status_code == 200 and start:
        body = b""  # a server that ignored Range sent the start again
    return body, int(total)


def _entry(model: dict[str, Any], filename: str, head: Head) -> HubHead:
    metrics = head.metadata.get("metrics")
    return HubHead(
        repo_id=model["id"],
        filename=filename,
        revision=model["sha"],
        label=head.label,
        classes=[name for _, name in sorted(head.names.items())],
        metrics=metrics if isinstance(metrics, dict) else {},
        downloads=_count(model.get("downloads")),
        likes=_count(model.get("likes")),
        created=model.get("createdAt") if isinstance(model.get("createdAt"), str) else None,
    )


def _cache_file(settings: Settings, fp: str, sort: str) -> Path:
    from huggingface_hub import constants

    hub_cache = settings.hub_cache or Path(constants.HF_HUB_CACHE)
    return hub_cache.parent / "headkit" / "find_heads" / f"{fp[:16]}-{sort}.json"


def _store(cache: Path, result: HeadSearch) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".part")
        tmp.write_text(json.dumps(asdict(result)), encoding="utf-8")
        tmp.replace(cache)
    except OSError as e:  # a read-only cache costs the offline fallback, not the search
        LOGGER.warning("find_heads: listing not cached at %s (%s)", cache, e)


def _cached(cache: Path, limit: int, why: str, settings: Settings) -> HeadSearch:
    try:
        data = json.loads(cache.read_text(encoding="utf-8"))
        heads = tuple(HubHead(**entry) for entry in data["heads"])[:limit]
        kept = HeadSearch(data["fingerprint"], heads, data["searched_at"], why, tuple(data.get("skipped", ())))
    except (OSError, ValueError, KeyError, TypeError) as e:  # none cached, or a cache file we did not write
        raise ConnectionError(
            f"cannot search the Hub for heads: {why}, and no earlier search for this base is cached; connect to "
            f"{settings.hf_endpoint} and search again, or load a head you know by its hf://owner/repo address"
        ) from e
    LOGGER.warning("find_heads: %s; listing the %d head(s) found at %s", why, len(heads), kept.searched_at)
    return kept
