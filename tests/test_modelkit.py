"""Sanity tests of the test model kit (tests/modelkit.py).

Tests that build the o200k/cl100k tokenizers, load PEFT or run llama.cpp's converter are
marked ``slow``. Converter tests use the vendored converter, found as the gguf stage finds it
(``persona-export vendor``; PERSONA_EXPORT_VENDOR_DIR), and skip when it is not extracted.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors import safe_open

from tests import modelkit as mk

SYSTEM_USER = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]


def _tensor_info(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, dtype) of a safetensors file, without loading data."""
    info: dict[str, tuple[tuple[int, ...], str]] = {}
    with safe_open(str(path), "pt") as f:
        for name in f.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
            part = f.get_slice(name)
            info[name] = (tuple(part.get_shape()), part.get_dtype())
    return info


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _converter() -> tuple[Path, dict[str, str]]:
    """The vendored converter and its environment, found as the gguf stage finds them
    (persona_export.llamacpp.vendor: PERSONA_EXPORT_VENDOR_DIR, checked against the lock);
    skips the test when the sources are not extracted."""
    from persona_export.errors import ToolMissingError
    from persona_export.llamacpp import vendor

    try:
        script = vendor.converter_script()
    except ToolMissingError as exc:
        pytest.skip(f"{exc.message} ({exc.hint})")
    return script, {**os.environ, **vendor.converter_env()}


def _convert(model_dir: Path, out: Path) -> subprocess.CompletedProcess[str]:
    script, env = _converter()
    cmd = [sys.executable, str(script), str(model_dir), "--outfile", str(out)]
    return subprocess.run(
        [*cmd, "--outtype", "f16"], capture_output=True, text=True, env=env, timeout=300
    )


def test_converter_is_the_vendored_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # no stale build from a cache folder: without vendored sources the converter tests skip
    monkeypatch.setenv("PERSONA_EXPORT_VENDOR_DIR", str(tmp_path / "no-vendor"))
    with pytest.raises(pytest.skip.Exception, match="converter not found"):
        _convert(tmp_path / "model", tmp_path / "out.gguf")


def _gguf_field(path: Path, key: str) -> Any:
    import gguf

    return gguf.GGUFReader(str(path)).fields[key].contents()


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def phi_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mk.make_phi4mini(tmp_path_factory.mktemp("phi_small"), vocab="small")


@pytest.fixture(scope="session")
def phi_o200k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mk.make_phi4mini(tmp_path_factory.mktemp("phi_o200k"))


@pytest.fixture(scope="session")
def llama_spm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mk.make_llama(tmp_path_factory.mktemp("llama_spm"))


@pytest.fixture(scope="session")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mk.make_gpt2(tmp_path_factory.mktemp("gpt2"))


# ----------------------------------------------------------------------------- fast


def test_small_tokenizer_is_deterministic(tmp_path: Path) -> None:
    a = mk._phi4mini_small_tokenizer(tmp_path / "a")
    b = mk._phi4mini_small_tokenizer(tmp_path / "b")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_cache_builds_once_and_is_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONA_EXPORT_TEST_CACHE", str(tmp_path / "cache"))
    calls: list[Path] = []

    def build(d: Path) -> None:
        calls.append(d)
        (d / "x.txt").write_text("x")

    first = mk._cached_folder({"k": 1}, build)
    second = mk._cached_folder({"k": 1}, build)
    assert first == second and len(calls) == 1
    assert (first / ".complete").is_file() and (first / "x.txt").read_text() == "x"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [first.name]  # no temp dirs left


def test_phi4mini_config_real_values() -> None:
    cfg = mk.phi4mini_config()
    assert cfg["rope_scaling"]["type"] == "longrope"
    assert cfg["rope_scaling"]["long_factor"] == list(mk.PHI4MINI_LONG_FACTOR)
    assert cfg["rope_scaling"]["short_factor"] == [1.0] * 48
    shapes = mk.phi4mini_tensor_shapes(
        num_layers=32,
        hidden_size=3072,
        intermediate_size=8192,
        num_heads=24,
        num_kv_heads=8,
        vocab_size=200064,
    )
    assert sum(math.prod(shape) for _, shape in shapes) == 3_836_021_760


