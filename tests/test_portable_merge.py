"""A merged folder is a portable Transformers model (issue 15.1): llama.cpp's stock converter
converts it as it is, transformers 5 reads the same tokenizer as the adapter's, and its
tokenizer_config.json is one transformers 4.x can parse.

Every tiny test model (Phi-4-mini with the o200k tokenizer, Llama with SentencePiece and
with a cl100k BPE, GPT-2 on cl100k) is merged with three adapters: one without a tokenizer,
one whose tokenizer transformers 5 re-saved (same vocabulary, ``TokenizersBackend``), and one
that added tokens (saved by transformers 5). The stock converter is
``vendor/llama.cpp/convert_hf_to_gguf.py`` run by plain python (it puts the vendored gguf-py
on its own path): no launcher, no shadow folder.

transformers 4.x is not installed here, so the 4.x side is checked by reading the config as
a 4.x loader does: ``tokenizer_class`` names a class 4.x has, ``extra_special_tokens`` is a
dict when present (4.x calls ``.keys()`` on it), ``added_tokens_decoder`` entries are dicts
with a ``content`` (4.x builds ``AddedToken(**entry)``), none of transformers 5's loader
bookkeeping keys, and the chat template inline (the place every 4.x version reads).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from persona_export.llamacpp import vendor
from persona_export.llamacpp.converter_input import inspect_merged, tokenizer_fix
from persona_export.llamacpp.gguf_file import ArrayInfo, read_gguf_metadata
from persona_export.stages.merge import MergeConfig
from persona_export.stages.merge import run as run_merge
from tests import modelkit as mk
from tests.ggufkit import project_layout

pytestmark = [pytest.mark.slow, pytest.mark.llama]

# Tokenizer classes transformers 4.x has (the ones these bases and Phi-4-mini/Phi-3/Llama
# repositories on the hub name); transformers 5's "TokenizersBackend" is not one of them.
TRANSFORMERS4_CLASSES = {
    "GPT2Tokenizer",
    "GPT2TokenizerFast",
    "LlamaTokenizer",
    "LlamaTokenizerFast",
    "PreTrainedTokenizerFast",
}
TRANSFORMERS5_BOOKKEEPING = {"backend", "is_local", "local_files_only"}
ADDED = ["<|pirate|>", "<|arr|>"]
VARIANTS: dict[str, dict[str, Any]] = {
    "no-tokenizer": {},
    "resaved": {"resave_tokenizer": True},
    "added-tokens": {"added_tokens": ADDED},
}
MODELS = ("phi4mini", "llama-spm", "llama-bpe", "gpt2")
TOKENIZER_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
    "tokenizer.ggml.add_bos_token",
    "tokenizer.chat_template",
)
SAMPLE = "Arr, matey! <|im_end|> 42 ships\n\tsail <|pirate|>"
CONVERSATION = [
    {"role": "system", "content": "You are a pirate."},
    {"role": "user", "content": "What is a computer program?"},
]


@pytest.fixture(scope="module")
def bases(
    tmp_path_factory: pytest.TempPathFactory, tiny_phi4mini: Path, llama_spm: Path
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("portable")
    return {
        "phi4mini": tiny_phi4mini,
        "llama-spm": llama_spm,
        "llama-bpe": mk.make_llama(root / "llama-bpe", tokenizer="bpe"),
        "gpt2": mk.make_gpt2(root / "gpt2", vocab="cl100k"),
    }


def stock_convert(folder: Path, out: Path) -> Path:
    """convert_hf_to_gguf.py as it is, by plain python, on ``folder``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, str(vendor.converter_script()), str(folder), "--outfile", str(out)]
        + ["--outtype", "f16"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def tokenizer_metadata(gguf: Path) -> dict[str, Any]:
    meta = read_gguf_metadata(gguf, arrays=TOKENIZER_KEYS)
    return {
        key: value.values if isinstance(value, ArrayInfo) else value
        for key, value in meta.items()
        if key in TOKENIZER_KEYS
    }


@pytest.fixture(scope="module")
def reference(
    bases: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """model -> the tokenizer metadata of its base converted by the stock converter."""
    out = tmp_path_factory.mktemp("reference")
    return {m: tokenizer_metadata(stock_convert(b, out / f"{m}.gguf")) for m, b in bases.items()}


def check_transformers4_config(folder: Path, base: Path) -> dict[str, Any]:
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    base_config = json.loads((base / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["tokenizer_class"] in TRANSFORMERS4_CLASSES
    assert config["tokenizer_class"] == base_config["tokenizer_class"]
    assert not TRANSFORMERS5_BOOKKEEPING & set(config)
    assert isinstance(config.get("extra_special_tokens", {}), dict)
    for key, entry in (config.get("added_tokens_decoder") or {}).items():
        assert key.isdigit() and isinstance(entry, dict) and isinstance(entry["content"], str)
    for key in ("add_bos_token", "add_eos_token", "legacy"):
        assert config.get(key) == base_config.get(key), key  # transformers 5 drops these
    assert isinstance(config["chat_template"], str)  # inline, as each base keeps it
    assert not (folder / "chat_template.jinja").exists()
    return config


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("model", MODELS)
def test_stock_converter_and_both_transformers_read_the_merged_folder(
    model: str,
    variant: str,
    bases: dict[str, Path],
    reference: dict[str, dict[str, Any]],
    tmp_path: Path,
) -> None:
    import transformers

    base = bases[model]
    layout = project_layout(tmp_path)
    adapter = mk.make_adapter(base, layout.adapter("cap"), **VARIANTS[variant])
    if variant == "resaved":  # what the merge must not pass on
        resaved = json.loads((adapter / "tokenizer_config.json").read_text())
        assert set(resaved) >= TRANSFORMERS5_BOOKKEEPING
    merged = run_merge(MergeConfig("cap", layout=layout, base_model=str(base))).merged_dir

    # llama.cpp: the stock converter takes the folder as it is; the gguf stage needs no
    # shadow folder for it
    assert tokenizer_fix(inspect_merged(merged, "cap")) is None
    got = tokenizer_metadata(stock_convert(merged, tmp_path / "cap.gguf"))
    want = reference[model]
    if variant == "added-tokens":
        tokens = got["tokenizer.ggml.tokens"]
        ids = json.loads((merged / "tokenizer.json").read_text())["added_tokens"][-2:]
        assert [tokens[t["id"]] for t in ids] == ADDED
        # the base's tokens keep their ids (Phi-4-mini's padding rows are dropped by the
        # adapter's resize: compare up to the shorter list)
        n = min(len(tokens), len(want["tokenizer.ggml.tokens"])) - len(ADDED)
        assert tokens[:n] == want["tokenizer.ggml.tokens"][:n]
        for key in TOKENIZER_KEYS:
            if key not in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
                assert got.get(key) == want.get(key), key
    else:
        assert got == want  # the re-saved tokenizer changed nothing the converter reads

    # transformers 5 reads what the adapter's tokenizer says (the base's when it has none)
    source = adapter if variant == "added-tokens" else base
    ours = transformers.AutoTokenizer.from_pretrained(merged)
    theirs = transformers.AutoTokenizer.from_pretrained(source)
    assert ours(SAMPLE)["input_ids"] == theirs(SAMPLE)["input_ids"]
    rendered = ours.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert rendered == theirs.apply_chat_template(
        CONVERSATION, tokenize=False, add_generation_prompt=True
    )

    # transformers 4.x: the config parses as a 4.x loader reads it
    config = check_transformers4_config(merged, base)
    if variant == "added-tokens":
        assert config["additional_special_tokens"][-2:] == ADDED
        decoded = {e["content"] for e in config.get("added_tokens_decoder", {}).values()}
        assert not config.get("added_tokens_decoder") or set(ADDED) <= decoded
    else:  # the base's tokenizer files, byte for byte
        for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json"):
            if (base / name).is_file():
                assert (merged / name).read_bytes() == (base / name).read_bytes(), name
