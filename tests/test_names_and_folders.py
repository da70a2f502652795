"""Names and folders from the command line and the personas TOML (issue 11, "Smaller, all to
fix"): --gguf-dir equal to (or inside) --output-dir-base is refused before anything is
written; control characters never reach a path, a Modelfile or Ollama, whether they come in
a --persona name, a personas table name, a display_name or an ollama_name."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from persona_export.cli import app
from tests import hf_chat_templates as hf
from tests.ggufkit import make_fake_merged
from tests.modelfile_kit import PHI, layout_args, make_persona_project

runner = CliRunner()


def error_line(result: Any) -> str:
    lines = result.stderr.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in errors[0]
    assert lines[-1].startswith(("error: ", "hint: ")), result.stderr  # nothing after it
    return errors[0].removeprefix("error: ")


def snapshot(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file()
        else "dir"
        for p in sorted(root.rglob("*"))
    }


# -- --gguf-dir and --output-dir-base ------------------------------------------------------


@pytest.mark.parametrize("command", ["gguf", "export", "quantize", "modelfile", "verify"])
@pytest.mark.parametrize("where", ["same", "inside"])
def test_gguf_dir_and_output_dir_base_must_be_apart(
    tmp_path: Path, command: str, where: str
) -> None:
    """With both the same folder the GGUF went into the merged folder, which the merge then
    no longer recognised as its own: the chain never converged. Refused when the options are
    checked (export: before the merge), with nothing written, not even the lock."""
    merged_base = tmp_path / "out"
    make_fake_merged(tmp_path)
    (tmp_path / "merged_models").rename(merged_base)
    (tmp_path / "trained_adapters" / "cap_final_adapter").mkdir(parents=True)
    gguf_base = merged_base if where == "same" else merged_base / "cap" / "gguf"
    before = snapshot(tmp_path)
    args = [command, "--persona", "cap", "--adapter-dir", str(tmp_path / "trained_adapters")]
    args += ["--output-dir-base", str(merged_base), "--gguf-dir", str(gguf_base)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    problem = (
        f"give cap the same folder, {merged_base / 'cap'}"
        if where == "same"
        else f"put cap's GGUF folder {gguf_base / 'cap'} inside its merged model "
        f"{merged_base / 'cap'}"
    )
    assert error_line(result) == (
        f"--output-dir-base and --gguf-dir {problem}; each would write into the other, so "
        "nothing was written"
    )
    assert snapshot(tmp_path) == before


# -- control characters in names -----------------------------------------------------------

BAD_NAMES = ["cap\n", "cap\r", "\ncap", "ca\x1bp", "ca\x00p", "cap\t", "cap\u2028", "cap\x85"]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize(
    "command", ["merge", "gguf", "quantize", "modelfile", "verify", "ollama", "export"]
)
def test_a_persona_name_with_control_characters_reaches_no_path(
    tmp_path: Path, command: str, name: str
) -> None:
    """`re.match` with `$` let 'cap\\n' through (now fullmatch); whatever the command, such a
    name is refused before any path is made from it: nothing is created anywhere."""
    layout = make_persona_project(tmp_path, "cap", hf.PHI4MINI, PHI)
    before = snapshot(tmp_path)
    args = [command, "--persona", name]
    if command != "merge":
        args += layout_args(layout)
    else:
        args += layout_args(layout)[:4]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert error_line(result) == f"invalid persona name {name!r}"
    assert snapshot(tmp_path) == before
    assert not any(c in p.name for p in tmp_path.rglob("*") for c in "\n\r\x1b\x00\t")


def _modelfile_with(tmp_path: Path, personas: str) -> tuple[Any, Path]:
    layout = make_persona_project(tmp_path, "cap", hf.PHI4MINI, PHI)
    path = tmp_path / "my_personas.toml"
    path.write_text(personas, encoding="utf-8")
    result = runner.invoke(
        app, ["modelfile", "--persona", "cap", *layout_args(layout), "--personas", str(path)]
    )
    return result, layout.modelfile("cap")


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('display_name = "Captain\\u001b[31m Red"', "'display_name' holds the control character '\\x1b'"),
        ('display_name = "Captain\\u0000"', "'display_name' holds the control character '\\x00'"),
        ('display_name = "Cap\\u202eniatpac"', "'display_name' holds the control character '\\u202e'"),
        ('display_name = "Cap\\u2028tain"', "'display_name' holds the control character '\\u2028'"),
        ('display_name = "Cap\\ttain"', "'display_name' holds the control character '\\t'"),
        ('ollama_name = "cap-test\\n"', "invalid Ollama model name 'cap-test\\n'"),
        ('ollama_name = "cap-test:v1\\n"', "invalid Ollama model name 'cap-test:v1\\n'"),
        ('ollama_name = "team\\n/cap"', "invalid Ollama model name 'team\\n/cap'"),
    ],
)  # fmt: skip
def test_control_characters_in_a_persona_definition_are_refused(
    tmp_path: Path, table: str, message: str
) -> None:
    """display_name went raw into the Modelfile's first line (an ESC sequence colours the
    terminal that shows it); an ollama_name ending in a newline passed `re.match` with `$`."""
    result, modelfile = _modelfile_with(tmp_path, f"[personas.cap]\n{table}\n")
    assert result.exit_code == 2, result.output
    assert message in error_line(result)
    assert not modelfile.exists()


@pytest.mark.parametrize("name", ["cap\n", "cap\u001b", "ca p"])
def test_a_personas_table_name_with_control_characters_is_refused(
    tmp_path: Path, name: str
) -> None:
    import json

    result, modelfile = _modelfile_with(tmp_path, f"[personas.{json.dumps(name)}]\n")
    assert result.exit_code == 2, result.output
    assert error_line(result) == f"invalid persona name {name!r}"
    assert not modelfile.exists()


def test_printable_unicode_in_a_display_name_is_kept(tmp_path: Path) -> None:
    """Emoji sequences (joined by U+200D) and accents are not control characters."""
    result, modelfile = _modelfile_with(
        tmp_path,
        '[personas.cap]\ndisplay_name = "Capitaine Barbe-Code \U0001f3f4\u200d\u2620\ufe0f"\n',
    )
    assert result.exit_code == 0, result.output
    assert "Capitaine Barbe-Code \U0001f3f4\u200d\u2620\ufe0f" in modelfile.read_text()