def test_make_phi4mini_small(phi_small: Path) -> None:
    cfg = _json(phi_small / "config.json")
    assert cfg["architectures"] == ["Phi3ForCausalLM"] and cfg["model_type"] == "phi3"
    assert cfg["partial_rotary_factor"] == 0.75 and cfg["tie_word_embeddings"] is True
    assert cfg["sliding_window"] == 262144 and cfg["original_max_position_embeddings"] == 4096
    assert len(cfg["rope_scaling"]["long_factor"]) == 48
    assert cfg["vocab_size"] % 64 == 0
    tensors = _tensor_info(phi_small / "model.safetensors")
    assert "lm_head.weight" not in tensors
    assert tensors["model.layers.0.self_attn.qkv_proj.weight"] == ((512, 256), "BF16")
    assert tensors["model.layers.1.mlp.gate_up_proj.weight"] == ((1024, 256), "BF16")
    tok_cfg = _json(phi_small / "tokenizer_config.json")
    assert tok_cfg["tokenizer_class"] == "GPT2Tokenizer" and tok_cfg["add_bos_token"] is False
    assert tok_cfg["chat_template"] == mk.PHI4MINI_CHAT_TEMPLATE
    gen = _json(phi_small / "generation_config.json")
    assert gen["eos_token_id"][1] == cfg["eos_token_id"]


