"""Training runs that outlive the page that started them (found again by a user key, `headkit.keys`).

A run is a thread that consumes a job's training events (progress, the saved head, a comparison fine-tune) and keeps
them; any number of requests may follow it, from the start or from where they reconnect, and a follower that goes away
(a closed page, a dropped script) leaves the run going. Runs wait for the server's training slots in order, so one
training at a time stays the rule; a waiting run says how many are ahead of it.

Everything a stranger could pile up is bounded (`headkit.Limits`): runs waiting in line (`max_queued_runs`), runs of
one owner (`max_queued_runs_per_client`), the wall time a run trains once it has a slot (`max_train_s`, enforced
between batches), and finished runs kept for reconnecting pages (`max_kept_runs`), which hold small records only.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .finetune import FineTuneResult
from .limits import Limits
from .progress import TrainingCancelled, TrainProgress
from .train import TrainResult

# A run's work: given the poll that says "stop after this batch", it yields the run's events
Work = Callable[[Callable[[], bool]], Iterator[Any]]
BEFORE_START = "training stopped before it started: Stop was pressed while it waited for the training slot"


class RunStopped(TrainingCancelled):
    """A run the server ended early: stopped while waiting, or at the time limit (the message says which)."""


@dataclass(frozen=True)
class SavedHead:
    """Training event: the head was saved into the job; what a page shows of it, without its tensors.

    Attributes:
        path: the head file in the job folder.
        names: the head's classes by index.
        metrics: val P, R, mAP50, mAP50-95 per class name (and "all").
        plots: Ultralytics' result plots (PNG) in the job folder.
        seconds: wall time of the head's training.
        summary: `TrainResult.to_dict()` without the server's run folder (trunk check, branch kind, ...).
        finetune_next: a comparison fine-tune follows.
    """

    path: Path
    names: dict[int, str]
    metrics: dict[str, dict[str, float]]
    plots: tuple[Path, ...]
    seconds: float
    summary: dict[str, Any]
    finetune_next: bool

    @classmethod
    def of(cls, result: TrainResult, path: Path, *, finetune_next: bool) -> SavedHead:
        summary = copy.deepcopy({k: v for k, v in result.to_dict().items() if k != "run_dir"})
        metrics = copy.deepcopy(result.metrics)
        return cls(Path(path), dict(result.head.names), metrics, tuple(result.plots()), result.seconds, summary,
                   finetune_next)  # fmt: skip


@dataclass(frozen=True)
class SavedFineTune:
    """Training event: the comparison fine-tune was saved beside the head (its file, val mAP50, wall seconds)."""

    path: Path
    map50: float
    seconds: float


def saved(job, name: str, events: Iterable[Any], *, finetune_next: bool) -> Iterator[Any]:
    """`events` with each result saved into `job` (a `headkit.Job`) and replaced by its record, so a run keeps no
    model: TrainResult → SavedHead, FineTuneResult → SavedFineTune; progress passes through."""
    head_path = None
    for event in events:
        if isinstance(event, TrainResult):
            head_path = job.save_head(event.head, name)
            record = SavedHead.of(event, head_path, finetune_next=finetune_next)
        elif isinstance(event, FineTuneResult):
            record = SavedFineTune(job.save_finetuned(event.model, head_path.stem), event.map50, event.seconds)
        else:
            record = event
        del event  # the model goes now, not when the next event comes
        yield record


@dataclass
class Run:
    """One training run's kept events, its state and, when it ended badly, its error (without its traceback).

    Batch progress is transient: only the latest one is kept, so a run's memory grows with its epochs, not batches.
    """

    events: list[Any] = field(default_factory=list)
    state: str = "waiting"  # waiting, running, done, failed
    error: BaseException | None = None
    ahead: int = 0  # runs before this one in the queue while waiting
    limit_s: float = float("inf")  # wall time it may train once it has a slot
    started_at: float | None = None  # time.monotonic() when it got a slot
    ended_at: float | None = None
    changed: threading.Condition = field(default_factory=threading.Condition)
    _latest: Any = None  # the latest transient event, if no kept event came after it
    _version: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _timed_out: bool = False

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed")

    def follow(self, start: int = 0, *, poll_s: float = 1.0) -> Iterator[tuple[int, Any]]:
        """(index, event) from `start` on, as they come, until the run ends; None events report waiting in line."""
        index, seen = start, -1
        while True:
            with self.changed:
                while index >= len(self.events) and not self._unseen(seen) and not self.finished:
                    if not self.changed.wait(timeout=poll_s) and self.state == "waiting":
                        break
                fresh = self.events[index:]
                latest = self._latest if self._unseen(seen) else None
                seen, finished, waiting = self._version, self.finished, self.state == "waiting"
            for event in fresh:
                yield index, event
                index += 1
            if latest is not None:
                yield index, latest
            if finished:
                return
            if waiting and not fresh:
                yield index, None

    def _unseen(self, version: int) -> bool:
        """A transient event newer than `version` waits to be reported."""
        return self._latest is not None and self._version != version

    def should_stop(self) -> bool:
        """The work's poll after each batch: Stop was pressed, or the run has trained `limit_s` seconds."""
        if self.started_at is not None and time.monotonic() - self.started_at > self.limit_s:
            self._timed_out = True
            self._stop.set()
        return self._stop.is_set()

    def raise_error(self) -> None:
        """Raise a copy of the run's error, if it failed (each follower gets its own, holding no frames)."""
        if self.error is None:
            return
        try:
            error = copy.copy(self.error)
        except Exception:  # an exception type that cannot be rebuilt from its args
            error = RuntimeError(str(self.error))
        raise error

    def _add(self, event: Any) -> None:
        with self.changed:
            if isinstance(event, TrainProgress) and event.stage == "batch":
                self._latest = event
            else:
                self.events.append(event)
                self._latest = None
            self._version += 1
            self.changed.notify_all()

    def _set(self, state: str, error: BaseException | None = None) -> None:
        with self.changed:
            self.state, self.error = state, _detached(error)
            if state == "running":
                self.started_at = time.monotonic()
            if self.finished:
                self.ended_at = time.monotonic()
            self._version += 1
            self.changed.notify_all()


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 60:.3g} min" if seconds >= 60 else f"{seconds:.3g} s"


