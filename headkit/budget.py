"""How long a training run will take, how much memory it needs, whether the server allows it, and whether it fits
one ZeroGPU call.

The estimates are arithmetic over a measured (CPU) or assumed (GPU) time per image, and over memory per image pixel
fitted on measured runs (`benchmarks/train_memory.py`), so users see them before they start: a run the server would
stop at `max_train_s`, or one whose memory (batch × image size², unbounded otherwise) is over `max_train_mb`, is
refused before its dataset is trained on.
"""

from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass, replace

import torch

from .kinds import resolve_branch
from .limits import ENV, LimitExceeded, Limits
from .trunk import base_facts

TRAIN_FACTOR = 2.0  # a training step (augment, forward, head backward, optimiser) ≈ 2 forward passes of the base
OVERHEAD_S = 15.0  # dataset scan, model setup, final validation and plots
GPU_SECONDS_PER_IMAGE_640 = 0.01  # one image through a small YOLO at 640 px on a data-centre GPU, batched
MARGIN = 1.25  # ZeroGPU calls are asked for this much more than the estimate, so a slow epoch is not cut off
# Measured on the plates (benchmarks/head_vs_finetune.py, 10 epochs at 320 px, CPU): the full fine-tune took 704 s
# where the head alone took 335 s; a comparison fine-tune is estimated at the head's time times this factor.
COST_VS_HEAD = 2.1
# Memory one run adds to the process that trains, in two parts (fitted on yolov8s and yolov8n, CPU, README "Limits"):
# a fixed part, and per image of a batch a part proportional to its pixels.
SETUP_MB = 256.0  # Ultralytics' trainer, the dataset's index and label plots
WEIGHT_COPIES = 6  # fp32 copies of each weight in training: model, EMA, gradients, 2 optimiser moments, checkpoint
LOADER_BYTES_PER_PIXEL = 160.0  # mosaic buffer (8 images per batch image), batch tensors, the frozen trunk's forward
# per value autograd keeps for the backward pass in the layers that train, per image pixel; the more of the model
# trains, the more of the forward's intermediates stay alive with it
SAVED_BYTES = {"head": 2.0, "branch": 4.0, "finetune": 5.5}
MEMORY_MARGIN = 1.2  # on the per-image part: the per-pixel cost measured varies ~±15 % with the size and the batch
PROBE_IMGSZ = 128  # the size at which a base's kept activations are counted (they scale with the pixels)
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
    memory: MemoryEstimate | None = None  # with the batch known (`estimate_run(..., batch=)`), checked by `check_fits`

    def describe(self) -> str:
        return (
            f"about {_rounded_duration(self.seconds)} on {self.device.upper()} "
            f"({self.epochs} epoch(s) × ~{_rounded_duration(self.per_epoch_s)}, plus setup and final validation)"
        )


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory one training run adds to the process that trains it: `fixed_mb` + `batch` × `per_image_mb` (MiB).

    Attributes:
        what: the stage that needs the most ("head only", "branch from layer 10", "comparison fine-tune").
    """

    fixed_mb: float
    per_image_mb: float
    imgsz: int
    batch: int
    what: str

    @property
    def mb(self) -> float:
        return self.fixed_mb + self.batch * self.per_image_mb

    def largest_batch(self, limit_mb: float) -> int:
        """The largest batch at this image size whose estimate is within `limit_mb` (0: not even one image)."""
        return max(0, math.floor((limit_mb - self.fixed_mb) / self.per_image_mb))

    def largest_imgsz(self, limit_mb: float) -> int:
        """The largest image size (a multiple of 32) at this batch within `limit_mb` (0: none); memory ∝ imgsz²."""
        room = (limit_mb - self.fixed_mb) / (self.batch * self.per_image_mb)
        return 0 if room <= 0 else math.floor(self.imgsz * math.sqrt(room) / 32) * 32

    def describe(self) -> str:
        return f"~{self.mb:,.0f} MiB at {self.imgsz} px, batch {self.batch} ({self.what})"


def _rounded_duration(seconds: float) -> str:
    """An estimate's seconds, rounded as a person reads an estimate: 47 s, 12 min, 1.5 h (a limit's exact seconds:
    `worker.format_duration`)."""
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
    base, train_images: int, val_images: int, *, epochs: int, imgsz: int, finetune: bool = False, device: str = "cpu",
    batch: int | None = None, branch: str | int = "head",
) -> TrainingEstimate:  # fmt: skip
    """A run's wall time on `device` ("cpu" or "gpu"): the head, plus the comparison fine-tune (COST_VS_HEAD times
    the head's) when asked; with `batch`, its memory too (`estimate_memory`), which `check_fits` then checks."""
    speed = seconds_per_image(base, int(imgsz), device=device)
    expected = estimate_training(train_images, val_images, epochs=int(epochs), seconds_per_image=speed, device=device)
    scale = 1 + COST_VS_HEAD if finetune else 1
    memory = None
    if batch is not None:
        memory = estimate_memory(base, imgsz=imgsz, batch=batch, branch=branch, finetune=finetune, device=device)
    return replace(expected, seconds=expected.seconds * scale, per_epoch_s=expected.per_epoch_s * scale, memory=memory)


