"""The keypoint trick: train the extra head as a one-keypoint Pose head, then keep only its Detect part.

A Pose head is a Detect head (box, class and DFL branches) plus a keypoint branch `cv4`; each branch reads the
trunk's feature maps on its own. Trained on box centres as keypoints with the box and DFL loss gains cut to 0.01, a
trainable trunk would learn from the centre-distance loss. Here the trunk is frozen: for a head-only head the
keypoint loss only trains `cv4`, which is dropped, so what reaches the kept head are the lowered box/DFL gains, the
trainer's global gradient-norm clipping (which counts `cv4`) and best-epoch selection on box + keypoint mAP; a branch
head's own layers (the neck, a P3 path) do learn from it. Any shape trains this way (`headkit.shaping`: a narrow class
branch, a path branch around the Pose head). The result is a plain Detect head: same tensors as any other head of
its shape, no inference cost.
"""

from __future__ import annotations

import copy
import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from ultralytics import YOLO, __version__
from ultralytics.nn.tasks import PoseModel

from .base import ensure_detect_base
from .headfile import Head, extract_head
from .keypoints import KPT_SHAPE, convert_to_keypoints, pose_to_detect
from .kinds import KEYPOINT_TRICK
from .labels import load_yaml
from .progress import TrainProgress, train_reporting
from .shaping import detect_slot, shape_slot
from .trunk import base_facts, compare_trunks

LOGGER = logging.getLogger(__name__)

# The seed's loss gains: box IoU and DFL nearly off, so in the whole pose loss the keypoint terms lead.
LOSS_GAINS = {"box": 0.01, "dfl": 0.01}


def _pose_cfg(detect_cfg: dict, nc: int) -> dict:
    """The detect architecture dict with its last row turned into a one-keypoint Pose head."""
    cfg = copy.deepcopy(detect_cfg)
    frm, repeats, module, args = cfg["head"][-1]
    if module != "Detect":
        raise ValueError(f"expected the base architecture to end in a Detect row, got {module!r}")
    cfg["head"][-1] = [frm, repeats, "Pose", [args[0], list(KPT_SHAPE)]]
    cfg.update(nc=nc, kpt_shape=list(KPT_SHAPE))
    if "yaml_file" in cfg:  # keeps Ultralytics' summaries honest ("yolov8s-pose"); pose_to_detect undoes it
        cfg["yaml_file"] = re.sub(r"(\.ya?ml)$", r"-pose\1", str(cfg["yaml_file"]))
    return cfg


def pose_variant(
    base,
    *,
    names: dict[int, str] | None = None,
    seed: int = 0,
    path: str | Path | None = None,
    class_width: int | None = None,
    branch: tuple[int, int] | None = None,
    shared_box: bool = False,
) -> YOLO:
    """A pose model of the base's family, starting from the base's weights.

    Built from the base's own architecture dict (Detect row -> `Pose [nc, [1, 3]]`) by Ultralytics' parser. Every
    tensor whose name and shape match the base's is copied: the whole trunk bit for bit and, as Ultralytics' own weight
    transfer does for a plain head, the box branch and hidden class layers; the class output layer (when nc differs)
    and the keypoint branch `cv4` keep their fresh initialisation.

    Args:
        names: the new head's classes (default: the base's).
        seed: seeds that fresh initialisation (the global random state is left as it was).
        path: where to keep the pose checkpoint; by default it lives only in memory.
        class_width, branch, shared_box: the head's shape (`headkit.shaping.shape_slot`): a narrow class branch, a
            path branch of base layers (start, end) around the Pose head, the base's box branch kept.

    Raises:
        ValueError: the base is not a plain detect model, or its trunk cannot be rebuilt under a Pose head.
    """
    ensure_detect_base(base)
    facts = base_facts(base)
    inner = facts.inner
    names = {int(k): str(v) for k, v in (names or facts.names).items()}
    cfg = _pose_cfg(inner.yaml, len(names))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = PoseModel(cfg, ch=cfg.get("channels", 3), nc=len(names), verbose=False)
    ours, theirs = net.state_dict(), inner.state_dict()
    copied = {k: v.detach().clone() for k, v in theirs.items() if k in ours and ours[k].shape == v.shape}
    net.load_state_dict(copied, strict=False)
    net.names = names
    check = compare_trunks(net, base)
    if not check.untouched:  # a family whose trunk rows the parser builds differently for a Pose head
        raise ValueError(f"the pose variant's trunk differs from the base's in {list(check.changed)[:5]}")
    shape_slot(net, base, class_width, branch, shared_box=shared_box)

    ckpt = {
        "model": net.eval(),
        "ema": None,
        "train_args": {"task": "pose"},
        "date": datetime.now().astimezone().isoformat(),
        "version": __version__,
    }
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(ckpt, path)
        return YOLO(path)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(ckpt, Path(tmp) / "pose.pt")
        model = YOLO(Path(tmp) / "pose.pt")
    model.ckpt_path = model.model.pt_path = None
    return model


