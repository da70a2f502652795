"""The gguf stage with the real pinned converter on tiny models shaped like Phi-4-mini and
Llama (SentencePiece and BPE tokenizers)."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from persona_export.artifacts import manifest_path_for
from persona_export.cli import app
from persona_export.llamacpp.gguf_file import read_gguf
from persona_export.stages.gguf import GgufConfig
from persona_export.stages.gguf import run as run_gguf
from tests import modelkit as mk
from tests.ggufkit import copy_merged, dir_args, leftovers, project_layout, sha256

pytestmark = [pytest.mark.slow, pytest.mark.llama]
runner = CliRunner()


def test_phi4mini_keeps_its_structure(phi4mini_project: Path) -> None:
    f16 = phi4mini_project / "gguf_models" / "cap" / "cap-F16.gguf"
    gguf = read_gguf(f16)
    assert gguf.architecture == "phi3"
    assert gguf.name == "cap"
    assert gguf.file_type == 1
    assert gguf.block_count == 2
    assert gguf.metadata["tokenizer.ggml.model"] == "gpt2"
    assert gguf.metadata["tokenizer.ggml.pre"] == "gpt-4o"  # the o200k pre-tokenizer
    assert gguf.token_count == mk.PHI4MINI_VOCAB_SIZE
    assert gguf.metadata["tokenizer.ggml.eos_token_id"] == 199999
    assert gguf.chat_template == mk.PHI4MINI_CHAT_TEMPLATE
    assert gguf.metadata["phi3.rope.dimension_count"] == 96  # partial rotary 0.75 of 128
    assert gguf.tensor("rope_factors_long.weight").shape == (48,)  # type: ignore[union-attr]
    assert gguf.tensor("rope_factors_short.weight").shape == (48,)  # type: ignore[union-attr]
    assert gguf.tensor("output.weight") is None  # tied embeddings
    assert gguf.tensor("blk.0.attn_qkv.weight") is not None  # fused projections kept fused

    manifest = json.loads(f16.with_name(f16.name + ".manifest.json").read_text())
    merged = phi4mini_project / "merged_models" / "cap"
    assert manifest["outputs"]["gguf"]["sha256"] == sha256(f16)
    assert {k: v["sha256"] for k, v in manifest["inputs"].items()} == {
        p.name: sha256(p) for p in merged.iterdir()
    }
    assert manifest["tokenizer_fix"] is None
    assert leftovers(f16.parent) == []


def test_cli_rerun_is_skipped_in_well_under_a_second(phi4mini_project: Path) -> None:
    f16 = phi4mini_project / "gguf_models" / "cap" / "cap-F16.gguf"
    started = time.perf_counter()
    result = runner.invoke(app, ["gguf", "-p", "cap", *dir_args(phi4mini_project)])
    assert time.perf_counter() - started < 1.0
    assert result.exit_code == 0
    bpw = f16.stat().st_size * 8 / read_gguf(f16).n_weights
    assert result.stdout == f"F16\t{f16.stat().st_size / 1e9:.2f} GB\t{bpw:.2f} bpw\t{f16}\n"
    assert result.stderr == f"{f16} is up to date (use --force to convert again)\n"


def test_launcher_writes_what_the_plain_converter_writes(
    tiny_phi4mini: Path, phi4mini_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage's faster F16 cast (llamacpp/convert_launcher.py) changes no byte; the
    manifest says which way the converter ran."""
    monkeypatch.setenv("PERSONA_EXPORT_PLAIN_CONVERTER", "1")
    copy_merged(tiny_phi4mini, tmp_path, "cap")
    plain = run_gguf(GgufConfig("cap", layout=project_layout(tmp_path)))
    reference = phi4mini_project / "gguf_models" / "cap" / "cap-F16.gguf"
    assert sha256(plain.gguf_path) == sha256(reference)
    assert json.loads(plain.manifest_path.read_text())["converter_launcher"] is False
    assert json.loads(manifest_path_for(reference).read_text())["converter_launcher"]


