"""A training run as one object: what to train, one thread, typed events, Stop; and the server's line of runs.

`Runs.start(owner, request, work)` returns a `Run`. Its thread waits in line for the server's training slot (one
training at a time stays the rule), then calls `work(request, stop, report)` — `perform_in_worker` (the server's way:
`perform` in a worker process with hard memory and time caps, `headkit.worker`), `perform` in this process, or the
app's wrapper that runs it inside one `spaces.GPU` call on ZeroGPU — and keeps what it reports. Each result is saved
into the job as it comes and kept as a small record (`SavedHead`, `SavedFineTune`), so a run whose page is gone still
leaves its head, and a finished run holds no model. Any number of followers replay the events from the start, or
from where they reconnect; a follower that goes away leaves the run going. A run always ends with exactly one of
`Finished`, `Stopped` or `Failed`.

Everything a stranger could pile up is bounded (`headkit.Limits`): runs waiting in line (`max_queued_runs`), runs of
one owner (`max_queued_runs_per_client`), the wall time a run trains once it has a slot (`max_train_s`, enforced
between batches), and finished runs kept for reconnecting pages (`max_kept_runs`).
"""

from __future__ import annotations

import contextvars
import copy
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .finetune import finetune, save_finetuned
from .jobs import Job
from .limits import Limits
from .model import load_model
from .progress import TrainingCancelled, TrainProgress
from .settings import current_limits
from .train import TrainResult, default_device, train_head
from .worker import format_duration, run_in_worker

BEFORE_START = "training stopped before it started: Stop was pressed while it waited for the training slot"
ON_REQUEST = "training stopped on request"


@dataclass(frozen=True)
class TrainingRequest:
    """What one run trains: plain data, so it crosses into a `spaces.GPU` process or a DDP worker as it is.

    Attributes:
        base: the base as its owner names it (the app: a key of its base cache); `work` turns it into a model.
        data: the dataset's data.yaml.
        job_dir: the job folder the head (and the fine-tune) are saved into; Ultralytics' runs go to `<job>/runs`.
        name: the head's name in the job (a taken name gets a suffix).
        branch: what the head owns, a `headkit.BRANCH_CHOICES` value or a start layer.
        class_width: the new class branch's hidden width: None (the base's), channels, or "narrow" (`train_head`).
        box_branch: "own", or "shared": the base's where the head reads the base's maps (`train_head`).
        keypoint_trick: train on box centres as keypoints first (see `headkit.posehead`).
        finetune: afterwards, fine-tune the whole model the usual way, for comparison.
        options: further Ultralytics train arguments (e.g. `workers=0` on CPU), as (name, value) pairs.
        gpu_seconds: the duration of the one ZeroGPU call the run may take (0 elsewhere).
    """

    base: str
    data: str
    job_dir: str
    name: str
    epochs: int
    imgsz: int
    batch: int
    branch: str | int = "head"
    class_width: int | str | None = None
    box_branch: str = "own"
    keypoint_trick: bool = False
    finetune: bool = False
    options: tuple[tuple[str, Any], ...] = ()
    gpu_seconds: int = 0


# --- events ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Waiting:
    """The run waits for the training slot; `ahead` runs go first. Reported to followers, never kept."""

    ahead: int


@dataclass(frozen=True)
class SavedHead:
    """The head was saved into the job; what a page shows of it, without its tensors.

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
    """The comparison fine-tune was saved beside the head (its file, val mAP50, wall seconds)."""

    path: Path
    map50: float
    seconds: float


@dataclass(frozen=True)
class Finished:
    """The run did all it was asked."""


@dataclass(frozen=True)
class Stopped:
    """The run ended early: Stop was pressed (waiting or between batches), or it reached `max_train_s`.

    What was saved before (a head, when the fine-tune is what stopped) stays saved.
    """

    message: str


@dataclass(frozen=True)
class Failed:
    """The run raised `error` (kept without its traceback, whose frames would hold the model)."""

    error: BaseException

    @property
    def message(self) -> str:
        return str(self.error)

    def fresh_error(self) -> BaseException:
        """A copy of the error for a follower to raise: raising the kept one would pin the raiser's frames to it."""
        try:
            return copy.copy(self.error)
        except Exception:  # an exception type that cannot be rebuilt from its args
            return RuntimeError(self.message)


Event = Waiting | TrainProgress | SavedHead | SavedFineTune | Finished | Stopped | Failed
# A run's work: (request, stop poll, report) -> None; it reports progress and saved results, and polls `stop` often
Work = Callable[[TrainingRequest, Callable[[], bool], Callable[[Any], None]], None]


# --- the work --------------------------------------------------------------------------------------------------------


