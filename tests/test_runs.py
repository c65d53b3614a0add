"""Runs that outlive their followers, one training slot, and each way a stranger could hold the slot or the memory:
refused or bounded, while the server keeps starting other runs."""

from __future__ import annotations

import dataclasses
import functools
import gc
import re
import threading
import time
import types

import pytest
import torch

import headkit
from headkit.keys import UserKeys
from headkit.progress import TrainProgress
from headkit.runs import (
    BEFORE_START,
    ON_REQUEST,
    Failed,
    Finished,
    Runs,
    SavedHead,
    Stopped,
    TrainingRequest,
    Waiting,
    perform,
    perform_in_worker,
    streamed,
)
from headkit.server import Job

END = (Finished, Stopped, Failed)


def gated(release: threading.Event, events=("a", "b"), *, started: list | None = None):
    """A run's work that reports its first event, then waits for `release` (no training)."""

    def work(request, stop, report):
        if started is not None:
            started.append(True)
        report(events[0])
        release.wait(timeout=30)
        for event in events[1:]:
            report(event)

    return work


def batches(*, seconds: float = 0.02, count: int = 10_000):
    """A run's work shaped like training: a batch report every `seconds`, polling `stop` after each, as the
    Ultralytics callbacks do; the head comes last."""

    def work(request, stop, report):
        for n in range(count):
            time.sleep(seconds)
            if stop():
                raise headkit.TrainingCancelled(ON_REQUEST)
            report(TrainProgress("batch", 1, 1, n / count))
        report("head")

    return work


def events_of(run) -> list:
    """What the run reported, without waiting notes and without its final outcome."""
    return [e for e in run.follow(poll_s=0.05) if not isinstance(e, (Waiting, *END))]


def test_a_run_keeps_going_without_followers_and_replays_from_the_start():
    runs, release = Runs(), threading.Event()
    run = runs.start("alice", None, gated(release))
    first = run.follow()
    assert next(first) == "a"
    first.close()  # the page went away
    release.set()
    assert list(run.follow()) == ["a", "b", Finished()] and run.state == "finished"


def test_one_slot_the_second_run_waits_and_says_so():
    runs, release = Runs(slots=1), threading.Event()
    first = runs.start("alice", None, gated(release))
    opened = threading.Event()
    opened.set()
    second = runs.start("bob", None, gated(opened, events=("c",)))
    follower = second.follow(poll_s=0.05)
    assert next(follower) == Waiting(ahead=1) and second.state == "waiting"
    release.set()
    assert list(first.follow()) == ["a", "b", Finished()]
    assert [e for e in follower if not isinstance(e, Waiting)] == ["c", Finished()]


def test_a_second_run_of_one_client_is_refused_and_errors_are_kept():
    runs, release = Runs(), threading.Event()
    runs.start("alice", None, gated(release))
    with pytest.raises(headkit.LimitExceeded, match=r"of yours waiting or running at once.*max_queued_runs_per_client"):
        runs.start("alice", None, gated(release))
    release.set()

    def broken(request, stop, report):
        report("a")
        raise OSError("disk full")

    run = runs.start("carol", None, broken)
    *reported, outcome = run.follow()
    assert reported == ["a"] and run.state == "failed" and isinstance(outcome, Failed)
    assert isinstance(outcome.error, OSError) and outcome.message == "disk full" and outcome.error.__traceback__ is None
    with pytest.raises(OSError, match="disk full"):
        raise outcome.fresh_error()
    assert outcome.error.__traceback__ is None, "raising it left the kept error without frames"


def test_the_line_is_bounded_for_all_clients_and_reopens():
    runs, release = Runs(limits=headkit.Limits(max_queued_runs=2)), threading.Event()
    running = runs.start("owner-0", None, gated(release))
    waiting = [runs.start(f"owner-{n}", None, gated(release)) for n in (1, 2)]
    with pytest.raises(
        headkit.LimitExceeded, match=r"all users together.*: 3 is over the limit of 2 \(max_queued_runs\)"
    ):
        runs.start("owner-3", None, gated(release))
    assert runs.stop("owner-2")  # one leaves the line: there is room again
    late = runs.start("owner-3", None, gated(release))
    release.set()
    assert all(events_of(run) == ["a", "b"] for run in (running, waiting[0], late))


