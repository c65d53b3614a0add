"""load_dataset on the real plates data, Roboflow exports, broken labels and images, and hostile zips."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import event, given, settings
from hypothesis import strategies as st
from PIL import Image
from ultralytics.data.utils import check_det_dataset

from headkit.datasets import DatasetError, DatasetSummary, ZipLimits, _read_dataset, load_dataset, parse_label_line
from headkit.limits import Limits

BOX = "0 0.5 0.5 0.2 0.2"


def _tree_hash(root: Path) -> str:
    """Names, bytes and modes of every file under `root`, so any change to the tree shows."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(path.relative_to(root).as_posix().encode())
        if path.is_file():
            digest.update(path.read_bytes())
            digest.update(str(path.stat().st_mode).encode())
    return digest.hexdigest()


def _zip(folder: Path, archive: Path, *, top: str = "") -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{top}/{path.relative_to(folder).as_posix()}".lstrip("/"))
    return archive


def _to_roboflow(src: Path, dst: Path) -> Path:
    """Roboflow's YOLO export: train/ and valid/ each with images/ and labels/, yaml paths relative to ../"""
    for split, folder in (("train", "train"), ("val", "valid")):
        for part in ("images", "labels"):
            shutil.copytree(src / part / split, dst / folder / part)
    (dst / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\n\nnc: 1\nnames: ['license_plate']\n\n"
        "roboflow:\n  workspace: demo\n  version: 1\n"
    )
    return dst


def _boxes(labels: Path) -> int:
    return sum(1 for f in labels.rglob("*.txt") for line in f.read_text().splitlines() if line.strip())


def _first(folder: Path) -> Path:
    return sorted(folder.iterdir())[0]


def _jpeg(size: tuple[int, int] = (32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 150)).save(buf, "JPEG")
    return buf.getvalue()