def perform(request: TrainingRequest, base, stop: Callable[[], bool], report: Callable[[Any], None]) -> None:
    """Train the head on `base` (a loaded model), save it into the job, then the comparison fine-tune if asked.

    Progress is reported as `TrainProgress` (from Ultralytics' callbacks), each result as its saved record. Besides
    `stop()`, the job's stop marker (`Job.request_stop`) stops the run: it reaches a run in another process.

    Raises:
        TrainingCancelled: a stop was asked for; nothing more is saved.
    """
    job = Job(request.job_dir)
    job.clear_stop()  # a marker from before this run (Stop pressed when nothing trained) must not stop it

    def poll() -> bool:
        return stop() or job.stop_requested()

    def reported(event: Any) -> None:
        job.touch()  # in use: the sweep keeps the job while it trains
        report(event)

    settings = dict(request.options, epochs=request.epochs, imgsz=request.imgsz, batch=request.batch)
    result = train_head(
        base, request.data, project=job.file("runs"), progress=reported, stop=poll,
        keypoint_trick=request.keypoint_trick, branch=request.branch, class_width=request.class_width,
        box_branch=request.box_branch, **settings,
    )  # fmt: skip
    path = job.save_head(result.head, request.name)
    record = SavedHead.of(result, path, finetune_next=request.finetune)
    del result  # the head's tensors go now, not when the run ends
    reported(record)
    if request.finetune:  # the usual way, for Compare: every layer, the new classes only
        settings.setdefault("device", default_device())
        tuned = finetune(base, request.data, project=job.file("runs"), progress=reported, stop=poll, **settings)
        saved = SavedFineTune(save_finetuned(tuned.model, job.finetune_path(path.stem)), tuned.map50, tuned.seconds)
        del tuned
        reported(saved)


def perform_in_worker(
    request: TrainingRequest,
    stop: Callable[[], bool],
    report: Callable[[Any], None],
    *,
    limits: Limits | None = None,
    load: Callable[[str], Any] = load_model,
) -> None:
    """`perform` in a worker process (`headkit.worker`), as a run's work: what training costs stays in the worker.

    The worker loads the base itself, `load(request.base)` (a path, a bare name or `hf://`: what `load_model` takes),
    trains and saves into the job; its events come to `report` here, in order. Stop reaches it through the job's
    stop marker, written here while `stop()` is True (so `max_train_s` stops it too). The worker is killed past
    `max_worker_mb` of memory, or `max_worker_s` after `max_train_s` (by which it should have stopped itself between
    batches). Its memory, allocator arenas and threads go with it: the server's memory does not grow run by run.

    Raises:
        TrainingCancelled: a stop was asked for; nothing more is saved.
        WorkerLimitExceeded: the worker went over `max_worker_mb` or its wall time and was killed.
        WorkerCrashed: the worker died otherwise.
    """
    limits = current_limits() if limits is None else limits
    job = Job(request.job_dir)
    job.clear_stop()  # a marker from before this run must not stop it

    def pass_stop_on() -> None:
        if stop() and not job.stop_requested():  # again if the worker cleared it at its start
            job.request_stop()

    try:
        run_in_worker(
            _perform_loaded, request, load, task="training", limits=limits,
            advice="train at a smaller image size or batch, or without the comparison fine-tune",
            seconds=limits.max_train_s + limits.max_worker_s, events=report, tick=pass_stop_on,
        )  # fmt: skip
    finally:
        job.clear_stop()


def _perform_loaded(request: TrainingRequest, load: Callable[[str], Any], report: Callable[[Any], None]) -> None:
    """`perform_in_worker`'s work, in the worker: Stop comes through the job's marker, which `perform` polls."""
    perform(request, load(request.base), lambda: False, report)


def streamed(request: TrainingRequest, base) -> Iterator[Any]:
    """`perform`'s events as a generator, for a caller that must yield them (a `spaces.GPU` call streams what its
    function yields back to the app). Stop reaches it through the job's stop marker; a consumer that goes away
    (`close()`) stops it after the current batch, and `close()` returns once it has stopped.

    Raises:
        TrainingCancelled: a stop was asked for.
    """
    events: queue.Queue = queue.Queue()
    closed = threading.Event()
    outcome: dict[str, BaseException] = {}
    done = object()  # what the worker puts last

    def run() -> None:
        try:
            perform(request, base, closed.is_set, events.put)
        except BaseException as e:  # re-raised in the consumer's thread below
            outcome["error"] = e
        finally:
            events.put(done)

    thread = threading.Thread(target=run, name="training-stream", daemon=True)
    thread.start()
    try:
        while (event := events.get()) is not done:
            yield event
    finally:
        closed.set()  # the consumer went away: stop at the next batch, and wait for that
        thread.join()
    if "error" in outcome:
        raise outcome["error"]


