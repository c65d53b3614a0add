"""What a dataset's text says: label rows, class names, YAML and JSON read within bounds; DatasetError if malformed."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from pathlib import Path

import numpy as np
import yaml

from headkit.limits import ENV, LimitExceeded, Limits

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
# Line and paragraph breaks, and the bidi controls that make a table show text in another order than it is stored.
_UNPRINTABLE = {"Cc", "Cs", "Zl", "Zp"}
_BIDI_CONTROLS = set("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# libyaml: ~10x faster than pure Python on a long `names:` list, but deep nesting makes it quadratic and then crash
# the process (segfault near 30,000 levels); `_too_deep` streams its events first and stops at `MAX_DEPTH`.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_DEPTH = 32
"""Deepest nesting read from a data.yaml (2-3 levels) or a JSON file (COCO: 4); deeper input is refused unparsed."""
LABEL_ROW_BYTES = 256
"""Bytes allowed per box row of a label file (a row is ~40 bytes) when bounding its size by `max_boxes_per_image`."""
_NOT_JSON_STRUCTURE = bytes(c for c in range(256) if c not in b'"[]{}')  # all bytes but quotes and brackets


class DatasetError(ValueError):
    """A dataset that is refused; the message names the file (and line), what was expected and the fix."""


def parse_label_line(
    line: str,
    *,
    nc: int | None,
    file: str = "",
    line_no: int = 0,
    allow_polygons: bool = False,
    dtype: type = np.float32,
) -> tuple[int, np.ndarray]:
    """Parse one YOLO label row `class cx cy w h` (normalised: every coordinate in [0, 1], none outside it; the one
    parser of label rows, for datasets and the keypoint converter alike).

    Args:
        nc: the number of class names, or None where they are not known (then any class id from 0 is taken).
        file, line_no: where the row is, for refusals (`file line N: ...`).
        allow_polygons: also read a `class x1 y1 x2 y2 x3 y3 ...` row (a segment label).
        dtype: of the returned coordinates.

    Returns:
        Class id and xywhn (4,); with `allow_polygons`, a polygon row gives xyn (K, 2).

    Raises:
        DatasetError: a row of another shape, a value that is not a number, a class id that is not one of the names,
            coordinates outside [0, 1] (pixels, most often) or a box without width or height.
    """
    where = f"{file or 'label'}{f' line {line_no}' if line_no else ''}"
    fields = line.split()
    n = len(fields)
    polygon = n >= 7 and n % 2 == 1
    if n != 5 and not (allow_polygons and polygon):
        if n > 5:
            looks_like = "a segment (polygon) label" if polygon else "a pose (keypoint) label or a row with scores"
            raise DatasetError(
                f"{where}: found {n} columns, but detection labels have exactly 5 (class cx cy w h); this looks like "
                f"{looks_like}; export the dataset in YOLO detection (box) format, or, if it already has keypoints, "
                "train a pose model on it directly"
            )
        raise DatasetError(
            f"{where}: found {n} columns, expected 5 (class cx cy w h); this is not YOLO detection data: complete "
            "or delete the row"
        )
    values = []
    for token in fields:
        value = float(token) if _NUMBER.fullmatch(token) else math.nan
        if not math.isfinite(value):
            raise DatasetError(f"{where}: {token[:20]!r} is not a number; expected numbers (class cx cy w h)")
        values.append(value)
    cls = values[0]
    ids = f"0..{nc - 1}" if nc is not None else "0, 1, 2, ..."
    if cls != int(cls):
        raise DatasetError(f"{where}: class id {fields[0]} is not an integer class id; expected {ids}")
    if cls < 0 or (nc is not None and cls >= nc):
        raise DatasetError(
            f"{where}: class id {int(cls)} is outside {ids} ({nc} class names); fix the id or add the class name"
            if nc is not None
            else f"{where}: class id {int(cls)} is negative; class ids count from 0"
        )
    coords = np.asarray(values[1:], dtype=np.float64)
    if coords.min() < 0 or coords.max() > 1:
        raise DatasetError(
            f"{where}: coordinates must be normalised to [0, 1], found {fields[1:]}; normalised coordinates are "
            "pixel values divided by the image width and height"
        )
    if n == 5 and (coords[2] <= 0 or coords[3] <= 0):
        raise DatasetError(f"{where}: box width and height must be > 0, found w={fields[3]} h={fields[4]}")
    coords = coords.astype(dtype)
    return int(cls), coords if n == 5 else coords.reshape(-1, 2)


def is_int(value: object) -> bool:
    """An int that is not a bool (JSON's and YAML's true would pass isinstance(..., int))."""
    return isinstance(value, int) and not isinstance(value, bool)


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, an ellipsis marking the cut: how refusals quote what a stranger wrote."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def names_file_bytes(limits: Limits) -> int:
    """Largest data.yaml or classes.txt accepted, in bytes.

    Room for `max_classes` names of `max_class_name_chars` characters (4 UTF-8 bytes each, plus quoting and an id),
    and 1 MiB for everything else.
    """
    return limits.max_classes * (4 * limits.max_class_name_chars + 32) + (1 << 20)


def load_yaml(path: Path, rel: str, *, max_bytes: int | None = None) -> dict:
    """A data.yaml as a mapping; YAML syntax errors name their line; a file over `max_bytes` is not parsed.

    Raises:
        LimitExceeded: The file is over `max_bytes`.
        DatasetError: Not YAML, not a mapping, or nested deeper than `MAX_DEPTH`.
    """
    text = read_text(path, rel, max_bytes=max_bytes)
    try:
        too_deep = _too_deep(text)
        data = None if too_deep else yaml.load(text, Loader=_LOADER)
    except (yaml.YAMLError, RecursionError, ValueError) as e:  # bad dates raise ValueError, deep nesting recursion
        mark = getattr(e, "problem_mark", None)
        where = f"{rel} line {mark.line + 1}" if mark else rel
        raise DatasetError(f"{where}: not valid YAML ({getattr(e, 'problem', e)}); fix the syntax") from e
    if too_deep:
        raise DatasetError(
            f"{rel} line {too_deep}: nested more than {MAX_DEPTH} levels deep; a data.yaml needs 2 or 3 "
            "(names: under the top mapping); flatten it"
        )
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DatasetError(f"{rel}: expected a mapping with `names:`, found {type(data).__name__}")
    return data


def _too_deep(text: str) -> int:
    """The line where YAML nesting passes `MAX_DEPTH`, or 0; streams parser events, building nothing."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_LOADER):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    return event.start_mark.line + 1
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError as e:  # newer libyaml builds refuse deep nesting themselves, with their own words
        mark = getattr(e, "problem_mark", None)
        if "nesting depth" in str(getattr(e, "problem", "")) and mark is not None:
            return mark.line + 1
        raise
    return 0


