"""How long a training run will take, whether the server allows it, and whether it fits one ZeroGPU call.

The estimate is arithmetic over a measured (CPU) or assumed (GPU) time per image, so users see it before they start,
and a run the server would stop at `max_train_s` is refused before its dataset is trained on.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass, replace

import torch

from .limits import Limits
from .trunk import base_facts

TRAIN_FACTOR = 2.0  # a training step (augment, forward, head backward, optimiser) ≈ 2 forward passes of the base
OVERHEAD_S = 15.0  # dataset scan, model setup, final validation and plots
GPU_SECONDS_PER_IMAGE_640 = 0.01  # one image through a small YOLO at 640 px on a data-centre GPU, batched
MARGIN = 1.25  # ZeroGPU calls are asked for this much more than the estimate, so a slow epoch is not cut off
# Measured on the plates (benchmarks/head_vs_finetune.py, 10 epochs at 320 px, CPU): the full fine-tune took 704 s
# where the head alone took 335 s; a comparison fine-tune is estimated at the head's time times this factor.
COST_VS_HEAD = 2.1
TOO_LONG_ADVICE = (
    "lower the epochs, the image size or the number of images, or duplicate this Space on faster hardware and raise "
    "HEADKIT_MAX_TRAIN_S"
)


@dataclass(frozen=True)
class TrainingEstimate:
    """Expected wall time of one training job."""

    seconds: float
    per_epoch_s: float
    epochs: int
    device: str

    def describe(self) -> str:
        return (
            f"about {_duration(self.seconds)} on {self.device.upper()} "
            f"({self.epochs} epoch(s) × ~{_duration(self.per_epoch_s)}, plus setup and final validation)"
        )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


@functools.lru_cache(maxsize=16)
def _forward_seconds(model, imgsz: int) -> float:
    net = base_facts(model).inner
    parameter = next(net.parameters())
    x = torch.zeros(1, 3, imgsz, imgsz, dtype=parameter.dtype, device=parameter.device)
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            net(x)  # warm-up: the first call allocates
            started = time.perf_counter()
            net(x)
            return time.perf_counter() - started
    finally:
        net.train(was_training)


def seconds_per_image(base, imgsz: int, *, device: str = "cpu") -> float:
    """One image's forward time through `base` at `imgsz`: measured once on CPU, assumed on a GPU."""
    if device != "cpu":
        return GPU_SECONDS_PER_IMAGE_640 * (imgsz / 640) ** 2
    return _forward_seconds(base, int(imgsz))


def estimate_training(
    train_images: int, val_images: int, *, epochs: int, seconds_per_image: float, device: str = "cpu"
) -> TrainingEstimate:
    """Wall time of `epochs` over the splits: train images cost TRAIN_FACTOR forward passes, val images one."""
    if epochs < 1 or train_images < 1:
        raise ValueError(f"expected at least 1 epoch and 1 train image, got {epochs} epoch(s), {train_images} image(s)")
    per_epoch = seconds_per_image * (TRAIN_FACTOR * train_images + val_images)
    return TrainingEstimate(per_epoch * epochs + OVERHEAD_S, per_epoch, epochs, device)


def estimate_run(
    base, train_images: int, val_images: int, *, epochs: int, imgsz: int, finetune: bool = False, device: str = "cpu"
) -> TrainingEstimate:
    """A run's wall time on `device` ("cpu" or "gpu"): the head, plus the comparison fine-tune (COST_VS_HEAD times
    the head's) when asked."""
    speed = seconds_per_image(base, int(imgsz), device=device)
    expected = estimate_training(train_images, val_images, epochs=int(epochs), seconds_per_image=speed, device=device)
    scale = 1 + COST_VS_HEAD if finetune else 1
    return replace(expected, seconds=expected.seconds * scale, per_epoch_s=expected.per_epoch_s * scale)


def check_fits(expected: TrainingEstimate, limits: Limits) -> None:
    """Refuse a run whose estimate is over `max_train_s` (the server would stop it there).

    Raises:
        LimitExceeded: the estimate is over the limit; the message names it and the estimate.
    """
    limits.check("max_train_s", round(expected.seconds), f"estimated training time ({expected.describe()}) in seconds")


def zero_gpu_duration(estimate: TrainingEstimate, max_seconds: float) -> int:
    """Seconds to ask one ZeroGPU call for.

    Raises:
        ValueError: the job does not fit one call; the message says how many epochs would, and where to go instead.
    """
    wanted = math.ceil(estimate.seconds * MARGIN)
    if wanted <= max_seconds:
        return max(wanted, 30)
    fits = math.floor((max_seconds / MARGIN - OVERHEAD_S) / max(estimate.per_epoch_s, 1e-9))
    advice = (
        f"lower epochs to {fits} or fewer, or the image size" if fits >= 1 else "use fewer images or a smaller size"
    )
    raise ValueError(
        f"this training needs ~{_duration(wanted)} of GPU time, but one ZeroGPU call here allows at most "
        f"{_duration(max_seconds)}; {advice} — or duplicate this Space on dedicated GPU hardware (Settings → "
        "Hardware) to train as long as you like"
    )
