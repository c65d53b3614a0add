"""Runs that outlive their followers, one training slot, and each way a stranger could hold the slot or the memory:
refused or bounded, while the server keeps starting other runs."""

from __future__ import annotations

import gc
import threading
import time
import types
import weakref

import pytest
import torch

import headkit
from headkit.base import clone_model
from headkit.finetune import FineTuneResult
from headkit.keys import UserKeys
from headkit.progress import TrainingCancelled, TrainProgress
from headkit.runs import BEFORE_START, Runs, RunStopped, SavedFineTune, SavedHead, saved


def gated(release: threading.Event, events=("a", "b"), *, started: list | None = None):
    """A run's work that yields its first event, then waits for `release` (no training)."""

    def work(stop):
        if started is not None:
            started.append(True)
        yield events[0]
        release.wait(timeout=30)
        yield from events[1:]

    return work


def batches(*, seconds: float = 0.02, count: int = 10_000):
    """A run's work shaped like training: a batch report every `seconds`, polling `stop` after each, as the
    Ultralytics callbacks do; the head comes last."""

    def work(stop):
        for n in range(count):
            time.sleep(seconds)
            if stop():
                raise TrainingCancelled("training stopped on request; no head was saved")
            yield TrainProgress("batch", 1, 1, n / count)
        yield "head"

    return work


def events_of(run) -> list:
    return [event for _, event in run.follow(poll_s=0.05) if event is not None]


def test_a_run_keeps_going_without_followers_and_replays_from_the_start():
    runs, release = Runs(), threading.Event()
    run = runs.start("alice", gated(release))
    first = run.follow()
    assert next(first) == (0, "a")
    first.close()  # the page went away
    release.set()
    assert [event for _, event in run.follow()] == ["a", "b"] and run.state == "done"


def test_one_slot_the_second_run_waits_and_says_so():
    runs, release = Runs(slots=1), threading.Event()
    first = runs.start("alice", gated(release))
    opened = threading.Event()
    opened.set()
    second = runs.start("bob", gated(opened, events=("c",)))
    follower = second.follow(poll_s=0.05)
    assert next(follower) == (0, None) and second.state == "waiting" and second.ahead == 1
    release.set()
    assert [event for _, event in first.follow()] == ["a", "b"]
    assert [event for _, event in follower if event is not None] == ["c"]


def test_a_second_run_of_one_client_is_refused_and_errors_are_kept():
    runs, release = Runs(), threading.Event()
    runs.start("alice", gated(release))
    with pytest.raises(headkit.LimitExceeded, match=r"of yours waiting or running at once.*max_queued_runs_per_client"):
        runs.start("alice", gated(release))
    release.set()

    def broken(stop):
        yield "a"
        raise OSError("disk full")

    run = runs.start("carol", broken)
    assert [event for _, event in run.follow()] == ["a"]
    assert run.state == "failed" and isinstance(run.error, OSError) and run.error.__traceback__ is None
    with pytest.raises(OSError, match="disk full"):
        run.raise_error()


def test_the_line_is_bounded_for_all_clients_and_reopens():
    runs, release = Runs(limits=headkit.Limits(max_queued_runs=2)), threading.Event()
    running = runs.start("owner-0", gated(release))
    waiting = [runs.start(f"owner-{n}", gated(release)) for n in (1, 2)]
    with pytest.raises(
        headkit.LimitExceeded, match=r"all users together.*: 3 is over the limit of 2 \(max_queued_runs\)"
    ):
        runs.start("owner-3", gated(release))
    assert runs.stop("owner-2")  # one leaves the line: there is room again
    late = runs.start("owner-3", gated(release))
    release.set()
    assert all(events_of(run) == ["a", "b"] for run in (running, waiting[0], late))


