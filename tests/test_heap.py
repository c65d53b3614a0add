"""The server hands freed heap memory back: RSS that a burst of requests freed comes down without a restart."""

from __future__ import annotations

import ctypes.util
import platform
import threading
import time

import psutil
import pytest

from headkit.heap import keep_heap_trimmed, trim_heap

MIB = 2**20
glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or not ctypes.util.find_library("c"),
    reason="malloc_trim is glibc's",
)


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _freed_burst(count: int = 2000, size: int = 100_000) -> list[bytearray]:
    """`count` heap blocks of `size` bytes (under glibc's mmap threshold, so they live in the heap), all but the
    last freed: the last pins the heap's top, so glibc cannot shrink the heap by itself; the freed pages stay
    resident until trimmed. Returns the pinning block (keep it alive)."""
    blocks = [bytearray(b"\x01" * size) for _ in range(count)]
    pin = blocks[-1:]
    del blocks
    return pin


@glibc_only
def test_a_freed_burst_of_allocations_leaves_the_process_once_trimmed():
    pin = _freed_burst()
    before = _rss()
    assert trim_heap() is True
    after = _rss()
    assert before - after > 100 * MIB, f"RSS {before / MIB:.0f} -> {after / MIB:.0f} MiB after malloc_trim"
    assert pin


@glibc_only
def test_the_trimming_thread_hands_freed_memory_back_by_itself():
    before = _rss()
    pin = _freed_burst()
    high = _rss()
    assert high - before > 100 * MIB
    stop = threading.Event()
    thread = keep_heap_trimmed(every_s=0.05, stop=stop)
    try:
        assert thread is not None and thread.daemon
        deadline = time.monotonic() + 10
        while _rss() > high - 100 * MIB and time.monotonic() < deadline:
            time.sleep(0.05)
        assert high - _rss() > 100 * MIB, f"RSS still {_rss() / MIB:.0f} MiB (was {high / MIB:.0f} with the burst)"
    finally:
        stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert pin
