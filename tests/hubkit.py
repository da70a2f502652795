"""A stand-in Hugging Face Hub on 127.0.0.1 for the push tests.

It speaks the endpoints the installed huggingface_hub calls for ``whoami``, ``create_repo``,
``create_branch``, ``preupload_lfs_files`` and ``create_commit`` (read from its source:
hf_api.py, _commit_api.py, lfs.py), keeps repositories and an LFS store in memory, and
records every request so that tests assert on what the client sent:

* ``GET /api/whoami-v2``: the token's user and organisations (401 for another token);
* ``POST /api/repos/create``: ``{name, organization, visibility}``; 409 with the ``url``
  when the repository exists (what ``exist_ok=True`` expects), 403 outside the user's
  namespaces;
* ``POST /api/models/{repo}/branch/{branch}``; ``GET /api/models/{repo}[/revision/{rev}]``;
* ``POST /api/models/{repo}/preupload/{rev}``: ``uploadMode`` per file ("lfs" for files of
  ``lfs_threshold`` bytes or more, and ``*.gguf``/``*.safetensors``, as the hub's rules do),
  with the ``oid`` of the file already at that path (sha256 for LFS, git sha1 otherwise);
* ``POST /api/validate-yaml``: the README's front matter, parsed by huggingface_hub;
* ``POST /{repo}.git/info/lfs/objects/batch``: no ``actions`` for an object the store holds
  (the client then skips it: a resumed push), else a basic ``upload`` URL, or a multipart
  one (``chunk_size`` and one URL per part, completed by a POST) for objects of
  ``multipart_chunk`` bytes or more, and a ``verify`` URL; objects are checked by sha256;
* ``POST /api/models/{repo}/commit/{rev}``: the ndjson operations (``file`` base64,
  ``lfsFile`` by oid, which must be in the store), applied to the branch.

``fail(method, path_prefix, status)`` makes the next matching request answer ``status``
(with huggingface_hub's ``X-Error-Message`` header), to test error handling.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN = "hf_standin_write_token"
USER = "me"
ORGS = ("persona-org",)
LFS_SUFFIXES = (".gguf", ".safetensors")


def git_sha1(data: bytes) -> str:
    """The git blob id of ``data`` (the oid the hub reports for a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324


@dataclass
class Request:
    method: str
    path: str
    json: Any = None
    size: int = 0


@dataclass
class Repo:
    private: bool
    branches: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: {"main": {}})
    commits: list[dict[str, Any]] = field(default_factory=list)


class StandInHub:
    """The server's state (see the module docstring)."""

    def __init__(self, lfs_threshold: int = 10 * 1024 * 1024, multipart_chunk: int = 0) -> None:
        self.lfs_threshold = lfs_threshold
        self.multipart_chunk = multipart_chunk
        self.repos: dict[str, Repo] = {"someone-else/taken": Repo(private=False)}
        self.lfs: dict[str, bytes] = {}
        self.parts: dict[tuple[str, int], bytes] = {}
        self.requests: list[Request] = []
        self.failures: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        self.url = ""

    def fail(self, method: str, path_prefix: str, status: int) -> None:
        self.failures.append((method, path_prefix, status))

    def called(self, method: str, prefix: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path.startswith(prefix)]

    def files(self, repo: str, branch: str = "main") -> dict[str, bytes]:
        """The content of every file of ``repo``'s ``branch``."""
        out = {}
        for path, entry in self.repos[repo].branches[branch].items():
            out[path] = self.lfs[entry["oid"]] if entry["lfs"] else entry["data"]
        return out


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: StandInHub

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    # -- plumbing -------------------------------------------------------------------------

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers)

    def _handle(self, method: str) -> None:
        hub = self.hub
        body = self._body()
        path = self.path.split("?")[0]
        parsed: Any = None
        kind = self.headers.get("Content-Type", "")
        if body and "ndjson" in kind:
            parsed = [json.loads(line) for line in body.splitlines() if line.strip()]
        elif body and "json" in kind:  # application/json, application/vnd.git-lfs+json
            parsed = json.loads(body)
        with hub.lock:
            hub.requests.append(Request(method, path, parsed, len(body)))
            for i, (m, prefix, status) in enumerate(hub.failures):
                if m == method and path.startswith(prefix):
                    del hub.failures[i]
                    self._error(status, f"stand-in hub: {status} on purpose")
                    return
        if not path.startswith(("/lfs-", "/api/validate-yaml")) and not self._authorized():
            self._error(401, "Invalid credentials in Authorization header")
            return
        try:
            route = _route(hub, method, path, parsed, body, self.hub.url)
        except Exception as exc:  # a stand-in bug: a status the client does not retry
            route = (418, {"error": f"stand-in hub bug: {exc!r}"})
        self._send(*route)

    def _authorized(self) -> bool:
        return self.headers.get("Authorization") == f"Bearer {TOKEN}"

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")


