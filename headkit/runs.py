"""Training runs that outlive the page that started them, and the user keys that find them again.

A run is a thread that consumes a job's training events (progress, the saved head, a comparison fine-tune) and keeps
them; any number of requests may follow it, from the start or from where they reconnect, and a follower that goes away
(a closed page, a dropped script) leaves the run going. Runs wait for the server's training slots in order, so one
training at a time stays the rule; a waiting run says how many are ahead of it.

A user key is a random secret the server issues (kept by the browser in its local storage, or by a script) that names
the user's job folder across page loads and sessions. Keys the server did not issue are refused without saying
anything about other users' work.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KEY_BYTES = 24


@dataclass
class Run:
    """One training run's events so far, its state and, when it ended badly, its error."""

    events: list[Any] = field(default_factory=list)
    state: str = "waiting"  # waiting, running, done, failed
    error: BaseException | None = None
    ahead: int = 0  # runs before this one in the queue while waiting
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    def follow(self, start: int = 0, *, poll_s: float = 1.0) -> Iterator[tuple[int, Any]]:
        """(index, event) from `start` on, as they come, until the run ends; None events report waiting in line."""
        index = start
        while True:
            with self.changed:
                while index >= len(self.events) and not self.finished:
                    if not self.changed.wait(timeout=poll_s) and self.state == "waiting":
                        break
                fresh = self.events[index:]
                finished, waiting = self.finished, self.state == "waiting"
            for event in fresh:
                yield index, event
                index += 1
            if finished:
                return
            if waiting and not fresh:
                yield index, None

    def _add(self, event: Any) -> None:
        with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def _set(self, state: str, error: BaseException | None = None) -> None:
        with self.changed:
            self.state, self.error = state, error
            self.changed.notify_all()


class Runs:
    """The server's runs by owner (a job folder), started in threads that wait their turn for `slots` slots."""

    def __init__(self, slots: int = 1) -> None:
        self._runs: dict[str, Run] = {}
        self._line: list[Run] = []
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(slots)

    def get(self, owner: str | Path) -> Run | None:
        with self._lock:
            return self._runs.get(str(owner))

    def start(self, owner: str | Path, work: Callable[[], Iterator[Any]]) -> Run:
        """Start `work()` (an event iterator) in a thread once a slot is free; one unfinished run per owner.

        Raises:
            ValueError: the owner already has a run that has not ended.
        """
        with self._lock:
            current = self._runs.get(str(owner))
            if current is not None and not current.finished:
                raise ValueError("a training run of yours is still going; stop it or wait for it to end")
            run = self._runs[str(owner)] = Run()
            self._line.append(run)
            self._renumber()
        threading.Thread(target=self._run, args=(run, work), name="training-run", daemon=True).start()
        return run

    def _renumber(self) -> None:
        for ahead, waiting in enumerate(r for r in self._line if r.state == "waiting"):
            with waiting.changed:
                waiting.ahead = ahead + sum(r.state == "running" for r in self._line)
                waiting.changed.notify_all()

    def _run(self, run: Run, work: Callable[[], Iterator[Any]]) -> None:
        with self._slots:
            run._set("running")
            with self._lock:
                self._renumber()
            try:
                for event in work():
                    run._add(event)
                run._set("done")
            except BaseException as e:  # kept for the followers, who report it
                run._set("failed", e)
            finally:
                with self._lock:
                    self._line.remove(run)
                    self._renumber()


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
        """The job name for `key`.

        Raises:
            PermissionError: not a key this server issued (the message says nothing about any other key).
        """
        if not isinstance(key, str) or not key or len(key) > 64 or not (self.folder / self._digest(key)).is_file():
            raise PermissionError(
                "unknown user key: this server did not issue it (or has forgotten it); leave the key empty to start "
                "afresh, or use the key this app gave you"
            )
        return "user:" + self._digest(key)

    @staticmethod
    def _digest(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()[:40]
