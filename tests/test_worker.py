"""Heavy work in a worker process with hard limits: a bomb kills its worker, never this process; the caller gets a
clear refusal naming the limit, and the next call works. Each test spawns real workers (a fresh Python that imports
headkit: ~2 s each on 2 CPU cores)."""

from __future__ import annotations

import json
import os
import signal
import time
import zipfile
from pathlib import Path

import pytest

import headkit
from headkit.datasets import load_dataset
from headkit.labels import DatasetError
from headkit.limits import LimitExceeded
from headkit.worker import WorkerCrashed, WorkerLimitExceeded, owned_mb, run_in_worker

CAP_ABOVE_IMPORTS_MB = 200  # the tests' cap: what a worker holds once headkit is imported, plus this


# --- what the workers run (module-level: a worker imports them by name) -------------------------------------------


def imported_mb() -> float:
    """The worker's own memory once headkit and its dataset reader are imported (what every worker starts with)."""
    import headkit.datasets  # noqa: F401

    return owned_mb(os.getpid())


def eat_memory(mb: int) -> int:
    """Allocate `mb` MiB in 16 MiB pieces, touching every page, a little at a time; returns what it held."""
    held = []
    for _ in range(mb // 16):
        held.append(b"\x01" * (16 << 20))
        time.sleep(0.002)
    return len(held) * 16


def refuse(kind: str) -> None:
    if kind == "dataset":
        raise DatasetError("data.yaml: expected names, found none; add them")
    if kind == "unrebuildable":
        raise headkit.server.BaseUnavailable("yolo.pt", "not on this server")
    os.kill(os.getpid(), signal.SIGSEGV)


def chatty(report) -> str:
    import logging

    report("first")
    logging.getLogger("headkit.test_worker").warning("a note from the worker")
    report({"second": 2})
    return "done"


@pytest.fixture(scope="module")
def imports_mb() -> float:
    """A worker's memory after imports (measured, not assumed: it differs by torch build and machine)."""
    measured = run_in_worker(imported_mb, task="measuring", advice="-")
    assert 0 < measured < 4096
    return measured


# --- the mechanism ---------------------------------------------------------------------------------------------------


def test_a_memory_bomb_kills_its_worker_with_a_clear_message_and_the_next_call_works(imports_mb: float):
    limits = headkit.Limits(max_worker_mb=round(imports_mb) + CAP_ABOVE_IMPORTS_MB)
    mine = owned_mb(os.getpid())
    with pytest.raises(WorkerLimitExceeded) as refused:
        run_in_worker(eat_memory, 4096, task="eating memory", advice="eat less", limits=limits)
    message = str(refused.value)
    assert f"eating memory needed more than {limits.max_worker_mb:,.0f} MiB of memory (max_worker_mb)" in message
    assert "eat less, or raise the limit: set HEADKIT_MAX_WORKER_MB" in message
    assert isinstance(refused.value, LimitExceeded) and refused.value.limit == "max_worker_mb"
    assert owned_mb(os.getpid()) - mine < 1024, "the 4 GiB were never this process's"
    assert run_in_worker(imported_mb, task="measuring", advice="-", limits=limits) < limits.max_worker_mb  # next call


def test_a_time_cap_kills_a_sleeping_worker():
    with pytest.raises(
        WorkerLimitExceeded, match=r"sleeping took longer than 3 s \(max_worker_s\).*HEADKIT_MAX_WORKER_S"
    ):
        run_in_worker(time.sleep, 600, task="sleeping", advice="sleep less", limits=headkit.Limits(max_worker_s=3))


def test_errors_come_back_as_their_type_and_a_crash_is_a_clear_error():
    with pytest.raises(DatasetError, match=r"^data.yaml: expected names, found none; add them$"):
        run_in_worker(refuse, "dataset", task="reading", advice="-")
    # a type that cannot be rebuilt from its message comes back as its nearest builtin base, message kept
    with pytest.raises(LookupError, match="BaseUnavailable: base model yolo.pt is not available: not on this server"):
        run_in_worker(refuse, "unrebuildable", task="reading", advice="-")
    with pytest.raises(WorkerCrashed, match="reading the data: its worker process was killed by SIGSEGV before it"):
        run_in_worker(refuse, "crash", task="reading the data", advice="-")


def test_events_and_warnings_come_back_in_order(caplog: pytest.LogCaptureFixture):
    seen: list = []
    assert run_in_worker(chatty, task="chatting", advice="-", events=seen.append) == "done"
    assert seen == ["first", {"second": 2}] and "a note from the worker" in caplog.text


# --- dataset import --------------------------------------------------------------------------------------------------


def test_a_dataset_that_needs_too_much_memory_is_refused_and_the_server_reads_the_next(
    imports_mb: float, tiny_plates: Path, tmp_path: Path
):
    """A COCO export within every JSON limit (7M short strings in `info`, 35 MB stored) that costs ~0.4 GB once
    parsed: its worker is killed, the visitor is told which limit, nothing is left in the work folder."""
    archive = tmp_path / "heavy.zip"
    notes = json.dumps(["ab"] * 7_000_000)
    coco = f'{{"info": {{"notes": {notes}}}, "images": [], "annotations": [], "categories": []}}'
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("export/_annotations.coco.json", coco)
    del notes, coco
    limits = headkit.Limits(max_worker_mb=round(imports_mb) + CAP_ABOVE_IMPORTS_MB)
    work = tmp_path / "work"
    with pytest.raises(WorkerLimitExceeded) as refused:
        load_dataset(archive, work_dir=work, limits=limits)
    assert str(refused.value).startswith(
        f"reading the dataset needed more than {limits.max_worker_mb:,.0f} MiB of memory (max_worker_mb), so its "
        "worker process was stopped; upload fewer or smaller images and annotation files, or raise the limit: set "
        "HEADKIT_MAX_WORKER_MB on the server"
    )
    assert list(work.iterdir()) == []  # what the killed worker wrote is gone
    summary = load_dataset(tiny_plates, work_dir=work, limits=limits)  # this process still reads datasets
    assert {split: c.images for split, c in summary.splits.items()} == {"train": 8, "val": 4}
