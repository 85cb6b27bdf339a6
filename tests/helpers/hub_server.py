"""A local stand-in for the Hugging Face Hub: serves folders as model repositories on 127.0.0.1.

It answers exactly the requests ``huggingface_hub`` (2.x, ``file_download.py`` / ``hf_api.py`` /
``utils/_http.py``) sends for model repositories:

- ``HEAD|GET /{repo_id}/resolve/{revision}/{filename}`` (``hf_hub_download``): ``X-Repo-Commit``,
  ``ETag`` (git blob sha1; the sha256 for LFS-type files, also sent as ``X-Linked-Etag`` with
  ``X-Linked-Size``), ``Content-Length``; ``Range: bytes=a-[b]`` for resumed downloads.
- ``GET /api/models/{repo_id}[/revision/{revision}]`` (``model_info`` / ``repo_info``,
  ``snapshot_download``): ``id``, ``sha``, ``siblings`` (with sizes/LFS when ``blobs=true``) and
  ``cardData`` from the README's YAML front matter.
- ``GET /api/models/{repo_id}/tree/{revision}[/{path}]`` (``list_repo_tree``, ``snapshot_download``).

and the writes of ``HfApi.create_repo`` / ``create_branch`` / ``upload_folder`` / ``create_commit``:

- ``POST /api/repos/create`` (409 when it exists, which ``exist_ok=True`` accepts), stored in a temporary
  folder of the server; ``POST /api/models/{repo_id}/branch/{branch}`` (from ``main``, 409 when it exists).
- ``POST /api/validate-yaml``: the README's front matter must parse, and a ``model-index`` must hold the fields
  the Hub reads (task type, dataset name/type, metric type/value), else 400 with the errors.
- ``POST /api/models/{repo_id}/preupload/{revision}``: upload mode per file (``lfs`` for weights, like the Hub's
  default ``.gitattributes``) and the current ``oid`` of files already there.
- The git-LFS "basic" transfer: ``POST /{repo_id}.git/info/lfs/objects/batch`` answers with an upload URL
  (no actions for objects already stored), ``PUT /lfs-upload/{sha256}`` stores the bytes after checking their
  sha256. The server speaks git-LFS, not Xet, so clients run with ``HF_HUB_DISABLE_XET=1``.
- ``POST /api/models/{repo_id}/commit/{revision}`` (NDJSON: header, ``file`` base64 content, ``lfsFile`` by
  oid, ``deletedFile``/``deletedFolder``): applied to the branch's folder all at once after every operation was
  checked; recorded in :attr:`LocalHubServer.commits`.

Errors carry the ``X-Error-Code`` the client maps to its exceptions: ``RepoNotFound`` →
``RepositoryNotFoundError``, ``RevisionNotFound`` → ``RevisionNotFoundError``, ``EntryNotFound``
(with ``X-Repo-Commit``) → ``RemoteEntryNotFoundError``, an ``EntryNotFoundError``, which timm's
``model.safetensors`` → ``pytorch_model.bin`` fallback catches.

A repository is a live view of its folder: the commit hash is derived from the folder's content,
so writing a file changes it like a push. Every request is recorded (:attr:`LocalHubServer.requests`),
so a test can show that a download happened, or that an offline call made none.

``huggingface_hub`` reads ``HF_ENDPOINT`` when imported, so clients run in a subprocess:
:meth:`LocalHubServer.run_python` / :func:`run_hub_python`.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Tuple, Union
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

PathLike = Union[str, os.PathLike]

REPO_ROOT = Path(__file__).resolve().parents[2]

# Stored through git-LFS on the Hub by default (the Hub's default .gitattributes), like weights.
LFS_SUFFIXES = (
    ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".npz", ".npy",
    ".pkl", ".tar", ".gz", ".zip", ".tflite", ".ot", ".model",
)
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub rejects larger non-LFS files; treat them as LFS

_REPO_ID = r"(?P<repo>[^/]+(?:/[^/]+)?)"
_RESOLVE_RE = re.compile(rf"^/{_REPO_ID}/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
_INFO_RE = re.compile(rf"^/api/models/{_REPO_ID}(?:/revision/(?P<rev>[^/]+))?$")
_TREE_RE = re.compile(rf"^/api/models/{_REPO_ID}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")
_PREUPLOAD_RE = re.compile(rf"^/api/models/{_REPO_ID}/preupload/(?P<rev>[^/]+)$")
_COMMIT_RE = re.compile(rf"^/api/models/{_REPO_ID}/commit/(?P<rev>[^/]+)$")
_BRANCH_RE = re.compile(rf"^/api/models/{_REPO_ID}/branch/(?P<branch>[^/]+)$")
_LFS_BATCH_RE = re.compile(rf"^/{_REPO_ID}\.git/info/lfs/objects/batch$")
_LFS_UPLOAD_RE = re.compile(r"^/lfs-upload/(?P<oid>[0-9a-f]{64})$")
_TRUE = ("1", "true", "True")


@dataclass(frozen=True)
class RequestRecord:
    """One request the server answered: method, decoded URL path, raw query and status code."""

    method: str
    path: str
    query: str
    status: int


@dataclass(frozen=True)
class CommitRecord:
    """One commit the server applied: repository, branch, summary and the paths it added or deleted."""

    repo_id: str
    revision: str
    summary: str
    paths: Tuple[str, ...]


@dataclass(frozen=True)
class RepoFile:
    """A file of a served repository, with the identifiers the Hub reports for it."""

    path: str  # POSIX path inside the repository
    local_path: Path
    size: int
    blob_id: str  # git blob sha1 (of the LFS pointer for LFS files), the Hub's ``oid``
    sha256: str
    is_lfs: bool

    @property
    def etag(self) -> str:
        """The Hub's ETag: the sha256 for LFS files, the git blob sha1 otherwise."""
        return self.sha256 if self.is_lfs else self.blob_id

    def lfs_pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()