# --- the run ---------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One training run: its request, its kept events, its state, and Stop.

    Batch progress is transient: only the latest batch report is kept, so a run's memory grows with its epochs, not
    its batches.
    """

    request: TrainingRequest | None = None
    events: list[Any] = field(default_factory=list)
    state: str = "waiting"  # waiting, running, finished, stopped, failed
    ahead: int = 0  # runs before this one in the line while waiting
    limit_s: float = float("inf")  # wall time it may train once it has a slot
    started_at: float | None = None  # time.monotonic() when it got a slot
    ended_at: float | None = None
    changed: threading.Condition = field(default_factory=threading.Condition)
    _latest: Any = None  # the latest transient event, if no kept event came after it
    _version: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _timed_out: bool = False
    _leave_line: Callable[[Run], bool] | None = None  # set by Runs: takes a waiting run out of the line

    @property
    def ended(self) -> bool:
        return self.state in ("finished", "stopped", "failed")

    @property
    def outcome(self) -> Finished | Stopped | Failed | None:
        """The run's last event once it ended, else None."""
        return self.events[-1] if self.ended else None

    def follow(self, start: int = 0, *, poll_s: float = 1.0) -> Iterator[Event]:
        """The events from index `start` on, as they come, ending with the run's `Finished`, `Stopped` or `Failed`;
        while the run waits in line, `Waiting` now and then."""
        index, seen = start, -1
        while True:
            with self.changed:
                while index >= len(self.events) and not self._unseen(seen) and not self.ended:
                    if not self.changed.wait(timeout=poll_s) and self.state == "waiting":
                        break
                fresh = self.events[index:]
                latest = self._latest if self._unseen(seen) else None
                seen, ended, waiting, ahead = self._version, self.ended, self.state == "waiting", self.ahead
            yield from fresh
            index += len(fresh)
            if latest is not None:
                yield latest
            if ended:
                return
            if waiting and not fresh:
                yield Waiting(ahead)

    def stop(self) -> str | None:
        """Stop the run: a waiting one leaves the line at once and never trains, a running one stops after its
        current batch. Returns the state it was in ("waiting", "running"), or None when it had already ended."""
        with self.changed:
            state = None if self.ended else self.state
        if state == "waiting" and self._leave_line is not None and self._leave_line(self):
            return state
        if state is not None:
            self._stop.set()
        return state

    def should_stop(self) -> bool:
        """The work's poll after each batch: Stop was pressed, or the run has trained `limit_s` seconds."""
        if self.started_at is not None and time.monotonic() - self.started_at > self.limit_s:
            self._timed_out = True
            self._stop.set()
        return self._stop.is_set()

    def _unseen(self, version: int) -> bool:
        return self._latest is not None and self._version != version

    def _add(self, event: Any) -> None:
        with self.changed:
            if isinstance(event, TrainProgress) and event.stage == "batch":
                self._latest = event
            else:
                self.events.append(event)
                self._latest = None
            self._version += 1
            self.changed.notify_all()

    def _start(self) -> None:
        with self.changed:
            self.state, self.started_at = "running", time.monotonic()
            self._version += 1
            self.changed.notify_all()

    def _end(self, outcome: Finished | Stopped | Failed) -> None:
        with self.changed:
            self.events.append(outcome)
            self._latest = None
            self.state = {Finished: "finished", Stopped: "stopped", Failed: "failed"}[type(outcome)]
            self.ended_at = time.monotonic()
            self._version += 1
            self.changed.notify_all()

    def _outcome_of(self, error: BaseException) -> Stopped | Failed:
        if not isinstance(error, TrainingCancelled):
            return Failed(_detached(error))
        if self._timed_out:
            return Stopped(
                f"training stopped at the time limit of {format_duration(self.limit_s)} of training since the run got the "
                "training slot (max_train_s); raise HEADKIT_MAX_TRAIN_S on the server, or train fewer epochs, a "
                "smaller image size or fewer images"
            )
        return Stopped(ON_REQUEST)


def _detached(error: BaseException) -> BaseException:
    """The error without tracebacks: their frames would keep the model, trainer and optimizer alive."""
    seen: BaseException | None = error
    while seen is not None:
        seen.__traceback__ = None
        seen = seen.__cause__ or seen.__context__
    return error