@functools.lru_cache(maxsize=16)
def _kept_per_pixel(model) -> tuple[float, ...]:
    """Values autograd keeps for the backward pass, per layer of `model`, per input pixel (counted once per base).

    One forward at PROBE_IMGSZ with gradients on, layer by layer through Ultralytics' `f` wiring; the kept tensors are
    seen through a (thread-local) saved-tensors hook, so the shared model is neither changed nor hooked (one in
    training mode, whose BatchNorm statistics a forward would update, is counted on a copy).
    """
    net = base_facts(model).inner
    net = copy.deepcopy(net) if net.training else net
    weights = {t.data_ptr() for t in (*net.parameters(), *net.buffers())}
    parameter = next(net.parameters())
    kept, seen, layer = [0] * len(net.model), set(), [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = (tensor.data_ptr(), tensor.numel())
        if tensor.is_floating_point() and tensor.data_ptr() not in weights and key not in seen:
            seen.add(key)
            kept[layer[0]] += tensor.numel()
        return tensor

    x = torch.zeros(1, 3, PROBE_IMGSZ, PROBE_IMGSZ, dtype=parameter.dtype, device=parameter.device, requires_grad=True)
    outputs: list = []
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        for i, m in enumerate(net.model):
            layer[0] = i
            if m.f != -1:
                x = outputs[m.f] if isinstance(m.f, int) else [x if j == -1 else outputs[j] for j in m.f]
            x = m(x)
            outputs.append(x)
    return tuple(n / PROBE_IMGSZ**2 for n in kept)


def estimate_memory(
    base, *, imgsz: int, batch: int, branch: str | int = "head", finetune: bool = False, device: str = "cpu"
) -> MemoryEstimate:
    """Peak memory a run adds to the process that trains it (MiB): its largest stage (the head or branch, then the
    comparison fine-tune when asked). Fitted on measured CPU runs (`benchmarks/train_memory.py`); on a GPU the
    activations live in GPU memory, and only the loader's part per pixel is counted.

    Raises:
        ValueError: batch or imgsz below 1, or an unknown `branch` (`headkit.kinds.resolve_branch`).
    """
    if int(batch) < 1 or int(imgsz) < 1:
        raise ValueError(f"expected a batch and an image size of at least 1, got batch {batch}, image size {imgsz}")
    facts = base_facts(base)
    start = resolve_branch(base, branch)
    if start is None:
        stages = [("head only", "head", facts.head_index)]
    else:
        stages = [(f"branch from layer {start}", "branch", start)]
    if finetune:
        stages.append(("comparison fine-tune", "finetune", 0))
    weights_mb = sum(p.numel() for p in facts.inner.parameters()) * 4 / 2**20
    fixed = SETUP_MB + WEIGHT_COPIES * weights_mb
    pixels = int(imgsz) ** 2
    costs = []
    for what, mode, first in stages:
        per_pixel = LOADER_BYTES_PER_PIXEL
        if device == "cpu":
            per_pixel += SAVED_BYTES[mode] * sum(_kept_per_pixel(base)[first:])
        costs.append((MEMORY_MARGIN * per_pixel * pixels / 2**20, what))
    per_image, what = max(costs)
    return MemoryEstimate(fixed, per_image, int(imgsz), int(batch), what)


def memory_refusal(memory: MemoryEstimate, limits: Limits) -> str | None:
    """Why a run of this memory estimate is refused (what was asked, the estimate, the limit and the fix), or None."""
    limit = limits.max_train_mb
    if memory.mb <= limit:
        return None
    batch, size = memory.largest_batch(limit), memory.largest_imgsz(limit)
    fixes = [f"lower the batch to {batch} or less at {memory.imgsz} px"] if batch else []
    fixes += [f"the image size to {size} px or less at batch {memory.batch}"] if size >= 32 else []
    fix = " or ".join(fixes) if fixes else "train a smaller base"
    return (
        f"training ({memory.what}) at {memory.imgsz} px with batch {memory.batch} needs an estimated "
        f"{memory.mb:,.0f} MiB of memory, over the limit of {limit:,.0f} MiB (max_train_mb); {fix} — or, on a "
        f"server with more memory, raise the limit: set {ENV['max_train_mb']}, or pass "
        "headkit.Limits(max_train_mb=...) in Python"
    )


def check_memory(memory: MemoryEstimate, limits: Limits) -> None:
    """Refuse a run whose memory estimate is over `max_train_mb`, before anything of its size is allocated.

    Raises:
        LimitExceeded: over the limit; the message says what was asked, the estimate, the limit and the largest
            batch (and image size) that fits.
    """
    refusal = memory_refusal(memory, limits)
    if refusal:
        raise LimitExceeded(refusal)


def check_fits(expected: TrainingEstimate, limits: Limits) -> None:
    """Refuse a run whose estimate is over `max_train_s` (the server would stop it there), or whose memory estimate
    (when it has one) is over `max_train_mb`.

    Raises:
        LimitExceeded: an estimate is over its limit; the message names it, the estimate and the fix.
    """
    limits.check("max_train_s", round(expected.seconds), f"estimated training time ({expected.describe()}) in seconds")
    if expected.memory is not None:
        check_memory(expected.memory, limits)


def explain_estimate(
    expected: TrainingEstimate, limits: Limits, *, finetune: bool = False, zero_gpu_max_s: float | None = None
) -> str:
    """What a visitor reads before training (Markdown): the estimate, and whether this server (and one ZeroGPU call,
    with `zero_gpu_max_s`) allows it, with what to change when not."""
    text = f"Estimated training time: {expected.describe()}."
    if finetune:
        text += f" (The head, then the comparison fine-tune: about {COST_VS_HEAD:g}× the head's time.)"
    if expected.seconds > limits.max_train_s:
        text += f"\n\n**Too long for this server** (at most {limits.max_train_s / 3600:g} h): {TOO_LONG_ADVICE}"
    if expected.memory is not None:
        refusal = memory_refusal(expected.memory, limits)
        text += f"\n\n**Too much memory for this server:** {refusal}" if refusal else (
            f" Memory: {expected.memory.describe()}, within {limits.max_train_mb:,.0f} MiB.")  # fmt: skip
    if zero_gpu_max_s is not None:
        try:
            text += f" Fits one ZeroGPU call ({zero_gpu_duration(expected, zero_gpu_max_s)} s)."
        except ValueError as e:
            text += f"\n\n**Too long for ZeroGPU:** {e}"
    return text


def zero_gpu_duration(estimate: TrainingEstimate, max_seconds: float) -> int:
    """Seconds to ask one ZeroGPU call for.

    Raises:
        LimitExceeded: the job does not fit one call (`HEADKIT_ZEROGPU_MAX_S`); the message says how many epochs
            would, and where to go instead.
    """
    wanted = math.ceil(estimate.seconds * MARGIN)
    if wanted <= max_seconds:
        return max(wanted, 30)
    fits = math.floor((max_seconds / MARGIN - OVERHEAD_S) / max(estimate.per_epoch_s, 1e-9))
    advice = (
        f"lower epochs to {fits} or fewer, or the image size" if fits >= 1 else "use fewer images or a smaller size"
    )
    raise LimitExceeded(
        f"this training needs ~{_rounded_duration(wanted)} of GPU time, but one ZeroGPU call here allows at most "
        f"{_rounded_duration(max_seconds)} (HEADKIT_ZEROGPU_MAX_S); {advice} — or duplicate this Space on dedicated GPU hardware (Settings → "
        "Hardware) to train as long as you like"
    )
