"""Branch heads: a trained copy of the base's layers from a branch start on (e.g. the whole neck), plus a Detect.

The base's own layers stay as they are; a `Branch` runs beside them on the outputs of the shared layers (those before
its start), so every base detection stays bit-exact. Its modules are deep copies of the base's own layers (the
operator chose the base), which then take the head file's tensors. Nothing is ever built from what a file records:
its architecture rows are data, checked for form and compared with the base's, never parsed.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import ultralytics.nn.modules as layer_modules
from torch import nn
from ultralytics.nn.modules.head import Detect

from .detect import HeadDoesNotFit
from .kinds import branch_inputs
from .labels import is_int
from .schema import shown
from .trunk import base_facts, layer_state

BRANCH_PREFIX = "branch."  # tensor keys of the branch layers: branch.<layer>.<name>
# The architecture keys a head file may carry (as `architecture` writes them); anything else is refused.
_ARCHITECTURE_KEYS = {"nc", "scales", "scale", "depth_multiple", "width_multiple", "backbone", "head", "channels"}
_ARCHITECTURE_KEYS |= {"yaml_file", "reg_max", "max_channels"}
_BRANCH_KEYS = {"start", "inputs", "detect_from", "architecture"}
_OPTIONAL_KEYS = {"end"}  # a path branch's (its layers end before the Detect); absent: up to the Detect
# Ultralytics detect models have 20-30 rows; a row has a handful of numbers and names.
MAX_ROWS = 256
_MAX_ARGS = 16
_MAX_TEXT = 64
_NAME = re.compile(r"(nn\.)?[A-Za-z_][A-Za-z0-9_]*")
_KEY = re.compile(r"branch\.(\d{1,4})\.([A-Za-z0-9_.]{1,200})")


class Branch(nn.Module):
    """Layers `start`..head-1 (own weights) and a Detect, fed by the shared layers' outputs.

    `forward` takes the outputs of `inputs` (shared layer indices, ascending) and returns the Detect's output, as the
    same layers would inside one plain model.
    """

    def __init__(self, layers: Sequence[nn.Module], detect: Detect, inputs: Sequence[int], detect_from: Sequence[int]):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.detect = detect
        self.inputs = [int(i) for i in inputs]
        self.detect_from = [int(i) for i in detect_from]
        self.start = int(layers[0].i)
        self.end = int(layers[-1].i) + 1  # the Detect's index for a branch up to it; less for a path branch

    @property
    def nc(self) -> int:
        return self.detect.nc

    def forward(self, shared: list[torch.Tensor]):
        outputs = dict(zip(self.inputs, shared, strict=True))
        x = outputs.get(self.start - 1)
        for layer in self.layers:
            if layer.f != -1:
                x = outputs[layer.f] if isinstance(layer.f, int) else [x if j == -1 else outputs[j] for j in layer.f]
            x = layer(x)
            outputs[layer.i] = x
        return self.detect([outputs[j] for j in self.detect_from])


def detect_of(head: Detect | Branch) -> Detect:
    """The Detect layer of a head: itself, or a branch's."""
    return head.detect if isinstance(head, Branch) else head


class BranchDetect(Detect):
    """A Branch standing in a model's Detect slot while it trains: the model's own layers stay the base's (frozen),
    and this layer runs the branch's copies beside them on the shared outputs it reads (`f`: the branch's inputs).

    A path branch (`branch="p3"`) needs this: its Detect reads the base's own later maps (P4, P5), which a model
    whose layers were the branch's would compute from the branch's layers instead. A Detect to Ultralytics (its
    loss, validator and `_apply` read the last layer's classes, strides and reg_max), with no branches of its own.
    """

    def __init__(self, branch: Branch):
        nn.Module.__init__(self)  # Detect.__init__ would build branches this layer does not have
        self.branch = branch
        detect = branch.detect
        self.nc, self.nl, self.reg_max, self.no = detect.nc, detect.nl, detect.reg_max, detect.no
        self.stride = detect.stride.clone()
        self.f, self.type = list(branch.inputs), f"{BranchDetect.__module__}.BranchDetect"

    @property
    def detect(self) -> Detect:
        return self.branch.detect

    @property
    def cv2(self) -> nn.ModuleList:  # Ultralytics' `DetectionModel.load` compares the box branches' inputs
        return self.branch.detect.cv2

    @property
    def cv3(self) -> nn.ModuleList:
        return self.branch.detect.cv3

    @property
    def kpt_shape(self):  # the keypoint trick's Pose head: Ultralytics' pose loss reads it from the Detect slot
        return self.branch.detect.kpt_shape

    @property
    def end2end(self) -> bool:
        return self.branch.detect.end2end

    @end2end.setter
    def end2end(self, value: bool) -> None:
        if getattr(self.branch.detect, "one2one_cv2", None) is not None:
            self.branch.detect.end2end = value

    def forward(self, x: list[torch.Tensor]):
        return self.branch(list(x))

    def fuse(self) -> None:
        """Nothing to drop here: Ultralytics' fuse() reaches the inner Detect itself."""

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        detect = self.branch.detect
        self.stride = fn(self.stride)
        detect.stride, detect.anchors, detect.strides = fn(detect.stride), fn(detect.anchors), fn(detect.strides)
        return self


