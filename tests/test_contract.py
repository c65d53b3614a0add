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


def test_nms_caps_the_readme_cites():
    """Per-image caps that can cut a merged model's rows (README "Safety"): max_det 300, max_nms 30,000."""
    import inspect

    from ultralytics.cfg import DEFAULT_CFG
    from ultralytics.utils.nms import non_max_suppression

    defaults = {k: p.default for k, p in inspect.signature(non_max_suppression).parameters.items()}
    assert DEFAULT_CFG.max_det == 300 and defaults["max_nms"] == 30000 and defaults["max_wh"] == 7680
    assert DEFAULT_CFG.agnostic_nms is False and DEFAULT_CFG.single_cls is False


def test_class_agnostic_nms_settings_in_val():
    """concat.guard_merged refuses exactly the settings that make validation class-agnostic."""
    import inspect

    from ultralytics.models.yolo.detect.val import DetectionValidator

    assert "agnostic=self.args.single_cls or self.args.agnostic_nms" in inspect.getsource(
        DetectionValidator.postprocess
    )


def test_instance_callbacks_reach_an_existing_predictor():
    """model.add_callback after a first predict still runs: the predictor shares the model's callback dict."""
    import numpy as np
    from ultralytics import YOLO

    model = YOLO("yolov8n.yaml")  # random weights, built offline; only the callback plumbing matters here
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    model.predict(image, imgsz=64, verbose=False)
    seen = []
    model.add_callback("on_predict_start", lambda predictor: seen.append(predictor.args.agnostic_nms))
    model.predict(image, imgsz=64, agnostic_nms=True, verbose=False)
    assert seen == [True]


def test_exporter_calls_on_export_start_before_writing():
    """concat.guard_merged refuses nms=True in on_export_start: it must run before any file is written."""
    import inspect

    from ultralytics.engine.exporter import Exporter

    source = inspect.getsource(Exporter.__call__)
    assert source.index('self.run_callbacks("on_export_start")') < source.index('getattr(self, f"export_{fmt}")()')


def test_the_restricted_parser_switch_headkit_sets_exists():
    """headkit parses an operator's .yaml base with Ultralytics' restricted (no-eval) loader through its per-thread
    flag; an upgrade that renames it must fail here, not silently parse with eval again."""
    from ultralytics.nn import tasks

    switch = getattr(tasks, "_SafeLoad", None)
    assert switch is not None and switch.SUPPORTED
    assert hasattr(switch, "_local") and callable(switch.restricted)
