"""Disk taken by the server's folders: counted without walking millions of files per request, and old folders removed.

Counting a tree costs one `stat` per file (about 1 s per 100,000 files on a laptop disk), so the server's figure is
kept and re-counted only when it is a few seconds old, and never more often than once per twenty times its own cost.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path


def remove_old(root: Path, before: float) -> list[Path]:
    """Delete the sub-folders of `root` last modified before `before` (epoch seconds); links are left alone."""
    removed = []
    for folder in sorted(root.glob("*")) if root.is_dir() else []:
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
