"""The base model: a local folder or a Hugging Face hub id.

``resolve_base_model`` returns a local folder: the path itself, or the snapshot of a hub id in
the Hugging Face cache (downloaded when the hub is reachable and ``HF_HUB_OFFLINE`` is not
set).
"""

from __future__ import annotations

import os
from pathlib import Path

from persona_export.errors import (
    InputNotFoundError,
    InvalidInputError,
    OfflineError,
)

# What a merge needs from a hub snapshot (weights, configs, tokenizer, template, licence;
# README.md for the licence and metadata its model card declares).
HUB_PATTERNS = [
    "README.md",
    "*.safetensors",
    "*.safetensors.index.json",
    "*.json",
    "*.jinja",
    "tokenizer.model",
    "merges.txt",
    "vocab.txt",
    "LICENSE*",
    "NOTICE*",
    "*.py",
]
_TRUTHY = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or the older ``TRANSFORMERS_OFFLINE``) is set."""
    return any(
        os.environ.get(var, "").strip().lower() in _TRUTHY
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, found as huggingface_hub finds it (read at call time)."""
    if cache := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return Path(cache).expanduser()
    if home := os.environ.get("HF_HOME"):
        return Path(home).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(xdg).expanduser() / "huggingface" / "hub"


def _looks_like_path(model_id: str) -> bool:
    return model_id.startswith(("/", "./", "../", "~", ".\\")) or model_id.count("/") > 1


def _download_hint(model_id: str, revision: str | None) -> str:
    rev = f" --revision {revision}" if revision else ""
    return (
        f"download it where the hub is reachable (huggingface-cli download {model_id}{rev}) "
        "into this machine's Hugging Face cache, or pass a local folder with "
        "--base-model-id /path/to/model"
    )


def resolve_base_model(model_id: str, revision: str | None = None) -> Path:
    """A local folder holding the base model named by ``model_id`` (a path or a hub id)."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise InvalidInputError(
            f"base model {model_id} is a file, not a model folder",
            "pass the folder holding config.json and the safetensors shards",
        )
    if _looks_like_path(model_id):
        raise InputNotFoundError(
            f"base model folder {model_id} does not exist",
            "pass an existing folder or a Hugging Face model id such as "
            "microsoft/Phi-4-mini-instruct",
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = hub_offline()
    try:
        folder = snapshot_download(
            model_id,
            revision=revision,
            cache_dir=hub_cache_dir(),
            allow_patterns=HUB_PATTERNS,
            local_files_only=offline,
        )
    except GatedRepoError as exc:
        raise InputNotFoundError(
            f"base model {model_id} is gated on the hub and this machine has no access",
            "accept its licence on huggingface.co and log in (huggingface-cli login), or "
            "pass a local folder with --base-model-id",
        ) from exc
    except RevisionNotFoundError as exc:
        raise InputNotFoundError(
            f"base model {model_id} has no revision {revision!r}",
            "check --revision (a branch, tag or commit of the model repository)",
        ) from exc
    except RepositoryNotFoundError as exc:
        raise InputNotFoundError(
            f"base model {model_id} was not found on the Hugging Face hub",
            "check --base-model-id (a hub id like microsoft/Phi-4-mini-instruct or a local folder)",
        ) from exc
    except LocalEntryNotFoundError as exc:
        why = (
            "the hub is disabled (HF_HUB_OFFLINE is set)"
            if offline
            else "the hub could not be reached"
        )
        raise OfflineError(
            f"base model {model_id} is not in the Hugging Face cache ({hub_cache_dir()}) and {why}",
            _download_hint(model_id, revision),
        ) from exc
    except OSError as exc:  # network failures surface as requests/httpx OSErrors
        raise OfflineError(
            f"could not download base model {model_id}: {exc}".splitlines()[0],
            _download_hint(model_id, revision),
        ) from exc
    return Path(folder)