def test_a_run_stops_at_its_time_limit_and_frees_the_slot():
    runs = Runs(limits=headkit.Limits(max_train_s=0.3))
    endless = runs.start("mallory", None, batches())
    opened = threading.Event()
    opened.set()
    after = runs.start("bob", None, gated(opened))
    started = time.monotonic()
    outcome = list(endless.follow(poll_s=0.05))[-1]
    assert isinstance(outcome, Stopped) and endless.state == "stopped"
    assert re.search(r"stopped at the time limit of 0.3 s of training .*max_train_s.*raise HEADKIT_MAX_TRAIN_S",
                     outcome.message)  # fmt: skip
    assert time.monotonic() - started < 5 and "head" not in endless.events  # stopped between batches, nothing saved
    assert events_of(after) == ["a", "b"] and after.state == "finished"  # the next run got the slot


def test_stop_takes_a_waiting_run_out_of_the_line_and_ends_a_running_one_after_its_batch():
    """Stop, at the run layer: a waiting run never starts; a running one ends between batches, saying so."""
    runs, release, ran = Runs(), threading.Event(), []
    first = runs.start("alice", None, batches())
    second = runs.start("bob", None, gated(release, started=ran))
    third = runs.start("carol", None, gated(release))
    assert second.state == "waiting" and third.ahead == 2
    assert runs.stop("bob") == ["waiting"] and runs.stop("nobody") == []
    assert second.outcome == Stopped(BEFORE_START) and third.ahead == 1
    follower = first.follow(poll_s=0.05)
    assert isinstance(next(follower), TrainProgress)
    assert first.stop() == "running" and first.stop() == "running"  # pressed twice: one stop
    assert list(follower)[-1] == Stopped(ON_REQUEST) and first.state == "stopped" and "head" not in first.events
    release.set()
    assert events_of(third) == ["a", "b"]
    assert not ran, "the stopped run never started"


def test_only_the_newest_finished_runs_are_kept():
    runs, opened = Runs(limits=headkit.Limits(max_kept_runs=3)), threading.Event()
    opened.set()
    for n in range(6):
        events_of(runs.start(f"owner-{n}", None, gated(opened)))
    again = runs.start("owner-5", None, gated(opened))  # a newer run of one owner replaces its older one
    events_of(again)
    assert [runs.get(f"owner-{n}") is None for n in range(6)] == [True, True, True, False, False, False]
    assert runs.get("owner-5") is again and len(runs._runs) == 3


def test_batch_progress_is_not_piled_up():
    runs = Runs()
    run = runs.start("alice", None, batches(seconds=0, count=5000))
    assert events_of(run)[-1] == "head" and len(run.events) == 2  # the head and Finished: no batch report is kept


def test_a_real_run_saves_its_head_and_keeps_records_only(tmp_path, base, tiny_plates):
    """`perform` through a run, as the app starts it: a real head is trained and saved into the job; what the run
    keeps is paths, numbers and names, no model and no tensor (the fine-tune after it: tests/test_app.py)."""
    job = Job(tmp_path / "job")
    request = TrainingRequest(
        base="test", data=str(tiny_plates / "data.yaml"), job_dir=str(job.path), name="plates", epochs=1, imgsz=64,
        batch=4, options=(("workers", 0), ("device", "cpu")),
    )  # fmt: skip
    run = Runs().start(job.path, request, lambda req, stop, report: perform(req, base, stop, report))
    kept = [e for e in run.follow() if not isinstance(e, TrainProgress)]
    assert [type(e) for e in kept] == [SavedHead, Finished] and run.state == "finished"
    head = kept[0]
    assert head.path == job.heads()["plates"] and head.names == {0: "license_plate"} and not head.finetune_next
    assert headkit.load_head(head.path).names == {0: "license_plate"} and "all" in head.metrics
    del kept, head
    gc.collect()
    assert not [type(x).__name__ for x in reachable(run) if isinstance(x, torch.nn.Module | torch.Tensor)]


def test_streamed_yields_the_run_and_stops_it_when_the_consumer_goes(tmp_path, base, tiny_plates):
    """The generator a spaces.GPU call yields: every event of `perform`, in order; a consumer that goes away (a
    closed ZeroGPU stream) stops the training at its next batch, and nothing is saved."""
    job = Job(tmp_path / "job")
    request = TrainingRequest(
        base="test", data=str(tiny_plates / "data.yaml"), job_dir=str(job.path), name="plates", epochs=1, imgsz=64,
        batch=4, options=(("workers", 0), ("device", "cpu"), ("plots", False)),
    )  # fmt: skip
    events = list(streamed(request, base))
    assert isinstance(events[0], TrainProgress) and isinstance(events[-1], SavedHead)
    assert events[-1].path == job.heads()["plates"]
    again = streamed(dataclasses.replace(request, name="gone", epochs=3), base)
    assert isinstance(next(again), TrainProgress)
    again.close()  # the consumer went away: the training stops after its batch, and close() waits for that
    assert "gone" not in job.heads() and not [t for t in threading.enumerate() if t.name == "training-stream"]


