"""A Hugging Face Hub on loopback: real HTTP on 127.0.0.1 answering the endpoints huggingface_hub 2.4.0 calls.

Serves model repos from a folder (``root/<owner>/<repo>/<files>`` is branch ``main``) and accepts commits, so
downloads, revision pinning, errors and pushes run through the real client over a real socket. How to point the client
at it at call time: see ``tests/test_hub_server.py``.

Files are answered 200 with their bytes (no redirect, no Xet headers), so the client downloads over plain HTTP.
Preupload answers ``uploadMode: "regular"`` for every file, so commits carry their files inline (base64 NDJSON); LFS
and Xet uploads, pull requests and branches other than ``main`` are refused (400/404). Writes need a bearer token, any
token: the hub records it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import shutil
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

logger = logging.getLogger(__name__)
_Reply = tuple[int, dict[str, str], bytes]
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = [  # (method, path pattern, handler name); first full match wins
    ("POST", re.compile(r"/api/repos/create"), "_create_repo"),
    ("POST", re.compile(r"/api/validate-yaml"), "_validate_yaml"),
    ("POST", re.compile(rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)"), "_preupload"),
    ("POST", re.compile(rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)"), "_commit"),
    ("GET", re.compile(rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?"), "_tree"),
    ("GET", re.compile(rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?"), "_model_info"),
    ("GET", re.compile(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), "_resolve"),
    ("HEAD", re.compile(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), "_resolve"),
]


def _json(payload: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> _Reply:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode()


class _HubError(Exception):
    """An error reply in the Hub's style: the client maps ``X-Error-Code`` to its exception types."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **body: str
    ) -> None:
        super().__init__(message)
        headers = {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})}
        self.reply = _json({"error": message, **body}, status, headers)


