"""Write a merged model to files people can run elsewhere: the Ultralytics .pt and, optionally, ONNX."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ultralytics import YOLO

from .headfile import Head
from .merge import merge

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportedModel:
    """The files written for one merged model, and its class names (base first, then each head's)."""

    files: list[Path]
    names: dict[int, str]


def export_merged(
    base,
    heads: Sequence[Head],
    folder: str | Path,
    *,
    name: str = "merged",
    keep_base_head: bool = True,
    onnx: bool = False,
    imgsz: int = 640,
) -> ExportedModel:
    """Merge `heads` onto `base` and save `<folder>/<name>.pt` (and `<name>.onnx`).

    The .pt loads with plain `ultralytics.YOLO(path)` where headkit is importable (it holds a `ConcatHead` when more
    than one head is kept). ONNX is exported from that saved file, at a fixed `imgsz`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = merge(base, *heads, keep_base_head=keep_base_head)
    path = folder / f"{name}.pt"
    model.save(path)
    files = [path]
    if onnx:
        exported = YOLO(str(path)).export(format="onnx", imgsz=imgsz, verbose=False)
        files.append(Path(exported))
    LOGGER.info("saved merged model (%s) to %s", ", ".join(model.names.values()), folder)
    return ExportedModel(files, dict(model.names))
