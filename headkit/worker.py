"""Heavy or untrusted work in a child process with hard limits: whatever bound was missed costs that child, never
the server.

`run_in_worker(fn, *args, task=..., advice=..., limits=...)` starts a fresh Python process (a new interpreter, never a fork: the server
has threads, and a fork would copy its memory and locks), hands it `fn` and its arguments pickled, and waits for the
result. The child runs in its own process group with its own temporary folder (`TMPDIR`), and is killed, with every
process it started, when

- its memory passes `limits.max_worker_mb`: resident anonymous and shared memory (`RssAnon` + `RssShmem` in
  `/proc/<pid>/status`) of the child, read every `POLL_S` seconds, plus what its own child processes hold privately
  (see `_Meter`). An RSS watchdog, not `RLIMIT_AS`: torch reserves far more address space than it touches (a CUDA
  context alone reserves tens of GB), and a cgroup needs privileges a Space does not have. File-backed pages (the
  shared libraries, ~0.4 GB for torch) are not counted: they are shared with the server and the kernel can drop
  them. An allocation faster than the poll can overshoot the cap by its rate × POLL_S before the kill;
- it runs longer than `seconds` (default `limits.max_worker_s`) of wall time.

Then `WorkerLimitExceeded` (a `LimitExceeded`) names the task, the limit and how to raise it; a child that dies
otherwise (a signal, the kernel's OOM killer) raises `WorkerCrashed`. What the child raises comes back as the same
type with the same message (without traceback), so callers catch what they caught before; a type that cannot be
rebuilt from its message comes back as its nearest builtin base. `fn` may report events as it goes: with `events`,
it is called with `report=` a function that sends each (picklable) event to `events` in the caller's thread.

The child's messages are pickles read by the server: the child runs headkit's own code on a stranger's data, and a
child that ran a stranger's code could do as much harm through its user id as through a pickle. Each message is
bounded by `MAX_MESSAGE_MB`. On ZeroGPU the `spaces.GPU` call already runs in a process of its own; there it is the
worker, bounded by its `duration`.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .limits import ENV, LimitExceeded, Limits

POLL_S = 0.05  # how often the watchdog reads the child's memory, and how late an event or a stop can be
DESCENDANTS_S = 1.0  # how often the memory of the worker's own child processes is read
MAX_MESSAGE_MB = 64  # one event or result from the child (a dataset summary is a few KB)
EXIT_GRACE_S = 10.0  # how long a child that closed its channel without an outcome gets to exit
_PROC = Path("/proc")
_MAX_VARIABLE = 100_000  # characters of one environment variable passed on (Linux refuses over 128 KiB)
# started as `python -c`: the parent's import path first, so `fn` unpickles by the same module names as here
_BOOTSTRAP = "import sys, json; sys.path[:0] = json.loads(sys.argv[1]); from headkit.worker import _serve; _serve()"


class WorkerLimitExceeded(LimitExceeded):
    """A worker process went over `max_worker_mb` or its wall time and was killed; the message names the task, the
    limit and how to raise it. `limit` is "max_worker_mb" or "max_worker_s"."""

    def __init__(self, message: str, limit: str = "") -> None:
        super().__init__(message)
        self.limit = limit

    def __reduce__(self):
        return type(self), (str(self), self.limit)


class WorkerCrashed(ChildProcessError):
    """A worker process died without a result (a signal not from headkit, e.g. the kernel's OOM killer, or a crash)."""


def run_in_worker(
    fn: Callable[..., Any],
    /,
    *args: Any,
    task: str,
    advice: str,
    limits: Limits | None = None,
    seconds: float | None = None,
    events: Callable[[Any], None] | None = None,
    tick: Callable[[], None] | None = None,
    **kwargs: Any,
) -> Any:
    """`fn(*args, **kwargs)` in a new worker process under `limits`; its return value, or its error re-raised here.

    Args:
        fn: a module-level function of an importable module (pickled by name, so not one of `__main__`),
            with picklable arguments and result.
        task: what the worker does, as the subject of the refusal ("reading the dataset", "training").
        advice: what the visitor can do short of raising the limit ("use fewer or smaller images").
        limits: `max_worker_mb`, and `max_worker_s` unless `seconds` is given; None: `Limits()`.
        seconds: the wall-time cap instead of `limits.max_worker_s`.
        events: receives what `fn` reports, in order, in this thread; `fn` is then called with `report=`.
        tick: called every `POLL_S` seconds while the worker runs (e.g. to pass a Stop on through a file).

    Raises:
        WorkerLimitExceeded: the worker went over its memory or time and was killed.
        WorkerCrashed: the worker died without a result.
        Exception: what `fn` raised, of the same type and message.
    """
    if getattr(fn, "__module__", None) == "__main__":
        raise ValueError(
            f"{getattr(fn, '__qualname__', fn)} is defined in the script being run (__main__), which a worker cannot "
            "import; define it in a module"
        )
    limits = limits or Limits()
    seconds = limits.max_worker_s if seconds is None else seconds
    if events is not None:
        kwargs = {**kwargs, "report": _REPORT}
    folder = Path(tempfile.mkdtemp(prefix="headkit-worker-"))
    try:
        job = folder / "job.pickle"
        job.write_bytes(pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL))
        # a variable longer than exec passes (128 KiB, e.g. pytest's test id of a huge parameter) would fail the start
        env = {k: v for k, v in os.environ.items() if len(k) + len(v) < _MAX_VARIABLE}
        env |= {"TMPDIR": str(folder / "tmp"), "HEADKIT_WORKER_JOB": str(job)}
        (folder / "tmp").mkdir()
        read, write = os.pipe()  # not inherited by other processes: only `pass_fds` hands `write` to this child
        with Connection(read, writable=False) as channel:
            try:
                env["HEADKIT_WORKER_FD"] = str(write)
                child = subprocess.Popen(
                    [sys.executable, "-c", _BOOTSTRAP, json.dumps(sys.path)],
                    env=env, pass_fds=(write,), start_new_session=True, stdin=subprocess.DEVNULL,
                )  # fmt: skip
            finally:
                os.close(write)  # the child holds the only writing end: end of file once it is gone
            return _follow(child, channel, _Caps(task, advice, limits, seconds), events, tick)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class _Caps:
    """The watchdog's limits for one worker and the refusals naming them."""

    def __init__(self, task: str, advice: str, limits: Limits, seconds: float) -> None:
        self.task, self.advice, self.mb, self.seconds = task, advice, limits.max_worker_mb, seconds

    def memory(self) -> WorkerLimitExceeded:
        return WorkerLimitExceeded(
            f"{self.task} needed more than {self.mb:,.0f} MiB of memory (max_worker_mb), so its worker process was "
            f"stopped; {self.advice}, or raise the limit: set {ENV['max_worker_mb']} on the server, or pass "
            "headkit.Limits(max_worker_mb=...) in Python",
            "max_worker_mb",
        )

    def time(self) -> WorkerLimitExceeded:
        return WorkerLimitExceeded(
            f"{self.task} took longer than {format_duration(self.seconds)} (max_worker_s), so its worker process was "
            f"stopped; {self.advice}, or raise the limit: set {ENV['max_worker_s']} on the server, or pass "
            "headkit.Limits(max_worker_s=...) in Python",
            "max_worker_s",
        )


