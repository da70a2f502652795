"""Time limits of llama-server's completions (llamacpp/server.py): completions stream, so a
slow but steady answer is never cut by a fixed timeout; a server that stops sending tokens,
or an answer far slower than the speed measured before it, fails with an error that names
the server log, and that log exists once the server is gone. A stand-in server streams the
events llama-server's /completion sends."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from persona_export.errors import ExternalToolError
from persona_export.llamacpp import server as server_module
from persona_export.llamacpp import vendor
from persona_export.llamacpp.server import Completion, SpeedLimits


def _stand_in(folder: Path, *, tokens: int, delay: float, stall_after: int | None = None) -> Path:
    """A server that answers /health, and /completion with ``tokens`` events ``delay``
    seconds apart (stalling for a minute after ``stall_after`` of them), then the last event
    with llama-server's fields; it prints to its log on start."""
    script = folder / "stand-in-llama-server"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import http.server, json, sys, time
            args = sys.argv[1:]
            port = int(args[args.index("--port") + 1])
            print("stand-in llama-server listening", flush=True)

            class Handler(http.server.BaseHTTPRequestHandler):
                protocol_version = "HTTP/1.0"

                def do_GET(self):
                    self.send_response(200)
                    self.end_headers()
                    self.wfile.write(b"{{}}")

                def do_POST(self):
                    self.rfile.read(int(self.headers["Content-Length"]))
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for i in range({tokens}):
                        if i == {-1 if stall_after is None else stall_after}:
                            time.sleep(60)
                        event = {{"content": "t%d " % i, "stop": False}}
                        self.wfile.write(b"data: " + json.dumps(event).encode() + b"\\n\\n")
                        self.wfile.flush()
                        time.sleep({delay})
                    last = {{
                        "content": "", "stop": True, "stop_type": "limit", "stopping_word": "",
                        "tokens_predicted": {tokens},
                        "timings": {{"prompt_n": 12, "prompt_per_second": 240.0,
                                     "predicted_per_second": 8.5}},
                    }}
                    self.wfile.write(b"data: " + json.dumps(last).encode() + b"\\n\\n")

                def log_message(self, *args):
                    pass

            http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
            """
        ),
        encoding="utf-8",
    )
    script.chmod(0o755)
    return script


def _serve(monkeypatch: pytest.MonkeyPatch, script: Path) -> None:
    monkeypatch.setattr(vendor, "tool", lambda name: script)


def test_a_slow_steady_answer_ends_on_its_token_limit_not_a_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _serve(monkeypatch, _stand_in(tmp_path, tokens=12, delay=0.1))
    monkeypatch.setattr(server_module, "REQUEST_TIMEOUT_S", 0.3)  # what a fixed timeout did
    log = tmp_path / "gguf" / "verify.llama-server.log"
    with server_module.llama_server(tmp_path / "x.gguf", log_file=log) as server:
        done = server.complete("prompt", stop=[], n_predict=12)
    assert done.text == "".join(f"t{i} " for i in range(12))
    assert (done.stop_type, done.tokens_predicted) == ("limit", 12)
    assert done.seconds > 1.0  # longer than the fixed timeout, and not cut
    assert (done.prompt_per_second, done.predicted_per_second) == (240.0, 8.5)
    assert log.read_text(encoding="utf-8") == "stand-in llama-server listening\n"
    assert [p.name for p in log.parent.iterdir()] == [log.name]  # no temporary left


def test_limits_come_from_the_measured_speed() -> None:
    first = SpeedLimits()
    assert first.stall_s(100) == server_module.FIRST_STALL_S
    assert first.total_s(100, 384) is None
    measured = first.measured(Completion("x", "limit", "", 384, 50, 250.0, 10.0, 40.0))
    slack, floor = server_module.SLACK, server_module.MIN_STALL_S
    assert measured.stall_s(500) == pytest.approx(floor + slack * (500 / 250 + 1 / 10))
    assert measured.total_s(500, 384) == pytest.approx(floor + slack * (2 + 38.4))
    # an answer that measured no generation speed (one token) keeps the limits it had
    assert measured.measured(Completion("", "eos", "", 1, 50, 250.0, 0.0, 0.1)) == measured


def test_a_stalled_server_fails_naming_a_log_that_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _serve(monkeypatch, _stand_in(tmp_path, tokens=10, delay=0.01, stall_after=2))
    monkeypatch.setattr(server_module, "MIN_STALL_S", 1.0)
    log = tmp_path / "gguf" / "verify.llama-server.log"
    limits = SpeedLimits(prompt_per_second=1e6, predicted_per_second=1e6)
    with (
        pytest.raises(ExternalToolError) as failed,
        server_module.llama_server(tmp_path / "x.gguf", log_file=log) as server,
    ):
        server.complete("prompt", stop=[], n_predict=10, limits=limits, prompt_tokens=5)
    assert failed.value.message.startswith(
        "llama-server /completion sent no token for 1.0 s (2 tokens so far): the server is stuck"
    )
    assert failed.value.hint == f"see the server log {log}"
    assert log.read_text(encoding="utf-8") == "stand-in llama-server listening\n"


def test_an_answer_far_slower_than_measured_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _serve(monkeypatch, _stand_in(tmp_path, tokens=20, delay=0.1))
    monkeypatch.setattr(server_module, "MIN_STALL_S", 0.5)
    monkeypatch.setattr(server_module, "SLACK", 1.0)
    limits = SpeedLimits(prompt_per_second=1000.0, predicted_per_second=100.0)
    log = tmp_path / "verify.llama-server.log"
    with (
        pytest.raises(ExternalToolError) as failed,
        server_module.llama_server(tmp_path / "x.gguf", log_file=log) as server,
    ):
        server.complete("prompt", stop=[], n_predict=20, limits=limits, prompt_tokens=10)
    assert failed.value.message.startswith(
        "llama-server /completion took more than 0.7 s, the limit set from this model's "
        "measured speed"
    )
    assert log.is_file()
