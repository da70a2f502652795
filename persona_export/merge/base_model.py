"""The base model: a local folder or a Hugging Face hub id, and the index of its tensors.

``resolve_base_model`` returns a local folder: the path itself, or the snapshot of a hub id in
the Hugging Face cache (downloaded when the hub is reachable and ``HF_HUB_OFFLINE`` is not
set). ``read_checkpoint`` indexes the safetensors shards by tensor name from their headers,
checking that nothing is truncated or missing before a byte of output is written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export.errors import (
    InputNotFoundError,
    InvalidInputError,
    OfflineError,
    UnsupportedError,
)
from persona_export.merge.safetensors_io import TensorInfo, read_header

# What a merge needs from a hub snapshot (weights, configs, tokenizer, template, licence).
HUB_PATTERNS = [
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


@dataclass(frozen=True)
class Checkpoint:
    """A base model folder: its config and every tensor's location."""

    folder: Path
    config: Mapping[str, Any]
    tensors: Mapping[str, TensorInfo]  # in checkpoint order
    shard_files: tuple[Path, ...]

    @property
    def torch_dtype(self) -> str | None:
        """The config's dtype name (``torch_dtype`` or transformers 5's ``dtype``)."""
        value = self.config.get("torch_dtype") or self.config.get("dtype")
        return str(value) if value else None


def read_config_json(folder: Path) -> dict[str, Any]:
    """config.json of a model folder."""
    path = folder / "config.json"
    if not path.is_file():
        raise InvalidInputError(
            f"base model folder {folder} has no config.json",
            "pass a folder saved by save_pretrained (config.json + safetensors shards)",
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInputError(f"{path} is not valid JSON", "download the model again") from exc
    if not isinstance(config, dict):
        raise InvalidInputError(f"{path} is not a JSON object", "download the model again")
    return config


def _shard_files(folder: Path) -> tuple[list[Path], dict[str, str] | None]:
    index_path = folder / "model.safetensors.index.json"
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
            weight_map = {str(k): str(v) for k, v in index["weight_map"].items()}
        except (OSError, UnicodeDecodeError, ValueError, KeyError, AttributeError) as exc:
            raise InvalidInputError(
                f"{index_path} is not a valid safetensors index", "download the model again"
            ) from exc
        names = list(dict.fromkeys(weight_map.values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise InvalidInputError(
                f"base model shard {folder / missing[0]} named in {index_path.name} is missing",
                "download the model again (all of its shards)",
            )
        return [folder / n for n in names], weight_map
    single = folder / "model.safetensors"
    if single.is_file():
        return [single], None
    if any(folder.glob("pytorch_model*.bin")):
        raise UnsupportedError(
            f"base model {folder} has only pickle (.bin) weights",
            "convert it to safetensors (e.g. load it once with transformers and "
            "save_pretrained(safe_serialization=True)), then merge from that folder",
        )
    raise InvalidInputError(
        f"base model folder {folder} has no model.safetensors or model.safetensors.index.json",
        "pass a folder saved by save_pretrained",
    )


def read_checkpoint(folder: Path) -> Checkpoint:
    """Index the safetensors checkpoint in ``folder`` (headers only; all shards checked)."""
    config = read_config_json(folder)
    shards, weight_map = _shard_files(folder)
    tensors: dict[str, TensorInfo] = {}
    for shard in shards:
        infos, _ = read_header(shard)
        for name, info in sorted(infos.items(), key=lambda item: item[1].offset):
            if name in tensors:
                raise InvalidInputError(
                    f"tensor {name} appears in both {tensors[name].path.name} and {shard.name}",
                    "download the model again",
                )
            tensors[name] = info
    if weight_map is not None:
        absent = [n for n in weight_map if n not in tensors]
        if absent:
            raise InvalidInputError(
                f"tensor {absent[0]} listed in model.safetensors.index.json is in none of the "
                "shards",
                "download the model again",
            )
    return Checkpoint(folder=folder, config=config, tensors=tensors, shard_files=tuple(shards))
