"""The door: requests carrying a session id no Gradio client makes are refused before Gradio's queue keeps them.

A session id is whatever a client posts. Gradio keeps it with every queued event and its pending messages, so twenty
joins with 9.5 MiB ids held +250 MiB after they were answered, whatever the handler did with them. Checked here, in
front of Gradio: the `session_hash` of a JSON body (bodies of the API's POST routes bounded too) or of the query.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

from starlette.middleware import Middleware
from starlette.responses import JSONResponse

from headkit import server

from . import texts

MAX_BODY_BYTES = 4 * 2**20  # a join's JSON: inputs and file references (files travel through /upload)
CHECKED = ("/queue/join", "/call/", "/run/", "/api/")  # the routes whose JSON bodies name a session


class SessionGuard:
    """ASGI middleware: refuses (400) a request whose session id is too long, (413) a JSON body over the bound."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        refusal = _refusal(query.get("session_hash", [None])[0])
        if refusal is None and scope["method"] == "POST" and any(route in scope["path"] for route in CHECKED):
            body, refusal = await _body(receive)
            if refusal is None:
                refusal = _refusal(_session_of(body))
            receive = _replay(body, receive)
        if refusal is not None:
            return await refusal(scope, receive, send)
        return await self.app(scope, receive, send)


MIDDLEWARE = [Middleware(SessionGuard)]


def _refusal(session) -> JSONResponse | None:
    try:
        server.check_session(session if isinstance(session, str) else None)
    except ValueError as e:
        return JSONResponse({"detail": str(e)}, status_code=400)
    return None


async def _body(receive) -> tuple[bytes, JSONResponse | None]:
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return b"", JSONResponse(
                {"detail": texts.BODY_TOO_LARGE.format(mb=MAX_BODY_BYTES // 2**20)}, status_code=413
            )
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks), None


def _session_of(body: bytes):
    try:
        data = json.loads(body) if body else None
    except ValueError:
        return None  # not JSON: Gradio answers it
    return data.get("session_hash") if isinstance(data, dict) else None


def _replay(body: bytes, then):
    """The body read here, handed on as one message; later calls (a disconnect) go to the connection again."""
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await then()

    return receive
