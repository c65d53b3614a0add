"""The embedded base: a whole detection model as .safetensors tensors, rebuilt from an architecture Ultralytics ships.

A `.pt` base is a pickle, and loading a pickle can run code. This format holds only tensors and JSON facts; the
layer graph comes from a fixed allow-list of the YAML files inside the installed ultralytics package, named by family
and scale — the file never supplies a row. The rebuilt model goes through Ultralytics' own checkpoint loader, so
predict, track, val and train behave exactly as they do for the `.pt` it was converted from.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
import ultralytics
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel, yaml_model_load

from .artefact import BASE, FileRefused, compact, read, write
from .headfile import check_names
from .limits import LimitExceeded, Limits
from .schema import indexed_names
from .settings import current_limits, restore_hint
from .trunk import base_facts

LOGGER = logging.getLogger(__name__)
FORMAT = BASE.name
METADATA_KEY = BASE.entry
# Ultralytics' detect architectures a base may name, and their folder inside the package's cfg/models.
FAMILIES = {"yolov8.yaml": "v8", "yolo11.yaml": "11", "yolo26.yaml": "26"}
# What Ultralytics keeps of a checkpoint's train_args when it loads one (Model._reset_ckpt_args), less `data`: a
# path on the author's machine. Their types and bounds are the schema's (`artefact.BASE`): imgsz ≤ max_imgsz.
ARGS = tuple(BASE.schema.fields["args"].fields)


def family_yaml(family: str) -> Path:
    """The package's own YAML for an allow-listed family name, e.g. `yolov8.yaml` -> <ultralytics>/cfg/models/v8/."""
    if family not in FAMILIES:
        raise ValueError(f"unknown architecture family {family!r}; expected one of {', '.join(FAMILIES)}")
    return Path(ultralytics.__file__).parent / "cfg" / "models" / FAMILIES[family] / family


def architecture(family: str, scale: str, nc: int) -> dict[str, Any]:
    """The architecture dict Ultralytics builds `<family><scale>.yaml` from, read from the installed package."""
    cfg = yaml_model_load(family_yaml(family))
    if scale not in cfg.get("scales", {}):
        raise ValueError(f"{family} has no scale {scale!r}; expected one of {', '.join(cfg.get('scales', {}))}")
    return {**cfg, "scale": scale, "nc": nc}


def identify(model) -> tuple[str, str]:
    """(family, scale) whose package YAML has exactly this model's layer rows and multiples; refused otherwise."""
    yaml = getattr(base_facts(model).inner, "yaml", None) or {}
    rows = (yaml.get("backbone"), yaml.get("head"))
    for family in FAMILIES:
        cfg = yaml_model_load(family_yaml(family))
        if (cfg["backbone"], cfg["head"]) != rows:
            continue
        for scale, (depth, width, _) in cfg["scales"].items():
            if yaml.get("scale") == scale or (yaml.get("depth_multiple"), yaml.get("width_multiple")) == (depth, width):
                return family, scale
    raise ValueError(
        f"this model's architecture rows match none of Ultralytics' packaged {', '.join(FAMILIES)} at any scale; "
        "only models built from those files can be saved as an embedded base"
    )


def save_base(model, path: str | Path, *, source_file: str | Path | None = None) -> Path:
    """Write a detection model as an embedded base; it is read back and checked bit for bit before this returns.

    Args:
        source_file: the checkpoint it came from, whose name and sha256 are recorded for provenance.
    """
    facts = base_facts(model)
    inner = facts.inner
    family, scale = identify(model)
    args = getattr(inner, "args", None) or {}
    metadata = {
        "family": family,
        "scale": scale,
        "names": {str(k): v for k, v in facts.names.items()},
        "stride": list(facts.strides),
        "args": {key: args[key] for key in ARGS if key in args},
        "fingerprint": facts.fingerprint,
        "source_sha256": hashlib.sha256(Path(source_file).read_bytes()).hexdigest() if source_file else "",
        "source": Path(source_file).name if source_file else "",
        "ultralytics_version": ultralytics.__version__,
    }
    tensors = {key: compact(value.detach().cpu()) for key, value in inner.state_dict().items()}
    path = write(path, tensors, BASE, metadata)
    reloaded = base_facts(load_base(path)).inner.state_dict()
    if any(not torch.equal(reloaded[k].cpu(), v.cpu()) for k, v in inner.state_dict().items()):
        path.unlink()
        raise ValueError(f"{path}: the saved base does not reload bit for bit; nothing was written")
    return path


