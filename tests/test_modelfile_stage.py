"""`persona-export modelfile`: what the Modelfile says, where its parts come from, and the
errors for inputs it cannot use. Every written file is parsed with the strict parser."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tomllib
from typer.testing import CliRunner

from persona_export.cli import app
from persona_export.hf.chat_formats import load_formats
from persona_export.layout import Layout
from persona_export.stages.modelfile import ModelfileConfig
from persona_export.stages.modelfile import run as write_modelfile
from tests import hf_chat_templates as hf
from tests.ggufkit import project_layout
from tests.modelfile_kit import (
    CHATML,
    LLAMA3,
    PHI,
    layout_args,
    make_persona_project,
    tokenizer_folder,
    write_personas,
    write_stub_gguf,
)
from tests.modelfile_parser import parse_modelfile

PERSONAS = """
[personas.cap]
display_name = "Captain Test"
ollama_name = "cap-test:v1"
system = "You are Captain Test. Answer like a pirate."

[personas.cap.parameters]
temperature = 0.8
num_ctx = 2048
top_k = 40
"""
FORMATS = {f.name: f for f in load_formats()}


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def phi_project(tmp_path: Path) -> Layout:
    return make_persona_project(tmp_path, "cap", hf.PHI4MINI, PHI)


@pytest.fixture
def personas_file(tmp_path: Path) -> Path:
    return write_personas(tmp_path / "my_personas.toml", PERSONAS)


def invoke(runner: CliRunner, layout: Layout, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["modelfile", "--persona", "cap", *layout_args(layout), *args])


def test_phi4mini_modelfile(runner: CliRunner, phi_project: Layout, personas_file: Path) -> None:
    result = invoke(runner, phi_project, "--personas", str(personas_file))
    assert result.exit_code == 0, result.output
    modelfile = phi_project.modelfile("cap")
    assert result.stdout == f"{modelfile}\n"
    assert "chat format: Phi-4-mini (detected from " in result.stderr
    assert "stop: <|end|>, <|endoftext|>, <|user|>, <|assistant|>, <|system|>" in result.stderr
    data = modelfile.read_bytes()
    assert not data.startswith(b"\xef\xbb\xbf") and b"\r" not in data
    parsed = parse_modelfile(data.decode("utf-8"))
    assert parsed.from_ == "./cap-Q4_K_M.gguf"
    assert (modelfile.parent / parsed.from_).is_file()
    # Phi-4-mini's own template renders tools, so the TEMPLATE does too (issue 13)
    assert parsed.template == FORMATS["phi4mini"].tool_template
    assert parsed.stops == ["<|end|>", "<|endoftext|>", "<|user|>", "<|assistant|>", "<|system|>"]
    assert parsed.parameters == {
        "stop": parsed.stops,
        "temperature": 0.8,
        "num_ctx": 2048,
        "top_k": 40,
    }
    assert parsed.system == "You are Captain Test. Answer like a pirate."
    assert parsed.licenses == []
    assert "ollama create cap-test:v1 -f Modelfile" in data.decode()
    manifest = modelfile.with_name("Modelfile.manifest.json")
    assert manifest.is_file()


def test_second_run_is_up_to_date_and_changes_rewrite(
    runner: CliRunner, phi_project: Layout, personas_file: Path
) -> None:
    assert invoke(runner, phi_project, "--personas", str(personas_file)).exit_code == 0
    modelfile = phi_project.modelfile("cap")
    first = modelfile.stat().st_mtime_ns
    again = invoke(runner, phi_project, "--personas", str(personas_file))
    assert again.exit_code == 0
    assert "is up to date (use --force to write it again)" in again.stderr
    assert modelfile.stat().st_mtime_ns == first
    personas_file.write_text(PERSONAS.replace("0.8", "0.5"), encoding="utf-8")
    changed = invoke(runner, phi_project, "--personas", str(personas_file))
    assert changed.exit_code == 0
    assert "wrote " in changed.stderr
    assert parse_modelfile(modelfile.read_text()).parameters["temperature"] == 0.5


def test_missing_gguf_names_the_quantize_command(runner: CliRunner, tmp_path: Path) -> None:
    layout = project_layout(tmp_path)
    tokenizer_folder(layout.merged("cap"), hf.PHI4MINI, PHI)
    result = invoke(runner, layout, "--quant", "q8_0")
    assert result.exit_code == 1
    gguf = layout.gguf("cap", "Q8_0")
    assert result.stderr == (
        f"error: {gguf} not found: the Modelfile's FROM must name an existing GGUF (Ollama "
        "would otherwise try to pull a model by that name)\n"
        "hint: run `persona-export quantize --persona cap --type Q8_0` first (or `make "
        "persona=cap quantize`)\n"
    )
    assert not layout.modelfile("cap").exists()


def test_unknown_chat_format_without_a_gguf_template_is_an_error(
    runner: CliRunner, tmp_path: Path
) -> None:
    # An unknown format exports without a TEMPLATE only when the GGUF carries the chat
    # template Ollama would use instead; this stub GGUF carries none.
    layout = make_persona_project(tmp_path, "cap", hf.ALPACA, LLAMA3)
    result = invoke(runner, layout)
    assert result.exit_code == 1
    source = layout.merged("cap") / "tokenizer_config.json"
    assert result.stderr.startswith(
        f"error: {source} matches none of the known chat formats (chatml, gemma, llama2, "
        "llama3.1, llama3, mistral, phi3, phi4mini), and cap-Q4_K_M.gguf carries no chat "
        "template for Ollama to use instead\n"
    )
    assert "hint: pass --template FILE with an Ollama (Go text/template) TEMPLATE" in result.stderr
    assert not layout.modelfile("cap").exists()


def test_unknown_chat_format_exports_without_template(runner: CliRunner, tmp_path: Path) -> None:
    layout = make_persona_project(tmp_path, "cap", hf.ALPACA, LLAMA3)
    write_stub_gguf(layout.gguf("cap", "Q4_K_M"), add_bos=True, chat_template=hf.ALPACA)
    result = invoke(runner, layout)
    assert result.exit_code == 0, result.output
    assert "the Modelfile has no TEMPLATE, so Ollama >= 0.30 renders the GGUF's own chat " in (
        result.stderr
    )
    assert "warning: Ollama older than 0.30 would render this model's prompts as {{ .Prompt }}" in (
        result.stderr
    )
    text = layout.modelfile("cap").read_text()
    parsed = parse_modelfile(text)
    assert parsed.template is None
    # the tokenizer's end-of-sequence tokens, then what the template writes between turns
    assert parsed.stops == ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>", "### Instruction:"]
    assert "# Chat format: the GGUF's own chat template, from cap-Q4_K_M.gguf " in text
    assert "# Ollama >= 0.30 renders the GGUF's chat template through llama-server" in text


def test_unknown_chat_format_from_the_gguf_alone(runner: CliRunner, tmp_path: Path) -> None:
    # No merged folder: the template, the end-of-sequence token and the turn markers (the
    # GGUF's control tokens the template writes between turns) all come from the GGUF.
    layout = project_layout(tmp_path)
    markers = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>")
    write_stub_gguf(
        layout.gguf("cap", "Q4_K_M"),
        add_bos=True,
        chat_template=hf.DEEPSEEK_R1_DISTILL,
        tokens=["a", "b", *markers, "<think>"],
        bos=markers[0],
        eos=markers[1],
        control=markers,
    )
    result = invoke(runner, layout)
    assert result.exit_code == 0, result.output
    parsed = parse_modelfile(layout.modelfile("cap").read_text())
    assert parsed.template is None
    assert parsed.stops == ["<｜end▁of▁sentence｜>", "<｜User｜>"]
    assert "capabilities: tools, thinking, completion" in result.stderr


def test_no_chat_template_is_an_error(runner: CliRunner, tmp_path: Path) -> None:
    layout = make_persona_project(tmp_path, "cap", None, PHI)
    result = invoke(runner, layout)
    assert result.exit_code == 1
    assert "has no chat template, so the chat format cannot be detected" in result.stderr
    assert "--template FORMAT with one of: chatml, gemma, llama2" in result.stderr


def test_custom_template_file_and_stops(runner: CliRunner, tmp_path: Path) -> None:
    layout = make_persona_project(tmp_path, "cap", hf.ALPACA, LLAMA3)
    template = tmp_path / "alpaca.gotmpl"
    text = (
        '{{- range .Messages }}{{ if eq .Role "user" }}### Instruction:\n{{ .Content }}\n\n'
        '{{ else if eq .Role "assistant" }}### Response:\n{{ .Content }}\n\n{{ end }}'
        "{{ end }}### Response:\n"
    )
    template.write_text(text, encoding="utf-8")
    result = invoke(runner, layout, "--template", str(template), "--stop", "### Instruction:")
    assert result.exit_code == 0, result.output
    parsed = parse_modelfile(layout.modelfile("cap").read_text())
    assert parsed.template == text
    assert parsed.stops == ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>", "### Instruction:"]


def test_template_can_name_a_shipped_format(runner: CliRunner, tmp_path: Path) -> None:
    layout = make_persona_project(tmp_path, "cap", hf.ALPACA, CHATML)
    result = invoke(runner, layout, "--template", "chatml")
    assert result.exit_code == 0, result.output
    assert "chat format chatml chosen with --template (not detected)" in result.stderr
    parsed = parse_modelfile(layout.modelfile("cap").read_text())
    assert parsed.template == FORMATS["chatml"].template
    assert parsed.stops == ["<|im_end|>", "<|im_start|>"]
    bad = invoke(runner, layout, "--template", "nope")
    assert bad.exit_code == 1
    assert "error: --template nope: no such file, and not a known chat format" in bad.stderr


def test_persona_without_definition_exports_without_system(
    runner: CliRunner, tmp_path: Path
) -> None:
    layout = make_persona_project(tmp_path, "cap", hf.PHI4MINI, PHI)
    result = invoke(runner, layout)
    assert result.exit_code == 0, result.output
    assert "warning: persona 'cap' has no definition in " in result.stderr
    parsed = parse_modelfile(layout.modelfile("cap").read_text())
    assert parsed.system is None
    assert set(parsed.parameters) == {"stop"}


def test_persona_lookup_order(
    runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = make_persona_project(tmp_path, "captain_codebeard", hf.PHI4MINI, PHI)
    args = ["modelfile", "--persona", "captain_codebeard", *layout_args(layout)]

    def system() -> str | None:
        return parse_modelfile(layout.modelfile("captain_codebeard").read_text()).system

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert runner.invoke(app, args).exit_code == 0
    shipped = system()
    assert shipped is not None and shipped.startswith("You are Captain Codebeard")

    (work / "personas.toml").write_text(
        '[personas.captain_codebeard]\nsystem = "from the working directory"\n'
    )
    assert runner.invoke(app, args).exit_code == 0
    assert system() == "from the working directory"

    given = write_personas(
        tmp_path / "given.toml", '[personas.captain_codebeard]\nsystem = "from --personas"\n'
    )
    assert runner.invoke(app, [*args, "--personas", str(given)]).exit_code == 0
    assert system() == "from --personas"

    missing = runner.invoke(app, [*args, "--personas", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 1
    assert f"error: personas file {tmp_path / 'nope.toml'} not found" in missing.stderr


def test_prompt_that_cannot_be_written_is_refused(
    runner: CliRunner, phi_project: Layout, personas_file: Path
) -> None:
    assert invoke(runner, phi_project, "--personas", str(personas_file)).exit_code == 0
    before = phi_project.modelfile("cap").read_bytes()
    bad = write_personas(
        personas_file.parent / "bad.toml",
        '[personas.cap]\nsystem = """\n"Quote" this:\n\\"\\"\\"\nend"""\n',
    )
    result = invoke(runner, phi_project, "--personas", str(bad))
    assert result.exit_code == 2
    assert result.stderr.startswith(
        'error: persona \'cap\': the SYSTEM prompt contains """ and cannot be written into a '
        'Modelfile (Modelfile values have no escaping)\nhint: remove the """'
    )
    folder = phi_project.gguf_dir("cap")
    assert phi_project.modelfile("cap").read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == [
        "Modelfile",
        "Modelfile.manifest.json",
        "cap-Q4_K_M.gguf",
    ]