class LoopbackHub:
    """Hub server on ``127.0.0.1`` (free port, background thread); use as a context manager.

    Attributes:
        url: base URL to use as ``HF_ENDPOINT``.
        root: the served folder, ``root/<owner>/<repo>/<files>``.
        commits: every commit received: repo_id, revision, summary, description, files (path -> bytes), deleted,
            token, oid.
        requests: every request as ``"METHOD /path"`` (no query string), in arrival order.
        tokens: the bearer token of each request in ``requests`` (``None`` when it had none).

    Change served repos through ``add_file`` or commits, not in ``root`` directly: older revisions keep their bytes.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.commits: list[dict[str, Any]] = []
        self.requests: list[str] = []
        self.tokens: list[str | None] = []
        self._trees: dict[str, dict[str, dict[str, str]]] = {}  # repo_id -> commit sha -> {path: sha256}
        self._blobs: dict[str, Path | bytes] = {}  # sha256 -> content (a file of root, or bytes once it changed)
        self._digests: dict[tuple[Path, int, int], str] = {}  # (file, size, mtime_ns) -> sha256
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.hub = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        # a short poll interval: stopping the hub waits for the next poll
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> LoopbackHub:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def add_file(self, repo_id: str, path_in_repo: str, src: Path) -> None:
        """Put a copy of ``src`` on ``main`` of ``repo_id`` (creating the repo), as if committed there."""
        with self._lock:
            self._write(repo_id, path_in_repo, Path(src))

    def head_sha(self, repo_id: str) -> str:
        """The commit sha that ``main`` of ``repo_id`` points to now."""
        with self._lock:
            return self._snapshot(repo_id)[0]

    def _snapshot(self, repo_id: str) -> tuple[str, dict[str, str]]:
        """Commit sha and tree of ``main`` now; the same files always give the same sha."""
        folder = self.root / repo_id
        tree = {f.relative_to(folder).as_posix(): self._digest(f) for f in sorted(folder.rglob("*")) if f.is_file()}
        sha = hashlib.sha1(json.dumps([repo_id, tree], sort_keys=True).encode()).hexdigest()
        self._trees.setdefault(repo_id, {})[sha] = tree
        return sha, tree

    def _digest(self, file: Path) -> str:
        stat = file.stat()
        key = (file, stat.st_size, stat.st_mtime_ns)
        if key not in self._digests:
            self._digests[key] = hashlib.sha256(file.read_bytes()).hexdigest()
            self._blobs.setdefault(self._digests[key], file)
        return self._digests[key]

    def _file(self, repo_id: str, path_in_repo: str) -> Path:
        if ".." in Path(path_in_repo).parts or path_in_repo.startswith("/"):
            raise _HubError(400, "BadRequest", f"invalid path in repo: {path_in_repo!r}")
        return self.root / repo_id / path_in_repo

    def _detach(self, file: Path) -> None:
        """Keep content of ``file`` that older commits still serve before the file changes."""
        for digest, blob in self._blobs.items():
            if blob == file:
                self._blobs[digest] = file.read_bytes()

    def _write(self, repo_id: str, path_in_repo: str, content: bytes | Path) -> None:
        target = self._file(repo_id, path_in_repo)
        if target.exists():
            self._detach(target)
            target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
            self._blobs[hashlib.sha256(content).hexdigest()] = content
        else:
            shutil.copyfile(content, target)

    def _repo(self, repo_id: str, token: str | None) -> None:
        if not (self.root / repo_id).is_dir():  # the Hub answers 401 without a token, 404 with one
            raise _HubError(404 if token else 401, "RepoNotFound", f"Repository {repo_id} not found")

    def _tree_at(self, repo_id: str, revision: str) -> tuple[str, dict[str, str]]:
        if revision == "main":
            return self._snapshot(repo_id)
        if revision in self._trees.get(repo_id, {}):
            return revision, self._trees[repo_id][revision]
        raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def _size(self, digest: str) -> int:
        blob = self._blobs[digest]
        return len(blob) if isinstance(blob, bytes) else blob.stat().st_size

    def _handle(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> _Reply:
        url = urlsplit(raw_path)
        scheme, _, credentials = (headers.get("Authorization") or "").partition(" ")
        token = credentials.strip() or None if scheme == "Bearer" else None
        with self._lock:
            self.requests.append(f"{method} {url.path}")
            self.tokens.append(token)
            try:
                if "create_pr=1" in url.query:
                    raise _HubError(400, "BadRequest", "pull requests are not supported by the loopback hub")
                for verb, pattern, name in _ROUTES:
                    if verb == method and (match := pattern.fullmatch(url.path)):
                        args = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                        return getattr(self, name)(token=token, body=body, **args)
                raise _HubError(404, "NotFound", f"no route for {method} {url.path}")
            except _HubError as error:
                return error.reply
            except Exception as error:  # a 400 fails the client at once; a dropped connection would be retried
                logger.exception("loopback hub failed on %s %s", method, url.path)
                return _HubError(400, "BadRequest", f"loopback hub failed: {error!r}").reply

    def _resolve(self, *, token: str | None, repo: str, rev: str, path: str, **_: Any) -> _Reply:
        self._repo(repo, token)
        sha, tree = self._tree_at(repo, rev)
        if path not in tree:
            raise _HubError(404, "EntryNotFound", f"{path} does not exist on {rev}", {"X-Repo-Commit": sha})
        blob = self._blobs[tree[path]]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{tree[path]}"', "Content-Type": "application/octet-stream"}
        return 200, headers, blob if isinstance(blob, bytes) else blob.read_bytes()

    def _model_info(self, *, token: str | None, repo: str, rev: str = "main", **_: Any) -> _Reply:
        self._repo(repo, token)
        sha, tree = self._tree_at(repo, rev)
        siblings = [{"rfilename": path, "size": self._size(digest)} for path, digest in tree.items()]
        return _json({"id": repo, "modelId": repo, "sha": sha, "private": False, "siblings": siblings})

    def _tree(self, *, token: str | None, repo: str, rev: str, path: str = "", **_: Any) -> _Reply:
        """Every file under ``path`` (always the recursive listing, one page, no folder entries)."""
        self._repo(repo, token)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        tree = self._tree_at(repo, rev)[1]
        files = [path for path in tree if path.startswith(prefix)]
        return _json(
            [{"type": "file", "path": path, "size": self._size(tree[path]), "oid": tree[path]} for path in files]
        )

    def _create_repo(self, *, token: str | None, body: bytes, **_: Any) -> _Reply:
        _require_token(token)
        payload = json.loads(body)
        if not payload.get("organization") or payload.get("type", "model") != "model":
            raise _HubError(400, "BadRequest", "the loopback hub creates model repos named <owner>/<name> only")
        repo_id = f"{payload['organization']}/{payload['name']}"
        url = f"{self.url}/{repo_id}"
        if (self.root / repo_id).is_dir():
            raise _HubError(409, "RepoExists", "You already created this model repo", url=url)
        (self.root / repo_id).mkdir(parents=True)
        return _json({"url": url, "name": repo_id})

    def _validate_yaml(self, **_: Any) -> _Reply:
        return _json({"errors": [], "warnings": []})

    def _preupload(self, *, token: str | None, repo: str, rev: str, body: bytes, **_: Any) -> _Reply:
        _require_token(token)
        self._repo(repo, token)
        _require_main(rev)
        files = json.loads(body)["files"]
        return _json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})

    def _commit(self, *, token: str | None, repo: str, rev: str, body: bytes, **_: Any) -> _Reply:
        _require_token(token)
        self._repo(repo, token)
        _require_main(rev)
        header, *operations = (json.loads(line) for line in body.splitlines() if line.strip())
        if header["key"] != "header":
            raise _HubError(400, "BadRequest", "the commit payload must start with its header line")
        files: dict[str, bytes] = {}
        deleted: list[str] = []
        for operation in operations:
            key, value = operation["key"], operation["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key in ("deletedFile", "deletedFolder"):
                deleted.append(value["path"])
            else:
                raise _HubError(400, "BadRequest", f"{key} operations are not supported: only inline regular files")
        parent, (head, tree) = header["value"].get("parentCommit"), self._snapshot(repo)
        if parent not in (None, head):
            raise _HubError(412, "PreconditionFailed", f"{parent} is not the head of main ({head})")
        doomed = {path: [p for p in tree if p == path or p.startswith(path.rstrip("/") + "/")] for path in deleted}
        if missing := [path for path, matches in doomed.items() if not matches]:  # checked before anything changes
            raise _HubError(404, "EntryNotFound", f"A file with this name doesn't exist: {missing}")
        for path in {p for matches in doomed.values() for p in matches}:
            self._detach(self._file(repo, path))
            self._file(repo, path).unlink()
        for path, content in files.items():
            self._write(repo, path, content)
        sha, meta = self._snapshot(repo)[0], header["value"]
        commit = {"repo_id": repo, "revision": rev, "summary": meta["summary"], "description": meta.get("description")}
        self.commits.append({**commit, "files": files, "deleted": deleted, "token": token, "oid": sha})
        return _json({"success": True, "commitOid": sha, "commitUrl": f"{self.url}/{repo}/commit/{sha}"})


def _require_token(token: str | None) -> None:
    if token is None:
        raise _HubError(401, "Unauthorized", "Invalid credentials in Authorization header")


def _require_main(revision: str) -> None:
    if revision != "main":
        raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision} (the loopback hub has only main)")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    timeout = 10  # an idle keep-alive connection must not keep its thread forever

    def do_HEAD(self) -> None:
        self._reply("HEAD")

    def do_GET(self) -> None:
        self._reply("GET")

    def do_POST(self) -> None:
        self._reply("POST")

    def _reply(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, headers, payload = self.server.hub._handle(method, self.path, self.headers, body)  # type: ignore[attr-defined]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the hub's ``requests`` list is the log."""
