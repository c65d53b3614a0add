"""The server's bases: each loaded once, on first use, and kept (with its merged variants) for every request.

A base that fails to load is remembered with its error for `retry_s`, so a page full of pickers does not start one
slow, failing download per request; one lock per base, so a slow download of one base blocks no other.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from .comparing import Comparer
from .limits import Limits
from .model import load_model
from .sources import UntrustedSourceError

RETRY_S = 300.0
LOAD_ERRORS = (ValueError, OSError, LookupError, RuntimeError, UntrustedSourceError)


class BaseUnavailable(LookupError):
    """The base could not be loaded (or is not one of the server's); `error` says why."""

    def __init__(self, base: str, error: str) -> None:
        super().__init__(f"base model {base} is not available: {error}")
        self.base, self.error = base, error


def display_name(base: str) -> str:
    """A base as users see it: Hub addresses and bare names as given, local files by name (no server paths)."""
    return base if "://" in base else Path(base).name


class BaseCache:
    """The bases a server offers (`bases`, in the order its picker shows them), loaded on first use."""

    def __init__(
        self,
        bases: Sequence[str],
        *,
        device: str | None = None,
        limits: Limits | None = None,
        retry_s: float = RETRY_S,
        load: Callable = load_model,
    ) -> None:
        self.bases = list(dict.fromkeys(bases))
        self.device, self.limits, self.retry_s, self._load = device, limits, retry_s, load
        self._comparers: dict[str, Comparer] = {}
        self._failures: dict[str, tuple[float, str]] = {}
        self._locks = {base: threading.Lock() for base in self.bases}

    def comparer(self, base: str) -> Comparer:
        """The base's Comparer (the base, and its merged variants cached per choice of heads).

        Raises:
            BaseUnavailable: not one of `bases`, or it failed to load (now, or less than `retry_s` ago).
        """
        if base not in self._locks:
            raise BaseUnavailable(base, f"this server offers {', '.join(map(display_name, self.bases))} only")
        if base in self._comparers:
            return self._comparers[base]
        with self._locks[base]:
            if base not in self._comparers:
                failed_at, error = self._failures.get(base, (float("-inf"), ""))
                if time.monotonic() - failed_at < self.retry_s:
                    raise BaseUnavailable(base, error)
                try:
                    model = self._load(base)
                    self._comparers[base] = Comparer(model, device=self.device, limits=self.limits)
                except LOAD_ERRORS as e:
                    self._failures[base] = (time.monotonic(), str(e))
                    raise BaseUnavailable(base, str(e)) from e
        return self._comparers[base]

    def model(self, base: str):
        """The loaded base model (see `comparer` for the errors)."""
        return self.comparer(base).base
