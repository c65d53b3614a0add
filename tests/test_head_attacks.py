"""Attacks through a head file (upload or hf:// address) and a fine-tune file: each is refused, runs no code, costs
little memory, and the library keeps working afterwards.

A branch head's layers are deep copies of the base's own; a file's architecture rows are data, compared with the
base's and never parsed. A declared Detect layout is bounded and measured on torch's "meta" device before anything is
allocated. The crafted files come from `head_attack_files` (shared with the soak).
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from head_attack_files import (
    SHIPPED_HEAD,
    SHIPPED_NECK,
    make_channel_bomb_head,
    make_crafted_branch_head,
    make_inflating_pth,
    make_metadata_flood_head,
    make_wide_bias_pth,
    payload,
    read_head_file,
    write_head_file,
)

import headkit
from headkit.finetune import _base_with_classes, load_finetuned, save_finetuned
from headkit.headfile import Head
from headkit.trunk import detection_model

MAX_GROWTH_MB = 200


def peak_rss_growth_mb(call, process: psutil.Process | None = None) -> float:
    """Run `call` (its exception propagates) and return the peak growth of `process`'s RSS (default: this one)
    meanwhile, in MiB."""
    process = process or psutil.Process()
    peak, done, start = [0], threading.Event(), process.memory_info().rss

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss - start)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        call()
    finally:
        done.set()
        sampler.join()
        peak[0] = max(peak[0], process.memory_info().rss - start)
    return peak[0] / 2**20


def refused(call, error=ValueError, match: str | None = None) -> float:
    """Assert `call` raises `error` (matching `match`); return the peak RSS growth it caused, in MiB."""
    outcome = {}

    def attempt() -> None:
        with pytest.raises(error, match=match) as info:
            call()
        outcome["message"] = str(info.value)

    return peak_rss_growth_mb(attempt)


@pytest.fixture(scope="module")
def neck_head():
    return headkit.load_head(SHIPPED_NECK)


def still_works(base, head) -> None:
    """A legitimate merge after the attack: base classes bit-exact, the head's classes appended."""
    merged = headkit.merge(base, head)
    assert merged.names == {0: "Normal", 1: "Fall", 2: "license_plate"}
    image = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        ours, theirs = detection_model(merged).eval()(image)[0], detection_model(base).eval()(image)[0]
    assert torch.equal(ours[:, :6, : theirs.shape[2]], theirs)


def unchecked_head(path: Path) -> Head:
    """A Head straight from a file's metadata and tensors, as a library caller could make one without load_head."""
    metadata, tensors = read_head_file(path)
    metadata.pop("format")
    return Head(tensors, metadata)


# --- (a) a DetectionModel row whose config's activation is code ------------------------------------------------------


def test_detectionmodel_row_is_refused_by_load_head_and_merge_and_runs_nothing(tmp_path, base, neck_head):
    marker = tmp_path / "pwned"
    crafted = make_crafted_branch_head(tmp_path / "crafted.safetensors", marker=marker)
    message = r"crafted.safetensors: metadata 'branch' is nested deeper than the 5 levels its schema allows"
    assert refused(lambda: headkit.load_head(crafted), match=message) < MAX_GROWTH_MB  # the config is never parsed
    head = unchecked_head(crafted)
    assert refused(lambda: headkit.merge(base, head), match="row 22 names 'DetectionModel'") < MAX_GROWTH_MB
    with pytest.raises(ValueError, match="row 22 names 'DetectionModel'"):
        head.build_branch(base)
    assert not marker.exists()
    still_works(base, neck_head)


def test_detectionmodel_row_in_place_of_a_layer_is_refused(tmp_path, base):
    """The same payload replacing a row (the row count stays the base's) is refused by name, and by comparison."""
    marker = tmp_path / "pwned"
    metadata, tensors = read_head_file(SHIPPED_NECK)
    config = {"nc": 1, "activation": payload(marker), "backbone": [], "head": []}
    metadata["branch"]["architecture"]["head"][2] = [-1, 1, "DetectionModel", [config]]
    path = write_head_file(tmp_path / "swapped.safetensors", metadata, tensors)
    with pytest.raises(ValueError, match="metadata 'branch' is nested deeper than the 5 levels"):
        headkit.load_head(path)
    with pytest.raises(ValueError, match="row 12 names 'DetectionModel'"):
        headkit.merge(base, unchecked_head(path))
    assert not marker.exists()


# --- (b) rows that differ from the base's --------------------------------------------------------------------------


