"""Which files of a Hugging Face model folder are what, and where a folder's files may live.

A tokenizer is a set of files (taken together, from one folder); the chat template lives in
``tokenizer_config.json`` or in a file of its own. A folder in the Hugging Face hub cache
(``.../models--org--name/snapshots/<revision>/``) holds links into the repository's
``blobs/``: its files legitimately resolve outside the snapshot folder, inside the
repository's cache folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from persona_export.errors import InvalidInputError

# Tokenizer files are taken as a set, all from the adapter folder or all from the base.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "tokenizer.model",
    "spiece.model",
)
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
# Files whose presence means a folder carries a tokenizer.
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer.model", "vocab.json")


def has_tokenizer(folder: Path) -> bool:
    return any((folder / n).is_file() for n in TOKENIZER_MARKERS)


def allowed_root(folder: Path) -> Path:
    """The folder files of ``folder`` may resolve into: the hub repository's cache folder
    for a hub snapshot, else ``folder`` itself (resolved)."""
    real = Path(os.path.realpath(folder))
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        return real.parent.parent
    return real


def checked_file(path: Path, folder: Path, what: str) -> Path:
    """``path`` (a file of ``folder``) if it resolves inside ``folder`` (see
    :func:`allowed_root`); a link leading elsewhere is refused, never followed."""
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(allowed_root(folder)):
        raise InvalidInputError(
            f"{path} is a link to {real}, outside the {what} folder; persona-export only "
            "carries files that are inside it",
            f"replace the link with a copy of the file you mean (or remove it from {folder})",
        )
    return path
