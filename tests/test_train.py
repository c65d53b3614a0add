"""train_head on the real base and real plate images: frozen trunk proven untouched, progress, plots, a mergeable head."""

from __future__ import annotations

import pytest
import torch

import headkit
from headkit.base import clone_model
from headkit.trunk import detection_model, head_index

TINY = dict(epochs=1, imgsz=160, batch=4, device="cpu", workers=0)  # a real run, small enough for 2 CPU cores


def test_tiny_training_yields_a_head_with_metadata(tiny_run, base):
    result, _ = tiny_run
    head = result.head
    assert head.names == {0: "license_plate"}
    meta = head.metadata
    assert meta["base_fingerprint"] == headkit.fingerprint(base)
    assert meta["base_names"] == {"0": "Normal", "1": "Fall"}
    assert meta["imgsz"] == 160 and meta["ultralytics_version"] == "8.4.190"
    assert meta["trunk_check"]["untouched"] and meta["trunk_check"]["changed"] == []
    assert set(result.metrics) == {"license_plate", "all"}
    assert set(result.metrics["all"]) == {"P", "R", "mAP50", "mAP50-95"}
    assert result.seconds > 0


def test_frozen_trunk_is_bit_identical_after_training(tiny_run):
    check = tiny_run[0].head.metadata["trunk_check"]
    # every parameter and BatchNorm running statistic of layers 0..21 came back bit for bit
    assert check["identical"] == check["tensors"] > 200 and check["max_abs_diff"] == 0.0


def test_ultralytics_plots_are_in_the_run_folder(tiny_run):
    names = {p.name for p in tiny_run[0].plots()}
    assert {"results.png", "BoxPR_curve.png", "confusion_matrix.png"} <= names


def test_progress_reports_batches_then_epochs(tiny_run):
    events = tiny_run[1]
    batches = [e for e in events if e.stage == "batch"]
    epochs = [e for e in events if e.stage == "epoch"]
    assert len(batches) == 2 and [e.fraction for e in batches] == sorted(e.fraction for e in batches)
    assert batches[-1].fraction == pytest.approx(1.0)
    assert len(epochs) == 1 and (epochs[0].epoch, epochs[0].epochs) == (1, 1)
    assert {"train/box_loss", "train/cls_loss", "train/dfl_loss"} <= set(epochs[0].losses)
    assert "metrics/mAP50(B)" in epochs[0].metrics


def test_trained_head_merges(tiny_run, base, tmp_path):
    head = tiny_run[0].head
    again = headkit.load_head(head.save(tmp_path / "tiny.safetensors"))
    merged = headkit.merge(base, again)
    assert merged.names == {0: "Normal", 1: "Fall", 2: "license_plate"}


def test_ultralytics_keeps_frozen_batchnorm_in_eval(base, tiny_plates, tmp_path):
    """The contract train_head relies on: with freeze=N, Ultralytics 8.4 keeps BatchNorm of layers < N in eval."""
    model = clone_model(base)
    model.ckpt = {"model": detection_model(model)}
    frozen = head_index(base)
    seen = []

    def check(trainer):
        for name, module in trainer.model.named_modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                layer = int(name.split(".")[1])
                seen.append((layer < frozen) == (not module.training))

    model.add_callback("on_train_batch_start", check)
    model.train(
        data=str(tiny_plates / "data.yaml"),
        epochs=1,
        imgsz=96,
        batch=4,
        workers=0,
        device="cpu",
        freeze=frozen,
        project=str(tmp_path),
        name="bn",
        plots=False,
        val=False,
        verbose=False,
    )
    assert seen and all(seen)


def test_moved_trunk_is_refused_naming_the_tensor(base):
    moved = clone_model(base)
    weight = detection_model(moved).model[4].cv1.conv.weight
    with torch.no_grad():
        weight += 0.01
    with pytest.raises(ValueError, match=r"frozen trunk tensors differ from the base's .*4\.cv1\.conv\.weight"):
        headkit.extract_head(moved, base)


@pytest.mark.parametrize("arch", ["yolov8n-seg.yaml", "yolov8n-cls.yaml", "yolov10n.yaml"])
def test_non_mergeable_bases_are_refused(arch, tiny_plates):
    from headkit.train import train_head

    with pytest.raises(ValueError, match="Detect heads to plain object-detection models|YOLOv10"):
        train_head(headkit.load_model(arch), tiny_plates / "data.yaml", epochs=1)


def test_training_can_start_from_a_head(base, tiny_head, tiny_plates, tmp_path):
    """init_head: with a zero learning rate the convolution weights stay the given head's, not the base head's."""
    from headkit.train import train_head

    result = train_head(
        base,
        tiny_plates / "data.yaml",
        project=tmp_path,
        init_head=tiny_head,
        lr0=0.0,
        optimizer="SGD",
        warmup_epochs=0,
        **(TINY | {"imgsz": 96, "plots": False}),
    )
    weights = [k for k in tiny_head.tensors if k.endswith("conv.weight")]
    assert weights
    # Not an exactness claim: the head comes from the checkpoint's EMA weights (d·w + (1 - d)·w rounds), in fp16.
    for key in weights:
        assert torch.allclose(result.head.tensors[key].float(), tiny_head.tensors[key].float(), atol=1e-4), key
