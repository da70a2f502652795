"""`persona-export ollama` registers only what persona-export wrote and verify passed
(issue 11, items 5 and 6): a Modelfile whose manifest matches its content, FROM the persona's
own GGUF whose content matches too, and a passing verify report of exactly those files;
`--no-verify` and `--force` relax that, and the output says so. Checked against the
stand-in `ollama` executable and the stand-in REST server of tests/ollama_kit.py."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from persona_export.cli import app
from persona_export.layout import Layout
from tests import ollama_kit
from tests.modelfile_kit import layout_args, write_personas
from tests.ollama_kit import StandInOllama, install_stand_in, write_verify_report


@pytest.fixture
def exported(tmp_path: Path) -> Layout:
    personas = write_personas(tmp_path / "personas.toml", ollama_kit.PERSONAS)
    return ollama_kit.make_exported(tmp_path / "project", personas)


@pytest.fixture
def record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in `ollama` CLI is the only one on PATH; it writes what it saw here."""
    bin_dir = ollama_kit.without_ollama(tmp_path, monkeypatch)
    path = tmp_path / "record.json"
    install_stand_in(bin_dir, path)
    return path


@pytest.fixture
def server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, type[StandInOllama]]]:
    """No `ollama` CLI; OLLAMA_HOST names the stand-in REST server."""
    ollama_kit.without_ollama(tmp_path, monkeypatch)
    with ollama_kit.stand_in_server() as (url, handler):
        monkeypatch.setenv("OLLAMA_HOST", url)
        yield url, handler


def invoke(layout: Layout, *args: str) -> Result:
    return CliRunner().invoke(app, ["ollama", "--persona", "cap", *layout_args(layout), *args])


def _rewrite_keeping_mtime(path: Path, data: bytes) -> None:
    """Replace the content of ``path`` and put its modification time back (size+mtime
    checks would then take the file for unchanged)."""
    st = path.stat()
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _errors(result: Result) -> list[str]:
    return result.stderr.splitlines()


# --- FROM ------------------------------------------------------------------------------


