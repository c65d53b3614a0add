"""Give freed heap memory back to the system, so a long-running server's RSS follows what it holds.

The server answers requests from many threads; glibc gives each thread group an arena of its own and keeps what a
request freed there for later. A burst of large transient allocations (a 4 MiB head header parsed, an upload's
buffers) then shows as RSS that never comes down, though no object holds it (the soak: +85 MiB from 20 refused head
uploads, nothing alive). `malloc_trim(0)` returns every arena's whole free pages; a daemon thread calls it now and
then. Not glibc (musl, macOS): nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import threading

LOGGER = logging.getLogger(__name__)
TRIM_EVERY_S = 10.0


@functools.cache  # find_library runs ldconfig: look the C library up once per process
def _libc_trim():
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def trim_heap() -> bool:
    """Return the freed pages of every malloc arena to the system now; False where the C library has no trim."""
    trim = _libc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def keep_heap_trimmed(every_s: float = TRIM_EVERY_S, stop: threading.Event | None = None) -> threading.Thread | None:
    """Start a daemon thread that trims the heap every `every_s` seconds until `stop` is set (a server: never); None
    where there is nothing to trim."""
    trim = _libc_trim()
    if trim is None:
        LOGGER.info("no malloc_trim in this C library: freed heap memory stays with the process")
        return None

    stop = stop or threading.Event()

    def loop() -> None:
        while not stop.wait(every_s):
            trim(0)

    thread = threading.Thread(target=loop, name="headkit-heap-trim", daemon=True)
    thread.start()
    return thread
