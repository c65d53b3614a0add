"""Per-session job folders: each browser or API session works in its own folder, confined, and removed when old."""

from __future__ import annotations

import hashlib
import logging
import queue
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .disk import DiskFigure, remove_old
from .filenames import safe_name
from .finetune import FineTuneResult, finetune, save_finetuned
from .headfile import Head
from .limits import Limits
from .train import TrainProgress, TrainResult, train_head

if TYPE_CHECKING:
    from .keys import UserKeys

LOGGER = logging.getLogger(__name__)
_STOP_FILE = ".stop"


class Job:
    """One session's folder: uploads, datasets, training runs, trained heads and exports live under `path`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).resolve()
        self.path.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Job({str(self.path)!r})"

    def file(self, *parts: str) -> Path:
        """A path inside this job.

        Raises:
            PermissionError: the parts lead outside the job folder (`..`, absolute paths, links).
        """
        path = self.path.joinpath(*parts).resolve()
        if not path.is_relative_to(self.path):
            raise PermissionError(f"'{'/'.join(parts)}' is outside this session's folder; only its own files are used")
        return path

    def folder(self, prefix: str) -> Path:
        """A new, empty sub-folder named `<prefix>-<n>`."""
        self.touch()
        for n in range(1, 10_000):
            path = self.file(f"{safe_name(prefix, default='work')}-{n}")
            try:
                path.mkdir(parents=True)
                return path
            except FileExistsError:
                continue
        raise FileExistsError(f"{self.path}: too many '{prefix}' folders; start a new session")

    @property
    def heads_dir(self) -> Path:
        return self.file("heads")

    def heads(self) -> dict[str, Path]:
        """This session's heads by name (file stem), oldest first."""
        files = sorted(self.heads_dir.glob("*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
        return {p.stem: p for p in files}

    def head_path(self, name: str) -> Path:
        """Where this session's head `name` is.

        Raises:
            FileNotFoundError: this session has no head by that name.
        """
        path = self.file("heads", f"{safe_name(name)}.safetensors")
        if safe_name(name) != name or not path.is_file():
            known = ", ".join(self.heads()) or "none yet"
            raise FileNotFoundError(f"this session has no head '{name}' (its heads: {known}); train or add one first")
        return path

    def save_head(self, head: Head, name: str) -> Path:
        """Save `head` as a new session head; a taken name gets a suffix (`plates_2`)."""
        stem = safe_name(name)
        taken = self.heads()
        unique, n = stem, 1
        while unique in taken:
            n += 1
            unique = f"{stem}_{n}"
        head.metadata.setdefault("label", unique)
        self.touch()
        return head.save(self.file("heads", f"{unique}.safetensors"))

    def archive(self, folder: str | Path, name: str) -> Path:
        """Zip a folder of this job into `<name>.zip` beside it (the archive's top folder is `name`)."""
        folder = Path(folder).resolve()
        if not folder.is_relative_to(self.path):
            raise PermissionError(f"{folder.name}: only folders inside this session's job can be archived")
        target = folder.parent / safe_name(name, default="archive")
        return Path(shutil.make_archive(str(target), "zip", root_dir=folder.parent, base_dir=folder.name))

    def request_stop(self) -> None:
        """Ask this session's running training to stop after its current batch (works across processes)."""
        self.file(_STOP_FILE).touch()

    def stop_requested(self) -> bool:
        return (self.path / _STOP_FILE).exists()

    def touch(self) -> None:
        """Mark the job as in use, so the sweep keeps it."""
        self.path.touch(exist_ok=True)

    def disk_mb(self) -> float:
        """MiB this job's files take (links are not followed, so nothing outside the folder counts)."""
        total = 0
        for path in self.path.rglob("*"):
            try:
                if path.is_file() and not path.is_symlink():
                    total += path.stat().st_size
            except OSError:  # a file removed while counting
                continue
        return total / 2**20

    def check_disk(self, limits: Limits) -> None:
        """Refuse new work once this session's folder is over `max_session_mb`; its existing files stay.

        Raises:
            LimitExceeded: the folder is over the limit.
        """
        limits.check(
            "max_session_mb", round(self.disk_mb(), 1), "this session's files (uploads, datasets, runs, heads) in MiB"
        )

    def train(
        self, base, data: str | Path, *, stop: Callable[[], bool] | None = None, **kwargs: Any
    ) -> Iterator[TrainProgress | TrainResult]:
        """Run `train_head` in a thread, yielding its progress reports and, last, the TrainResult.

        Training runs under `<job>/runs`; `request_stop()`, `stop()` turning True (a `headkit.runs.Run`'s Stop or
        time limit) or closing this iterator stops it after the current batch.

        Raises:
            TrainingCancelled: a stop was requested.
        """
        yield from self._in_thread(train_head, base, data, stop, **kwargs)

    def finetune(
        self, base, data: str | Path, *, stop: Callable[[], bool] | None = None, **kwargs: Any
    ) -> Iterator[TrainProgress | FineTuneResult]:
        """Run the comparison fine-tune (`headkit.finetune.finetune`) in a thread, like `train`, with the same Stop."""
        yield from self._in_thread(finetune, base, data, stop, **kwargs)

    def save_finetuned(self, model, name: str) -> Path:
        """Keep a fine-tuned model for the head `name` (safetensors, in the job; never offered as a pickle)."""
        return save_finetuned(model, self.file("finetunes", f"{safe_name(name)}.safetensors"))

    def finetuned(self, name: str) -> Path | None:
        """The fine-tuned model kept for this session's head `name`, if one was trained."""
        path = self.file("finetunes", f"{safe_name(name)}.safetensors")
        return path if path.is_file() else None

    def _in_thread(
        self, work: Callable[..., Any], base, data: str | Path, stop: Callable[[], bool] | None, **kwargs: Any
    ) -> Iterator[Any]:
        # A marker left from before this run (Stop pressed when nothing trained) must not stop it. A Stop pressed
        # while a run waits for its slot is the Runs layer's (`Runs.stop`), which never relies on this marker.
        (self.path / _STOP_FILE).unlink(missing_ok=True)
        events: queue.Queue = queue.Queue()
        closed = threading.Event()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["result"] = work(
                    base,
                    data,
                    project=self.file("runs"),
                    progress=events.put,
                    stop=lambda: closed.is_set() or self.stop_requested() or (stop is not None and stop()),
                    **kwargs,
                )
            except BaseException as e:  # re-raised in the consumer's thread below
                outcome["error"] = e
            finally:
                events.put(None)

        thread = threading.Thread(target=run, name=f"train-{self.path.name[:8]}", daemon=True)
        thread.start()
        try:
            while (event := events.get()) is not None:
                self.touch()
                yield event
        finally:
            closed.set()  # the consumer went away (e.g. the browser closed): stop the run at its next batch
        thread.join()
        (self.path / _STOP_FILE).unlink(missing_ok=True)
        if "error" in outcome:
            raise outcome["error"]
        yield outcome["result"]


class JobRoot:
    """The folder holding every session's job, keyed by a hash of the session id so folder names reveal nothing.

    With `served_dir` (the app's outputs in Gradio's cache) and `keys` (the user keys), the sweep removes old served
    outputs and forgotten keys too, and `check_disk` bounds the disk of all of them together (`max_server_mb`).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        max_age_s: float,
        sweep_every_s: float = 60.0,
        served_dir: str | Path | None = None,
        keys: UserKeys | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.max_age_s = max_age_s
        self.sweep_every_s = sweep_every_s
        self.served_dir = Path(served_dir).resolve() if served_dir is not None else None
        self.keys = keys
        self._last_sweep = float("-inf")
        self._lock = threading.Lock()
        self._disk = DiskFigure()

    def job(self, session: str | None) -> Job:
        """The job folder of `session` (created on first use); None gets a fresh, unnamed one."""
        self._maybe_sweep()
        job = Job(self.path_of(session) if session else self.root / uuid.uuid4().hex)
        job.touch()
        return job

    def path_of(self, session: str) -> Path:
        """Where the job of `session` is (or would be); creates nothing."""
        return self.root / hashlib.sha256(session.encode()).hexdigest()[:32]

    def sweep(self, *, now: float | None = None) -> list[Path]:
        """Delete job folders and served output folders unused (not touched) for longer than `max_age_s`, then the
        user keys whose job folder is gone and that were not used for as long; returns what was removed."""
        now = time.time() if now is None else now
        removed = remove_old(self.root, now - self.max_age_s)
        if self.served_dir is not None:
            removed += remove_old(self.served_dir, now - self.max_age_s)
        if self.keys is not None:
            removed += self.keys.sweep(lambda owner: self.path_of(owner).is_dir(), max_age_s=self.max_age_s, now=now)
        if removed:
            LOGGER.info("removed %d job/output folder(s) and key(s) older than %.0fs", len(removed), self.max_age_s)
            self._disk.forget()
        return removed

    def disk_mb(self, *, recount: bool = False) -> float:
        """MiB on disk of every job folder, served output and key together: a figure a few seconds old at most
        (see `headkit.disk.DiskFigure`), or counted now with `recount`."""
        if recount:
            self._disk.forget()
        folders = [self.root, self.served_dir, self.keys.folder if self.keys else None]
        return self._disk.mb([f for f in folders if f is not None])

    def check_disk(self, limits: Limits) -> None:
        """Refuse new work once the whole server's files are over `max_server_mb`; existing files stay.

        Raises:
            LimitExceeded: the server's job folders and served outputs are over the limit.
        """
        limits.check(
            "max_server_mb",
            round(self.disk_mb(), 1),
            "disk taken by every session's files and served outputs on this server, in MiB (try again once old "
            "sessions are swept)",
        )

    def _maybe_sweep(self) -> None:
        with self._lock:
            if time.monotonic() - self._last_sweep < self.sweep_every_s:
                return
            self._last_sweep = time.monotonic()
        self.sweep()
