"""The base checkpoint the merge reads: its config and the index of its tensors.

``read_checkpoint`` indexes the safetensors shards by tensor name from their headers,
checking that nothing is truncated or missing before a byte of output is written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from persona_export.errors import InvalidInputError, UnsupportedError
from persona_export.merge.safetensors_io import TensorInfo, read_header


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
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
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
        except (OSError, UnicodeDecodeError, ValueError, KeyError, AttributeError,
                RecursionError) as exc:  # fmt: skip
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
