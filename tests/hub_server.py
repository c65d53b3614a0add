"""A Hugging Face Hub on loopback: real HTTP on 127.0.0.1 answering the endpoints huggingface_hub 2.4.0 calls.

Serves model repos from a folder (``root/<owner>/<repo>/<files>`` is branch ``main``) and accepts commits, so
downloads, revision pinning, errors and pushes run through the real client over a real socket. How to point the client
at it at call time: see ``tests/test_hub_server.py``.

Files are answered 200 with their bytes (no redirect, no Xet headers), so the client downloads over plain HTTP.
Preupload answers ``uploadMode: "regular"`` for every file, so commits carry their files inline (base64 NDJSON); LFS
and Xet uploads, pull requests and commits to branches other than ``main`` are refused (400/404). Writes need a bearer
token, any token: the hub records it. Tags, extra branches and pull-request refs (``refs/pr/N``) are made by the test
(``create_ref``, ``open_pr``) and served by ``/api/models/<repo>/refs`` and as download revisions. A repository made
private (``make_private``) answers only requests carrying its owner's token, as the Hub does (401 without a token,
404 with another).

Every request is recorded with its ``Authorization`` header (``received``), so a test asserts which credentials
reached the hub, not just that a call succeeded, and with the bytes its reply carried (``sent``). File reads honour a
``Range: bytes=a-b`` header (206 + ``Content-Range``), as the Hub's file storage does.

``GET /api/models`` lists repositories as the Hub answers ``HfApi.list_models``: ``filter`` values ANDed over each
repository's tags (its card's ``tags`` plus those the Hub derives from the card: ``library_name``, ``pipeline_tag``,
``license:<id>``, ``base_model:<repo>`` and ``base_model:<relation>:<repo>``), ``search`` (a substring of the id,
any case), ``author``, ``sort`` (``downloads``, ``likes``, ``createdAt``, ``lastModified``; descending unless
``direction=1``) and ``limit``; each item has the Hub's default fields, or ``id`` plus the ``expand`` properties
(``sha``, ``siblings``, ``cardData``, ...), plus ``cardData`` when asked (``cardData=True``), plus ``sha``,
``siblings`` and ``lastModified`` with ``full=True``. Private repositories are listed to their owner's token only.
Downloads and likes are what the test sets (``set_stats``); ``createdAt`` is when the repository first appeared.
``down`` makes every request answer that status at once (a Hub outage).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import shutil
import threading
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

logger = logging.getLogger(__name__)
_Reply = tuple[int, dict[str, str], bytes]
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = [  # (method, path pattern, handler name); first full match wins
    ("POST", re.compile(r"/api/repos/create"), "_create_repo"),
    ("POST", re.compile(r"/api/validate-yaml"), "_validate_yaml"),
    ("POST", re.compile(rf"/api/models/{_REPO}/preupload/(?P<rev>[^/]+)"), "_preupload"),
    ("POST", re.compile(rf"/api/models/{_REPO}/commit/(?P<rev>[^/]+)"), "_commit"),
    ("GET", re.compile(rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?"), "_tree"),
    ("GET", re.compile(rf"/api/models/{_REPO}/refs"), "_list_refs"),
    ("GET", re.compile(r"/api/models/?"), "_list_models"),
    ("GET", re.compile(rf"/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?"), "_model_info"),
    ("GET", re.compile(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), "_resolve"),
    ("HEAD", re.compile(rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)"), "_resolve"),
]


class Received(NamedTuple):
    """One request as the hub saw it: ``authorization`` is the raw ``Authorization`` header, None when absent."""

    method: str
    path: str
    authorization: str | None


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
        received: every request as ``Received(method, path, authorization)``, the credentials exactly as sent.
        sent: every reply as ``(method, path, Range header or None, status, bytes of its body)``.
        down: None, or the status (e.g. 503) every request is answered with, at once.

    Change served repos through ``add_file`` or commits, not in ``root`` directly: older revisions keep their bytes.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.commits: list[dict[str, Any]] = []
        self.requests: list[str] = []
        self.tokens: list[str | None] = []
        self.received: list[Received] = []
        self.sent: list[tuple[str, str, str | None, int, int]] = []
        self.down: int | None = None
        self._stats: dict[str, dict[str, int]] = {}  # repo_id -> {"downloads": n, "likes": n}
        self._created: dict[str, str] = {}  # repo_id -> ISO time it first appeared
        self.slow: dict[str, float] = {}  # repo_id -> seconds every request for it waits (a slow or stalled Hub)
        self._private: dict[str, str] = {}  # repo_id -> the only token that may read or write it
        self._refs: dict[str, dict[str, str]] = {}  # repo_id -> full ref (refs/tags/v1, refs/pr/1) -> commit sha
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

    def set_stats(self, repo_id: str, *, downloads: int = 0, likes: int = 0) -> None:
        """The download and like counts the hub reports for ``repo_id``."""
        with self._lock:
            self._stats[repo_id] = {"downloads": downloads, "likes": likes}

    def make_private(self, repo_id: str, token: str) -> None:
        """Let only requests bearing ``token`` (the owner's) see ``repo_id``, as for a private repository."""
        with self._lock:
            self._private[repo_id] = token

    def create_ref(self, repo_id: str, ref: str, revision: str = "main") -> str:
        """Point ``ref`` (``refs/tags/v1``, ``refs/heads/dev``, ``refs/pr/1``) at ``revision``; returns its sha."""
        with self._lock:
            sha = self._tree_at(repo_id, revision)[0]
            self._refs.setdefault(repo_id, {})[ref] = sha
            return sha

    def open_pr(self, repo_id: str, path_in_repo: str, content: bytes) -> str:
        """A stranger's pull request: ``main``'s files with ``path_in_repo`` replaced; returns ``refs/pr/<n>``.

        ``main`` does not change; the PR's commit is served at its ref and its sha, as on the Hub.
        """
        with self._lock:
            digest = hashlib.sha256(content).hexdigest()
            self._blobs[digest] = content
            tree = {**self._snapshot(repo_id)[1], path_in_repo: digest}
            sha = hashlib.sha1(json.dumps([repo_id, tree, "pr"], sort_keys=True).encode()).hexdigest()
            self._trees[repo_id][sha] = tree
            refs = self._refs.setdefault(repo_id, {})
            ref = f"refs/pr/{1 + sum(r.startswith('refs/pr/') for r in refs)}"
            refs[ref] = sha
            return ref

    def head_sha(self, repo_id: str, revision: str = "main") -> str:
        """The commit sha that ``revision`` (a branch, tag or ref) of ``repo_id`` points to now."""
        with self._lock:
            return self._tree_at(repo_id, revision)[0]

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

    def _appeared(self, repo_id: str) -> None:
        """Record when ``repo_id`` first appeared: strictly later than every earlier repository, so newest-first is
        an order even within one millisecond."""
        if repo_id in self._created:
            return
        now = datetime.now(timezone.utc).timestamp()
        last = max((datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() for t in self._created.values()),
                   default=0.0)  # fmt: skip
        stamp = datetime.fromtimestamp(max(now, last + 0.001), timezone.utc)
        self._created[repo_id] = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _write(self, repo_id: str, path_in_repo: str, content: bytes | Path) -> None:
        self._appeared(repo_id)
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
        hidden = repo_id in self._private and token != self._private[repo_id]
        if hidden or not (self.root / repo_id).is_dir():  # the Hub answers 401 without a token, 404 with one
            raise _HubError(404 if token else 401, "RepoNotFound", f"Repository {repo_id} not found")

    def _tree_at(self, repo_id: str, revision: str) -> tuple[str, dict[str, str]]:
        if revision in ("main", "refs/heads/main"):
            return self._snapshot(repo_id)
        refs = self._refs.get(repo_id, {})
        for ref in (revision, f"refs/heads/{revision}", f"refs/tags/{revision}"):
            if ref in refs:
                return refs[ref], self._trees[repo_id][refs[ref]]
        if revision in self._trees.get(repo_id, {}):
            return revision, self._trees[repo_id][revision]
        raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def _size(self, digest: str) -> int:
        blob = self._blobs[digest]
        return len(blob) if isinstance(blob, bytes) else blob.stat().st_size

    def _handle(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> _Reply:
        url = urlsplit(raw_path)
        authorization = headers.get("Authorization")
        scheme, _, credentials = (authorization or "").partition(" ")
        token = credentials.strip() or None if scheme == "Bearer" else None
        time.sleep(
            max((s for repo, s in self.slow.items() if f"/{repo}/" in url.path), default=0.0)
        )  # outside the lock
        with self._lock:
            self.requests.append(f"{method} {url.path}")
            self.tokens.append(token)
            self.received.append(Received(method, url.path, authorization))
            reply = self._route(method, url.path, url.query, token, headers, body)
            self.sent.append((method, url.path, headers.get("Range"), reply[0], len(reply[2])))
            return reply

    def _route(
        self, method: str, path: str, query: str, token: str | None, headers: Mapping[str, str], body: bytes
    ) -> _Reply:
        try:
            if self.down is not None:
                raise _HubError(self.down, "ServiceUnavailable", "the loopback hub is down")
            if "create_pr=1" in query:
                raise _HubError(400, "BadRequest", "pull requests are not supported by the loopback hub")
            for verb, pattern, name in _ROUTES:
                if verb == method and (match := pattern.fullmatch(path)):
                    args = {key: unquote(value) for key, value in match.groupdict().items() if value is not None}
                    return getattr(self, name)(token=token, body=body, query=query, headers=headers, **args)
            raise _HubError(404, "NotFound", f"no route for {method} {path}")
        except _HubError as error:
            return error.reply
        except Exception as error:  # a 400 fails the client at once; a dropped connection would be retried
            logger.exception("loopback hub failed on %s %s", method, path)
            return _HubError(400, "BadRequest", f"loopback hub failed: {error!r}").reply

    def _resolve(
        self, *, token: str | None, repo: str, rev: str, path: str, headers: Mapping[str, str], **_: Any
    ) -> _Reply:
        self._repo(repo, token)
        sha, tree = self._tree_at(repo, rev)
        if path not in tree:
            raise _HubError(404, "EntryNotFound", f"{path} does not exist on {rev}", {"X-Repo-Commit": sha})
        blob = self._blobs[tree[path]]
        content = blob if isinstance(blob, bytes) else blob.read_bytes()
        reply = {"X-Repo-Commit": sha, "ETag": f'"{tree[path]}"', "Content-Type": "application/octet-stream"}
        span = re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("Range") or "")
        if span is None:
            return 200, reply, content
        start, end = int(span[1]), min(int(span[2] or len(content) - 1), len(content) - 1)
        if start >= len(content) or end < start:
            raise _HubError(416, "RangeNotSatisfiable", f"bytes {start}-{end} of {len(content)}")
        return 206, {**reply, "Content-Range": f"bytes {start}-{end}/{len(content)}"}, content[start : end + 1]

    def _tags(self, repo_id: str, card: dict[str, Any]) -> list[str]:
        """A repository's tags as the Hub derives them from its card's front matter (a subset of the Hub's rules)."""
        tags = [str(t) for t in card.get("tags") or [] if isinstance(t, str | int | float)]
        for key in ("library_name", "pipeline_tag"):
            if isinstance(card.get(key), str):
                tags.append(card[key])
        if isinstance(card.get("license"), str):
            tags.append(f"license:{card['license']}")
        base = card.get("base_model")
        for model in [base] if isinstance(base, str) else base if isinstance(base, list) else []:
            tags.append(f"base_model:{model}")
            if isinstance(card.get("base_model_relation"), str):
                tags.append(f"base_model:{card['base_model_relation']}:{model}")
        return list(dict.fromkeys(tags))

    def _card_data(self, repo_id: str, tree: dict[str, str]) -> dict[str, Any]:
        """The README's YAML front matter on main, as the Hub parses it ({} without one)."""
        if "README.md" not in tree:
            return {}
        blob = self._blobs[tree["README.md"]]
        text = (blob if isinstance(blob, bytes) else blob.read_bytes()).decode("utf-8", "replace")
        if not text.startswith("---"):
            return {}
        front = text.split("---", 2)[1] if text.count("---") >= 2 else ""
        data = yaml.safe_load(front)
        return data if isinstance(data, dict) else {}

    def _list_models(self, *, token: str | None, query: str, **_: Any) -> _Reply:
        """``GET /api/models``: the repositories matching every ``filter`` tag, ``search`` and ``author``."""
        asked = parse_qs(query)
        one = {key: values[-1] for key, values in asked.items()}
        filters = [f for value in asked.get("filter", []) for f in value.split(",") if f]
        expand = asked.get("expand", []) + asked.get("expand[]", [])
        found = []
        repos = sorted({f"{p.parent.name}/{p.name}" for p in self.root.glob("*/*") if p.is_dir()})
        for repo_id in repos:
            if repo_id in self._private and token != self._private[repo_id]:
                continue
            if "author" in one and repo_id.split("/")[0] != one["author"]:
                continue
            if "search" in one and one["search"].lower() not in repo_id.lower():
                continue
            sha, tree = self._snapshot(repo_id)
            card = self._card_data(repo_id, tree)
            tags = self._tags(repo_id, card)
            if not all(f in tags for f in filters):
                continue
            self._appeared(repo_id)
            stats = self._stats.get(repo_id, {"downloads": 0, "likes": 0})
            every = {
                "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                "id": repo_id,
                "modelId": repo_id,
                "author": repo_id.split("/")[0],
                "sha": sha,
                "private": repo_id in self._private,
                "downloads": stats["downloads"],
                "likes": stats["likes"],
                "trendingScore": 0,
                "tags": tags,
                "pipeline_tag": card.get("pipeline_tag"),
                "library_name": card.get("library_name"),
                "createdAt": self._created[repo_id],
                "lastModified": self._created[repo_id],
                "siblings": [{"rfilename": path} for path in tree],
                "cardData": card,
            }
            if expand:
                item = {key: every[key] for key in ("_id", "id", *expand) if key in every}
            else:
                default = ("_id", "id", "likes", "trendingScore", "private", "downloads", "tags", "pipeline_tag",
                           "library_name", "createdAt", "modelId")  # fmt: skip
                item = {key: every[key] for key in default}
                if one.get("cardData", "").lower() == "true":
                    item["cardData"] = card
                if one.get("full", "").lower() == "true":
                    item |= {key: every[key] for key in ("sha", "siblings", "lastModified", "author")}
            found.append((every, item))
        if one.get("sort") in ("downloads", "likes", "createdAt", "lastModified", "trendingScore"):
            found.sort(key=lambda pair: pair[0][one["sort"]], reverse=one.get("direction", "-1") != "1")
        limit = min(int(one.get("limit") or 1000), 1000)
        return _json([item for _, item in found[:limit]])

    def _model_info(self, *, token: str | None, repo: str, rev: str = "main", **_: Any) -> _Reply:
        self._repo(repo, token)
        sha, tree = self._tree_at(repo, rev)
        siblings = [{"rfilename": path, "size": self._size(digest)} for path, digest in tree.items()]
        private = repo in self._private
        return _json({"id": repo, "modelId": repo, "sha": sha, "private": private, "siblings": siblings})

    def _list_refs(self, *, token: str | None, repo: str, query: str, **_: Any) -> _Reply:
        """Branches (``main`` and made ones), tags, and pull requests when asked (``include_prs=1``)."""
        self._repo(repo, token)
        refs = {"refs/heads/main": self._snapshot(repo)[0], **self._refs.get(repo, {})}

        def listed(prefix: str) -> list[dict[str, str]]:
            found = [(ref, sha) for ref, sha in refs.items() if ref.startswith(prefix)]
            return [{"name": ref[len(prefix) :], "ref": ref, "targetCommit": sha} for ref, sha in found]

        reply = {"branches": listed("refs/heads/"), "converts": [], "tags": listed("refs/tags/")}
        if "include_prs=1" in query:
            reply["pullRequests"] = listed("refs/pr/")
        return _json(reply)

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
        self._appeared(repo_id)
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