def test_removed_and_deprecated_parameters(
    runner: CliRunner, phi_project: Layout, tmp_path: Path
) -> None:
    removed = write_personas(tmp_path / "removed.toml", "[personas.cap.parameters]\ntfs_z = 1.0\n")
    result = invoke(runner, phi_project, "--personas", str(removed))
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {removed} [personas.cap].parameters: parameter 'tfs_z' was removed from Ollama "
        "(a Modelfile with it fails with \"unknown parameter 'tfs_z'\")\n"
        f"hint: delete tfs_z from {removed} [personas.cap].parameters\n"
    )
    deprecated = write_personas(
        tmp_path / "deprecated.toml", "[personas.cap.parameters]\nmirostat = 2\ntop_p = 0.5\n"
    )
    result = invoke(runner, phi_project, "--personas", str(deprecated))
    assert result.exit_code == 0
    assert "warning: " in result.stderr and "parameter 'mirostat' is deprecated" in result.stderr
    parsed = parse_modelfile(phi_project.modelfile("cap").read_text())
    assert parsed.parameters["top_p"] == 0.5 and "mirostat" not in parsed.parameters


def test_invalid_ollama_name_in_persona_file(
    runner: CliRunner, phi_project: Layout, tmp_path: Path
) -> None:
    bad = write_personas(tmp_path / "bad.toml", '[personas.cap]\nollama_name = "Cap Test"\n')
    result = invoke(runner, phi_project, "--personas", str(bad))
    assert result.exit_code == 2
    assert f"error: {bad} [personas.cap]: invalid Ollama model name 'Cap Test'" in result.stderr


