"""verify on real exports of a tiny Phi-4-mini-shaped model (tests/verifykit.py): a correct
export passes every check; each kind of broken export fails the check meant to catch it."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from persona_export.cli import app
from persona_export.stages.verify import FAILED, PASSED, SKIPPED, VerifyConfig
from persona_export.stages.verify import run as run_verify
from tests.modelfile_kit import layout_args
from tests.verifykit import PERSONA, SYSTEM, Project, copy_project, export_project

pytestmark = [pytest.mark.llama, pytest.mark.slow]

GO = shutil.which("go") is not None
ALL_CHECKS = [
    "peft-vs-merged",
    "merged-vs-F16",
    "F16-vs-Q4_K_M",
    "F16-vs-Q8_0",
    "ollama-template",
    "template-modelfile",
    "template-gguf",
    "template-tools",
    "tokens",
    "generation",
]


def _statuses(result) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {c.name: c.status for c in result.checks}


def _verify(project: Project, **options):  # type: ignore[no-untyped-def]
    return run_verify(VerifyConfig(PERSONA, layout=project.layout, max_tokens=48, **options))


def _cli_args(project: Project, *extra: str) -> list[str]:
    return [
        "verify",
        "--persona",
        PERSONA,
        *layout_args(project.layout),
        "--max-tokens",
        "48",
        *extra,
    ]


def test_correct_export_passes_every_check_then_is_skipped(exported_project: Project) -> None:
    result = _verify(exported_project)
    expected = {name: PASSED for name in ALL_CHECKS}
    if not GO:
        expected["template-modelfile"] = SKIPPED
        expected["template-tools"] = SKIPPED
    assert _statuses(result) == expected
    assert result.passed and not result.up_to_date

    report = json.loads(result.report.read_text(encoding="utf-8"))
    assert report["passed"] is True
    assert report["persona"] == PERSONA
    assert [c["name"] for c in report["checks"]] == ALL_CHECKS
    # the persona's system prompt (the Modelfile's SYSTEM) leads every conversation
    assert all(conv[0] == {"role": "system", "content": SYSTEM} for conv in report["conversations"])
    figures = {c["name"]: c["figures"] for c in report["checks"]}
    assert figures["peft-vs-merged"]["nmse"] < 1e-4  # bf16 rounding of the merged weights
    assert figures["peft-vs-merged"]["nmse_max"] == 1e-3  # the bound for 16-bit weights
    assert figures["merged-vs-F16"]["nmse"] < 1e-3
    assert figures["merged-vs-F16"]["top1_agreement"] >= 0.99
    # the steered model is peaked, so KL measures something (not a near-uniform model)
    assert figures["F16-vs-Q8_0"]["ref_entropy_ratio"] < 0.9
    assert figures["F16-vs-Q8_0"]["kl_mean"] < figures["F16-vs-Q4_K_M"]["kl_mean"]
    answers = figures["generation"]["answers"]
    assert [a["stop_type"] for a in answers] == ["eos"] * len(answers)
    # Ollama >= 0.30 keeps the tool-capable TEMPLATE of a Phi-4-mini export (issue 13)
    assert figures["ollama-template"]["path"] == "modelfile"
    assert figures["ollama-template"]["capabilities"] == ["completion", "tools"]
    assert figures["ollama-template"]["tool_call_tag"] == "<|tool_call|>"
    if GO:
        assert figures["template-tools"]["via"] == "system"

    # Nothing changed: the passing report is reused without loading a model.
    started = time.monotonic()
    again = _verify(exported_project)
    print(f"no-op verify: {time.monotonic() - started:.2f} s")
    assert again.up_to_date and again.passed
    assert _statuses(again) == expected

    # The command prints the table and the report; exit 0.
    run = CliRunner().invoke(app, _cli_args(exported_project))
    assert run.exit_code == 0, run.output
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["check", "status", "result"]
    # one row per check; a long result wraps onto lines that start under its column
    checks = [line for line in lines[1:-1] if line and not line.startswith(" ")]
    assert [line.split()[:2] for line in checks] == [[n, expected[n]] for n in ALL_CHECKS]
    assert all(len(line) <= 100 for line in lines[:-1])
    assert lines[-1] == f"report: {result.report}"


def test_gguf_of_another_adapter_fails_the_conversion_check(
    tmp_path: Path, exported_project: Project, steered_project: Project
) -> None:
    from tests import modelkit as mk

    project = copy_project(exported_project, tmp_path / "p")
    layout = project.layout
    # Export a second persona trained differently, then put its F16 GGUF in place of cap's.
    mk.make_adapter(project.base, layout.adapter("other"), seed=7)
    (project.root / "personas.toml").write_text(
        f'[personas.cap]\nsystem = "{SYSTEM}"\n[personas.other]\nsystem = "{SYSTEM}"\n'
    )
    export_project(project, "other")
    shutil.copyfile(layout.gguf("other", "F16"), layout.gguf(PERSONA, "F16"))

    statuses = _statuses(_verify(project, quants=("Q8_0",)))
    assert statuses["peft-vs-merged"] == PASSED
    assert statuses["merged-vs-F16"] == FAILED
    assert statuses["F16-vs-Q8_0"] == FAILED  # the Q8_0 is still cap's


def test_corrupted_merged_tensor_fails_the_merge_check(
    tmp_path: Path, exported_project: Project
) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    project = copy_project(exported_project, tmp_path / "p")
    merged = project.layout.merged(PERSONA)
    (shard,) = sorted(merged.glob("*.safetensors"))
    weights = load_file(str(shard))
    name = "model.layers.0.self_attn.qkv_proj.weight"
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(weights[name].shape, generator=generator) * 0.01
    weights[name] = (weights[name].float() + noise).to(weights[name].dtype)
    save_file(weights, str(shard), metadata={"format": "pt"})

    result = _verify(project, quants=("Q8_0",))
    statuses = _statuses(result)
    assert statuses["peft-vs-merged"] == FAILED
    assert not result.passed
    (check,) = [c for c in result.checks if c.name == "peft-vs-merged"]
    assert 1e-3 < check.figures["nmse"] < 0.5  # far beyond rounding, yet the same model
    assert "(max 1.00e-03), top-1" in check.summary

    # The command exits 1 with one line naming the failed checks.
    run = CliRunner().invoke(app, _cli_args(project, "--quant", "Q8_0"))
    assert run.exit_code == 1
    assert f"error: {PERSONA}: " in run.stderr
    assert "checks failed (peft-vs-merged, merged-vs-F16)" in run.stderr
    assert "Traceback" not in run.output


@pytest.mark.go
@pytest.mark.skipif(not GO, reason="Go is not installed (apt-get install golang-go)")
def test_wrong_template_fails_template_and_tokens(
    tmp_path: Path, exported_project: Project
) -> None:
    project = copy_project(exported_project, tmp_path / "p")
    modelfile = project.layout.modelfile(PERSONA)
    text = modelfile.read_text(encoding="utf-8")
    # A newline after each role tag, as Phi-3 writes it (Phi-4-mini has none). The TEMPLATE
    # keeps .Tools, so Ollama >= 0.30 would still use it.
    phi4 = "<|{{ .Role }}|>{{ .Content }}"
    phi3 = "<|{{ .Role }}|>\n{{ .Content }}"
    assert text.count(phi4) == 1
    modelfile.write_text(text.replace(phi4, phi3), encoding="utf-8")

    result = _verify(project, quants=("Q8_0",))
    statuses = _statuses(result)
    assert statuses["template-modelfile"] == FAILED
    assert statuses["template-gguf"] == PASSED  # the GGUF's own template is still right
    assert statuses["tokens"] == FAILED  # what Ollama would send is not what HF trained on
    (check,) = [c for c in result.checks if c.name == "template-modelfile"]
    assert check.summary.startswith("conversation 1: the Modelfile's TEMPLATE (Go) differs")


def test_go_missing_is_reported_as_skipped(
    tmp_path: Path, exported_project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    import persona_export.ollama.gotemplate as gotemplate

    monkeypatch.setattr(gotemplate.shutil, "which", lambda name: None)
    project = copy_project(exported_project, tmp_path / "p")
    result = _verify(project, quants=("Q8_0",), force=True)
    (check,) = [c for c in result.checks if c.name == "template-modelfile"]
    assert check.status == SKIPPED
    assert check.summary == "not run: Go is not installed (Debian: apt-get install golang-go)"
    assert result.passed  # skipped is not failed, and is said so in the report
    report = json.loads(result.report.read_text(encoding="utf-8"))
    assert {c["name"]: c["status"] for c in report["checks"]}["template-modelfile"] == "skipped"


@pytest.fixture(scope="module")
def user_steered_project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A model that ends its answers with <|user|>: a stop string, not an end-of-generation
    token for llama.cpp. Only the Modelfile's stop list ends its answers."""
    from tests.verifykit import make_project

    project = make_project(tmp_path_factory.mktemp("user-steered") / "p", steer_to="<|user|>")
    return export_project(project)


def test_generation_needs_the_modelfile_stops(
    tmp_path: Path, user_steered_project: Project
) -> None:
    result = _verify(user_steered_project, quants=("Q8_0",))
    (check,) = [c for c in result.checks if c.name == "generation"]
    assert check.status == PASSED, check.summary
    assert {a["stop_type"] for a in check.figures["answers"]} == {"word"}
    assert {a["stopping_word"] for a in check.figures["answers"]} == {"<|user|>"}

    project = copy_project(user_steered_project, tmp_path / "p")
    modelfile = project.layout.modelfile(PERSONA)
    lines = modelfile.read_text(encoding="utf-8").splitlines(keepends=True)
    modelfile.write_text("".join(ln for ln in lines if not ln.startswith("PARAMETER stop")))
    result = _verify(project, quants=("Q8_0",))
    (check,) = [c for c in result.checks if c.name == "generation"]
    assert check.status == FAILED
    assert check.summary.startswith("4 of 4 answers ran to the 48-token limit without a stop")
    assert not result.passed
