"""Training progress and cancel: the callbacks every headkit training run attaches to Ultralytics' trainer.

The callbacks hold no queue, lock or closure: they report through the run folder (`headkit.runfiles`), so Ultralytics
can cloudpickle them into its multi-GPU workers and they work there as in this process. `train_reporting` runs the
training and follows the folder from this process: it hands each record to `progress` and turns `stop()` into the
folder's STOP file.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ultralytics.utils import RANK

from .runfiles import START, RunFiles

POLL_S = 0.1  # how often the follower reads the run folder and polls `stop()`


class TrainingCancelled(RuntimeError):
    """Raised when `stop()` asked for it; no head is produced or written."""


@dataclass(frozen=True)
class TrainProgress:
    """One progress report: `stage` is "batch" (fraction only) or "epoch" (losses and val metrics too)."""

    stage: str
    epoch: int
    epochs: int
    fraction: float
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def per_class_metrics(validator) -> dict[str, dict[str, float]]:
    """Per-class box P, R, mAP50, mAP50-95 from the validator's last run, plus "all"."""
    metrics = validator.metrics.box  # a pose validator adds keypoint metrics beside the box ones
    table = {}
    for i, class_index in enumerate(metrics.ap_class_index):
        p, r, map50, map5095 = metrics.class_result(i)
        table[validator.names[int(class_index)]] = {"P": p, "R": r, "mAP50": map50, "mAP50-95": map5095}
    p, r, map50, map5095 = metrics.mean_results()
    table["all"] = {"P": p, "R": r, "mAP50": map50, "mAP50-95": map5095}
    return {name: {k: round(float(v), 4) for k, v in row.items()} for name, row in table.items()}


class RunReporter:
    """Ultralytics callbacks (its bound methods) that report to and take Stop from `trainer.save_dir`.

    Holds two counters and nothing else, so it pickles; every rank checks Stop, rank 0 alone writes.
    """

    def __init__(self) -> None:
        self.batch = 0
        self.reported = 0

    def on_train_epoch_start(self, trainer) -> None:
        self.batch = 0

    def on_train_batch_end(self, trainer) -> None:
        self.batch += 1
        files = RunFiles(Path(trainer.save_dir))
        if files.stop_requested():
            raise TrainingCancelled("training stopped on request; no head was saved")
        if RANK in {-1, 0}:
            fraction = (trainer.epoch + self.batch / max(len(trainer.train_loader), 1)) / trainer.epochs
            files.append(asdict(TrainProgress("batch", trainer.epoch + 1, trainer.epochs, min(fraction, 1.0))))

    def on_fit_epoch_end(self, trainer) -> None:
        if RANK not in {-1, 0} or trainer.epoch + 1 <= self.reported or trainer.epoch >= trainer.epochs:
            return  # the final validation of best.pt reports again, as an extra epoch
        self.reported = trainer.epoch + 1
        losses = {k: round(float(v), 4) for k, v in trainer.label_loss_items(trainer.tloss, prefix="train").items()}
        metrics = {k: round(float(v), 4) for k, v in (trainer.metrics or {}).items()}
        fraction = (trainer.epoch + 1) / trainer.epochs
        report = TrainProgress("epoch", trainer.epoch + 1, trainer.epochs, fraction, losses, metrics)
        RunFiles(Path(trainer.save_dir)).append(asdict(report))

    def on_train_end(self, trainer) -> None:
        # Ultralytics runs this on rank 0 after validating best.pt: the metrics headkit keeps with the head
        RunFiles(Path(trainer.save_dir)).write_metrics(per_class_metrics(trainer.validator))


def attach_callbacks(model) -> RunReporter:
    """Attach a RunReporter's callbacks to `model` (they reach the trainer, and DDP workers, through it)."""
    reporter = RunReporter()
    for event in ("on_train_epoch_start", "on_train_batch_end", "on_fit_epoch_end", "on_train_end"):
        model.add_callback(event, getattr(reporter, event))
    return reporter


class _Follower(threading.Thread):
    """Reads the run's progress records into `progress` and writes STOP once `stop()` is True, until finished."""

    def __init__(self, files: RunFiles, progress: Callable[[TrainProgress], None] | None, stop) -> None:
        super().__init__(name=f"follow-{files.folder.name}", daemon=True)
        self.files, self.progress, self.stop = files, progress, stop
        self.cursor = START
        self.stopped = False
        self.error: BaseException | None = None
        self._done = threading.Event()

    def poll(self) -> None:
        try:
            if self.stop is not None and self.stop():
                self.stopped = True
            if self.stopped and not self.files.stop_requested():  # again if DDP's launch emptied the folder
                self.files.request_stop()
            records, self.cursor = self.files.read(self.cursor)
            for record in records:
                if self.progress is not None and self.error is None:
                    self.progress(TrainProgress(**record))
        except Exception as e:  # re-raised by train_reporting in the caller's thread; the run is stopped
            self.error = e
            self.stopped = True

    def run(self) -> None:
        while not self._done.wait(POLL_S):
            self.poll()

    def finish(self) -> None:
        """Stop following and deliver what is left."""
        self._done.set()
        if self.is_alive():
            self.join()
        self.poll()


def train_reporting(
    model,
    settings: dict[str, Any],
    progress: Callable[[TrainProgress], None] | None,
    stop: Callable[[], bool] | None,
) -> Path:
    """`model.train(**settings)` in this process or Ultralytics' DDP workers, with progress and Stop via the run folder.

    The run folder is `<project>/<name>` (`exist_ok` is forced on, so this process knows it before Ultralytics does).
    `progress` is called from a follower thread, in order, all records delivered before this returns; `stop` is
    polled every POLL_S seconds and once before the start.

    Returns:
        The run folder (weights/best.pt, results.csv, the final metrics).

    Raises:
        TrainingCancelled: a stop was asked for (`stop()`, or anyone writing `<run>/STOP`); the checkpoints are deleted.
    """
    if not settings.get("project") or not settings.get("name"):
        raise ValueError("train_reporting needs `project` and `name` in the settings: they name the run folder")
    folder = Path(settings["project"]).resolve() / str(settings["name"])
    settings = {**settings, "project": str(folder.parent), "exist_ok": True}
    files = RunFiles(folder)
    files.reset()
    attach_callbacks(model)
    follower = _Follower(files, progress, stop)
    follower.poll()  # a stop asked before the start stops the run at its first batch
    follower.start()
    try:
        model.train(**settings)
    except BaseException as e:
        follower.finish()
        if not (isinstance(e, TrainingCancelled) or follower.stopped or files.stop_requested()):
            raise
        discard_checkpoints(folder)
        files.clear_stop()
        if follower.error is not None:
            raise follower.error from e
        if isinstance(e, TrainingCancelled):
            raise
        # in DDP the workers' TrainingCancelled reaches this process as a failed launch
        raise TrainingCancelled("training stopped on request; no head was saved") from e
    follower.finish()
    files.clear_stop()
    if follower.error is not None:  # raised after the last batch had run: the run finished regardless
        raise follower.error
    return folder


def discard_checkpoints(run_dir: str | Path) -> None:
    """Delete a stopped run's checkpoints (last.pt, best.pt, epoch saves): a stopped run leaves nothing to resume."""
    folder = Path(run_dir) / "weights"
    if folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