Answer = tuple[int, Any] | tuple[int, Any, dict[str, str]]


def _route(hub: StandInHub, method: str, path: str, data: Any, raw: bytes, url: str) -> Answer:
    parts = path.strip("/").split("/")
    with hub.lock:
        if method == "GET" and path == "/api/whoami-v2":
            return 200, {
                "type": "user",
                "name": USER,
                "orgs": [{"name": o} for o in ORGS],
                "auth": {"type": "access_token", "accessToken": {"role": "write"}},
            }
        if method == "POST" and path == "/api/repos/create":
            repo = f"{data.get('organization') or USER}/{data['name']}"
            if repo.split("/")[0] not in (USER, *ORGS):
                return 403, {"error": f"You don't have the rights to create a model under {repo}"}
            if repo in hub.repos:
                return 409, {"error": "You already created this model repo", "url": f"{url}/{repo}"}
            hub.repos[repo] = Repo(private=data.get("visibility") == "private")
            return 200, {"url": f"{url}/{repo}", "name": repo}
        if method == "POST" and path == "/api/validate-yaml":
            from huggingface_hub import ModelCard

            ModelCard(data["content"])  # raises on a broken front matter
            return 200, {"errors": [], "warnings": []}
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            return _repo_route(hub, method, "/".join(parts[2:4]), parts[4:], data, url)
        if method == "POST" and path.endswith(".git/info/lfs/objects/batch"):
            return _lfs_batch(hub, data, url)
        if parts[0] in ("lfs-upload", "lfs-part", "lfs-complete", "lfs-verify"):
            return _lfs_transfer(hub, method, parts, data, raw)
    return 404, {"error": f"stand-in hub: no route for {method} {path}"}


def _repo_route(
    hub: StandInHub, method: str, repo_id: str, rest: list[str], data: Any, url: str
) -> Answer:
    repo = hub.repos.get(repo_id)
    if repo is None:
        return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
    if method == "GET" and rest[:1] in ([], ["revision"]):
        branch = rest[1] if len(rest) > 1 else "main"
        head = repo.commits[-1]["oid"] if repo.commits else "0" * 40
        return 200, {
            "id": repo_id,
            "sha": head,
            "private": repo.private,
            "siblings": [{"rfilename": p} for p in repo.branches.get(branch, {})],
        }
    if method == "POST" and rest[:1] == ["branch"]:
        if rest[1] in repo.branches:
            return 409, {"error": "Reference already exists"}
        repo.branches[rest[1]] = dict(repo.branches["main"])
        return 200, {}
    branch = rest[1] if len(rest) > 1 else "main"
    if branch not in repo.branches:
        return 404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"}
    files = repo.branches[branch]
    if method == "POST" and rest[:1] == ["preupload"]:
        answer = []
        for f in data["files"]:
            lfs = f["size"] >= hub.lfs_threshold or f["path"].endswith(LFS_SUFFIXES)
            entry = files.get(f["path"])
            oid = None if entry is None else entry["oid"]
            answer.append(
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": oid,
                }
            )
        return 200, {"files": answer, "commitOid": "0" * 40}
    if method == "POST" and rest[:1] == ["commit"]:
        return _commit(hub, repo, repo_id, branch, data, url)
    return 404, {"error": "stand-in hub: unknown repository route"}


