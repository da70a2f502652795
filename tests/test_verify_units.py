"""The parts of verify that need no model: the figures, pe-logits' output format, the data
files, the template and generation judgements, and the command's errors."""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from persona_export.cli import app
from persona_export.errors import ExternalToolError, UsageError
from persona_export.llamacpp.logits import read_pe_logits
from persona_export.verify.checks import FAILED, PASSED
from persona_export.verify.checks import generation_check as _generation_check
from persona_export.verify.checks import template_check as _template_check
from persona_export.verify.data import load_bounds, load_conversations, parse_kl_overrides
from persona_export.verify.metrics import compare


def test_compare_exact_figures() -> None:
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 0.0, 0.0]], dtype=np.float32)
    other = np.array([[1.0, 2.0, 2.0], [3.0, 0.0, 1.0]], dtype=np.float32)
    cmp = compare([(ref, other)])
    assert cmp.positions == 2 and cmp.vocab == 3
    assert cmp.nmse == pytest.approx(2.0 / 23.0)
    assert cmp.max_abs_diff == 1.0
    # row 0: 2 and 3 -> ref picks 2, other ties 1,2 at 2.0 (argmax takes the first: 1)
    assert cmp.top1_mismatches == 1 and cmp.top1_agreement == 0.5
    ref64, other64 = ref.astype(np.float64), other.astype(np.float64)
    p = np.exp(ref64) / np.exp(ref64).sum(axis=1, keepdims=True)
    q = np.exp(other64) / np.exp(other64).sum(axis=1, keepdims=True)
    kl = (p * np.log(p / q)).sum(axis=1)
    assert cmp.kl_mean == pytest.approx(kl.mean(), rel=1e-9)
    assert cmp.kl_max == pytest.approx(kl.max(), rel=1e-9)


def test_compare_identical_and_uniform() -> None:
    logits = np.random.default_rng(0).normal(size=(5, 50)).astype(np.float32)
    same = compare([(logits, logits.copy())])
    assert same.nmse == 0.0 and same.kl_mean == 0.0 and same.top1_agreement == 1.0
    uniform = compare([(np.zeros((3, 64), np.float32), np.zeros((3, 64), np.float32))])
    assert uniform.ref_entropy_ratio == pytest.approx(1.0)


def test_compare_only_common_vocabulary_columns() -> None:
    ref = np.array([[0.0, 5.0]], dtype=np.float32)
    padded = np.array([[0.0, 5.0, 99.0]], dtype=np.float32)  # a GGUF with padded vocabulary
    cmp = compare([(ref, padded)])
    assert cmp.vocab == 2 and cmp.nmse == 0.0 and cmp.top1_agreement == 1.0


def test_near_tie_swap_is_not_decisive() -> None:
    ref = np.array([[10.0, 9.999, 0.0], [10.0, 5.0, 0.0]], dtype=np.float32)
    other = np.array([[9.999, 10.0, 0.0], [5.0, 10.0, 0.0]], dtype=np.float32)
    cmp = compare([(ref, other)], tie_rel=0.02)
    assert cmp.top1_mismatches == 2
    assert cmp.decisive_mismatches == 1  # only the second position's swap is a real change


def test_read_pe_logits_round_trip(tmp_path: Path) -> None:
    blocks = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones((1, 3), np.float32)]
    path = tmp_path / "out.bin"
    with open(path, "wb") as fh:
        for block in blocks:
            fh.write(struct.pack("<ii", *block.shape))
            fh.write(block.astype("<f4").tobytes())
    got = read_pe_logits(path)
    assert [g.tolist() for g in got] == [b.tolist() for b in blocks]
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(ExternalToolError, match="truncated pe-logits output"):
        read_pe_logits(path)


def test_shipped_prompts_and_bounds() -> None:
    conversations = load_conversations()
    assert len(conversations) >= 3
    assert all(c[-1]["role"] == "user" for c in conversations)
    bounds = load_bounds()
    assert (bounds.nmse_max, bounds.top1_min) == (1e-3, 0.99)
    assert bounds.peft_nmse_max == 1e-3  # 16-bit merged weights: rounding allowed
    assert load_bounds(merged_dtype="float32").peft_nmse_max == 1e-6
    assert bounds.kl_bound("q8_0") == 0.05
    assert bounds.kl_bound("Q4_K_M") == 0.3
    assert bounds.kl_bound("TQ1_0") == bounds.kl_default
    tighter = load_bounds(nmse_max=1e-5, kl_max={"Q4_K_M": 0.01})
    assert tighter.nmse_max == 1e-5 and tighter.kl_bound("Q4_K_M") == 0.01
    with pytest.raises(UsageError, match="--top1-min 1.5 is out of range"):
        load_bounds(top1_min=1.5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("x = 1", "no [[conversations]]"),
        ("[[conversations]]\nturns = []", "conversation 1 has no turns"),
        (
            '[[conversations]]\nturns = [{ role = "bot", content = "hi" }]',
            "each turn needs exactly a role (user or assistant)",
        ),
        (
            '[[conversations]]\nturns = [{ role = "user", content = "a" }, '
            '{ role = "assistant", content = "b" }]',
            "must end with a user turn",
        ),
        ("[[conversations]\n", "is not valid TOML"),
    ],
)
def test_bad_prompts_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "prompts.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match=re.escape(message)):
        load_conversations(path)


