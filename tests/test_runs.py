"""Runs that outlive their followers, one training slot, and user keys that reveal nothing."""

from __future__ import annotations

import threading

import pytest

from headkit.runs import Runs, UserKeys


def gated(release: threading.Event, events=("a", "b")):
    def work():
        yield events[0]
        release.wait(timeout=30)
        yield from events[1:]

    return work


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


def test_one_unfinished_run_per_owner_and_errors_are_kept():
    runs, release = Runs(), threading.Event()
    runs.start("alice", gated(release))
    with pytest.raises(ValueError, match="a training run of yours is still going"):
        runs.start("alice", gated(release))
    release.set()

    def broken():
        yield "a"
        raise OSError("disk full")

    run = runs.start("carol", broken)
    assert [event for _, event in run.follow()] == ["a"]
    assert run.state == "failed" and isinstance(run.error, OSError)


def test_user_keys(tmp_path):
    keys = UserKeys(tmp_path / "keys")
    key = keys.issue()
    assert keys.owner(key).startswith("user:") and keys.owner(key) != keys.owner(keys.issue())
    assert all(key not in p.name for p in (tmp_path / "keys").iterdir())  # only hashes on disk
    for bad in ("", "x" * 100, key[:-1], "../../etc/passwd"):
        with pytest.raises(PermissionError, match="unknown user key: this server did not issue it"):
            keys.owner(bad)
