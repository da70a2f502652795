"""Persona retention and the choices built on it, without a model: the retention figures on
logits whose answer is known by construction, answer agreement, the verdict, the bounds,
a persona's own verify prompts, the calibration prompts kept apart from the measured ones,
and the `--type auto` options."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from persona_export.cli import app
from persona_export.errors import UsageError
from persona_export.verify.answers import agreement
from persona_export.verify.checks import judge_quant
from persona_export.verify.data import (
    load_bounds,
    load_conversations,
    parse_retention_overrides,
    verify_conversations,
)
from persona_export.verify.retention import retention

RNG = np.random.default_rng(0)


def _logits(positions: int = 40, vocab: int = 64, scale: float = 3.0) -> np.ndarray:
    return (RNG.standard_normal((positions, vocab)) * scale).astype(np.float32)


@pytest.fixture(scope="module")
def persona() -> tuple[np.ndarray, np.ndarray]:
    """(base, f16) logits: the F16 is the base moved by an adapter-like shift."""
    base = _logits()
    return base, (base + _logits(scale=1.5)).astype(np.float32)


def test_retention_of_the_f16_itself_and_of_the_base(persona) -> None:  # type: ignore[no-untyped-def]
    base, f16 = persona
    same = retention([(f16, f16.copy(), base)])
    assert same.retention == pytest.approx(1.0) and same.kl_retention == pytest.approx(1.0)
    assert same.kl == pytest.approx(0.0, abs=1e-12) and same.correlation == pytest.approx(1.0)
    assert same.signal > 0.3  # the shift is a real persona signal
    back = retention([(f16, base.copy(), base)])
    assert back.retention == pytest.approx(0.0, abs=1e-12)
    assert back.kl == pytest.approx(back.signal) and back.kl_retention == pytest.approx(0.0)


def test_retention_is_the_share_of_the_shift_kept(persona) -> None:  # type: ignore[no-untyped-def]
    base, f16 = persona
    half = (base + 0.5 * (f16 - base)).astype(np.float32)
    kept = retention([(f16, half, base)])
    # a logit shift halved is a log-probability shift halved, whatever each row's constant
    assert kept.retention == pytest.approx(0.5, abs=1e-5)
    assert kept.correlation == pytest.approx(1.0, abs=1e-5)
    # the KL ratio counts the loss squared: half the persona gone reads as 3/4 kept
    assert 0.6 < kept.kl_retention < 0.9


def test_positions_the_adapter_does_not_change_do_not_count(persona) -> None:  # type: ignore[no-untyped-def]
    base, f16 = persona
    half = (base + 0.5 * (f16 - base)).astype(np.float32)
    quiet = _logits()  # the adapter changes nothing here, the quant adds noise
    noisy = (quiet + _logits(scale=0.5)).astype(np.float32)
    alone = retention([(f16, half, base)])
    with_quiet = retention([(f16, half, base), (quiet, noisy, quiet.copy())])
    assert with_quiet.positions == alone.positions + quiet.shape[0]
    assert with_quiet.retention == pytest.approx(alone.retention, abs=1e-9)
    assert with_quiet.kl_retention < alone.kl_retention - 0.1  # the KL ratio is penalized


def test_a_small_persona_signal_keeps_retention_measurable() -> None:
    """Noise unrelated to the persona and larger than its signal: the KL ratio says the
    persona is gone (below 0), the slope still finds it kept (within its error of 1)."""
    base = _logits(positions=400, vocab=128)
    f16 = (base + _logits(positions=400, vocab=128, scale=0.15)).astype(np.float32)
    quant = (f16 + _logits(positions=400, vocab=128, scale=0.3)).astype(np.float32)
    got = retention([(f16, quant, base)])
    assert got.kl_retention < 0
    assert abs(got.retention - 1.0) < 4 * got.retention_se + 0.05
    assert 0 < got.retention_se < 0.1


def test_retention_uses_the_common_vocabulary_and_says_when_undefined(persona) -> None:  # type: ignore[no-untyped-def]
    base, f16 = persona
    wider = np.concatenate([f16, np.zeros((f16.shape[0], 8), np.float32)], axis=1)
    assert retention([(wider, wider.copy(), base)]).retention == pytest.approx(1.0)
    none = retention([(base, _logits(), base.copy())]).to_json()
    assert none["persona_signal"] == 0.0
    assert none["retention"] is None and none["kl_retention"] is None
    with pytest.raises(ValueError, match="position counts differ"):
        retention([(f16, f16[:-1], base)])


def test_answer_agreement() -> None:
    ref = [(1, 2, 3, 4), (1, 2), (5, 6, 7, 8)]
    other = [(1, 2, 3, 4), (1, 2, 9), (5, 6, 7, 9)]
    got = agreement(ref, other, prefix_tokens=3, max_tokens=4)
    assert (got.answers, got.identical, got.same_prefix) == (3, 1, 2)
    assert got.common_tokens == pytest.approx((4 + 2 + 3) / 3)
    assert got.summary() == "answers 1/3 identical, 2/3 with the same first 3 tokens"


def _figures(kl: float, signal: float, kept: float | None) -> dict[str, object]:
    answers = {"answers": 4, "identical": 3, "same_prefix": 4, "prefix_tokens": 16}
    return {
        "kl_mean": kl,
        "persona_signal": signal,
        "retention": kept,
        "retention_se": 0.01,
        "top1_agreement": 0.9,
        "answers": answers,
    }


def test_judge_quant_on_kl_and_retention() -> None:
    bounds = load_bounds(retention_min={"Q4_K_M": 0.8})
    ok = judge_quant("Q4_K_M", _figures(0.1, 1.5, 0.85), bounds)
    assert ok.passed and ok.judged_retention and ok.reasons == ()
    assert ok.summary == (
        "KL 0.1 (max 0.3); retention 0.850 ± 0.01 (min 0.8) of a 1.5-nat persona signal; "
        "top-1 90.0%; answers 3/4 identical, 4/4 with the same first 16 tokens"
    )
    lost = judge_quant("Q4_K_M", _figures(0.1, 1.5, 0.7), bounds)
    assert not lost.passed and lost.reasons == ("retention 0.700 < 0.8",)
    both = judge_quant("Q8_0", _figures(0.2, 1.5, 0.2), bounds)  # default 0.9 for Q8_0
    assert both.reasons == ("KL 0.2 > 0.05", "retention 0.200 < 0.9")
    quiet = judge_quant("Q4_K_M", _figures(0.01, 0.005, -3.0), bounds)
    assert quiet.passed and not quiet.judged_retention
    assert "retention not judged: persona signal 5.00e-03 nats < 0.02" in quiet.summary


def test_retention_bounds_and_overrides() -> None:
    bounds = load_bounds()
    assert bounds.retention_bound("q4_k_m") == 0.9 == bounds.retention_default
    assert (bounds.signal_min, bounds.answer_tokens, bounds.prefix_tokens) == (0.02, 64, 16)
    assert load_bounds(retention_min={"Q3_K_M": 0.7}).retention_bound("Q3_K_M") == 0.7
    assert load_bounds().for_types(["q8_0"])["retention_min"] == {"Q8_0": 0.9}
    assert parse_retention_overrides(["q3_k_m=0.75"]) == {"Q3_K_M": 0.75}
    for bad in ("Q3_K_M", "Q3_K_M=high", "=0.5", "Q8_0=nan"):
        with pytest.raises(UsageError, match="--retention-min .* is not TYPE=VALUE"):
            parse_retention_overrides([bad])
    with pytest.raises(UsageError, match="must be within 0..1"):
        load_bounds(retention_min={"Q8_0": 1.5})


def test_a_personas_own_verify_prompts(tmp_path: Path) -> None:
    from persona_export.personas import load_personas

    path = tmp_path / "personas.toml"
    path.write_text(
        '[personas.cap]\nsystem = "Arr."\n'
        'verify_prompts = ["Who are you?", "What is a variable in programming?"]\n'
    )
    assert load_personas([path])["cap"].verify_prompts == (
        "Who are you?",
        "What is a variable in programming?",
    )
    shipped = load_conversations()
    conversations = verify_conversations("cap", personas_file=path, prompts_file=None)
    # the shipped ones, then the persona's that are new (the second is already asked)
    assert conversations == (*shipped, ({"role": "user", "content": "Who are you?"},))
    path.write_text('[personas.cap]\nverify_prompts = "Who are you?"\n')
    with pytest.raises(UsageError, match="'verify_prompts' must be a list of non-empty strings"):
        load_personas([path])


def test_calibration_prompts_are_never_the_measured_ones() -> None:
    from persona_export.personas import load_personas, persona_files
    from persona_export.verify.calibration import (
        calibration_questions,
        load_calibration_prompts,
        normalized,
    )

    shipped = load_calibration_prompts()
    assert len(shipped.calibration) >= 300 and len(shipped.held_back) >= 30
    assert len(set(map(normalized, shipped.calibration))) == len(shipped.calibration)
    # coding and everyday prompts alternate, so that any first N cover both
    assert shipped.calibration[0].startswith("What does a for loop")
    assert shipped.calibration[1] == "How do I boil an egg?"

    measured = [t["content"] for c in load_conversations() for t in c]
    for persona in load_personas(persona_files(None)).values():
        measured += persona.verify_prompts
    measured.append(shipped.calibration[4].upper())  # as a persona might write it
    questions = calibration_questions(measured)
    held = {normalized(p) for p in (*measured, *shipped.held_back)}
    assert held.isdisjoint(map(normalized, questions))
    assert shipped.calibration[4] not in questions
    assert len(questions) == len(shipped.calibration) - 1
    assert calibration_questions(measured, limit=10) == questions[:10]


def test_imatrix_chunk_size_for_short_texts() -> None:
    from persona_export.llamacpp.imatrix import context_for

    assert context_for(40_000) == 512
    assert context_for(1_000) == 256
    assert context_for(300) == 128
    assert context_for(100) == 64  # the least; llama-imatrix then says the text is too short


def test_ladder_data_and_options() -> None:
    from persona_export.stages.quantize import QuantizeConfig
    from persona_export.verify.ladder import default_ladder, parse_ladder

    assert default_ladder() == ("Q3_K_M", "Q4_K_S", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
    assert parse_ladder(["q4_k_m, Q8_0", "Q6_K"]) == ("Q4_K_M", "Q8_0", "Q6_K")
    assert QuantizeConfig("cap", quant_types=("auto",)).auto
    with pytest.raises(UsageError, match="--type auto chooses one type: give it alone"):
        QuantizeConfig("cap", quant_types=("AUTO", "Q8_0"))
    with pytest.raises(UsageError, match="--ladder applies to --type auto"):
        QuantizeConfig("cap", ladder=("Q8_0",))
    with pytest.raises(UsageError, match="give one importance matrix"):
        QuantizeConfig("cap", imatrix=Path("m.gguf"), imatrix_auto=True)


def test_ladder_table() -> None:
    from persona_export.cli.quantize import ladder_lines
    from persona_export.verify.ladder import Rung

    figures = {"kl_mean": 0.0612, "retention": 0.95, "answers": {"identical": 3, "answers": 4}}
    lines = ladder_lines(
        [
            Rung("Q3_K_M", 80_000_000, 3.9, {**figures, "retention": 0.7}, "failed: retention"),
            Rung("Q4_K_M", 100_000_000, 4.9, figures, "chosen", cached=True),
            Rung("Q8_0", None, None, None, "not needed"),
        ]
    )
    assert [re.split(r"\s{2,}", line) for line in lines] == [
        ["type", "size", "bits/w", "KL", "retention", "answers", "verdict"],
        ["Q3_K_M", "80.0 MB", "3.90", "0.0612", "0.700", "3/4", "failed: retention"],
        ["Q4_K_M", "100.0 MB", "4.90", "0.0612", "0.950", "3/4", "chosen (cached)"],
        ["Q8_0", "-", "-", "-", "-", "-", "not needed"],
    ]


def test_quantize_command_refuses_auto_with_another_type() -> None:
    run = CliRunner().invoke(app, ["quantize", "--persona", "cap", "--type", "auto", "-t", "Q8_0"])
    assert run.exit_code == 2
    assert run.stderr.splitlines()[0] == "error: --type auto chooses one type: give it alone"


def test_second_demo_persona_data() -> None:
    from persona_export.demo.train import (
        DEMO_BUTLER_DATA,
        DEMO_DATA,
        DEMO_PERSONAS,
        load_training_data,
    )
    from persona_export.personas import load_personas

    data = load_training_data(DEMO_BUTLER_DATA, DEMO_PERSONAS)
    assert data.persona == "demo_butler" and "butler" in data.system
    assert len(data.pairs) >= 10 and math.isfinite(data.settings["learning_rate"])
    # verify asks what training did not: the persona must carry over to new questions
    for path in (DEMO_DATA, DEMO_BUTLER_DATA):
        trained = load_training_data(path, DEMO_PERSONAS)
        persona = load_personas([DEMO_PERSONAS])[trained.persona]
        assert persona.verify_prompts
        assert not set(persona.verify_prompts) & {q for q, _ in trained.pairs}


def test_auto_resolves_to_the_recorded_choice(tmp_path: Path) -> None:
    import json

    from persona_export.errors import InputNotFoundError
    from persona_export.layout import Layout
    from persona_export.stages.quantize_auto import resolve_types

    layout = Layout(gguf_base=tmp_path)
    with pytest.raises(InputNotFoundError) as err:
        resolve_types(layout, "cap", ["auto"])
    assert err.value.hint == "run `persona-export quantize --persona cap --type auto` first"
    layout.gguf_dir("cap").mkdir(parents=True)
    layout.quant_auto_record("cap").write_text(json.dumps({"chosen": "Q4_K_S"}))
    with pytest.raises(InputNotFoundError, match="names no existing GGUF"):
        resolve_types(layout, "cap", ["AUTO"])  # the record, but not the file
    layout.gguf("cap", "Q4_K_S").write_bytes(b"GGUF")
    assert resolve_types(layout, "cap", ["auto", "q8_0", "Q4_K_S"]) == ["Q4_K_S", "Q8_0"]
