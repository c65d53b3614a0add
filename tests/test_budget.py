"""Training estimates are plain arithmetic (hand-checkable); ZeroGPU jobs that cannot fit one call, and runs whose
memory estimate is over `max_train_mb`, are refused before they start."""

from __future__ import annotations

import pytest

import headkit
from headkit.budget import LOADER_BYTES_PER_PIXEL, MEMORY_MARGIN, OVERHEAD_S, SAVED_BYTES, SETUP_MB, WEIGHT_COPIES
from headkit.budget import _kept_per_pixel as kept_per_pixel


def test_estimate_by_hand():
    estimate = headkit.server.estimate_training(10, 5, epochs=2, seconds_per_image=0.1)
    assert estimate.per_epoch_s == pytest.approx(0.1 * (2 * 10 + 5))
    assert estimate.seconds == pytest.approx(2 * 2.5 + OVERHEAD_S)
    assert estimate.describe() == "about 20 s on CPU (2 epoch(s) × ~2 s, plus setup and final validation)"
    with pytest.raises(ValueError, match="at least 1 epoch"):
        headkit.server.estimate_training(10, 5, epochs=0, seconds_per_image=0.1)


def test_zero_gpu_duration_fits_or_advises():
    short = headkit.server.estimate_training(100, 20, epochs=10, seconds_per_image=0.01, device="gpu")  # 37 s
    assert headkit.server.zero_gpu_duration(short, 120) == 47  # ceil(37 * 1.25)
    long = headkit.server.estimate_training(1000, 200, epochs=50, seconds_per_image=0.01, device="gpu")  # 1115 s
    with pytest.raises(
        headkit.LimitExceeded, match=r"HEADKIT_ZEROGPU_MAX_S.*lower epochs to 3 or fewer.*dedicated GPU"
    ):
        headkit.server.zero_gpu_duration(long, 120)


def test_cpu_speed_is_measured_once(base):
    cpu = headkit.server.seconds_per_image(base, 160)
    assert 0 < cpu < 10
    assert headkit.server.seconds_per_image(base, 160) == cpu  # measured once


def test_a_run_at_1280_px_batch_64_is_refused_before_it_trains_naming_the_batch_that_fits(base):
    # the estimate is arithmetic: nothing of the run's size is allocated, no dataset is read (224 plates images)
    expected = headkit.server.estimate_run(base, 224, 35, epochs=1, imgsz=1280, batch=64)
    assert expected.seconds < headkit.Limits().max_train_s  # the time estimate alone would accept it
    with pytest.raises(headkit.LimitExceeded) as refused:
        headkit.server.check_fits(expected, headkit.Limits())
    message = str(refused.value)
    assert "training (head only) at 1280 px with batch 64 needs an estimated 25,831 MiB" in message
    assert "over the limit of 7,168 MiB (max_train_mb)" in message
    assert "lower the batch to 16 or less at 1280 px or the image size to 640 px or less at batch 64" in message
    assert "HEADKIT_MAX_TRAIN_MB" in message
    # what the refusal advises does fit
    headkit.server.check_fits(
        headkit.server.estimate_run(base, 224, 35, epochs=1, imgsz=1280, batch=16), headkit.Limits()
    )
    headkit.server.check_memory(headkit.server.estimate_memory(base, imgsz=640, batch=64), headkit.Limits())
    headkit.server.check_fits(headkit.server.estimate_run(base, 8, 4, epochs=1, imgsz=160, batch=4), headkit.Limits())


def test_memory_estimate_by_hand(base):
    # values autograd keeps per input pixel, counted on the real base: a fixed property of its architecture
    kept = kept_per_pixel(base)
    assert (round(sum(kept), 1), round(sum(kept[22:]), 1), round(sum(kept[10:]), 1)) == (214.0, 25.5, 79.5)
    weights_mb = sum(p.numel() for p in base.model.parameters()) * 4 / 2**20  # 11.1 M parameters: 42.5 MiB
    head = headkit.server.estimate_memory(base, imgsz=640, batch=16)
    assert head.fixed_mb == pytest.approx(SETUP_MB + WEIGHT_COPIES * weights_mb)  # 511 MiB
    per_pixel = MEMORY_MARGIN * (LOADER_BYTES_PER_PIXEL + SAVED_BYTES["head"] * sum(kept[22:]))  # 253 B
    assert head.per_image_mb == pytest.approx(per_pixel * 640**2 / 2**20)  # 99 MiB
    assert head.mb == pytest.approx(head.fixed_mb + 16 * head.per_image_mb)
    assert head.describe() == "~2,093 MiB at 640 px, batch 16 (head only)"
    # the run's largest stage counts: the neck branch, then the comparison fine-tune (every layer trains)
    branch = headkit.server.estimate_memory(base, imgsz=640, batch=16, branch="neck")
    both = headkit.server.estimate_memory(base, imgsz=640, batch=16, branch="neck", finetune=True)
    assert (branch.what, both.what) == ("branch from layer 10", "comparison fine-tune")
    assert head.mb < branch.mb < both.mb
    assert both.per_image_mb == pytest.approx(
        MEMORY_MARGIN * (LOADER_BYTES_PER_PIXEL + SAVED_BYTES["finetune"] * sum(kept)) * 640**2 / 2**20
    )
    # on a GPU the activations are in GPU memory: the server's memory holds the loader's part
    gpu = headkit.server.estimate_memory(base, imgsz=640, batch=16, finetune=True, device="gpu")
    assert gpu.per_image_mb == pytest.approx(MEMORY_MARGIN * LOADER_BYTES_PER_PIXEL * 640**2 / 2**20)
    with pytest.raises(ValueError, match="branch='trunk': expected 'head', 'neck' or a layer index"):
        headkit.server.estimate_memory(base, imgsz=640, batch=16, branch="trunk")
    with pytest.raises(ValueError, match="at least 1, got batch 0"):
        headkit.server.estimate_memory(base, imgsz=640, batch=0)


def test_the_fine_tune_decides_and_the_operator_sets_the_limit(base):
    limits = headkit.Limits.from_mapping({"HEADKIT_MAX_TRAIN_MB": "1024"})
    assert limits.max_train_mb == 1024
    head_only = headkit.server.estimate_run(base, 8, 4, epochs=1, imgsz=160, batch=16)
    headkit.server.check_fits(head_only, limits)
    with_finetune = headkit.server.estimate_run(base, 8, 4, epochs=1, imgsz=160, batch=16, finetune=True)
    with pytest.raises(headkit.LimitExceeded, match=r"\(comparison fine-tune\) at 160 px with batch 16 .* over the "
                       r"limit of 1,024 MiB \(max_train_mb\); lower the batch to 13 or less at 160 px"):  # fmt: skip
        headkit.server.check_fits(with_finetune, limits)
    # what a visitor reads before pressing Train says the same
    assert "**Too much memory for this server:** training (comparison fine-tune)" in headkit.server.explain_estimate(
        with_finetune, limits, finetune=True
    )
    assert "Memory: ~610 MiB at 160 px, batch 16 (head only), within 1,024 MiB." in headkit.server.explain_estimate(
        head_only, limits
    )
