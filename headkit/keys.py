"""User keys: the random secrets that find a user's job folder (heads, training runs) again across pages and sessions.

The server issues a key (kept by the browser in its local storage, or by a script) and remembers only its hash, so a
listing of the keys folder reveals no key. Keys the server did not issue are refused without saying anything about
other users' work. A key is forgotten once it has been unused for the job age and its job folder is gone (swept).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from pathlib import Path

KEY_BYTES = 24
KEY_OWNER = "user:"  # a key's job name is this prefix and the key's digest


class UserKeys:
    """Keys the server issued, remembered as their hashes in `folder` (so a restart keeps them, and a listing of the
    folder reveals no key)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def issue(self) -> str:
        key = secrets.token_urlsafe(KEY_BYTES)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / self._digest(key)).touch()
        return key

    def owner(self, key: str) -> str:
        """The job name for `key` (using a key keeps it from the sweep).

        Raises:
            PermissionError: not a key this server issued (the message says nothing about any other key).
        """
        path = self.folder / self._digest(key) if isinstance(key, str) and key and len(key) <= 64 else None
        if path is None or not path.is_file():
            raise PermissionError(
                "unknown user key: this server did not issue it (or has forgotten it); leave the key empty to start "
                "afresh, or use the key this app gave you"
            )
        path.touch()
        return KEY_OWNER + path.name

    def sweep(self, in_use: Callable[[str], bool], *, max_age_s: float, now: float | None = None) -> list[Path]:
        """Forget keys unused for `max_age_s` whose job (by name, `in_use`) is gone; returns the files removed."""
        now = time.time() if now is None else now
        removed = []
        for path in sorted(self.folder.iterdir()) if self.folder.is_dir() else []:
            try:
                old = path.is_file() and now - path.stat().st_mtime > max_age_s
            except FileNotFoundError:
                continue
            if old and not in_use(KEY_OWNER + path.name):
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed

    @staticmethod
    def _digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()[:40]