def load_json(path: Path, rel: str, *, limits: Limits) -> object:
    """A JSON file, parsed only once its size, its counts of records and values and its depth are within `limits`.

    `json.loads` allocates ~70 bytes per `{}` and per short string and recurses once per level; the counts are upper
    bounds taken from the raw bytes (brackets and commas inside strings count too), so nothing is built before them.

    Raises:
        LimitExceeded: Over `max_json_mb`, `max_json_records` or `max_json_values`.
        DatasetError: Nested deeper than `MAX_DEPTH`, not UTF-8, not valid JSON, or NaN/Infinity as a number.
    """
    try:
        limits.check("max_json_mb", path.stat().st_size / 2**20, f"{rel}: size in MB")
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{rel}: cannot be read ({e.strerror}); check the file's permissions") from e
    records = raw.count(b"{") + raw.count(b"[")
    limits.check("max_json_records", records, f"{rel}: objects and arrays ('{{' and '[' characters)")
    values = records + raw.count(b",") + raw.count(b":") + 1  # an object's key costs about what a value does
    limits.check("max_json_values", values, f"{rel}: values and keys ('{{', '[', ',' and ':' characters)")
    depth = json_depth(raw)
    if depth > MAX_DEPTH:
        raise DatasetError(
            f"{rel}: nested {depth:,} levels deep; at most {MAX_DEPTH} are read (a COCO file has 4), so it is not "
            "parsed; this is not an annotation file: remove it or export the annotations again"
        )
    try:
        return json.loads(raw.decode("utf-8-sig"), parse_constant=_no_constant)
    except UnicodeDecodeError as e:
        raise DatasetError(f"{rel}: not UTF-8 text ({e}); export the annotations again as JSON") from e
    except json.JSONDecodeError as e:
        raise DatasetError(f"{rel}, line {e.lineno} column {e.colno}: not valid JSON ({e.msg})") from e
    except ValueError as e:  # NaN/Infinity (`_no_constant`), integers over Python's 4,300 digits
        raise DatasetError(f"{rel}: {e}; expected finite numbers") from e