def test_kl_overrides() -> None:
    assert parse_kl_overrides(["q4_k_m=0.2", "Q8_0=1e-2"]) == {"Q4_K_M": 0.2, "Q8_0": 0.01}
    for bad in ("Q4_K_M", "Q4_K_M=x", "=0.1", "Q8_0=-1"):
        with pytest.raises(UsageError, match="is not TYPE=VALUE"):
            parse_kl_overrides([bad])


def test_template_check_ignores_only_a_leading_bos() -> None:
    hf = ["<s>[INST] hi [/INST]"]
    assert _template_check("t", "Go", hf, ["[INST] hi [/INST]"], "<s>").status == PASSED
    check = _template_check("t", "Go", hf, ["[INST] hi[/INST]"], "<s>")
    assert check.status == FAILED
    assert check.summary == (
        "conversation 1: Go differs from the HF template at character 9: "
        "expected '[INST] hi [/INST]', got '[INST] hi[/INST]'"
    )
    assert _template_check("t", "Go", hf, [None], "<s>").summary == (
        "conversation 1: Go could not be rendered"
    )


def test_generation_check() -> None:
    stopped = [
        {"stop_type": "eos", "stopping_word": "", "tokens": 12, "text": "Arr."},
        {"stop_type": "word", "stopping_word": "<|user|>", "tokens": 30, "text": "Ahoy."},
    ]
    check = _generation_check(stopped, 64)
    assert check.status == PASSED
    assert check.summary == "all 2 answers ended on a stop ('<|user|>', EOS); longest 30 tokens"
    endless = [
        *stopped,
        {"stop_type": "limit", "stopping_word": "", "tokens": 64, "text": "la " * 40},
    ]
    check = _generation_check(endless, 64)
    assert check.status == FAILED
    assert check.summary.startswith(
        "1 of 3 answers ran to the 64-token limit without a stop (conversation 3 ends '"
    )
    assert check.summary.endswith("la la ')")
    assert math.isclose(check.figures["max_tokens"], 64)


def test_verify_command_missing_merged_model(tmp_path: Path) -> None:
    run = CliRunner().invoke(
        app,
        ["verify", "--persona", "cap", "--output-dir-base", str(tmp_path / "merged")],
    )
    assert run.exit_code == 1
    assert run.stderr.splitlines() == [
        f"error: no merged model for cap at {tmp_path / 'merged' / 'cap'}",
        "hint: merge first: persona-export merge --persona cap",
    ]


def test_verify_command_bad_kl_bound(tmp_path: Path) -> None:
    run = CliRunner().invoke(app, ["verify", "--persona", "cap", "--kl-max", "Q4_K_M"])
    assert run.exit_code == 2
    assert run.stderr.splitlines()[0] == "error: --kl-max 'Q4_K_M' is not TYPE=VALUE"


def test_verify_command_bad_persona_name() -> None:
    run = CliRunner().invoke(app, ["verify", "--persona", "../x"])
    assert run.exit_code == 2
    assert "invalid persona name '../x'" in run.stderr


def test_memory_preflight(tmp_path: Path) -> None:
    from persona_export.errors import PersonaExportError
    from persona_export.verify.memory import check_memory

    (tmp_path / "config.json").write_text('{"torch_dtype": "bfloat16"}')
    (tmp_path / "model.safetensors").write_bytes(b"\0" * (1 << 20))  # 0.5 M bf16 params
    check_memory(tmp_path, "float32", available=8 << 30)
    with pytest.raises(PersonaExportError) as err:
        check_memory(tmp_path, "float32", available=1 << 20)
    assert err.value.message == (
        "verify needs about 0.5 GiB of RAM to run the models in float32; 0.0 GiB is available"
    )
    assert err.value.hint.startswith("pass --hf-dtype bfloat16")
