"""Hostile dataset uploads, done the way the attacks work: a label cache that runs code, a yaml of 100,000 classes,
COCO records that copy one image 10,000 times, JSON that takes gigabytes or recursion to parse, 10,000 boxes."""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
from coco_export import export_coco, zipped
from dataset_attack_files import (
    deeply_nested_json,
    json_files_each_under_the_limit,
    json_of_empty_objects,
    json_of_short_strings,
    label_file_with_boxes,
    many_boxes_on_one_image,
    one_image_many_records,
    zip_of_random_bytes,
)
from kit import copy_tiny_plates
from pickle_payload import Payload
from ultralytics.cfg import get_cfg
from ultralytics.data import build_yolo_dataset
from ultralytics.data.dataset import DATASET_CACHE_VERSION
from ultralytics.data.utils import check_det_dataset

from headkit.archive import ZipLimits, extract_zip
from headkit.datasets import DatasetError, load_dataset
from headkit.disk import DiskBudget, tree_bytes
from headkit.limits import LimitExceeded, Limits

HEADER = "train: images/train\nval: images/val\n"
QUICK = Limits(max_worker_s=60)
"""Refusals that must come quickly: a reader gone quadratic (or a parser recursing) would hit this wall-time cap and
fail with the worker's limit instead of the expected refusal; a minute is far above any refusal on any machine."""


