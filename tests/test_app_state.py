"""The state a server keeps per visitor, as `headkit.server` gives it to the app: who a request counts as, the places
each client holds in the training line, which key each session presented, and the one way Stop reaches a run inside a
ZeroGPU call. No model: gated runs stand in for training, as in test_runs.py."""

from __future__ import annotations

import threading
import time

import pytest

from headkit import LimitExceeded, Limits, server
from headkit.server import LoginRequired, RunsPerClient, SessionOwners, client_of


def test_a_client_is_an_account_when_signed_in_else_an_address():
    assert client_of(account="alice", address="127.0.0.1") == "account:alice"
    assert client_of(account=None, address="127.0.0.1") == "address:127.0.0.1"
    assert client_of(account=None, address="::ffff:203.0.113.7") == "address:203.0.113.7"
    # one home line holds a whole IPv6 /64: a script rotating addresses inside it is one client
    assert client_of(account=None, address="2001:db8:1:2::5") == client_of(account=None, address="2001:db8:1:2:ffff::9")
    assert client_of(account=None, address="2001:db8:1:2::5") == "address:2001:db8:1:2::/64"


def test_behind_a_space_proxy_the_address_is_the_one_the_proxy_appended():
    """A client writes any X-Forwarded-For it likes; the proxy appends the address it saw, last."""
    forged = "198.51.100.1, 203.0.113.7"
    assert client_of(account=None, address="10.0.0.3", forwarded_for=forged, trust_forwarded_for=True) == (
        "address:203.0.113.7"
    )
    assert client_of(account=None, address="10.0.0.3", forwarded_for=forged) == "address:10.0.0.3"  # not trusted


def test_where_sign_in_is_required_an_anonymous_request_is_refused_with_what_to_do():
    with pytest.raises(LoginRequired, match=r"needs a Hugging Face sign-in.*the button at the top of the page"):
        client_of(account=None, address="127.0.0.1", require_login=True)
    with pytest.raises(LoginRequired, match=r"no sign-in configured.*hf_oauth: true.*HEADKIT_REQUIRE_LOGIN=0"):
        client_of(account=None, address="127.0.0.1", require_login=True, oauth=False)
    assert isinstance(LoginRequired("x"), PermissionError)  # the app shows it as the visitor's error
    assert client_of(account="alice", address=None, require_login=True) == "account:alice"


def test_sign_in_is_required_on_a_space_by_default(monkeypatch):
    for name in ("SPACE_ID", "HEADKIT_REQUIRE_LOGIN", "HEADKIT_TRUST_FORWARDED_FOR"):
        monkeypatch.delenv(name, raising=False)
    assert not server.Settings.from_env().require_login
    monkeypatch.setenv("SPACE_ID", "someone/headkit")
    on_space = server.Settings.from_env()
    assert on_space.require_login and on_space.trust_forwarded_for
    monkeypatch.setenv("HEADKIT_REQUIRE_LOGIN", "0")
    assert not server.Settings.from_env().require_login


class Gated:
    """A run that ends when told to."""

    def __init__(self) -> None:
        self.ended = False


def test_a_client_holds_its_places_until_its_runs_end_however_many_sessions():
    places = RunsPerClient(Limits(max_queued_runs_per_client=1))
    run = Gated()
    with places.place("address:127.0.0.1") as hold:
        hold(run)
    for _ in range(9):  # nine sessions of one script: one client
        with pytest.raises(LimitExceeded, match=r"address 127\.0\.0\.1, however many sessions.*: 2 is over"):
            with places.place("address:127.0.0.1"):
                pass
    with places.place("address:203.0.113.7") as hold:  # another visitor
        pass
    run.ended = True
    with places.place("address:127.0.0.1"):  # its run ended: its place is free again
        assert places.held("address:127.0.0.1") == 1
    assert len(places) == 0, "clients holding nothing are forgotten"


def test_a_place_is_held_while_the_run_is_prepared_and_given_back_on_failure():
    places = RunsPerClient(Limits(max_queued_runs_per_client=1))
    with places.place("account:alice"):
        with pytest.raises(LimitExceeded):  # a second request while the first one unpacks its dataset
            with places.place("account:alice"):
                pass
    with pytest.raises(ValueError, match="bad dataset"):
        with places.place("account:alice"):
            raise ValueError("bad dataset")
    assert places.held("account:alice") == 0


def test_session_owners_are_bounded_in_count_size_and_age():
    owners = SessionOwners(max_age_s=3600, max_entries=100)
    for n in range(1000):
        owners.set(f"session-{n}", f"user:{n}")
    assert len(owners) == 100 and owners.get("session-999") == "user:999" and owners.get("session-0") is None
    with pytest.raises(ValueError, match=r"a session id of 9,961,472 characters.*at most 128"):
        owners.set("x" * (19 * 2**19), "user:huge")
    assert owners.get("x" * (19 * 2**19)) is None
    expiring = SessionOwners(max_age_s=0.05)
    expiring.set("s", "user:1")
    time.sleep(0.1)
    expiring.set("t", "user:2")  # a new entry sweeps the expired ones
    assert expiring.get("s") is None and len(expiring) == 1


def test_stop_reaches_a_run_in_a_zero_gpu_call_through_the_job_marker(tmp_path):
    """The GPU process only sees files: the run's stop() becomes the job's stop marker, even when Stop was pressed
    before the call started (perform clears old markers when it starts, so the marker is written again)."""
    job = server.Job(tmp_path / "job")
    request = server.TrainingRequest("base", "data.yaml", str(job.path), "plates", 1, 160, 4, gpu_seconds=30)
    stop = threading.Event()
    seen: list[str] = []

    def gpu_call(request):  # stands in for a spaces.GPU function streaming `streamed`'s events
        job.clear_stop()  # what perform does first
        for step in range(200):
            if job.stop_requested():
                seen.append(f"stopped at {step}")
                return
            yield step
            time.sleep(0.02)

    reported: list[int] = []
    stop.set()  # pressed while the call waited for a GPU
    server.in_gpu_call(gpu_call)(request, stop.is_set, reported.append)
    assert seen and seen[0].startswith("stopped at") and len(reported) < 200