@dataclass(frozen=True)
class RepoSnapshot:
    """The state of a repository at one revision: its commit hash and files."""

    repo_id: str
    commit: str
    files: Dict[str, RepoFile]
    last_modified: float

    def card_data(self) -> Optional[dict]:
        """The YAML front matter of README.md (the Hub's ``cardData``), if any."""
        readme = self.files.get("README.md")
        if readme is None:
            return None
        text = readme.local_path.read_text(encoding="utf-8")
        if not text.startswith("---"):
            return None
        import yaml

        front = text.split("---", 2)
        data = yaml.safe_load(front[1]) if len(front) == 3 else None
        return data if isinstance(data, dict) else None


class HubError(Exception):
    """A Hub error response: HTTP status, ``X-Error-Code`` and extra headers."""

    def __init__(self, status: int, code: str, message: str, headers: Optional[Mapping[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob with content ``data``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _is_lfs(path: str, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE


class _DigestCache:
    """(sha1-of-blob, sha256) per file, recomputed only when size or mtime change."""

    def __init__(self):
        self._lock = threading.Lock()
        self._cache: Dict[Path, Tuple[int, int, str, str]] = {}

    def digests(self, path: Path, stat: os.stat_result) -> Tuple[str, str]:
        with self._lock:
            hit = self._cache.get(path)
        if hit is not None and hit[:2] == (stat.st_size, stat.st_mtime_ns):
            return hit[2], hit[3]
        data = path.read_bytes()
        blob, sha256 = git_blob_sha1(data), hashlib.sha256(data).hexdigest()
        with self._lock:
            self._cache[path] = (stat.st_size, stat.st_mtime_ns, blob, sha256)
        return blob, sha256


class LocalHubServer:
    """Serves local folders as Hugging Face Hub model repositories on ``127.0.0.1:<free port>``.

    Usage::

        with LocalHubServer({"org/repo": folder}) as hub:
            out = hub.run_python("from huggingface_hub import hf_hub_download; ...", hf_home=tmp)
            assert hub.downloads("org/repo")
    """

    def __init__(self, repos: Optional[Mapping[str, PathLike]] = None):
        self._branches: Dict[str, Dict[str, Path]] = {}
        self._records: List[RequestRecord] = []
        self._lock = threading.Lock()
        self._digests = _DigestCache()
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._storage: Optional[Path] = None  # created repositories and LFS objects, removed by stop()
        self._private: Dict[str, bool] = {}
        self._lfs: Dict[str, Path] = {}
        self._commits: List[CommitRecord] = []
        for repo_id, folder in (repos or {}).items():
            self.add_repo(repo_id, folder)

    # ----------------------------------------------------------------------------- repositories
    def add_repo(self, repo_id: str, folder: PathLike, branch: str = "main") -> str:
        """Serve ``folder`` as branch ``branch`` of model repository ``repo_id``; returns its commit hash."""
        if not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", repo_id):
            raise ValueError(f"repo_id must look like 'org/name' (letters, digits, '-', '_', '.'), got {repo_id!r}")
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"folder to serve as {repo_id!r} does not exist or is not a directory: {folder}")
        with self._lock:
            self._branches.setdefault(repo_id, {})[branch] = folder.resolve()
        return self.snapshot(repo_id, branch).commit

    def snapshot(self, repo_id: str, revision: str = "main") -> RepoSnapshot:
        """The repository's current state at ``revision`` (a branch name or a current commit hash)."""
        with self._lock:
            branches = dict(self._branches.get(repo_id, {}))
        if not branches:
            raise HubError(404, "RepoNotFound", f"Repository not found: {repo_id}")
        if revision in branches:
            return self._scan(repo_id, branches[revision])
        for folder in branches.values():
            snap = self._scan(repo_id, folder)
            if snap.commit == revision:
                return snap
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def has_repo(self, repo_id: str) -> bool:
        with self._lock:
            return repo_id in self._branches

    def is_private(self, repo_id: str) -> bool:
        return self._private.get(repo_id, False)

    # ----------------------------------------------------------------------------- writes
    def _store(self, *parts: str) -> Path:
        with self._lock:
            if self._storage is None:
                self._storage = Path(tempfile.mkdtemp(prefix="local-hub-"))
        return self._storage.joinpath(*parts)

    def create_repo(self, repo_id: str, private: bool = False) -> str:
        """A new, empty model repository (branch ``main``) in the server's storage; 409 when it exists."""
        if self.has_repo(repo_id):
            raise HubError(409, "RepoExists", f"You already created this model repo: {repo_id}")
        folder = self._store("repos", repo_id, "main")
        folder.mkdir(parents=True)
        self._private[repo_id] = private
        return self.add_repo(repo_id, folder)

    def create_branch(self, repo_id: str, branch: str, starting_point: str = "main") -> str:
        """Branch ``branch`` with the files of ``starting_point``; 409 when it exists."""
        snap = self.snapshot(repo_id, starting_point)
        with self._lock:
            exists = branch in self._branches[repo_id]
        if exists:
            raise HubError(409, "BranchExists", f"Reference already exists: refs/heads/{branch}")
        folder = self._store("repos", repo_id, "branches", branch)
        for f in snap.files.values():
            (folder / f.path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f.local_path, folder / f.path)
        folder.mkdir(parents=True, exist_ok=True)
        return self.add_repo(repo_id, folder, branch)

    def store_lfs(self, oid: str, data: bytes) -> None:
        """Keep an uploaded LFS object; its content must hash to ``oid``."""
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, "BadRequest", f"uploaded content does not match sha256 {oid}")
        path = self._store("lfs", oid)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        with self._lock:
            self._lfs[oid] = path

    def has_lfs(self, oid: str) -> bool:
        with self._lock:
            return oid in self._lfs

    def commit(self, repo_id: str, revision: str, items: List[dict]) -> str:
        """Apply the NDJSON ``items`` of a commit to branch ``revision``; returns the new commit hash."""
        snap = self.snapshot(repo_id, revision)
        with self._lock:
            folder = self._branches[repo_id].get(revision)
        if folder is None:
            raise HubError(400, "BadRequest", f"commits go to a branch, not to {revision}")
        if not items or items[0].get("key") != "header":
            raise HubError(400, "BadRequest", "a commit starts with its header")
        writes: Dict[str, Union[bytes, Path, None]] = {}  # path -> content, LFS object, or None (delete)
        for item in items[1:]:
            key, value = item.get("key"), item.get("value", {})
            path = _safe_repo_path(value.get("path", ""))
            if key == "file":
                writes[path] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                if not self.has_lfs(value.get("oid", "")):
                    raise HubError(400, "BadRequest", f"LFS object {value.get('oid')} of {path} was not uploaded")
                writes[path] = self._lfs[value["oid"]]
            elif key == "deletedFile" and path in snap.files:
                writes[path] = None
            elif key == "deletedFolder":
                writes.update({p: None for p in snap.files if p.startswith(path.rstrip("/") + "/")})
            else:
                raise HubError(400, "BadRequest", f"cannot apply {key} {path}")
        for path, content in writes.items():
            target = folder / path
            if content is None:
                target.unlink()
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                shutil.copyfile(content, target)
            else:
                target.write_bytes(content)
        with self._lock:
            self._commits.append(CommitRecord(repo_id, revision, items[0]["value"].get("summary", ""),
                                              tuple(writes)))
        return self.snapshot(repo_id, revision).commit

    @property
    def commits(self) -> List[CommitRecord]:
        """Every commit applied so far, oldest first."""
        with self._lock:
            return list(self._commits)

    def _scan(self, repo_id: str, folder: Path) -> RepoSnapshot:
        files: Dict[str, RepoFile] = {}
        last_modified = 0.0
        for local in sorted(p for p in folder.rglob("*") if p.is_file()):
            rel = local.relative_to(folder).as_posix()
            if rel.startswith(".git/") or rel == ".git":
                continue
            st = local.stat()
            blob, sha256 = self._digests.digests(local, st)
            is_lfs = _is_lfs(rel, st.st_size)
            entry = RepoFile(rel, local, st.st_size, blob, sha256, is_lfs)
            if is_lfs:
                entry = RepoFile(rel, local, st.st_size, git_blob_sha1(entry.lfs_pointer()), sha256, True)
            files[rel] = entry
            last_modified = max(last_modified, st.st_mtime)
        tree = "".join(f"{f.path}\0{f.blob_id}\n" for f in files.values())
        commit = hashlib.sha1(f"{repo_id}\n{tree}".encode()).hexdigest()
        return RepoSnapshot(repo_id, commit, files, last_modified)

    # ----------------------------------------------------------------------------- lifecycle
    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("LocalHubServer is not running; use it as a context manager or call start()")
        return self._httpd.server_address[1]

    @property
    def endpoint(self) -> str:
        """The value for ``HF_ENDPOINT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LocalHubServer":
        if self._httpd is not None:
            raise RuntimeError("LocalHubServer is already running")
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="local-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
        self._httpd, self._thread = None, None
        if self._storage is not None:
            shutil.rmtree(self._storage, ignore_errors=True)
            self._storage = None

    def __enter__(self) -> "LocalHubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------------------- request log
    @property
    def requests(self) -> List[RequestRecord]:
        """Every request answered so far, oldest first."""
        with self._lock:
            return list(self._records)

    def clear_requests(self) -> None:
        with self._lock:
            self._records.clear()

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def downloads(self, repo_id: Optional[str] = None, filename: Optional[str] = None) -> List[RequestRecord]:
        """The successful file-content transfers (GET on ``/resolve/``), optionally of one repo / file."""
        out = []
        for rec in self.requests:
            m = _RESOLVE_RE.match(rec.path)
            if rec.method != "GET" or m is None or rec.status not in (200, 206):
                continue
            if repo_id is not None and m["repo"] != repo_id:
                continue
            if filename is not None and m["file"] != filename:
                continue
            out.append(rec)
        return out

    # ----------------------------------------------------------------------------- client
    def client_env(self, hf_home: PathLike, offline: bool = False) -> Dict[str, str]:
        return hub_client_env(self.endpoint, hf_home, offline=offline)

    def run_python(self, code: str, hf_home: PathLike, offline: bool = False, timeout: float = 120.0) -> str:
        """Run ``code`` in a fresh interpreter whose Hub is this server; returns its stdout."""
        return run_hub_python(code, self.endpoint, hf_home, offline=offline, timeout=timeout)


# --------------------------------------------------------------------------------- HTTP handler
def _make_handler(hub: LocalHubServer) -> type:
    class Handler(_HubRequestHandler):
        server_hub = hub

    return Handler


class _HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "qpm-timm-local-hub"
    server_hub: LocalHubServer

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (silence stderr logging)
        pass

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_POST(self) -> None:
        self._dispatch(head=False)

    def do_PUT(self) -> None:
        self._dispatch(head=False)

    def _dispatch(self, head: bool) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        status = 500
        try:
            if self.command in ("POST", "PUT"):
                status = self._write(url.path, self._body())
            elif (m := _RESOLVE_RE.match(url.path)) is not None:
                status = self._resolve(unquote(m["repo"]), unquote(m["rev"]), unquote(m["file"]), head)
            elif (m := _TREE_RE.match(url.path)) is not None:
                status = self._tree(unquote(m["repo"]), unquote(m["rev"]), unquote(m["path"] or ""), url.query, head)
            elif (m := _INFO_RE.match(url.path)) is not None:
                status = self._info(unquote(m["repo"]), unquote(m["rev"] or "main"), url.query, head)
            else:
                raise HubError(404, "NotFound", f"This local Hub does not serve {url.path}")
        except HubError as err:
            status = self._send_error(err, head)
        except (BrokenPipeError, ConnectionResetError):
            status = 499  # the client hung up mid-response
        except Exception as err:  # a bug here must reach the client as a 500, not a hung connection
            status = self._send_error(HubError(500, "InternalError", f"{type(err).__name__}: {err}"), head)
        finally:
            self.server_hub._record(RequestRecord(self.command, path, url.query, status))

    def _body(self) -> bytes:
        """The request body (``Content-Length`` or chunked), always read whole so the connection stays usable."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _write(self, url_path: str, body: bytes) -> int:
        """The POST / PUT endpoints (module docstring)."""
        hub = self.server_hub
        if self.command == "PUT" and (m := _LFS_UPLOAD_RE.match(url_path)) is not None:
            hub.store_lfs(m["oid"], body)
            return self._send(200, {}, b"", head=False)
        if self.command != "POST":
            raise HubError(405, "MethodNotAllowed", f"{self.command} {url_path}")
        if url_path == "/api/repos/create":
            data = json.loads(body or b"{}")
            repo_id = "/".join(p for p in (data.get("organization"), data.get("name")) if p)
            if hub.has_repo(repo_id):  # the Hub's 409 carries the url, which create_repo(exist_ok=True) reads
                body = json.dumps({"error": f"You already created this model repo: {repo_id}",
                                   "url": f"{hub.endpoint}/{repo_id}"}).encode()
                return self._send(409, {"Content-Type": "application/json"}, body, head=False)
            hub.create_repo(repo_id, private=data.get("visibility") == "private" or data.get("private") is True)
            return self._send_json({"url": f"{hub.endpoint}/{repo_id}", "name": repo_id}, head=False)
        if url_path == "/api/validate-yaml":
            errors = _card_metadata_errors(json.loads(body).get("content", ""))
            if errors:
                return self._send(400, {"Content-Type": "application/json"},
                                  json.dumps({"errors": [{"message": e} for e in errors]}).encode(), head=False)
            return self._send_json({"errors": [], "warnings": []}, head=False)
        if (m := _BRANCH_RE.match(url_path)) is not None:
            start = json.loads(body or b"{}").get("startingPoint") or "main"
            hub.create_branch(unquote(m["repo"]), unquote(m["branch"]), start)
            return self._send_json({}, head=False)
        if (m := _PREUPLOAD_RE.match(url_path)) is not None:
            snap = hub.snapshot(unquote(m["repo"]), unquote(m["rev"]))
            files = []
            for f in json.loads(body)["files"]:
                existing = snap.files.get(f["path"])
                files.append({"path": f["path"], "uploadMode": "lfs" if _is_lfs(f["path"], f["size"]) else "regular",
                              "shouldIgnore": False, "oid": existing.etag if existing else None})
            return self._send_json({"files": files}, head=False)
        if (m := _LFS_BATCH_RE.match(url_path)) is not None:
            hub.snapshot(unquote(m["repo"]))  # 404 for a repository that does not exist
            objects = []
            for obj in json.loads(body)["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                if not hub.has_lfs(obj["oid"]):
                    entry["actions"] = {"upload": {"href": f"{hub.endpoint}/lfs-upload/{obj['oid']}"}}
                objects.append(entry)
            return self._send_json({"transfer": "basic", "objects": objects}, head=False,
                                   headers={"Content-Type": "application/vnd.git-lfs+json"})
        if (m := _COMMIT_RE.match(url_path)) is not None:
            repo_id, revision = unquote(m["repo"]), unquote(m["rev"])
            items = [json.loads(line) for line in body.splitlines() if line.strip()]
            commit = hub.commit(repo_id, revision, items)
            return self._send_json({"success": True, "commitOid": commit, "pullRequestUrl": None,
                                    "commitUrl": f"{hub.endpoint}/{repo_id}/commit/{commit}"}, head=False)
        raise HubError(404, "NotFound", f"This local Hub does not serve POST {url_path}")

    def _send_headers(self, status: int, headers: Mapping[str, str], length: int) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()

    def _send(self, status: int, headers: Mapping[str, str], body: bytes, head: bool) -> int:
        self._send_headers(status, headers, len(body))
        if not head:
            self.wfile.write(body)
        return status

    def _send_json(self, data, head: bool, headers: Optional[Mapping[str, str]] = None) -> int:
        body = json.dumps(data).encode()
        return self._send(200, {"Content-Type": "application/json", **(headers or {})}, body, head)

    def _send_error(self, err: HubError, head: bool) -> int:
        headers = {
            "Content-Type": "application/json",
            "X-Error-Code": err.code,
            "X-Error-Message": err.message,
            **err.headers,
        }
        return self._send(err.status, headers, json.dumps({"error": err.message}).encode(), head)

    def _resolve(self, repo_id: str, revision: str, filename: str, head: bool) -> int:
        snap = self.server_hub.snapshot(repo_id, revision)
        entry = snap.files.get(filename)
        if entry is None:
            raise HubError(404, "EntryNotFound", f"Entry not found: {filename}", {"X-Repo-Commit": snap.commit})
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": f'"{entry.etag}"',
            "X-Repo-Commit": snap.commit,
            "Content-Disposition": f'inline; filename="{Path(filename).name}"',
        }
        if entry.is_lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        start, end, status = 0, entry.size - 1, 200
        range_header = self.headers.get("Range")
        if range_header is not None:
            m = _RANGE_RE.match(range_header.strip())
            start = int(m[1]) if m else -1
            end = min(int(m[2]) if m and m[2] else entry.size - 1, entry.size - 1)
            if m is None or start >= entry.size or start > end:
                raise HubError(416, "RangeNotSatisfiable", f"Range {range_header!r} not satisfiable for "
                               f"{entry.size} bytes", {"Content-Range": f"bytes */{entry.size}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
            status = 206
        self._send_headers(status, headers, end + 1 - start)
        if not head:
            with open(entry.local_path, "rb") as f:
                f.seek(start)
                remaining = end + 1 - start
                while remaining > 0 and (chunk := f.read(min(remaining, 1 << 20))):
                    self.wfile.write(chunk)
                    remaining -= len(chunk)
        return status

    def _info(self, repo_id: str, revision: str, query: str, head: bool) -> int:
        snap = self.server_hub.snapshot(repo_id, revision)
        blobs = parse_qs(query).get("blobs", ["false"])[-1] in _TRUE
        siblings = []
        for f in snap.files.values():
            sibling: dict = {"rfilename": f.path}
            if blobs:
                sibling.update(size=f.size, blobId=f.blob_id)
                if f.is_lfs:
                    sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": len(f.lfs_pointer())}
            siblings.append(sibling)
        modified = datetime.fromtimestamp(snap.last_modified or 0, tz=timezone.utc)
        card = snap.card_data()
        data = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0] if "/" in repo_id else None,
            "sha": snap.commit,
            "lastModified": modified.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "private": self.server_hub.is_private(repo_id),
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": list(card.get("tags", [])) if card else [],
            "library_name": card.get("library_name") if card else None,
            "siblings": siblings,
        }
        if card is not None:
            data["cardData"] = card
        return self._send_json(data, head)

    def _tree(self, repo_id: str, revision: str, subpath: str, query: str, head: bool) -> int:
        snap = self.server_hub.snapshot(repo_id, revision)
        recursive = parse_qs(query).get("recursive", ["false"])[-1] in _TRUE
        prefix = subpath.strip("/")
        entries = list(_tree_entries(snap, prefix, recursive))
        if prefix and not entries:
            raise HubError(404, "EntryNotFound", f"{prefix} does not exist on {revision}",
                           {"X-Repo-Commit": snap.commit})
        return self._send_json(entries, head)


def _safe_repo_path(path: str) -> str:
    """A relative POSIX path inside a repository (no ``..``, not absolute, not under ``.git``)."""
    parts = path.strip("/").split("/")
    if not path or path.startswith("/") or ".." in parts or parts[0] == ".git":
        raise HubError(400, "BadRequest", f"invalid path in repository: {path!r}")
    return "/".join(parts)


def _card_metadata_errors(content: str) -> List[str]:
    """What the Hub's YAML validation would refuse in a README: unparsable front matter, an incomplete
    ``model-index`` (each result needs ``task.type``, ``dataset.name``/``type``, metrics with ``type``/``value``)."""
    import yaml

    if not content.startswith("---"):
        return []
    parts = content.split("---", 2)
    try:
        meta = yaml.safe_load(parts[1]) if len(parts) == 3 else None
    except yaml.YAMLError as err:
        return [f"invalid YAML front matter: {err}"]
    if not isinstance(meta, dict):
        return ["the YAML front matter is not a mapping"]
    errors = []
    for model in meta.get("model-index") or []:
        for result in model.get("results") or []:
            if not (result.get("task") or {}).get("type"):
                errors.append(f"model-index {model.get('name')}: a result without task.type")
            dataset = result.get("dataset") or {}
            if not (dataset.get("name") and dataset.get("type")):
                errors.append(f"model-index {model.get('name')}: a result without dataset name and type")
            for metric in result.get("metrics") or []:
                if not metric.get("type") or not isinstance(metric.get("value"), (int, float)):
                    errors.append(f"model-index {model.get('name')}: a metric without type or numeric value")
    return errors


def _tree_entries(snap: RepoSnapshot, prefix: str, recursive: bool) -> Iterator[dict]:
    """``list_repo_tree`` entries under ``prefix``: folders then files, like the Hub's ``/tree`` API."""
    base = f"{prefix}/" if prefix else ""
    folders, files = set(), []
    for f in snap.files.values():
        if not f.path.startswith(base):
            continue
        parts = f.path[len(base):].split("/")
        for depth in range(1, len(parts)):
            if depth > 1 and not recursive:
                break
            folders.add(base + "/".join(parts[:depth]))
        if recursive or len(parts) == 1:
            files.append(f)
    for folder in sorted(folders):
        yield {"type": "directory", "oid": hashlib.sha1(f"{snap.commit}:{folder}".encode()).hexdigest(),
               "size": 0, "path": folder}
    for f in files:
        entry = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
        if f.is_lfs:
            entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(f.lfs_pointer())}
        yield entry


# --------------------------------------------------------------------------------- client helpers
_DROPPED_ENV_PREFIXES = ("HF_", "HUGGINGFACE_")
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def hub_client_env(endpoint: str, hf_home: PathLike, offline: bool = False) -> Dict[str, str]:
    """Environment for a Hub client process: this endpoint, a private ``HF_HOME``, no token, no proxy.

    Inherited ``HF_*`` / ``HUGGINGFACE_*`` variables (tokens, cache paths, offline flags) are dropped so
    the run is hermetic; the repository root is put on ``PYTHONPATH`` so ``import qpm_timm`` works.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(_DROPPED_ENV_PREFIXES) and k not in _PROXY_VARS}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_HOME=str(hf_home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_IMPLICIT_TOKEN="1",
        HF_HUB_DISABLE_XET="1",  # this server speaks git-LFS for uploads, not Xet
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p),
    )
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


class HubClientError(AssertionError):
    """A Hub client subprocess failed; the message holds its exit code, stdout and stderr."""


def run_hub_python(code: str, endpoint: str, hf_home: PathLike, offline: bool = False, timeout: float = 120.0) -> str:
    """Run ``code`` with ``python -c`` against the Hub at ``endpoint`` (``HF_HOME=hf_home``); return stdout.

    Raises :class:`HubClientError` when the process exits non-zero or exceeds ``timeout`` seconds.
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code], env=hub_client_env(endpoint, hf_home, offline), cwd=str(REPO_ROOT),
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired as err:
        raise HubClientError(f"Hub client timed out after {timeout}s\nstdout:\n{err.stdout}\nstderr:\n{err.stderr}")
    if proc.returncode != 0:
        raise HubClientError(
            f"Hub client exited with {proc.returncode} (offline={offline})\n"
            f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc.stdout


def hub_cache_repo_folder(hf_home: PathLike, repo_id: str) -> Path:
    """Where ``huggingface_hub`` caches model repo ``repo_id`` under ``HF_HOME=hf_home``."""
    return Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))


@pytest.fixture
def hub_server() -> Iterator[LocalHubServer]:
    """A running :class:`LocalHubServer` with no repositories; add them with ``add_repo``. Stopped after the test."""
    with LocalHubServer() as hub:
        yield hub