def test_rows_other_than_the_base_are_refused_before_anything_is_built(tmp_path, base, neck_head):
    metadata, tensors = read_head_file(SHIPPED_NECK)
    metadata["branch"]["architecture"]["head"][2] = [-1, 3, "C2f", [1_000_000]]  # a real layer, a million channels
    path = write_head_file(tmp_path / "wide.safetensors", metadata, tensors)
    head = headkit.load_head(path)  # as data it is well formed: load_head builds no branch, so it cannot tell
    want = r"row 12 is \[-1, 3, \"C2f\", \[1000000\]\], the base's is \[-1, 3, \"C2f\", \[512\]\]"
    assert refused(lambda: headkit.merge(base, head), match=want) < MAX_GROWTH_MB
    assert refused(lambda: head.build_branch(base), match=want) < MAX_GROWTH_MB
    still_works(base, neck_head)


def test_branch_tensors_of_another_shape_are_refused_before_building(tmp_path, base):
    metadata, tensors = read_head_file(SHIPPED_NECK)
    tensors["branch.12.cv1.conv.weight"] = torch.zeros(4096, 768, 1, 1, dtype=torch.float16)
    path = write_head_file(tmp_path / "shape.safetensors", metadata, tensors)
    with pytest.raises(ValueError, match=r"tensor 'branch.12.cv1.conv.weight' has shape \[4096, 768, 1, 1\]"):
        headkit.merge(base, headkit.load_head(path))


# --- (c) the channel bomb: a tiny file declaring huge inputs ---------------------------------------------------------


def test_channel_bomb_is_refused_with_little_memory(tmp_path, base, neck_head):
    bomb = make_channel_bomb_head(tmp_path / "bomb.safetensors", channels=4000)
    assert bomb.stat().st_size < 1024
    within = r"bomb.safetensors: the declared Detect head \(1 class over channels \[4000, 4000, 4000\].*max_head_mb"
    assert refused(lambda: headkit.load_head(bomb), headkit.LimitExceeded, within) < MAX_GROWTH_MB
    wider = make_channel_bomb_head(tmp_path / "wider.safetensors", channels=8000)
    assert refused(lambda: headkit.load_head(wider), match=r"'channels' \[8000, 8000, 8000\] should list") < 50
    still_works(base, neck_head)


# --- (d) other layout bombs ------------------------------------------------------------------------------------------


# (change, the file's refusal (schema first, then the layout check), a Head's refusal at merge (the layout check))
@pytest.mark.parametrize(
    ("change", "in_file", "message"),
    [
        ({"reg_max": 100_000}, None, r"'reg_max' 100000 should be an integer in 1..64"),
        ({"reg_max": True}, r"metadata 'reg_max' true should be an integer", r"'reg_max' true should be an integer"),
        (
            {"strides": [8.0] * 100_000},
            r"metadata 'strides' takes 500,000 bytes; its schema allows at most 530",
            r"'strides' .* should be 3 numbers",
        ),
        ({"strides": [8.0, 16.0]}, None, r"'strides' \[8.0, 16.0\] should be 3 numbers"),
        (
            {"strides": [8.0, float("nan"), 32.0]},
            r"'strides'\[1\] NaN should be a finite number",
            "should be 3 numbers",
        ),
        (
            {"channels": [128] * 10_000, "strides": [8.0] * 10_000},
            r"metadata 'channels' takes 50,000 bytes; its schema allows at most",
            r"'channels' .* should list 1..8",
        ),
        ({"channels": [128, -256, 512]}, None, r"'channels' \[128, -256, 512\] should list"),
        ({"channels": [128.5, 256, 512]}, r"'channels'\[0\] 128.5 should be an integer", r"'channels' .* should list"),
        ({"names": {"0": "a", "99999": "b"}}, None, "'names' should map class ids 0..n-1"),
        ({"legacy": "yes"}, "metadata 'legacy' \"yes\" should be true or false", "'legacy' should be true or false"),
        ({"class_width": 10**9}, None, r"'class_width' 1000000000 should be an integer in 128..128"),
        ({"class_width": "wide"}, r"'class_width' \"wide\" should be an integer or null", "should be an integer in"),
        ({"activation": {"type": "__import__('os')"}}, None, "is not an activation headkit builds"),
    ],
)
def test_layout_bombs_are_refused_before_anything_is_built(tmp_path, plate_head, change, in_file, message):
    path = plate_head.save(tmp_path / "good.safetensors")
    metadata, tensors = read_head_file(path)
    bad = write_head_file(tmp_path / "bad.safetensors", metadata | change, tensors)
    assert refused(lambda: headkit.load_head(bad), match=f"bad.safetensors: .*{in_file or message}") < 50
    with pytest.raises(ValueError, match=message):  # a Head made without load_head is bounded at merge too
        headkit.merge(headkit.load_model("yolov8s.yaml"), Head(tensors, {**metadata, **change}))


# --- (e) declared bytes over max_head_mb -----------------------------------------------------------------------------


