"""`persona-export doctor` on a machine where things are missing."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from persona_export.cli import app

runner = CliRunner()


def test_doctor_reports_missing_tools_with_their_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSONA_EXPORT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PERSONA_EXPORT_VENDOR_DIR", str(tmp_path / "vendor"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))  # no go, no ollama, no cmake
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 1
    lines = {line.split()[1]: line for line in result.stdout.splitlines()}
    assert (
        lines["llama-quantize"].startswith("MISS") and "-> make vendor" in lines["llama-quantize"]
    )
    assert lines["llama.cpp-lock"].startswith("ok")  # the lock file itself is present
    assert lines["go"].startswith("warn") and "apt-get install golang-go" in lines["go"]
    assert lines["ollama-cli"].startswith("warn") and "OLLAMA_HOST" in lines["ollama-cli"]
    assert lines["cmake"].startswith("MISS")
    assert lines["torch"].startswith("ok")
    assert "missing: " in result.output


def test_doctor_sees_ollama_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:11434")
    from persona_export.doctor import run_checks

    ollama = next(c for c in run_checks() if c.name == "ollama-cli")
    assert ollama.ok and "OLLAMA_HOST=http://127.0.0.1:11434" in ollama.detail
