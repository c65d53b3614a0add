"""Resource limits, performed as the attacks they stop: a widened head of valid format, huge images and sizes, a full
session folder. Each is refused where it enters, before the memory it would cost is allocated."""

from __future__ import annotations

import threading
import time

import numpy as np
import psutil
import pytest
import torch

import headkit
from headkit.base import clone_model
from headkit.limits import ENV, anchors, output_mb

WIDE = 50_000  # classes of the crafted head: one predict of it merged cost ~10 GB before the limit


def widened(head: headkit.Head, classes: int) -> headkit.Head:
    """The same head with its class output layers widened to `classes`, names to match: a valid headkit file."""
    tensors = dict(head.tensors)
    for key, value in head.tensors.items():
        if key.startswith("cv3.") and key.split(".")[2] == "2":  # cv3.<level>.2.{weight,bias}: the class output conv
            tensors[key] = torch.zeros((classes, *value.shape[1:]), dtype=value.dtype)
    names = {str(i): f"c{i}" for i in range(classes)}
    return headkit.Head(tensors, {**head.metadata, "names": names, "label": "wide"})


def test_limits_come_from_the_environment_and_name_their_variable():
    limits = headkit.Limits.from_mapping({"HEADKIT_MAX_CLASSES": "5000", "HEADKIT_MAX_OUTPUT_MB": "64.5"})
    assert limits.max_classes == 5000 and isinstance(limits.max_classes, int) and limits.max_output_mb == 64.5
    assert headkit.Limits.from_mapping({}) == headkit.Limits()
    with pytest.raises(ValueError, match="HEADKIT_MAX_HEADS='lots' is not a number"):
        headkit.Limits.from_mapping({"HEADKIT_MAX_HEADS": "lots"})
    with pytest.raises(
        headkit.LimitExceeded, match=r"2,000 is over the limit of 1,500 \(max_classes\).*HEADKIT_MAX_CL"
    ):
        headkit.Limits().check("max_classes", 2000, "data.yaml: number of classes")
    assert set(ENV) == {f.lower().removeprefix("headkit_") for f in ENV.values()}


def test_defaults_never_refuse_ordinary_work():
    """COCO's 80 classes plus an LVIS-size head (1,203) at 1280 px, a few heads, 20 MP photos."""
    limits = headkit.Limits()
    limits.check("max_merged_classes", 80 + 1203, "merged classes")
    limits.check("max_classes", 1203, "LVIS-size head")
    limits.check("max_output_mb", output_mb(80 + 1203, 2, 1280), "COCO + LVIS head at 1280 px")
    limits.check("max_output_mb", output_mb(80 + 4, 5, 1280), "COCO + four small heads at 1280 px")
    limits.check("max_image_pixels", 5472 * 3648, "a 20 MP photo")
    assert anchors(640) == 8400


def test_widened_head_of_valid_format_is_refused_before_its_tensors_are_read(plate_head, tmp_path):
    path = widened(plate_head, WIDE).save(tmp_path / "wide.safetensors")
    assert path.stat().st_size > 30 * 2**20  # what a stranger uploads: ~40 MB, well under the upload limit
    process = psutil.Process()
    before, started = process.memory_info().rss, time.perf_counter()
    with pytest.raises(
        headkit.LimitExceeded, match=r"wide.safetensors: number of classes: 50,000 .*HEADKIT_MAX_CLASSES"
    ):
        headkit.load_head(path)
    assert time.perf_counter() - started < 2
    assert process.memory_info().rss - before < 64 * 2**20
    raised = headkit.Limits(max_classes=WIDE)  # a local user who means it passes a higher limit explicitly
    assert headkit.load_head(path, limits=raised).nc == WIDE


def test_class_names_are_bounded_and_plain_text(plate_head, tmp_path):
    long_name = headkit.Head(plate_head.tensors, {**plate_head.metadata, "names": {"0": "x" * 500}})
    with pytest.raises(headkit.LimitExceeded, match="length of class 0's name: 500"):
        headkit.load_head(long_name.save(tmp_path / "long.safetensors"))
    broken = headkit.Head(plate_head.tensors, {**plate_head.metadata, "names": {"0": "plate\n| --- |"}})
    with pytest.raises(ValueError, match="control characters; rename the class"):
        headkit.load_head(broken.save(tmp_path / "broken.safetensors"))


def test_head_files_over_the_size_limit_are_refused_unread(plate_head, tmp_path):
    path = plate_head.save(tmp_path / "plate.safetensors")
    with pytest.raises(headkit.LimitExceeded, match="file size in MiB.*max_head_mb"):
        headkit.load_head(path, limits=headkit.Limits(max_head_mb=0.5))


def test_compare_refuses_sizes_and_images_over_the_limits(base, plate_head, bus_jpg):
    comparer = headkit.Comparer(base)
    with pytest.raises(headkit.LimitExceeded, match=r"image size .*: 4,096 is over the limit of 1,280 \(max_imgsz\)"):
        comparer.compare(bus_jpg, [plate_head], imgsz=4096)
    small = headkit.Comparer(base, limits=headkit.Limits(max_image_pixels=100_000))
    with pytest.raises(headkit.LimitExceeded, match="bus.jpg: image pixels: 874,800"):
        small.compare(bus_jpg)
    tight = headkit.Comparer(base, limits=headkit.Limits(max_output_mb=0.1))
    with pytest.raises(headkit.LimitExceeded, match=r"raw output of the merged model \(3 classes, 2 heads, 640 px\)"):
        tight.compare(bus_jpg, [plate_head])
    assert comparer.compare(bus_jpg, [plate_head], imgsz=1280).base_count > 0  # the largest allowed size works


def test_full_session_folder_refuses_new_work_and_keeps_its_files(tmp_path, plate_head):
    job = headkit.server.JobRoot(tmp_path / "jobs", max_age_s=3600).job("visitor")
    saved = job.save_head(plate_head, "plates")
    (job.path / "upload.bin").write_bytes(np.zeros(2 * 2**20, np.uint8).tobytes())
    job.check_disk(headkit.Limits(max_session_mb=10))
    with pytest.raises(
        headkit.LimitExceeded, match=r"this session's files .* in MiB: [\d.]+ is over the limit of 1 .*max_session_mb"
    ):
        job.check_disk(headkit.Limits(max_session_mb=1))
    assert saved.is_file() and job.heads() == {"plates": saved}


def test_clone_never_touches_the_shared_base(base, bus_jpg):
    """The app predicts with the base while merges clone it: the base's predictor must never blink to None."""
    base.predict(str(bus_jpg), imgsz=160, verbose=False)
    predictor, ckpt, seen = base.predictor, base.ckpt, []
    done = threading.Event()

    def watch():
        while not done.is_set():
            seen.append(base.predictor is predictor and base.ckpt is ckpt)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        clones = [clone_model(base) for _ in range(3)]
    finally:
        done.set()
        watcher.join()
    assert seen and all(seen)
    assert all(c.predictor is None and c.trainer is None and c.ckpt == {} for c in clones)
    weights = dict(base.model.state_dict())
    assert all(torch.equal(weights[k], v) for k, v in clones[0].model.state_dict().items())
