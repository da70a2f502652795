"""The demo's GGUF -> Hugging Face conversion: a llama-architecture GGUF (the packaged
SmolLM2-135M-Instruct, Q4_1) turned into an ordinary model folder (``config.json``,
``generation_config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json`` with the chat template, ``special_tokens_map.json``) that
``transformers`` loads offline and llama.cpp's converter converts back: quantized weights are
dequantized (Q4_1/Q8_0 -> float32), llama.cpp's rotary Q/K row permutation is undone, and the
tokenizer is rebuilt from the GGUF vocabulary and merges.

The GGUF is read through the project's one reader (:mod:`persona_export.llamacpp.gguf_file`);
torch, safetensors and gguf are imported only inside functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_export.demo import DemoBaseError

if TYPE_CHECKING:
    from persona_export.llamacpp.gguf_file import GgufSummary


@dataclass(frozen=True)
class _LlamaShape:
    n_layer: int
    n_embd: int
    n_ff: int
    n_head: int
    n_head_kv: int
    n_ctx: int
    rope_theta: float
    rms_eps: float
    vocab_size: int
    head_dim: int


# The metadata arrays read in full (the reader keeps other long arrays as their length only).
_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")


def _field(summary: GgufSummary, key: str, default: Any = None) -> Any:
    value = summary.metadata.get(key)
    if value is None:
        if default is None:
            raise DemoBaseError(f"GGUF has no {key!r}")
        return default
    values = getattr(value, "values", None)  # an array read in full (see _ARRAYS) as a list
    return list(values) if values is not None else value


def _llama_shape(summary: GgufSummary) -> _LlamaShape:
    arch = _field(summary, "general.architecture")
    if arch != "llama":
        raise DemoBaseError(f"expected a llama-architecture GGUF, got {arch!r}")
    n_embd = int(_field(summary, "llama.embedding_length"))
    n_head = int(_field(summary, "llama.attention.head_count"))
    n_vocab = int(
        _field(summary, "llama.vocab_size", len(_field(summary, "tokenizer.ggml.tokens")))
    )
    return _LlamaShape(
        n_layer=int(_field(summary, "llama.block_count")),
        n_embd=n_embd,
        n_ff=int(_field(summary, "llama.feed_forward_length")),
        n_head=n_head,
        n_head_kv=int(_field(summary, "llama.attention.head_count_kv", n_head)),
        n_ctx=int(_field(summary, "llama.context_length")),
        # GGUF stores these as float32: round away the float32 noise (9.99999974e-06 -> 1e-05).
        rope_theta=float(f"{float(_field(summary, 'llama.rope.freq_base', 10000.0)):.7g}"),
        rms_eps=float(f"{float(_field(summary, 'llama.attention.layer_norm_rms_epsilon')):.7g}"),
        vocab_size=n_vocab,
        head_dim=int(_field(summary, "llama.rope.dimension_count", n_embd // n_head)),
    )


_LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


def _hf_tensor_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    parts = gguf_name.split(".")
    if (
        len(parts) == 4
        and parts[0] == "blk"
        and parts[3] == "weight"
        and parts[2] in _LAYER_TENSORS
    ):
        return f"model.layers.{int(parts[1])}.{_LAYER_TENSORS[parts[2]]}.weight"
    raise DemoBaseError(f"unexpected tensor in GGUF: {gguf_name!r}")


def _unpermute_rope(weight: Any, n_head: int) -> Any:
    """Undo ``LlamaModel.permute`` of llama.cpp's converter for a Q or K projection.

    The converter reorders each head's rows from HF's "rotate_half" layout (first half, second
    half) to GGML's interleaved pairs: reshape(n_head, 2, d/2, ...).swapaxes(1, 2). This is the
    inverse: reshape(n_head, d/2, 2, ...).swapaxes(1, 2).
    """
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _convert_weights(summary: GgufSummary, shape: _LlamaShape) -> dict[str, Any]:
    import numpy as np
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    tensors: dict[str, Any] = {}
    for t in summary.tensors:
        hf_name = _hf_tensor_name(t.name)
        # GGUF shapes are ggml order (innermost first); numpy/HF order is the reverse.
        np_shape = tuple(reversed(t.shape))
        raw = summary.tensor_data(t)
        arr = dequantize(raw, GGMLQuantizationType(t.ggml_type))
        arr = np.asarray(arr, dtype=np.float32).reshape(np_shape)
        if t.name.endswith(".attn_q.weight"):
            arr = _unpermute_rope(arr, shape.n_head)
        elif t.name.endswith(".attn_k.weight"):
            arr = _unpermute_rope(arr, shape.n_head_kv)
        tensors[hf_name] = np.ascontiguousarray(arr)

    expected = {"model.embed_tokens.weight", "model.norm.weight"} | {
        f"model.layers.{i}.{name}.weight"
        for i in range(shape.n_layer)
        for name in _LAYER_TENSORS.values()
    }
    missing = expected - tensors.keys()
    if missing:
        raise DemoBaseError(f"GGUF lacks {len(missing)} tensors, e.g. {sorted(missing)[0]}")
    emb = tensors["model.embed_tokens.weight"]
    if emb.shape != (shape.vocab_size, shape.n_embd):
        raise DemoBaseError(f"token embedding has shape {emb.shape}")
    return tensors


def _config(shape: _LlamaShape, tied: bool, bos: int, eos: int, pad: int) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "hidden_size": shape.n_embd,
        "initializer_range": 0.02,
        "intermediate_size": shape.n_ff,
        "max_position_embeddings": shape.n_ctx,
        "mlp_bias": False,
        "num_attention_heads": shape.n_head,
        "num_hidden_layers": shape.n_layer,
        "num_key_value_heads": shape.n_head_kv,
        "pretraining_tp": 1,
        "rms_norm_eps": shape.rms_eps,
        "rope_scaling": None,
        "rope_theta": shape.rope_theta,
        "tie_word_embeddings": tied,
        "dtype": "float32",
        "use_cache": True,
        "vocab_size": shape.vocab_size,
    }


def _tokenizer_files(summary: GgufSummary) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Rebuild ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``."""

    model = _field(summary, "tokenizer.ggml.model")
    pre = _field(summary, "tokenizer.ggml.pre", "default")
    if model != "gpt2" or pre != "smollm":
        raise DemoBaseError(f"unsupported GGUF tokenizer {model!r}/{pre!r} (want gpt2/smollm)")
    tokens: list[str] = list(_field(summary, "tokenizer.ggml.tokens"))
    types: list[int] = [int(x) for x in _field(summary, "tokenizer.ggml.token_type")]
    merges: list[str] = list(_field(summary, "tokenizer.ggml.merges"))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != len(tokens) or len(types) != len(tokens):
        raise DemoBaseError("GGUF vocabulary is inconsistent (duplicate tokens or types)")
    bos = int(_field(summary, "tokenizer.ggml.bos_token_id"))
    eos = int(_field(summary, "tokenizer.ggml.eos_token_id"))
    unk = int(_field(summary, "tokenizer.ggml.unknown_token_id", eos))
    pad = int(_field(summary, "tokenizer.ggml.padding_token_id", eos))
    chat_template = _field(summary, "tokenizer.chat_template")

    added = _added_tokens(tokens, types)
    tokenizer_json = _tokenizer_json(added, vocab, merges)
    special_map = {
        "bos_token": tokens[bos],
        "eos_token": tokens[eos],
        "unk_token": tokens[unk],
        "pad_token": tokens[pad],
        "additional_special_tokens": [tokens[bos], tokens[eos]],
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(_field(summary, "tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_field(summary, "llama.context_length")),
        "chat_template": chat_template,
        **special_map,
        "added_tokens_decoder": {
            str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added
        },
    }
    return tokenizer_json, tokenizer_config, special_map


def _added_tokens(tokens: list[str], types: list[int]) -> list[dict[str, Any]]:
    """The control and user-defined tokens, as tokenizer.json's ``added_tokens``."""
    from gguf import TokenType

    return [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": typ == TokenType.CONTROL,
        }
        for i, (tok, typ) in enumerate(zip(tokens, types, strict=True))
        if typ in (TokenType.CONTROL, TokenType.USER_DEFINED)
    ]


def _tokenizer_json(
    added: list[dict[str, Any]], vocab: dict[str, int], merges: list[str]
) -> dict[str, Any]:
    """tokenizer.json of a byte-level BPE with llama.cpp's "smollm" pre-tokenizer."""
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        # llama.cpp's "smollm" pre-tokenizer: \p{N} split into single digits, then GPT-2's
        # byte-level regex (the StarCoder tokenizer that SmolLM2 ships).
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", **byte_level},
            ],
        },
        "post_processor": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": False,
            "use_regex": True,
        },
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": vocab,
            "merges": [m.split(" ", 1) for m in merges],
        },
    }


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def convert_gguf_to_hf(gguf_path: Path, out_dir: Path) -> None:
    """Write a Hugging Face model folder for the llama-architecture GGUF at ``gguf_path``."""
    from safetensors.numpy import save_file

    from persona_export.llamacpp.gguf_file import read_gguf

    summary = read_gguf(gguf_path, arrays=_ARRAYS)
    shape = _llama_shape(summary)
    tokenizer_json, tokenizer_config, _special = _tokenizer_files(summary)
    tokens: list[str] = list(_field(summary, "tokenizer.ggml.tokens"))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    bos = vocab[tokenizer_config["bos_token"]]
    eos = vocab[tokenizer_config["eos_token"]]
    pad = vocab[tokenizer_config["pad_token"]]

    tensors = _convert_weights(summary, shape)
    tied = "lm_head.weight" not in tensors
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    del tensors

    _write_json(out_dir / "config.json", _config(shape, tied, bos, eos, pad))
    _write_json(
        out_dir / "generation_config.json",
        {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad},
    )
    _write_json(out_dir / "tokenizer.json", tokenizer_json)
    _write_json(out_dir / "tokenizer_config.json", tokenizer_config)
    _write_json(out_dir / "special_tokens_map.json", _special)
