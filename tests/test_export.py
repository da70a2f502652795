"""`persona-export export`: the whole chain on tiny models, through the command line."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from persona_export.cli import app
from tests.modelfile_kit import layout_args
from tests.verifykit import PERSONA, Project, copy_project, project_layout

OLLAMA_HERE = shutil.which("ollama") is not None


def _args(project_root: Path, *extra: str) -> list[str]:
    return ["export", *layout_args(project_layout(project_root)), *extra]


def _errors(stderr: str) -> list[str]:
    """The error and hint lines (stderr also carries the stages' progress)."""
    return [line for line in stderr.splitlines() if line.startswith(("error: ", "hint: "))]


def _stage_statuses(stdout: str, persona: str) -> dict[str, str]:
    """{stage: status} from the summary block of ``persona``."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{persona}: "))
    statuses = {}
    for line in lines[start + 1 :]:
        words = line.split()
        if not line.startswith("  ") or not words:
            break
        if words[0] in ("merge", "gguf", "quantize", "modelfile", "verify", "ollama"):
            two = {("up", "to"): "up to date", ("not", "run"): "not run"}
            status = two.get(tuple(words[1:3]), words[1])
            statuses[words[0]] = status
    return statuses


@pytest.fixture(autouse=True)
def _no_ollama_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_HOST", raising=False)


@pytest.mark.llama
@pytest.mark.slow
def test_export_runs_the_chain_then_skips_everything(
    tmp_path: Path, steered_project: Project
) -> None:
    project = copy_project(steered_project, tmp_path / "p")
    args = _args(
        project.root,
        "--persona",
        PERSONA,
        "--base-model-id",
        str(project.base),
        "--personas",
        str(project.personas_file),
        "--quant",
        "Q4_K_M",
        "--quant",
        "Q8_0",
        "--max-tokens",
        "48",
    )
    run = CliRunner().invoke(app, args)
    assert run.exit_code == 0, run.output
    ollama = "done" if OLLAMA_HERE else "not run"  # the stage contract's status vocabulary
    assert _stage_statuses(run.stdout, PERSONA) == {
        "merge": "done",
        "gguf": "done",
        "quantize": "done",
        "modelfile": "done",
        "verify": "done",
        "ollama": ollama,
    }
    layout = project.layout
    assert (layout.merged(PERSONA) / "config.json").is_file()
    assert f"{layout.merged(PERSONA)}/ (" in run.stdout  # the folder, its file count and size
    for path in (
        layout.gguf(PERSONA, "F16"),
        layout.gguf(PERSONA, "Q4_K_M"),
        layout.gguf(PERSONA, "Q8_0"),
        layout.modelfile(PERSONA),
        layout.verify_report(PERSONA),
    ):
        assert path.is_file(), path
        assert str(path) in run.stdout  # the summary names every file with its size
    assert "FROM cap-Q4_K_M.gguf" in run.stdout
    assert "peft-vs-merged      passed" in run.stdout
    if not OLLAMA_HERE:
        assert "Ollama not found; register later with: ollama create cap -f " in run.stdout

    started = time.monotonic()
    again = CliRunner().invoke(app, args)
    print(f"no-op export re-run: {time.monotonic() - started:.2f} s")
    assert again.exit_code == 0, again.output
    assert _stage_statuses(again.stdout, PERSONA) == {
        "merge": "up to date",
        "gguf": "up to date",
        "quantize": "up to date",
        "modelfile": "up to date",
        "verify": "up to date",
        "ollama": ollama,
    }

    # A bound the export cannot meet: verify fails, nothing is registered, exit 1.
    strict = CliRunner().invoke(app, [*args, "--kl-max", "Q4_K_M=1e-9"])
    assert strict.exit_code == 1
    statuses = _stage_statuses(strict.stdout, PERSONA)
    assert statuses["verify"] == "failed" and statuses["ollama"] == "not run"
    assert "not registered: verify failed" in strict.stdout
    assert _errors(strict.stderr)[0] == (
        "error: cap: verify failed; the model was not registered with Ollama"
    )


@pytest.mark.llama
@pytest.mark.slow
def test_export_all_reports_each_persona(tmp_path: Path) -> None:
    from tests import modelkit as mk

    base = mk.make_llama(tmp_path / "base", tokenizer="spm")
    other_base = mk.make_llama(tmp_path / "other", tokenizer="spm", hidden_size=32, num_heads=2)
    layout = project_layout(tmp_path / "p")
    mk.make_adapter(base, layout.adapter("alpha"))
    mk.make_adapter(other_base, layout.adapter("broken"))  # trained on another base: shapes differ
    mk.make_adapter(base, layout.adapter("gamma"), seed=1)

    run = CliRunner().invoke(
        app,
        _args(tmp_path / "p", "--all", "--base-model-id", str(base), "--no-verify"),
    )
    assert run.exit_code == 1
    for persona in ("alpha", "gamma"):
        assert f"{persona}: exported in " in run.stdout
        statuses = _stage_statuses(run.stdout, persona)
        assert statuses["quantize"] == "done" and statuses["verify"] == "skipped"
        assert layout.modelfile(persona).is_file()
    assert "broken: FAILED in " in run.stdout
    assert _stage_statuses(run.stdout, "broken") == {"merge": "failed"}
    assert not layout.merged("broken").exists()  # nothing half-written
    error = _errors(run.stderr)
    assert error[0].startswith("error: 1 of 3 personas failed: broken (")
    assert (
        error[1] == "hint: see the summary above; fix one and re-run: finished stages are skipped"
    )


@pytest.mark.llama
@pytest.mark.slow
def test_export_registers_what_verify_just_passed(
    tmp_path: Path, exported_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ollama registers only after a passing verify of the very files (issue 11, item 5):
    within export, verify runs first, so registration goes ahead; with --no-verify too, and
    the output says it was not verified. The `ollama` on PATH is tests/ollama_kit's stand-in."""
    import json
    import os

    from tests.ollama_kit import install_stand_in

    project = copy_project(exported_project, tmp_path / "p")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "record.json"
    install_stand_in(bin_dir, record)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    args = _args(
        project.root,
        "--persona",
        PERSONA,
        "--base-model-id",
        str(project.base),
        "--personas",
        str(project.personas_file),
        "--quant",
        "Q4_K_M",
        "--quant",
        "Q8_0",
        "--max-tokens",
        "48",
    )
    unverified = CliRunner().invoke(app, [*args, "--no-verify"])
    assert unverified.exit_code == 0, unverified.output
    statuses = _stage_statuses(unverified.stdout, PERSONA)
    assert statuses["verify"] == "skipped" and statuses["ollama"] == "done"
    assert "registered as cap (cli), not verified (--no-verify)" in unverified.stdout
    assert json.loads(record.read_text())["argv"][:2] == ["create", "cap"]
    record.unlink()

    verified = CliRunner().invoke(app, args)
    assert verified.exit_code == 0, verified.output
    statuses = _stage_statuses(verified.stdout, PERSONA)
    assert statuses["verify"] == "done" and statuses["ollama"] == "done"
    assert "registered as cap (cli)" in verified.stdout
    assert "not verified" not in verified.stdout
    seen = json.loads(record.read_text())
    assert seen["modelfile"] == project.layout.modelfile(PERSONA).read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "error: say which persona to export: --persona NAME or --all"),
        (
            ["--persona", "cap", "--all"],
            "error: say which persona to export: --persona NAME or --all",
        ),
    ],
)
def test_export_needs_one_persona_or_all(tmp_path: Path, extra: list[str], message: str) -> None:
    run = CliRunner().invoke(app, _args(tmp_path, *extra))
    assert run.exit_code == 2
    assert run.stderr.splitlines()[0] == message


def test_export_all_without_adapters(tmp_path: Path) -> None:
    run = CliRunner().invoke(app, _args(tmp_path, "--all"))
    assert run.exit_code == 2
    assert run.stderr.splitlines() == [
        "error: no personas to export: no <persona>_final_adapter/ folder in "
        f"{tmp_path / 'trained_adapters'}",
        "hint: put the adapters there or pass --adapter-dir DIR",
    ]


def test_export_missing_adapter_names_the_stage(tmp_path: Path) -> None:
    run = CliRunner().invoke(app, _args(tmp_path, "--persona", "ghost", "--no-verify"))
    assert run.exit_code == 1
    assert "ghost: FAILED in " in run.stdout
    assert _stage_statuses(run.stdout, "ghost") == {"merge": "failed"}
    adapters = tmp_path / "trained_adapters"
    assert _errors(run.stderr) == [
        f"error: no adapter for persona 'ghost': {adapters / 'ghost_final_adapter'} not found "
        f"({adapters} does not exist)",
        "hint: check --persona, or point --adapter-dir at the folder holding ghost_final_adapter/",
    ]
