"""Malformed inputs thrown at the commands (issue 11, "Done means"): adapter configs,
safetensors headers, persona names, personas TOML and chat templates, through the command
line (in-process, on tiny models). Whatever the input, a command either succeeds with a
complete output or fails with exactly one ``error:`` line that is not an internal error, no
traceback, nothing touched outside its output folders, no temporaries and no output that
looks complete. ``make fuzz`` runs these with a larger budget (tests/fuzzkit.py)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from typer.testing import CliRunner

from persona_export.cli import app
from tests import fuzz_strategies as fs
from tests import fuzzkit as fk
from tests import hf_chat_templates as hf
from tests.modelfile_kit import PHI, layout_args, tokenizer_folder, write_stub_gguf

pytestmark = pytest.mark.fuzz
runner = CliRunner()
PERSONA = "cap"


@dataclass(frozen=True)
class Inputs:
    """Built once: a tiny base model and its adapter, a tokenizer folder for the modelfile
    stage, and the space every example's project lives in."""

    space: Path
    base: Path
    adapter: Path
    tokenizer: Path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Inputs:
    from tests import modelkit as mk

    space = tmp_path_factory.mktemp("fuzz")
    base = mk.make_phi4mini(
        space / "base", vocab="small", hidden_size=64, intermediate_size=128, num_layers=1
    )
    adapter = mk.make_adapter(base, space / "adapter", r=4, lora_alpha=8)
    tokenizer = tokenizer_folder(space / "tokenizer", hf.PHI4MINI, PHI)
    (space / "outside").mkdir()
    (space / "outside" / "keep.txt").write_text("not the tool's to touch")
    return Inputs(space, base, adapter, tokenizer)


@pytest.fixture(scope="module")
def workspace(inputs: Inputs) -> Iterator[fk.Workspace]:
    project = Path(tempfile.mkdtemp(dir=inputs.space, prefix="project-"))
    yield fk.Workspace(scope=inputs.space, project=project)
    shutil.rmtree(project, ignore_errors=True)


def _fresh_project(ws: fk.Workspace) -> None:
    fk.reset_outputs(ws)
    shutil.rmtree(ws.project / "trained_adapters", ignore_errors=True)
    for extra in ws.project.iterdir():
        if extra.is_file():
            extra.unlink()


def _adapter_project(ws: fk.Workspace, inputs: Inputs) -> Path:
    _fresh_project(ws)
    adapter = ws.project / "trained_adapters" / f"{PERSONA}_final_adapter"
    shutil.copytree(inputs.adapter, adapter)
    return adapter


def _merge(ws: fk.Workspace, inputs: Inputs, persona: str = PERSONA) -> Any:
    return runner.invoke(
        app,
        [
            "merge",
            "--persona",
            persona,
            "--base-model-id",
            str(inputs.base),
            "--device",
            "cpu",
            *_layout(ws)[:4],  # merge has no --gguf-dir (its lock is in ./gguf_models)
        ],
    )


def _layout(ws: fk.Workspace) -> list[str]:
    from tests.ggufkit import project_layout

    return layout_args(project_layout(ws.project))


def _modelfile_project(ws: fk.Workspace, inputs: Inputs) -> Path:
    """merged_models/cap/ holds the tokenizer files, gguf_models/cap/ a stub Q4_K_M GGUF."""
    _fresh_project(ws)
    merged = ws.project / "merged_models" / PERSONA
    shutil.copytree(inputs.tokenizer, merged)
    write_stub_gguf(ws.project / "gguf_models" / PERSONA / f"{PERSONA}-Q4_K_M.gguf", add_bos=False)
    return merged


def _modelfile(ws: fk.Workspace, *extra: str, persona: str = PERSONA) -> Any:
    return runner.invoke(app, ["modelfile", "--persona", persona, *_layout(ws), *extra])


# --------------------------------------------------------------------------------------------


def test_the_unfuzzed_inputs_work(inputs: Inputs, workspace: fk.Workspace) -> None:
    """The fixtures themselves are good: each target's checks start from a working command."""
    _adapter_project(workspace, inputs)
    with workspace.watch() as seen:
        result = _merge(workspace, inputs)
    assert result.exit_code == 0, result.output
    fk.check_outcome(result, seen)
    _modelfile_project(workspace, inputs)
    with workspace.watch() as seen:
        result = _modelfile(workspace)
    assert result.exit_code == 0, result.output


