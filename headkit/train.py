"""train_head(): a new Detect head on the base's frozen trunk, with progress, cancel and proof the trunk is untouched."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.nn.modules.head import Detect

from .base import clone_model, ensure_detect_base
from .detect import NARROW, check_narrow_width, light_detect, narrow_width
from .headfile import Head, extract_head
from .kinds import PLAIN, branch_end, resolve_branch
from .labels import load_yaml, names_file_bytes, read_names
from .merging import merge
from .posehead import detect_head_from_pose, train_pose_head
from .progress import TrainingCancelled, TrainProgress, train_reporting  # noqa: F401 (callers catch it from here)
from .runfiles import RunFiles
from .settings import current_limits
from .shaping import ShapedHeadTrainer, ShapedPoseTrainer, inject_path, shape_slot
from .trunk import base_facts, detection_model

LOGGER = logging.getLogger(__name__)
CLASS_BRANCHES = ("base", "light")
BOX_BRANCHES = ("own", "shared")


@dataclass
class TrainResult:
    """What a training run produced: the head, val metrics per class, Ultralytics' run folder and the wall time."""

    head: Head
    metrics: dict[str, dict[str, float]]
    run_dir: Path
    seconds: float

    def plots(self) -> list[Path]:
        """Ultralytics' result plots (results, PR curve, confusion matrix, ...), if it made them."""
        return sorted(p for p in self.run_dir.glob("*.png"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": self.head.names,
            "metrics": self.metrics,
            "run_dir": str(self.run_dir),
            "seconds": round(self.seconds, 2),
            "trunk_check": self.head.metadata.get("trunk_check"),
            "kind": self.head.kind.describe(),
        }


def default_device() -> str:
    """ "0" (first GPU) when CUDA is available, else "cpu"."""
    return "0" if torch.cuda.is_available() else "cpu"


def _class_names(yaml_path: Path) -> dict[int, str]:
    """The dataset's class names, read as uploads are (bounded file, checked names), to size a "narrow" branch."""
    limits = current_limits()
    data = load_yaml(yaml_path, yaml_path.name, max_bytes=names_file_bytes(limits))
    return read_names(data, yaml_path.name, None, "", limits=limits)


def _data_yaml(data: str | Path, base) -> Path:
    path = Path(data)
    if path.suffix in {".yaml", ".yml"} and path.is_file():
        return path
    from .datasets import load_dataset

    base_names = base_facts(base).names.values()
    return load_dataset(path, base_names=base_names).yaml_path


def train_head(
    base,
    data: str | Path,
    *,
    epochs: int = 30,
    imgsz: int = 640,
    batch: int = 16,
    device: str = "auto",
    progress: Callable[[TrainProgress], None] | None = None,
    stop: Callable[[], bool] | None = None,
    project: str | Path | None = None,
    name: str = "head",
    keypoint_trick: bool = False,
    init_head: Head | None = None,
    branch: str | int = "head",
    class_branch: str = "base",
    class_width: int | str | None = None,
    box_branch: str = "own",
    **overrides: Any,
) -> TrainResult:
    """Train a new head for the dataset's classes on the base's frozen layers with Ultralytics' own trainer.

    `branch="head"` trains a Detect head alone on the frozen trunk; `branch="neck"` also trains the head's own copy
    of every layer after the backbone (more accurate, costs the neck again at inference); an int is the first layer
    the head owns. Every layer before that is frozen (`freeze=`, read from the model) and Ultralytics 8.4 keeps their
    BatchNorm layers in eval mode. The head is taken from the run's best.pt after checking its shared layers still
    equal the base's bit for bit, the metrics from the run folder (`headkit.runfiles`), so a multi-GPU run, whose
    training happens in other processes, yields the same result; merging later uses the base's own layers.

    Args:
        data: a data.yaml, a dataset folder or a .zip (validated by `load_dataset`).
        device: "auto" (GPU if present), "cpu", a CUDA index such as "0", or several ("0,1": Ultralytics' DDP, in
            worker processes it starts; `batch` is the total, split evenly between the GPUs).
        progress: called per batch and per epoch with a TrainProgress (from a thread following the run folder).
        stop: polled every 0.1 s while training; returning True cancels after the current batch
            (TrainingCancelled) and nothing is saved.
        keypoint_trick: train a one-keypoint Pose head on box centres (box/dfl gains 0.01) and keep its Detect part
            (`headkit.posehead`), of any shape but the light class branch; the head is marked `trained_with:
            keypoint-trick`.
        init_head: start from this head's weights instead of the base head's (e.g. to go on training a head at a
            larger image size); it must fit the base, and its branch decides the branch.
        branch: "head", "neck", "p3", "p3-last" or a layer index (see `headkit.kinds.resolve_branch`). "p3" owns only
            the layers feeding the Detect's first input after the backbone (`headkit.kinds.path_range`; YOLOv8:
            10-15), its other inputs the base's own maps; it trains beside the frozen base in the Detect slot
            (`BranchDetect`). "p3-last" owns only that path's last stage (YOLOv8: 13-15).
        class_branch: "base" builds the new Detect like the base's; "light" gives it the depthwise class branch of
            YOLO11/YOLO26 (`DetectLayout.depthwise`: fewer parameters and FLOPs) on any base. With `init_head`, that head's
            layout decides.
        box_branch: "own" (default): the head's own box branch, started from the base's; "shared": where the head's
            Detect reads the base's own maps (every level of a head-only head, P4/P5 of a "p3"/"p3-last" head) its
            box branch stays the base's (frozen), so a merged model runs it once for both (`headkit.sharedbox`).
        class_width: a narrow class branch of this hidden width (`headkit.detect.narrow_widths`, below the base's),
            started from the base's own class branch: its strongest channels (`headkit.detect.narrow_detect`). Fewer
            FLOPs for a head of few classes; the box branch is the base's, as for "base". "narrow" picks the width
            from the dataset's classes (`headkit.detect.narrow_width`: 32 for up to 32 classes, growing with them as
            Ultralytics' does; the base's width where that is not narrower). Not with class_branch="light" or
            `init_head` (whose layout decides).
        **overrides: passed to Ultralytics' trainer (lr0, patience, mosaic, ...).
    """
    ensure_detect_base(base)
    start = init_head.kind.branch_start if init_head is not None else resolve_branch(base, branch)
    end = init_head.kind.branch_end if init_head is not None else branch_end(base, branch)
    light = _light_class_branch(base, class_branch, init_head)
    _check_path(end, light=light)
    if light and keypoint_trick:
        raise ValueError(
            "class_branch='light' on this base is not available with keypoint_trick=True (the pose variant is built "
            "from the base's own architecture); train with class_branch='base', or without the keypoint trick"
        )
    _check_class_width(class_width, light=light, init_head=init_head)
    shared_box = _shared_box(box_branch, start=start, end=end, light=light, init_head=init_head)
    narrow = class_width == NARROW
    if narrow:  # the width follows the classes: the dataset is read first
        yaml_path = _data_yaml(data, base)
        class_width = narrow_width(len(_class_names(yaml_path)), base_facts(base).layout.channels)
    path = None if end is None else (start, end)
    if keypoint_trick:  # the pose variant is shaped in `posehead`: a bad width is refused before the data is unpacked
        if class_width is not None:
            check_narrow_width(base_facts(base).layout, class_width)
        model = None
    else:
        model = _start_model(base, init_head, class_width, path, shared_box=shared_box)  # refuses a bad width too
    if not narrow:
        yaml_path = _data_yaml(data, base)
    settings = _settings(
        base, yaml_path, start, epochs=epochs, imgsz=imgsz, batch=batch, device=device, project=project, name=name
    )
    if light:
        settings["trainer"] = LightHeadTrainer
    if class_width is not None or end is not None or shared_box:
        settings["trainer"] = ShapedPoseTrainer if keypoint_trick else ShapedHeadTrainer
    if end is not None:
        settings["freeze"] = base_facts(base).head_index  # the base's own layers all stay; the branch trains beside
    settings.update(overrides)
    started = time.perf_counter()
    if keypoint_trick:
        shape = {"class_width": class_width, "path": path, "shared_box": shared_box}
        model, trainer = train_pose_head(base, yaml_path, settings=settings, progress=progress, stop=stop, **shape)
        run_dir = Path(trainer.save_dir)
    else:
        run_dir = train_reporting(model, settings, progress, stop)
    seconds = time.perf_counter() - started
    # read from the run folder, not the trainer: under DDP this process's trainer never validates
    metrics = RunFiles(run_dir).metrics()
    # Ultralytics' Model.train has loaded the run's best.pt (else last.pt) into `model`, in DDP as in one process
    if keypoint_trick:
        head = detect_head_from_pose(model, base, imgsz=imgsz, metrics=metrics, branch_start=start, branch_end=end)
    else:
        head = extract_head(
            model, base, imgsz=imgsz, metrics=metrics, trained_with=PLAIN, branch_start=start, branch_end=end
        )
    LOGGER.info("trained head %s in %.1fs: %s", head.names, seconds, metrics.get("all"))
    return TrainResult(head=head, metrics=metrics, run_dir=run_dir, seconds=seconds)


def _light_class_branch(base, class_branch: str, init_head: Head | None) -> bool:
    """Whether the run must swap in a depthwise class branch: asked for (or the init head has one) on a base without.

    Raises:
        ValueError: an unknown choice, or "light" with a base-style `init_head` on a YOLOv8-style base.
    """
    choice = class_branch.strip().lower() if isinstance(class_branch, str) else class_branch
    if choice not in CLASS_BRANCHES:
        raise ValueError(f"class_branch={class_branch!r}: expected one of {', '.join(map(repr, CLASS_BRANCHES))}")
    if base_facts(base).layout.depthwise:
        return False  # YOLO11/YOLO26 heads already have the depthwise class branch: "light" is the base's style
    if init_head is None:
        return choice == "light"
    init_light = init_head.layout.depthwise
    if choice == "light" and not init_light:
        raise ValueError(
            f"class_branch='light', but {init_head.where} has the base's class branch (YOLOv8's); a run goes on "
            "with its init head's layout — leave class_branch at 'base', or train a new light head without init_head"
        )
    return init_light


def _check_class_width(class_width: int | str | None, *, light: bool, init_head: Head | None) -> None:
    """Refuse `class_width` where a run cannot narrow the class branch (its range is checked by `narrow_detect`).

    Raises:
        ValueError: not an int or "narrow", or with class_branch='light' or an init head.
    """
    if class_width is None:
        return
    if class_width != NARROW and (isinstance(class_width, bool) or not isinstance(class_width, int)):
        raise ValueError(f"class_width={class_width!r}: expected a number of channels (an int), 'narrow' or None")
    clash = (
        "class_branch='light' (a fresh depthwise branch)" if light
        else f"init_head ({init_head.where}'s own layout decides)" if init_head is not None
        else None
    )  # fmt: skip
    if clash:
        raise ValueError(f"class_width={class_width} is not available with {clash}; leave class_width unset")


def _shared_box(box_branch: str, *, start: int | None, end: int | None, light: bool, init_head: Head | None) -> bool:
    """Whether the run keeps the box branch the base's where the head reads the base's maps (`box_branch="shared"`).

    Raises:
        ValueError: an unknown choice, or "shared" where nothing could be shared (a branch that owns every map its
            Detect reads) or with the light class branch or an init head (whose own box branch decides).
    """
    choice = box_branch.strip().lower() if isinstance(box_branch, str) else box_branch
    if choice not in BOX_BRANCHES:
        raise ValueError(f"box_branch={box_branch!r}: expected one of {', '.join(map(repr, BOX_BRANCHES))}")
    if choice == "own":
        return False
    clash = (
        "a branch that owns every map its Detect reads (use branch='head', 'p3' or 'p3-last')"
        if start is not None and end is None
        else "class_branch='light'" if light
        else f"init_head ({init_head.where}'s own box branch decides)" if init_head is not None
        else None
    )  # fmt: skip
    if clash:
        raise ValueError(f"box_branch='shared' is not available with {clash}; leave box_branch at 'own'")
    return True


def _check_path(end: int | None, *, light: bool) -> None:
    """Refuse a path branch ("p3", "p3-last") with what cannot carry it yet.

    Raises:
        ValueError: the light class branch with a path branch.
    """
    if end is not None and light:
        raise ValueError(
            "a path branch ('p3', 'p3-last') is not available with class_branch='light'; use class_width= for a "
            "lighter class branch"
        )


class LightHeadTrainer(DetectionTrainer):
    """Ultralytics' detect trainer, whose model gets a Detect head with the depthwise class branch.

    The trainer builds its model from the base's architecture, which on a YOLOv8 base means the YOLOv8 class
    branch; `get_model` swaps that model's Detect for `light_detect`'s, an instance of its own (no class attribute
    changes). A module-level class: Ultralytics' multi-GPU launch pickles it by name with the built model.
    """

    def get_model(self, cfg=None, weights=None, verbose: bool = True):
        model = super().get_model(cfg=cfg, weights=weights, verbose=verbose)
        source = (weights.get("ema") or weights.get("model")) if isinstance(weights, dict) else weights
        layer = getattr(source, "model", [None])[-1] if isinstance(source, torch.nn.Module) else None
        model.model[-1] = light_detect(model.model[-1], layer if isinstance(layer, Detect) else None)
        return model


def _settings(
    base, yaml_path: Path, start: int | None, *, epochs: int, imgsz: int, batch: int, device: str,
    project: str | Path | None, name: str,
) -> dict[str, Any]:  # fmt: skip
    """Ultralytics trainer arguments for a head run: the layers before `start` (else the base head) frozen."""
    device = default_device() if device == "auto" else device
    return {
        "data": str(yaml_path),
        "epochs": epochs,
        "imgsz": imgsz,
        "batch": batch,
        "device": device,
        "freeze": base_facts(base).head_index if start is None else start,
        "project": str(Path(project or "runs/headkit").resolve()),
        "name": name,
        "exist_ok": True,
        "plots": True,
        "verbose": False,
        "workers": min(4, os.cpu_count() or 1) if device != "cpu" else min(2, os.cpu_count() or 1),
    }


def _start_model(
    base,
    init_head: Head | None,
    class_width: int | None = None,
    path: tuple[int, int] | None = None,
    *,
    shared_box: bool = False,
):
    """The model training starts from: a copy of the base (its class branch narrowed to `class_width`, warm; with a
    path branch of layers `path` (start, end), its Detect slot a `BranchDetect` of copies of those base layers), or
    the base with `init_head` in place of its head (a path head's branch in the Detect slot, as it trained)."""
    if init_head is not None and init_head.kind.branch_end is not None:
        model = clone_model(base)
        inject_path(detection_model(model), base, init_head.build_branch(base))  # its fit checked first
    else:
        model = merge(base, init_head, keep_base_head=False) if init_head else clone_model(base)
        shape_slot(detection_model(model), base, class_width, path, shared_box=shared_box)
    model.ckpt = {"model": detection_model(model)}  # makes Ultralytics start from these weights, not random ones
    return model
