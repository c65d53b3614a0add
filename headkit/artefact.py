"""The three safetensors files headkit writes (a head, an embedded base, a fine-tune): one reader, one writer, one schema.

Encoding: the header's `__metadata__` maps known keys to JSON texts. Heads and fine-tunes write one key per fact
(`format`, `names`, ...); an embedded base writes one key, `headkit_base`, holding a JSON object of its facts, keys
sorted (safetensors writes several keys in no fixed order, and the same base must give the same bytes). A file's type
is its `format` (fine-tunes before headkit 0.1 wrote it bare, not as JSON text; both read), never a search of its text.

Schema: each file type is a `schema.Record` of the keys it may hold, each key typed and bounded (`headkit.schema`);
a key it does not know is refused by name, and each value is measured against its type before it is parsed.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .limits import LimitExceeded, Limits
from .schema import (
    BOOL,
    NAMES,
    NUMBER,
    Either,
    FileRefused,
    Int,
    Json,
    ListOf,
    MapOf,
    Record,
    Text,
    nullable,
    parse,
    refuse_keys,
)

# --- the three file types -------------------------------------------------------------------------------------------

_HEX = Text(64)
_LEVELS = 16  # a Detect reads a handful of levels; detect.DetectLayout bounds a layout to MAX_LEVELS
_DETECT = {
    "names": NAMES,
    "channels": ListOf(Int(), _LEVELS),
    "reg_max": Int(),
    "strides": ListOf(NUMBER, _LEVELS),
    "legacy": BOOL,
    "class_width": nullable(Int()),
    "activation": Record({"type": Text(32), "negative_slope": NUMBER, "alpha": NUMBER}, frozenset({"type"})),
    "end2end": BOOL,
    "kind": Text(16),  # written by headkit 0.1 ("detect"), read by nothing: accepted, dropped
}
# Ultralytics' YAMLs: depth 4, < 100 lists and objects, ~1 KiB; rows are bounded again by branch.check_rows (256)
ROWS = Json(depth=4, max_bytes=64 * 2**10, max_values=16_384, max_containers=2048)
_HEAD = _DETECT | {
    "base_fingerprint": _HEX,
    "base_fingerprint_verified": BOOL,
    "base_source": nullable(Text(4096)),
    "base_names": nullable(NAMES),
    "legacy_layer": Int(0, 4096),
    "label": Text(256),
    "ultralytics_version": nullable(Text(32)),
    "imgsz": nullable(Either((Int(1, 100_000), ListOf(Int(1, 100_000), 2)))),
    "metrics": nullable(
        MapOf(
            MapOf(NUMBER, key=Text(16), max_items=8),
            key=Text(limit="max_class_name_chars"),
            limit="max_classes",
            extra=1,
            counted="rows of metrics",
        )  # fmt: skip
    ),
    "trunk_check": nullable(
        Record(
            {
                "tensors": Int(0),
                "identical": Int(0),
                "max_abs_diff": NUMBER,
                "changed": ListOf(Text(256), 64),
                "untouched": BOOL,
            }
        )  # fmt: skip
    ),
    "trained_with": Text(32),
    "created": Text(40),
}
_BRANCH = Record(
    {
        "start": Int(),
        "end": Int(),  # a path branch's: one past its last layer (absent: up to the Detect)
        "inputs": ListOf(Int(), 256),
        "detect_from": ListOf(Int(), _LEVELS),
        "architecture": ROWS,
    },
    frozenset({"start", "inputs", "detect_from", "architecture"}),
)
_HEAD_REQUIRED = frozenset({"names", "channels", "reg_max", "strides", "legacy", "base_fingerprint"})
_IMGSZ = Int(1, limit="max_imgsz")  # a base's imgsz becomes predict's default size
_BASE = Record(
    {
        "format": Text(40),
        "family": Text(32),
        "scale": Text(8),
        "names": NAMES,
        "stride": ListOf(NUMBER, _LEVELS),
        "args": Record(
            {"imgsz": Either((_IMGSZ, ListOf(_IMGSZ, 2))), "task": Text(choices=("detect",)), "single_cls": BOOL}
        ),  # fmt: skip
        "fingerprint": _HEX,
        "source_sha256": Text(64),
        "source": Text(255),
        "ultralytics_version": Text(32),
    },
    frozenset({"format", "family", "scale", "names", "stride", "args", "fingerprint", "source_sha256"}),
)


@dataclass(frozen=True)
class Format:
    """One file type: its `format` name, metadata schema and bounds, and what loads it (for refusals)."""

    name: str
    noun: str
    loader: str
    schema: Record
    entry: str | None = None  # the one metadata key holding every fact (embedded bases)
    max_header_bytes: int = 4 * 2**20  # 1,500 non-ASCII class names of 100 characters, escaped twice, fit
    max_mb: float | None = None  # None: limits.max_head_mb


MAX_TENSORS = 2000  # a yolov8x is ~370 tensors
DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I32": 4, "I64": 8}
HEAD = Format("headkit.head/1", "head", "load it with headkit.load_head", Record(_HEAD, _HEAD_REQUIRED))
BRANCH_HEAD = Format(
    "headkit.head/2", "head", "load it with headkit.load_head", Record(_HEAD | {"branch": _BRANCH}, _HEAD_REQUIRED)
)
BASE = Format("headkit.base/1", "base model", "load it with headkit.load_model", _BASE, "headkit_base", 2**20, 512.0)
FINETUNE = Format(
    "headkit.finetune/1",
    "fine-tuned model",
    "compare it in the app, or load it with headkit.finetune.load_finetuned",
    Record({"names": NAMES, "yaml": ROWS}, frozenset({"names"})),
)
FORMATS = {form.name: form for form in (HEAD, BRANCH_HEAD, BASE, FINETUNE)}


@dataclass(frozen=True)
class Artefact:
    """A file's checked header: its format, its metadata (schema-checked, `format` and `kind` removed) and its
    tensors' shapes. No tensor data has been read."""

    path: Path
    format: Format
    metadata: dict[str, Any]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def tensors(self) -> dict[str, torch.Tensor]:
        with safe_open(str(self.path), framework="pt") as f:
            return {key: f.get_tensor(key) for key in f.keys()}


