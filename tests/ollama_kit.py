"""Stand-ins for Ollama in the ollama tests: an `ollama` executable that records what it was
asked, and a REST server on 127.0.0.1 (/api/version, /api/blobs, /api/create) that checks
what it receives and can answer badly (refuse, fail, answer non-JSON, never answer).
Ollama itself is not run. Also: a verify report as the verify stage writes it."""

from __future__ import annotations

import hashlib
import json
import socket
import stat
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from persona_export.artifacts import Manifest, record_file, write_json_atomic
from persona_export.layout import Layout

STAND_IN = """#!{python}
# A stand-in for the ollama CLI: records its argv and the Modelfile it was given.
import json, os, sys
record = {{"argv": sys.argv[1:], "cwd": os.getcwd()}}
if "-f" in sys.argv:
    path = sys.argv[sys.argv.index("-f") + 1]
    record["modelfile_path"] = path
    record["modelfile"] = open(path, encoding="utf-8").read()
with open({record!r}, "w", encoding="utf-8") as fh:
    json.dump(record, fh)
if os.environ.get("STAND_IN_FAIL"):
    print("Error: unsupported architecture", file=sys.stderr)
    sys.exit(1)
print("gathering model components")
print("success")
"""


def install_stand_in(bin_dir: Path, record: Path) -> Path:
    """Put the stand-in `ollama` into ``bin_dir``; each run writes what it saw to ``record``."""
    exe = bin_dir / "ollama"
    exe.write_text(STAND_IN.format(python=sys.executable, record=str(record)), encoding="utf-8")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return exe


class StandInOllama(BaseHTTPRequestHandler):
    """/api/version, /api/blobs/sha256:<hex> and /api/create, checking what they receive.

    ``create_reply``: (HTTP status, body bytes, content type) to answer /api/create with
    instead of success; ``hang``: paths it never answers (until ``release`` is set).
    """

    blobs: dict[str, bytes]
    creates: list[dict[str, Any]]
    problems: list[str]
    refuse_create: bool
    create_reply: tuple[int, bytes, str] | None
    hang: set[str]
    release: threading.Event
    version: str

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _reply(self, code: int, body: dict[str, Any] | None = None) -> None:
        self._send(code, json.dumps(body or {}).encode(), "application/json")

    def _send(self, code: int, data: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _hangs(self) -> bool:
        if any(self.path.startswith(p) for p in self.hang):
            self.release.wait(60)
            return True
        return False

    def do_GET(self) -> None:
        if self._hangs():
            return
        if self.path == "/api/version":
            self._reply(200, {"version": self.version})
        else:
            self._reply(404, {"error": "not found"})

    def do_HEAD(self) -> None:
        if self._hangs():
            return
        digest = self.path.removeprefix("/api/blobs/")
        self._reply(200 if digest in self.blobs else 404)

    def do_POST(self) -> None:
        body = self._body()
        if self._hangs():
            return
        if self.path.startswith("/api/blobs/sha256:"):
            digest = self.path.removeprefix("/api/blobs/")
            if hashlib.sha256(body).hexdigest() != digest.removeprefix("sha256:"):
                self.problems.append("blob digest mismatch")
                self._reply(400, {"error": "digest mismatch"})
                return
            self.blobs[digest] = body
            self._reply(201)
        elif self.path == "/api/create":
            self._create(body)
        else:
            self.problems.append(f"unexpected POST {self.path}")
            self._reply(404, {"error": "not found"})

    def _create(self, body: bytes) -> None:
        request = json.loads(body)
        self.creates.append(request)
        for name, digest in (request.get("files") or {}).items():
            if name.startswith("/") or ".." in name or "/" in name:
                self.problems.append(f"file name not relative: {name}")
            if digest not in self.blobs:
                self.problems.append(f"create names a blob never uploaded: {digest}")
        if not isinstance((request.get("parameters") or {}).get("stop", []), list):
            self.problems.append("parameters.stop is not a list")
        if "modelfile" in request:
            self.problems.append("the old 'modelfile' field was sent")
        if self.refuse_create:
            self._reply(400, {"error": "unsupported model format"})
        elif self.create_reply is not None:
            self._send(*self.create_reply)
        else:
            self._reply(200, {"status": "success"})


@contextmanager
def stand_in_server() -> Iterator[tuple[str, type[StandInOllama]]]:
    """A fresh stand-in server on 127.0.0.1; yields its URL and its handler class (whose
    class attributes are its state and settings)."""
    handler = type(
        "Handler",
        (StandInOllama,),
        {
            "blobs": {},
            "creates": [],
            "problems": [],
            "refuse_create": False,
            "create_reply": None,
            "hang": set(),
            "release": threading.Event(),
            "version": "0.9.9",
        },
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        handler.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where (almost surely) nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def write_verify_report(
    layout: Layout, persona: str, quant: str = "Q4_K_M", *, passed: bool = True
) -> Path:
    """``gguf_models/<persona>/verify.json`` as the verify stage writes it after checking the
    Modelfile and its GGUF as they are now (the checks themselves are not run here)."""
    modelfile = layout.modelfile(persona)
    gguf = layout.gguf(persona, quant)
    report = layout.verify_report(persona)
    manifest = Manifest(
        stage="verify",
        options={},
        inputs={"modelfile": record_file(modelfile), f"gguf/{gguf.name}": record_file(gguf)},
        outputs={},
        seconds=0.0,
        extra={"persona": persona, "passed": passed, "modelfile_gguf": gguf.name, "checks": []},
    )
    write_json_atomic(report, manifest.to_json())
    return report


PERSONAS = """
[personas.cap]
ollama_name = "cap-test"
system = "You are Captain Test.\\nAnswer like a pirate."

[personas.cap.parameters]
temperature = 0.8
num_ctx = 2048
"""


def make_exported(root: Path, personas_file: Path) -> Layout:
    """A project whose Modelfile is written (tiny stand-in GGUF with a few KB of content) and
    verified (a passing verify report of the Modelfile and GGUF as they are)."""
    import os

    from persona_export.stages.modelfile import ModelfileConfig
    from persona_export.stages.modelfile import run as write_modelfile
    from tests import hf_chat_templates as hf
    from tests.modelfile_kit import PHI, make_persona_project

    layout = make_persona_project(root, "cap", hf.PHI4MINI, PHI)
    with open(layout.gguf("cap", "Q4_K_M"), "ab") as fh:
        fh.write(os.urandom(200_000))  # a body worth hashing
    write_modelfile(ModelfileConfig("cap", layout=layout, personas_file=personas_file))
    write_verify_report(layout, "cap")
    return layout


def without_ollama(tmp_path: Path, monkeypatch: Any) -> Path:
    """PATH holds only an empty folder (no `ollama`; returned), OLLAMA_HOST unset, no proxies,
    and Ollama's default address replaced by one where nothing listens."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    for var in ("OLLAMA_HOST", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.lower(), raising=False)
    monkeypatch.setattr(
        "persona_export.ollama.registry.DEFAULT_HOST", closed_port_url(), raising=False
    )
    return empty
