"""Training progress and cancel: the callbacks every headkit training run attaches to Ultralytics' trainer."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


class TrainingCancelled(RuntimeError):
    """Raised when `stop()` asked for it; no head is produced or written."""


@dataclass(frozen=True)
class TrainProgress:
    """One progress report: `kind` is "batch" (fraction only) or "epoch" (losses and val metrics too)."""

    kind: str
    epoch: int
    epochs: int
    fraction: float
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def attach_callbacks(model, progress: Callable[[TrainProgress], None] | None, stop: Callable[[], bool] | None) -> None:
    """Report batches and epochs to `progress`; raise TrainingCancelled after the batch where `stop()` is True."""
    state = {"batch": 0, "reported": 0}

    def on_epoch_start(trainer):
        state["batch"] = 0

    def on_batch_end(trainer):
        state["batch"] += 1
        if stop is not None and stop():
            raise TrainingCancelled("training stopped on request; no head was saved")
        if progress is not None:
            batches = max(len(trainer.train_loader), 1)
            fraction = (trainer.epoch + state["batch"] / batches) / trainer.epochs
            progress(TrainProgress("batch", trainer.epoch + 1, trainer.epochs, min(fraction, 1.0)))

    def on_fit_epoch_end(trainer):
        if progress is None or trainer.epoch + 1 <= state["reported"] or trainer.epoch >= trainer.epochs:
            return  # the final validation of best.pt reports again, as an extra epoch
        state["reported"] = trainer.epoch + 1
        losses = {k: round(float(v), 4) for k, v in trainer.label_loss_items(trainer.tloss, prefix="train").items()}
        metrics = {k: round(float(v), 4) for k, v in (trainer.metrics or {}).items()}
        fraction = (trainer.epoch + 1) / trainer.epochs
        progress(TrainProgress("epoch", trainer.epoch + 1, trainer.epochs, fraction, losses, metrics))

    model.add_callback("on_train_epoch_start", on_epoch_start)
    model.add_callback("on_train_batch_end", on_batch_end)
    model.add_callback("on_fit_epoch_end", on_fit_epoch_end)


def discard_checkpoints(trainer) -> None:
    """Delete a stopped run's checkpoints (last.pt, best.pt, epoch saves): a stopped run leaves nothing to resume."""
    folder = getattr(trainer, "wdir", None)
    if folder is not None and Path(folder).is_dir():
        shutil.rmtree(folder, ignore_errors=True)
