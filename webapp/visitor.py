"""What a request brings: its job (the session's, or its user key's), who it counts as in the training line, its
uploads and head keys; and the one place errors leave the app, as `gr.Error` with headkit's message."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Iterable
from pathlib import Path

import gradio as gr

import headkit
from headkit import server

from . import texts
from .state import BASE_MODELS, IMPORTS, JOBS, LIMITS, OWNERS, SETTINGS, WEIGHTS_DIR

LOGGER = logging.getLogger("headkit.app")
USER_ERRORS = (ValueError, OSError, LookupError, headkit.UntrustedSourceError)


def user_errors(fn):
    """Bad input of any kind reaches the user as a gr.Error with headkit's message; the app keeps serving."""

    def translate(e: Exception) -> gr.Error:
        if isinstance(e, gr.Error):
            return e
        if not isinstance(e, USER_ERRORS):
            LOGGER.exception("unexpected error in %s", fn.__name__)
            return gr.Error(texts.UNEXPECTED.format(kind=type(e).__name__, error=e))
        return gr.Error(str(e))

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:
                raise translate(e) from e

        return stream

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise translate(e) from e

    return call


def comparer(base: str) -> headkit.Comparer:
    """The cached base with its merged variants; why it is unavailable, as the banner says it."""
    try:
        return BASE_MODELS.comparer(base)
    except server.BaseUnavailable as e:
        raise gr.Error(texts.NO_BASE.format(base=e.base, error=e.error)) from e


def job(request: gr.Request | None) -> server.Job:
    """The job of this session: its user key's, once the page or script presented one, else the session's own.

    Raises:
        ValueError: a session id no Gradio client makes (see `headkit.keys.check_session`).
    """
    session = getattr(request, "session_hash", None)
    server.check_session(session)
    return JOBS.job((OWNERS.get(session) or session) if session else None)


def roomy_job(request: gr.Request | None) -> server.Job:
    """The session's job, refused (with the limit) when its files fill its allowance, or the server's fill its."""
    work = job(request)
    work.check_disk(LIMITS)
    JOBS.check_disk(LIMITS)
    return work


def client(request: gr.Request | None, profile: gr.OAuthProfile | None) -> str:
    """Who the request counts as in the training line: its Hugging Face account when signed in, else its address
    (`headkit.server.client_of` says which, and refuses an anonymous request where sign-in is required)."""
    headers = getattr(request, "headers", None) or {}
    peer = getattr(request, "client", None)
    return server.client_of(
        account=getattr(profile, "username", None) if profile is not None else None,
        address=getattr(peer, "host", None),
        forwarded_for=headers.get("x-forwarded-for"),
        require_login=SETTINGS.require_login,
        trust_forwarded_for=SETTINGS.trust_forwarded_for,
        oauth=SETTINGS.oauth,
    )


def served(path: Path) -> str:
    return str(JOBS.serve(path))


def heads_for(keys: list[str] | None, request: gr.Request | None) -> list[headkit.Head]:
    """The chosen heads, counted before any is read: each hf:// key is a download of up to max_head_mb."""
    LIMITS.check("max_heads", len(keys or []), texts.HEADS_CHOSEN)
    return [server.load_head_key(k, shipped_dir=WEIGHTS_DIR, job=job(request)) for k in keys or []]


def finetuned_for(keys: Iterable[str] | None, request: gr.Request | None) -> Path | None:
    """The comparison fine-tune kept with the first chosen session head that has one."""
    work = job(request)
    names = [name for key in keys or [] if (name := server.session_name(key))]
    return next((path for name in names if (path := work.finetuned(name))), None)


def upload(path: str | None, suffix: str, what: str) -> Path:
    if not path:
        raise gr.Error(texts.UPLOAD_FIRST.format(what=what))
    server.refuse_pickle(path)
    if Path(path).suffix.lower() != suffix:
        raise gr.Error(texts.WRONG_SUFFIX.format(name=Path(path).name, what=what, suffix=suffix))
    return Path(path)


def import_dataset(archive: Path, work_dir: Path, **options) -> headkit.DatasetSummary:
    """`headkit.load_dataset` in one of the server's import slots (`max_concurrent_imports`), whichever endpoint
    asks: N uploads at once cost at most the slots' memory, not N imports'. What a zip will write is reserved in the
    server's disk budget before its first byte is (`max_server_mb`): ten uploads in one second cannot each take the
    last free space."""
    zip_limits = server.ZipLimits(disk=JOBS.budget(LIMITS))
    with IMPORTS:
        return headkit.load_dataset(archive, work_dir=work_dir, limits=LIMITS, zip_limits=zip_limits, **options)


def str_keys(names: dict) -> dict[str, str]:
    return {str(k): v for k, v in names.items()}