def craft_label_cache(path: Path, marker: Path) -> Path:
    """An Ultralytics label cache (np.save of a dict, current version) that creates `marker` when it is loaded.

    Ultralytics unpickles the whole file (`np.load(allow_pickle=True)`) before it compares version and hash, so the
    payload runs whatever the hash says; the keys make the file look like a cache Ultralytics wrote itself.
    """
    cache = {
        "labels": [],
        "hash": "0" * 64,
        "results": (0, 0, 0, 0, 0),
        "msgs": [],
        "version": DATASET_CACHE_VERSION,
        "payload": Payload(marker),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to a path
        np.save(f, cache, allow_pickle=True)
    return path


def zip_folder(folder: Path, archive: Path) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return archive


def build_training_datasets(yaml_path: Path) -> dict:
    """What Ultralytics' trainer does with a data.yaml: check it, then build the train and val YOLODatasets."""
    data = check_det_dataset(str(yaml_path), autodownload=False)
    cfg = get_cfg(overrides={"imgsz": 160, "workers": 0, "cache": False})
    return {s: build_yolo_dataset(cfg, data[s], batch=2, data=data, mode=s) for s in ("train", "val")}


def plates_with_names(plates_dir: Path, root: Path, names_yaml: str, *, train: int = 2, val: int = 1) -> Path:
    """A few real plate images (label id 0) with `names_yaml` as the class list of data.yaml."""
    copy_tiny_plates(plates_dir, root, train=train, val=val)
    (root / "data.yaml").write_text(HEADER + names_yaml, "utf-8")
    return root


def many_names(count: int) -> list[str]:
    return [f"c{i:06d}" for i in range(count)]


def assert_nothing_left(work: Path) -> None:
    assert not work.exists() or list(work.iterdir()) == [], list(work.rglob("*"))[:5]


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


@pytest.fixture
def evil_dataset(plates_dir: Path, tmp_path: Path, marker: Path) -> Path:
    """Real plate images in the normalized Ultralytics layout, with crafted train and val label caches."""
    data = copy_tiny_plates(plates_dir, tmp_path / "evil", train=4, val=2)
    for split in ("train", "val"):
        craft_label_cache(data / "labels" / f"{split}.cache", marker)
    return data


# --- a label cache in a zip never reaches Ultralytics ---------------------------------------------------------------


def test_the_crafted_cache_really_runs_code_when_ultralytics_reads_it(evil_dataset: Path, marker: Path):
    """The control: Ultralytics building its training dataset on the folder as uploaded runs the payload."""
    build_training_datasets(evil_dataset / "data.yaml")
    assert marker.exists(), "the crafted cache was not loaded: the attack tests below would prove nothing"


def test_label_cache_in_a_zip_is_never_loaded_when_ultralytics_trains_on_it(
    evil_dataset: Path, tmp_path: Path, marker: Path, caplog: pytest.LogCaptureFixture
):
    for extra in ("weights/best.npy", "labels/train/x.npz", "model.pkl", "images/train/x.cache"):
        (evil_dataset / extra).parent.mkdir(parents=True, exist_ok=True)
        (evil_dataset / extra).write_bytes(b"\x80\x04not loaded")
    archive = zip_folder(evil_dataset, tmp_path / "evil.zip")
    work = tmp_path / "work"
    with caplog.at_level(logging.WARNING):
        summary = load_dataset(archive, work_dir=work)
    from_zip = [p for pattern in ("*.cache", "*.np[yz]", "*.pkl") for p in work.rglob(pattern)]
    datasets = build_training_datasets(summary.yaml_path)  # Ultralytics writes its own labels/*.cache here
    assert not marker.exists(), "a label cache from the zip was unpickled: code from an upload ran"
    assert from_zip == []
    assert summary.root.is_relative_to(work) and summary.yaml_path.parent == summary.root  # rebuilt, not in place
    assert {s: len(d.labels) for s, d in datasets.items()} == {"train": 4, "val": 2}
    skipped = [w for w in summary.warnings if "skipped 6 file(s)" in w]
    assert len(skipped) == 1 and "labels/train.cache" in skipped[0] and "evil.zip" in skipped[0], summary.warnings
    assert skipped[0] in caplog.text


def test_zip_already_in_ultralytics_layout_is_still_rebuilt(plates_dir: Path, tmp_path: Path):
    archive = zip_folder(copy_tiny_plates(plates_dir, tmp_path / "clean"), tmp_path / "clean.zip")
    work = tmp_path / "work"
    summary = load_dataset(archive, work_dir=work)
    assert summary.root.is_relative_to(work) and summary.warnings == []
    assert not list(work.rglob("extracted"))  # the raw extraction is gone once the dataset is rebuilt
    assert sorted(p.relative_to(summary.root).as_posix() for p in summary.root.iterdir()) == [
        "data.yaml",
        "images",
        "labels",
    ]


# --- class lists that would make training allocate gigabytes ---------------------------------------------------------


def test_yaml_with_100k_classes_is_refused_quickly_leaving_nothing(plates_dir: Path, tmp_path: Path):
    names = "names:\n" + "".join(f"  - {n}\n" for n in many_names(100_000))
    archive = zip_folder(plates_with_names(plates_dir, tmp_path / "big", names), tmp_path / "big.zip")
    assert archive.stat().st_size < 1 << 20
    work = tmp_path / "work"
    with pytest.raises(LimitExceeded, match=r"data\.yaml.*100,000.*max_classes.*HEADKIT_MAX_CLASSES"):
        load_dataset(archive, work_dir=work, limits=QUICK)
    assert_nothing_left(work)


def test_env_limit_applies_when_none_is_passed(plates_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HEADKIT_MAX_CLASSES", "3")
    names = "names: [a, b, c, d]\n"
    with pytest.raises(LimitExceeded, match=r"data\.yaml: class names: 4 is over the limit of 3 \(max_classes\)"):
        load_dataset(plates_with_names(plates_dir, tmp_path / "d", names), work_dir=tmp_path / "work")


def test_declared_nc_over_the_limit_is_refused(plates_dir: Path, tmp_path: Path):
    with pytest.raises(LimitExceeded, match=r"data\.yaml: `nc:`: 100,000 is over .*max_classes"):
        load_dataset(plates_with_names(plates_dir, tmp_path / "d", "nc: 100000\nnames: [plate]\n"), work_dir=tmp_path)


def test_classes_txt_with_100k_classes_is_refused(plates_dir: Path, tmp_path: Path):
    data = plates_with_names(plates_dir, tmp_path / "big", "")
    (data / "data.yaml").unlink()
    (data / "classes.txt").write_text("\n".join(many_names(100_000)) + "\n")
    work = tmp_path / "work"
    with pytest.raises(LimitExceeded, match=r"classes\.txt: class names: 100,000 .*HEADKIT_MAX_CLASSES"):
        load_dataset(zip_folder(data, tmp_path / "big.zip"), work_dir=work)
    assert_nothing_left(work)


def test_yaml_too_big_to_hold_the_allowed_classes_is_refused_before_parsing(plates_dir: Path, tmp_path: Path):
    filler = "".join(f"# {os.urandom(40).hex()}\n" for _ in range(25_000))  # 2 MB of comments, barely compressible
    data = plates_with_names(plates_dir, tmp_path / "d", "names: [plate]\n" + filler)
    with pytest.raises(LimitExceeded, match=r"data\.yaml: .* bytes.*max_classes.*HEADKIT_MAX_CLASSES"):
        load_dataset(data, work_dir=tmp_path / "work", limits=Limits(max_classes=100))


def test_lvis_sized_class_list_is_accepted(plates_dir: Path, tmp_path: Path):
    names = "names:\n" + "".join(f"  {i}: lvis_class_{i}\n" for i in range(1203))
    archive = zip_folder(plates_with_names(plates_dir, tmp_path / "lvis", names), tmp_path / "lvis.zip")
    summary = load_dataset(archive, work_dir=tmp_path / "work")
    assert len(summary.names) == 1203 and summary.names[1202] == "lvis_class_1202"
    assert summary.splits["train"].per_class[0] > 0 and summary.splits["train"].per_class[1202] == 0


def test_explicitly_raised_limit_accepts_100k_classes(plates_dir: Path, tmp_path: Path):
    """A local user who means it raises the limit; loading then accepts the list (training it is their call)."""
    data = plates_with_names(plates_dir, tmp_path / "big", f"names: [{', '.join(many_names(100_000))}]\n")
    summary = load_dataset(data, work_dir=tmp_path / "work", limits=Limits(max_classes=200_000))
    assert len(summary.names) == 100_000 and summary.names[99_999] == "c099999"


def test_class_name_too_long_is_refused(plates_dir: Path, tmp_path: Path):
    data = plates_with_names(plates_dir, tmp_path / "d", f"names: [plate, {'x' * 101}]\n")
    with pytest.raises(LimitExceeded, match=r"data\.yaml: .*class 1.*101 is over the limit of 100 .*max_class_name"):
        load_dataset(data, work_dir=tmp_path / "work")
    assert load_dataset(data, work_dir=tmp_path / "w2", limits=Limits(max_class_name_chars=101)).names[1]


@pytest.mark.parametrize(
    ("file", "text", "shown"),
    [
        ("data.yaml", 'names: [plate, "car\\nlicense"]\n', r"'car\\nlicense'"),
        ("data.yaml", 'names: {0: plate, 1: "a\\u2028b"}\n', r"'a\\u2028b'"),
        ("data.yaml", 'names: [plate, "x\\u202ey"]\n', r"'x\\u202ey'"),
        ("classes.txt", "plate\n\x1b[31mred\n", r"'\\x1b\[31mred'"),
        ("classes.txt", "plate\nta\tb\n", r"'ta\\tb'"),
    ],
)
def test_class_name_with_control_characters_is_refused(
    plates_dir: Path, tmp_path: Path, file: str, text: str, shown: str
):
    data = plates_with_names(plates_dir, tmp_path / "d", "")
    (data / "data.yaml").unlink()
    (data / file).write_text(HEADER + text if file == "data.yaml" else text, "utf-8")
    work = tmp_path / "work"
    with pytest.raises(DatasetError, match=rf"{file}: class 1 name {shown} contains .*one line of printable text"):
        load_dataset(zip_folder(data, tmp_path / "d.zip"), work_dir=work)
    assert_nothing_left(work)


@pytest.mark.parametrize(
    "names", ["names: " + "[" * 100_000 + "]" * 100_000 + "\n", "names:\n" + "- " * 100_000 + "x\n"]
)
def test_deeply_nested_yaml_is_refused_quickly_without_crashing(plates_dir: Path, tmp_path: Path, names: str):
    """libyaml (which Ultralytics uses too) turns quadratic, then segfaults, on nesting this deep."""
    data = plates_with_names(plates_dir, tmp_path / "d", names)
    with pytest.raises(DatasetError, match=r"data\.yaml line \d+: nested more than 32 levels deep"):
        load_dataset(data, work_dir=tmp_path / "work", limits=QUICK)


# --- every dimension of a dataset bounded: COCO records, JSON records, values and depth, boxes per image -------------


@pytest.fixture
def plate(plates_dir: Path) -> Path:
    return sorted((plates_dir / "images" / "train").glob("*.jpg"))[0]


def bytes_written_by(call: Callable[[], object]) -> tuple[int, BaseException | None]:
    """Bytes this process passed to write/sendfile/copy_file_range during `call` (any file system), and its error."""
    before = psutil.Process().io_counters().write_chars
    try:
        call()
        error = None
    except Exception as e:  # the refusal, returned for the caller to check
        error = e
    return psutil.Process().io_counters().write_chars - before, error


def peak_rss_growth(call: Callable[[], object]) -> tuple[int, BaseException | None]:
    """How far this process's peak RSS rose above its RSS at the start during `call`, and its error.

    The peak is Linux's VmHWM, reset first: a sampling thread would miss it, as `json.loads` holds the GIL throughout.
    """
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := the current RSS
    start = psutil.Process().memory_info().rss
    try:
        call()
        error = None
    except Exception as e:
        error = e
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) << 10
    return peak - start, error


def test_coco_records_reusing_one_image_are_refused_without_copying_it(plate: Path, tmp_path: Path):
    archive = one_image_many_records(plate, tmp_path / "reuse.zip", records=10_000)
    work = tmp_path / "work"
    written, error = bytes_written_by(lambda: load_dataset(archive, work_dir=work))
    assert isinstance(error, DatasetError), error
    assert f"result.json image id 0 and export/result.json image id 1 both name 'images/{plate.name}'" in str(error)
    assert written < 2 * archive.stat().st_size, f"{written:,} bytes written for a {archive.stat().st_size:,} byte zip"
    assert_nothing_left(work)


def test_a_coco_export_is_written_once(plates_dir: Path, tmp_path: Path):
    """The extracted upload is moved into the dataset, not copied: disk written stays below twice what the zip holds."""
    archive = zipped(export_coco(plates_dir, tmp_path / "rf", layout="roboflow", counts=(("train", 12), ("val", 6))))
    held = sum(info.file_size for info in zipfile.ZipFile(archive).infolist())
    written, error = bytes_written_by(lambda: load_dataset(archive, work_dir=tmp_path / "work"))
    assert error is None and written < 1.5 * held, f"{written:,} bytes written for {held:,} bytes in the zip"


def test_json_of_millions_of_empty_objects_is_refused_before_parsing(plate: Path, tmp_path: Path):
    archive = json_of_empty_objects(plate, tmp_path / "objects.zip", objects=5_000_000)
    grown, error = peak_rss_growth(lambda: load_dataset(archive, work_dir=tmp_path / "work"))
    assert isinstance(error, LimitExceeded), error
    assert "result.json: objects and arrays ('{' and '[' characters): 5,000,00" in str(error)
    assert "over the limit of 1,000,000 (max_json_records)" in str(error) and "HEADKIT_MAX_JSON_RECORDS" in str(error)
    parsed, _ = peak_rss_growth(lambda: json.loads(zipfile.ZipFile(archive).read("export/result.json")))
    assert grown < 64 << 20 and parsed > 256 << 20, f"refused: {grown >> 20} MiB; parsed: {parsed >> 20} MiB"


def test_json_of_millions_of_strings_is_refused_by_its_values(plate: Path, tmp_path: Path):
    archive = json_of_short_strings(plate, tmp_path / "strings.zip", strings=20_000)
    with pytest.raises(
        LimitExceeded, match=r"result\.json: values and keys .*: 20,013 is over the limit of 10,000 \(max_json_v"
    ):
        load_dataset(archive, work_dir=tmp_path / "work", limits=Limits(max_json_values=10_000))


def test_deeply_nested_json_is_refused_with_a_message_not_a_recursion_error(plate: Path, tmp_path: Path):
    archive = deeply_nested_json(plate, tmp_path / "deep.zip", depth=100_000)
    with pytest.raises(DatasetError, match=r"export/result\.json: nested 100,001 levels deep; at most 32 are read"):
        load_dataset(archive, work_dir=tmp_path / "work", limits=QUICK)


def test_json_over_the_size_limit_is_not_read(plates_dir: Path, tmp_path: Path):
    source = export_coco(plates_dir, tmp_path / "ls", layout="label_studio", counts=(("train", 3),))
    data = json.loads((source / "result.json").read_text())
    (source / "result.json").write_text(json.dumps({**data, "info": {"notes": "x" * (1 << 20)}}))
    with pytest.raises(
        LimitExceeded, match=r"result\.json: size in MB: 1\.0 is over the limit of 0\.5 \(max_json_mb\)"
    ):
        load_dataset(source, work_dir=tmp_path / "work", limits=Limits(max_json_mb=0.5))


def test_more_json_files_than_a_coco_export_has_are_refused(plates_dir: Path, tmp_path: Path):
    source = export_coco(plates_dir, tmp_path / "ls", layout="label_studio", counts=(("train", 3),))
    for n in range(8):
        (source / "images" / f"meta{n}.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"ls: 9 JSON files \(images/meta0\.json, .*at most 8 are read"):
        load_dataset(source, work_dir=tmp_path / "work")


def test_label_file_with_10000_boxes_is_refused_naming_it(plate: Path, tmp_path: Path):
    archive = label_file_with_boxes(plate, tmp_path / "boxes.zip", boxes=10_000)
    work = tmp_path / "work"
    with pytest.raises(LimitExceeded) as refused:
        load_dataset(archive, work_dir=work)
    assert f"export/labels/train/{plate.stem}.txt: boxes (label rows): 10,000 is over the limit of 1,000" in str(
        refused.value
    )
    assert "(max_boxes_per_image)" in str(refused.value) and "HEADKIT_MAX_BOXES_PER_IMAGE" in str(refused.value)
    assert_nothing_left(work)
    assert (
        load_dataset(archive, work_dir=work, limits=Limits(max_boxes_per_image=10_000)).splits["train"].boxes == 10_000
    )


def test_label_file_too_big_for_its_boxes_is_not_read(tiny_plates: Path, tmp_path: Path):
    label = sorted((tiny_plates / "labels" / "train").glob("*.txt"))[0]
    label.write_text(("0 0.5 0.5 0.1 0.1" + " " * 1000 + "\n") * 400)  # 400 rows padded to 400 KB
    with pytest.raises(
        LimitExceeded, match=rf"labels/train/{label.stem}\.txt: 407,200 bytes, more than 1,000 boxes need"
    ):
        load_dataset(tiny_plates, work_dir=tmp_path / "work")


def test_coco_image_with_10000_boxes_is_refused_naming_it(plate: Path, tmp_path: Path):
    archive = many_boxes_on_one_image(plate, tmp_path / "boxes.zip", boxes=10_000)
    match = (
        rf"result\.json: boxes of image id 0 'images/{plate.stem}\.jpg': 10,000 is over the limit of 1,000 \(max_box"
    )
    with pytest.raises(LimitExceeded, match=match):
        load_dataset(archive, work_dir=tmp_path / "work")


def test_three_json_files_each_under_the_limit_are_refused_together(plate: Path, tmp_path: Path):
    """Attack: three COCO files in one upload, each just under `max_json_values`, were each
    accepted and all parsed at once (+1.7 GiB per request). The limits hold for the upload's JSON files together,
    checked before any is parsed."""
    archive = json_files_each_under_the_limit(plate, tmp_path / "three.zip", strings=4_000)
    limits = Limits(max_json_values=10_000)
    with pytest.raises(LimitExceeded) as refused:
        load_dataset(archive, work_dir=tmp_path / "work", limits=limits)
    assert "its 3 JSON files together (instances_test.json, instances_train.json, instances_val.json): values" in str(
        refused.value
    )
    assert "12,0" in str(refused.value) and "over the limit of 10,000 (max_json_values)" in str(refused.value)
    one = json_files_each_under_the_limit(plate, tmp_path / "one.zip", strings=4_000)
    with zipfile.ZipFile(one) as zf:  # each file alone is within the limit
        assert all(
            zf.read(n).count(b",") + zf.read(n).count(b":") + zf.read(n).count(b"[") + 2 < 10_000
            for n in zf.namelist()
            if n.endswith(".json")
        )
    assert_nothing_left(tmp_path / "work")


def test_json_bytes_of_an_upload_count_together(plate: Path, tmp_path: Path):
    archive = json_files_each_under_the_limit(plate, tmp_path / "three.zip", strings=100_000)  # ~0.5 MiB each
    with pytest.raises(LimitExceeded, match=r"its 3 JSON files together .*: size in MB: 1\.\d is over the limit of 1"):
        load_dataset(archive, work_dir=tmp_path / "work", limits=Limits(max_json_mb=1.0))


def test_concurrent_uploads_never_take_more_disk_than_the_server_has(tmp_path: Path):
    """Attack: 10 sessions uploading at once, each checked against a disk figure up to 5 s old,
    wrote 1,574 MiB against max_server_mb=200. Each extraction now reserves its declared size under one lock first:
    10 threads extracting 6 MiB each against a 20 MiB server never have more on disk than 20 MiB."""
    jobs = tmp_path / "jobs"
    budget = DiskBudget.under(jobs, limits=Limits(max_server_mb=20))
    archives = [zip_of_random_bytes(tmp_path / f"upload{n}.zip", files=6, mib=6) for n in range(10)]
    barrier, peak, done = threading.Barrier(10), [0], threading.Event()
    outcomes: list[BaseException | None] = [None] * 10

    def upload(n: int) -> None:
        barrier.wait()
        try:
            extract_zip(archives[n], jobs / f"session{n}" / "extracted", limits=ZipLimits(disk=budget))
        except Exception as e:  # the refusal, checked below
            outcomes[n] = e

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_bytes(jobs))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=upload, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    sampler.join()
    peak[0] = max(peak[0], tree_bytes(jobs))
    accepted = [n for n, e in enumerate(outcomes) if e is None]
    refused = [e for e in outcomes if e is not None]
    assert peak[0] <= 20 * 2**20, f"peak {peak[0] / 2**20:.1f} MiB on disk against max_server_mb=20"
    assert 1 <= len(accepted) <= 3 and len(refused) == 10 - len(accepted)
    assert all(isinstance(e, LimitExceeded) and "(max_server_mb)" in str(e) for e in refused), refused
    assert all("HEADKIT_MAX_SERVER_MB" in str(e) and "upload" in str(e) for e in refused)
    for n in set(range(10)) - set(accepted):
        assert not (jobs / f"session{n}" / "extracted").exists()  # refused before a byte was written


def test_a_reservation_held_by_another_process_is_honoured(tmp_path: Path):
    """The budget is shared by processes (dataset imports run in worker processes): a reservation another process
    holds refuses what would not fit, and counts no more once that process is gone."""
    jobs = tmp_path / "jobs"
    budget = DiskBudget.under(jobs, limits=Limits(max_server_mb=20))
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from headkit.disk import DiskBudget; from headkit.limits import "
            "Limits\nwith DiskBudget.under(Path(sys.argv[1]), limits=Limits(max_server_mb=20)).reserve(15 << 20, "
            "'other'):\n    print('held', flush=True); sys.stdin.read()",
            str(jobs),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LimitExceeded, match=r"x: disk taken and reserved .*: 2\d(\.\d)? is over the limit of 20 "):
            with budget.reserve(8 << 20, "x"):
                pass
        with budget.reserve(4 << 20, "fits beside it"):
            pass
    finally:
        holder.kill()
        holder.wait()
    budget.forget()  # count again now: the holder's files (none) are on disk
    with budget.reserve(8 << 20, "fits now"):
        assert budget.used_mb() == pytest.approx(8, abs=0.5)