def test_from_outside_the_persona_is_never_registered(
    exported: Layout, record: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n", encoding="utf-8")
    modelfile = exported.modelfile("cap")
    text = modelfile.read_text(encoding="utf-8").replace("FROM ./cap-Q4_K_M.gguf", f"FROM {secret}")
    modelfile.write_text(text, encoding="utf-8")
    for flags in ((), ("--force",), ("--no-verify",)):
        result = invoke(exported, *flags)
        assert result.exit_code == 1, (flags, result.output)
        assert _errors(result) == [
            f"error: {modelfile}: FROM names {secret}, which is not a GGUF of persona cap "
            f"({exported.gguf_dir('cap')}/cap-<TYPE>.gguf); it is not registered",
            "hint: regenerate the Modelfile: persona-export modelfile --persona cap",
        ]
        assert "registered" not in result.stdout
    assert not record.exists()  # the CLI was never asked


def test_from_outside_the_persona_is_not_uploaded(
    exported: Layout, server: tuple[str, type[StandInOllama]], tmp_path: Path
) -> None:
    _, handler = server
    secret = tmp_path / "secret.gguf"
    secret.write_bytes(b"GGUF" + b"secret" * 100)
    modelfile = exported.modelfile("cap")
    text = modelfile.read_text(encoding="utf-8").replace("./cap-Q4_K_M.gguf", str(secret))
    modelfile.write_text(text, encoding="utf-8")
    result = invoke(exported, "--force")
    assert result.exit_code == 1
    assert "which is not a GGUF of persona cap" in result.stderr
    assert handler.blobs == {} and handler.creates == []


def test_a_symlinked_gguf_is_not_the_personas_own(
    exported: Layout, record: Path, tmp_path: Path
) -> None:
    gguf = exported.gguf("cap", "Q4_K_M")
    outside = tmp_path / "outside.gguf"
    gguf.rename(outside)
    gguf.symlink_to(outside)
    result = invoke(exported, "--force")
    assert result.exit_code == 1
    assert f"error: {gguf} is a symbolic link" in result.stderr
    assert not record.exists()


# --- the manifest ----------------------------------------------------------------------


def test_edited_modelfile_is_refused_even_with_its_mtime_restored(
    exported: Layout, record: Path
) -> None:
    modelfile = exported.modelfile("cap")
    edited = modelfile.read_bytes().replace(b"Captain Test", b"Captain Evil")
    _rewrite_keeping_mtime(modelfile, edited)
    result = invoke(exported)
    assert result.exit_code == 1
    assert _errors(result) == [
        f"error: {modelfile} changed since persona-export wrote it (its content does not match "
        "Modelfile.manifest.json); it is not registered",
        "hint: regenerate it: persona-export modelfile --persona cap (or register it as it is "
        "with --force)",
    ]
    assert not record.exists()

    forced = invoke(exported, "--force")
    assert forced.exit_code == 0, forced.output
    assert forced.stdout == "cap-test\n"
    assert (
        "warning: registering without checking the Modelfile's manifest or the verify report "
        "(--force)"
    ) in forced.stderr
    assert json.loads(record.read_text())["modelfile"].encode() == edited


def test_modelfile_without_manifest_is_refused(exported: Layout, record: Path) -> None:
    manifest = exported.gguf_dir("cap") / "Modelfile.manifest.json"
    manifest.unlink()
    result = invoke(exported)
    assert result.exit_code == 1
    assert _errors(result)[0] == (
        f"error: {exported.modelfile('cap')} has no manifest ({manifest}): persona-export did "
        "not write it; it is not registered"
    )
    assert not record.exists()


def test_gguf_with_a_flipped_byte_and_its_mtime_restored_is_refused(
    exported: Layout, record: Path
) -> None:
    gguf = exported.gguf("cap", "Q4_K_M")
    data = bytearray(gguf.read_bytes())
    data[-1000] ^= 0x01
    _rewrite_keeping_mtime(gguf, bytes(data))
    result = invoke(exported)
    assert result.exit_code == 1
    assert _errors(result) == [
        f"error: {gguf} changed since the Modelfile was written (its content does not match "
        "Modelfile.manifest.json); it is not registered",
        "hint: re-run the export: persona-export export --persona cap (or register it as it is "
        "with --force)",
    ]
    assert not record.exists()


# --- the verify report -----------------------------------------------------------------


def test_without_a_verify_report_nothing_is_registered(exported: Layout, record: Path) -> None:
    report = exported.verify_report("cap")
    report.unlink()
    result = invoke(exported)
    assert result.exit_code == 1
    assert _errors(result) == [
        f"error: cap has not been verified ({report} not found); only a verified export is "
        "registered",
        "hint: run `persona-export verify --persona cap` first, or pass --no-verify to register "
        "it unverified",
    ]
    assert not record.exists()

    unverified = invoke(exported, "--no-verify")
    assert unverified.exit_code == 0, unverified.output
    assert unverified.stdout == "cap-test\n"
    assert "warning: registering without a passing verify report (--no-verify)" in (
        unverified.stderr
    )
    assert record.exists()


def test_a_failed_verify_is_not_registered(exported: Layout, record: Path) -> None:
    report = write_verify_report(exported, "cap", passed=False)
    result = invoke(exported)
    assert result.exit_code == 1
    assert _errors(result)[0] == (
        f"error: the last verify of cap failed ({report}); it is not registered"
    )
    assert not record.exists()


def test_a_verify_report_older_than_the_modelfile_is_not_enough(
    exported: Layout, record: Path
) -> None:
    from persona_export.stages.modelfile import ModelfileConfig
    from persona_export.stages.modelfile import run as write_modelfile

    report = exported.verify_report("cap")
    other = write_personas(
        exported.gguf_base.parent / "other.toml", '[personas.cap]\nsystem = "Changed."\n'
    )
    write_modelfile(ModelfileConfig("cap", layout=exported, personas_file=other))
    result = invoke(exported)
    assert result.exit_code == 1
    assert _errors(result)[0] == (
        f"error: {report} is older than the Modelfile (it verified other content); it is not "
        "registered"
    )
    assert not record.exists()


def test_a_verify_report_older_than_the_gguf_is_not_enough(
    exported: Layout, server: tuple[str, type[StandInOllama]]
) -> None:
    from persona_export.stages.modelfile import ModelfileConfig
    from persona_export.stages.modelfile import run as write_modelfile

    _, handler = server
    gguf = exported.gguf("cap", "Q4_K_M")
    with open(gguf, "ab") as fh:
        fh.write(b"\0" * 64)  # a new GGUF, and a Modelfile written for it: only verify is stale
    personas = exported.gguf_base.parent.parent / "personas.toml"
    write_modelfile(ModelfileConfig("cap", layout=exported, personas_file=personas))
    result = invoke(exported)
    assert result.exit_code == 1
    assert _errors(result)[0] == (
        f"error: {exported.verify_report('cap')} is older than {gguf} (it verified other "
        "content); it is not registered"
    )
    assert handler.blobs == {} and handler.creates == []
    write_verify_report(exported, "cap")
    again = invoke(exported)
    assert again.exit_code == 0, again.output
    assert len(handler.creates) == 1