def architecture(base) -> dict[str, Any]:
    """The base's architecture dict (its YAML rows), as a head file records it."""
    yaml = getattr(base_facts(base).inner, "yaml", None)
    if not isinstance(yaml, dict) or "backbone" not in yaml or "head" not in yaml:
        raise ValueError("the base records no architecture (YAML rows); load it from an Ultralytics .pt or .yaml")
    return {key: copy.deepcopy(value) for key, value in yaml.items() if key in _ARCHITECTURE_KEYS}


def rows_of(arch: Mapping[str, Any]) -> list:
    """An architecture's rows (backbone, then head) as plain JSON data, for comparison only."""
    return json.loads(json.dumps([*arch["backbone"], *arch["head"]], default=str))


def _is_layer_name(name: str) -> bool:
    """A torch.nn or Ultralytics layer class name (looked up, never called): no models, no functions."""
    found = getattr(nn, name[3:], None) if name.startswith("nn.") else getattr(layer_modules, name, None)
    return isinstance(found, type) and issubclass(found, nn.Module)


def _row_problem(row: Any, count: int) -> str | None:
    """Why a row is not `[from, repeats, layer, [numbers and short names]]`, or None."""
    if not (isinstance(row, list) and len(row) == 4):
        return "is not [from, repeats, module, args]"
    source, repeats, name, args = row
    sources = [source] if is_int(source) else source
    if not (
        isinstance(sources, list) and 0 < len(sources) <= 8 and all(is_int(s) and -count < s < count for s in sources)
    ):
        return f"reads from {str(source)[:40]}, not earlier layers"
    if not (is_int(repeats) and 1 <= repeats <= 64):
        return f"repeats {str(repeats)[:20]} times, not 1..64"
    if not (isinstance(name, str) and len(name) <= _MAX_TEXT and _NAME.fullmatch(name) and _is_layer_name(name)):
        return f"names '{str(name)[:40]}', which is not a model layer"
    scalar = (int, float, bool, type(None))
    if not (isinstance(args, list) and len(args) <= _MAX_ARGS):
        return f"has {type(args).__name__} arguments, not a list of at most {_MAX_ARGS}"
    if not all(isinstance(a, scalar) or (isinstance(a, str) and len(a) <= _MAX_TEXT) for a in args):
        return "has arguments other than numbers and short names"
    return None


def check_rows(arch: Any, where: str) -> list:
    """Check recorded architecture rows as data (form and size only); return them as plain rows.

    Raises:
        ValueError: not a mapping of known keys, too many rows, a malformed row, or a last row that is not Detect.
    """
    if not isinstance(arch, dict) or not {"backbone", "head"} <= arch.keys():
        raise ValueError(f"{where}: the branch's architecture should be a mapping with backbone and head rows")
    unknown = set(arch) - _ARCHITECTURE_KEYS
    if unknown:
        raise ValueError(f"{where}: the branch's architecture has unexpected keys {sorted(unknown)[:5]}; save it again")
    if not (isinstance(arch["backbone"], list) and isinstance(arch["head"], list)):
        raise ValueError(f"{where}: the branch's backbone and head rows should be lists; save the head again")
    rows = [*arch["backbone"], *arch["head"]]
    if not 3 <= len(rows) <= MAX_ROWS:
        raise ValueError(f"{where}: the branch's architecture has {len(rows)} rows, expected 3..{MAX_ROWS}")
    for number, row in enumerate(rows):
        problem = _row_problem(row, len(rows))
        if problem:
            raise ValueError(f"{where}: architecture row {number} {problem}; save the head again with headkit")
    if rows[-1][2] != "Detect":
        raise ValueError(f"{where}: the architecture's last row is '{rows[-1][2]}', expected the Detect layer")
    return rows


