"""File names made from text a user typed (a head label, an upload's name): they can never leave their folder."""

from __future__ import annotations

import re
from pathlib import Path

_UNSAFE = re.compile(r"[^\w.\-]+")


def safe_name(text: str, *, default: str = "head") -> str:
    """A file-name stem made of letters, digits, `_`, `-` and `.` only, never starting with a dot (≤ 64 chars)."""
    name = _UNSAFE.sub("_", Path(str(text)).name).strip("._-")[:64]
    return name or default