def json_depth(raw: bytes, chunk: int = 1 << 23) -> int:
    """Deepest nesting of objects and arrays in JSON text, ignoring brackets inside strings; vectorised, ~1 s/100 MB."""
    # Escaped backslashes first, then escaped quotes: what is left of each string is its two quotes and brackets.
    marks = np.frombuffer(raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_JSON_STRUCTURE), np.uint8)
    quotes, depth, deepest = 0, 0, 0
    for start in range(0, len(marks), chunk):
        part = marks[start : start + chunk]
        is_quote = part == ord('"')
        in_string = (np.cumsum(is_quote, dtype=np.int64) + quotes) % 2 == 1
        quotes += int(is_quote.sum())
        brackets = part[~is_quote & ~in_string]
        if brackets.size:
            levels = np.cumsum(np.where((brackets == ord("{")) | (brackets == ord("[")), 1, -1), dtype=np.int64) + depth
            deepest, depth = max(deepest, int(levels.max())), int(levels[-1])
    return deepest


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a box or a size can have")


def label_file_bytes(limits: Limits) -> int:
    """Largest label file read: `max_boxes_per_image` rows of `LABEL_ROW_BYTES`, and 64 KiB for blank lines."""
    return limits.max_boxes_per_image * LABEL_ROW_BYTES + (1 << 16)


def read_label_rows(path: Path, rel: str, *, limits: Limits) -> list[tuple[int, str]]:
    """(line number, row) of each non-blank row of a YOLO label file, refused unread when too big for its boxes.

    Raises:
        LimitExceeded: More bytes than `label_file_bytes` or more rows than `max_boxes_per_image`.
        DatasetError: Unreadable or not UTF-8.
    """
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DatasetError(f"{rel}: cannot be read ({e.strerror}); check the file's permissions") from e
    most = label_file_bytes(limits)
    if size > most:
        raise LimitExceeded(
            f"{rel}: {size:,} bytes, more than {limits.max_boxes_per_image:,} boxes need ({most:,} bytes, the limit "
            f"max_boxes_per_image), so it is not read; split the image's boxes or raise the limit: set "
            f"{ENV['max_boxes_per_image']} on the server, or pass headkit.Limits(max_boxes_per_image=...) in Python"
        )
    rows = [(no, line) for no, line in enumerate(read_text(path, rel).splitlines(), 1) if line.strip()]
    limits.check("max_boxes_per_image", len(rows), f"{rel}: boxes (label rows)")
    return rows