def test_a_run_in_a_worker_reports_saves_a_head_this_process_loads_and_stops(tmp_path, base_weights, tiny_plates):
    """The server's way on CPU: the run's work in a worker process that loads the base itself; its progress and
    saved head come back as events, the head it saved loads here (of the shape asked: the app's "p3-last-narrow"), and
    Stop reaches it through the job's marker."""
    job = Job(tmp_path / "job")
    shape = headkit.SHAPES["p3-last-narrow"]
    request = TrainingRequest(
        base=str(base_weights), data=str(tiny_plates / "data.yaml"), job_dir=str(job.path), name="plates", epochs=1,
        imgsz=64, batch=4, options=(("workers", 0), ("device", "cpu"), ("plots", False)), branch=shape.branch,
        class_width=shape.class_width, box_branch=shape.box_branch,
    )  # fmt: skip
    runs = Runs()
    run = runs.start(job.path, request, perform_in_worker)
    events = list(run.follow(poll_s=0.05))
    kept = [e for e in events if not isinstance(e, TrainProgress | Waiting)]
    assert any(isinstance(e, TrainProgress) and e.stage == "epoch" for e in events)
    assert [type(e) for e in kept] == [SavedHead, Finished] and run.state == "finished"
    saved = headkit.load_head(kept[0].path)
    assert kept[0].path == job.heads()["plates"] and saved.names == {0: "license_plate"}
    assert saved.kind.describe() == "branch of layers 13-15" and saved.metadata["class_width"] == 32
    longer = runs.start(job.path, dataclasses.replace(request, name="stopped", epochs=50), perform_in_worker)
    follower = longer.follow(poll_s=0.05)
    assert any(isinstance(e, TrainProgress) for e in follower)  # it trains
    assert longer.stop() == "running"
    assert list(follower)[-1:] == [Stopped(ON_REQUEST)] and longer.state == "stopped" and "stopped" not in job.heads()
    assert not job.stop_requested()  # the marker that stopped it is gone with it


def test_a_run_whose_worker_is_killed_fails_naming_the_limit(tmp_path, base_weights, tiny_plates):
    job = Job(tmp_path / "job")
    request = TrainingRequest(base=str(base_weights), data=str(tiny_plates / "data.yaml"), job_dir=str(job.path),
                              name="plates", epochs=1, imgsz=64, batch=4, options=(("workers", 0),))  # fmt: skip
    work = functools.partial(perform_in_worker, limits=headkit.Limits(max_worker_mb=1))
    outcome = list(Runs().start(job.path, request, work).follow(poll_s=0.05))[-1]
    assert isinstance(outcome, Failed) and outcome.message.startswith(
        "training needed more than 1 MiB of memory (max_worker_mb), so its worker process was stopped; train at a "
        "smaller image size or batch, or without the comparison fine-tune, or raise the limit: set "
        "HEADKIT_MAX_WORKER_MB on the server"
    )
    with pytest.raises(headkit.LimitExceeded, match="max_worker_mb"):
        raise outcome.fresh_error()
    assert "plates" not in job.heads()


def reachable(root) -> list:
    """Objects reachable from `root` through data (not through classes, modules or functions)."""
    skip = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)
    seen, stack, found = {id(root)}, [root], []
    while stack:
        for child in gc.get_referents(stack.pop()):
            if id(child) not in seen and not isinstance(child, skip):
                seen.add(id(child))
                found.append(child)
                stack.append(child)
    return found


def test_user_keys(tmp_path):
    keys = UserKeys(tmp_path / "keys")
    key = keys.issue()
    assert keys.owner(key).startswith("user:") and keys.owner(key) != keys.owner(keys.issue())
    assert all(key not in p.name for p in (tmp_path / "keys").iterdir())  # only hashes on disk
    for bad in ("", "x" * 100, key[:-1], "../../etc/passwd"):
        with pytest.raises(PermissionError, match="unknown user key: this server did not issue it"):
            keys.owner(bad)
