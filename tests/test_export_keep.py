"""`export --keep`: intermediates dropped once nothing needs them, tombstones that keep a
re-run a no-op, rebuilt on demand, and what the other commands say about them (the rule
itself: tests/test_artifacts_dropped.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from persona_export.artifacts import DIR_MANIFEST, DROPPED
from persona_export.cli import app
from tests.modelfile_kit import layout_args
from tests.test_export import _errors, _stage_statuses
from tests.verifykit import PERSONA, Project, copy_project

pytestmark = [pytest.mark.llama, pytest.mark.slow]


def _export(project: Project, *extra: str):  # type: ignore[no-untyped-def]
    args = ["export", *layout_args(project.layout), "--persona", PERSONA]
    args += ["--base-model-id", str(project.base), "--personas", str(project.personas_file)]
    args += ["--max-tokens", "48", *extra]
    return CliRunner().invoke(app, args)


def _statuses(stdout: str) -> set[str]:
    """The statuses of the stages before ollama (which is 'not run' without Ollama)."""
    return {s for name, s in _stage_statuses(stdout, PERSONA).items() if name != "ollama"}


def _tombstone(manifest: Path) -> bool:
    return bool(json.loads(manifest.read_text(encoding="utf-8")).get(DROPPED))


def test_keep_none_drops_then_reruns_are_no_ops_and_rebuild_on_demand(
    tmp_path: Path, steered_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = copy_project(steered_project, tmp_path / "p")
    layout = project.layout
    merged, f16 = layout.merged(PERSONA), layout.gguf(PERSONA, "F16")
    q4 = layout.gguf(PERSONA, "Q4_K_M")

    first = _export(project, "--keep", "none")
    assert first.exit_code == 0, first.output
    assert _statuses(first.stdout) == {"done"}
    # dropped after verify, which read them: the merged weights and the F16 are gone, the
    # merged folder's config and tokenizer stay (the Modelfile is made from them)
    assert not list(merged.glob("*.safetensors"))
    assert (merged / "config.json").is_file() and (merged / "tokenizer.json").is_file()
    assert _tombstone(merged / DIR_MANIFEST)
    assert not f16.exists() and _tombstone(f16.with_name(f16.name + ".manifest.json"))
    assert q4.is_file() and layout.modelfile(PERSONA).is_file()
    assert json.loads(layout.verify_report(PERSONA).read_text())["passed"] is True
    disk = next(ln for ln in first.stdout.splitlines() if ln.startswith("  disk: "))
    assert "dropped (--keep): cap " in disk and "cap-F16.gguf " in disk
    now, peak = (float(x.split()[0]) for x in disk[len("  disk: ") :].split(", peak ")[:2])
    assert peak > now  # the merged model and the F16 were there during the run
    q4_mtime = q4.stat().st_mtime_ns

    # Nothing changed: a no-op, nothing made again.
    again = _export(project, "--keep", "none")
    assert again.exit_code == 0, again.output
    assert _statuses(again.stdout) == {"up to date"}
    assert not list(merged.glob("*.safetensors")) and not f16.exists()

    # Other commands say what was dropped and how to make it again.
    quantize = CliRunner().invoke(
        app, ["quantize", "--persona", PERSONA, *layout_args(layout), "--type", "Q5_K_M"]
    )
    assert quantize.exit_code == 1
    assert _errors(quantize.stderr)[0] == (
        "error: cap-F16.gguf was dropped (export --keep) and is needed to quantize again"
    )
    assert "persona-export gguf --persona cap" in _errors(quantize.stderr)[1]
    verify = CliRunner().invoke(
        app, ["verify", "--persona", PERSONA, *layout_args(layout), "--force"]
    )
    assert verify.exit_code == 1
    assert _errors(verify.stderr) == [
        "error: verify needs the merged model's weights and cap-F16.gguf, which export --keep "
        "dropped: without them it cannot check peft-vs-merged, merged-vs-F16, F16-vs-<quant>",
        "hint: make them again: persona-export merge --persona cap && persona-export gguf "
        "--persona cap (export does this by itself, verifies, and drops them again)",
    ]

    # A new quantization type needs the F16, which needs the merged model: both are made
    # again, the Q4_K_M stays as it was, verify runs, and both are dropped again.
    more = _export(project, "--keep", "none", "--quant", "Q4_K_M", "--quant", "Q8_0")
    assert more.exit_code == 0, more.output
    statuses = _stage_statuses(more.stdout, PERSONA)
    assert statuses["merge"] == "done" and statuses["gguf"] == "done"
    assert statuses["quantize"] == "done" and statuses["verify"] == "done"
    assert q4.stat().st_mtime_ns == q4_mtime
    assert layout.gguf(PERSONA, "Q8_0").is_file()
    assert not list(merged.glob("*.safetensors")) and not f16.exists()

    # --keep keeps what is there; it does not make dropped files again (that would need the
    # disk --keep was saving): the default is a no-op here too.
    keep = _export(project, "--quant", "Q4_K_M", "--quant", "Q8_0")
    assert keep.exit_code == 0, keep.output
    assert _statuses(keep.stdout) == {"up to date"}
    # The stage commands make them again, as their errors said (merge has no --gguf-dir: its
    # lock is in ./gguf_models, the project's when run from its folder).
    monkeypatch.chdir(project.root)
    merge = ["merge", "--persona", PERSONA, *layout_args(layout)[:4]]
    made = CliRunner().invoke(app, [*merge, "--base-model-id", str(project.base)])
    assert made.exit_code == 0, made.output
    made = CliRunner().invoke(app, ["gguf", "--persona", PERSONA, *layout_args(layout)])
    assert made.exit_code == 0, made.output
    assert list(merged.glob("*.safetensors")) and f16.is_file()
    assert not _tombstone(merged / DIR_MANIFEST)
    assert not _tombstone(f16.with_name(f16.name + ".manifest.json"))
    final = _export(project, "--quant", "Q4_K_M", "--quant", "Q8_0")
    assert final.exit_code == 0, final.output
    assert _statuses(final.stdout) == {"up to date"}


def test_unknown_keep_value_is_a_usage_error(tmp_path: Path, steered_project: Project) -> None:
    run = _export(copy_project(steered_project, tmp_path / "p"), "--keep", "merged,q4")
    assert run.exit_code == 2
    assert _errors(run.stderr)[0] == "error: --keep q4: unknown intermediate"
