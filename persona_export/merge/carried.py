"""The files a merged folder carries besides the weights: config.json (updated where the
merge changes it), generation config, licence, the tokenizer files and the chat template.

The tokenizer is taken as a set from one folder so that the merged folder is a portable
Transformers model that transformers 4.x and 5.x and llama.cpp's stock converter all read
(:mod:`persona_export.merge.tokenizer_files` says why and how): the base's files when the
adapter has no tokenizer or one with the base's vocabulary; the adapter's when it added
tokens, with a ``tokenizer_config.json`` that is the base's plus the adapter's changes. Every
carried file must be inside its folder (a link leading elsewhere is refused), and a copy is
never readable by more people than its source.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_export.errors import InvalidInputError
from persona_export.hf.model_files import (
    TEMPLATE_FILES,
    TOKENIZER_FILES,
    checked_file,
    has_tokenizer,
)
from persona_export.merge import tokenizer_files as tf

# Other base files carried over as they are.
BASE_EXTRA_PATTERNS = ("generation_config.json", "LICENSE*", "NOTICE*", "*.py")


@dataclass(frozen=True)
class Carried:
    """Output file name -> source path (copied byte for byte) or bytes (``generated``: a
    portable tokenizer_config.json, a chat template), where the tokenizer comes from, what
    was decided (``note``) and every file the decision read (``read``: merge inputs)."""

    files: Mapping[str, Path]
    tokenizer_source: str  # "adapter" or "base"
    tokenizer_dir: Path
    generated: Mapping[str, bytes] = field(default_factory=dict)
    note: str = ""
    read: Mapping[str, Path] = field(default_factory=dict)

    def write_generated(self, folder: Path) -> None:
        """Write the generated files into ``folder``, never readable by more people than
        the tokenizer config they come from (the adapter's when it has one)."""
        like = self.tokenizer_dir / "tokenizer_config.json"
        for name, data in self.generated.items():
            (folder / name).write_bytes(data)
            if like.is_file():
                os.chmod(folder / name, stat.S_IMODE(os.stat(like).st_mode) & 0o666)


def read_json_file(path: Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``; a corrupt file is an error here, not an empty dict that
    skips later checks."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidInputError(
            f"{path} is not valid JSON ({exc.__class__.__name__})",
            f"restore {what} (copy it from the base model, or save it again)",
        ) from exc
    if not isinstance(data, dict):
        raise InvalidInputError(f"{path} is not a JSON object", f"restore {what}")
    return data


def _tokenizer_set(folder: Path, what: str, names: tuple[str, ...]) -> dict[str, Path]:
    return {
        name: checked_file(folder / name, folder, what)
        for name in names
        if (folder / name).is_file()
    }


def _read_files(base_dir: Path, adapter_dir: Path) -> dict[str, Path]:
    """The tokenizer files the decision reads (links out of their folder refused)."""
    names = TOKENIZER_FILES + TEMPLATE_FILES
    base = _tokenizer_set(base_dir, "base model", names)
    adapter = _tokenizer_set(adapter_dir, "adapter", names)
    return {
        **{f"base/{n}": p for n, p in base.items()},
        **{f"adapter/{n}": p for n, p in adapter.items()},
    }


def carried_files(base_dir: Path, adapter_dir: Path) -> Carried:
    """Every non-weight file the merged folder gets (checked to be inside its folder)."""
    files: dict[str, Path] = {}
    for pattern in BASE_EXTRA_PATTERNS:
        for path in sorted(base_dir.glob(pattern)):
            if path.is_file():
                files[path.name] = checked_file(path, base_dir, "base model")
    from_adapter = has_tokenizer(adapter_dir)
    if not from_adapter and not has_tokenizer(base_dir):
        raise InvalidInputError(
            f"neither the adapter ({adapter_dir}) nor the base model ({base_dir}) has a "
            "tokenizer (tokenizer.json, tokenizer.model or vocab.json)",
            "a merged model without a tokenizer cannot be converted or run: copy the base "
            "model's tokenizer files into one of them",
        )
    read = _read_files(base_dir, adapter_dir)
    if not from_adapter:
        files |= _tokenizer_set(base_dir, "base model", TOKENIZER_FILES + TEMPLATE_FILES)
        note = "the adapter has no tokenizer: the base's files"
        return Carried(files, "base", base_dir, note=note, read=read)
    if not has_tokenizer(base_dir):
        return _adapter_as_saved(files, base_dir, adapter_dir, read)
    base_vocab = adapter_vocab = None
    same = tf.same_tokenizer_file(base_dir, adapter_dir)
    if not same:
        base_vocab = tf.read_vocabulary(base_dir)
        adapter_vocab = tf.read_vocabulary(adapter_dir)
        same = bool(base_vocab and adapter_vocab and adapter_vocab.tokens == base_vocab.tokens)
    base_template = tf.chat_template(base_dir)
    adapter_template = tf.chat_template(adapter_dir)
    template = base_template if adapter_template is None else adapter_template
    base_config = tf.read_config(base_dir)
    generated: dict[str, bytes] = {}
    if same:
        files |= _tokenizer_set(base_dir, "base model", TOKENIZER_FILES)
        note = "the adapter's tokenizer has the base's vocabulary: the base's files"
        if template == base_template:
            files |= _tokenizer_set(base_dir, "base model", TEMPLATE_FILES)
            return Carried(files, "base", base_dir, note=note, read=read)
        _place_template(template, dict(base_config), adapter_dir, files, generated, always=False)
        note += ", with the adapter's chat template"
        return Carried(files, "base", base_dir, generated, note, read)
    if not base_config:
        return _adapter_as_saved(files, base_dir, adapter_dir, read)
    files |= _tokenizer_set(adapter_dir, "adapter", TOKENIZER_FILES)
    files.pop("tokenizer_config.json", None)
    config = tf.portable_config(
        base_config,
        tf.read_config(adapter_dir),
        adapter_vocab.added if adapter_vocab else (),
        base_vocab.tokens if base_vocab else {},
    )
    _place_template(template, config, adapter_dir, files, generated, always=True)
    note = (
        "the adapter's tokenizer adds tokens: its files, with the base's tokenizer_config.json "
        f"(tokenizer_class {base_config.get('tokenizer_class')!r}) plus the adapter's tokens"
    )
    return Carried(files, "adapter", adapter_dir, generated, note, read)


def _adapter_as_saved(
    files: dict[str, Path], base_dir: Path, adapter_dir: Path, read: dict[str, Path]
) -> Carried:
    """The adapter's tokenizer files as they are (the base has no tokenizer, or no
    tokenizer_config.json, to restore from)."""
    files |= _tokenizer_set(adapter_dir, "adapter", TOKENIZER_FILES + TEMPLATE_FILES)
    if not any(n in files for n in TEMPLATE_FILES):
        # the adapter's tokenizer has no template file; keep the base's unless the adapter's
        # tokenizer_config.json carries one inline (which it would then override)
        config_file = adapter_dir / "tokenizer_config.json"
        inline = (
            read_json_file(config_file, "the tokenizer config").get("chat_template")
            if config_file.is_file()
            else None
        )
        if not inline:
            files |= _tokenizer_set(base_dir, "base model", TEMPLATE_FILES)
    note = "the adapter's tokenizer files as saved (the base has none to restore from)"
    return Carried(files, "adapter", adapter_dir, note=note, read=read)


def _place_template(
    template: str | list[Any] | None,
    config: dict[str, Any],
    adapter_dir: Path,
    files: dict[str, Path],
    generated: dict[str, bytes],
    *,
    always: bool,
) -> None:
    """Put the chat template where the base keeps its own (``config`` starts as the base's):
    inline in tokenizer_config.json, which every reader takes first or alone, or in
    chat_template.jinja. ``config`` is written as the generated tokenizer_config.json when
    the template went inline or ``always``."""
    for name in TEMPLATE_FILES:
        files.pop(name, None)
    inline = template is not None and ("chat_template" in config or not isinstance(template, str))
    if inline:
        config["chat_template"] = template
    elif isinstance(template, str):
        config.pop("chat_template", None)
        jinja = adapter_dir / "chat_template.jinja"
        if jinja.is_file() and jinja.read_text(encoding="utf-8") == template:
            files["chat_template.jinja"] = checked_file(jinja, adapter_dir, "adapter")
        else:
            generated["chat_template.jinja"] = template.encode("utf-8")
    if inline or always:
        generated["tokenizer_config.json"] = tf.config_bytes(config)


def tokenizer_size(files: Mapping[str, Path]) -> int | None:
    """Number of token ids the tokenizer uses (from tokenizer.json), or None if unknown."""
    if "tokenizer.json" not in files:
        return None
    doc = read_json_file(files["tokenizer.json"], "tokenizer.json")
    model = doc.get("model") or {}
    vocab = model.get("vocab")
    ids = [v for v in vocab.values() if isinstance(v, int)] if isinstance(vocab, dict) else []
    if isinstance(vocab, list):  # unigram: [piece, score]
        ids = [len(vocab) - 1]
    ids += [t["id"] for t in doc.get("added_tokens", []) if isinstance(t.get("id"), int)]
    return max(ids) + 1 if ids else None


def check_tokenizer_fits(files: Mapping[str, Path], source: str, vocab_rows: int | None) -> None:
    """Refuse a tokenizer whose ids go beyond the merged embedding's rows."""
    size = tokenizer_size(files)
    if size is not None and vocab_rows is not None and size > vocab_rows:
        raise InvalidInputError(
            f"the {source}'s tokenizer uses {size} token ids but the merged embeddings have "
            f"{vocab_rows} rows",
            "the adapter added tokens without saving its resized embeddings: save it with "
            "save_embedding_layers=True",
        )


def copy_file(source: Path, target: Path) -> None:
    """Copy bytes; the copy's permissions are never wider than the source's."""
    shutil.copyfile(source, target)
    os.chmod(target, stat.S_IMODE(os.stat(source).st_mode) & 0o666)


def write_config(
    base_config_path: Path, out_path: Path, updates: Mapping[str, Any], dtype_name: str
) -> None:
    """config.json: the base's bytes when nothing changes, else the base's keys in order with
    the dtype, vocab_size and tie_word_embeddings updates."""
    data = read_json_file(base_config_path, "the base model's config.json")
    changes = dict(updates)
    dtype_keys = [k for k in ("torch_dtype", "dtype") if k in data] or ["torch_dtype"]
    for key in dtype_keys:
        changes[key] = dtype_name
    if all(key in data and data[key] == value for key, value in changes.items()):
        copy_file(base_config_path, out_path)
        return
    data.update(changes)
    out_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
