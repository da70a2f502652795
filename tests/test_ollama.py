"""`persona-export ollama`: the create call, exercised against a stand-in `ollama` executable
placed first on PATH and a stand-in Ollama REST server (/api/blobs, /api/create) on
127.0.0.1, which check what they receive. Ollama itself is not run."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from persona_export.cli import app
from persona_export.layout import Layout
from persona_export.stages.modelfile import ModelfileConfig
from persona_export.stages.modelfile import run as write_modelfile
from tests import hf_chat_templates as hf
from tests.modelfile_kit import PHI, layout_args, make_persona_project, write_personas
from tests.modelfile_parser import parse_modelfile

PERSONAS = """
[personas.cap]
ollama_name = "cap-test"
system = "You are Captain Test.\\nAnswer like a pirate."

[personas.cap.parameters]
temperature = 0.8
num_ctx = 2048
"""


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def personas_file(tmp_path: Path) -> Path:
    return write_personas(tmp_path / "personas.toml", PERSONAS)


@pytest.fixture
def exported(tmp_path: Path, personas_file: Path) -> Layout:
    """A project whose Modelfile is written (tiny stand-in GGUF with a few KB of content)."""
    layout = make_persona_project(tmp_path / "project", "cap", hf.PHI4MINI, PHI)
    with open(layout.gguf("cap", "Q4_K_M"), "ab") as fh:
        fh.write(os.urandom(200_000))  # a body worth hashing
    write_modelfile(ModelfileConfig("cap", layout=layout, personas_file=personas_file))
    return layout


@pytest.fixture
def no_ollama(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH holds only an empty folder (no `ollama`), OLLAMA_HOST unset, no proxies."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    for var in ("OLLAMA_HOST", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    return empty


def invoke(runner: CliRunner, layout: Layout, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["ollama", "--persona", "cap", *layout_args(layout), *args])


# --- the ollama CLI --------------------------------------------------------------------

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


def _install_stand_in(bin_dir: Path, record: Path) -> Path:
    exe = bin_dir / "ollama"
    exe.write_text(STAND_IN.format(python=sys.executable, record=str(record)), encoding="utf-8")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return exe


def test_registers_with_the_ollama_cli(
    runner: CliRunner, exported: Layout, personas_file: Path, no_ollama: Path, tmp_path: Path
) -> None:
    record = tmp_path / "record.json"
    _install_stand_in(no_ollama, record)
    result = invoke(runner, exported, "--personas", str(personas_file))
    assert result.exit_code == 0, result.output
    assert result.stdout == "cap-test\n"
    assert "registered cap-test with the ollama CLI; try: ollama run cap-test" in result.stderr
    seen = json.loads(record.read_text())
    modelfile = exported.modelfile("cap")
    assert seen["argv"] == ["create", "cap-test", "-f", str(modelfile.resolve())]
    assert seen["modelfile"] == modelfile.read_text(encoding="utf-8")
    parsed = parse_modelfile(seen["modelfile"])
    assert (Path(seen["modelfile_path"]).parent / parsed.from_).is_file()


def test_name_option_overrides_and_is_checked(
    runner: CliRunner, exported: Layout, no_ollama: Path, tmp_path: Path
) -> None:
    record = tmp_path / "record.json"
    _install_stand_in(no_ollama, record)
    result = invoke(runner, exported, "--name", "pirates/cap:v2")
    assert result.exit_code == 0, result.output
    assert json.loads(record.read_text())["argv"][:2] == ["create", "pirates/cap:v2"]
    bad = invoke(runner, exported, "--name", "Cap:Latest")
    assert bad.exit_code == 2
    assert bad.stderr == (
        "error: invalid Ollama model name 'Cap:Latest'\n"
        "hint: Ollama names are lower case: use 'cap:latest'\n"
    )


def test_failing_ollama_cli_is_an_error(
    runner: CliRunner,
    exported: Layout,
    no_ollama: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _install_stand_in(no_ollama, tmp_path / "record.json")
    monkeypatch.setenv("STAND_IN_FAIL", "1")
    result = invoke(runner, exported)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: ollama create failed with exit code 1:\nError: unsupported architecture\n"
    )


# --- the REST API ----------------------------------------------------------------------


class StandInOllama(BaseHTTPRequestHandler):
    """/api/blobs/sha256:<hex> and /api/create, checking what they receive."""

    blobs: dict[str, bytes]
    creates: list[dict[str, Any]]
    problems: list[str]
    refuse_create: bool

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _reply(self, code: int, body: dict[str, Any] | None = None) -> None:
        data = json.dumps(body or {}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
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

    def do_HEAD(self) -> None:
        digest = self.path.removeprefix("/api/blobs/")
        self._reply(200 if digest in self.blobs else 404)

    def do_POST(self) -> None:
        body = self._body()
        if self.path.startswith("/api/blobs/sha256:"):
            digest = self.path.removeprefix("/api/blobs/")
            if hashlib.sha256(body).hexdigest() != digest.removeprefix("sha256:"):
                self.problems.append("blob digest mismatch")
                self._reply(400, {"error": "digest mismatch"})
                return
            self.blobs[digest] = body
            self._reply(201)
        elif self.path == "/api/create":
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
            else:
                self._reply(200, {"status": "success"})
        else:
            self.problems.append(f"unexpected POST {self.path}")
            self._reply(404, {"error": "not found"})


@pytest.fixture
def stand_in_server() -> Iterator[tuple[str, type[StandInOllama]]]:
    handler = type(
        "Handler",
        (StandInOllama,),
        {"blobs": {}, "creates": [], "problems": [], "refuse_create": False},
    )
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_registers_through_the_rest_api(
    runner: CliRunner,
    exported: Layout,
    personas_file: Path,
    no_ollama: Path,
    stand_in_server: tuple[str, type[StandInOllama]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, handler = stand_in_server
    monkeypatch.setenv("OLLAMA_HOST", url)
    result = invoke(runner, exported, "--personas", str(personas_file))
    assert result.exit_code == 0, result.output
    assert result.stdout == "cap-test\n"
    assert "with the Ollama REST API" in result.stderr
    assert handler.problems == []
    gguf = exported.gguf("cap", "Q4_K_M")
    digest = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert list(handler.blobs) == [digest]
    (create,) = handler.creates
    parsed = parse_modelfile(exported.modelfile("cap").read_text())
    assert create["model"] == "cap-test"
    assert create["files"] == {"cap-Q4_K_M.gguf": digest}
    assert create["template"] == parsed.template
    assert create["system"] == "You are Captain Test.\nAnswer like a pirate."
    assert create["parameters"] == {
        "stop": ["<|end|>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>"],
        "temperature": 0.8,
        "num_ctx": 2048,
    }
    assert create["stream"] is False
    assert "license" not in create and "quantize" not in create


def test_rest_api_refusal_is_an_error(
    runner: CliRunner,
    exported: Layout,
    no_ollama: Path,
    stand_in_server: tuple[str, type[StandInOllama]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, handler = stand_in_server
    handler.refuse_create = True
    monkeypatch.setenv("OLLAMA_HOST", url)
    result = invoke(runner, exported)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: Ollama at {url} refused the model: unsupported model format (HTTP 400)\n"
    )


def test_unreachable_ollama_host_is_an_error(
    runner: CliRunner, exported: Layout, no_ollama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("OLLAMA_HOST", f"http://127.0.0.1:{port}")
    result = invoke(runner, exported)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"error: cannot reach Ollama at OLLAMA_HOST=http://127.0.0.1:{port}"
    )


# --- neither ---------------------------------------------------------------------------


def test_without_ollama_prints_the_command_and_exits_0(
    runner: CliRunner, exported: Layout, no_ollama: Path
) -> None:
    # No --personas here: the name comes from what the modelfile stage recorded.
    result = invoke(runner, exported)
    assert result.exit_code == 0
    modelfile = exported.modelfile("cap")
    assert result.stdout == f"ollama create cap-test -f {modelfile}\n"
    assert result.stderr == (
        "warning: Ollama is not available here (no `ollama` on PATH, OLLAMA_HOST not set)\n"
        "to register the model later, run:\n"
    )


def test_without_ollama_require_fails(
    runner: CliRunner, exported: Layout, personas_file: Path, no_ollama: Path
) -> None:
    result = invoke(runner, exported, "--personas", str(personas_file), "--require")
    assert result.exit_code == 1
    modelfile = exported.modelfile("cap")
    assert result.stderr == (
        "error: Ollama is not available: no `ollama` on PATH and OLLAMA_HOST is not set\n"
        "hint: install Ollama (https://ollama.com) or set OLLAMA_HOST, then run: "
        f"ollama create cap-test -f {modelfile}\n"
    )


def test_missing_modelfile(runner: CliRunner, tmp_path: Path, no_ollama: Path) -> None:
    layout = make_persona_project(tmp_path, "cap", hf.PHI4MINI, PHI)
    result = invoke(runner, layout)
    assert result.exit_code == 1
    assert result.stderr == (
        f"error: {layout.modelfile('cap')} not found\n"
        "hint: run `persona-export modelfile --persona cap` first (or `make persona=cap "
        "modelfile`)\n"
    )