def _png_claiming(width: int, height: int) -> bytes:
    """A 16x16 PNG whose header claims another size: PIL reads the header before any pixel."""
    buf = io.BytesIO()
    Image.new("L", (16, 16)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    struct.pack_into(">II", data, 16, width, height)  # IHDR payload starts after signature(8) + length(4) + type(4)
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _assert_yaml_accepted(summary: DatasetSummary, cwd: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """The written yaml has no `path:` key and Ultralytics resolves it from an unrelated working directory."""
    assert "path" not in yaml.safe_load(summary.yaml_path.read_text())
    monkeypatch.chdir(cwd)
    data = check_det_dataset(str(summary.yaml_path), autodownload=False)
    assert Path(data["train"]).is_dir() and Path(data["val"]).is_dir()
    return data


# --- the real dataset ---------------------------------------------------------------------------------------------


def test_real_plates_load_with_the_counts_of_sources_md_and_stay_untouched(plates_dir: Path, tmp_path: Path):
    before = _tree_hash(plates_dir)
    summary = load_dataset(plates_dir, work_dir=tmp_path / "work")
    assert summary.names == {0: "license_plate"}
    counts = {split: (c.images, c.boxes, c.per_class) for split, c in summary.splits.items()}
    assert counts == {"train": (224, 354, {0: 354}), "val": (35, 43, {0: 43}), "test": (36, 59, {0: 59})}
    assert summary.warnings == []
    assert summary.yaml_path == plates_dir / "data.yaml"  # already normalized: used in place, nothing copied
    assert _tree_hash(plates_dir) == before
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())
    as_dict = summary.to_dict()
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert as_dict["splits"]["train"]["per_class"] == {"license_plate": 354}


# --- accepted layouts ---------------------------------------------------------------------------------------------


def test_nested_roboflow_zip_loads_and_ultralytics_accepts_the_written_yaml(
    tiny_plates: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    export = _to_roboflow(tiny_plates, tmp_path / "export")
    archive = _zip(export, tmp_path / "export.zip", top="plates-1")
    work = tmp_path / "work"
    summary = load_dataset(archive, work_dir=work)
    assert summary.names == {0: "license_plate"}
    assert {s: c.images for s, c in summary.splits.items()} == {"train": 8, "val": 4}
    assert summary.splits["train"].boxes == _boxes(tiny_plates / "labels" / "train")
    assert summary.splits["val"].boxes == _boxes(tiny_plates / "labels" / "val")
    assert summary.warnings == []
    assert summary.root.is_relative_to(work)
    data = _assert_yaml_accepted(summary, tmp_path, monkeypatch)
    assert data["names"] == {0: "license_plate"}


@pytest.mark.parametrize("where", ["classes.txt", "labels/train/classes.txt"])
def test_classes_txt_gives_the_names_when_there_is_no_yaml(
    tiny_plates: Path, tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
):
    (tiny_plates / "data.yaml").unlink()
    (tiny_plates / where).write_text("license_plate\n")
    before = _tree_hash(tiny_plates)
    summary = load_dataset(tiny_plates, work_dir=tmp_path / "work")
    assert summary.names == {0: "license_plate"}
    assert summary.warnings == []  # classes.txt among the labels is not an orphan label file
    assert _tree_hash(tiny_plates) == before
    assert summary.root.is_relative_to(tmp_path / "work")
    _assert_yaml_accepted(summary, tmp_path, monkeypatch)


def test_roboflow_folder_is_copied_never_changed(tiny_plates: Path, tmp_path: Path):
    export = _to_roboflow(tiny_plates, tmp_path / "export")
    before = _tree_hash(export)
    summary = load_dataset(export, work_dir=tmp_path / "work")
    assert _tree_hash(export) == before
    assert sorted(p.name for p in (summary.root / "images" / "val").iterdir()) == sorted(
        p.name for p in (export / "valid" / "images").iterdir()
    )


def test_missing_val_split_is_made_deterministically(
    tiny_plates: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    for part in ("images", "labels"):
        for path in (tiny_plates / part / "val").iterdir():
            path.rename(tiny_plates / part / "train" / path.name)
        (tiny_plates / part / "val").rmdir()
    (tiny_plates / "data.yaml").write_text("train: images/train\nnames: [license_plate]\n")
    before = _tree_hash(tiny_plates)
    first = load_dataset(tiny_plates, work_dir=tmp_path / "a", val_fraction=0.25)
    second = load_dataset(tiny_plates, work_dir=tmp_path / "b", val_fraction=0.25)
    listing = [
        {s: sorted(p.name for p in (summary.root / "images" / s).iterdir()) for s in ("train", "val")}
        for summary in (first, second)
    ]
    assert listing[0] == listing[1]
    train, val = set(listing[0]["train"]), set(listing[0]["val"])
    assert len(val) == 3 and len(train) == 9 and not train & val
    assert train | val == {p.name for p in (tiny_plates / "images" / "train").iterdir()}
    labelled = {p.stem for p in (first.root / "labels" / "val").iterdir()}
    assert labelled == {Path(n).stem for n in val}  # labels travel with their images
    assert first.splits["train"].boxes + first.splits["val"].boxes == _boxes(tiny_plates / "labels")
    assert _tree_hash(tiny_plates) == before
    _assert_yaml_accepted(first, tmp_path, monkeypatch)


def test_utf8_bom_labels_are_accepted(tiny_plates: Path, tmp_path: Path):
    label = _first(tiny_plates / "labels" / "train")
    label.write_bytes(b"\xef\xbb\xbf" + label.read_bytes())
    assert load_dataset(tiny_plates, work_dir=tmp_path / "work").warnings == []


# --- refusals -----------------------------------------------------------------------------------------------------


def _bad_line(line: str) -> Callable[[Path], str]:
    """Append `line` as line 2 of the first train label file; returns that file's relative path."""

    def mutate(root: Path) -> str:
        label = _first(root / "labels" / "train")
        label.write_text(f"{BOX}\n{line}\n")
        return f"labels/train/{label.name} line 2"

    return mutate


def _label_bytes(data: bytes, where: str) -> Callable[[Path], str]:
    def mutate(root: Path) -> str:
        label = _first(root / "labels" / "train")
        label.write_bytes(data)
        return f"labels/train/{label.name}{where}"

    return mutate


def _image_bytes(data: bytes | Callable[[bytes], bytes], name: str = "") -> Callable[[Path], str]:
    def mutate(root: Path) -> str:
        image = _first(root / "images" / "train")
        if name:
            image.unlink()
            image = image.with_name(name)
        image.write_bytes(data(image.read_bytes()) if callable(data) else data)
        return f"images/train/{image.name}"

    return mutate


def _yaml(text: str, where: str = "data.yaml") -> Callable[[Path], str]:
    def mutate(root: Path) -> str:
        (root / "data.yaml").write_text(text)
        return where

    return mutate


def _no_images(root: Path) -> str:
    for path in (root / "images").rglob("*.jpg"):
        path.unlink()
    return "no images found"


def _gif(_: bytes) -> bytes:
    buf = io.BytesIO()
    Image.new("P", (32, 32)).save(buf, "GIF")
    return buf.getvalue()


REFUSALS = {
    "too few columns": (_bad_line("0 0.5 0.5 0.2"), "found 4 columns, expected 5"),
    "polygon": (_bad_line("0 0.1 0.1 0.4 0.1 0.4 0.4"), "segment (polygon)"),
    "keypoints": (_bad_line("0 0.5 0.5 0.2 0.2 0.5 0.5 2"), "pose (keypoint)"),
    "not a number": (_bad_line("0 0.5 abc 0.2 0.2"), "'abc' is not a number"),
    "nan": (_bad_line("0 nan 0.5 0.2 0.2"), "'nan' is not a number"),
    "coordinate above 1": (_bad_line("0 1.5 0.5 0.2 0.2"), "normalised to [0, 1]"),
    "negative coordinate": (_bad_line("0 0.5 -0.1 0.2 0.2"), "normalised to [0, 1]"),
    "zero width": (_bad_line("0 0.5 0.5 0 0.2"), "width and height must be > 0"),
    "fractional class": (_bad_line("0.5 0.5 0.5 0.2 0.2"), "not an integer"),
    "class beyond names": (_bad_line("1 0.5 0.5 0.2 0.2"), "outside 0..0"),
    "negative class": (_bad_line("-1 0.5 0.5 0.2 0.2"), "outside 0..0"),
    "utf-16 labels": (_label_bytes(f"{BOX}\n".encode("utf-16"), ""), "UTF-16"),
    "binary labels": (_label_bytes(f"{BOX}\n".encode() + b"\x00\x01\x02", " line 2"), "not UTF-8"),
    "latin-1 labels": (_label_bytes(f"{BOX}\n0 0.5 0.5 0.2 0.2 \xe9\n".encode("latin-1"), " line 2"), "not UTF-8"),
    "text named .jpg": (_image_bytes(b"definitely not a jpeg"), "not a readable image"),
    "truncated jpeg": (_image_bytes(lambda b: b[: len(b) // 2]), "not a readable image"),
    "gif named .jpg": (_image_bytes(_gif), "GIF"),
    "tiny image": (_image_bytes(_jpeg((5, 5))), "under 10 px"),
    "over our pixel limit": (_image_bytes(_png_claiming(9_000, 9_000), "huge.png"), "too large"),
    "over pillow's warning limit": (_image_bytes(_png_claiming(10_000, 9_500), "huger.png"), "too large"),
    "pillow decompression bomb": (_image_bytes(_png_claiming(100_000, 100_000), "bomb.png"), "too large"),
    "no images": (_no_images, "expected image files"),
    "no class names": (_yaml("train: images/train\nval: images/val\n"), "no class names"),
    "empty names": (_yaml("train: images/train\nval: images/val\nnames: []\n"), "no class names"),
    "duplicate names": (_yaml("train: images/train\nval: images/val\nnames: [plate, car, plate]\n"), "used twice"),
    "names disagree with nc": (_yaml("nc: 2\nnames: [plate]\n"), "make them agree"),
    "broken yaml": (_yaml("names: [plate\ntrain: images/train\n", "data.yaml line 2"), "not valid YAML"),
}


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_refusals_name_the_file_and_line(tiny_plates: Path, tmp_path: Path, case: tuple[Callable, str]):
    mutate, reason = case
    where = mutate(tiny_plates)
    with pytest.raises(DatasetError) as caught:
        load_dataset(tiny_plates, work_dir=tmp_path / "work")
    message = str(caught.value)
    assert where in message and reason in message, message
    assert not (tmp_path / "work").exists() or not any((tmp_path / "work").iterdir())  # nothing left behind


def test_refusals_from_a_zip_name_the_file_inside_it(tiny_plates: Path, tmp_path: Path):
    label = _first(tiny_plates / "labels" / "val")
    label.write_text(f"{BOX}\n{BOX}\n0 0.5 0.5 0.2 1.2\n")
    work = tmp_path / "work"
    with pytest.raises(DatasetError, match=rf"top/labels/val/{label.stem}\.txt line 3: coordinates"):
        load_dataset(_zip(tiny_plates, tmp_path / "d.zip", top="top"), work_dir=work)
    assert list(work.iterdir()) == []


def test_missing_source_and_other_files_are_refused(tmp_path: Path):
    with pytest.raises(DatasetError, match="found nothing"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "data.rar").write_bytes(b"Rar!")
    with pytest.raises(DatasetError, match="found a .rar file"):
        load_dataset(tmp_path / "data.rar")


def test_no_layout_is_refused(tmp_path: Path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(_jpeg())
    with pytest.raises(DatasetError, match="no dataset folder structure found.*Roboflow"):
        load_dataset(tmp_path)


# --- warnings -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("removed", "warned", "says", "split", "images", "labelled"),
    [
        ("labels/train", "images/train/{}.jpg", "background", "train", 8, 7),  # an image without a label
        ("images/val", "labels/val/{}.txt", "without an image", "val", 3, 3),  # a label without an image: ignored
    ],
)
def test_an_unpaired_image_or_label_is_warned(
    tiny_plates: Path, tmp_path: Path, removed: str, warned: str, says: str, split: str, images: int, labelled: int
):
    gone = _first(tiny_plates / removed)
    gone.unlink()
    summary = load_dataset(tiny_plates, work_dir=tmp_path / "work")
    assert len(summary.warnings) == 1 and warned.format(gone.stem) in summary.warnings[0]
    assert says in summary.warnings[0]
    assert (summary.splits[split].images, summary.splits[split].labelled) == (images, labelled)


def test_class_name_of_the_base_model_is_warned(tiny_plates: Path, caplog: pytest.LogCaptureFixture):
    summary = load_dataset(tiny_plates, base_names=["person", "License_Plate"])
    assert len(summary.warnings) == 1 and "'license_plate' (id 0)" in summary.warnings[0]
    assert summary.warnings[0] in caplog.text  # also logged


# --- hostile zips -------------------------------------------------------------------------------------------------


def _assert_nothing_left(work: Path, outside: Path) -> None:
    assert not outside.exists()
    assert not work.exists() or list(work.iterdir()) == []


@pytest.mark.parametrize("name", ["../evil.txt", "ok/../../evil.txt", "ABSOLUTE"])
def test_zip_entries_escaping_the_job_folder_are_refused(tmp_path: Path, name: str):
    outside = tmp_path / "evil.txt"
    name = str(outside) if name == "ABSOLUTE" else name
    work = tmp_path / "work"
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("data/images/train/a.jpg", _jpeg())
        zf.writestr(name, "pwned")
    with pytest.raises(DatasetError, match="outside the dataset folder"):
        load_dataset(archive, work_dir=work)
    _assert_nothing_left(work, outside)


def test_zip_bomb_is_refused_before_writing_it(tmp_path: Path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", bytes(50 << 20))
    assert archive.stat().st_size < 1 << 20
    # refused from the sizes the zip's directory declares (no timing assert: the import's worker takes ~2-6 s to start)
    with pytest.raises(DatasetError, match="entry 'zeros.bin' expands .*zip bomb"):
        load_dataset(archive, work_dir=tmp_path / "work")
    _assert_nothing_left(tmp_path / "work", tmp_path / "never")


def test_zip_bomb_spread_over_small_entries_is_refused(tmp_path: Path):
    archive = tmp_path / "bombs.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(24):
            zf.writestr(f"data/zeros{i}.bin", bytes(512 << 10))  # each below the per-entry ratio floor
    with pytest.raises(DatasetError, match="overall .*zip bomb"):
        load_dataset(archive, work_dir=tmp_path / "work")
    _assert_nothing_left(tmp_path / "work", tmp_path / "never")


def test_zip_whose_header_lies_about_its_size_is_refused(tmp_path: Path):
    archive = tmp_path / "liar.zip"
    name = "images/train/zeros.jpg"  # a dataset file, so it is extracted (others are skipped unread)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, bytes(50 << 20))
    data = bytearray(archive.read_bytes())
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 1 << 20)  # declared uncompressed size: 1 MiB instead of 50
    archive.write_bytes(bytes(data))
    with zipfile.ZipFile(archive) as zf:
        assert zf.getinfo(name).file_size == 1 << 20
    with pytest.raises(DatasetError, match="could not be extracted|zip bomb"):
        load_dataset(archive, work_dir=tmp_path / "work")
    _assert_nothing_left(tmp_path / "work", tmp_path / "never")


@pytest.mark.parametrize(
    ("limits", "reason"),
    [(ZipLimits(max_entries=5), "at most 5 are accepted"), (ZipLimits(max_total_bytes=10_000), "bytes uncompressed")],
)
def test_zip_over_its_limits_is_refused(tiny_plates: Path, tmp_path: Path, limits: ZipLimits, reason: str):
    archive = _zip(tiny_plates, tmp_path / "d.zip")
    with pytest.raises(DatasetError, match=reason):
        load_dataset(archive, work_dir=tmp_path / "work", zip_limits=limits)
    _assert_nothing_left(tmp_path / "work", tmp_path / "never")


def test_zip_bounds_passed_as_limits_are_refused_with_the_keyword_to_use(tiny_plates: Path, tmp_path: Path):
    """`limits=` is `headkit.Limits` as in load_head and merge; the zip bounds it once meant go to `zip_limits=`."""
    with pytest.raises(TypeError, match=r"takes headkit\.Limits; pass zip bounds as zip_limits=ZipLimits"):
        load_dataset(tiny_plates, work_dir=tmp_path / "work", limits=ZipLimits(max_entries=5))


def test_symlink_in_zip_is_ignored_with_a_warning(tiny_plates: Path, tmp_path: Path):
    archive = _zip(tiny_plates, tmp_path / "d.zip", top="plates")
    with zipfile.ZipFile(archive, "a") as zf:
        link = zipfile.ZipInfo("plates/images/train/passwd.jpg")
        link.create_system = 3  # unix, so external_attr carries the file type
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    summary = load_dataset(archive, work_dir=tmp_path / "work")
    assert any("symlink" in w and "passwd.jpg" in w for w in summary.warnings), summary.warnings
    assert summary.splits["train"].images == 8
    assert not list((tmp_path / "work").rglob("passwd.jpg"))


def test_a_file_that_is_not_a_zip_is_refused(tmp_path: Path):
    (tmp_path / "d.zip").write_bytes(b"PK\x03\x04 but nothing else")
    with pytest.raises(DatasetError, match="could not be extracted"):
        load_dataset(tmp_path / "d.zip", work_dir=tmp_path / "work")


# --- label math ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "cls", "xywhn"),
    [
        ("0 0.5 0.5 0.2 0.2", 0, [0.5, 0.5, 0.2, 0.2]),
        ("2\t0.25  0.75 1 1e-1", 2, [0.25, 0.75, 1.0, 0.1]),
        ("1.0 0 1 .5 0.5\r", 1, [0.0, 1.0, 0.5, 0.5]),
    ],
)
def test_parse_label_line_reads_boxes(line: str, cls: int, xywhn: list[float]):
    got_cls, got = parse_label_line(line, nc=3)
    assert got_cls == cls and got.dtype == np.float32 and got.tolist() == pytest.approx(xywhn)


def test_parse_label_line_reads_polygons_only_when_asked():
    line = "1 0.1 0.2 0.3 0.2 0.3 0.4"
    with pytest.raises(DatasetError, match="x.txt line 7: .*segment"):
        parse_label_line(line, nc=2, file="x.txt", line_no=7)
    cls, xyn = parse_label_line(line, nc=2, allow_polygons=True)
    assert cls == 1 and xyn.shape == (3, 2) and xyn[2].tolist() == pytest.approx([0.3, 0.4])


_TOKENS = st.one_of(
    st.integers(-3, 5).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.floats(0, 1).map(lambda v: f"{v:.4f}"),
    st.text(max_size=6),
)


_COORDS = st.lists(st.floats(0.001, 1) | st.floats(-0.1, 1.1), min_size=4, max_size=4)
_BOX_LINES = st.tuples(st.integers(-1, 4), _COORDS).map(
    lambda row: " ".join([str(row[0]), *(f"{v:.3f}" for v in row[1])])
)


@settings(max_examples=100, deadline=None, database=None)
@given(st.one_of(st.text(max_size=60), st.lists(_TOKENS, max_size=9).map(" ".join), _BOX_LINES), st.integers(1, 4))
def test_parse_label_line_returns_a_valid_box_or_refuses(line: str, nc: int):
    try:
        cls, xywhn = parse_label_line(line, nc=nc, file="f.txt", line_no=3)
    except DatasetError as e:
        event("refused")
        assert str(e).startswith("f.txt line 3: ")
        return
    event("parsed")
    assert 0 <= cls < nc and xywhn.shape == (4,)
    assert np.all((xywhn >= 0) & (xywhn <= 1)) and xywhn[2] > 0 and xywhn[3] > 0


_LABEL_FILES = st.one_of(
    st.binary(max_size=80),
    st.text(max_size=80).map(str.encode),
    st.lists(st.one_of(st.just(BOX), st.lists(_TOKENS, max_size=7).map(" ".join)), max_size=4).map(
        lambda lines: "\n".join(lines).encode()
    ),
)
_NAMES = ["names: [plate]\n", "names: {0: plate, 1: car}\n", "names: plate\n", "names: [a, a]\n", "nc: 3\n"]


@settings(max_examples=60, deadline=None, database=None)
@given(content=_LABEL_FILES, names=st.sampled_from(_NAMES))
def test_load_dataset_on_arbitrary_labels_returns_or_refuses(
    tmp_path_factory: pytest.TempPathFactory, content: bytes, names: str
):
    root = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    image = _jpeg()
    for split, stem in (("train", "a"), ("train", "b"), ("val", "c")):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        (root / "images" / split / f"{stem}.jpg").write_bytes(image)
        (root / "labels" / split / f"{stem}.txt").write_text(f"{BOX}\n")
    (root / "labels" / "train" / "a.txt").write_bytes(content)
    (root / "data.yaml").write_text("train: images/train\nval: images/val\n" + names)
    work = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    try:  # the reader load_dataset runs in its worker, here in-process: a property of parsing, 60 files, not spawns
        summary = _read_dataset(root, work, (), 0.2, ZipLimits(), Limits())
    except DatasetError:
        event("refused")
        return
    event("loaded")
    assert summary.splits["train"].images == 2 and summary.splits["val"].boxes == 1
