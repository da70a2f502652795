"""The card stage on a real export (tiny Phi-4-mini through the real converter,
llama-quantize and verify): gguf_models/<persona>/ becomes a ready Hugging Face GGUF
repository whose template, system and params files say what the Modelfile says, with a model
card that says what the persona is, how it was made and what verify measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from typer.testing import CliRunner

from persona_export.artifacts import manifest_path_for
from persona_export.cli import app
from persona_export.errors import OutputConflictError
from persona_export.llamacpp.gguf_file import ArrayInfo, read_gguf_metadata
from persona_export.ollama.hub_files import read_hub_files
from persona_export.ollama.modelfile import Modelfile
from persona_export.stages.base import Status
from persona_export.stages.card import CardConfig
from persona_export.stages.card import run as run_card
from persona_export.stages.modelfile import ModelfileConfig
from persona_export.stages.modelfile import run as run_modelfile
from tests.modelfile_kit import layout_args
from tests.verifykit import PERSONA, SYSTEM, Project, copy_project

pytestmark = [pytest.mark.slow, pytest.mark.llama]


def test_hub_files_say_what_the_modelfile_says(verified_project: Project) -> None:
    folder = verified_project.layout.gguf_dir(PERSONA)
    modelfile = Modelfile.read(folder / "Modelfile")
    hub = read_hub_files(folder, modelfile.from_)
    assert hub.template == modelfile.template is not None
    assert hub.system == modelfile.system == SYSTEM
    assert hub.stops == modelfile.stops and "<|end|>" in hub.stops
    assert hub.parameters == modelfile.parameters
    assert hub == Modelfile(**{**vars(modelfile), "licenses": (), "path": None})
    params = json.loads((folder / "params").read_text(encoding="utf-8"))
    assert params == modelfile.all_parameters()
    assert (folder / "template").read_bytes() == modelfile.template.encode()  # type: ignore[union-attr]
    for name in ("README.md", "template", "system", "params"):
        assert json.loads(manifest_path_for(folder / name).read_text())["stage"] == "card"


def test_the_card_says_what_was_made_and_measured(verified_project: Project) -> None:
    layout = verified_project.layout
    folder = layout.gguf_dir(PERSONA)
    text = (folder / "README.md").read_text(encoding="utf-8")
    card = ModelCard(text)
    data = card.data.to_dict()
    # the tiny base is a local folder with no hub id and no licence: neither is invented
    assert "base_model" not in data and "license" not in data
    assert data["tags"] == ["persona", "lora", "gguf", "ollama", "llama.cpp"]
    assert data["pipeline_tag"] == "text-generation" and data["library_name"] == "gguf"
    for quant in ("F16", "Q4_K_M", "Q8_0"):
        gguf = layout.gguf(PERSONA, quant)
        bpw = json.loads(manifest_path_for(gguf).read_text())["bits_per_weight"]
        assert f"| `{gguf.name}` | {quant} | " in text and f"| {bpw:.2f} |" in text
    assert f"```text\n{SYSTEM}\n```" in text
    assert "ollama run hf.co/<user>/<repo>:Q4_K_M" in text
    report = json.loads(layout.verify_report(PERSONA).read_text())
    for check in report["checks"]:
        assert f"| {check['name']} | passed: " in text
    assert str(verified_project.root) not in text  # no local path
    # the merged folder's card: its front matter reached the GGUF through the converter
    merged_card = ModelCard((layout.merged(PERSONA) / "README.md").read_text())
    assert merged_card.data.to_dict()["tags"] == ["persona", "lora"]
    meta = read_gguf_metadata(layout.gguf(PERSONA, "F16"), arrays=("general.tags",))
    tags = meta["general.tags"]
    assert isinstance(tags, ArrayInfo) and set(tags.values or ()) >= {"persona", "lora"}


def test_second_run_is_up_to_date(verified_project: Project, tmp_path: Path) -> None:
    project = copy_project(verified_project, tmp_path / "p")
    folder = project.layout.gguf_dir(PERSONA)
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    result = run_card(CardConfig(PERSONA, layout=project.layout))
    assert result.status is Status.UP_TO_DATE and result.verified
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    run = CliRunner().invoke(app, ["card", "-p", PERSONA, *layout_args(project.layout)[2:]])
    assert run.exit_code == 0, run.output
    assert run.stdout.splitlines() == [
        str(folder / n) for n in ("README.md", "template", "system", "params")
    ]


def test_without_verify_the_card_says_so_and_follows_the_modelfile(
    exported_project: Project, tmp_path: Path
) -> None:
    project = copy_project(exported_project, tmp_path / "p")
    layout = project.layout
    folder = layout.gguf_dir(PERSONA)
    first = run_card(CardConfig(PERSONA, layout=layout))
    assert not first.verified and (folder / "system").is_file()
    assert "No passing verify report" in (folder / "README.md").read_text()
    assert first.notes == (
        f"the card has no verify figures: there is no verify report ({layout.verify_report(PERSONA)})",
    )
    # the persona loses its SYSTEM prompt: the card stage removes its own `system` file
    no_system = tmp_path / "personas.toml"
    no_system.write_text(f'[personas.{PERSONA}]\ndisplay_name = "Cap"\n', encoding="utf-8")
    run_modelfile(ModelfileConfig(PERSONA, layout=layout, personas_file=no_system))
    again = run_card(CardConfig(PERSONA, layout=layout))
    assert again.status is Status.DONE
    assert not (folder / "system").exists() and not manifest_path_for(folder / "system").exists()
    assert "This persona has no system prompt." in (folder / "README.md").read_text()


def test_a_users_own_file_is_refused_not_replaced(
    exported_project: Project, tmp_path: Path
) -> None:
    project = copy_project(exported_project, tmp_path / "p")
    folder = project.layout.gguf_dir(PERSONA)
    (folder / "template").write_text("my own template", encoding="utf-8")
    with pytest.raises(
        OutputConflictError, match="template exists and was not written by the card"
    ):
        run_card(CardConfig(PERSONA, layout=project.layout))
    assert (folder / "template").read_text() == "my own template"
