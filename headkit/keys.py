"""User keys: the random secrets that find a user's job folder (heads, training runs) again across pages and sessions.

The server issues a key (kept by the browser in its local storage, or by a script) and remembers only its hash, so a
listing of the keys folder reveals no key. Keys the server did not issue are refused without saying anything about
other users' work. A key is forgotten once it has been unused for the job age and its job folder is gone (swept).
"""

from __future__ import annotations

import collections
import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path

KEY_BYTES = 24
KEY_OWNER = "user:"  # a key's job name is this prefix and the key's digest
MAX_KEY_CHARS = 64  # an issued key is 32 characters
MAX_SESSION_CHARS = 128  # Gradio's own session ids: ~11 characters from a browser, 36 from gradio_client
MAX_SESSIONS = 10_000  # sessions remembered with the key they presented; the least recently used go first


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
        path = self.folder / self._digest(key) if isinstance(key, str) and key and len(key) <= MAX_KEY_CHARS else None
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


class SessionOwners:
    """Which user key's job each session presented (`/resume`), for the session's later requests.

    A session id is whatever a client posts, so this map is bounded like every other per-process state: ids longer
    than `MAX_SESSION_CHARS` are refused, entries expire after `max_age_s` unused (the job age: the key's job is
    swept by then), and beyond `max_entries` the least recently used go first (that session falls back to its own
    job until it presents its key again).
    """

    def __init__(self, *, max_age_s: float, max_entries: int = MAX_SESSIONS) -> None:
        self.max_age_s = max_age_s
        self.max_entries = max_entries
        self._owners: collections.OrderedDict[str, tuple[str, float]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._owners)

    def set(self, session: str, owner: str) -> None:
        """Remember that `session` presented the key whose job name is `owner`.

        Raises:
            ValueError: `session` is longer than `MAX_SESSION_CHARS`.
        """
        check_session(session)
        with self._lock:
            self._owners[session] = (owner, time.monotonic())
            self._owners.move_to_end(session)
            self._sweep()

    def get(self, session: str | None) -> str | None:
        """The job name `session` presented a key for, None when it has not (or it expired)."""
        if not session or len(session) > MAX_SESSION_CHARS:
            return None
        with self._lock:
            found = self._owners.get(session)
            if found is None or time.monotonic() - found[1] > self.max_age_s:
                return None
            self._owners[session] = (found[0], time.monotonic())
            self._owners.move_to_end(session)
            return found[0]

    def _sweep(self) -> None:
        now = time.monotonic()
        while self._owners and (
            len(self._owners) > self.max_entries or now - next(iter(self._owners.values()))[1] > self.max_age_s
        ):
            self._owners.popitem(last=False)


def check_session(session: str | None) -> None:
    """Refuse a session id no Gradio client makes (they are short random strings), before anything keeps it.

    Raises:
        ValueError: longer than `MAX_SESSION_CHARS`.
    """
    if session is not None and len(session) > MAX_SESSION_CHARS:
        raise ValueError(
            f"a session id of {len(session):,} characters; Gradio's are short random strings (at most "
            f"{MAX_SESSION_CHARS} here): reconnect with an ordinary client"
        )
