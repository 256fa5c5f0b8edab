"""A small Hugging Face Hub stand-in for tests: real HTTP on 127.0.0.1, repos held in memory.

It speaks the part of the Hub protocol that ``huggingface_hub`` (1.x and 2.x) uses to mirror a repo
over plain HTTP, so tests drive the real client through ``HF_ENDPOINT``:

* ``GET /api/{models|datasets}/{org}/{name}[/revision/{rev}]``: ``id``, ``sha`` (40 hex),
  ``gated``, ``private`` and ``siblings``.
* ``GET /api/{models|datasets}/{org}/{name}/tree/{rev}[/{path}]?recursive=&cursor=``: file entries
  with ``oid`` (git blob id), ``size`` and, for LFS-like files, ``lfs.oid`` (sha256); directory
  entries; pages of :attr:`FakeHub.page_size` linked by ``Link: <...>; rel="next"``.
* ``HEAD``/``GET /[datasets/]{org}/{name}/resolve/{rev}/{path}``: ``X-Repo-Commit``, ``ETag``
  (sha256 for LFS-like files, git blob id otherwise), ``Content-Length``, ``Range`` (206).
* Errors as the Hub sends them: 404 with ``X-Error-Code: RepoNotFound | RevisionNotFound |
  EntryNotFound``; a gated repo's files answer 401 without ``Authorization`` and 403 with a token
  that was not granted access, both with ``X-Error-Code: GatedRepo``. As on the Hub, a gated repo's
  metadata and tree stay public.

It never sends Xet headers (``X-Xet-Hash``, ``xetHash``), so clients always download over HTTP.

Fault injection (:meth:`FakeHub.drop_connection`, :meth:`FakeHub.fail_file`) and per-route request
counts (:meth:`FakeHub.count`) let tests check resume and "nothing downloaded twice".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

LFS_SUFFIXES = (".zst", ".gz", ".parquet", ".safetensors", ".bin")

_REPO = r"(?P<repo>[^/]+/[^/]+)"
_API_INFO = re.compile(rf"^/api/(?P<kind>models|datasets)/{_REPO}(?:/revision/(?P<rev>[^/]+))?/?$")
_API_TREE = re.compile(rf"^/api/(?P<kind>models|datasets)/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RESOLVE = re.compile(rf"^/(?:(?P<kind>datasets)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def git_blob_id(content: bytes) -> str:
    """The git object id of a blob with this content, as the Hub reports it in ``oid``."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass(frozen=True)
class HubFile:
    """One file of a repo; LFS-like files are identified by sha256, others by their git blob id."""

    path: str
    content: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else git_blob_id(self.content)

    def tree_entry(self) -> dict:
        if not self.lfs:
            return {"type": "file", "path": self.path, "size": len(self.content), "oid": git_blob_id(self.content)}
        pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
                   f"size {len(self.content)}\n").encode()
        return {"type": "file", "path": self.path, "size": len(self.content), "oid": git_blob_id(pointer),
                "lfs": {"oid": self.sha256, "size": len(self.content), "pointerSize": len(pointer)}}


@dataclass
class HubRepo:
    """A repo with a single commit that ``main`` points to."""

    repo_id: str
    repo_type: str
    files: dict[str, HubFile]
    gated: bool = False
    granted_tokens: frozenset[str] = frozenset()
    commit: str = field(init=False)

    def __post_init__(self) -> None:
        digest = hashlib.sha1()
        for path in sorted(self.files):
            digest.update(f"{path}\0{self.files[path].etag}\n".encode())
        self.commit = digest.hexdigest()

    def resolve(self, rev: str) -> str | None:
        return self.commit if rev in ("main", self.commit) else None


@dataclass
class _Fault:
    """Misbehaviour for GETs of one file: drop the socket after ``after_bytes``, or answer ``status``."""

    times: int | None  # None: every time
    after_bytes: int | None = None
    status: int | None = None


@dataclass(frozen=True)
class Request:
    method: str
    route: str  # "info", "tree", "resolve" or "other"
    repo_id: str | None
    path: str | None
    status: int
    range: str | None