def _detached(error: BaseException | None) -> BaseException | None:
    """The error without tracebacks: their frames would keep the model, trainer and optimizer alive."""
    seen = error
    while seen is not None:
        seen.__traceback__ = None
        seen = seen.__cause__ or seen.__context__
    return error


class Runs:
    """The server's runs by owner (a job folder), started in threads that wait their turn, in order, for `slots`."""

    def __init__(self, slots: int = 1, *, limits: Limits | None = None) -> None:
        self.slots = slots
        self.limits = limits or Limits()
        self._runs: list[tuple[str, Run]] = []  # (owner, run), oldest first: unfinished and kept finished runs
        self._line: list[Run] = []  # waiting and running runs, in order
        self._turn = threading.Condition()  # guards both lists

    def get(self, owner: str | Path) -> Run | None:
        """The owner's latest run (None when it has none, or its run was dropped to keep `max_kept_runs`)."""
        with self._turn:
            return next((run for who, run in reversed(self._runs) if who == str(owner)), None)

    def admit(self, owner: str | Path, limits: Limits | None = None) -> None:
        """Refuse a new run for `owner` now if it would be refused by `start` (call before costly preparation).

        Raises:
            LimitExceeded: the owner has `max_queued_runs_per_client` runs, or `max_queued_runs` runs are waiting.
        """
        with self._turn:
            self._admit(str(owner), limits or self.limits)

    def start(self, owner: str | Path, work: Work, *, limits: Limits | None = None) -> Run:
        """Start `work(stop)` (an event iterator polling `stop()` after each batch) in a thread once a slot is free.

        The run stops at `limits.max_train_s` seconds after it got its slot (`stop()` turns True).

        Raises:
            LimitExceeded: the owner has `max_queued_runs_per_client` runs, or `max_queued_runs` runs are waiting.
        """
        self.limits = limits or self.limits
        with self._turn:
            self._admit(str(owner), self.limits)
            run = Run(limit_s=self.limits.max_train_s)
            self._runs.append((str(owner), run))
            self._line.append(run)
            self._renumber()
        threading.Thread(target=self._run, args=(run, work), name="training-run", daemon=True).start()
        return run

    def stop(self, owner: str | Path) -> list[str]:
        """Stop the owner's unfinished runs: a waiting one leaves the line at once and never trains, a running one
        stops after its current batch. Returns the states they were in ("waiting", "running"); empty: none."""
        with self._turn:
            mine = [run for who, run in self._runs if who == str(owner) and not run.finished]
            states = [run.state for run in mine]
            for run in mine:
                if run.state == "waiting":
                    self._line.remove(run)
                    run._set("failed", RunStopped(BEFORE_START))
                else:
                    run._stop.set()
            self._renumber()
            self._prune()
            self._turn.notify_all()
        return states

    def _admit(self, owner: str, limits: Limits) -> None:
        mine = sum(who == owner and not run.finished for who, run in self._runs)
        limits.check(
            "max_queued_runs_per_client",
            mine + 1,
            "training runs of yours waiting or running at once (stop yours or wait for it to end first)",
        )
        waiting = sum(run.state == "waiting" for run in self._line)
        would_wait = len(self._line) - waiting >= self.slots
        limits.check(
            "max_queued_runs",
            waiting + would_wait,
            "training runs waiting for the training slot, all users together (try again once the line is shorter)",
        )

    def _renumber(self) -> None:
        running = sum(r.state == "running" for r in self._line)
        for ahead, waiting in enumerate(r for r in self._line if r.state == "waiting"):
            with waiting.changed:
                waiting.ahead = ahead + running
                waiting.changed.notify_all()

    def _turn_of(self, run: Run) -> bool:
        running = sum(r.state == "running" for r in self._line)
        first_waiting = next((r for r in self._line if r.state == "waiting"), None)
        return running < self.slots and first_waiting is run

    def _run(self, run: Run, work: Work) -> None:
        with self._turn:
            while not run.finished and not self._turn_of(run):
                self._turn.wait()
            if run.finished:  # stopped while it waited: already out of the line
                return
            run._set("running")
            self._renumber()
        try:
            for event in work(run.should_stop):
                run._add(event)
            run._set("done")
        except BaseException as e:  # kept for the followers, who report it
            run._set("failed", self._stopped_by_time(run, e))
        finally:
            with self._turn:
                self._line.remove(run)
                self._renumber()
                self._prune()
                self._turn.notify_all()

    @staticmethod
    def _stopped_by_time(run: Run, error: BaseException) -> BaseException:
        if not (run._timed_out and isinstance(error, TrainingCancelled)):
            return error
        return RunStopped(
            f"training stopped at the time limit of {_duration(run.limit_s)} of training since the run got the "
            "training slot (max_train_s); raise HEADKIT_MAX_TRAIN_S on the server, or train fewer epochs, a smaller "
            "image size or fewer images"
        )

    def _prune(self) -> None:
        """Drop finished runs a newer run of their owner hides, then the oldest beyond `max_kept_runs`."""
        latest = {who: run for who, run in self._runs}
        self._runs = [(who, run) for who, run in self._runs if not run.finished or latest[who] is run]
        done = sorted((run.ended_at, id(run)) for _, run in self._runs if run.finished)
        dropped = {key for _, key in done[: max(len(done) - self.limits.max_kept_runs, 0)]}
        self._runs = [(who, run) for who, run in self._runs if id(run) not in dropped]
