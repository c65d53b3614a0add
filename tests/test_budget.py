"""Training estimates are plain arithmetic (hand-checkable); ZeroGPU jobs that cannot fit one call are refused."""

from __future__ import annotations

import pytest

import headkit
from headkit.budget import OVERHEAD_S


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
    with pytest.raises(ValueError, match=r"lower epochs to 3 or fewer.*duplicate this Space on dedicated GPU"):
        headkit.server.zero_gpu_duration(long, 120)


def test_cpu_speed_is_measured_once(base):
    cpu = headkit.server.seconds_per_image(base, 160)
    assert 0 < cpu < 10
    assert headkit.server.seconds_per_image(base, 160) == cpu  # measured once