def test_declared_head_over_max_head_mb_is_refused_before_it_is_built(tmp_path):
    small = make_channel_bomb_head(tmp_path / "within.safetensors", channels=640)  # an x-size width, in bounds
    limits = headkit.Limits(max_head_mb=20)
    message = r"within.safetensors: the declared Detect head .* in MiB: .* over the limit of 20 \(max_head_mb\)"
    assert refused(lambda: headkit.load_head(small, limits=limits), headkit.LimitExceeded, message) < 50
    with pytest.raises(ValueError, match=r"its tensors do not match its metadata \(\d+ missing"):  # within the limit
        headkit.load_head(small)  # ... the shapes are compared before a single tensor is read


def test_oversized_header_is_refused(tmp_path):
    metadata = {"format": "headkit.head/1", "padding": "x" * (5 * 2**20)}
    path = write_head_file(tmp_path / "padded.safetensors", metadata, {"x": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"padded.safetensors: its header takes 5.0 MiB; a head's takes at most 4"):
        headkit.load_head(path)


# --- (f) a crafted fine-tune file ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finetune_file(tmp_path_factory, base) -> Path:
    """A fine-tune file as save_finetuned writes it (untrained: the test is about the file, not the training)."""
    model = _base_with_classes(base, {0: "license_plate"})
    return save_finetuned(model, tmp_path_factory.mktemp("ft") / "tuned.safetensors")


def test_crafted_finetune_file_is_refused_and_runs_nothing(tmp_path, base, finetune_file):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    marker = tmp_path / "pwned"
    with safe_open(str(finetune_file), framework="pt") as f:
        raw, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    rows = json.loads(raw["yaml"])
    rows["activation"] = payload(marker)  # Ultralytics' parser would eval() this for the whole model
    crafted = tmp_path / "crafted.safetensors"
    save_file(tensors, str(crafted), metadata={**raw, "yaml": json.dumps(rows)})
    with pytest.raises(ValueError, match="crafted.safetensors: its recorded 'activation' differs from this base's"):
        load_finetuned(crafted, base)
    del rows["activation"]
    rows["head"].insert(len(rows["head"]) - 1, [-1, 1, "DetectionModel", [{"activation": payload(marker)}]])
    save_file(tensors, str(crafted), metadata={**raw, "yaml": json.dumps(rows)})
    with pytest.raises(ValueError, match="metadata 'yaml' is nested deeper than the 4 levels its schema allows"):
        load_finetuned(crafted, base)  # the DetectionModel row's config is never even parsed
    names = json.dumps({str(i): f"c{i}" for i in range(5000)})
    save_file(tensors, str(crafted), metadata={**raw, "names": names})
    with pytest.raises(headkit.LimitExceeded, match="number of classes: 5,000"):
        load_finetuned(crafted, base)
    save_file(tensors, str(crafted), metadata={**raw, "names": json.dumps({"0": "a", "1": "b", "2": "c"})})
    with pytest.raises(ValueError, match=r"tensor 'model.22.cv3.0.2.weight' has shape \[1, 128, 1, 1\]"):
        load_finetuned(crafted, base)
    assert not marker.exists()
    again = load_finetuned(finetune_file, base)  # the real file still loads, into a copy of the base
    assert again.names == {0: "license_plate"} and again.model is not base.model


def test_finetune_of_another_architecture_is_refused(finetune_file):
    with pytest.raises(ValueError, match="built for another architecture than this base's — its row"):
        load_finetuned(finetune_file, headkit.load_model("yolo11s.yaml"))


# --- the second wall: Ultralytics' restricted parser for the YAMLs it still parses ----------------------------------


def test_yaml_base_with_code_in_activation_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.delenv("HEADKIT_PWNED", raising=False)
    expression = "__import__('os').environ.__setitem__('HEADKIT_PWNED', '1') or __import__('torch').nn.SiLU()"
    rows = "backbone:\n  - [-1, 1, Conv, [16, 3, 2]]\nhead:\n  - [[0], 1, Detect, [nc]]\n"
    (tmp_path / "evil.yaml").write_text(f'nc: 1\nactivation: "{expression}"\n{rows}')
    with pytest.raises(TypeError, match="blocked during restricted model load"):
        headkit.load_model(tmp_path / "evil.yaml")
    assert "HEADKIT_PWNED" not in os.environ
    assert len(headkit.load_model("yolov8n.yaml").model.model) == 23  # Ultralytics' own YAMLs still build


# --- through the app: one upload to /load_head -----------------------------------------------------------------------


def test_app_refuses_crafted_heads_and_keeps_serving(offline_app, tmp_path, base_weights, bus_jpg):

    marker = tmp_path / "pwned"
    crafted = make_crafted_branch_head(tmp_path / "crafted.safetensors", marker=marker)
    bomb = make_channel_bomb_head(tmp_path / "bomb.safetensors", channels=4000)
    client, base = Client(offline_app.url, verbose=False), str(base_weights)
    server = psutil.Process(offline_app.process.pid)
    for upload, reason in ((crafted, "'branch' is nested deeper than the 5 levels"), (bomb, "max_head_mb")):
        attempt = functools.partial(upload_is_refused, client, base, upload, reason)
        assert peak_rss_growth_mb(attempt, server) < MAX_GROWTH_MB
    assert not marker.exists() and offline_app.process.poll() is None
    listing = client.predict(base, handle_file(SHIPPED_NECK), "", api_name="/load_head")  # a real head still loads
    assert "license_plate_neck" in str(listing)
    result = client.predict(base, handle_file(bus_jpg), [], 0.25, 0.7, 320, api_name="/compare")
    assert result[5]["base_count"] >= 1


def upload_is_refused(client: Client, base: str, path: Path, reason: str) -> None:
    with pytest.raises(AppError, match=re.escape(reason)):
        client.predict(base, handle_file(path), "", api_name="/load_head")


# --- (g) metadata that costs far more parsed than its bytes (finding 1) --------------------------------------------


def test_metadata_flood_is_refused_by_name_before_it_is_parsed(tmp_path):
    """~3.7 MiB of nested empty lists took ~183 MiB per head once parsed; the schema refuses it from its text."""
    unknown = make_metadata_flood_head(tmp_path / "notes.safetensors", key="notes")
    message = r"notes.safetensors: head metadata holds unknown keys \['notes'\]"
    assert refused(lambda: headkit.load_head(unknown), match=message) < 50
    known = make_metadata_flood_head(tmp_path / "metrics.safetensors", key="metrics")
    message = r"metrics.safetensors: metadata 'metrics' holds 1,293,\d+ lists and objects; its schema allows 1,502"
    assert refused(lambda: headkit.load_head(known), match=message) < 50
    metadata, tensors = read_head_file(SHIPPED_HEAD)
    nested: list = []
    for _ in range(500):
        nested = [nested]
    deep = write_head_file(tmp_path / "deep.safetensors", {**metadata, "metrics": nested}, tensors)
    with pytest.raises(ValueError, match="'metrics' is nested deeper than the 2 levels its schema allows"):
        headkit.load_head(deep)


def test_twenty_flood_heads_through_the_catalog_leave_memory_where_it_was(tmp_path, base):
    """The reported attack: 20 uploads of a flood head (each a new file, as each upload is) took the server from
    948 to 4,614 MiB, and it stayed. Each is now refused before parsing; the process's memory stays put."""
    from headkit.catalog import _CACHE, add_head, list_heads

    job = headkit.server.JobRoot(tmp_path / "jobs", max_age_s=3600).job("flood")
    floods = [make_metadata_flood_head(tmp_path / f"flood{i}.safetensors", key="metrics") for i in range(20)]
    process = psutil.Process()
    before = process.memory_info().rss
    for path in floods:
        with pytest.raises(ValueError, match="'metrics' holds 1,293,"):
            add_head(path, job)
    assert list_heads(base, job=job) == []  # nothing was kept
    grown = (process.memory_info().rss - before) / 2**20
    assert grown < 100, f"+{grown:.0f} MiB over 20 refused heads (was +183 MiB each)"
    _CACHE.clear()


# --- (h) a legacy .pth whose zip entries inflate on load (finding 10b) ----------------------------------------------


def test_inflating_pth_is_refused_from_its_zip_directory(tmp_path, base):
    bomb = make_inflating_pth(tmp_path / "bomb.pth", declared_mb=256)
    assert bomb.stat().st_size < 2**20  # ~0.3 MiB that torch.load inflated to +256 MiB
    message = r"bomb.pth: declared size of its contents in MiB: 256 is over the limit of 200 \(max_head_mb\)"
    assert refused(lambda: headkit.load_head(bomb, base=base), headkit.LimitExceeded, message) < 50


def test_pth_with_a_class_bias_past_max_classes_builds_no_names(tmp_path, base):
    wide = make_wide_bias_pth(tmp_path / "wide.pth", classes=4_000_000)  # 16 MB: within max_head_mb
    message = r"wide.pth: number of classes \(the length of 'cv3.0.2.bias'\): 4,000,000 is over the limit of 1,500"
    assert refused(lambda: headkit.load_head(wide, base=base), headkit.LimitExceeded, message) < 100


def test_pth_that_is_not_a_torch_zip_is_refused(tmp_path, base):
    legacy = tmp_path / "old.pth"
    torch.save({"model.model.22.cv3.0.2.bias": torch.zeros(1)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(ValueError, match="old.pth: not a torch.save zip archive"):
        headkit.load_head(legacy, base=base)