def _follow(child: subprocess.Popen, channel: Connection, caps: _Caps, events, tick) -> Any:
    """Watch the child until it sends its outcome: deliver its events, check its memory and time, call `tick`."""
    deadline, meter = time.monotonic() + caps.seconds, _Meter(child.pid)
    try:
        while True:
            if channel.poll(POLL_S):
                try:
                    kind, value = pickle.loads(channel.recv_bytes(MAX_MESSAGE_MB * 2**20))
                except EOFError:  # the child closed the channel without an outcome: it died
                    raise _crashed(child, caps.task) from None
                except OSError as e:  # a message over MAX_MESSAGE_MB
                    raise WorkerCrashed(f"{caps.task}: its worker process sent more than {MAX_MESSAGE_MB} MiB at once "
                                        f"({e}); tell the server's operator") from None  # fmt: skip
                if kind == "result":
                    return value
                if kind == "error":
                    raise value
                if kind == "log":  # the child's warnings reach this process's handlers (the server's log)
                    logging.getLogger(value.name).handle(value)
                elif events is not None:
                    events(value)
            if meter.mb() > caps.mb:
                raise caps.memory()
            if time.monotonic() > deadline:
                raise caps.time()
            if child.poll() is not None and not channel.poll(0):
                raise _crashed(child, caps.task)
            if tick is not None:
                tick()
    finally:
        _kill(child)  # done or not: the child and whatever it started go now