def check_branch_data(branch: Any, keys: Sequence[str], where: str) -> None:
    """Check a branch head's metadata and tensor keys as data, without a base (nothing is built).

    Args:
        keys: the file's tensor keys; those of the branch must read `branch.<layer>.<name>` with layer in its range.

    Raises:
        ValueError: malformed rows, a start/inputs/detect_from out of range, or a malformed branch tensor key.
    """
    present = set(branch) if isinstance(branch, dict) else set()
    if not isinstance(branch, dict) or not _BRANCH_KEYS <= present <= _BRANCH_KEYS | _OPTIONAL_KEYS:
        found = sorted(branch)[:6] if isinstance(branch, dict) else type(branch).__name__
        raise ValueError(f"{where}: branch metadata should hold {sorted(_BRANCH_KEYS)}, found {found}; save it again")
    rows = check_rows(branch["architecture"], where)
    count = len(rows)
    start, inputs, detect_from = branch["start"], branch["inputs"], branch["detect_from"]
    if not is_int(start) or not 1 <= start < count - 1:
        raise ValueError(
            f"{where}: branch start {str(start)[:20]} is not a layer between 1 and {count - 2}; save it again"
        )
    end = branch.get("end", count - 1)
    if not is_int(end) or not start < end <= count - 1:
        raise ValueError(
            f"{where}: branch end {str(end)[:20]} is not a layer in {start + 1}..{count - 1}; save it again"
        )
    shared = [i for i in range(count - 1) if not start <= i < end]
    ints = isinstance(inputs, list) and len(inputs) <= len(shared) and all(is_int(i) and i in shared for i in inputs)
    if not ints or inputs != sorted(set(inputs)):
        raise ValueError(
            f"{where}: branch inputs {str(inputs)[:60]} should be shared layers outside {start}..{end - 1}; save it "
            "again"
        )
    reads = isinstance(detect_from, list) and 0 < len(detect_from) <= 8
    if not reads or not all(
        is_int(j) and 0 <= j < count - 1 and (start <= j < end or j in inputs) for j in detect_from
    ):
        raise ValueError(f"{where}: branch detect_from {str(detect_from)[:60]} should be layers it owns or reads")
    if detect_from != rows[-1][0]:
        raise ValueError(f"{where}: branch detect_from {detect_from} differs from its Detect row's; save it again")
    for key in keys:
        if not key.startswith(BRANCH_PREFIX):
            continue
        match = _KEY.fullmatch(key)
        if not match or not start <= int(match[1]) < end:
            raise ValueError(
                f"{where}: tensor '{key[:80]}' is not 'branch.<layer>.<name>' with a layer in {start}..{end - 1}"
            )


def check_rows_match(arch: Any, base, where: str) -> None:
    """Refuse recorded rows that differ from the base's in any way, naming the first differing row.

    Raises:
        ValueError: malformed rows.
        HeadDoesNotFit: rows other than the base's (made for another architecture), or a base that records none.
    """
    ours = check_rows(arch, where)
    try:
        theirs = rows_of(architecture(base))
    except ValueError as e:  # a base without YAML rows: no branch head can be compared with it, so none joins it
        raise HeadDoesNotFit(f"{where}: {e}") from None
    for number in range(max(len(ours), len(theirs))):
        mine = ours[number] if number < len(ours) else None
        base_row = theirs[number] if number < len(theirs) else None
        if mine != base_row:
            raise HeadDoesNotFit(
                f"{where}: built for another architecture than this base's — its row {number} is {shown(mine)}, the "
                f"base's is {shown(base_row)}; load the base it was trained on or train the head on this base"
            )


