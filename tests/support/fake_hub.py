"""A stand-in for the Hugging Face Hub on 127.0.0.1, for offline tests (stdlib only).

The test machine cannot reach huggingface.co, but ``models prepare --hf-repo REPO --revision REV``
downloads a pinned repo with ``huggingface_hub``. ``FakeHub`` serves one local folder as one model
repository, with the endpoints and headers huggingface_hub 2.4.0 relies on:

* ``GET /api/models/{repo}[/revision/{rev}]``: model info (``sha``, ``siblings``) -- ``model_info``,
  and ``snapshot_download`` when the revision is a branch or tag;
* ``GET /api/models/{repo}/tree/{rev}[/{path}]``: file listing -- ``snapshot_download``,
  ``list_repo_files``, ``list_repo_tree``;
* ``GET /api/models/{repo}/refs``: branches and tags -- ``list_repo_refs``;
* ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: the file, with ``X-Repo-Commit``, ``ETag`` (git
  blob id), ``Content-Length`` and ``Accept-Ranges``; ``Range`` requests get ``206``. Files of at
  least ``lfs_min_size`` bytes are served like LFS files on the real Hub: ``302`` with
  ``X-Linked-Etag`` (sha256), ``X-Linked-Size`` and a ``Location`` on a second port standing in for
  the CDN (another origin, so huggingface_hub does not follow the redirect on ``HEAD`` nor forward
  credentials).

No Xet headers are ever sent, so huggingface_hub uses plain HTTP even with ``hf_xet`` installed, and
no authentication is required. Unknown repos answer ``404`` with ``X-Error-Code: RepoNotFound``,
unknown revisions ``404`` with ``RevisionNotFound``, missing files ``404`` with ``EntryNotFound`` --
the headers huggingface_hub maps to ``RepositoryNotFoundError``, ``RevisionNotFoundError`` and
``RemoteEntryNotFoundError``.

For download-interruption tests, ``bytes_per_second`` throttles file bodies and
``interrupt_after_bytes`` cuts the first transfer of every larger file after that many bytes (the
connection is closed mid-body, as a flaky network would). Every request is recorded in
``FakeHub.requests`` and file bytes actually sent in ``FakeHub.bytes_sent``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import NamedTuple
from urllib.parse import parse_qs, quote, unquote, urlsplit

__all__ = ["FakeHub", "HubRequest", "RepoFile", "compute_commit", "scan_repo", "serve_repo"]

_CHUNK = 64 * 1024
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
_RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")
_RESOLVE_RE = re.compile(r"/(?:(datasets|spaces|kernels)/)?(.+?)/resolve/([^/]+)/(.+)")
_TIMESTAMP = "2024-01-01T00:00:00.000Z"


class HubRequest(NamedTuple):
    """One request the fake hub answered (``path`` is the raw URL path, without the query)."""

    method: str
    path: str
    range: str | None
    status: int
    file: str | None
    """Repo path of the file the request was about (resolve and CDN requests), else ``None``."""
    authorized: bool
    """Whether an ``Authorization`` header was sent."""


@dataclass(frozen=True)
class RepoFile:
    """A file of the served repository."""

    path: str
    disk_path: Path
    size: int
    sha256: str
    blob_oid: str
    """Git blob id of the content (what the Hub sends as ``ETag`` for non-LFS files)."""
    lfs: bool
    pointer_oid: str
    """Git blob id of the LFS pointer (the tree ``oid`` of an LFS file)."""
    pointer_size: int

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_oid

    def tree_entry(self) -> dict[str, object]:
        entry: dict[str, object] = {
            "type": "file",
            "oid": self.pointer_oid if self.lfs else self.blob_oid,
            "size": self.size,
            "path": self.path,
        }
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": self.pointer_size}
        return entry

    def sibling(self) -> dict[str, object]:
        entry: dict[str, object] = {"rfilename": self.path, "size": self.size}
        entry["blobId"] = self.pointer_oid if self.lfs else self.blob_oid
        if self.lfs:
            entry["lfs"] = {
                "sha256": self.sha256,
                "size": self.size,
                "pointerSize": self.pointer_size,
            }
        return entry


def _git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _hash_file(path: Path) -> tuple[int, str, str]:
    """Return (size, sha256, git blob id) of a file, streaming it."""
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(b"blob %d\0" % size)
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            sha256.update(chunk)
            blob.update(chunk)
    return size, sha256.hexdigest(), blob.hexdigest()


def scan_repo(files_dir: Path, *, lfs_min_size: int | None = None) -> dict[str, RepoFile]:
    """Describe every regular file under ``files_dir`` (``.git`` excluded), keyed by repo path."""
    files: dict[str, RepoFile] = {}
    for disk_path in sorted(files_dir.rglob("*")):
        rel = disk_path.relative_to(files_dir)
        if not disk_path.is_file() or ".git" in rel.parts:
            continue
        size, sha256, blob_oid = _hash_file(disk_path)
        pointer = (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
        ).encode()
        files[rel.as_posix()] = RepoFile(
            path=rel.as_posix(),
            disk_path=disk_path,
            size=size,
            sha256=sha256,
            blob_oid=blob_oid,
            lfs=lfs_min_size is not None and size >= lfs_min_size,
            pointer_oid=_git_blob_oid(pointer),
            pointer_size=len(pointer),
        )
    return files


def _commit_of(files: Mapping[str, RepoFile]) -> str:
    listing = "".join(f"{f.path}\0{f.blob_oid}\n" for f in sorted(files.values(), key=_path_key))
    return hashlib.sha1(listing.encode()).hexdigest()


def _path_key(f: RepoFile) -> str:
    return f.path


def compute_commit(files_dir: Path) -> str:
    """The deterministic commit id ``FakeHub`` gives ``files_dir`` when no ``commit`` is passed."""
    return _commit_of(scan_repo(files_dir))


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """Return the inclusive (start, end) of a single byte range; ``None`` if unsatisfiable.

    Raises ``ValueError`` for a header this server does not understand (the whole file is sent).
    """
    match = _RANGE_RE.fullmatch(header.strip())
    if match is None or match.group(1) == match.group(2) == "":
        raise ValueError(header)
    first, last = match.group(1), match.group(2)
    if first == "":  # suffix range: the last N bytes
        length = int(last)
        return (max(size - length, 0), size - 1) if length > 0 and size > 0 else None
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    return (start, end) if start < size and start <= end else None


class FakeHub:
    """Serve ``files_dir`` as the model repo ``repo_id`` at ``self.endpoint`` (a context manager).

    ``commit`` (40 hex) defaults to a hash of the files. ``branches`` / ``tags`` map ref names to
    commit ids and default to ``{"main": commit}`` / ``{}``; every known commit serves the same
    files (point a branch at another commit to simulate a branch that has moved on).
    """

    def __init__(
        self,
        files_dir: Path,
        repo_id: str,
        *,
        branches: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        commit: str | None = None,
        bytes_per_second: int | None = None,
        lfs_min_size: int | None = None,
        interrupt_after_bytes: int | None = None,
    ) -> None:
        self.repo_id = repo_id
        self.files: dict[str, RepoFile] = scan_repo(files_dir, lfs_min_size=lfs_min_size)
        self.commit = commit if commit is not None else _commit_of(self.files)
        self.branches: dict[str, str] = (
            dict(branches) if branches is not None else {"main": self.commit}
        )
        self.tags: dict[str, str] = dict(tags) if tags is not None else {}
        for sha in (self.commit, *self.branches.values(), *self.tags.values()):
            if not _COMMIT_RE.fullmatch(sha):
                raise ValueError(f"not a 40-hex commit id: {sha!r}")
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("bytes_per_second must be positive")
        self.bytes_per_second = bytes_per_second
        self.interrupt_after_bytes = interrupt_after_bytes
        self.requests: list[HubRequest] = []
        self.bytes_sent: dict[str, int] = {}
        self._interrupted: set[str] = set()
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        self._endpoint: str | None = None
        self._cdn_endpoint: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` -- pass it as ``endpoint=`` to huggingface_hub."""
        if self._endpoint is None:
            raise RuntimeError("FakeHub is not running")
        return self._endpoint

    @property
    def cdn_endpoint(self) -> str:
        """Origin that serves LFS files (what the Hub's ``302`` points to)."""
        if self._cdn_endpoint is None:
            raise RuntimeError("FakeHub is not running")
        return self._cdn_endpoint

    def start(self) -> str:
        if self._endpoint is not None:
            return self._endpoint
        for role in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self, role))
            server.daemon_threads = True
            thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"fake-hub-{role}",
                daemon=True,
            )
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
            url = f"http://127.0.0.1:{server.server_address[1]}"
            if role == "hub":
                self._endpoint = url
            else:
                self._cdn_endpoint = url
        return self.endpoint

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()
        self._endpoint = self._cdn_endpoint = None

    def __enter__(self) -> FakeHub:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- queries for tests -------------------------------------------------------------------

    def resolve(self, revision: str) -> str | None:
        """Commit id a revision (branch, tag, ``refs/...`` or full commit id) points to."""
        name = revision
        for prefix in ("refs/heads/", "refs/tags/"):
            if revision.startswith(prefix):
                name = revision[len(prefix) :]
        if name in self.branches and not revision.startswith("refs/tags/"):
            return self.branches[name]
        if name in self.tags and not revision.startswith("refs/heads/"):
            return self.tags[name]
        known = {self.commit, *self.branches.values(), *self.tags.values()}
        return revision if revision in known else None

    def file_requests(self, path: str, method: str | None = None) -> list[HubRequest]:
        """Recorded requests (hub and CDN) for one repo file, optionally of one method."""
        with self._lock:
            return [
                r
                for r in self.requests
                if r.file == path and (method is None or r.method == method)
            ]

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bytes_sent.clear()

    # -- used by the handler -----------------------------------------------------------------

    def _record(self, request: HubRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _count_sent(self, path: str, n: int) -> None:
        with self._lock:
            self.bytes_sent[path] = self.bytes_sent.get(path, 0) + n

    def _take_interruption(self, path: str, length: int) -> int | None:
        """Bytes to send before cutting this transfer, or ``None`` to send it all."""
        limit = self.interrupt_after_bytes
        if limit is None or length <= limit:
            return None
        with self._lock:
            if path in self._interrupted:
                return None
            self._interrupted.add(path)
        return limit

    def _model_info(self, sha: str, *, blobs: bool) -> dict[str, object]:
        author = self.repo_id.split("/")[0] if "/" in self.repo_id else None
        siblings = [f.sibling() if blobs else {"rfilename": f.path} for f in self.files.values()]
        return {
            "_id": hashlib.sha1(self.repo_id.encode()).hexdigest()[:24],
            "id": self.repo_id,
            "modelId": self.repo_id,
            "author": author,
            "sha": sha,
            "lastModified": _TIMESTAMP,
            "createdAt": _TIMESTAMP,
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "library_name": None,
            "siblings": siblings,
            "spaces": [],
            "usedStorage": sum(f.size for f in self.files.values()),
        }

    def _tree(self, path_in_repo: str, *, recursive: bool) -> list[dict[str, object]] | None:
        prefix = f"{path_in_repo.strip('/')}/" if path_in_repo.strip("/") else ""
        entries: dict[str, dict[str, object]] = {}
        for f in self.files.values():
            if not f.path.startswith(prefix):
                continue
            parts = f.path[len(prefix) :].split("/")
            depth = len(parts) if recursive else 1
            for i in range(1, min(depth, len(parts) - 1) + 1):
                folder = prefix + "/".join(parts[:i])
                entries.setdefault(
                    folder,
                    {
                        "type": "directory",
                        "oid": hashlib.sha1(f"tree {folder}".encode()).hexdigest(),
                        "size": 0,
                        "path": folder,
                    },
                )
            if recursive or len(parts) == 1:
                entries[f.path] = f.tree_entry()
        if prefix and not entries:
            return None
        return [entries[k] for k in sorted(entries)]

    def _refs(self) -> dict[str, object]:
        def ref(kind: str, name: str, sha: str) -> dict[str, str]:
            return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": sha}

        return {
            "branches": [ref("heads", n, s) for n, s in self.branches.items()],
            "converts": [],
            "tags": [ref("tags", n, s) for n, s in self.tags.items()],
            "pullRequests": [],
        }


def _make_handler(hub: FakeHub, role: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 30  # idle keep-alive connections are dropped after this

        def do_GET(self) -> None:
            self._dispatch()

        def do_HEAD(self) -> None:
            self._dispatch()

        def log_message(self, format: str, *args: object) -> None:
            pass

        # -- plumbing --------------------------------------------------------------------

        def _dispatch(self) -> None:
            self._file: str | None = None
            url = urlsplit(self.path)
            try:
                if role == "cdn":
                    self._cdn(url.path)
                elif url.path.startswith("/api/"):
                    self._api(url.path, parse_qs(url.query))
                else:
                    self._resolve(url.path)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def _start(self, status: int, headers: Mapping[str, str]) -> None:
            hub._record(
                HubRequest(
                    method=self.command,
                    path=urlsplit(self.path).path,
                    range=self.headers.get("Range"),
                    status=status,
                    file=self._file,
                    authorized=self.headers.get("Authorization") is not None,
                )
            )
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()

        def _send_bytes(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
            self._start(status, {**headers, "Content-Length": str(len(body))})
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, payload: object, status: int = 200) -> None:
            body = json.dumps(payload).encode()
            self._send_bytes(status, body, {"Content-Type": "application/json; charset=utf-8"})

        def _error(
            self,
            status: int,
            code: str | None,
            message: str,
            extra: Mapping[str, str] | None = None,
        ) -> None:
            headers = {"Content-Type": "application/json; charset=utf-8", **(extra or {})}
            if code is not None:
                headers["X-Error-Code"] = code
            headers["X-Error-Message"] = message
            body = json.dumps({"error": message}).encode()
            self._send_bytes(status, body, headers)

        def _repo_not_found(self) -> None:
            self._error(404, "RepoNotFound", "Repository not found")

        def _revision_not_found(self, revision: str) -> None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")

        # -- routes ----------------------------------------------------------------------

        def _api(self, path: str, query: dict[str, list[str]]) -> None:
            if path == "/api/agent-harnesses":  # fetched from HF_ENDPOINT unless telemetry is off
                self._json({"standardEnvVars": [], "harnesses": {}})
                return
            match = re.fullmatch(r"/api/(models|datasets|spaces|kernels)/(.+)", path)
            if match is None:
                self._error(404, None, "Not found")
                return
            rest = match.group(2)
            repo_prefix = hub.repo_id
            if match.group(1) != "models" or not (
                rest == repo_prefix or rest.startswith(repo_prefix + "/")
            ):
                self._repo_not_found()
                return
            sub = rest[len(repo_prefix) :]
            flag = query.get("blobs", ["false"])[0].lower() in ("1", "true")
            if sub in ("", "/"):
                self._info("main", blobs=flag)
            elif sub.startswith("/revision/"):
                self._info(unquote(sub[len("/revision/") :]), blobs=flag)
            elif sub.startswith("/tree/"):
                rev_raw, _, path_raw = sub[len("/tree/") :].partition("/")
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                self._tree(unquote(rev_raw), unquote(path_raw), recursive=recursive)
            elif sub == "/refs":
                self._json(hub._refs())
            else:
                self._error(404, None, "Not found")

        def _info(self, revision: str, *, blobs: bool) -> None:
            sha = hub.resolve(revision)
            if sha is None:
                self._revision_not_found(revision)
            else:
                self._json(hub._model_info(sha, blobs=blobs))

        def _tree(self, revision: str, path_in_repo: str, *, recursive: bool) -> None:
            if hub.resolve(revision) is None:
                self._revision_not_found(revision)
                return
            entries = hub._tree(path_in_repo, recursive=recursive)
            if entries is None:
                self._error(404, "EntryNotFound", f"{path_in_repo} does not exist on {revision}")
            else:
                self._json(entries)

        def _resolve(self, path: str) -> None:
            match = _RESOLVE_RE.fullmatch(path)
            if match is None:
                self._error(404, None, "Not found")
                return
            if match.group(1) is not None or match.group(2) != hub.repo_id:
                self._repo_not_found()
                return
            revision, filename = unquote(match.group(3)), unquote(match.group(4))
            sha = hub.resolve(revision)
            if sha is None:
                self._revision_not_found(revision)
                return
            repo_file = hub.files.get(filename)
            if repo_file is None:
                self._error(404, "EntryNotFound", "Entry not found", extra={"X-Repo-Commit": sha})
                return
            self._file = filename
            if repo_file.lfs:
                location = (
                    f"{hub.cdn_endpoint}/cdn/{repo_file.sha256}/{quote(filename)}"
                    f"?X-Amz-Expires=3600&response-content-disposition=attachment"
                )
                self._send_bytes(
                    302,
                    f"Found. Redirecting to {location}".encode(),
                    {
                        "Content-Type": "text/plain; charset=utf-8",
                        "Location": location,
                        "X-Repo-Commit": sha,
                        "ETag": f'"{repo_file.pointer_oid}"',
                        "X-Linked-Etag": f'"{repo_file.sha256}"',
                        "X-Linked-Size": str(repo_file.size),
                    },
                )
                return
            self._content(repo_file, {"X-Repo-Commit": sha})

        def _cdn(self, path: str) -> None:
            match = re.fullmatch(r"/cdn/([0-9a-f]{64})/(.+)", path)
            repo_file = hub.files.get(unquote(match.group(2))) if match else None
            if match is None or repo_file is None or repo_file.sha256 != match.group(1):
                self._send_bytes(403, b"<Error>AccessDenied</Error>", {"Content-Type": "text/xml"})
                return
            self._file = repo_file.path
            self._content(repo_file, {})

        def _content(self, repo_file: RepoFile, extra: Mapping[str, str]) -> None:
            size = repo_file.size
            headers = {
                "Content-Type": "application/octet-stream",
                "Accept-Ranges": "bytes",
                "ETag": f'"{repo_file.etag}"',
                "Content-Disposition": (
                    f"inline; filename*=UTF-8''{quote(Path(repo_file.path).name)}; "
                    f'filename="{Path(repo_file.path).name}";'
                ),
                **extra,
            }
            start, end, status = 0, size - 1, 200
            range_header = self.headers.get("Range")
            if range_header is not None:
                try:
                    span = _parse_range(range_header, size)
                except ValueError:
                    span = (0, size - 1)  # not understood: ignore it and send everything
                else:
                    if span is None:
                        self._send_bytes(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
                        return
                    status = 206
                    headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{size}"
                start, end = span
            length = max(end - start + 1, 0)
            self._start(status, {**headers, "Content-Length": str(length)})
            if self.command == "HEAD" or length == 0:
                return
            cut = hub._take_interruption(repo_file.path, length)
            to_send = length if cut is None else cut
            self._stream(repo_file, start, to_send)
            if cut is not None:
                self.close_connection = True  # body shorter than Content-Length, then EOF

        def _stream(self, repo_file: RepoFile, start: int, length: int) -> None:
            rate = hub.bytes_per_second
            chunk = _CHUNK if rate is None else max(1, min(_CHUNK, rate // 20))
            with repo_file.disk_path.open("rb") as f:
                f.seek(start)
                remaining = length
                while remaining > 0:
                    data = f.read(min(chunk, remaining))
                    if not data:
                        break
                    self.wfile.write(data)
                    hub._count_sent(repo_file.path, len(data))
                    remaining -= len(data)
                    if rate is not None:
                        time.sleep(len(data) / rate)

    return Handler


@contextmanager
def serve_repo(
    files_dir: Path,
    repo_id: str,
    *,
    branches: Mapping[str, str] | None = None,
    commit: str | None = None,
    bytes_per_second: int | None = None,
    tags: Mapping[str, str] | None = None,
    lfs_min_size: int | None = None,
    interrupt_after_bytes: int | None = None,
) -> Iterator[str]:
    """Serve ``files_dir`` as ``repo_id``; yield the endpoint URL (see ``FakeHub``)."""
    with FakeHub(
        files_dir,
        repo_id,
        branches=branches,
        commit=commit,
        bytes_per_second=bytes_per_second,
        tags=tags,
        lfs_min_size=lfs_min_size,
        interrupt_after_bytes=interrupt_after_bytes,
    ) as hub:
        yield hub.endpoint