def test_transformers5_resaved_tokenizer_gives_the_same_file(
    tiny_phi4mini: Path, phi4mini_project: Path, tmp_path: Path
) -> None:
    import transformers

    merged = tmp_path / "merged_models" / "cap"
    merged.mkdir(parents=True)
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy2(tiny_phi4mini / name, merged / name)
    transformers.AutoTokenizer.from_pretrained(tiny_phi4mini).save_pretrained(merged)
    tok_config = json.loads((merged / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "TokenizersBackend"
    assert "chat_template" not in tok_config and (merged / "chat_template.jinja").is_file()
    assert not (merged / "tokenizer.model").exists()

    result = run_gguf(GgufConfig("cap", layout=project_layout(tmp_path)))
    assert result.tokenizer_fix == (
        "tokenizer_config.json: tokenizer_class 'TokenizersBackend' -> 'GPT2Tokenizer'"
    )
    reference = phi4mini_project / "gguf_models" / "cap" / "cap-F16.gguf"
    assert sha256(result.gguf_path) == sha256(reference)  # byte for byte
    assert leftovers(result.gguf_path.parent) == []


def test_bf16_weights_with_outtype_auto_give_a_bf16_gguf(
    tiny_phi4mini: Path, tmp_path: Path
) -> None:
    copy_merged(tiny_phi4mini, tmp_path, "cap")
    result = run_gguf(GgufConfig("cap", layout=project_layout(tmp_path), outtype="auto"))
    assert result.gguf_path.name == "cap-BF16.gguf"
    assert read_gguf(result.gguf_path).file_type == 32
    assert result.bits_per_weight == pytest.approx(result.size_bytes * 8 / result.n_weights)


def test_llama_with_sentencepiece(tmp_path: Path) -> None:
    mk.make_llama(tmp_path / "merged_models" / "cap", tokenizer="spm")
    result = runner.invoke(app, ["gguf", "-p", "cap", *dir_args(tmp_path)])
    assert result.exit_code == 0, result.output
    # the converter's note on transformers 5's "default" RoPE type says nothing a user can act
    # on: shown with --verbose only
    assert "RoPE" not in result.stderr
    gguf = read_gguf(tmp_path / "gguf_models" / "cap" / "cap-F16.gguf")
    assert gguf.architecture == "llama"
    assert gguf.metadata["tokenizer.ggml.model"] == "llama"
    assert gguf.token_count == 512
    assert gguf.chat_template == mk.LLAMA2_CHAT_TEMPLATE
    assert gguf.tensor("output.weight") is not None  # untied lm_head
    assert gguf.name == "cap"


def test_llama_with_bpe(tmp_path: Path) -> None:
    mk.make_llama(tmp_path / "merged_models" / "cap", tokenizer="bpe")
    result = run_gguf(GgufConfig("cap", layout=project_layout(tmp_path)))
    gguf = read_gguf(result.gguf_path)
    assert gguf.metadata["tokenizer.ggml.model"] == "gpt2"
    assert gguf.metadata["tokenizer.ggml.pre"] == "dbrx"  # cl100k_base
    assert gguf.chat_template == mk.LLAMA3_CHAT_TEMPLATE
    assert result.warnings == ()


def test_unknown_bpe_pre_tokenizer_is_explained(tmp_path: Path) -> None:
    mk.make_phi4mini(tmp_path / "merged_models" / "cap", vocab="small")
    result = runner.invoke(app, ["gguf", "-p", "cap", *dir_args(tmp_path)])
    assert result.exit_code == 1
    merged = tmp_path / "merged_models" / "cap"
    error, hint = result.stderr.splitlines()[-2:]
    assert re.fullmatch(
        re.escape(
            f"error: the pinned llama.cpp converter does not recognise the BPE pre-tokenizer of "
            f"{merged}/tokenizer.json (GPT2Tokenizer, BPE with "
        )
        + r"\d+ tokens, pre-tokenizer Split\+ByteLevel; chkhsh [0-9a-f]{64}\)",
        error,
    ), error
    assert hint == (
        "hint: use the base model's tokenizer files unchanged (a tokenizer the pinned converter "
        "knows, e.g. Phi-4-mini's gpt-4o), or pin a newer llama.cpp in "
        "vendor/llama.cpp.lock.toml whose convert_hf_to_gguf.py lists this chkhsh"
    )
    # the banner lines are explained by the error, not repeated as warnings
    assert "warning: converter: **" not in result.stderr
    out_dir = tmp_path / "gguf_models" / "cap"
    assert sorted(p.name for p in out_dir.iterdir()) == ["cap-F16.gguf.log"]
