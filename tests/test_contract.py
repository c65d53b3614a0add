"""The Ultralytics contract headkit builds on. If an upgrade changes it, this fails loudly here, not in the app.

What headkit knows of Detect's insides is all in `headkit/detect.py`: after an upgrade, re-read that file first."""

from __future__ import annotations

import pytest
import torch
import ultralytics
from ultralytics.nn.modules.head import Detect

from headkit.detect import DetectLayout


def test_pinned_ultralytics_version():
    assert ultralytics.__version__ == "8.4.190", "pinned to ultralytics 8.4.190: re-read headkit/detect.py first"


def test_detect_output_structure():
    detect = DetectLayout(3, (32, 64, 128), (8.0, 16.0, 32.0)).build()
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
    plain, depthwise = (DetectLayout(2, (32, 64, 128), (8.0, 16.0, 32.0), depthwise=d).build() for d in (False, True))
    assert not isinstance(plain.cv3[0][0], torch.nn.Sequential) and isinstance(depthwise.cv3[0][0], torch.nn.Sequential)
    assert Detect.legacy == before


@pytest.mark.parametrize("depthwise", [False, True])
@pytest.mark.parametrize("end2end", [False, True])
def test_a_layout_read_back_from_its_detect_is_the_same_layout(depthwise, end2end):
    """`DetectLayout.from_detect` reads the branches `build` made (cv2/cv3 widths, class branch style, one2one_*)."""
    layout = DetectLayout(5, (64, 128, 256), (8.0, 16.0, 32.0), reg_max=1 if end2end else 16, depthwise=depthwise,
                          class_width=80, end2end=end2end)  # fmt: skip
    detect = layout.build()
    assert DetectLayout.from_detect(detect) == layout and detect.nc == 5 and detect.cv3[0][-1].out_channels == 5
    names = {str(i): f"class{i}" for i in range(5)}
    assert DetectLayout.from_metadata({"names": names, **layout.to_metadata()}, "x") == layout


def test_nms_caps_the_readme_cites():
    """Per-image caps that can cut a merged model's rows (README "Safety"): max_det 300, max_nms 30,000."""
    import inspect

    from ultralytics.cfg import DEFAULT_CFG
    from ultralytics.utils.nms import non_max_suppression

    defaults = {k: p.default for k, p in inspect.signature(non_max_suppression).parameters.items()}
    assert DEFAULT_CFG.max_det == 300 and defaults["max_nms"] == 30000 and defaults["max_wh"] == 7680
    assert DEFAULT_CFG.agnostic_nms is False and DEFAULT_CFG.single_cls is False


def test_class_agnostic_nms_settings_in_val():
    """concat.guard_merged refuses exactly the settings that make validation class-agnostic: single_cls, agnostic_nms.

    Two boxes on the same spot, one per class: per-class NMS keeps both, class-agnostic NMS keeps only the stronger.
    """
    from ultralytics.models.yolo.detect.val import DetectionValidator

    xywh = [[50.0, 52.0], [50.0, 50.0], [20.0, 20.0], [20.0, 20.0]]  # two anchors, IoU 0.82
    preds = torch.tensor([[*xywh, [0.9, 0.0], [0.0, 0.8]]])  # anchor 0 scores class 0, anchor 1 class 1

    def classes_kept(**args) -> list[float]:
        validator = DetectionValidator(args=args)
        validator.end2end = False  # what init_metrics sets for a one-to-many (NMS) model
        return validator.postprocess(preds)[0]["cls"].tolist()

    assert classes_kept() == classes_kept(single_cls=False, agnostic_nms=False) == [0.0, 1.0]
    assert classes_kept(single_cls=True) == classes_kept(agnostic_nms=True) == [0.0]


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


def test_exporter_calls_on_export_start_before_writing(tmp_path):
    """concat.guard_merged refuses nms=True in on_export_start: it must run before any file is written, and an
    exception raised there must stop the export."""
    from ultralytics import YOLO

    def tiny(name: str) -> YOLO:
        model = YOLO("yolov8n.yaml")  # random weights, built offline; only the exporter's order matters here
        model.model.pt_path = str(tmp_path / f"{name}.pt")  # the exporter writes beside this path
        return model

    written = tiny("written")
    seen = []
    written.add_callback("on_export_start", lambda exporter: seen.append(sorted(tmp_path.iterdir())))
    assert written.export(format="torchscript", imgsz=64, verbose=False) == str(tmp_path / "written.torchscript")
    assert seen == [[]]  # the callback ran once, before the file existed

    def refuse(exporter):
        raise ValueError("refused in on_export_start")

    refused = tiny("refused")
    refused.add_callback("on_export_start", refuse)
    with pytest.raises(ValueError, match="refused in on_export_start"):
        refused.export(format="torchscript", imgsz=64, verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["written.torchscript"]


def test_the_restricted_parser_switch_headkit_sets_exists():
    """headkit parses an operator's .yaml base with Ultralytics' restricted (no-eval) loader through its per-thread
    flag; an upgrade that renames it must fail here, not silently parse with eval again."""
    from ultralytics.nn import tasks

    switch = getattr(tasks, "_SafeLoad", None)
    assert switch is not None and switch.SUPPORTED
    assert hasattr(switch, "_local") and callable(switch.restricted)
