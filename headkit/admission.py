"""Who a request counts as, and how many training runs each one may hold in the server's line.

A Gradio session id is whatever a client sends, so a script can open as many sessions as it likes: counted per
session, nine sessions held nine places in the line and a real visitor was refused. Runs are counted per *client*
instead: a Hugging Face account where the server asks visitors to sign in (a public Space), else the address the
request came from (an IPv6 address by its /64 network: one home line holds a whole /64). A script that opens nine
sessions from one address holds one place.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Protocol

from .limits import Limits

ACCOUNT = "account:"
ADDRESS = "address:"
MAX_ACCOUNT_CHARS = 96  # Hugging Face user names are far shorter; a longer one is not one the Hub issued
IPV6_NETWORK = 64


class LoginRequired(PermissionError):
    """The server counts runs per Hugging Face account and the request came without a sign-in."""


class _Run(Protocol):
    @property
    def ended(self) -> bool: ...


def client_of(
    *,
    account: str | None,
    address: str | None,
    forwarded_for: str | None = None,
    require_login: bool = False,
    trust_forwarded_for: bool = False,
    oauth: bool = True,
) -> str:
    """The client a request counts as: `account:<name>` when signed in, else `address:<ip>`.

    Args:
        account: the Hugging Face user name of a signed-in visitor, None when anonymous.
        address: the peer address of the connection (uvicorn already resolves a trusted local proxy's
            X-Forwarded-For into it).
        forwarded_for: the X-Forwarded-For header; with `trust_forwarded_for` (behind a Space's proxy, whose own
            address every request shares) its last entry, the one the proxy appended, is the address. Entries
            before it are whatever the client wrote and are never used.
        require_login: refuse anonymous requests.
        oauth: sign-in is configured (the refusal says how to sign in, or how the operator turns the rule off).

    Raises:
        LoginRequired: `require_login` and no account.
    """
    if account:
        return ACCOUNT + str(account)[:MAX_ACCOUNT_CHARS]
    if require_login:
        how = (
            "sign in with Hugging Face (the button at the top of the page), then train again"
            if oauth
            else "this server has no sign-in configured: its operator sets `hf_oauth: true` in the Space's README, "
            "or HEADKIT_REQUIRE_LOGIN=0 to count runs per address instead"
        )
        raise LoginRequired(
            f"training here needs a Hugging Face sign-in, so that each person holds one place in the training line "
            f"(a script can open any number of sessions, not accounts); {how}"
        )
    if trust_forwarded_for and forwarded_for:
        address = forwarded_for.split(",")[-1].strip() or address
    return ADDRESS + _network(address or "unknown")


def _network(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address.strip()[:64])
    except ValueError:
        return address.strip()[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:203.0.113.7 is that IPv4 address
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/{IPV6_NETWORK}", strict=False))
    return str(ip)


def describe(client: str) -> str:
    """How a refusal names the client: "Hugging Face account alice", "address 203.0.113.7"."""
    if client.startswith(ACCOUNT):
        return f"Hugging Face account {client.removeprefix(ACCOUNT)}"
    return f"address {client.removeprefix(ADDRESS)}"


class RunsPerClient:
    """Places in the training line by client: runs not yet ended, plus requests still preparing one (unpacking
    their dataset), at most `max_queued_runs_per_client` each. Only clients holding a place are remembered, so the
    map is as small as the line."""

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._runs: dict[str, list[_Run]] = {}
        self._preparing: Counter[str] = Counter()
        self._lock = threading.Lock()

    def held(self, client: str) -> int:
        with self._lock:
            self._sweep()
            return self._preparing[client] + len(self._runs.get(client, []))

    def __len__(self) -> int:
        """Clients holding a place now."""
        with self._lock:
            self._sweep()
            return len(set(self._runs) | set(self._preparing))

    @contextlib.contextmanager
    def place(self, client: str) -> Iterator[Callable[[_Run], None]]:
        """Hold a place for `client` while a run is prepared; call what it yields with the started run, which then
        holds the place until it ends. Leaving without a run gives the place back.

        Raises:
            LimitExceeded: the client already holds `max_queued_runs_per_client` places.
        """
        with self._lock:
            self._sweep()
            held = self._preparing[client] + len(self._runs.get(client, []))
            self.limits.check(
                "max_queued_runs_per_client",
                held + 1,
                f"training runs of yours ({describe(client)}, however many sessions) waiting or running at once "
                "(stop yours or wait for it to end first)",
            )
            self._preparing[client] += 1
        started: list[_Run] = []
        try:
            yield started.append
        finally:
            with self._lock:
                self._preparing[client] -= 1
                if self._preparing[client] <= 0:
                    del self._preparing[client]
                if started:
                    self._runs.setdefault(client, []).extend(started)

    def _sweep(self) -> None:
        for client in list(self._runs):
            self._runs[client] = [run for run in self._runs[client] if not run.ended]
            if not self._runs[client]:
                del self._runs[client]
