"""The head artefact: safetensors + metadata, refusals for heads that do not fit, the legacy .pth import."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

import headkit
from headkit.trunk import head_index


def test_round_trip_keeps_tensors_and_metadata(plate_head, tmp_path):
    path = plate_head.save(tmp_path / "h.safetensors")
    again = headkit.load_head(path)
    assert again.names == plate_head.names == {0: "license_plate"}
    assert again.metadata == plate_head.metadata
    assert again.tensors.keys() == plate_head.tensors.keys()
    assert all(torch.equal(again.tensors[k], plate_head.tensors[k]) for k in again.tensors)
    assert not list(tmp_path.glob("*.part")), "no temporary file is left behind"


def test_metadata_says_what_a_user_needs(plate_head):
    meta = plate_head.metadata
    for key in ("names", "ultralytics_version", "imgsz", "metrics", "base_source", "base_fingerprint"):
        assert key in meta
    assert "kind" not in meta  # the shipped file carries the "kind" headkit 0.1 wrote: read, dropped
    assert len(meta["base_fingerprint"]) == 64
    assert plate_head.channels == [128, 256, 512]


def test_fingerprint_is_dtype_independent(base):
    half = headkit.load_model(base.ckpt_path)
    half.model.half()
    assert headkit.fingerprint(half) == headkit.fingerprint(base)


def test_head_for_another_base_is_refused_with_both_fingerprints(plate_head):
    other = headkit.load_model("yolov8s.yaml")  # same layout, other weights
    with pytest.raises(headkit.HeadDoesNotFit) as info:
        headkit.merge(other, plate_head)
    message = str(info.value)
    assert plate_head.base_fingerprint[:12] in message and headkit.fingerprint(other)[:12] in message
    assert "train the head on this base" in message


def test_head_with_another_channel_layout_is_refused(plate_head):
    with pytest.raises(
        headkit.HeadDoesNotFit, match=r"expects feature maps with \[128, 256, 512\] channels.*\[64, 128, 256\]"
    ):
        headkit.merge(headkit.load_model("yolov8n.yaml"), plate_head)


@pytest.mark.parametrize(
    ("arch", "message"),
    [
        ("yolov8n-seg.yaml", "'segment' model with a Segment head"),
        ("yolov8n-pose.yaml", "'pose' model with a Pose head"),
        ("yolov8n-cls.yaml", "'classify' model with a Classify head"),
        ("yolov10n.yaml", "YOLOv10 model"),
    ],
)
def test_bases_that_cannot_carry_heads(arch, message):
    with pytest.raises(ValueError, match=message):
        headkit.merge(headkit.load_model(arch))


def test_yolo11_head_index_is_read_from_the_model():
    model = headkit.load_model("yolo11n.yaml")
    assert head_index(model) == 23
    own = headkit.extract_head(model, model)
    merged = headkit.merge(model, own)
    image = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        y_base = model.model.eval()(image)[0]
        y_merged = merged.model.eval()(image)[0]
    anchors = y_base.shape[2]
    assert own.metadata["legacy"] is False  # YOLO11 heads use the depthwise classification branch
    assert torch.equal(y_merged[:, : 4 + 80, :anchors], y_base)
    assert torch.equal(y_merged[:, 4 + 80 :, anchors:], y_base[:, 4:])


def test_legacy_state_dict_pth_imports_safely(plate_head, base, tmp_path, bus_jpg):
    legacy = {f"model.model.23.{k}": v for k, v in plate_head.tensors.items()}
    path = tmp_path / "yolov8s_lp.pth"
    torch.save(legacy, path)
    with pytest.raises(ValueError, match="pass base="):
        headkit.load_head(path)
    head = headkit.load_head(path, base=base, names={0: "license_plate"})
    assert head.names == {0: "license_plate"} and head.metadata["trained_with"] == "imported-legacy-pth"
    assert head.metadata["base_fingerprint_verified"] is False and head.metadata["legacy_layer"] == 23
    a = headkit.merge(base, head).predict(bus_jpg, conf=0.01, verbose=False)[0].boxes
    b = headkit.merge(base, plate_head).predict(bus_jpg, conf=0.01, verbose=False)[0].boxes
    assert torch.equal(a.conf, b.conf) and torch.equal(a.cls, b.cls)


def test_legacy_pth_of_another_layer_is_refused(plate_head, base, tmp_path):
    path = tmp_path / "yolo11_head.pth"
    torch.save({f"model.model.16.{k}": v for k, v in plate_head.tensors.items()}, path)
    with pytest.raises(ValueError, match=r"holds layer\(s\) 16, but this base's Detect head is layer 22"):
        headkit.load_head(path, base=base)


def test_heads_build_with_their_base_activation_whatever_was_parsed_last(plate_head, base):
    """Ultralytics' parser sets the process-wide Conv.default_act while it builds a model with `activation:` (another
    thread may be parsing one right now); a head must not inherit that."""
    from ultralytics.nn.modules.conv import Conv

    assert plate_head.metadata.get("activation", {"type": "SiLU"}) == {"type": "SiLU"}
    default = Conv.default_act
    try:
        Conv.default_act = torch.nn.ReLU()  # as during the parse of a model with `activation: nn.ReLU()`
        built = plate_head.build()
    finally:
        Conv.default_act = default
    acts = {type(m.act).__name__ for m in built.modules() if isinstance(m, Conv)}
    assert acts == {"SiLU"}
    ours = headkit.extract_head(base, base)
    assert ours.metadata["activation"] == {"type": "SiLU"}


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("hello"), "not a readable .safetensors file"),
        (lambda p: save_file({"x": torch.zeros(1)}, str(p)), "not a headkit head"),
        (lambda p: save_file({"x": torch.zeros(1)}, str(p), metadata={"format": "{"}), "not a headkit head"),
        (
            lambda p: save_file({"x": torch.zeros(1)}, str(p), metadata={"format": json.dumps("headkit.head/1")}),
            "head metadata lacks",
        ),
    ],
)
def test_broken_head_files_say_what_is_wrong(tmp_path, make, message):
    path = tmp_path / "head.safetensors"
    make(path)
    with pytest.raises(ValueError, match=message):
        headkit.load_head(path)


def test_a_full_model_is_not_a_head(base_weights):
    with pytest.raises(ValueError, match=r"heads are .safetensors files .* headkit.load_model"):
        headkit.load_head(base_weights)
