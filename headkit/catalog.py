"""Which heads a base can use: shipped in weights/, made in this session, or pulled from the Hub, named by keys.

A key is a shipped head's name (`license_plate`), `session/<name>` for the caller's own heads, or
`hf://owner/repo/file.safetensors[@rev]`. Keys are never file paths, so nobody reaches a file by naming it. Keys are
what an app's visitors type: `hf://` keys are fetched anonymously (never with the server's HF_TOKEN) and capped at
`max_head_mb` before download. A local user loading their own private head calls `headkit.load_head` instead.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .artefact import FileRefused
from .detect import HeadDoesNotFit
from .filenames import safe_name
from .headfile import Head, load_head
from .kinds import HeadKind
from .limits import LimitExceeded, Limits
from .merging import check_head_fits
from .schema import metadata_bytes
from .settings import current_limits
from .sources import HF_SCHEME, PICKLE_SUFFIXES, parse_hub_url, resolve

if TYPE_CHECKING:
    from .jobs import Job  # a session's folder; importing it would load the training stack

LOGGER = logging.getLogger(__name__)
SESSION_PREFIX = "session/"

MAX_KEY_CHARS = 512  # an hf://owner/repo/path@revision address is far shorter


@dataclass(frozen=True)
class HeadEntry:
    """One head a caller can pick, and whether it fits the loaded base (`reason` says why not)."""

    key: str
    origin: str  # "shipped", "session" or "hub"
    names: dict[int, str]
    reason: str | None = None
    metrics: dict[str, Any] | None = None
    base_source: str | None = None
    kind: HeadKind = HeadKind()  # frozen: one default shared safely
    fingerprint_verified: bool = True  # False for a legacy .pth import, stamped with the base it was loaded on

    @property
    def available(self) -> bool:
        return self.reason is None

    @property
    def label(self) -> str:
        classes = ", ".join(self.names.values()) or "no classes"
        return self.key if classes == self.key.rsplit("/", 1)[-1] else f"{self.key} ({classes})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "origin": self.origin,
            "classes": list(self.names.values()),
            "available": self.available,
            "reason": self.reason,
            "metrics": (self.metrics or {}).get("all"),
            "kind": self.kind.describe(),
            "fingerprint": "verified" if self.fingerprint_verified else "assumed (legacy .pth import)",
        }


def refuse_pickle(name: str) -> None:
    """Refuse a pickle-format file by its name, saying why.

    Raises:
        ValueError: the name ends in .pt, .pth, .pkl, .ckpt or .bin.
    """
    suffix = Path(name.split("@", 1)[0]).suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise ValueError(
            f"{Path(name).name}: refusing a {suffix} file — it is a pickle, and loading it could run code from "
            "whoever made it. Heads travel as .safetensors: save one with headkit (Head.save) or train it here"
        )


CACHE_MB = 512  # heads kept in memory, by what they take there: a count alone would let 64 of max_head_mb pile up


def head_bytes(head: Head) -> int:
    """What a kept head takes in memory: its tensors and its parsed metadata (bounded by the schema), not its file's
    size (fp16 tensors in the file may be held as fp16; parsed JSON takes several times its text)."""
    tensors = sum(tensor.numel() * tensor.element_size() for tensor in head.tensors.values())
    return tensors + metadata_bytes(head.metadata)


class _HeadCache:
    """Heads read once per file version (a head replaced in place, with a new size or mtime, is read again), the
    least recently used dropped first once what they take in memory (`head_bytes`) adds up to more than `budget_mb`."""

    def __init__(self, budget_mb: float) -> None:
        self.budget = budget_mb * 2**20
        self._heads: collections.OrderedDict[tuple, tuple[Head, int]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path, limits: Limits | None) -> Head:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns, limits)
        with self._lock:
            if key in self._heads:
                self._heads.move_to_end(key)
                return self._heads[key][0]
        head = load_head(path, limits=limits)
        with self._lock:
            self._heads[key] = (head, head_bytes(head))
            while sum(size for _, size in self._heads.values()) > self.budget:
                self._heads.popitem(last=False)
        return head

    def clear(self) -> None:
        with self._lock:
            self._heads.clear()


_CACHE = _HeadCache(CACHE_MB)


def _load_file(path: Path, limits: Limits | None = None) -> Head:
    return _CACHE.get(path, limits)


def load_head_key(
    key: str, *, shipped_dir: str | Path | None = None, job: Job | None = None, limits: Limits | None = None
) -> Head:
    """The head named by `key` (see the module docstring), read once per file version.

    `hf://` keys are downloaded without credentials (HF_TOKEN is not sent: a visitor must not read what the server's
    token can) and refused over `limits.max_head_mb` before the download, by the Hub's reported size.

    Args:
        limits: caps on the head (size, classes); default the limits in force (`HEADKIT_MAX_*`).

    Raises:
        ValueError: a pickle, or a key that is no head name.
        LimitExceeded: a head over `limits`.
        FileNotFoundError: no such head (or a Hub repository the public cannot read).
    """
    key = str(key).strip()
    if len(key) > MAX_KEY_CHARS:
        raise ValueError(
            f"a head key of {len(key):,} characters; head keys are names or hf:// addresses (at most {MAX_KEY_CHARS})"
        )
    refuse_pickle(key)
    if key.startswith(HF_SCHEME):
        hub_file = parse_hub_url(key)
        if not hub_file.filename.endswith(".safetensors"):
            raise ValueError(f"{key}: heads on the Hub are .safetensors files; give hf://owner/repo/<head>.safetensors")
        limits = limits or current_limits()
        return _load_file(resolve(key, anonymous=True, limits=limits), limits)
    if key.startswith(SESSION_PREFIX):
        if job is None:
            raise FileNotFoundError(f"'{key}': session heads exist only inside a session")
        return _load_file(job.head_path(key[len(SESSION_PREFIX) :]), limits)
    name = key.removesuffix(".safetensors")
    path = Path(shipped_dir or ".") / f"{name}.safetensors"
    if shipped_dir is None or safe_name(name) != name or not path.is_file():
        raise FileNotFoundError(
            f"unknown head '{key}'; give a shipped head's name, session/<name> for one made in this session, or "
            "hf://owner/repo/<head>.safetensors (list_heads shows what there is)"
        )
    return _load_file(path, limits)


def session_name(key: str) -> str | None:
    """The name of the session head a key names (`session/plates` → `plates`), None for a shipped or `hf://` key."""
    key = str(key).strip()
    return key[len(SESSION_PREFIX) :] if key.startswith(SESSION_PREFIX) else None


def add_head(source: str | Path, job: Job, *, name: str | None = None) -> str:
    """Copy a head (an uploaded .safetensors file or an `hf://` address) into the session; returns its key.

    An `hf://` address is fetched as `load_head_key` does: anonymously, capped at `max_head_mb`.

    Raises:
        ValueError: a pickle, or not a headkit head.
    """
    text = str(source).strip()
    refuse_pickle(text)
    if text.startswith(HF_SCHEME):
        head = load_head_key(text)
        stem = Path(parse_hub_url(text).filename).stem
    else:
        path = Path(text)
        if path.suffix.lower() != ".safetensors":
            raise ValueError(f"{path.name}: expected a head file (.safetensors), got '{path.suffix or 'no suffix'}'")
        head, stem = load_head(path), path.stem
    label = name or stem  # the name the user gave the file is the name they will look for
    head = Head(head.tensors, {**head.metadata, "label": safe_name(label)})
    saved = job.save_head(head, label)
    return SESSION_PREFIX + saved.stem


def list_heads(base, *, shipped_dir: str | Path | None = None, job: Job | None = None) -> list[HeadEntry]:
    """Every shipped and session head, each marked available or not for `base` (with the reason)."""
    found: list[tuple[str, str, Path]] = []
    if shipped_dir is not None and Path(shipped_dir).is_dir():
        found += [(p.stem, "shipped", p) for p in sorted(Path(shipped_dir).glob("*.safetensors"))]
    if job is not None:
        found += [(SESSION_PREFIX + stem, "session", p) for stem, p in job.heads().items()]
    entries = []
    for key, origin, path in found:
        try:
            head = _load_file(path)
        except (FileRefused, LimitExceeded, OSError) as e:  # a bug's ValueError is not a verdict on the file
            entries.append(HeadEntry(key, origin, {}, reason=f"unreadable: {e}"))
            continue
        try:
            check_head_fits(head, base)
            reason = None
        except (HeadDoesNotFit, FileRefused, LimitExceeded) as e:  # verdicts on the head; a bug's error goes up
            reason = str(e)
        meta = head.metadata
        entries.append(
            HeadEntry(
                key,
                origin,
                head.names,
                reason,
                meta.get("metrics"),
                meta.get("base_source"),
                head.kind,
                meta.get("base_fingerprint_verified", True) is not False,
            )
        )
    return entries


# The shipped head a base's pickers open with: on the embedded demo base it finds the plate in the bundled example.
OPENING_HEAD = "license_plate_neck"


def shipped_names(shipped_dir: str | Path) -> list[str]:
    """The shipped heads' keys (file names without .safetensors), sorted."""
    return sorted(p.stem for p in Path(shipped_dir).glob("*.safetensors"))


def opening_heads(shipped: list[str]) -> list[str]:
    """What Compare shows first, of the shipped heads that fit the base: `OPENING_HEAD`, else the first one (one head:
    two plate heads side by side would report the same class twice)."""
    return [OPENING_HEAD] if OPENING_HEAD in shipped else shipped[:1]
