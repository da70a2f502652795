"""Which tokenizer files a merged folder gets, so that it is a portable Transformers model.

A trainer on transformers 5 re-saves the tokenizer into the adapter folder, and that re-save
is not what the base shipped (measured on transformers 5.24 with tiny Phi-4-mini, Llama
(SentencePiece and BPE) and GPT-2 tokenizers, comparing each re-saved
``tokenizer_config.json`` with the original):

* ``tokenizer_class`` becomes ``TokenizersBackend`` (a class transformers 4.x does not have;
  llama.cpp's phi3 converter then looks for a SentencePiece ``tokenizer.model``), except for
  classes transformers 5 still has (``LlamaTokenizer``, ``GPT2Tokenizer``);
* ``backend``, ``is_local`` and ``local_files_only`` are added (bookkeeping of the loader);
* ``add_bos_token``, ``add_eos_token``, ``legacy`` and ``added_tokens_decoder`` are dropped
  (llama.cpp's converter reads ``add_bos_token`` into the GGUF), ``chat_template`` moves to
  ``chat_template.jinja``, ``pad_token: null``, ``errors``, ``add_prefix_space`` and
  ``use_default_system_prompt`` appear with their defaults;
* ``extra_special_tokens`` becomes a *list* (transformers 4.x reads a dict there and fails),
  which also holds the tokens a trainer added;
* only ``tokenizer.json`` is written: ``tokenizer.model``, ``vocab.json``, ``merges.txt``,
  ``special_tokens_map.json`` and ``added_tokens.json`` are gone.

So: when the adapter's tokenizer has the base's vocabulary (the same text -> id map), the
base's files are carried byte for byte. When it differs (the trainer added tokens), the
adapter's files are kept, but ``tokenizer_config.json`` is the base's with only what the
adapter changed: its added tokens (``added_tokens_decoder`` entries, special ones in
``additional_special_tokens``, the form transformers 4.x reads), the special tokens it set
and its length/padding settings. The chat template, when the adapter's differs from the
base's, is placed where the base keeps its own (inline in ``tokenizer_config.json``, which
every reader takes, or ``chat_template.jinja``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export.errors import InvalidInputError

# tokenizer_config.json keys copied from the adapter when it changed them (anything else is
# the base's): the special tokens, and the settings a trainer may choose.
ADAPTER_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "pad_token",
    "sep_token",
    "cls_token",
    "mask_token",
    "model_max_length",
    "padding_side",
    "truncation_side",
)
_ADDED_TOKEN_FIELDS = ("content", "lstrip", "normalized", "rstrip", "single_word", "special")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInputError(
            f"{path} is not valid JSON ({exc.__class__.__name__})",
            "restore the tokenizer files (copy them from the base model, or save them again)",
        ) from exc


def read_config(folder: Path) -> dict[str, Any]:
    """``folder``'s tokenizer_config.json as a dict ({} when there is none)."""
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return {}
    data = _read_json(path)
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path} is not a JSON object", "restore the tokenizer config")
    return data


def _sentencepiece_pieces(path: Path) -> dict[str, int]:
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(path))
    return {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}


@dataclass(frozen=True)
class AddedToken:
    """One entry of tokenizer.json's ``added_tokens``."""

    id: int
    fields: Mapping[str, Any]

    @property
    def content(self) -> str:
        return str(self.fields.get("content", ""))

    @property
    def special(self) -> bool:
        return bool(self.fields.get("special"))


@dataclass(frozen=True)
class Vocabulary:
    """A tokenizer's token text -> id map (added tokens included) and tokenizer.json's
    ``added_tokens`` entries in id order (none when read from other files)."""

    tokens: Mapping[str, int]
    added: tuple[AddedToken, ...] = ()


