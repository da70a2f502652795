"""Persona retention, `--type auto` and the persona importance matrix on real exports of the
tiny steered Phi-4-mini (tests/verifykit.py): real llama.cpp logits and greedy answers, the
real base model without the adapter, real llama-quantize and llama-imatrix."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from persona_export.cli import app
from persona_export.stages.verify import FAILED, PASSED, VerifyConfig
from persona_export.stages.verify import run as run_verify
from tests.ggufkit import copy_merged
from tests.modelfile_kit import layout_args
from tests.verifykit import PERSONA, SYSTEM, Project, copy_project

pytestmark = [pytest.mark.llama, pytest.mark.slow]

OWN_PROMPT = "Who are you, captain?"


def _personas(project: Project) -> Path:
    """The persona with a verify prompt of its own."""
    project.personas_file.write_text(
        f'[personas.{PERSONA}]\nsystem = "{SYSTEM}"\nverify_prompts = ["{OWN_PROMPT}"]\n',
        encoding="utf-8",
    )
    return project.personas_file


def _base_gguf(project: Project) -> Path:
    """A GGUF of the base model without the adapter (converted as a persona of its own)."""
    from persona_export.stages.gguf import GgufConfig
    from persona_export.stages.gguf import run as run_gguf

    copy_merged(project.base, project.root, "plain")
    return run_gguf(GgufConfig("plain", layout=project.layout)).outputs[0]


def test_verify_reports_retention_for_every_quant(
    tmp_path: Path, exported_project: Project
) -> None:
    project = copy_project(exported_project, tmp_path / "p")
    layout = project.layout
    personas = _personas(project)
    # the F16 itself as if it were a quant, and the base without the adapter as if it were one
    shutil.copyfile(layout.gguf(PERSONA, "F16"), layout.gguf(PERSONA, "F32"))
    shutil.copyfile(_base_gguf(project), layout.gguf(PERSONA, "Q4_0"))

    result = run_verify(
        VerifyConfig(
            PERSONA,
            layout=layout,
            quants=("F32", "Q8_0", "Q4_0"),
            personas_file=personas,
            max_tokens=48,
        )
    )
    checks = {c.name: c for c in result.checks}
    itself, q8, base = checks["F16-vs-F32"], checks["F16-vs-Q8_0"], checks["F16-vs-Q4_0"]
    signal = itself.figures["persona_signal"]
    assert signal > 0.1  # the adapter moves the steered model: there is a persona to keep
    assert q8.figures["persona_signal"] == base.figures["persona_signal"] == signal

    assert itself.status == PASSED
    assert itself.figures["retention"] == pytest.approx(1.0, abs=1e-9)
    assert itself.figures["kl_mean"] == pytest.approx(0.0, abs=1e-9)
    answers = itself.figures["answers"]
    assert answers["identical"] == answers["answers"] == 5  # 4 shipped + the persona's own

    assert q8.status == PASSED, q8.summary
    assert 0.9 < q8.figures["retention"] < 1.1
    assert q8.figures["kl_retention"] > 0.9

    assert base.status == FAILED
    assert abs(base.figures["retention"]) < 0.1  # the persona is gone
    assert base.figures["kl_mean"] == pytest.approx(signal, rel=0.05)
    assert "retention" in base.summary and f"(min {0.9:g})" in base.summary
    assert not result.passed

    report = json.loads(result.report.read_text(encoding="utf-8"))
    assert report["options"]["bounds"]["retention_min"] == {"F32": 0.9, "Q4_0": 0.9, "Q8_0": 0.9}
    assert report["options"]["persona_prompts"] == [OWN_PROMPT]
    assert report["conversations"][-1] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": OWN_PROMPT},
    ]
    figures = {c["name"]: c["figures"] for c in report["checks"]}
    assert figures["F16-vs-Q4_0"]["retention_min"] == 0.9
    assert figures["F16-vs-Q4_0"]["retention_judged"] is True


def _auto_args(project: Project, *extra: str) -> list[str]:
    return [
        "quantize",
        "--persona",
        PERSONA,
        "--type",
        "auto",
        "--personas",
        str(project.personas_file),
        *layout_args(project.layout),
        *extra,
    ]


def _verdicts(stdout: str) -> dict[str, str]:
    """type -> verdict, from the ladder table (columns are two or more spaces apart)."""
    rows = [re.split(r"\s{2,}", line.strip()) for line in stdout.splitlines()]
    return {row[0]: row[6] for row in rows if len(row) == 7 and row[0] != "type"}


def test_auto_keeps_the_smallest_type_that_passes(
    tmp_path: Path, exported_project: Project
) -> None:
    project = copy_project(exported_project, tmp_path / "p")
    layout = project.layout
    before = {p.name for p in layout.gguf_dir(PERSONA).glob("*.gguf")}
    # Bounds that force the answer: nothing below Q6_K can reach a KL of 1e-4 (the types
    # measured here give 0.02-0.08); Q6_K keeps its shipped bounds.
    forced = [
        a for t in ("Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M") for a in ("--kl-max", f"{t}=1e-4")
    ]
    run = CliRunner().invoke(app, _auto_args(project, *forced))
    assert run.exit_code == 0, run.output
    verdicts = _verdicts(run.stdout)
    assert list(verdicts) == ["Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0"]
    assert all(verdicts[t].startswith("failed: KL") for t in ("Q3_K_M", "Q4_K_S", "Q5_K_M"))
    assert (verdicts["Q6_K"], verdicts["Q8_0"]) == ("chosen", "not needed")
    assert "chosen: Q6_K is the smallest type of the ladder that passes (Q3_K_M KL" in run.stdout
    # the candidates it made are gone, the GGUFs that were there before are not
    after = {p.name for p in layout.gguf_dir(PERSONA).glob("*.gguf")}
    assert after == before | {"cap-Q6_K.gguf"}
    record = json.loads(layout.quant_auto_record(PERSONA).read_text(encoding="utf-8"))
    assert record["chosen"] == "Q6_K"
    assert sorted(Path(p).name for p in record["removed"]) == [
        "cap-Q3_K_M.gguf",
        "cap-Q4_K_S.gguf",
        "cap-Q5_K_M.gguf",
    ]

    # Nothing changed: nothing is measured or quantized again.
    started = time.monotonic()
    again = CliRunner().invoke(app, _auto_args(project, *forced))
    seconds = time.monotonic() - started
    assert again.exit_code == 0, again.output
    assert "auto: measuring" not in again.stderr and "quantizing" not in again.stderr
    assert _verdicts(again.stdout)["Q6_K"] == "chosen (cached)"
    print(f"no-op --type auto: {seconds:.2f} s")

    # The retention gate decides: Q3_K_M must keep more of the persona than it does. Its
    # recorded figures are judged again; only the newly chosen type is quantized (again).
    q3 = next(r for r in record["rungs"] if r["type"] == "Q3_K_M")["figures"]
    assert q3["retention"] < 0.99
    stricter = f"Q3_K_M={q3['retention'] + 0.01:.3f}"
    third = CliRunner().invoke(app, _auto_args(project, "--retention-min", stricter))
    assert third.exit_code == 0, third.output
    verdicts = _verdicts(third.stdout)
    assert verdicts["Q3_K_M"].startswith("failed: retention") and "(cached)" in verdicts["Q3_K_M"]
    assert verdicts["Q4_K_S"] == "chosen (cached)"
    assert "auto: measuring" not in third.stderr
    assert layout.gguf(PERSONA, "Q4_K_S").is_file()

    # The Modelfile and verify take the choice.
    written = CliRunner().invoke(
        app,
        [
            "modelfile",
            "--persona",
            PERSONA,
            "--quant",
            "auto",
            "--personas",
            str(project.personas_file),
            *layout_args(layout),
        ],
    )
    assert written.exit_code == 0, written.output
    assert "FROM ./cap-Q4_K_S.gguf" in layout.modelfile(PERSONA).read_text(encoding="utf-8")


def _stand_in_ollama(bin_dir: Path, calls: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "ollama"
    exe.write_text(
        f"#!{sys.executable}\nimport sys\n"
        f"open({str(calls)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\nprint('success')\n",
        encoding="utf-8",
    )
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


def test_a_failed_gate_is_never_registered(
    tmp_path: Path, exported_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = copy_project(exported_project, tmp_path / "p")
    calls = tmp_path / "ollama-calls.txt"
    _stand_in_ollama(tmp_path / "bin", calls)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    args = [
        "export",
        "--persona",
        PERSONA,
        "--base-model-id",
        str(project.base),
        "--personas",
        str(_personas(project)),
        "--max-tokens",
        "48",
        *layout_args(project.layout),
    ]

    # --quant auto where no type of the ladder keeps enough of the persona
    auto = CliRunner().invoke(
        app, [*args, "--quant", "auto", "--ladder", "Q3_K_M", "--retention-min", "Q3_K_M=1"]
    )
    assert auto.exit_code == 1
    assert "quantize   failed" in auto.stdout
    assert "modelfile  not run" in auto.stdout and "verify     not run" in auto.stdout
    assert "not registered: quantize failed" in auto.stdout
    assert "error: cap: quantize failed" in auto.stderr
    assert "failed: retention" in auto.stdout  # the ladder is in the summary
    assert not calls.exists()

    # a type whose retention is below its bound: verify fails, nothing is registered
    strict = CliRunner().invoke(app, [*args, "--quant", "Q8_0", "--retention-min", "Q8_0=1"])
    assert strict.exit_code == 1
    assert "not registered: verify failed" in strict.stdout
    assert "error: cap: verify failed; the model was not registered with Ollama" in strict.stderr
    assert not calls.exists()

    # and the same export with the bound it meets is registered
    passing = CliRunner().invoke(app, [*args, "--quant", "Q8_0"])
    assert passing.exit_code == 0, passing.output
    assert calls.read_text(encoding="utf-8").startswith("create cap -f ")


def test_imatrix_made_from_the_persona(tmp_path: Path, exported_project: Project) -> None:
    from persona_export.stages.quantize import QuantizeConfig
    from persona_export.stages.quantize import run as quantize
    from persona_export.verify.calibration import load_calibration_prompts, normalized
    from persona_export.verify.data import verify_conversations

    project = copy_project(exported_project, tmp_path / "p")
    layout = project.layout
    personas = _personas(project)
    config = QuantizeConfig(
        PERSONA,
        layout=layout,
        quant_types=("IQ3_XXS",),  # a type that needs a matrix
        imatrix_auto=True,
        calibration_limit=24,
        personas_file=personas,
    )
    result = quantize(config)
    (output,) = result.quants
    matrix = result.imatrix
    assert matrix is not None and matrix.parent == layout.imatrix_dir(PERSONA)
    text_file = layout.imatrix_dir(PERSONA) / "persona-calibration.txt"
    text = text_file.read_text(encoding="utf-8")
    from persona_export.artifacts import sha256_file

    assert matrix.name == f"imatrix-{sha256_file(text_file)[:16]}.gguf"
    # the persona speaks: its system prompt in its chat format before each question
    assert text.count(f"<|system|>{SYSTEM}<|end|><|user|>") == 24
    assert "<|end|><|end|>" not in text  # the answers carry no end-of-turn of their own
    # nothing that judges a quant was calibrated on
    measured = [t["content"] for c in verify_conversations(PERSONA, None, personas) for t in c]
    held = {normalized(q) for q in (*measured, *load_calibration_prompts().held_back)}
    asked = [normalized(chunk.split("<|end|>")[0]) for chunk in text.split("<|user|>")[1:]]
    assert len(asked) == 24 and held.isdisjoint(asked)
    # the quantized GGUF's manifest names the matrix by content
    manifest = json.loads(output.manifest_path.read_text(encoding="utf-8"))
    assert manifest["inputs"]["imatrix"]["sha256"] == sha256_file(matrix)
    assert manifest["options"]["imatrix"] is True

    again = quantize(config)
    assert again.imatrix == matrix and again.quants[0].status.value == "up to date"

    # the user's own text instead: another matrix, named by that text
    own = tmp_path / "training.txt"
    own.write_text(text.replace("Captain", "Admiral"), encoding="utf-8")
    mine = quantize(
        QuantizeConfig(PERSONA, layout=layout, quant_types=("IQ3_XXS",), calibration=own)
    )
    assert mine.imatrix is not None and mine.imatrix != matrix
    assert mine.imatrix.name == f"imatrix-{sha256_file(own)[:16]}.gguf"
    assert mine.quants[0].status.value == "done"  # quantized again with the other matrix