def _keypoint_dataset(data_yaml: Path, dst: Path) -> Path:
    """Convert the box dataset into `dst` (replacing an earlier conversion there); returns the new data.yaml."""
    if data_yaml.name != "data.yaml":
        raise ValueError(
            f"the keypoint trick converts a dataset folder with data.yaml beside images/ and labels/, got "
            f"{data_yaml}; rename it to data.yaml or pass the dataset folder"
        )
    previous = dst / "data.yaml"
    if previous.is_file() and "kpt_shape" in load_yaml(previous, str(previous)):
        shutil.rmtree(dst)
    return convert_to_keypoints(data_yaml.parent, dst).yaml_path


def train_pose_head(
    base,
    data_yaml: str | Path,
    *,
    settings: dict[str, Any],
    progress: Callable[[TrainProgress], None] | None = None,
    stop: Callable[[], bool] | None = None,
    class_width: int | None = None,
    path: tuple[int, int] | None = None,
    shared_box: bool = False,
) -> tuple[YOLO, Any]:
    """Train the one-keypoint pose variant of the base on its frozen trunk with Ultralytics' pose trainer.

    The dataset is converted into `<project>/<name>-keypoints/data` beside the run, the starting checkpoint is kept
    there as `pose.pt`. Loss gains default to `LOSS_GAINS`; `box`/`dfl` given in `settings` win.

    Args:
        data_yaml: the detection dataset's data.yaml.
        settings: Ultralytics trainer arguments as `train_head` builds them (data, epochs, freeze, project, name, ...).
        progress, stop: as for `train_head`.
        class_width, path, shared_box: the head's shape (`pose_variant`); `settings` then names `ShapedPoseTrainer`.

    Returns:
        The trained pose model (best.pt) and its trainer.
    """
    work = Path(settings.get("project") or "runs/headkit") / f"{settings.get('name', 'head')}-keypoints"
    kpt_yaml = _keypoint_dataset(Path(data_yaml), work / "data")
    names = load_yaml(kpt_yaml, str(kpt_yaml))["names"]
    names = dict(enumerate(names)) if isinstance(names, list) else names
    # a single-process Ultralytics trainer seeds with `seed` just before it builds a plain head's new layers;
    # seeding the variant alike starts the class layer of both kinds of head from the same values
    seed = int(settings.get("seed", 0))
    shape = {"class_width": class_width, "branch": path, "shared_box": shared_box}
    model = pose_variant(base, names=names, seed=seed, path=work / "pose.pt", **shape)
    train_reporting(model, {**LOSS_GAINS, **settings, "data": str(kpt_yaml)}, progress, stop)
    return model, model.trainer


def detect_head_from_pose(trained_pose: YOLO, base, **metadata: Any) -> Head:
    """The trained Pose head's box, class and DFL branches as a Detect head; the keypoint branch is dropped.

    Metadata and the trunk check are `extract_head`'s, with `trained_with="keypoint-trick"`.

    Args:
        **metadata: passed to `extract_head` (imgsz, metrics, extra).
    """
    detect = pose_to_detect(trained_pose, detect_slot=detect_slot)  # its shape kept: narrow, path branch
    return extract_head(detect, base, trained_with=KEYPOINT_TRICK, **metadata)
