"""`persona-export ollama`: the create call, exercised against a stand-in `ollama` executable
placed first on PATH and a stand-in Ollama REST server (/api/blobs, /api/create) on
127.0.0.1, which check what they receive. Ollama itself is not run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from persona_export.cli import app
from persona_export.layout import Layout
from tests import hf_chat_templates as hf
from tests import ollama_kit
from tests.modelfile_kit import PHI, layout_args, make_persona_project, write_personas
from tests.modelfile_parser import parse_modelfile
from tests.ollama_kit import StandInOllama, install_stand_in


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def personas_file(tmp_path: Path) -> Path:
    return write_personas(tmp_path / "personas.toml", ollama_kit.PERSONAS)


@pytest.fixture
def exported(tmp_path: Path, personas_file: Path) -> Layout:
    """A project whose Modelfile is written and verified (see ollama_kit.make_exported)."""
    return ollama_kit.make_exported(tmp_path / "project", personas_file)


@pytest.fixture
def no_ollama(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No `ollama` on PATH (the folder returned), OLLAMA_HOST unset, nothing at Ollama's
    default address (see ollama_kit.without_ollama)."""
    return ollama_kit.without_ollama(tmp_path, monkeypatch)


def invoke(runner: CliRunner, layout: Layout, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["ollama", "--persona", "cap", *layout_args(layout), *args])


# --- the ollama CLI --------------------------------------------------------------------


def test_registers_with_the_ollama_cli(
    runner: CliRunner, exported: Layout, personas_file: Path, no_ollama: Path, tmp_path: Path
) -> None:
    record = tmp_path / "record.json"
    install_stand_in(no_ollama, record)
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
    install_stand_in(no_ollama, record)
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
    install_stand_in(no_ollama, tmp_path / "record.json")
    monkeypatch.setenv("STAND_IN_FAIL", "1")
    result = invoke(runner, exported)
    assert result.exit_code == 1
    assert result.stderr.startswith(
        "error: ollama create failed with exit code 1:\nError: unsupported architecture\n"
    )


# --- the REST API ----------------------------------------------------------------------


@pytest.fixture
def stand_in_server() -> Iterator[tuple[str, type[StandInOllama]]]:
    with ollama_kit.stand_in_server() as served:
        yield served


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