def read_vocabulary(folder: Path) -> Vocabulary | None:
    """``folder``'s tokenizer vocabulary (None: no tokenizer file this can read).
    ``tokenizer.json`` first (BPE/WordPiece vocab dicts, Unigram lists), else a SentencePiece
    ``tokenizer.model``, else ``vocab.json``; then ``added_tokens.json`` and
    ``tokenizer_config.json``'s ``added_tokens_decoder``. Each file is parsed once."""
    tokenizer_json = folder / "tokenizer.json"
    if tokenizer_json.is_file():
        data = _read_json(tokenizer_json)
        model = data.get("model") if isinstance(data, dict) else None
        table = model.get("vocab") if isinstance(model, dict) else None
        if isinstance(table, dict):
            tokens = {str(k): v for k, v in table.items() if isinstance(v, int)}
        elif isinstance(table, list):  # Unigram: [[piece, score], ...], ids in order
            tokens = {str(entry[0]): i for i, entry in enumerate(table) if entry}
        else:
            return None
        added = sorted(
            (
                AddedToken(e["id"], {k: e[k] for k in _ADDED_TOKEN_FIELDS if k in e})
                for e in data.get("added_tokens") or []
                if isinstance(e, dict) and isinstance(e.get("id"), int)
            ),
            key=lambda t: t.id,
        )
        tokens.update({t.content: t.id for t in added})
        return Vocabulary(tokens, tuple(added))
    if (folder / "tokenizer.model").is_file():
        tokens = _sentencepiece_pieces(folder / "tokenizer.model")
    elif (folder / "vocab.json").is_file():
        table = _read_json(folder / "vocab.json")
        tokens = {str(k): v for k, v in table.items() if isinstance(v, int)}
    else:
        return None
    added_json = folder / "added_tokens.json"
    if added_json.is_file():
        tokens.update({str(k): v for k, v in _read_json(added_json).items() if isinstance(v, int)})
    for key, entry in (read_config(folder).get("added_tokens_decoder") or {}).items():
        if str(key).isdigit() and isinstance(entry, dict) and "content" in entry:
            tokens[str(entry["content"])] = int(key)
    return Vocabulary(tokens)


def same_tokenizer_file(base_dir: Path, adapter_dir: Path) -> bool:
    """Whether both folders' tokenizer.json are the same bytes but for trailing blanks (a
    transformers 5 re-save of an unchanged tokenizer): the same vocabulary, known without
    parsing two multi-MB JSON files."""
    base, adapter = base_dir / "tokenizer.json", adapter_dir / "tokenizer.json"
    if not (base.is_file() and adapter.is_file()):
        return False
    if abs(base.stat().st_size - adapter.stat().st_size) > 16:
        return False
    return base.read_bytes().rstrip() == adapter.read_bytes().rstrip()


def chat_template(folder: Path) -> str | list[Any] | None:
    """The chat template transformers 5 loads from ``folder``: chat_template.jinja, else
    tokenizer_config.json's ``chat_template``, else chat_template.json's."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8") or None
    inline = read_config(folder).get("chat_template")
    if isinstance(inline, (str, list)) and inline:
        return inline
    template_json = folder / "chat_template.json"
    if template_json.is_file():
        value = _read_json(template_json)
        value = value.get("chat_template") if isinstance(value, dict) else None
        return value if isinstance(value, (str, list)) and value else None
    return None


def _text(value: Any) -> Any:
    """A special token's text, whether written as a string or as an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def portable_config(
    base: Mapping[str, Any],
    adapter: Mapping[str, Any],
    adapter_added: tuple[AddedToken, ...],
    base_tokens: Mapping[str, int],
) -> dict[str, Any]:
    """The base's tokenizer_config.json with the adapter's changes (module docstring): the
    adapter's added tokens that ``base_tokens`` lacks, its special tokens and settings.
    ``tokenizer_class`` and every other key stay the base's; the chat template is placed by
    the caller."""
    out = dict(base)
    for key in ADAPTER_KEYS:
        value = adapter.get(key)
        if value is not None and _text(value) != _text(base.get(key)):
            out[key] = value
    new = [t for t in adapter_added if base_tokens.get(t.content) != t.id]
    if new and isinstance(base.get("added_tokens_decoder"), dict):
        decoder = dict(base["added_tokens_decoder"])
        for token in new:
            decoder[str(token.id)] = {k: v for k, v in token.fields.items()}
        out["added_tokens_decoder"] = decoder
    special = [t.content for t in new if t.special]
    listed = base.get("additional_special_tokens")
    listed = list(listed) if isinstance(listed, list) else []
    more = [t for t in special if t not in [_text(x) for x in listed]]
    if more:
        out["additional_special_tokens"] = listed + more
    return out


def config_bytes(config: Mapping[str, Any]) -> bytes:
    """tokenizer_config.json as written (2-space indent, UTF-8, a final newline)."""
    return (json.dumps(dict(config), indent=2, ensure_ascii=False) + "\n").encode("utf-8")
