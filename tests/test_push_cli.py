"""`persona-export push`'s command line before anything is read or sent: bad options are one
line with a hint (exit 2), and a missing export says where the demo's is."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from persona_export.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        (
            ["--repo", "demo-pirate"],
            "error: --repo 'demo-pirate' is not a Hugging Face repository id",
        ),
        (["--repo", "me/x", "--what", "all"], "error: unknown --what 'all'"),
        (["--repo", "me/x", "--revision", "-rf"], "error: --revision '-rf' is not a branch name"),
        (
            ["--repo", "me/x", "--work-dir", "w", "--gguf-dir", "g"],
            "error: --work-dir replaces --merged-dir and --gguf-dir: give one or the other",
        ),
    ],
)
def test_bad_options_are_usage_errors(extra: list[str], error: str) -> None:
    run = runner.invoke(app, ["push", "-p", "cap", *extra])
    assert run.exit_code == 2
    assert run.stderr.splitlines()[0] == error
    assert run.stderr.splitlines()[1].startswith("hint: ")


def test_a_missing_export_points_at_the_demo_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run = runner.invoke(app, ["push", "-p", "demo_pirate", "--repo", "me/demo-pirate"])
    assert run.exit_code == 1
    assert run.stderr.splitlines() == [
        "error: no gguf export of demo_pirate at gguf_models/demo_pirate",
        "hint: export it first: persona-export export --persona demo_pirate (or point "
        "--merged-dir/--gguf-dir/--work-dir at its folders)",
    ]
    (tmp_path / "demo_work" / "gguf_models" / "demo_pirate").mkdir(parents=True)
    run = runner.invoke(app, ["push", "-p", "demo_pirate", "--repo", "me/demo-pirate", "--dry-run"])
    assert run.exit_code == 1
    assert run.stderr.splitlines()[-1] == (
        "hint: the demo's export is in demo_work/: add --work-dir demo_work"
    )
