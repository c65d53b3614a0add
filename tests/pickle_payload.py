"""A pickled object that leaves a mark: the marker file appearing proves that something unpickled it."""

from __future__ import annotations

import builtins
from pathlib import Path


class Payload:
    """Unpickling this calls `open(marker, "w")`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")