def read_names(
    data: dict, yaml_rel: str, classes_txt: Path | None, txt_rel: str, *, limits: Limits | None = None
) -> dict[int, str]:
    """Class names from data.yaml `names:` (list or mapping), else from a LabelImg-style classes.txt (one a line).

    The count is checked against `limits.max_classes` as soon as the file is parsed, before anything is built per
    class, and each name against `max_class_name_chars`.

    Raises:
        LimitExceeded: Too many classes (`names:`, `nc:` or classes.txt lines) or a too long name.
        DatasetError: Malformed names: not text, duplicated, not ids 0..n-1, or with line breaks or control characters.
    """
    limits = Limits() if limits is None else limits
    nc = data.get("nc")
    if is_int(nc):
        limits.check("max_classes", nc, f"{yaml_rel}: `nc:`")
    if data.get("names") is not None:
        raw, source = data["names"], yaml_rel
        if not isinstance(raw, list | dict):
            raise DatasetError(f"{source}: `names:` must be a list or a mapping, found {type(raw).__name__}")
        limits.check("max_classes", len(raw), f"{source}: class names")
        if isinstance(raw, list):
            raw = dict(enumerate(raw))
        if "nc" in data and data["nc"] != len(raw):
            raise DatasetError(f"{source}: `nc: {data['nc']}` but {len(raw)} names; make them agree")
    elif classes_txt is not None:
        text = read_text(classes_txt, txt_rel, max_bytes=names_file_bytes(limits)).rstrip()
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")  # not splitlines: it splits on \x1c too
        limits.check("max_classes", len(lines), f"{txt_rel}: class names")
        raw, source = dict(enumerate(lines)), txt_rel
    else:
        raise DatasetError(
            f"{yaml_rel or 'dataset'}: no class names; expected data.yaml with `names:` or classes.txt (one name a line)"
        )
    names: dict[int, str] = {}
    for key, value in raw.items():
        if isinstance(key, bool) or not isinstance(key, int | str) or not str(key).strip().isdecimal():
            raise DatasetError(f"{source}: class id {key!r} is not an integer; expected ids 0..{len(raw) - 1}")
        if not isinstance(value, str | int | float) or not str(value).strip():
            raise DatasetError(f"{source}: class {key} has no usable name (found {value!r}); give it a text name")
        names[int(key)] = _check_name(str(value).strip(), key, source, limits)
    if not names:
        raise DatasetError(f"{source}: no class names; list at least one class")
    if sorted(names) != list(range(len(names))):
        raise DatasetError(f"{source}: class ids must be 0..{len(names) - 1}, found {sorted(names)}")
    seen: dict[str, int] = {}
    for i, name in sorted(names.items()):
        if name in seen:
            raise DatasetError(
                f"{source}: class name '{name}' is used twice (ids {seen[name]} and {i}); "
                "give each class a distinct name"
            )
        seen[name] = i
    return dict(sorted(names.items()))


def _check_name(name: str, key: int | str, source: str, limits: Limits) -> str:
    """`name` if it fits one table cell: not too long, no line breaks, control or bidi characters."""
    shown = repr(clip(name, 41))
    limits.check("max_class_name_chars", len(name), f"{source}: characters in the name of class {key} ({shown})")
    bad = next((c for c in name if unicodedata.category(c) in _UNPRINTABLE or c in _BIDI_CONTROLS), None)
    if bad is not None:
        what = unicodedata.name(bad, "a control character")
        raise DatasetError(
            f"{source}: class {key} name {shown} contains {what} (U+{ord(bad):04X}); a class name must be one line "
            "of printable text (it ends up in tables and model cards); remove the character"
        )
    return name


def read_text(path: Path, rel: str, *, max_bytes: int | None = None) -> str:
    """UTF-8 text (a BOM is accepted); UTF-16 and binary files are refused, naming the line of the first bad byte.

    Raises:
        LimitExceeded: The file is over `max_bytes` (the class-name limits; see `names_file_bytes`); not read.
        DatasetError: Unreadable or not UTF-8.
    """
    try:
        if max_bytes is not None and (size := path.stat().st_size) > max_bytes:
            raise LimitExceeded(
                f"{rel}: {size:,} bytes, more than a file of max_classes names of max_class_name_chars characters "
                f"needs ({max_bytes:,} bytes), so it is not read; use a smaller file, or raise the limits: set "
                f"{ENV['max_classes']} / {ENV['max_class_name_chars']} on the server, or pass "
                "headkit.Limits(max_classes=...) in Python"
            )
        data = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"{rel}: cannot be read ({e.strerror}); check the file's permissions") from e
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DatasetError(f"{rel}: is UTF-16 text, expected UTF-8; re-save the file as UTF-8")
    bad = data.find(b"\x00")
    try:
        if bad >= 0:
            raise UnicodeDecodeError("utf-8", data, bad, bad + 1, "NUL byte")
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DatasetError(
            f"{rel} line {line}: byte 0x{data[e.start]:02x} is not UTF-8 text (binary or another "
            "encoding); expected UTF-8; re-save the file as UTF-8"
        ) from e
