"""The head artefact: one Detect head's tensors in a .safetensors file, with the metadata that makes it safe to merge."""

from __future__ import annotations

import functools
import logging
import struct
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from ultralytics import __version__ as ULTRALYTICS_VERSION
from ultralytics.nn.modules.head import Detect

from .artefact import BRANCH_HEAD, HEAD, Artefact, FileRefused, compact, read, write
from .base import ensure_detect_base, model_source
from .branch import (
    BRANCH_PREFIX,
    Branch,
    BranchDetect,
    architecture,
    assemble,
    branch_tensors,
    check_branch_data,
    check_branch_fits_base,
    check_shapes,
)
from .detect import CLASS_BIAS, DetectLayout
from .kinds import LEGACY_PTH, PLAIN, HeadKind, branch_inputs
from .labels import clip
from .limits import LimitExceeded, Limits
from .settings import current_limits
from .sources import resolve
from .trunk import base_facts, compare_trunks, detection_model

LOGGER = logging.getLogger(__name__)
FORMAT = HEAD.name  # a Detect head alone
BRANCH_FORMAT = BRANCH_HEAD.name  # a Detect head with its own copy of the base's layers from a branch start on
_LEGACY_PREFIXES = ("model.model.", "model.")
# A legacy .pth is a torch.save zip: a Detect's state dict is ~100-400 entries, its pickle tens of KiB. Their declared
# sizes are read from the zip directory and bounded before torch.load inflates anything.
MAX_PTH_ENTRIES = 2048
MAX_PTH_PICKLE_BYTES = 2**20


