"""Per-session job folders (storage only): each browser or API session works in its own folder, confined, and removed
when old. Training lives in `headkit.runs`; a job only keeps what runs save."""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from .disk import DiskBudget, remove_old
from .filenames import safe_name
from .limits import Limits

if TYPE_CHECKING:
    from .headfile import Head
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
        """Ask this session's running training to stop after its current batch (a file: it reaches a run in another
        process, e.g. inside a ZeroGPU call)."""
        self.file(_STOP_FILE).touch()

    def stop_requested(self) -> bool:
        return (self.path / _STOP_FILE).exists()

    def clear_stop(self) -> None:
        (self.path / _STOP_FILE).unlink(missing_ok=True)

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

    def finetune_path(self, name: str) -> Path:
        """Where the comparison fine-tune of this session's head `name` is kept (safetensors, never a pickle)."""
        return self.file("finetunes", f"{safe_name(name)}.safetensors")

    def finetuned(self, name: str) -> Path | None:
        """The fine-tuned model kept for this session's head `name`, if one was trained."""
        path = self.finetune_path(name)
        return path if path.is_file() else None


class JobRoot:
    """The folder holding every session's job, keyed by a hash of the session id so folder names reveal nothing.

    With `served_dir` (the app's outputs in Gradio's cache) and `keys` (the user keys), the sweep removes old served
    outputs and forgotten keys too, and `check_disk` bounds the disk of all of them together (`max_server_mb`),
    reservations included: `budget` is the one `DiskBudget` of these folders that uploads reserve in.
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
            self.budget(Limits()).forget()  # the limit plays no part in forgetting the count
        return removed

    def budget(self, limits: Limits) -> DiskBudget:
        """The server's disk budget under `limits.max_server_mb`: every job folder, served output and key, and what
        uploads have reserved (its ledger is `root/.disk-ledger.json`, shared by the server's processes)."""
        also = [self.served_dir, self.keys.folder if self.keys else None]
        return DiskBudget.under(self.root, limits=limits, also=tuple(f for f in also if f is not None))

    def disk_mb(self, *, recount: bool = False) -> float:
        """MiB on disk of every job folder, served output and key together, plus what uploads have reserved: a count
        a few seconds old at most (see `headkit.disk.DiskBudget`), or counted now with `recount`."""
        budget = self.budget(Limits())
        if recount:
            budget.forget()
        return budget.used_mb()

    def check_disk(self, limits: Limits) -> None:
        """Refuse new work once the whole server's files and reservations are over `max_server_mb`; existing files
        stay.

        Raises:
            LimitExceeded: the server's job folders, served outputs and reservations are over the limit.
        """
        self.budget(limits).check("new work beside every session's files and served outputs")

    def new_output_folder(self, limits: Limits) -> Path:
        """A new folder under `served_dir` for new outputs (each call its own: identical outputs never share a file),
        refused when the server's disk is full.

        Raises:
            LimitExceeded: over `max_server_mb`.
        """
        self.check_disk(limits)
        folder = self._served() / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder

    def serve(self, path: Path) -> Path:
        """A copy of a job's file under `served_dir`, for a download or a gallery: one copy per version of the file,
        so replaying a run (a reopened page) again and again adds nothing to the disk."""
        stat = path.stat()
        version = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:32]
        target = self._served() / version / path.name
        if target.is_file():
            target.parent.touch()  # in use: the sweep keeps it
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        return target

    def _served(self) -> Path:
        if self.served_dir is None:
            raise ValueError("this JobRoot serves no outputs: give it a served_dir")
        return self.served_dir

    def _maybe_sweep(self) -> None:
        with self._lock:
            if time.monotonic() - self._last_sweep < self.sweep_every_s:
                return
            self._last_sweep = time.monotonic()
        self.sweep()
