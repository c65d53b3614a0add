"""Branch heads: a trained copy of the base's layers from a branch start on (e.g. the whole neck), plus a Detect.

The base's own layers stay as they are; a `Branch` runs beside them on the outputs of the shared layers (those before
its start), so every base detection stays bit-exact. Its modules are built by Ultralytics' own model builder from the
base's architecture rows, which the head file carries; rows naming anything but a model layer are refused before
anything is built.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from ultralytics.nn import tasks
from ultralytics.nn.modules.head import Detect
from ultralytics.utils.torch_utils import initialize_weights

from .trunk import detection_model, head_index

# The architecture keys a head file may carry; anything else (e.g. `activation:`, which Ultralytics evaluates) is refused.
_ARCHITECTURE_KEYS = {"nc", "scales", "scale", "depth_multiple", "width_multiple", "backbone", "head", "channels"}
_ARCHITECTURE_KEYS |= {"yaml_file", "reg_max", "max_channels"}


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


def architecture(base) -> dict[str, Any]:
    """The base's architecture dict (its YAML rows), as a head file records it."""
    yaml = getattr(detection_model(base), "yaml", None)
    if not isinstance(yaml, dict) or "backbone" not in yaml or "head" not in yaml:
        raise ValueError("the base records no architecture (YAML rows); load it from an Ultralytics .pt or .yaml")
    return {key: copy.deepcopy(value) for key, value in yaml.items() if key in _ARCHITECTURE_KEYS}


def check_architecture(rows: Any, where: str) -> dict[str, Any]:
    """Refuse an architecture dict that names anything but Ultralytics model layers, before Ultralytics parses it.

    Ultralytics' parser looks module names up among its own module's globals, and would call whatever it finds there.

    Raises:
        ValueError: not a dict of known keys, a malformed row, or a module that is not a model layer.
    """
    if not isinstance(rows, dict) or not {"backbone", "head"} <= rows.keys():
        raise ValueError(f"{where}: the branch's architecture should be a mapping with backbone and head rows")
    unknown = set(rows) - _ARCHITECTURE_KEYS
    if unknown:
        raise ValueError(f"{where}: the branch's architecture has unexpected keys {sorted(unknown)}; save it again")
    for number, row in enumerate([*rows["backbone"], *rows["head"]]):
        if not (isinstance(row, list) and len(row) == 4 and isinstance(row[2], str) and isinstance(row[3], list)):
            raise ValueError(f"{where}: architecture row {number} is not [from, repeats, module, args]: {row!r}")
        name = row[2]
        module = getattr(nn, name[3:], None) if name.startswith("nn.") else getattr(tasks, name, None)
        if not (isinstance(module, type) and issubclass(module, nn.Module)):
            raise ValueError(f"{where}: architecture row {number} names '{name}', which is not a model layer")
    return rows


def build_layers(rows: dict[str, Any], start: int, nc: int) -> list[nn.Module]:
    """Modules for layers `start`..head-1, built by Ultralytics' parser from checked architecture rows."""
    cfg = {**copy.deepcopy(rows), "nc": nc}
    with torch.random.fork_rng():  # the weights are overwritten; keep the caller's random state as it was
        layers, _ = tasks.parse_model(cfg, ch=cfg.get("channels", 3), verbose=False)
    initialize_weights(layers)  # BatchNorm eps/momentum as DetectionModel sets them (eps 1e-3, not torch's 1e-5)
    return list(layers[start:-1])


def branch_tensors(model, start: int) -> dict[str, torch.Tensor]:
    """State of layers `start`..head-1 of a (trained) model, keyed `<layer>.<name>`."""
    end = head_index(model)
    return {
        key: value.detach().cpu().clone()
        for key, value in detection_model(model).model.state_dict().items()
        if start <= int(key.split(".", 1)[0]) < end
    }
