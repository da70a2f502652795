"""The vendored llama-server, started for a check and always stopped: chat templates rendered
by llama.cpp's own Jinja engine, its tokenizer, and greedy completions with stop words.

The server listens on 127.0.0.1 on a free port, is waited for on ``/health`` with a deadline,
and every request has a timeout. It is started with ``--special`` so that generated special
tokens come back as text and stop words such as ``<|im_end|>`` match, as they do in Ollama
(whose runner detokenizes with special tokens rendered). Its log is written beside where it
is asked for and renamed into place when the server stops (never through a link).

Completions stream (one event per token), so their time limits are not one fixed timeout:
:class:`SpeedLimits` allows a stall (no token) of :data:`FIRST_STALL_S` until the model's
speed on this machine has been measured by a first answer, then limits from that speed,
generous enough that a model that does not stop ends on its token limit (``n_predict``),
not on a timeout.
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
from persona_export.proc import program_log, start, stop, tail

START_TIMEOUT_S = 120.0
REQUEST_TIMEOUT_S = 120.0  # requests that generate nothing (templates, tokens)
# A whole answer asked for without streaming (``return_tokens``) before the speed is known:
# this much on top of REQUEST_TIMEOUT_S per token asked for (a loaded CPU was measured at
# 2.7 s per token on the 135 M demo model: 0.37 tokens/s with 2 threads on 2 busy cores).
SECONDS_PER_TOKEN = 4.0
STOP_TIMEOUT_S = 10.0
# Before the speed is known: the longest wait for a token (the first one includes reading
# the prompt), whatever the model; a server that sends nothing for this long is stuck.
FIRST_STALL_S = 600.0
MIN_STALL_S = 15.0  # floor of a measured stall limit (scheduling hiccups, other load)
SLACK = 4.0  # measured times are multiplied by this (a shared machine varies)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Completion:
    """What ``/completion`` returned: the text and why generation ended (``eos``, ``word``
    or ``limit``), with the stop word that matched, and the speeds the server measured."""

    text: str
    stop_type: str
    stopping_word: str
    tokens_predicted: int
    prompt_tokens: int = 0
    prompt_per_second: float = 0.0
    predicted_per_second: float = 0.0
    seconds: float = 0.0
    tokens: tuple[int, ...] = ()  # the generated ids, when asked for (``return_tokens``)


@dataclass(frozen=True)
class SpeedLimits:
    """Time limits of one completion, from the model's measured speed (``None``: not
    measured yet): the longest wait for a token (``stall_s``) and for the whole answer."""

    prompt_per_second: float | None = None
    predicted_per_second: float | None = None

    def measured(self, done: Completion) -> SpeedLimits:
        """The limits once ``done`` has measured the speeds (unchanged when it could not:
        an answer of one token has no generation speed)."""
        if done.predicted_per_second > 0 and done.prompt_per_second > 0:
            return SpeedLimits(done.prompt_per_second, done.predicted_per_second)
        return self

    def stall_s(self, prompt_tokens: int) -> float:
        """Seconds without a token before the server counts as stuck (the first token comes
        after the whole prompt is read)."""
        if self.prompt_per_second is None or self.predicted_per_second is None:
            return FIRST_STALL_S
        read = prompt_tokens / self.prompt_per_second
        return MIN_STALL_S + SLACK * (read + 1 / self.predicted_per_second)

    def total_s(self, prompt_tokens: int, n_predict: int) -> float | None:
        """Seconds the whole answer may take at most (None before the speed is known)."""
        if self.prompt_per_second is None or self.predicted_per_second is None:
            return None
        expected = prompt_tokens / self.prompt_per_second + n_predict / self.predicted_per_second
        return MIN_STALL_S + SLACK * expected

    def to_json(self) -> dict[str, float | None]:
        return {
            "prompt_tokens_per_second": self.prompt_per_second,
            "tokens_per_second": self.predicted_per_second,
        }


@dataclass(frozen=True)
class LlamaServer:
    """A running llama-server: its base URL, log file and process id."""

    url: str
    log_path: Path
    request_timeout_s: float = REQUEST_TIMEOUT_S
    pid: int = 0

    def _post(
        self, path: str, body: Mapping[str, Any], timeout: float | None = None
    ) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(
                request, timeout=timeout or self.request_timeout_s
            ) as response:
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

    def apply_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        tools: Sequence[Mapping[str, Any]] | None = None,
    ) -> str:
        """The prompt the GGUF's chat template gives ``messages`` (llama.cpp's Jinja engine,
        with the generation prompt added), with ``tools`` offered (OpenAI's shapes)."""
        body: dict[str, Any] = {"messages": [dict(m) for m in messages]}
        if tools:
            body["tools"] = [dict(t) for t in tools]
        data = self._post("/apply-template", body)
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
        limits: SpeedLimits | None = None,
        prompt_tokens: int = 0,
        return_tokens: bool = False,
    ) -> Completion:
        """Greedy completion of ``prompt`` (text, or token ids taken as they are; temperature
        0) that ends on an end-of-generation token, one of ``stop``, or after ``n_predict``
        tokens, streamed token by token within ``limits`` (see :class:`SpeedLimits`;
        ``prompt_tokens``: the prompt's length, for them). Raises ExternalToolError naming the
        server log when a limit is passed.

        ``return_tokens``: the completion carries the generated ids too. Those come whole
        from one answer that is not streamed (a streamed event carries only the token it
        sends, and llama-server holds back a token that ends inside a UTF-8 character), so
        only a total limit applies: :data:`REQUEST_TIMEOUT_S` plus :data:`SECONDS_PER_TOKEN`
        per token asked for, or the measured one when that is longer."""
        limits = limits or SpeedLimits()
        sent: str | list[int] = prompt if isinstance(prompt, str) else [int(i) for i in prompt]
        if not isinstance(sent, str):
            prompt_tokens = prompt_tokens or len(sent)
        body = {
            "prompt": sent,
            "return_tokens": return_tokens,
            "n_predict": n_predict,
            "temperature": 0.0,
            "top_k": 1,
            "seed": seed,
            "stop": list(stop),
            "cache_prompt": False,
            "stream": not return_tokens,
        }
        started = time.monotonic()
        if return_tokens:
            # no stall can be seen without streaming: a generous whole-answer limit, never
            # tighter than the measured one (a shared machine's speed varies between answers)
            total = REQUEST_TIMEOUT_S + SECONDS_PER_TOKEN * n_predict
            total = max(total, limits.total_s(prompt_tokens, n_predict) or 0.0)
            data = self._post("/completion", body, timeout=total)
            text = str(data.get("content", ""))
        else:
            text, data = self._stream(
                body, limits.stall_s(prompt_tokens), limits.total_s(prompt_tokens, n_predict)
            )
        timings = data.get("timings") or {}
        return Completion(
            text=text,
            stop_type=str(data.get("stop_type", "")),
            stopping_word=str(data.get("stopping_word", "")),
            tokens_predicted=int(data.get("tokens_predicted", 0)),
            prompt_tokens=int(timings.get("prompt_n", 0) or 0),
            prompt_per_second=float(timings.get("prompt_per_second", 0.0) or 0.0),
            predicted_per_second=float(timings.get("predicted_per_second", 0.0) or 0.0),
            seconds=time.monotonic() - started,
            tokens=tuple(int(t) for t in data.get("tokens") or ()),
        )

    def _stream(
        self, body: Mapping[str, Any], stall_s: float, total_s: float | None
    ) -> tuple[str, dict[str, Any]]:
        """POST ``/completion`` and read its events ("data: {...}" lines) until the last one
        (``"stop": true``); returns the text and that last event. ``stall_s`` bounds each
        wait for the next event (the socket timeout), ``total_s`` the whole answer."""
        request = urllib.request.Request(
            f"{self.url}/completion",
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json"},
        )
        hint = f"see the server log {self.log_path}"
        started = time.monotonic()
        parts: list[str] = []
        try:
            with urllib.request.urlopen(request, timeout=stall_s) as response:
                for raw in response:
                    line = raw.strip()
                    if not line.startswith(b"data:"):
                        continue
                    event = json.loads(line[len(b"data:") :])
                    if not isinstance(event, dict) or "error" in event:
                        raise ExternalToolError(f"llama-server /completion failed: {event}", hint)
                    parts.append(str(event.get("content", "")))
                    if event.get("stop"):
                        return "".join(parts), event
                    if total_s is not None and time.monotonic() - started > total_s:
                        raise ExternalToolError(
                            f"llama-server /completion took more than {total_s:.1f} s, the "
                            f"limit set from this model's measured speed ({len(parts)} tokens "
                            "so far)",
                            hint,
                        )
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            raise ExternalToolError(
                f"llama-server /completion answered HTTP {exc.code}: {detail}", hint
            ) from exc
        except TimeoutError as exc:
            raise ExternalToolError(
                f"llama-server /completion sent no token for {stall_s:.1f} s "
                f"({len(parts)} tokens so far): the server is stuck",
                hint,
            ) from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ExternalToolError(f"llama-server /completion failed: {exc}", hint) from exc
        raise ExternalToolError(
            "llama-server /completion ended without its last event (the server died?)", hint
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
    log_dir: Path | None = None,
    *,
    log_file: Path | None = None,
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
    ``chat_template_file`` replaces the GGUF's own chat template. The log goes to
    ``log_file``, else ``log_dir/llama-server-<port>.log`` (see the module docstring).
    ``parallel``: slots that decode concurrent requests in one batch, each with
    ``ctx_size`` tokens of context.
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
    if log_file is None:
        if log_dir is None:
            raise ValueError("llama_server needs log_dir or log_file")
        log_file = log_dir / f"llama-server-{port}.log"
    with program_log(log_file) as (log, writing):
        # its own process group, and SIGTERM when we die: it never outlives persona-export
        proc = start(
            args, what="llama-server", new_group=True, stdout=log, stderr=subprocess.STDOUT
        )
        server = LlamaServer(f"http://127.0.0.1:{port}", log_file, request_timeout_s, proc.pid)
        try:
            _wait_healthy(server, proc, gguf, writing, start_timeout_s)
            yield server
        finally:
            stop(proc, group=True, grace_s=STOP_TIMEOUT_S)


def _wait_healthy(
    server: LlamaServer,
    proc: subprocess.Popen[Any],
    gguf: Path,
    log_now: Path,
    start_timeout_s: float,
) -> None:
    """Wait until ``/health`` answers; raise (with the tail of the log, read where it is
    being written) when the server exits or the deadline passes."""
    log_path = server.log_path
    deadline = time.monotonic() + start_timeout_s
    while True:
        if proc.poll() is not None:
            raise ExternalToolError(
                f"llama-server exited with code {proc.returncode} while loading {gguf}:\n"
                f"{_log_tail(log_now)}",
                f"full log: {log_path}",
            )
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise ExternalToolError(
                f"llama-server did not answer /health within {start_timeout_s:.0f} s:\n"
                f"{_log_tail(log_now)}",
                f"full log: {log_path}",
            )
        time.sleep(0.1)