class Runs:
    """The server's runs by owner (a job folder), each in its own thread, waiting their turn, in order, for `slots`."""

    def __init__(self, slots: int = 1, *, limits: Limits | None = None) -> None:
        self.slots = slots
        self.limits = limits or Limits()
        self._runs: list[tuple[str, Run]] = []  # (owner, run), oldest first: unended and kept ended runs
        self._line: list[Run] = []  # waiting and running runs, in order
        self._turn = threading.Condition()  # guards both lists

    def get(self, owner: str | Path) -> Run | None:
        """The owner's latest run (None when it has none, or its run was dropped to keep `max_kept_runs`)."""
        with self._turn:
            return next((run for who, run in reversed(self._runs) if who == str(owner)), None)

    def admit(self, owner: str | Path) -> None:
        """Refuse a new run for `owner` now if `start` would (call it before costly preparation).

        Raises:
            LimitExceeded: the owner has `max_queued_runs_per_client` runs, or `max_queued_runs` runs are waiting.
        """
        with self._turn:
            self._admit(str(owner))

    def start(self, owner: str | Path, request: TrainingRequest | None, work: Work) -> Run:
        """Start a run of `work(request, stop, report)` in a thread once a slot is free; it stops at
        `max_train_s` seconds after it got its slot (`stop()` turns True). The thread runs in a copy of the caller's
        context (contextvars), so a `spaces.GPU` call inside it still knows the request that started it.

        Raises:
            LimitExceeded: the owner has `max_queued_runs_per_client` runs, or `max_queued_runs` runs are waiting.
        """
        with self._turn:
            self._admit(str(owner))
            run = Run(request, limit_s=self.limits.max_train_s, _leave_line=self._leave_line)
            self._runs.append((str(owner), run))
            self._line.append(run)
            self._renumber()
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(self._run, run, work), name="training-run", daemon=True)
        thread.start()
        return run

    def stop(self, owner: str | Path) -> list[str]:
        """Stop the owner's unended runs (see `Run.stop`); returns the states they were in, empty when none."""
        with self._turn:
            mine = [run for who, run in self._runs if who == str(owner) and not run.ended]
        return [state for run in mine if (state := run.stop())]

    def _leave_line(self, run: Run) -> bool:
        with self._turn:
            if run.state != "waiting" or run not in self._line:
                return False
            self._line.remove(run)
            run._end(Stopped(BEFORE_START))
            self._renumber()
            self._prune()
            self._turn.notify_all()
            return True

    def _admit(self, owner: str) -> None:
        mine = sum(who == owner and not run.ended for who, run in self._runs)
        self.limits.check(
            "max_queued_runs_per_client",
            mine + 1,
            "training runs of yours waiting or running at once (stop yours or wait for it to end first)",
        )
        waiting = sum(run.state == "waiting" for run in self._line)
        would_wait = len(self._line) - waiting >= self.slots
        self.limits.check(
            "max_queued_runs",
            waiting + would_wait,
            "training runs waiting for the training slot, all users together (try again once the line is shorter)",
        )

    def _renumber(self) -> None:
        running = sum(r.state == "running" for r in self._line)
        for ahead, waiting in enumerate(r for r in self._line if r.state == "waiting"):
            with waiting.changed:
                waiting.ahead = ahead + running
                waiting._version += 1
                waiting.changed.notify_all()

    def _turn_of(self, run: Run) -> bool:
        running = sum(r.state == "running" for r in self._line)
        first_waiting = next((r for r in self._line if r.state == "waiting"), None)
        return running < self.slots and first_waiting is run

    def _run(self, run: Run, work: Work) -> None:
        with self._turn:
            while not run.ended and not self._turn_of(run):
                self._turn.wait()
            if run.ended:  # stopped while it waited: already out of the line
                return
            run._start()
            self._renumber()
        try:
            work(run.request, run.should_stop, run._add)
            outcome: Finished | Stopped | Failed = Finished()
        except BaseException as e:  # kept for the followers, who show it
            outcome = run._outcome_of(e)
        finally:
            with self._turn:
                self._line.remove(run)
        run._end(outcome)
        with self._turn:
            self._renumber()
            self._prune()
            self._turn.notify_all()

    def _prune(self) -> None:
        """Drop ended runs a newer run of their owner hides, then the oldest beyond `max_kept_runs`."""
        latest = {who: run for who, run in self._runs}
        self._runs = [(who, run) for who, run in self._runs if not run.ended or latest[who] is run]
        done = sorted((run.ended_at, id(run)) for _, run in self._runs if run.ended)
        dropped = {key for _, key in done[: max(len(done) - self.limits.max_kept_runs, 0)]}
        self._runs = [(who, run) for who, run in self._runs if id(run) not in dropped]


def stopped_stage(run: Run) -> str | None:
    """Where a run that ended `Stopped` was when it stopped: "waiting" (it never trained: Stop took it out of the
    line), "head" (nothing was saved) or "fine-tune" (its head is saved; the comparison fine-tune stopped).
    None when the run has not stopped."""
    if not isinstance(run.outcome, Stopped):
        return None
    if run.started_at is None:
        return "waiting"
    return "fine-tune" if any(isinstance(event, SavedHead) for event in run.events) else "head"