@dataclass
class Head:
    """A trained Detect head for one base trunk.

    Attributes:
        tensors: the Detect module's state dict (`cv2.0.0.conv.weight`, ...).
        metadata: names, base fingerprint, Detect layout (`DetectLayout.to_metadata`), training facts.
    """

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> dict[int, str]:
        return {int(k): str(v) for k, v in self.metadata["names"].items()}

    @property
    def nc(self) -> int:
        return len(self.names)

    @property
    def label(self) -> str:
        """How people name this head: its `label` metadata, else its class names (read even before they are checked)."""
        label, names = self.metadata.get("label"), self.metadata.get("names")
        if isinstance(label, str) and label:
            return label
        return ", ".join(map(str, names.values())) if isinstance(names, dict) and names else "unnamed head"

    @property
    def where(self) -> str:
        """How refusals name this head: `head '<label>'`, the label cut to 60 characters."""
        return f"head '{clip(self.label, 60)}'"

    @property
    def base_fingerprint(self) -> str:
        return self.metadata["base_fingerprint"]

    @property
    def channels(self) -> list[int]:
        return list(self.metadata["channels"])

    @property
    def kind(self) -> HeadKind:
        return HeadKind.of(self.metadata)

    @property
    def detect_tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.tensors.items() if not k.startswith(BRANCH_PREFIX)}

    def save(self, path: str | Path) -> Path:
        """Write atomically (`artefact.write`), tensors in fp16 where that is exact.

        Raises:
            ValueError: a metadata key outside the head schema (`artefact.HEAD`).
        """
        form = BRANCH_HEAD if self.kind.is_branch else HEAD
        return write(
            path, {key: compact(value.detach().cpu()) for key, value in self.tensors.items()}, form, self.metadata
        )

    @functools.cached_property
    def layout(self) -> DetectLayout:
        """The Detect layout its metadata declares, bounded and typed (`DetectLayout.from_metadata`), worked out once
        per head (a head's metadata is not edited in place: a changed head is a new `Head`).

        Raises:
            ValueError: a layout outside headkit's bounds or of the wrong types.
        """
        return DetectLayout.from_metadata(self.metadata, self.where)

    def build(self, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Detect:
        """A ready Detect module (eval mode, no gradients) for this head; its layout is bounded before it is built."""
        detect = self.layout.build()
        detect.load_state_dict(self.detect_tensors, strict=True)
        return detect.to(device=device, dtype=dtype).requires_grad_(False).eval()

    def build_branch(self, base, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Branch:
        """A ready Branch module (eval mode, no gradients) for a branch head joining `base`.

        Its layers are deep copies of the base's own (the base is trusted; the file is not), holding this head's
        tensors; the recorded rows, inputs and tensor shapes must equal the base's (`branch.check_branch_fits_base`),
        checked before anything is built. `merge` checks a head whole once (`merging.check_head_fits`), then builds.

        Raises:
            ValueError: malformed branch metadata.
            HeadDoesNotFit: the head's branch differs from the base's layers in any recorded row, index or shape.
        """
        shapes = {key: tuple(value.shape) for key, value in self.tensors.items()}
        check_branch_fits_base(self.metadata.get("branch"), shapes, base, self.where)
        return self.assemble_branch(base, device=device, dtype=dtype)

    def assemble_branch(
        self, base, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> Branch:
        """`build_branch` for a head whose fit was checked (`merging.check_head_fits`): nothing is compared again."""
        owned = {k[len(BRANCH_PREFIX) :]: v for k, v in self.tensors.items() if k.startswith(BRANCH_PREFIX)}
        module = assemble(base, self.metadata["branch"], owned, self.build())
        return module.to(device=device, dtype=dtype).requires_grad_(False).eval()


def extract_head(
    trained,
    base,
    *,
    imgsz: int | None = None,
    metrics: dict | None = None,
    trained_with: str = PLAIN,
    extra: dict | None = None,
    branch_start: int | None = None,
    branch_end: int | None = None,
) -> Head:
    """Take the Detect head (and, for a branch head, its layers from `branch_start` on) out of a trained model.

    The trained trunk (every layer before the head, or before `branch_start`) is compared with the base's first,
    tensor by tensor, for exact equality; the verdict goes into the metadata, and a trunk that moved by even one bit
    is refused, naming the tensors. A branch head's fingerprint covers the shared layers only.

    Args:
        branch_end: a path branch's end (`kinds.path_range`): the model trained it in a `BranchDetect` beside the
            base's own layers, all of which must be untouched; its fingerprint covers the whole trunk.
    """
    ensure_detect_base(base)
    if not isinstance(detection_model(trained).model[-1], BranchDetect):  # a path branch trained in the Detect slot
        ensure_detect_base(trained, role="trained model")
    ours, theirs = base_facts(trained), base_facts(base)
    if ours.head_index != theirs.head_index:
        raise ValueError(f"trained model's head is layer {ours.head_index}, the base's is {theirs.head_index}")
    shares_upto = HeadKind(branch_start=branch_start, branch_end=branch_end).shares_upto
    check = compare_trunks(trained, base, upto=shares_upto)
    if not check.untouched:
        listed = ", ".join(check.changed[:8]) + (" ..." if len(check.changed) > 8 else "")
        raise ValueError(
            f"{len(check.changed)} frozen trunk tensors differ from the base's (max |Δ| {check.max_abs_diff:.3g}): "
            f"{listed}; the head would not fit the base — train again with every layer before the head frozen"
        )
    args = getattr(ours.inner, "args", {}) or {}
    metadata = {
        "names": {str(k): v for k, v in ours.names.items()},
        **ours.layout.to_metadata(),
        "ultralytics_version": ULTRALYTICS_VERSION,
        "imgsz": imgsz or (args.get("imgsz") if isinstance(args, dict) else None),
        "metrics": metrics,
        "base_source": model_source(base),
        "base_fingerprint": theirs.trunk_fingerprint(shares_upto),
        "base_names": {str(k): v for k, v in theirs.names.items()},
        "trunk_check": check.to_dict(),
        "trained_with": trained_with,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
    detect = ours.detect.detect if isinstance(ours.detect, BranchDetect) else ours.detect
    tensors = {key: value.detach().cpu().clone() for key, value in detect.state_dict().items()}
    if branch_start is not None:
        metadata["branch"] = {
            "start": branch_start,
            **({"end": branch_end} if branch_end is not None else {}),
            "inputs": branch_inputs(base, branch_start, branch_end),
            "detect_from": list(theirs.detect_from),
            "architecture": architecture(base),
        }
        tensors |= {BRANCH_PREFIX + key: value for key, value in branch_tensors(trained, branch_start).items()}
    return Head(tensors, metadata)


def check_names(names: dict, where: str, limits: Limits) -> None:
    """Refuse too many classes, over-long names and names with control characters, before anything is built.

    Names reach tables, plots and model cards; a newline or a 10,000-character name would break them.
    """
    limits.check("max_classes", len(names), f"{where}: number of classes")
    for key, name in names.items():
        text = str(name)
        limits.check("max_class_name_chars", len(text), f"{where}: length of class {key}'s name")
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
            raise ValueError(f"{where}: class {key}'s name {text[:40]!r} holds control characters; rename the class")


def read_head_header(path: Path, limits: Limits) -> Artefact:
    """A head file's header (metadata, tensor shapes) after every check `load_head` runs before reading a tensor: the file's
    bounds and schema (`artefact.read`), its class names, its declared layout and the shapes that layout implies.

    Raises:
        LimitExceeded: over `limits` (size, classes, name length, the declared head's size).
        ValueError: not a head, metadata outside the schema, or tensors other than the declared Detect's.
    """
    where = path.name
    header = read(path, (HEAD, BRANCH_HEAD), limits)
    metadata = header.metadata
    if (header.format is BRANCH_HEAD) != isinstance(metadata.get("branch"), dict):
        raise FileRefused(
            f"{where}: format '{header.format.name}' but {'no' if header.format is BRANCH_HEAD else 'a'} 'branch' entry "
            "in its metadata; the file was altered — save the head again with headkit"
        )
    try:  # the checks below are pure tests of the file's data: what they refuse, the file holds
        check_names(metadata["names"], where, limits)
        expected = DetectLayout.from_metadata(metadata, where).declared_shapes(where, limits)
        given = {key: shape for key, shape in header.shapes.items() if not key.startswith(BRANCH_PREFIX)}
        what = f"the Detect head its metadata declares ({len(metadata['names'])} classes)"
        check_shapes(expected, given, where, what)
        if metadata.get("branch") is not None:
            check_branch_data(metadata["branch"], list(header.shapes), where)
    except LimitExceeded:
        raise
    except ValueError as e:
        raise FileRefused(str(e)) from e
    return header


def _read_safetensors(path: Path, limits: Limits) -> Head:
    """Check the header in full (`read_head_header`), then read the tensors.

    A branch head's layers are not built here: that needs the base they copy (`Head.build_branch`).
    """
    header = read_head_header(path, limits)
    head = Head(header.tensors(), header.metadata)
    try:
        head.build()
    except (RuntimeError, TypeError, KeyError, ValueError, IndexError) as e:
        raise FileRefused(
            f"{path.name}: its tensors do not match its metadata ({e}); save the head again with headkit"
        ) from e
    return head


def _check_pth_directory(path: Path, limits: Limits) -> None:
    """Bound a legacy .pth by what its zip directory declares, before torch.load inflates a byte of it.

    torch.save writes a zip whose entries may be compressed: 0.06 MiB can inflate to GiBs on load. The declared
    sizes are what torch's reader allocates, so they are summed and bounded here.

    Raises:
        LimitExceeded: the file, or its declared contents, over `max_head_mb`.
        FileRefused: not a torch.save zip, too many entries, or a pickle larger than a Detect's state dict needs.
    """
    where = path.name
    size = path.stat().st_size
    limits.check("max_head_mb", round(size / 2**20, 1), f"{where}: file size in MiB")
    with path.open("rb") as f:
        start = f.read(4)
        f.seek(max(0, size - 22))
        end = f.read(22)  # torch.save writes no zip comment: the end record is the last 22 bytes
    entries = struct.unpack("<H", end[10:12])[0] if end[:4] == b"PK\x05\x06" else None
    if start != b"PK\x03\x04" or entries is None:
        raise FileRefused(f"{where}: not a torch.save zip archive; a legacy .pth head is a state dict torch.save wrote")
    if entries > MAX_PTH_ENTRIES:  # checked before zipfile reads the directory, one object per entry
        raise FileRefused(f"{where}: {entries:,} zip entries, over the {MAX_PTH_ENTRIES:,} a Detect state dict needs")
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    declared = sum(info.file_size for info in infos)
    limits.check("max_head_mb", round(declared / 2**20, 1), f"{where}: declared size of its contents in MiB")
    pickled = max((info.file_size for info in infos if info.filename.endswith(".pkl")), default=0)
    if pickled > MAX_PTH_PICKLE_BYTES:
        raise FileRefused(
            f"{where}: its pickle declares {pickled:,} bytes, over the {MAX_PTH_PICKLE_BYTES:,} a Detect state dict's "
            "takes; send the head as .safetensors"
        )


def _read_legacy_state_dict(path: Path, base, names: dict[int, str] | None, limits: Limits) -> Head:
    """Import a state-dict `.pth` of one Detect layer (e.g. keys `model.model.23.*`), never unpickling code.

    A .pth records no trunk, so the head is stamped with this base's fingerprint as an assumption
    (`base_fingerprint_verified: false`); its layer index must be the base's head layer, or the next one (the blog
    recipe this format comes from renames the trained head `22` → `23` to sit beside the base head).
    """
    if base is None:
        raise FileRefused(
            f"{path.name}: a legacy .pth head carries no base fingerprint; pass base= the model it was trained on"
        )
    _check_pth_directory(path, limits)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses any pickled object that is not plain tensors/containers
        raise FileRefused(
            f"{path.name}: refusing to unpickle it — it holds objects other than tensors, and a pickle can run code "
            f"({type(e).__name__}); send the head as .safetensors"
        ) from e
    if not isinstance(state, dict) or not state:
        raise FileRefused(f"{path.name}: expected a dict of tensors keyed like 'model.model.23.cv2.0.0.conv.weight'")
    ensure_detect_base(base)
    facts = base_facts(base)
    index = facts.head_index
    stripped, layers = {}, set()
    for key, value in state.items():
        for prefix in _LEGACY_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        layer, _, rest = key.partition(".")
        if not layer.isdigit() or not isinstance(value, torch.Tensor):
            raise FileRefused(f"{path.name}: unexpected key '{key}'; expected '<layer>.cv2...' Detect tensors")
        layers.add(int(layer))
        stripped[rest] = value
    if len(layers) != 1 or not layers <= {index, index + 1}:
        found = ", ".join(map(str, sorted(layers)))
        raise FileRefused(
            f"{path.name}: holds layer(s) {found}, but this base's Detect head is layer {index} (a head saved beside "
            f"it is {index + 1}); this .pth was made for another model family or size — load it with its own base"
        )
    shapes = {key: tuple(value.shape) for key, value in stripped.items()}
    try:
        layout = DetectLayout.from_state_dict(shapes, facts.layout, path.name)
    except ValueError as e:
        raise FileRefused(str(e)) from e
    limits.check("max_classes", layout.nc, f"{path.name}: number of classes (the length of '{CLASS_BIAS}')")
    names = names or {i: f"class{i}" for i in range(layout.nc)}
    check_names(names, path.name, limits)
    metadata = {
        "names": {str(k): v for k, v in names.items()},
        **layout.to_metadata(),
        "ultralytics_version": None,
        "imgsz": None,
        "metrics": None,
        "base_source": model_source(base),
        "base_fingerprint": facts.fingerprint,
        "base_fingerprint_verified": False,
        "legacy_layer": layers.pop(),
        "base_names": {str(k): v for k, v in facts.names.items()},
        "trained_with": LEGACY_PTH,
    }
    head = Head(stripped, metadata)
    try:
        head.build()
    except (RuntimeError, ValueError) as e:
        raise FileRefused(f"{path.name}: tensors do not fit this base's Detect layout ({e})") from e
    return head


def load_head(
    source: str | Path,
    *,
    revision: str | None = None,
    base=None,
    names: dict[int, str] | None = None,
    limits: Limits | None = None,
) -> Head:
    """Load a head from a local path or `hf://owner/repo/head.safetensors[@rev]`.

    Args:
        base: only for legacy `.pth` state dicts, which do not record the trunk they belong to.
        names: class names for a legacy `.pth` (default `class0`, `class1`, ...).
        limits: refuse files over these (classes, name length, size) before reading their tensors; default the
            limits in force (`HEADKIT_MAX_*`).
    """
    limits = limits or current_limits()
    path = resolve(source, revision=revision, limits=limits)
    if path.suffix == ".safetensors":
        return _read_safetensors(path, limits)
    if path.suffix == ".pth":
        return _read_legacy_state_dict(path, base, names, limits)
    raise FileRefused(
        f"{path.name}: heads are .safetensors files (or legacy .pth state dicts); got '{path.suffix}'. A full .pt "
        "model is loaded with headkit.load_model"
    )
