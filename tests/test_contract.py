"""The Ultralytics contract headkit builds on. If an upgrade changes it, this fails loudly here, not in the app."""

from __future__ import annotations

import torch
import ultralytics
from ultralytics.nn.modules.head import Detect

from headkit.headfile import new_detect


def test_pinned_ultralytics_version():
    assert ultralytics.__version__ == "8.4.190", "headkit is pinned to ultralytics 8.4.190: re-check merge.py first"


def test_detect_output_structure():
    detect = new_detect(3, [32, 64, 128], legacy=True)
    detect.stride = torch.tensor([8.0, 16.0, 32.0])
    feats = [torch.randn(2, c, s, s) for c, s in ((32, 16), (64, 8), (128, 4))]
    anchors = 16 * 16 + 8 * 8 + 4 * 4

    detect.train()
    raw = detect(feats)
    assert isinstance(raw, dict) and set(raw) == {"boxes", "scores", "feats"}
    assert raw["boxes"].shape == (2, 4 * 16, anchors) and raw["scores"].shape == (2, 3, anchors)

    detect.eval()
    y, raw = detect(feats)
    assert y.shape == (2, 4 + 3, anchors)  # xywh boxes in pixels, then sigmoid class scores
    assert isinstance(raw, dict) and "scores" in raw
    assert torch.all((y[:, 4:] >= 0) & (y[:, 4:] <= 1))

    detect.export = True
    assert isinstance(detect(feats), torch.Tensor)


def test_instance_layout_does_not_leak_into_the_class():
    before = Detect.legacy
    assert not isinstance(new_detect(2, [32, 64, 128], legacy=True).cv3[0][0], torch.nn.Sequential)
    assert isinstance(new_detect(2, [32, 64, 128], legacy=False).cv3[0][0], torch.nn.Sequential)
    assert Detect.legacy == before
