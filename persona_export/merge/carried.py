"""The files a merged folder carries besides the weights: config.json (updated where the
merge changes it), generation config, licence, the tokenizer files and the chat template.

The tokenizer is taken as a set, from the adapter folder when it has one (it may have added
tokens), else from the base; files are copied byte for byte (re-saving a tokenizer through
transformers 5 rewrites ``tokenizer_class`` and breaks llama.cpp's phi3 converter). Every
carried file must be inside its folder (a link leading elsewhere is refused), and a copy is
never readable by more people than its source.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export.errors import InvalidInputError
from persona_export.hf.model_files import (
    TEMPLATE_FILES,
    TOKENIZER_FILES,
    checked_file,
    has_tokenizer,
)

# Other base files carried over as they are.
BASE_EXTRA_PATTERNS = ("generation_config.json", "LICENSE*", "NOTICE*", "*.py")


@dataclass(frozen=True)
class Carried:
    """Output file name -> source path, and where the tokenizer comes from."""

    files: Mapping[str, Path]
    tokenizer_source: str  # "adapter" or "base"
    tokenizer_dir: Path


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


def carried_files(base_dir: Path, adapter_dir: Path) -> Carried:
    """Every non-weight file the merged folder gets (checked to be inside its folder)."""
    files: dict[str, Path] = {}
    for pattern in BASE_EXTRA_PATTERNS:
        for path in sorted(base_dir.glob(pattern)):
            if path.is_file():
                files[path.name] = checked_file(path, base_dir, "base model")
    from_adapter = has_tokenizer(adapter_dir)
    tokenizer_dir = adapter_dir if from_adapter else base_dir
    if not from_adapter and not has_tokenizer(base_dir):
        raise InvalidInputError(
            f"neither the adapter ({adapter_dir}) nor the base model ({base_dir}) has a "
            "tokenizer (tokenizer.json, tokenizer.model or vocab.json)",
            "a merged model without a tokenizer cannot be converted or run: copy the base "
            "model's tokenizer files into one of them",
        )
    what = "adapter" if from_adapter else "base model"
    for name in TOKENIZER_FILES + TEMPLATE_FILES:
        if (tokenizer_dir / name).is_file():
            files[name] = checked_file(tokenizer_dir / name, tokenizer_dir, what)
    if from_adapter and not any(n in files for n in TEMPLATE_FILES):
        # the adapter's tokenizer has no template file; keep the base's unless the adapter's
        # tokenizer_config.json carries one inline (which it would then override)
        config_file = tokenizer_dir / "tokenizer_config.json"
        inline = (
            read_json_file(config_file, "the tokenizer config").get("chat_template")
            if config_file.is_file()
            else None
        )
        if not inline:
            for name in TEMPLATE_FILES:
                if (base_dir / name).is_file():
                    files[name] = checked_file(base_dir / name, base_dir, "base model")
    return Carried(files, "adapter" if from_adapter else "base", tokenizer_dir)


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