def owned_mb(pid: int) -> float:
    """MiB of resident anonymous and shared memory of process `pid` (`RssAnon` + `RssShmem`; 0 when it is gone or
    there is no `/proc`). Cheap (one small file), so it is read every `POLL_S`."""
    try:
        status = (_PROC / str(pid) / "status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0.0
    kib = sum(int(line.split()[1]) for line in status.splitlines() if line.startswith(("RssAnon:", "RssShmem:")))
    return kib / 1024


class _Meter:
    """The memory a worker owns: its own (every poll) and its descendants' (every `DESCENDANTS_S`).

    A descendant counts its private dirty pages only (`Private_Dirty` in `smaps_rollup`): a forked child, e.g. a
    data-loader worker, shares its parent's pages until it writes them, and its `RssAnon` counts them all again.
    `smaps_rollup` walks the page tables (~50 ms per GB), hence the slower pace; on CPU (`workers=0`) there are none.
    """

    def __init__(self, pid: int) -> None:
        self.pid, self._descendants_mb, self._next = pid, 0.0, 0.0

    def mb(self) -> float:
        if time.monotonic() >= self._next:
            self._descendants_mb = sum(_private_mb(p) for p in _descendants(self.pid))
            self._next = time.monotonic() + DESCENDANTS_S
        return owned_mb(self.pid) + self._descendants_mb


def _descendants(pid: int) -> list[int]:
    """Every process below `pid` (each thread lists the children it started)."""
    found, stack = [], [pid]
    while stack:
        current = stack.pop()
        try:
            threads = list((_PROC / str(current) / "task").iterdir())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        for thread in threads:
            try:
                children = [int(c) for c in (thread / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
            found += children
            stack += children
    return found


def _private_mb(pid: int) -> float:
    try:
        rollup = (_PROC / str(pid) / "smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):  # ended, or an old kernel: its RssAnon
        return owned_mb(pid)
    return sum(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Private_Dirty:")) / 1024


def _crashed(child: subprocess.Popen, task: str) -> WorkerCrashed:
    try:
        code: int | None = child.wait(timeout=EXIT_GRACE_S)
    except subprocess.TimeoutExpired:
        code = None
    if code is None or code >= 0:
        why = f"exited with code {code}" if code is not None else "closed its channel"
    else:
        known = -code in {s.value for s in signal.Signals}
        why = f"was killed by {signal.Signals(-code).name if known else f'signal {-code}'}"
        if -code == signal.SIGKILL:
            why += " (not by headkit: the machine may have run out of memory; set HEADKIT_MAX_WORKER_MB lower)"
    return WorkerCrashed(
        f"{task}: its worker process {why} before it finished; try again, and if it happens again, tell the server's "
        "operator"
    )


def _kill(child: subprocess.Popen) -> None:
    """Kill the child's process group (the child, and e.g. data-loader workers it started), then reap the child.

    The group is killed before the child is reaped, so its id cannot have been given to another process yet.
    """
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # every process of the group has ended
        pass
    child.wait()


def format_duration(seconds: float) -> str:
    """A limit's seconds as its message states them, to 3 significant digits: 3 s, 1.5 min, 2 h."""
    if seconds >= 3600:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 60:.3g} min" if seconds >= 60 else f"{seconds:.3g} s"


# --- in the child ----------------------------------------------------------------------------------------------------

_channel: Connection | None = None


class _Report:
    """`report` as `fn` gets it: sends one event to the parent. Pickled by name; in the child it sends."""

    def __call__(self, event: Any) -> None:
        _send("event", event)

    def __reduce__(self):
        return "_REPORT"


_REPORT = _Report()


class _Forward(logging.Handler):
    """Sends the child's log records to the parent, which hands them to its own handlers."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record.msg, record.args = record.getMessage(), None
            if record.exc_info:
                record.exc_text, record.exc_info = logging.Formatter().formatException(record.exc_info), None
            _send("log", record)
        except Exception:  # logging never breaks the work
            self.handleError(record)


def _send(kind: str, value: Any) -> None:
    assert _channel is not None, "report() is only called inside a worker"
    _channel.send_bytes(pickle.dumps((kind, value), protocol=pickle.HIGHEST_PROTOCOL))


def _serve() -> None:
    """The child's main: run the job, send its outcome, exit at once (no interpreter teardown: torch's can hang)."""
    global _channel
    _channel = Connection(int(os.environ.pop("HEADKIT_WORKER_FD")), readable=False)
    logging.getLogger().addHandler(_Forward(logging.WARNING))
    threading.Thread(target=_watch_parent, args=(os.getppid(),), name="worker-parent", daemon=True).start()
    job = Path(os.environ.pop("HEADKIT_WORKER_JOB"))
    try:
        fn, args, kwargs = pickle.loads(job.read_bytes())
        job.unlink()
        outcome = ("result", fn(*args, **kwargs))
    except BaseException as e:  # everything goes back to the parent, typed
        outcome = ("error", _portable(e))
    sys.stdout.flush()  # the parent kills the group once it has the outcome
    sys.stderr.flush()
    try:
        _send(*outcome)
    except Exception as e:  # a result that does not pickle
        _send("error", _portable(TypeError(f"the worker's result could not be sent back: {e}")))
    os._exit(0)


def _watch_parent(parent: int) -> None:
    """Exit when the server that started this worker is gone: a worker never outlives its server."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _portable(error: BaseException) -> BaseException:
    """`error` without traceback, as a type that survives pickling: its own, or its nearest base class that can be
    rebuilt from the message alone (e.g. a LookupError subclass whose constructor takes other arguments)."""
    error.__traceback__, error.__cause__, error.__context__ = None, None, None
    try:
        copy = pickle.loads(pickle.dumps(error))
        if type(copy) is type(error) and str(copy) == str(error):
            return error
    except Exception:  # noqa: BLE001 (any failure to rebuild means: send a simpler type)
        pass
    for base in type(error).__mro__[1:]:
        if issubclass(base, BaseException) and base.__module__ == "builtins":
            return base(f"{type(error).__name__}: {error}")
    return RuntimeError(f"{type(error).__name__}: {error}")