def _header(path: Path, accept: tuple[Format, ...], limits: Limits) -> tuple[dict[str, str], dict]:
    """The metadata texts and tensor table, the file and its header bounded before safetensors parses them."""
    where, size_bytes = path.name, path.stat().st_size
    caps = [form.max_mb for form in accept]
    if None in caps:
        limits.check("max_head_mb", round(size_bytes / 2**20, 1), f"{where}: file size in MiB")
    elif size_bytes / 2**20 > max(caps):
        raise FileRefused(
            f"{where}: {size_bytes / 2**20:.0f} MiB, over the {max(caps):.0f} MiB a {accept[0].noun} may take"
        )
    with path.open("rb") as f:
        start = f.read(8)
    declared = struct.unpack("<Q", start)[0] if len(start) == 8 else None
    most = max(form.max_header_bytes for form in accept)
    if declared is None or declared > size_bytes - 8:
        raise FileRefused(
            f"{where}: not a readable .safetensors file: its safetensors header is missing, damaged or over {most:,} "
            "bytes; get the file again"
        )
    if declared > most:
        raise FileRefused(
            f"{where}: its header takes {declared / 2**20:.1f} MiB; a {accept[0].noun}'s takes at most "
            f"{most / 2**20:g} MiB — this is not a {accept[0].noun} headkit made"
        )
    try:
        with safe_open(str(path), framework="pt") as f:  # reads the header only
            raw, keys = f.metadata() or {}, list(f.keys())
            if len(keys) > MAX_TENSORS:
                raise FileRefused(f"{where}: {len(keys)} tensors, over the {MAX_TENSORS} a headkit file may have")
            table = {key: (tuple(f.get_slice(key).get_shape()), f.get_slice(key).get_dtype()) for key in keys}
    except FileRefused:
        raise
    except Exception as e:  # safetensors raises its own SafetensorError for any malformed header
        raise FileRefused(f"{where}: not a readable .safetensors file ({str(e)[:120]}); get the file again") from e
    odd = sorted({dtype for _, dtype in table.values()} - DTYPES.keys())
    if odd:
        raise FileRefused(f"{where}: tensors of type {odd}; headkit files hold only {', '.join(DTYPES)}")
    data = sum(math.prod(shape) * DTYPES[dtype] for shape, dtype in table.values()) / 2**20
    if None in caps:
        limits.check("max_head_mb", round(data, 1), f"{where}: tensor data in MiB")
    return raw, {key: shape for key, (shape, _) in table.items()}


