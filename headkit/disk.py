"""Disk taken by the server's folders: counted without walking millions of files per request, reserved before it is
written, and old folders removed.

Counting a tree costs one `stat` per file (about 1 s per 100,000 files on a laptop disk), so the server's figure is
kept and re-counted only when it is a few seconds old, and never more often than once per twenty times its own cost.
A figure a few seconds old cannot stop ten uploads that start in the same second, so what an upload will write is
reserved first (`DiskBudget`), under a file lock every process of the server shares.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .limits import Limits

BLOCK = 4096
"""Bytes a file takes on disk at least (a block); `tree_bytes` counts blocks."""


def remove_old(root: Path, before: float) -> list[Path]:
    """Delete the sub-folders of `root` last modified before `before` (epoch seconds); links and hidden folders (the
    server's own, such as the Hub download cache `.hub-cache`, swept by their own rule) are left alone."""
    removed = []
    for folder in sorted(root.glob("*")) if root.is_dir() else []:
        if folder.name.startswith("."):
            continue
        try:
            old = folder.is_dir() and not folder.is_symlink() and folder.stat().st_mtime < before
        except FileNotFoundError:
            continue
        if old:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


class DiskFigure:
    """Bytes on disk under some folders, re-counted at most every `ttl` seconds: max(REFRESH_S, COST_SHARE x the
    last count's time), so counting takes at most 1/COST_SHARE of the time however many files there are; callers
    in between get the last figure."""

    REFRESH_S = 5.0
    COST_SHARE = 20

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bytes: int | None = None
        self._at = float("-inf")
        self._ttl = self.REFRESH_S
        self._counting = False

    def mb(self, folders: list[Path]) -> float:
        with self._lock:
            due = time.monotonic() - self._at >= self._ttl
            if self._bytes is not None and (not due or self._counting):
                return self._bytes / 2**20
            self._counting = True
        started = time.monotonic()
        try:
            total = sum(tree_bytes(folder) for folder in folders)
        finally:
            with self._lock:
                self._counting = False
        with self._lock:
            self._bytes, self._at = total, time.monotonic()
            self._ttl = max(self.REFRESH_S, self.COST_SHARE * (self._at - started))
        return total / 2**20

    def forget(self) -> None:
        with self._lock:
            self._at = float("-inf")


def tree_bytes(folder: Path) -> int:
    """Bytes allocated on disk under `folder`: files and folders (blocks, so sparse files count as written), links
    not followed."""
    total, stack = 0, [folder]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:  # removed while counting, or not a folder
            continue
        with entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                except OSError:
                    continue
                total += getattr(info, "st_blocks", 0) * 512 or info.st_size
    return total


def blocks(size: int) -> int:
    """Bytes a file of `size` bytes takes on disk, in whole blocks (an empty file takes one entry: one block)."""
    return max(1, -(-size // BLOCK)) * BLOCK


@dataclass(frozen=True)
class DiskBudget:
    """`limit_mb` of disk for everything under `folders`, shared by every process of one server (picklable: a worker
    process gets the same budget).

    What is on disk plus what is reserved must stay within the limit: `reserve` checks and records a reservation
    under an exclusive `fcntl.flock` on `<ledger>.lock`, so two uploads (threads or processes) cannot both take the
    last free megabytes. The ledger (a small JSON file) holds the last count of `folders` (when it started, what it
    found, what it cost) and each reservation with its process id. A finished reservation keeps counting until a
    count that started after it ended has seen its files; one whose process is gone counts as finished. While a
    reservation is held, its bytes already written are counted twice (on disk and reserved): the figure errs high,
    never low. Counts follow `DiskFigure`'s rule: at most every max(REFRESH_S, COST_SHARE x the last count's time).

    Attributes:
        folders: the folders whose files count (the jobs root, served outputs, keys).
        limit_mb: `max_server_mb`.
        ledger: the ledger file (beside it, `<ledger>.lock`); put it in a folder of `folders` (a hidden name).
    """

    folders: tuple[Path, ...]
    limit_mb: float
    ledger: Path

    @classmethod
    def under(cls, root: str | Path, *, limits: Limits, also: tuple[Path, ...] = ()) -> DiskBudget:
        """The budget of a server whose files are under `root` (and `also`), its ledger `root/.disk-ledger.json`."""
        root = Path(root).resolve()
        return cls((root, *(Path(f).resolve() for f in also)), limits.max_server_mb, root / ".disk-ledger.json")

    def used_mb(self) -> float:
        """MiB on disk (the ledger's count, recounted when due) plus every reservation not yet counted."""
        with self._locked() as book:
            return self._used(book) / 2**20

    def check(self, what: str) -> None:
        """Refuse new work when what is on disk and reserved is over the limit (nothing is reserved).

        Raises:
            LimitExceeded: over `max_server_mb`.
        """
        with self._locked() as book:
            self._refuse_over(self._used(book), what)

    @contextmanager
    def reserve(self, nbytes: int, what: str) -> Iterator[None]:
        """Hold `nbytes` of the budget while the body writes them (see the class docstring for when they stop counting).

        Raises:
            LimitExceeded: what is on disk and reserved, plus `nbytes`, is over `max_server_mb`; nothing is reserved.
        """
        key = uuid.uuid4().hex
        with self._locked() as book:
            self._refuse_over(self._used(book) + nbytes, what)
            book["held"].append({"id": key, "pid": os.getpid(), "bytes": int(nbytes), "what": what[:200], "end": None})
        try:
            yield
        finally:
            with self._locked() as book:
                for entry in book["held"]:
                    if entry["id"] == key:
                        entry["end"] = time.time()

    def forget(self) -> None:
        """Make the next call count the folders again (after a sweep removed files, say)."""
        with self._locked() as book:
            book["count"]["due"] = 0.0

    def _refuse_over(self, used: int, what: str) -> None:
        Limits(max_server_mb=self.limit_mb).check(
            "max_server_mb",
            round(used / 2**20, 1),
            f"{what}: disk taken and reserved by every session's files on this server, in MiB (try again once "
            "old sessions are swept or other uploads have finished)",
        )

    def _used(self, book: dict) -> int:
        """Bytes on disk and reserved; recounts when due and drops the reservations the count has seen."""
        now, count, held = time.time(), book["count"], book["held"]
        for entry in held:
            if entry["end"] is None and not _alive(entry["pid"]):
                entry["end"] = now  # its process died: whatever it wrote is on disk, or was removed
        if now >= count["due"]:
            started = time.time()
            total = sum(tree_bytes(folder) for folder in self.folders)
            took = time.time() - started
            ttl = max(DiskFigure.REFRESH_S, DiskFigure.COST_SHARE * took)
            count.update(bytes=total, started=started, due=started + ttl)
        book["held"] = [e for e in held if e["end"] is None or e["end"] >= count["started"]]
        return count["bytes"] + sum(e["bytes"] for e in book["held"])

    @contextmanager
    def _locked(self) -> Iterator[dict]:
        """The ledger, read and written back under the exclusive lock (threads and processes alike wait for it)."""
        self.ledger.parent.mkdir(parents=True, exist_ok=True)
        with open(self.ledger.with_name(self.ledger.name + ".lock"), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
            book = _read_ledger(self.ledger)
            try:
                yield book
            finally:  # a refusal keeps what was learnt too (a new count, a dead holder)
                temporary = self.ledger.with_name(f"{self.ledger.name}.{os.getpid()}.{threading.get_ident()}")
                temporary.write_text(json.dumps(book))
                os.replace(temporary, self.ledger)


def _read_ledger(path: Path) -> dict:
    """The ledger, or a fresh one (count due now) when it is missing or unreadable."""
    fresh = {"count": {"bytes": 0, "started": 0.0, "due": 0.0}, "held": []}
    try:
        book = json.loads(path.read_text())
    except (OSError, ValueError):
        return fresh
    ok = isinstance(book, dict) and isinstance(book.get("count"), dict) and isinstance(book.get("held"), list)
    return book if ok else fresh


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def sweep_oldest(folder: Path, max_bytes: float, *, keep: Path | None = None) -> list[Path]:
    """Delete the least recently modified files under `folder` until its tree takes at most `max_bytes` (as
    `tree_bytes` counts it); returns what was deleted.

    Links are not followed (a link left pointing at nothing is removed too); a file being written (`*.incomplete`,
    as huggingface_hub names one) and `keep` are never deleted, so the tree may stay over `max_bytes` by them.
    Callers touch a file when they use it, so "modified" reads "used".
    """
    files, total = [], 0
    for top, dirs, names in os.walk(folder):
        for name in [*dirs, *names]:
            path = Path(top) / name
            try:
                info = path.lstat()
            except OSError:
                continue
            total += getattr(info, "st_blocks", 0) * 512 or info.st_size
            if name in names and not path.is_symlink() and not name.endswith(".incomplete"):
                files.append((info.st_mtime_ns, path, getattr(info, "st_blocks", 0) * 512 or info.st_size))
    removed = []
    protected = keep.resolve() if keep is not None else None
    for _, path, size in sorted(files, key=lambda f: f[0]):
        if total <= max_bytes:
            break
        if path.resolve() == protected:
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
        total -= size
    if removed:
        for top, _, names in os.walk(folder):
            for name in names:
                path = Path(top) / name
                if path.is_symlink() and not path.exists():
                    path.unlink(missing_ok=True)
    return removed