def _metadata(meta: dict[str, Any], path: Path, limits: Limits) -> dict[str, Any]:
    """The facts the schema cannot say: class ids 0..n-1, plain class names, an allow-listed family."""
    if not indexed_names(meta["names"]):  # a base without classes is refused too: it could carry no head
        raise ValueError(f"{path.name}: 'names' should map class ids 0..n-1 to names")
    check_names(meta["names"], path.name, limits)
    family_yaml(meta["family"])
    return meta


def _rebuild(meta: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path) -> DetectionModel:
    names = {int(k): v for k, v in meta["names"].items()}
    with torch.random.fork_rng():  # the random init is overwritten; leave the caller's random state alone
        inner = DetectionModel(architecture(meta["family"], meta["scale"], len(names)), nc=len(names), verbose=False)
    try:
        inner.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ValueError(
            f"{path.name}: its tensors do not fit {meta['family']} scale {meta['scale']} ({str(e)[:300]}); "
            f"{restore_hint(path)}"
        ) from e
    if [float(s) for s in inner.stride] != [float(s) for s in meta["stride"]]:
        raise ValueError(
            f"{path.name}: strides {meta['stride']} differ from the architecture's {inner.stride.tolist()}"
        )
    inner.names = names
    return inner


def _wrap(inner: DetectionModel, meta: dict[str, Any], path: Path) -> YOLO:
    """A YOLO around the rebuilt model, made by Ultralytics' own checkpoint loader (Model._load).

    Ultralytics has no public way to wrap a module in memory; its loader sets what predict and the trainer read
    (task, overrides, args, ckpt, inplace flags). The checkpoint is this process's own, in a private folder.
    """
    checkpoint = {"model": inner, "train_args": meta["args"], "version": meta.get("ultralytics_version")}
    with tempfile.TemporaryDirectory(prefix="headkit-base-") as folder:
        staged = Path(folder) / "base.pt"
        torch.save(checkpoint, staged)
        model = YOLO(str(staged))
    model.ckpt_path = model.model.pt_path = model.overrides["model"] = model.model_name = str(path)
    return model


def load_base(path: str | Path, *, limits: Limits | None = None) -> YOLO:
    """Rebuild an embedded base (see the module docstring) and check it against the fingerprint it records.

    Raises:
        FileNotFoundError: no such file (the message says how to restore a shipped one).
        LimitExceeded: a value over a `Limits` field (classes, name length, imgsz: predict's default size).
        FileRefused: not a headkit base, outside its schema, altered or damaged (the message says how to restore it).
    """
    path, limits = Path(path), limits or current_limits()
    if not path.is_file():
        raise FileNotFoundError(f"base file {path} is missing; {restore_hint(path)}")
    try:
        header = read(path, (BASE,), limits)
        meta = _metadata(header.metadata, path, limits)
        tensors = header.tensors()
    except LimitExceeded:
        raise  # its message names the limit and how to raise it
    except ValueError as e:
        raise FileRefused(f"{e}; {restore_hint(path)}") from e
    except Exception as e:  # safetensors raises its own SafetensorError for a malformed file
        raise FileRefused(f"{path}: not a readable .safetensors base ({e}); {restore_hint(path)}") from e
    try:
        model = _wrap(_rebuild(meta, tensors, path), meta, path)
    except ValueError as e:
        raise FileRefused(f"{e}; {restore_hint(path)}") from e
    found = base_facts(model).fingerprint  # worked out once here; the model keeps it with its other facts
    if found != meta["fingerprint"]:
        raise FileRefused(
            f"{path}: its trunk fingerprint is {found[:12]}…, but the file records {str(meta['fingerprint'])[:12]}…: "
            f"the file was altered or damaged; {restore_hint(path)}"
        )
    model.headkit_base = {key: meta[key] for key in ("family", "scale", "source", "source_sha256") if key in meta}
    return model