def test_a_run_stops_at_its_time_limit_and_frees_the_slot():
    runs = Runs(limits=headkit.Limits(max_train_s=0.3))
    endless = runs.start("mallory", batches())
    opened = threading.Event()
    opened.set()
    after = runs.start("bob", gated(opened))
    started = time.monotonic()
    with pytest.raises(
        RunStopped, match=r"stopped at the time limit of 0.3 s of training .*max_train_s.*raise HEADKIT_MAX_TRAIN_S"
    ):
        for _ in events_of(endless):
            pass
        endless.raise_error()
    assert time.monotonic() - started < 5 and "head" not in endless.events  # stopped between batches, nothing saved
    assert events_of(after) == ["a", "b"] and after.state == "done"  # the next run got the slot


def test_stop_while_waiting_takes_the_run_out_of_the_line_before_it_trains():
    runs, release, ran = Runs(), threading.Event(), []
    first = runs.start("alice", gated(release))
    second = runs.start("bob", gated(release, started=ran))
    third = runs.start("carol", gated(release))
    assert second.state == "waiting" and third.ahead == 2
    assert runs.stop("bob") == ["waiting"] and runs.stop("nobody") == []
    assert second.state == "failed" and third.ahead == 1
    with pytest.raises(RunStopped, match=BEFORE_START):
        events_of(second)
        second.raise_error()
    release.set()
    assert events_of(first) == events_of(third) == ["a", "b"]
    assert not ran, "the stopped run never started"


def test_stop_while_running_ends_after_the_batch():
    runs = Runs()
    run = runs.start("alice", batches())
    follower = run.follow(poll_s=0.05)
    assert isinstance(next(follower)[1], TrainProgress)
    assert runs.stop("alice") == ["running"]
    with pytest.raises(TrainingCancelled, match="stopped on request"):
        list(follower)
        run.raise_error()


def test_only_the_newest_finished_runs_are_kept():
    runs, opened = Runs(limits=headkit.Limits(max_kept_runs=3)), threading.Event()
    opened.set()
    for n in range(6):
        events_of(runs.start(f"owner-{n}", gated(opened)))
    again = runs.start("owner-5", gated(opened))  # a newer run of one owner replaces its older one
    events_of(again)
    assert [runs.get(f"owner-{n}") is None for n in range(6)] == [True, True, True, False, False, False]
    assert runs.get("owner-5") is again and len(runs._runs) == 3


def test_batch_progress_is_not_piled_up():
    runs = Runs()
    run = runs.start("alice", batches(seconds=0, count=5000))
    assert events_of(run)[-1] == "head" and len(run.events) == 1  # only the latest batch report is ever kept


def test_a_finished_run_keeps_records_only(tmp_path, base, plate_head):
    """A real head and a real fine-tuned model go through a run; what stays is paths, numbers and names."""
    job, gone = headkit.Job(tmp_path / "job"), []

    def work(stop):
        def results():
            yield TrainProgress("epoch", 1, 1, 1.0, metrics={"metrics/mAP50(B)": 0.5})
            head = headkit.Head({k: v.clone() for k, v in plate_head.tensors.items()}, dict(plate_head.metadata))
            yield headkit.TrainResult(head, {"all": {"mAP50": 0.5}}, tmp_path, seconds=3.0)
            model = clone_model(base)
            gone.extend(weakref.ref(x) for x in (head, next(iter(head.tensors.values())), model, model.model))
            yield FineTuneResult(model, 0.25, seconds=7.0)

        return saved(job, "plates", results(), finetune_next=True)

    run = Runs().start("alice", work)
    kept = events_of(run)
    assert [type(e) for e in kept] == [TrainProgress, SavedHead, SavedFineTune] and run.state == "done"
    head, finetuned = kept[1:]
    assert head.path == job.heads()["plates"] and head.names == plate_head.names and head.finetune_next
    assert finetuned.path == job.finetuned("plates") and (finetuned.map50, finetuned.seconds) == (0.25, 7.0)
    del kept, head, finetuned
    gc.collect()
    assert all(ref() is None for ref in gone), "the head's tensors and the fine-tune's model were released"
    assert not [type(x).__name__ for x in reachable(run) if isinstance(x, torch.nn.Module | torch.Tensor)]


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
