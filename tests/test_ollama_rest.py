"""REST registration against servers that answer badly or not at all (issue 11, item 9), and
Ollama's default address (issue 16): a stand-in server on 127.0.0.1 (tests/ollama_kit.py),
never a real Ollama."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from persona_export.cli import app
from persona_export.layout import Layout
from persona_export.ollama import registry
from tests import ollama_kit
from tests.modelfile_kit import layout_args, write_personas
from tests.ollama_kit import StandInOllama


@pytest.fixture
def exported(tmp_path: Path) -> Layout:
    personas = write_personas(tmp_path / "personas.toml", ollama_kit.PERSONAS)
    return ollama_kit.make_exported(tmp_path / "project", personas)


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No `ollama` CLI, OLLAMA_HOST unset, nothing at the default address."""
    return ollama_kit.without_ollama(tmp_path, monkeypatch)


@pytest.fixture
def server(bin_dir: Path) -> Iterator[tuple[str, type[StandInOllama]]]:
    with ollama_kit.stand_in_server() as served:
        yield served


def invoke(layout: Layout, *args: str) -> Result:
    return CliRunner().invoke(app, ["ollama", "--persona", "cap", *layout_args(layout), *args])


def _one_error(result: Result) -> list[str]:
    """The error and hint lines; asserts there is nothing else (no traceback)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("hint: "), (
        result.stderr
    )
    assert "internal error" not in result.stderr
    return lines


# --- what /api/create answers ----------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (
            (200, b'{"status":"failed"}', "application/json"),
            "did not confirm the model: its answer ended with status 'failed', not 'success'",
        ),
        (
            (
                200,
                b'{"status":"pulling manifest"}\n{"error":"no space left"}\n',
                "application/x-ndjson",
            ),
            "refused the model: no space left (HTTP 200)",
        ),
        ((200, b"{}", "application/json"), "did not confirm the model: its answer ended with"),
        (
            (200, b"<html>proxy login</html>", "text/html"),
            "answered /api/create with something that is not Ollama's JSON (HTTP 200, "
            "text/html): '<html>proxy login</html>'",
        ),
        (
            (502, b"Bad Gateway", "text/plain"),
            "answered /api/create with something that is not Ollama's JSON (HTTP 502, "
            "text/plain): 'Bad Gateway'",
        ),
    ],
)
def test_create_is_registered_only_on_success(
    exported: Layout,
    server: tuple[str, type[StandInOllama]],
    monkeypatch: pytest.MonkeyPatch,
    reply: tuple[int, bytes, str],
    message: str,
) -> None:
    url, handler = server
    handler.create_reply = reply
    monkeypatch.setenv("OLLAMA_HOST", url)
    result = invoke(exported)
    assert result.exit_code == 1
    error, hint = _one_error(result)
    assert error.startswith(f"error: Ollama at {url} {message}")
    assert "registered" not in result.stdout + result.stderr
    assert len(handler.creates) == 1


def test_blob_already_there_is_not_uploaded_again(
    exported: Layout, server: tuple[str, type[StandInOllama]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = server
    monkeypatch.setenv("OLLAMA_HOST", url)
    assert invoke(exported).exit_code == 0
    uploaded = dict(handler.blobs)
    handler.blobs.clear()
    handler.blobs.update({k: b"" for k in uploaded})  # known by digest; an upload would fill it
    again = invoke(exported)
    assert again.exit_code == 0, again.output
    assert all(v == b"" for v in handler.blobs.values())
    assert len(handler.creates) == 2 and handler.problems == []


# --- addresses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["http://127.0.0.1:notaport", "http://[::1", "ftp://127.0.0.1:11434", "http://"]
)
def test_malformed_ollama_host_is_a_usage_error(
    exported: Layout, bin_dir: Path, monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", host)
    result = invoke(exported)
    assert result.exit_code == 2
    error, hint = _one_error(result)
    assert error.startswith(f"error: OLLAMA_HOST={host!r} is not an address Ollama can be at: ")
    assert hint == (
        "hint: set OLLAMA_HOST to host[:port] or http(s)://host[:port], e.g. http://127.0.0.1:11434"
    )


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:11434"),
        ("localhost:8080", "http://localhost:8080"),
        ("http://example.com", "http://example.com:80"),
        ("https://example.com/ollama/", "https://example.com:443/ollama"),
        ("[::1]:5000", "http://[::1]:5000"),
        ("0.0.0.0", "http://0.0.0.0:11434"),
    ],
)
def test_ollama_host_forms(value: str, url: str) -> None:
    assert registry.parse_host(value) == url


def test_default_address_is_used_when_it_answers(
    exported: Layout, server: tuple[str, type[StandInOllama]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, handler = server
    monkeypatch.setattr(registry, "DEFAULT_HOST", url)
    result = invoke(exported)
    assert result.exit_code == 0, result.output
    assert result.stdout == "cap-test\n"
    assert f"with the Ollama REST API at {url} (Ollama's default address)" in result.stderr
    assert len(handler.creates) == 1 and handler.problems == []


def test_nothing_at_the_default_address_means_no_ollama(exported: Layout, bin_dir: Path) -> None:
    started = time.monotonic()
    result = invoke(exported)
    assert result.exit_code == 0
    assert result.stdout == f"ollama create cap-test -f {exported.modelfile('cap')}\n"
    assert time.monotonic() - started < 5


def test_probe_says_whether_a_server_answers_and_its_version(
    server: tuple[str, type[StandInOllama]],
) -> None:
    url, handler = server
    found = registry.probe(url)
    assert found.answers and found.version == "0.9.9" and found.host == url
    gone = registry.probe(ollama_kit.closed_port_url())
    assert not gone.answers and gone.version is None and "connection refused" in gone.error
    handler.hang = {"/api/version"}
    started = time.monotonic()
    silent = registry.probe(url, timeout=0.5)
    assert not silent.answers and "did not answer within 0.5 s" in silent.error
    assert time.monotonic() - started < 5


def test_doctor_says_whether_ollama_answers(
    server: tuple[str, type[StandInOllama]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from persona_export.doctor import run_checks

    url, _ = server
    monkeypatch.setattr(registry, "DEFAULT_HOST", url)
    check = next(c for c in run_checks() if c.name == "ollama-server")
    assert check.ok and check.detail == f"Ollama 0.9.9 answers at {url} (Ollama's default address)"
    monkeypatch.setenv("OLLAMA_HOST", ollama_kit.closed_port_url())
    check = next(c for c in run_checks() if c.name == "ollama-server")
    assert not check.ok and not check.required
    assert check.detail.startswith(f"nothing answers at OLLAMA_HOST={os.environ['OLLAMA_HOST']}")


# --- servers that never answer ---------------------------------------------------------


def _run_cli(layout: Layout, env: dict[str, str], limit: float = 60) -> subprocess.CompletedProcess:
    """`persona-export ollama` in a process of its own (a hang fails the test, it does not
    hang the suite)."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "persona_export",
            "ollama",
            "--persona",
            "cap",
            *layout_args(layout),
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=limit,
    )