def _format_of(raw: dict[str, str], where: str, limits: Limits) -> tuple[Format | None, dict[str, Any]]:
    """The file's format (None: not one headkit writes) and its metadata: texts per key, or a base's parsed facts."""
    if BASE.entry in raw:  # the base's format sits inside its one entry, parsed whole (bounded by the schema)
        if set(raw) != {BASE.entry}:
            raise FileRefused(f"{where}: not a headkit base (its metadata should be one '{BASE.entry}' entry)")
        facts = parse(raw[BASE.entry], BASE.schema, f"metadata '{BASE.entry}'", where, limits)
        return FORMATS.get(facts.pop("format")), facts
    text = raw.get("format")
    if text is None:
        return None, {}
    name = (
        parse(text, Text(40), "metadata 'format'", where, limits) if text.startswith('"') else text
    )  # bare: old fine-tunes
    return FORMATS.get(name), {k: v for k, v in raw.items() if k != "format"}


def read(path: str | Path, accept: tuple[Format, ...], limits: Limits) -> Artefact:
    """A file's header, checked in full (file size, header bytes, tensor count, dtypes and bytes, format, metadata
    schema) before any tensor data is read; a file of another headkit type is refused naming what loads it.

    Raises:
        LimitExceeded: over a `Limits` field (size, classes, name length, image size).
        FileRefused: not a readable safetensors file, not of an accepted format, or metadata outside the schema.
    """
    path = Path(path)
    where = path.name
    raw, shapes = _header(path, accept, limits)
    form, found = _format_of(raw, where, limits)
    if form not in accept:
        wanted = accept[0]
        if form is None:
            names = " or ".join(f"'{f.name}'" for f in accept)
            raise FileRefused(f"{where}: not a headkit {wanted.noun} (metadata 'format' should be {names})")
        raise FileRefused(f"{where}: this is a {form.noun}, not a {wanted.noun}; {form.loader}")
    if form.entry is None:
        fields = form.schema.fields  # parsed in the schema's order: refusals do not depend on the header's order
        try:
            refuse_keys(set(found), form.schema, f"{form.noun} metadata", where)
            found = {
                k: parse(found[k], spec, f"metadata '{k}'", where, limits) for k, spec in fields.items() if k in found
            }
        except LimitExceeded:
            raise
        except FileRefused as e:
            raise FileRefused(
                f"{e}; headkit did not write this file as it is — get or save the {form.noun} again"
            ) from e
    found.pop("kind", None)
    return Artefact(path, form, found, shapes)


def compact(tensor: torch.Tensor) -> torch.Tensor:
    """fp16 when that is exact (Ultralytics checkpoints hold fp16 values): half the file, the same numbers."""
    if tensor.is_floating_point() and torch.equal(tensor.half().to(tensor.dtype), tensor):
        return tensor.half().contiguous()
    return tensor.contiguous()


def write(path: str | Path, tensors: dict[str, torch.Tensor], form: Format, metadata: dict[str, Any]) -> Path:
    """Write a file of `form` atomically (temp file, then rename): a crash never leaves half a file behind.

    Raises:
        ValueError: a metadata key the schema does not know (a file headkit writes is one it reads).
    """
    path = Path(path)
    metadata = {key: value for key, value in metadata.items() if key not in ("kind", "format")}
    unknown = sorted(metadata.keys() - form.schema.fields.keys())
    if unknown:
        raise FileRefused(
            f"{path.name}: metadata {unknown[:5]} is not in the {form.name} schema; drop it before saving"
        )
    if form.entry:
        text = {form.entry: json.dumps({"format": form.name, **metadata}, sort_keys=True)}
    else:
        text = {key: json.dumps(value) for key, value in metadata.items()} | {"format": json.dumps(form.name)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".part")
    os.close(fd)
    try:
        save_file({key: value.detach().cpu().contiguous() for key, value in tensors.items()}, tmp, metadata=text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes owner-only files; these are ordinary files
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path