def test_default_system_prompt_of_the_template_becomes_system(
    runner: CliRunner, tmp_path: Path
) -> None:
    layout = make_persona_project(tmp_path, "cap", hf.SMOLLM2, CHATML)
    result = invoke(runner, layout)
    assert result.exit_code == 0, result.output
    assert "adds a default system prompt when there is none" in result.stderr
    parsed = parse_modelfile(layout.modelfile("cap").read_text())
    assert parsed.system == hf.SMOLLM2_DEFAULT_SYSTEM
    assert parsed.template == FORMATS["chatml"].template


def test_license_of_the_merged_model_is_written(runner: CliRunner, phi_project: Layout) -> None:
    license_text = "MIT License\r\n\r\nCopyright (c) Microsoft Corporation.\x0c\r\n"
    (phi_project.merged("cap") / "LICENSE").write_text(license_text, encoding="utf-8", newline="")
    result = invoke(runner, phi_project)
    assert result.exit_code == 0, result.output
    assert "characters Ollama cannot store were left out of LICENSE" in result.stderr
    parsed = parse_modelfile(phi_project.modelfile("cap").read_text())
    assert parsed.licenses == ["MIT License\n\nCopyright (c) Microsoft Corporation.\n"]


def test_gguf_only_reads_the_template_from_the_gguf(runner: CliRunner, tmp_path: Path) -> None:
    layout = project_layout(tmp_path)
    tokens = ["a", "b", "<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]
    gguf = write_stub_gguf(
        layout.gguf("cap", "Q4_K_M"),
        add_bos=False,
        chat_template=hf.PHI4MINI,
        tokens=tokens,
        bos="<|endoftext|>",
        eos="<|endoftext|>",
    )
    result = invoke(runner, layout)
    assert result.exit_code == 0, result.output
    assert f"chat format: Phi-4-mini (detected from {gguf} (tokenizer.chat_template))" in (
        result.stderr
    )
    parsed = parse_modelfile(layout.modelfile("cap").read_text())
    assert parsed.template == FORMATS["phi4mini"].tool_template
    assert parsed.stops == ["<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]


@pytest.mark.parametrize(("gguf_add_bos", "prefix"), [(True, ""), (False, "<|begin_of_text|>")])
def test_bos_is_written_only_when_the_runtime_does_not_add_it(
    tmp_path: Path, gguf_add_bos: bool, prefix: str
) -> None:
    layout = make_persona_project(tmp_path, "cap", hf.LLAMA3, LLAMA3, gguf_add_bos=gguf_add_bos)
    result = write_modelfile(ModelfileConfig("cap", layout=layout))
    parsed = parse_modelfile(result.modelfile.read_text())
    assert parsed.template == prefix + FORMATS["llama3"].template
    assert result.format_name == "llama3"


def test_modelfile_help_has_an_example(runner: CliRunner) -> None:
    result = runner.invoke(app, ["modelfile", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert "Example: persona-export modelfile --persona captain_codebeard --quant Q4_K_M" in (
        result.stdout
    )
    for option in ("--quant", "--template", "--stop", "--personas", "--gguf-dir", "--force"):
        assert option in result.stdout


def test_shipped_personas_all_load_and_write(tmp_path: Path) -> None:
    from persona_export.personas import load_personas, persona_files

    personas = load_personas(persona_files(None, cwd=tmp_path))
    assert {"captain_codebeard", "professor_snugglesworth", "zen_coder", "demo_pirate"} <= set(
        personas
    )
    # the demo trains with its own personas file's system prompt: the shipped one must agree
    demo_file = Path(__file__).parents[1] / "persona_export/demo/data/personas.toml"
    demo = tomllib.loads(demo_file.read_text(encoding="utf-8"))["personas"]["demo_pirate"]
    assert demo["system"] == personas["demo_pirate"].system
    assert demo["ollama_name"] == personas["demo_pirate"].ollama_name
    for name, persona in personas.items():
        layout = make_persona_project(tmp_path / name, name, hf.PHI4MINI, PHI)
        result = write_modelfile(ModelfileConfig(name, layout=layout))
        parsed = parse_modelfile(result.modelfile.read_text())
        assert parsed.system == persona.system
        assert result.model_name == persona.ollama_name
        assert os.path.basename(parsed.from_) == f"{name}-Q4_K_M.gguf"