def test_a_server_that_never_answers_create_times_out(
    exported: Layout, server: tuple[str, type[StandInOllama]]
) -> None:
    url, handler = server
    handler.hang = {"/api/create"}
    started = time.monotonic()
    done = _run_cli(exported, {"OLLAMA_HOST": url, "PERSONA_EXPORT_OLLAMA_TIMEOUT": "1"})
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < 30
    assert done.stderr.splitlines() == [
        f"error: Ollama at {url} did not answer /api/create within 1 s",
        "hint: check the Ollama server (its log), or allow it longer: "
        "PERSONA_EXPORT_OLLAMA_TIMEOUT=SECONDS (now 1)",
    ]


def test_a_server_that_never_accepts_times_out(exported: Layout, bin_dir: Path) -> None:
    with socket.socket() as listener:  # listens, never accepts: connections wait in the backlog
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        done = _run_cli(exported, {"OLLAMA_HOST": url, "PERSONA_EXPORT_OLLAMA_TIMEOUT": "1"})
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(f"error: Ollama at {url} did not answer /api/blobs within 1 s")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("value", ["0", "-5", "soon", "nan", "inf"])
def test_timeout_setting_is_checked(
    exported: Layout,
    server: tuple[str, type[StandInOllama]],
    monkeypatch: pytest.MonkeyPatch,
    value: str,
) -> None:
    url, handler = server
    monkeypatch.setenv("OLLAMA_HOST", url)
    monkeypatch.setenv("PERSONA_EXPORT_OLLAMA_TIMEOUT", value)
    result = invoke(exported)
    assert result.exit_code == 2
    error, hint = _one_error(result)
    assert error == (
        f"error: PERSONA_EXPORT_OLLAMA_TIMEOUT={value!r} is not a number of seconds above 0"
    )
    assert handler.creates == []