def test_phi4mini_small_loads_and_chats(phi_small: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(phi_small)
    text = tok.apply_chat_template(SYSTEM_USER, add_generation_prompt=True, tokenize=False)
    assert text == "<|system|>S<|end|><|user|>U<|end|><|assistant|>"
    ids = tok.encode(text)
    assert tok.decode(ids) == text and ids[0] == tok.convert_tokens_to_ids("<|system|>")
    model = AutoModelForCausalLM.from_pretrained(phi_small)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


def test_make_llama_spm(llama_spm: Path) -> None:
    from transformers import AutoTokenizer

    assert (llama_spm / "tokenizer.model").is_file()
    tok = AutoTokenizer.from_pretrained(llama_spm)
    text = tok.apply_chat_template(SYSTEM_USER, tokenize=False)
    assert text == "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nU [/INST]"
    assert tok.encode("Hello world")[0] == 1
    assert _json(llama_spm / "config.json")["vocab_size"] == len(tok)
    assert "lm_head.weight" in _tensor_info(llama_spm / "model.safetensors")


def test_make_gpt2(gpt2: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gpt2)
    text = tok.apply_chat_template(SYSTEM_USER, add_generation_prompt=True, tokenize=False)
    assert (
        text
        == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    )
    model: Any = AutoModelForCausalLM.from_pretrained(gpt2)
    assert type(model.transformer.h[0].attn.c_attn).__name__ == "Conv1D"


# ----------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_o200k_matches_tiktoken_and_chat_template(phi_o200k: Path) -> None:
    import tiktoken
    from transformers import AutoTokenizer

    enc = tiktoken.Encoding(
        "o200k_base",
        pat_str=mk.O200K_PATTERN,
        mergeable_ranks=mk.load_tiktoken_ranks("o200k_base"),
        special_tokens={},
    )
    # with config.json beside it: transformers 5.24 loads a tokenizer-only folder that says
    # GPT2Tokenizer with GPT-2's own pre-tokenizer regex, which tokenizes o200k text wrongly
    tok = AutoTokenizer.from_pretrained(phi_o200k)
    assert len(tok) == 200029
    for text in [
        "Hello world, 3.14159!",
        "  I'VE  don't\n\n\ttabs 日本語 🚀 ",
        Path(mk.__file__).read_text()[:6000].replace("<|", "< |"),
    ]:
        assert tok.encode(text) == enc.encode_ordinary(text), text[:30]
    assert tok.encode("Hello world, 3.14159!") == [13225, 2375, 11, 220, 18, 13, 16926, 4621, 0]
    prompt = tok.apply_chat_template(SYSTEM_USER, add_generation_prompt=True, tokenize=False)
    assert prompt == "<|system|>S<|end|><|user|>U<|end|><|assistant|>"
    assert tok.encode(prompt) == [200022, 50, 200020, 200021, 52, 200020, 200019]
    for content, idx, special in mk.PHI4MINI_ADDED_TOKENS:
        assert tok.convert_tokens_to_ids(content) == idx
        assert tok.added_tokens_decoder[idx].special is special
    tok_json = _json(phi_o200k / "tokenizer.json")
    assert len(tok_json["model"]["vocab"]) == 200019 and len(tok_json["model"]["merges"]) == 199742
    assert _json(phi_o200k / "config.json")["vocab_size"] == 200064


@pytest.mark.slow
@pytest.mark.llama
def test_phi4mini_o200k_converts_as_gpt4o(phi_o200k: Path, tmp_path: Path) -> None:
    out = tmp_path / "phi.gguf"
    proc = _convert(phi_o200k, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _gguf_field(out, "tokenizer.ggml.pre") == "gpt-4o"
    assert _gguf_field(out, "phi3.rope.dimension_count") == 96
    assert len(_gguf_field(out, "tokenizer.ggml.tokens")) == 200064


@pytest.mark.slow
@pytest.mark.llama
@pytest.mark.parametrize(("tokenizer", "pre"), [("spm", None), ("bpe", "dbrx")])
def test_llama_converts(tokenizer: str, pre: str | None, tmp_path: Path) -> None:
    model = mk.make_llama(tmp_path / "m", tokenizer=tokenizer)  # type: ignore[arg-type]
    out = tmp_path / "llama.gguf"
    proc = _convert(model, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _gguf_field(out, "tokenizer.ggml.model") == ("llama" if pre is None else "gpt2")
    if pre is not None:
        assert _gguf_field(out, "tokenizer.ggml.pre") == pre


@pytest.mark.slow
def test_make_adapter_variants(phi_small: Path, gpt2: Path, tmp_path: Path) -> None:
    plain = mk.make_adapter(phi_small, tmp_path / "plain")
    cfg = _json(plain / "adapter_config.json")
    assert cfg["peft_type"] == "LORA" and cfg["base_model_name_or_path"] == str(phi_small)
    assert set(cfg["target_modules"]) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    info = _tensor_info(plain / "adapter_model.safetensors")
    assert info["base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight"][0] == (8, 256)
    assert info["base_model.model.model.layers.0.self_attn.qkv_proj.lora_B.weight"][0] == (512, 8)
    with safe_open(str(plain / "adapter_model.safetensors"), "pt") as f:
        assert (
            f.get_tensor("base_model.model.model.layers.0.mlp.down_proj.lora_B.weight").abs().sum()
            > 0
        )

    dora = mk.make_adapter(
        phi_small, tmp_path / "dora", use_dora=True, rank_pattern={"qkv_proj": 4}, dtype="bfloat16"
    )
    info = _tensor_info(dora / "adapter_model.safetensors")
    assert info["base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight"] == (
        (4, 256),
        "BF16",
    )
    assert "base_model.model.model.layers.0.self_attn.o_proj.lora_magnitude_vector" in info

    added = mk.make_adapter(phi_small, tmp_path / "added", added_tokens=["<|persona|>"])
    info = _tensor_info(added / "adapter_model.safetensors")
    n_tok = len(_json(added / "tokenizer.json")["model"]["vocab"]) + 1
    assert info["base_model.model.model.embed_tokens.weight"][0][0] == n_tok
    assert (added / "tokenizer_config.json").is_file()

    conv = mk.make_adapter(gpt2, tmp_path / "gpt2")
    cfg = _json(conv / "adapter_config.json")
    assert cfg["fan_in_fan_out"] is True and set(cfg["target_modules"]) == {"c_attn", "c_proj"}


@pytest.mark.slow
def test_synthetic_small_matches_real_peft(tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = mk.make_phi4mini_synthetic(
        tmp_path / "base", num_layers=2, hidden_size=256, intermediate_size=512, num_heads=2, num_kv_heads=1,
        shard_size_gb=0.05,
    )  # fmt: skip
    index = _json(base / "model.safetensors.index.json")
    assert set(index["weight_map"].values()) == {
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    }
    assert "lm_head.weight" not in index["weight_map"]
    synthetic = mk.make_synthetic_adapter(base, tmp_path / "synthetic")
    real = mk.make_adapter(base, tmp_path / "real", r=16, lora_alpha=32)
    shapes = {k: v[0] for k, v in _tensor_info(synthetic / "adapter_model.safetensors").items()}
    assert shapes == {k: v[0] for k, v in _tensor_info(real / "adapter_model.safetensors").items()}
    assert _json(synthetic / "adapter_config.json") == _json(real / "adapter_config.json")

    model = AutoModelForCausalLM.from_pretrained(base)
    assert model.dtype == torch.bfloat16
    peft_model = PeftModel.from_pretrained(model, synthetic)
    state = peft_model.state_dict()
    for key, value in load_file(str(synthetic / "adapter_model.safetensors")).items():
        assert torch.equal(state[re.sub(r"\.weight$", ".default.weight", key)], value), key
