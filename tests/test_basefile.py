"""The embedded base: the shipped heads' base as safetensors, loaded like the .pt and predicting exactly as it does."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from kit import REPO, tiny_training
from safetensors import safe_open
from safetensors.torch import save_file

import headkit
from headkit.basefile import METADATA_KEY, identify, load_base, save_base
from headkit.merging import check_head_fits
from headkit.settings import DEFAULT_BASE

EMBEDDED = REPO / "weights" / "bases" / DEFAULT_BASE
COMPOSITE = REPO / "examples" / "bus_plate.jpg"
SHIPPED_HEADS = ("license_plate", "license_plate_neck")


@pytest.fixture(scope="module")
def embedded():
    return headkit.load_model(EMBEDDED)


def rewritten(tmp_path: Path, change) -> Path:
    """A copy of the shipped base with its metadata (a dict) and tensors changed by `change(meta, tensors)`."""
    with safe_open(str(EMBEDDED), framework="pt") as f:
        meta, tensors = json.loads(f.metadata()[METADATA_KEY]), {k: f.get_tensor(k) for k in f.keys()}
    raw = change(meta, tensors) or {METADATA_KEY: json.dumps(meta)}
    path = tmp_path / "base.safetensors"
    save_file(tensors, str(path), metadata=raw)
    return path


def test_it_is_the_pt_exactly(embedded, base, bus_jpg, zidane_jpg):
    assert headkit.fingerprint(embedded) == headkit.fingerprint(base)
    assert embedded.names == base.names == {0: "Normal", 1: "Fall"}
    for image in (bus_jpg, zidane_jpg):
        ours, theirs = (m.predict(image, verbose=False)[0].boxes.data.numpy() for m in (embedded, base))
        assert len(ours) and np.array_equal(ours, theirs)
    assert EMBEDDED.stat().st_size < 32 * 2**20
    with safe_open(str(EMBEDDED), framework="pt") as f:
        meta = json.loads(f.metadata()[METADATA_KEY])
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert (meta["family"], meta["scale"], dtypes) == ("yolov8.yaml", "s", {"F16", "I64"})
    assert meta["source_sha256"] == "5f6f620d0fa574ed80d8348bb8d46060148eb0ba24e3eea00d31a30cdadba41d"


def test_bare_name_from_weights_dirs_and_the_shipped_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("HEADKIT_WEIGHTS_DIR", raising=False)
    assert headkit.load_model(DEFAULT_BASE).names == {0: "Normal", 1: "Fall"}  # weights/bases/, no setting
    (tmp_path / DEFAULT_BASE).write_bytes(EMBEDDED.read_bytes())
    monkeypatch.setenv("HEADKIT_WEIGHTS_DIR", str(tmp_path))
    assert Path(headkit.load_model(DEFAULT_BASE).ckpt_path) == tmp_path / DEFAULT_BASE  # the operator's copy first


def test_shipped_heads_fit_and_keep_every_base_detection(embedded):
    comparer = headkit.Comparer(embedded)
    for name in SHIPPED_HEADS:
        head = headkit.load_head(REPO / "weights" / f"{name}.safetensors")
        check_head_fits(head, embedded)
        result = comparer.compare(COMPOSITE, [head], labels=[name])
        assert result.kept["merged"] == result.base_count == 2 and result.max_confidence_change == 0
    plates = [d for d in result.detections if d.model == "merged" and d.name == "license_plate"]
    assert max(d.confidence for d in plates) > 0.5  # the neck head (last) fires on the composite's plate


def test_a_head_trains_on_it(tmp_path, embedded, plates_dir):
    result, _ = tiny_training(tmp_path, embedded, plates_dir, imgsz=96, plots=False)
    assert result.head.base_fingerprint == headkit.fingerprint(embedded)
    assert result.head.metadata["base_source"] == str(EMBEDDED)
    check_head_fits(result.head, embedded)


def test_saving_refuses_an_architecture_ultralytics_does_not_ship():
    ghost = headkit.load_model("yolov8-ghost.yaml")  # packaged too, but not an allow-listed detect family
    with pytest.raises(ValueError, match="match none of Ultralytics' packaged yolov8.yaml"):
        identify(ghost)


def test_round_trip_is_reproducible(tmp_path, base, base_weights):
    first = save_base(base, tmp_path / "a.safetensors", source_file=base_weights)
    second = save_base(base, tmp_path / "b.safetensors", source_file=base_weights)
    assert first.read_bytes() == second.read_bytes() == EMBEDDED.read_bytes()


def test_missing_base_says_how_to_restore(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=f"git checkout weights/bases/{DEFAULT_BASE}"):
        load_base(tmp_path / DEFAULT_BASE)
    monkeypatch.setattr("headkit.sources.SHIPPED_BASES", tmp_path)  # as if weights/bases/ had lost it
    with pytest.raises(FileNotFoundError, match="tools/make_demo_assets.py"):
        headkit.load_model(DEFAULT_BASE)


def _family(meta, tensors):
    meta["family"] = "../../evil.yaml"


def _extra_key(meta, tensors):
    meta["yaml"] = "backbone"


def _nested_key(meta, tensors):
    meta["yaml"] = {"backbone": [], "head": []}


def _altered(meta, tensors):
    tensors["model.0.conv.weight"] = tensors["model.0.conv.weight"] + 1


def _wrong_args(meta, tensors):
    meta["args"] = {"save_dir": "/etc"}


def _head_format(meta, tensors):
    return {"format": json.dumps("headkit.head/1")}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_family, "unknown architecture family '../../evil.yaml'"),
        (_extra_key, r"metadata 'headkit_base' holds unknown keys \['yaml'\]"),
        (_nested_key, "metadata 'headkit_base' holds 7 lists and objects; its schema allows 5"),
        (_altered, "altered or damaged"),
        (_wrong_args, r"'headkit_base'.'args' holds unknown keys \['save_dir'\]"),
        (_head_format, "this is a head, not a base model"),
    ],
)
def test_altered_files_are_refused_with_the_fix(tmp_path, change, message):
    with pytest.raises(ValueError, match=message) as refused:
        headkit.load_model(rewritten(tmp_path, change))
    assert "save it again" in str(refused.value) or "load_head" in str(refused.value)


def test_bounds_before_parsing(tmp_path):
    huge_header = tmp_path / "huge.safetensors"
    huge_header.write_bytes(struct.pack("<Q", 2**40) + b"{}")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(EMBEDDED.read_bytes()[: 2**20])
    for path, message in ((huge_header, "header is missing, damaged or over"), (truncated, "not a readable")):
        with pytest.raises(ValueError, match=message):
            headkit.load_model(path)
    many = tmp_path / "many.safetensors"
    save_file({f"t{i}": torch.zeros(1) for i in range(2001)}, str(many))
    with pytest.raises(ValueError, match="2001 tensors, over the 2000"):
        headkit.load_model(many)


# --- a base file sets predict's default size: bounded by max_imgsz (finding 10a) ----------------------------------


@pytest.mark.parametrize("imgsz", [4096, [4096, 4096], 6144])
def test_imgsz_a_base_sets_is_bounded_before_anything_is_built(tmp_path, imgsz):
    """args.imgsz becomes predict's default: at 4,096 the README's `merged.predict("bus.jpg")` took +1.2 GiB. The
    file is otherwise the shipped base (its fingerprint holds), so only the bound stands between it and predict."""
    from test_head_attacks import peak_rss_growth_mb

    def change(meta, tensors):
        meta["args"]["imgsz"] = imgsz

    path = rewritten(tmp_path, change)
    message = (
        r"base.safetensors: metadata 'headkit_base'.'args'.'imgsz'(\[0\])?: (4,096|6,144) is over the limit of 1,280"
    )

    def attempt():
        with pytest.raises(headkit.LimitExceeded, match=message) as refused:
            load_base(path)
        assert "(max_imgsz)" in str(refused.value) and "HEADKIT_MAX_IMGSZ" in str(refused.value)

    assert peak_rss_growth_mb(attempt) < 64  # refused from the header: no model is built, no tensor read
    assert load_base(path, limits=headkit.Limits(max_imgsz=8192)).overrides["imgsz"] == imgsz  # raised knowingly


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m["args"].update(imgsz=0), r"'imgsz' 0 should be an integer in 1..1280"),
        (lambda m: m["args"].update(task="segment"), r"'task' \"segment\" should be one of \['detect'\]"),
        (lambda m: m.update(stride=[8.0] * 100), r"'stride' .* should be a list of at most 16 items"),
        (lambda m: m.update(scale="s" * 100), r"'scale' .* should be text of at most 8 characters"),
        (lambda m: m.update(source_sha256=["a"]), r"'source_sha256' \[\"a\"\] should be text"),
        (lambda m: m.update(names={"0": "x" * 500}), r"length of class 0's name: 500 is over the limit of 100"),
    ],
)
def test_every_value_a_base_sets_is_bounded(tmp_path, change, message):
    path = rewritten(tmp_path, lambda meta, tensors: change(meta))
    with pytest.raises(ValueError, match=message):
        load_base(path)
