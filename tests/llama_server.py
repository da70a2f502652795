"""Run the vendored llama-server on a GGUF for a test and ask it to render chat templates."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest

START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_binary() -> Path:
    """The built llama-server; skips the test when the vendored tools are not built."""
    from persona_export import vendor
    from persona_export.errors import ToolMissingError

    try:
        return vendor.tool("llama-server")
    except ToolMissingError as exc:
        pytest.skip(f"{exc.message} ({exc.hint})")


@contextmanager
def llama_server(
    gguf: Path, log_dir: Path, *, chat_template_file: Path | None = None
) -> Iterator[str]:
    """Serve ``gguf`` on 127.0.0.1 (a free port) with ``--jinja``; yield its base URL.

    Waits for /health (bounded); the server is always stopped on the way out.
    """
    port = _free_port()
    args = [
        str(server_binary()),
        "--model",
        str(gguf),
        "--jinja",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--ctx-size",
        "256",
        "--threads",
        "1",
        "--parallel",
        "1",
        "--no-webui",
    ]
    if chat_template_file is not None:
        args += ["--chat-template-file", str(chat_template_file)]
    log_path = log_dir / f"llama-server-{port}.log"
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"llama-server exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llama-server did not become healthy:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def apply_template(url: str, messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt llama-server renders for ``messages`` (POST /apply-template)."""
    body = json.dumps({"messages": [dict(m) for m in messages]}).encode()
    request = urllib.request.Request(
        f"{url}/apply-template", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        return str(json.loads(response.read())["prompt"])