@fk.fuzz_settings()
@given(data=fs.st.data())
def test_adapter_config(inputs: Inputs, workspace: fk.Workspace, data: Any) -> None:
    adapter = _adapter_project(workspace, inputs)
    valid = json.loads((inputs.adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_bytes(data.draw(fs.adapter_configs(valid)))
    with workspace.watch() as seen:
        result = _merge(workspace, inputs)
    fk.check_outcome(result, seen)


@fk.fuzz_settings()
@given(data=fs.st.data())
def test_safetensors_header(inputs: Inputs, workspace: fk.Workspace, data: Any) -> None:
    adapter = _adapter_project(workspace, inputs)
    valid = (inputs.adapter / "adapter_model.safetensors").read_bytes()
    (adapter / "adapter_model.safetensors").write_bytes(data.draw(fs.safetensors_files(valid)))
    with workspace.watch() as seen:
        result = _merge(workspace, inputs)
    fk.check_outcome(result, seen)


@fk.fuzz_settings()
@given(name=fs.persona_names)
def test_persona_names(inputs: Inputs, workspace: fk.Workspace, name: str) -> None:
    _adapter_project(workspace, inputs)
    with workspace.watch() as seen:
        result = _merge(workspace, inputs, persona=name)
    fk.check_outcome(result, seen, may_succeed=name == PERSONA)
    _modelfile_project(workspace, inputs)
    with workspace.watch() as seen:
        result = _modelfile(workspace, persona=name)
    fk.check_outcome(result, seen, may_succeed=name == PERSONA)


@fk.fuzz_settings()
@given(data=fs.st.data())
def test_personas_toml(inputs: Inputs, workspace: fk.Workspace, data: Any) -> None:
    _modelfile_project(workspace, inputs)
    personas = workspace.project / "personas-in.toml"
    personas.write_text(data.draw(fs.personas_tomls(PERSONA)), encoding="utf-8")
    with workspace.watch() as seen:
        result = _modelfile(workspace, "--personas", str(personas))
    fk.check_outcome(result, seen)


@fk.fuzz_settings()
@given(template=fs.chat_templates)
def test_chat_template(inputs: Inputs, workspace: fk.Workspace, template: str) -> None:
    merged = _modelfile_project(workspace, inputs)
    (merged / "chat_template.jinja").write_text(template, encoding="utf-8")
    with workspace.watch() as seen:
        result = _modelfile(workspace)
    fk.check_outcome(result, seen)


TOKENIZER_FILES = (
    "tokenizer_config.json",
    "tokenizer.json",
    "generation_config.json",
    "special_tokens_map.json",
)


@fk.fuzz_settings()
@given(data=fs.st.data())
def test_tokenizer_files(inputs: Inputs, workspace: fk.Workspace, data: Any) -> None:
    merged = _modelfile_project(workspace, inputs)
    name = data.draw(fs.st.sampled_from(TOKENIZER_FILES))
    valid = json.loads((inputs.tokenizer / name).read_text())
    (merged / name).write_bytes(data.draw(fs.json_edits(valid)))
    with workspace.watch() as seen:
        result = _modelfile(workspace)
    fk.check_outcome(result, seen)


@fk.fuzz_settings()
@given(data=fs.st.data())
def test_tampered_manifests(inputs: Inputs, workspace: fk.Workspace, data: Any) -> None:
    """A Modelfile's manifest edited into anything: refused, rewritten or up to date, never
    a crash; a failed run leaves the manifest as it was."""
    _modelfile_project(workspace, inputs)
    assert _modelfile(workspace).exit_code == 0
    manifest = workspace.project / "gguf_models" / PERSONA / "Modelfile.manifest.json"
    valid = json.loads(manifest.read_text())
    manifest.write_bytes(data.draw(fs.json_edits(valid)))
    with workspace.watch() as seen:
        result = _modelfile(workspace)
    fk.check_outcome(result, seen)
