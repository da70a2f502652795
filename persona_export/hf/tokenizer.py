"""What the Modelfile needs from a model's tokenizer: its chat template, special tokens,
end-of-sequence tokens and whether the runtime adds BOS, read from a Hugging Face folder or
from a GGUF's metadata."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export.errors import InputNotFoundError, InvalidInputError
from persona_export.hf.template_limits import read_template_file
from persona_export.llamacpp.gguf_file import ArrayInfo, read_gguf_metadata

_SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


@dataclass(frozen=True)
class TokenizerInfo:
    """The chat-relevant facts of one tokenizer.

    ``eos_tokens``: end-of-sequence token texts in priority order (generation_config.json,
    config.json, the tokenizer's own eos; or the GGUF's eos/eot/eom ids). ``add_bos``: whether
    the tokenizer (and so llama.cpp) adds BOS by itself; None when unknown. ``added_tokens``:
    the texts of the tokens added to the vocabulary (a GGUF's control and user-defined
    tokens), where chat templates find their turn markers.
    """

    chat_template: str | None
    template_source: str
    special_tokens: dict[str, str]
    eos_tokens: tuple[str, ...]
    add_bos: bool | None
    added_tokens: tuple[str, ...] = ()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"cannot read {path}: {exc}") from exc
    except RecursionError as exc:
        raise InvalidInputError(f"cannot read {path}: it is nested too deeply") from exc
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path} is not a JSON object")
    return data


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def _ids(value: Any) -> list[int]:
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for item in items:
        if item:
            seen.setdefault(item, None)
    return tuple(seen)


def _hf_chat_template(folder: Path, config: dict[str, Any]) -> tuple[str | None, str]:
    jinja_file = folder / "chat_template.jinja"
    if jinja_file.is_file():
        hint = "restore the base model's chat_template.jinja in that folder"
        return read_template_file(jinja_file, "the chat template", hint), str(jinja_file)
    source = str(folder / "tokenizer_config.json")
    value = config.get("chat_template")
    if isinstance(value, list):  # several named templates: the default one is the chat template
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    return (value if isinstance(value, str) else None), source


def from_hf_folder(folder: Path) -> TokenizerInfo:
    """Read the tokenizer facts of a Hugging Face model folder (merged_models/<persona>/)."""
    config_path = folder / "tokenizer_config.json"
    if not config_path.is_file():
        raise InputNotFoundError(
            f"{config_path} not found: {folder} has no tokenizer",
            "the merged model folder should carry the tokenizer files; rerun "
            "`persona-export merge`",
        )
    config = _read_json(config_path)
    chat_template, source = _hf_chat_template(folder, config)

    specials_map_path = folder / "special_tokens_map.json"
    specials_map = _read_json(specials_map_path) if specials_map_path.is_file() else {}
    special_tokens: dict[str, str] = {}
    for name in _SPECIAL_NAMES:
        text = _token_text(config.get(name)) or _token_text(specials_map.get(name))
        if text is not None:
            special_tokens[name] = text

    id_to_text: dict[int, str] = {}
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise InvalidInputError(
            f"{config_path}: 'added_tokens_decoder' is not an object", _RESAVE_HINT
        )
    for key, entry in decoder.items():
        if str(key).isdigit() and (text := _token_text(entry)) is not None:
            id_to_text[int(key)] = text
    added = list(id_to_text.values())
    if (folder / "tokenizer.json").is_file():
        added += _tokenizer_json_added(folder / "tokenizer.json")

    eos_ids: list[int] = []
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if path.is_file():
            eos_ids += _ids(_read_json(path).get("eos_token_id"))
    missing = [i for i in eos_ids if i not in id_to_text]
    if missing and (folder / "tokenizer.json").is_file():
        id_to_text.update(_tokenizer_json_ids(folder / "tokenizer.json", set(missing)))
    eos_tokens = [id_to_text[i] for i in eos_ids if i in id_to_text]
    if "eos_token" in special_tokens:
        eos_tokens.append(special_tokens["eos_token"])

    add_bos = config.get("add_bos_token")
    return TokenizerInfo(
        chat_template=chat_template,
        template_source=source,
        special_tokens=special_tokens,
        eos_tokens=_dedupe(eos_tokens),
        add_bos=add_bos if isinstance(add_bos, bool) else None,
        added_tokens=_dedupe(added),
    )


def _tokenizer_json_added(path: Path) -> list[str]:
    entries = _read_json(path).get("added_tokens") or []
    return [str(e["content"]) for e in entries if isinstance(e, dict) and e.get("content")]


def _tokenizer_json_ids(path: Path, wanted: set[int]) -> dict[int, str]:
    data = _read_json(path)
    found: dict[int, str] = {}
    for entry in data.get("added_tokens") or []:
        if not isinstance(entry, dict):
            continue
        token_id = entry.get("id")
        if not _is_id(token_id):
            raise InvalidInputError(
                f"{path}: an added token's id is not a number: {token_id!r}", _RESAVE_HINT
            )
        if token_id in wanted:
            found[token_id] = str(entry.get("content", ""))
    model = data.get("model") or {}
    if not isinstance(model, dict):
        raise InvalidInputError(f"{path}: 'model' is not an object", _RESAVE_HINT)
    vocab = model.get("vocab")
    if isinstance(vocab, dict):
        for text, token_id in vocab.items():
            if not _is_id(token_id):
                raise InvalidInputError(
                    f"{path}: the id of {text!r} is not a number: {token_id!r}", _RESAVE_HINT
                )
            if token_id in wanted and token_id not in found:
                found[token_id] = text
    return found


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_RESAVE_HINT = "the tokenizer files are damaged: copy them again from the base model"


# --- GGUF metadata -------------------------------------------------------------------------
# The facts are read by the package's one GGUF reader (llamacpp.gguf_file); turning token ids
# into a TokenizerInfo stays here, next to from_hf_folder, so both sources follow one set of
# rules (the llama.cpp module knows the file format, not what the Modelfile needs).

_TOKENS = "tokenizer.ggml.tokens"
_TOKEN_TYPES = "tokenizer.ggml.token_type"
_ADD_BOS = "tokenizer.ggml.add_bos_token"


def from_gguf(path: Path) -> TokenizerInfo:
    """Read the tokenizer facts of the GGUF at ``path`` (when no merged folder is at hand).
    Raises InvalidInputError when its metadata cannot be read."""
    from gguf.constants import TokenType

    meta = read_gguf_metadata(path, arrays=(_TOKENS, _TOKEN_TYPES))
    tokens = meta.get(_TOKENS)
    token_list: tuple[str, ...] = (
        tokens.values if isinstance(tokens, ArrayInfo) and tokens.values is not None else ()
    )
    types = meta.get(_TOKEN_TYPES)
    type_list: tuple[int, ...] = (
        types.values if isinstance(types, ArrayInfo) and types.values is not None else ()
    )

    def text(key: str) -> str | None:
        token_id = meta.get(key)
        if isinstance(token_id, int) and 0 <= token_id < len(token_list):
            return token_list[token_id]
        return None

    special_tokens = {
        name: value
        for name, key in (
            ("bos_token", "tokenizer.ggml.bos_token_id"),
            ("eos_token", "tokenizer.ggml.eos_token_id"),
            ("unk_token", "tokenizer.ggml.unknown_token_id"),
            ("pad_token", "tokenizer.ggml.padding_token_id"),
        )
        if (value := text(key)) is not None
    }
    eos = [
        text(key)
        for key in (
            "tokenizer.ggml.eot_token_id",
            "tokenizer.ggml.eos_token_id",
            "tokenizer.ggml.eom_token_id",
        )
    ]
    add_bos = meta.get(_ADD_BOS)
    template = meta.get("tokenizer.chat_template")
    return TokenizerInfo(
        chat_template=template if isinstance(template, str) else None,
        template_source=f"{path} (tokenizer.chat_template)",
        special_tokens=special_tokens,
        eos_tokens=_dedupe(t for t in eos if t),
        add_bos=add_bos if isinstance(add_bos, bool) else None,
        added_tokens=_dedupe(
            t
            for t, kind in zip(token_list, type_list, strict=False)
            # the tokens a tokenizer adds to its vocabulary are CONTROL or USER_DEFINED
            if kind in (TokenType.CONTROL, TokenType.USER_DEFINED)
        ),
    )


def gguf_adds_bos(path: Path) -> bool | None:
    """Whether llama.cpp adds BOS when tokenizing for the GGUF at ``path`` (None: unknown)."""
    value = read_gguf_metadata(path).get(_ADD_BOS)
    return value if isinstance(value, bool) else None
