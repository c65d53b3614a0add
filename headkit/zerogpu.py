"""A training run's work inside one ZeroGPU call (`spaces.GPU`), and the one way Stop reaches it.

On ZeroGPU the GPU is lent per call, to a process of its own: the call runs `headkit.runs.streamed`, whose events
stream back to the server. Stop has one channel into that process, the job's stop marker file (`Job.request_stop`),
which `perform` polls after every batch. The server side never writes the marker itself: the run's own `stop()`
(Stop pressed, or `max_train_s` reached) is watched here and turned into the marker, so a handler only ever calls
`Runs.stop`, on ZeroGPU or not.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .jobs import Job

if TYPE_CHECKING:
    from .runs import TrainingRequest

WATCH_S = 0.5  # how often the run's stop() is looked at while the GPU call runs


def gpu_seconds(request: TrainingRequest) -> int:
    """The duration to ask `spaces.GPU` for (`spaces.GPU(duration=gpu_seconds)`): what the run was admitted with."""
    return int(request.gpu_seconds)


def in_gpu_call(
    call: Callable[[TrainingRequest], Iterator[Any]],
) -> Callable[[TrainingRequest, Callable[[], bool], Callable[[Any], None]], None]:
    """The run's work (for `Runs.start`) that streams `call(request)`'s events (a `spaces.GPU` function yielding
    `streamed(request, base)`) and carries the run's stop() into the GPU process as the job's stop marker.

    The marker is written again on every watch while stop() holds, so a Stop pressed while the call still waited for
    a GPU is not lost to `perform` clearing old markers when it starts.
    """

    def work(request: TrainingRequest, stop: Callable[[], bool], report: Callable[[Any], None]) -> None:
        job = Job(request.job_dir)
        done = threading.Event()

        def watch() -> None:
            while not done.wait(WATCH_S):
                if stop():
                    job.request_stop()

        watcher = threading.Thread(target=watch, name="zerogpu-stop", daemon=True)
        watcher.start()
        try:
            for event in call(request):
                report(event)
        finally:
            done.set()
            watcher.join()

    return work
