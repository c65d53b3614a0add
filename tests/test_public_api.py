"""The README is the API's documentation: every `headkit.<name>` it uses is importable, and so is every exception
type it tells users to catch."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import headkit

README = (Path(__file__).resolve().parents[1] / "README.md").read_text("utf-8")


def _is_module(name: str) -> bool:
    """`headkit.catalog.load_head_key` in the README names a module of the package: importable on its own, whatever
    other tests imported before (an attribute only once something imported it)."""
    return importlib.util.find_spec(f"headkit.{name}") is not None


def test_every_name_the_readme_uses_is_importable_from_headkit():
    used = set(re.findall(r"\bheadkit\.([A-Za-z_]\w*)\b(?!/)", README))
    used -= {"head"}  # `headkit.head/1`, `headkit.head/2`: file format names, not Python names
    assert used, "the README shows no headkit call"
    missing = sorted(name for name in used if not hasattr(headkit, name) and not _is_module(name))
    assert not missing, f"README uses headkit.{missing} but headkit has no such name or module"
    assert {"pose_to_detect", "load_dataset", "merge", "train_head"} <= used


def test_every_exception_the_readme_lists_is_exported_and_is_a_builtin_subclass():
    section = README.split("### Errors", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"`headkit\.(\w+)`", section))
    assert {"DatasetError", "LimitExceeded", "UntrustedSourceError", "TrainingCancelled", "ArchiveError"} <= listed
    for name in listed:
        error = getattr(headkit, name)
        assert isinstance(error, type) and issubclass(error, Exception) and name in headkit.__all__
        assert error.__mro__[1] in (ValueError, PermissionError, RuntimeError) or issubclass(error, ValueError)


def test_every_test_the_threat_model_cites_exists():
    """The README's threat-model table names the tests that perform each attack; a renamed test must not leave a
    row citing nothing."""
    table = README.split("### Threat model", 1)[1].split("\n## ", 1)[0]
    cited = set(re.findall(r"(?:`|::)(test_\w+)", table))
    files = set(re.findall(r"`(test_\w+)\.py", table)) | set(re.findall(r"(test_\w+)\.py::", table))
    sources = {p.stem: p.read_text("utf-8") for p in (Path(__file__).parent).glob("test_*.py")}
    assert len(cited) > 30
    assert files <= sources.keys(), sorted(files - sources.keys())
    defined = {name for text in sources.values() for name in re.findall(r"^def (test_\w+)", text, re.M)}
    assert cited - files <= defined, sorted(cited - files - defined)