def check_branch_fits_base(branch: Any, shapes: Mapping[str, Sequence[int]], base, where: str) -> None:
    """Refuse a branch whose metadata or tensor shapes differ from what the base's own layers would hold.

    Everything here is a comparison of data with the base's facts; no module is built. What it passes, `assemble`
    builds without asking again.

    Args:
        shapes: the head's tensor shapes by key (its `branch.*` keys are checked).

    Raises:
        ValueError: malformed branch metadata (a head file's is checked as data when it is read).
        HeadDoesNotFit: rows, inputs, detect_from or a tensor differ from the base's.
    """
    check_branch_data(branch, list(shapes), where)
    check_rows_match(branch["architecture"], base, where)
    facts = base_facts(base)
    start, end = branch["start"], branch.get("end", facts.head_index)
    wanted = {"inputs": branch_inputs(base, start, end), "detect_from": list(facts.detect_from)}
    for name, value in wanted.items():
        if branch[name] != value:
            raise HeadDoesNotFit(
                f"{where}: branch {name} {branch[name]} differ from this base's {value}; save it again"
            )
    expected = {BRANCH_PREFIX + key: tuple(value.shape) for key, value in layer_state(base, start, end).items()}
    given = {key: tuple(shape) for key, shape in shapes.items() if key.startswith(BRANCH_PREFIX)}
    try:
        check_shapes(expected, given, where, f"layers {start}..{end - 1} of this base")
    except ValueError as e:
        raise HeadDoesNotFit(str(e)) from None


def assemble(base, branch: Mapping[str, Any], owned: Mapping[str, torch.Tensor], detect: Detect) -> Branch:
    """A Branch of deep copies of the base's layers from the branch's start on, holding `owned` (keyed
    `<layer>.<name>`), feeding `detect`. The branch is trusted: `check_branch_fits_base` has passed it."""
    layers = copy_layers(base, branch["start"], owned, branch.get("end"))
    return Branch(layers, detect, branch["inputs"], branch["detect_from"])


def check_shapes(expected: Mapping[str, tuple], given: Mapping[str, tuple], where: str, what: str) -> None:
    """Refuse tensors that are missing, unexpected or of another shape than `expected`, naming the first one.

    Raises:
        ValueError: the keys or shapes differ.
    """
    missing, unexpected = sorted(expected.keys() - given.keys()), sorted(given.keys() - expected.keys())
    if missing or unexpected:
        which = f"lacks '{missing[0]}'" if missing else f"has an unexpected tensor '{unexpected[0][:80]}'"
        raise ValueError(
            f"{where}: its tensors do not match its metadata ({len(missing)} missing, {len(unexpected)} unexpected; "
            f"it {which} for {what}); save the head again with headkit"
        )
    for key, shape in expected.items():
        if tuple(given[key]) != tuple(shape):
            raise ValueError(
                f"{where}: its tensors do not match its metadata (tensor '{key}' has shape {list(given[key])}, "
                f"{what} needs {list(shape)}); save the head again with headkit"
            )


def copy_layers(
    base, start: int, tensors: Mapping[str, torch.Tensor] | None = None, end: int | None = None
) -> list[nn.Module]:
    """Deep copies of the base's layers `start`..end-1 (default: up to the head) holding `tensors` (keyed
    `<layer>.<name>`, loaded strictly; None: the base's own)."""
    facts = base_facts(base)
    layers = [copy.deepcopy(layer) for layer in facts.layers[start : facts.head_index if end is None else end]]
    if tensors is None:
        return layers
    state = {f"{int(key.split('.', 1)[0]) - start}.{key.split('.', 1)[1]}": value for key, value in tensors.items()}
    nn.ModuleList(layers).load_state_dict(state, strict=True)
    return layers


def branch_tensors(model, start: int) -> dict[str, torch.Tensor]:
    """State of layers `start`..head-1 of a (trained) model, keyed `<layer>.<name>`; a model that trained a path
    branch (`BranchDetect` in its Detect slot): that branch's layers."""
    last = base_facts(model).detect
    if isinstance(last, BranchDetect):
        state = {f"{layer.i}.{k}": v for layer in last.branch.layers for k, v in layer.state_dict().items()}
    else:
        state = layer_state(model, start)
    return {key: value.detach().cpu().clone() for key, value in state.items()}
