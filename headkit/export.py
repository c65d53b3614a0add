"""Write a merged model to files people can run elsewhere: the Ultralytics .pt, TorchScript and ONNX.

The .pt pickles `headkit.concat.ConcatHead`, so it loads only where headkit is importable; elsewhere Ultralytics'
AutoInstall would `pip install headkit` from PyPI, i.e. run whatever that name holds. TorchScript and ONNX carry the
traced graph and Ultralytics' metadata (names, stride, imgsz), so plain `ultralytics.YOLO("merged.onnx")` runs them.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .headfile import Head
from .limits import Limits
from .merging import ConcatHead, check_output_size, merge
from .settings import current_limits
from .trunk import base_facts

LOGGER = logging.getLogger(__name__)
FORMATS = ("pt", "torchscript", "onnx")
PORTABLE_FORMATS = ("torchscript", "onnx")  # run with plain Ultralytics, no headkit needed


@dataclass(frozen=True)
class ExportedModel:
    """The files written for one merged model, and its class names (base first, then each head's).

    Attributes:
        files: every file written, in the order of `formats`.
        names: class index -> name of the merged model.
        paths: format ("pt", "torchscript", "onnx") -> its file.
        needs_headkit: the files that load only where headkit is installed (the .pt of a model with several heads);
            label them so in any UI, and offer TorchScript/ONNX to people without headkit.
    """

    files: list[Path]
    names: dict[int, str]
    paths: dict[str, Path] = field(default_factory=dict)
    needs_headkit: list[Path] = field(default_factory=list)


def _formats(formats: Sequence[str] | str, onnx: bool) -> list[str]:
    formats = (formats,) if isinstance(formats, str) else formats
    chosen = [str(f).lower().lstrip(".") for f in formats] + (["onnx"] if onnx else [])
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown:
        raise ValueError(
            f"unknown export format(s) {unknown}; expected some of {', '.join(FORMATS)} — for other Ultralytics "
            "formats export the saved .pt with ultralytics.YOLO(path).export(format=...) where headkit is installed"
        )
    if not chosen:
        raise ValueError(f"no export format chosen; pass formats= with some of {', '.join(FORMATS)}")
    return list(dict.fromkeys(chosen))


def export_merged(
    base,
    heads: Sequence[Head],
    folder: str | Path,
    *,
    name: str = "merged",
    keep_base_head: bool = True,
    onnx: bool = False,
    imgsz: int = 640,
    formats: Sequence[str] | str = ("pt",),
    limits: Limits | None = None,
) -> ExportedModel:
    """Merge `heads` onto `base` and write `<folder>/<name>.pt`, `.torchscript` and/or `.onnx`.

    The .pt loads with `ultralytics.YOLO(path)` only where headkit is importable when it holds a `ConcatHead` (more
    than one head kept). TorchScript and ONNX need only Ultralytics: `YOLO("merged.onnx").predict(image)` gives the
    merged classes, with the names, stride and input size Ultralytics' exporter embeds. They are traced from the
    in-memory merged model at a fixed `imgsz` x `imgsz`, batch 1, float32, without NMS inside.

    Args:
        onnx: also write ONNX (kept for callers from before `formats`; the same as adding "onnx").
        formats: any of "pt", "torchscript", "onnx".
        limits: caps on heads, classes and output size; default `headkit.settings.current_limits()`.

    Raises:
        ValueError: an unknown format, or what `merge` refuses.
        LimitExceeded: too many heads or classes, or the raw output at `imgsz` over `max_output_mb`.
    """
    chosen = _formats(formats, onnx)
    limits = limits or current_limits()
    model = merge(base, *heads, keep_base_head=keep_base_head, limits=limits)
    if any(f in PORTABLE_FORMATS for f in chosen):
        limits.check("max_imgsz", imgsz, "export image size (model input, pixels)")
        check_output_size(model, imgsz, limits)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pt"
    # The exporter names its files after the model's pt_path, which merge() copied from the base: point it here
    # so nothing is written beside the base (often a read-only cache).
    facts = base_facts(model)
    facts.inner.pt_path = str(path)
    paths: dict[str, Path] = {}
    for fmt in chosen:
        if fmt == "pt":
            model.save(path)
            paths[fmt] = path
        else:
            exported = Path(model.export(format=fmt, imgsz=imgsz, verbose=False))
            target = folder / f"{name}.{fmt}"
            if exported != target:
                shutil.move(exported, target)
            paths[fmt] = target
    concat = isinstance(facts.detect, ConcatHead)
    LOGGER.info("saved merged model (%s) to %s: %s", ", ".join(model.names.values()), folder, ", ".join(chosen))
    return ExportedModel(
        list(paths.values()), dict(model.names), paths, [paths["pt"]] if concat and "pt" in paths else []
    )