def _commit(hub: StandInHub, repo: Repo, repo_id: str, branch: str, lines: Any, url: str) -> Answer:
    header = lines[0]
    assert header["key"] == "header"
    files = repo.branches[branch]
    for line in lines[1:]:
        value = line["value"]
        if line["key"] == "file":
            data = base64.b64decode(value["content"])
            files[value["path"]] = {"lfs": False, "data": data, "oid": git_sha1(data)}
        elif line["key"] == "lfsFile":
            if value["oid"] not in hub.lfs:
                return 400, {"error": f"LFS object {value['oid']} was never uploaded"}
            files[value["path"]] = {"lfs": True, "oid": value["oid"], "size": value["size"]}
        else:
            return 400, {"error": f"stand-in hub: unexpected operation {line['key']}"}
    oid = hashlib.sha1(json.dumps(lines, sort_keys=True).encode()).hexdigest()  # noqa: S324
    repo.commits.append({"oid": oid, "branch": branch, "header": header["value"], "lines": lines})
    return 200, {"commitUrl": f"{url}/{repo_id}/commit/{oid}", "commitOid": oid, "success": True}


def _lfs_batch(hub: StandInHub, data: Any, url: str) -> Answer:
    objects = []
    for obj in data["objects"]:
        oid, size = obj["oid"], obj["size"]
        if oid in hub.lfs:
            objects.append({"oid": oid, "size": size})
            continue
        verify = {"href": f"{url}/lfs-verify/{oid}"}
        chunk = hub.multipart_chunk
        if chunk and size >= chunk:
            count = -(-size // chunk)
            header = {"chunk_size": str(chunk)}
            header |= {str(n): f"{url}/lfs-part/{oid}/{n}" for n in range(1, count + 1)}
            upload = {"href": f"{url}/lfs-complete/{oid}", "header": header}
        else:
            upload = {"href": f"{url}/lfs-upload/{oid}"}
        objects.append({"oid": oid, "size": size, "actions": {"upload": upload, "verify": verify}})
    return 200, {"transfer": "basic", "objects": objects}


def _lfs_transfer(hub: StandInHub, method: str, parts: list[str], data: Any, raw: bytes) -> Answer:
    kind, oid = parts[0], parts[1]
    if kind == "lfs-upload" and method == "PUT":
        if hashlib.sha256(raw).hexdigest() != oid:
            return 400, {"error": "sha256 mismatch"}
        hub.lfs[oid] = raw
        return 200, {}
    if kind == "lfs-part" and method == "PUT":
        hub.parts[(oid, int(parts[2]))] = raw
        return 200, None, {"ETag": f'"{hashlib.md5(raw).hexdigest()}"'}  # noqa: S324
    if kind == "lfs-complete" and method == "POST":
        numbers = [p["partNumber"] for p in data["parts"]]
        whole = b"".join(hub.parts.pop((oid, n)) for n in numbers)
        if hashlib.sha256(whole).hexdigest() != data["oid"] or data["oid"] != oid:
            return 400, {"error": "sha256 mismatch"}
        hub.lfs[oid] = whole
        return 200, {}
    if kind == "lfs-verify" and method == "POST":
        ok = oid in hub.lfs and len(hub.lfs[oid]) == data["size"]
        return (200, {}) if ok else (404, {"error": "object not found"})
    return 404, {"error": "stand-in hub: unknown LFS route"}


@contextmanager
def stand_in_hub(**options: Any) -> Iterator[StandInHub]:
    """Serve a :class:`StandInHub` on 127.0.0.1 (an ephemeral port) while in the block."""
    hub = StandInHub(**options)
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