class FakeHub:
    """The server: :meth:`start` it (or ``with FakeHub() as hub``), then point ``HF_ENDPOINT`` at :attr:`url`."""

    def __init__(self, page_size: int = 1000) -> None:
        self.page_size = page_size
        self.repos: dict[tuple[str, str], HubRepo] = {}
        self.requests: list[Request] = []
        self._faults: dict[tuple[str, str], _Fault] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- repos ---------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, repo_type: str = "dataset", gated: bool = False,
                 granted_tokens: tuple[str, ...] = ()) -> HubRepo:
        """Serve ``files`` (path -> content) as ``repo_id``; paths ending in an LFS suffix get an LFS sha256."""
        repo = HubRepo(repo_id, repo_type,
                       {p: HubFile(p, c, lfs=p.endswith(LFS_SUFFIXES)) for p, c in files.items()},
                       gated=gated, granted_tokens=frozenset(granted_tokens))
        self.repos[(repo_type, repo_id)] = repo
        return repo

    # -- faults and counters -------------------------------------------------------------------

    def drop_connection(self, repo_id: str, path: str, after_bytes: int, times: int | None = 1) -> None:
        """Close the socket after sending ``after_bytes`` of the body of the next ``times`` GETs of ``path``."""
        with self._lock:
            self._faults[(repo_id, path)] = _Fault(times=times, after_bytes=after_bytes)

    def fail_file(self, repo_id: str, path: str, status: int = 500, times: int | None = None) -> None:
        """Answer GETs of ``path`` with ``status`` (every time unless ``times`` is given)."""
        with self._lock:
            self._faults[(repo_id, path)] = _Fault(times=times, status=status)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def reset_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def count(self, method: str | None = None, route: str | None = None, path: str | None = None,
              status: int | None = None) -> int:
        """Number of requests seen that match every given criterion."""
        with self._lock:
            return sum(1 for r in self.requests
                       if (method is None or r.method == method) and (route is None or r.route == route)
                       and (path is None or r.path == path) and (status is None or r.status == status))

    def counts(self) -> Counter[tuple[str, str]]:
        with self._lock:
            return Counter((r.method, r.route) for r in self.requests)

    def _record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def _take_fault(self, repo_id: str, path: str) -> _Fault | None:
        with self._lock:
            fault = self._faults.get((repo_id, path))
            if fault is None:
                return None
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self._faults[(repo_id, path)]
            return fault

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "FakeHub is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)  # port 0: the OS picks a free one
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    hub: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects; every answer has a Content-Length
    disable_nagle_algorithm = True  # headers and body are separate writes: without this each answer waits ~40 ms

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass  # tests read FakeHub.requests instead

    def do_GET(self) -> None:
        self._dispatch(send_body=True)

    def do_HEAD(self) -> None:
        self._dispatch(send_body=False)

    # -- routing -------------------------------------------------------------------------------

    def _dispatch(self, send_body: bool) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if m := _RESOLVE.match(url.path):
            kind = "dataset" if m["kind"] else "model"
            self._resolve(kind, m["repo"], unquote(m["rev"]), unquote(m["path"]), send_body)
        elif send_body and (m := _API_TREE.match(url.path)):
            self._tree(m["kind"][:-1], m["repo"], unquote(m["rev"]), unquote(m["path"] or "").strip("/"), query)
        elif send_body and (m := _API_INFO.match(url.path)):
            self._info(m["kind"][:-1], m["repo"], unquote(m["rev"] or "main"))
        else:
            self._error(404, "other", None, None, "NotFound", f"no route for {self.command} {url.path}")

    def _repo_or_error(self, kind: str, repo_id: str, route: str, path: str | None) -> HubRepo | None:
        repo = self.hub.repos.get((kind, repo_id))
        if repo is None:
            self._error(404, route, repo_id, path, "RepoNotFound", "Repository not found")
        return repo

    def _commit_or_error(self, repo: HubRepo, rev: str, route: str, path: str | None) -> str | None:
        commit = repo.resolve(rev)
        if commit is None:
            self._error(404, route, repo.repo_id, path, "RevisionNotFound", f"Invalid rev id: {rev}")
        return commit

    # -- routes --------------------------------------------------------------------------------

    def _info(self, kind: str, repo_id: str, rev: str) -> None:
        repo = self._repo_or_error(kind, repo_id, "info", None)
        if repo is None or (commit := self._commit_or_error(repo, rev, "info", None)) is None:
            return
        self._json(200, "info", repo_id, None, {
            "_id": repo.commit[:24], "id": repo.repo_id, "sha": commit, "private": False,
            "gated": "manual" if repo.gated else False, "disabled": False, "tags": [],
            "siblings": [{"rfilename": p} for p in sorted(repo.files)],
        })

    def _tree(self, kind: str, repo_id: str, rev: str, folder: str, query: dict[str, list[str]]) -> None:
        repo = self._repo_or_error(kind, repo_id, "tree", folder)
        if repo is None or (commit := self._commit_or_error(repo, rev, "tree", folder)) is None:
            return
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries = _tree_entries(repo, folder, recursive)
        if entries is None:
            self._error(404, "tree", repo_id, folder, "EntryNotFound", f"{folder} does not exist at {commit}")
            return
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start:start + self.hub.page_size]
        headers = {}
        if start + self.hub.page_size < len(entries):
            # The Hub's cursor is opaque to clients; an offset is enough here.
            next_query = f"recursive={str(recursive).lower()}&expand=false&cursor={start + self.hub.page_size}"
            tree_url = f"{self.hub.url}/api/{kind}s/{repo_id}/tree/{quote(rev, safe='')}"
            if folder:
                tree_url += "/" + quote(folder, safe="")
            headers["Link"] = f'<{tree_url}?{next_query}>; rel="next"'
        self._json(200, "tree", repo_id, folder, page, headers)

    def _resolve(self, kind: str, repo_id: str, rev: str, path: str, send_body: bool) -> None:
        repo = self._repo_or_error(kind, repo_id, "resolve", path)
        if repo is None or (commit := self._commit_or_error(repo, rev, "resolve", path)) is None:
            return
        if repo.gated and not self._authorized(repo, path):
            return
        hub_file = repo.files.get(path)
        if hub_file is None:
            self._error(404, "resolve", repo_id, path, "EntryNotFound", f"{path} does not exist at {commit}")
            return
        fault = self.hub._take_fault(repo_id, path) if send_body else None
        if fault is not None and fault.status is not None:
            self._error(fault.status, "resolve", repo_id, path, None, "injected failure")
            return
        self._send_file(repo, commit, hub_file, send_body, fault)

    def _authorized(self, repo: HubRepo, path: str) -> bool:
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            self._error(401, "resolve", repo.repo_id, path, "GatedRepo",
                        f"Access to {repo.repo_type} {repo.repo_id} is restricted. You must have access to it "
                        "and be authenticated to access it. Please log in.")
            return False
        if auth.removeprefix("Bearer ") not in repo.granted_tokens:
            self._error(403, "resolve", repo.repo_id, path, "GatedRepo",
                        f"Access to {repo.repo_type} {repo.repo_id} is restricted and you are not in the "
                        "authorized list.")
            return False
        return True

    # -- responses -----------------------------------------------------------------------------

    def _send_file(self, repo: HubRepo, commit: str, hub_file: HubFile, send_body: bool,
                   fault: _Fault | None) -> None:
        content = hub_file.content
        size = len(content)
        start, end = 0, size - 1
        range_header = self.headers.get("Range")
        status = 200
        if range_header and send_body:
            m = _RANGE.match(range_header.strip())
            if m is None or int(m[1]) >= size:
                self._error(416, "resolve", repo.repo_id, hub_file.path, None, f"bad range {range_header}")
                return
            start, end, status = int(m[1]), min(int(m[2] or size - 1), size - 1), 206
        body = content[start:end + 1]
        self.hub._record(Request(self.command, "resolve", repo.repo_id, hub_file.path, status, range_header))
        self.send_response(status)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{hub_file.etag}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not send_body:
            return
        if fault is not None and fault.after_bytes is not None:
            self._send_then_drop(body[:fault.after_bytes])
            return
        self.wfile.write(body)

    def _send_then_drop(self, partial: bytes) -> None:
        """Send part of a body, then close the socket: the client sees a body shorter than announced."""
        self.wfile.write(partial)
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client may already be gone
            self.connection.shutdown(socket.SHUT_RDWR)

    def _json(self, status: int, route: str, repo_id: str | None, path: str | None, payload: object,
              headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        self.hub._record(Request(self.command, route, repo_id, path, status, None))
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, route: str, repo_id: str | None, path: str | None, code: str | None,
               message: str) -> None:
        headers = {"X-Error-Message": message}
        if code is not None:
            headers["X-Error-Code"] = code
        self._json(status, route, repo_id, path, {"error": message}, headers)


def _tree_entries(repo: HubRepo, folder: str, recursive: bool) -> list[dict] | None:
    """Entries below ``folder`` (files and directories), or None when ``folder`` is not a directory."""
    prefix = f"{folder}/" if folder else ""
    below = sorted(p for p in repo.files if p.startswith(prefix))
    if folder and not below:
        return None
    entries: dict[str, dict] = {}
    for path in below:
        rest = path[len(prefix):].split("/")
        depth = len(rest) if recursive else 1
        for i in range(1, min(depth, len(rest) - 1) + 1):  # directories on the way to the file
            dir_path = prefix + "/".join(rest[:i])
            entries.setdefault(dir_path, {"type": "directory", "path": dir_path,
                                          "oid": hashlib.sha1(dir_path.encode()).hexdigest()})
        if recursive or len(rest) == 1:
            entries[path] = repo.files[path].tree_entry()
    return [entries[p] for p in sorted(entries)]
