"""headkit's modules form layers that point one way: a module imports only modules of its own layer or earlier ones.

So there is no import circle, and a light entry point (`headkit.hub`, `headkit.catalog`) never drags in the training
stack. Each module is imported alone in a fresh interpreter; the package's `__init__` (the app layer) is bypassed
there, since it imports everything.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "headkit"

# Earliest first. A new module gets a place here, or this test names it.
LAYERS = (
    (
        "settings and storage",
        {"limits", "settings", "filenames", "keys", "disk", "retention", "jobs", "worker", "heap"},
    ),
    ("datasets", {"archive", "labels", "folders", "coco", "datasets", "keypoints"}),
    ("sources", {"sources"}),  # where files come from: paths, weights/, the Hub
    ("metadata schema", {"schema"}),  # the type system every file's metadata is checked against
    ("trunk maths", {"detect", "trunk", "kinds", "branch", "sharedbox", "concat", "base"}),  # detect: all of Detect
    ("head file", {"artefact", "headfile"}),  # artefact: the safetensors files' reader, writer and file types
    ("loading", {"basefile", "model", "nms"}),  # nms: a merged model's predictor and validator, which model.py sets
    ("merge", {"merging", "export", "catalog", "hub", "discovery"}),  # discovery: Hub heads fit-checked before listing
    ("training", {"runfiles", "progress", "shaping", "posehead", "train", "finetune", "budget"}),
    ("inference", {"tracking", "comparing", "video", "basecache"}),
    ("runs", {"runs", "admission", "zerogpu"}),
    ("app", {"__init__", "__main__", "server"}),
)
LAYER = {module: n for n, (_, modules) in enumerate(LAYERS) for module in modules}
# Imports inside a function that point to a later layer: known debts, listed so that no new one creeps in.
DEFERRED_UPWARD: dict[tuple[str, str], str] = {}
TRAINING_STACK = ("headkit.train", "headkit.finetune", "headkit.runs", "ultralytics.engine.trainer")


def _modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py"))


def _imports(module: str) -> list[tuple[str, bool]]:
    """(imported headkit module, at module level) for each import in `module`'s source, TYPE_CHECKING blocks skipped."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text("utf-8"))
    typing_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body
        for node in ast.walk(statement)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and (node.level == 1 or (node.module or "").startswith("headkit")):
            name = (node.module or "").removeprefix("headkit").lstrip(".")
            targets = [name or "__init__"]  # `from . import merge` takes the package's name, not the module
            found += [(target.split(".")[0], node in tree.body) for target in targets]
        elif isinstance(node, ast.Import):
            found += [(a.name.split(".")[1], node in tree.body) for a in node.names if a.name.startswith("headkit.")]
    return found


def test_every_module_has_a_layer():
    assert set(_modules()) == set(LAYER), f"place these in LAYERS: {sorted(set(_modules()) - set(LAYER))}"


def test_no_module_imports_a_later_layer():
    """Every import in the source, at module level or inside a function, points to the same or an earlier layer."""
    upward = [
        f"{module} ({LAYERS[LAYER[module]][0]}) imports {target} ({LAYERS[LAYER[target]][0]})"
        + ("" if top else ", inside a function")
        for module in _modules()
        for target, top in _imports(module)
        if LAYER[target] > LAYER[module] and not (not top and (module, target) in DEFERRED_UPWARD)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circle():
    """Not even within a layer, counting imports inside functions (but the listed `DEFERRED_UPWARD` debts)."""
    graph = {m: {t for t, top in _imports(m) if t != m and (top or (m, t) not in DEFERRED_UPWARD)} for m in _modules()}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path[path.index(module) :], module))
        if module not in done:
            for target in sorted(graph[module]):
                visit(target, (*path, module))
            done.add(module)

    for module in sorted(graph):
        visit(module, ())


_ALONE = """
import importlib, importlib.util, json, sys, types
spec = importlib.util.find_spec("headkit")
package = types.ModuleType("headkit")
package.__path__ = list(spec.submodule_search_locations)
sys.modules["headkit"] = package  # its __init__ (the app layer) imports everything: leave it out
loaded = {}
for name in json.loads(sys.argv[1]):
    before = set(sys.modules)
    importlib.import_module("headkit." + name)
    loaded[name] = sorted(m.split(".")[1] for m in set(sys.modules) - before if m.startswith("headkit."))
print(json.dumps(loaded))
"""


def test_importing_each_module_loads_no_later_layer():
    """Modules imported alone, earliest layer first, in one fresh interpreter: each loads nothing of a later layer."""
    order = sorted((m for m in _modules() if LAYERS[LAYER[m]][0] != "app"), key=lambda m: (LAYER[m], m))
    run = subprocess.run([sys.executable, "-c", _ALONE, json.dumps(order)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    loaded = json.loads(run.stdout.strip().splitlines()[-1])
    later = {module: [m for m in new if LAYER[m] > LAYER[module]] for module, new in loaded.items()}
    assert not any(later.values()), {module: found for module, found in later.items() if found}
    assert loaded["concat"] and "merging" not in loaded["model"]  # the guards come from below both


@pytest.mark.parametrize("entry", ["headkit.hub", "headkit.catalog"])
def test_hub_and_catalog_do_not_load_training(entry):
    """`import headkit.hub` as a user types it (the package's __init__ included) loads no trainer."""
    code = f"import json, sys, {entry}; print(json.dumps(sorted(m for m in {TRAINING_STACK!r} if m in sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []


def test_names_loaded_on_first_use_are_the_ones_the_package_exports():
    import headkit

    assert headkit.train_head.__module__ == "headkit.train" and headkit.load_model.__module__ == "headkit.model"
    assert callable(headkit.merge) and callable(headkit.compare)  # functions, not the modules of the same name
    missing = [name for name in headkit.__all__ if not hasattr(headkit, name)]
    assert not missing


APP = PACKAGE.parent / "webapp"


def test_the_app_uses_only_the_public_api_and_the_server():
    """app.py and webapp/ import `headkit` and `headkit.server`, nothing deeper: what a server may rely on is what
    those two export, so the library's modules can change shape without breaking the app."""
    deeper = []
    for path in [PACKAGE.parent / "app.py", *sorted(APP.glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else []
            deeper += [f"{path.name}: {n}" for n in names if n.startswith("headkit.") and n != "headkit.server"]
    assert APP.is_dir() and not deeper, deeper
