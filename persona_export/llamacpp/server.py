"""The vendored llama-server, started for a check and always stopped: chat templates rendered
by llama.cpp's own Jinja engine, its tokenizer, and greedy completions with stop words.

The server listens on 127.0.0.1 on a free port, is waited for on ``/health`` with a deadline,
and every request has a timeout. It is started with ``--special`` so that generated special
tokens come back as text and stop words such as ``<|im_end|>`` match, as they do in Ollama
(whose runner detokenizes with special tokens rendered).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export.errors import ExternalToolError
from persona_export.llamacpp import vendor
from persona_export.proc import start, stop, tail

START_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 120.0
# A generation's own allowance on top, per token asked for: a loaded CPU was measured at
# 2.7 s per token on the 135 M demo model (0.37 tokens/s with 2 threads on 2 busy cores).
SECONDS_PER_TOKEN = 4.0


def generation_timeout(n_predict: int) -> float:
    """How long a request generating up to ``n_predict`` tokens may take."""
    return REQUEST_TIMEOUT_S + SECONDS_PER_TOKEN * n_predict


STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Completion:
    """What ``/completion`` returned: the text and why generation ended (``eos``, ``word``
    or ``limit``), with the stop word that matched."""

    text: str
    stop_type: str
    stopping_word: str
    tokens_predicted: int
    tokens: tuple[int, ...] = ()  # the generated ids, when asked for (``return_tokens``)


@dataclass(frozen=True)
class LlamaServer:
    """A running llama-server: its base URL, log file and process id."""

    url: str
    log_path: Path
    request_timeout_s: float = REQUEST_TIMEOUT_S
    pid: int = 0

    def _post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.request_timeout_s) as response:
                data = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            raise ExternalToolError(
                f"llama-server {path} answered HTTP {exc.code}: {detail}",
                f"see the server log {self.log_path}",
            ) from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ExternalToolError(
                f"llama-server {path} failed: {exc}", f"see the server log {self.log_path}"
            ) from exc
        if not isinstance(data, dict):
            raise ExternalToolError(f"llama-server {path} returned {type(data).__name__}")
        return data

    def apply_template(self, messages: Sequence[Mapping[str, str]]) -> str:
        """The prompt the GGUF's chat template gives ``messages`` (llama.cpp's Jinja engine,
        with the generation prompt added)."""
        data = self._post("/apply-template", {"messages": [dict(m) for m in messages]})
        return str(data["prompt"])

    def tokenize(self, text: str, *, add_special: bool = True) -> list[int]:
        """llama.cpp's token ids for ``text`` (special tokens parsed, BOS added when the
        model adds one and ``add_special``), as a runtime tokenizes a rendered prompt."""
        data = self._post(
            "/tokenize", {"content": text, "add_special": add_special, "parse_special": True}
        )
        return [int(t) for t in data["tokens"]]

    def complete(
        self,
        prompt: str | Sequence[int],
        *,
        stop: Sequence[str],
        n_predict: int,
        seed: int = 0,
        return_tokens: bool = False,
    ) -> Completion:
        """Greedy completion of ``prompt`` (text, or token ids taken as they are; temperature
        0) that ends on an end-of-generation token, one of ``stop``, or after ``n_predict``
        tokens. ``return_tokens``: the completion carries the generated ids too."""
        data = self._post(
            "/completion",
            {
                "prompt": prompt if isinstance(prompt, str) else [int(i) for i in prompt],
                "return_tokens": return_tokens,
                "n_predict": n_predict,
                "temperature": 0.0,
                "top_k": 1,
                "seed": seed,
                "stop": list(stop),
                "cache_prompt": False,
                "stream": False,
            },
        )
        return Completion(
            text=str(data.get("content", "")),
            stop_type=str(data.get("stop_type", "")),
            stopping_word=str(data.get("stopping_word", "")),
            tokens_predicted=int(data.get("tokens_predicted", 0)),
            tokens=tuple(int(t) for t in data.get("tokens") or ()),
        )

    def complete_many(
        self,
        prompts: Sequence[str | Sequence[int]],
        *,
        stop: Sequence[str],
        n_predict: int,
        workers: int = 1,
    ) -> list[Completion]:
        """:meth:`complete` for each prompt, ``workers`` requests at a time (a server started
        with as many ``parallel`` slots batches them), in the prompts' order."""
        from concurrent.futures import ThreadPoolExecutor

        if workers <= 1:
            return [self.complete(p, stop=stop, n_predict=n_predict) for p in prompts]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(
                pool.map(lambda p: self.complete(p, stop=stop, n_predict=n_predict), prompts)
            )


def _log_tail(log_path: Path) -> str:
    try:
        return tail(log_path.read_text(encoding="utf-8", errors="replace"), 15)
    except OSError:
        return ""


@contextmanager
def llama_server(
    gguf: Path,
    log_dir: Path,
    *,
    ctx_size: int = 2048,
    threads: int | None = None,
    start_timeout_s: float = START_TIMEOUT_S,
    request_timeout_s: float = REQUEST_TIMEOUT_S,
    chat_template_file: Path | None = None,
    parallel: int = 1,
) -> Iterator[LlamaServer]:
    """Serve ``gguf`` with the vendored llama-server (``--jinja``, ``--special``) on a free
    127.0.0.1 port; yield a :class:`LlamaServer` once ``/health`` answers.

    The server runs in a process group of its own with a parent-death signal (it dies with
    persona-export, even on SIGKILL); on the way out, whatever happens, the whole group is
    sent SIGTERM (SIGKILL after ``STOP_TIMEOUT_S``) and the server is reaped. Raises
    ToolMissingError when the server is not built, ExternalToolError when it exits or does
    not become healthy within ``start_timeout_s`` (with the tail of its log).
    ``chat_template_file`` replaces the GGUF's own chat template. ``parallel``: slots that
    decode concurrent requests in one batch, each with ``ctx_size`` tokens of context.
    """
    binary = vendor.tool("llama-server")
    port = free_port()
    args = [
        str(binary),
        "--model",
        str(gguf),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--jinja",
        "--special",
        "--ctx-size",
        str(ctx_size * parallel),
        "--threads",
        str(threads or min(4, os.cpu_count() or 1)),
        "--parallel",
        str(parallel),
        "--no-webui",
        "--no-warmup",
    ]
    if chat_template_file is not None:
        args += ["--chat-template-file", str(chat_template_file)]
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"llama-server-{port}.log"
    with open(log_path, "wb") as log:
        # its own process group, and SIGTERM when we die: it never outlives persona-export
        proc = start(
            args, what="llama-server", new_group=True, stdout=log, stderr=subprocess.STDOUT
        )
    server = LlamaServer(f"http://127.0.0.1:{port}", log_path, request_timeout_s, proc.pid)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise ExternalToolError(
                    f"llama-server exited with code {proc.returncode} while loading {gguf}:\n"
                    f"{_log_tail(log_path)}",
                    f"full log: {log_path}",
                )
            try:
                with urllib.request.urlopen(f"{server.url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise ExternalToolError(
                    f"llama-server did not answer /health within {start_timeout_s:.0f} s:\n"
                    f"{_log_tail(log_path)}",
                    f"full log: {log_path}",
                )
            time.sleep(0.1)
        yield server
    finally:
        stop(proc, group=True, grace_s=STOP_TIMEOUT_S)
