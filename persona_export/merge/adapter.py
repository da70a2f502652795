"""A PEFT LoRA adapter folder, read the way PEFT reads it, without importing PEFT.

``read_adapter`` checks adapter_config.json (LoRA only; features this tool cannot merge are
refused up front), finds the weights file (safetensors; a pickle ``.bin`` only when allowed)
and sorts its tensors into LoRA pairs per module and whole-tensor replacements
(``modules_to_save`` copies and the resized embeddings PEFT saves with
``save_embedding_layers``). The scaling of each module follows PEFT's rules: ``lora_alpha / r``
or ``lora_alpha / sqrt(r)`` with ``use_rslora``, with ``rank_pattern``/``alpha_pattern`` keys
matched against module names as :func:`peft.utils.other.get_pattern_key` does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_export.errors import InvalidInputError, UnsupportedError
from persona_export.merge.adapter_config import (
    CONFIG_NAME,
    UNSUPPORTED_FIELDS,
    check_adapter_targets,
    read_config,
)
from persona_export.merge.safetensors_io import TensorInfo, read_header

__all__ = [
    "CONFIG_NAME",
    "UNSUPPORTED_FIELDS",
    "Adapter",
    "AdapterTensors",
    "LoraModule",
    "read_adapter",
    "read_config",
]

SAFETENSORS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."

_LORA_RE = re.compile(r"^(?P<module>.+)\.lora_(?P<role>A|B)(?:\.default)?\.(?P<param>weight|bias)$")
_EMBED_RE = re.compile(r"^(?P<module>.+)\.lora_embedding_(?P<role>A|B)(?:\.default)?$")
_MAGNITUDE_RE = re.compile(r"^(?P<module>.+)\.lora_magnitude_vector(?:\.default)?(?:\.weight)?$")
_MODULES_TO_SAVE_RE = re.compile(r"^(?P<module>.+)\.modules_to_save(?:\.default)?\.(?P<param>.+)$")


def get_pattern_key(pattern_keys: list[str], key_to_match: str) -> str:
    """The rank/alpha pattern key that matches module ``key_to_match`` (PEFT's rule: the first
    key that matches the module name or a dotted suffix of it, as a regex)."""
    for key in pattern_keys:
        if re.match(rf"(.*\.)?({key})$", key_to_match):
            return key
    return key_to_match


@dataclass(frozen=True)
class LoraModule:
    """The LoRA tensors of one targeted module (names are adapter-file tensor names)."""

    module: str  # module path in the base model, e.g. model.layers.0.self_attn.qkv_proj
    kind: str  # "linear" (lora_A/lora_B) or "embedding" (lora_embedding_A/B)
    lora_a: str
    lora_b: str
    magnitude: str | None  # DoRA
    lora_bias: str | None  # lora_B.bias (lora_bias=True)
    rank: int
    scaling: float


@dataclass(frozen=True)
class AdapterTensors:
    """Where the adapter's tensors come from: safetensors (header only) or an unpickled dict."""

    path: Path
    infos: Mapping[str, TensorInfo] = field(default_factory=dict)  # safetensors
    loaded: Mapping[str, Any] = field(default_factory=dict)  # pickle (torch tensors)

    @property
    def is_pickle(self) -> bool:
        return not self.infos and bool(self.loaded)

    def names(self) -> list[str]:
        return list(self.infos) if self.infos else list(self.loaded)

    def shape(self, name: str) -> tuple[int, ...]:
        if self.infos:
            return self.infos[name].shape
        return tuple(self.loaded[name].shape)

    def dtype(self, name: str) -> str:
        """The safetensors dtype name of ``name``."""
        if self.infos:
            return self.infos[name].dtype
        from persona_export.merge.tensors import safetensors_dtype

        return safetensors_dtype(self.loaded[name].dtype)


@dataclass(frozen=True)
class Adapter:
    """A parsed adapter folder."""

    folder: Path
    config: Mapping[str, Any]
    tensors: AdapterTensors
    modules: Mapping[str, LoraModule]  # module path -> LoRA tensors
    replacements: Mapping[str, str]  # base tensor name -> adapter tensor name
    use_dora: bool
    fan_in_fan_out: bool

    @property
    def base_model_name_or_path(self) -> str | None:
        value = self.config.get("base_model_name_or_path")
        return str(value) if value else None

    def files(self) -> list[Path]:
        """The files that make the adapter (for the manifest)."""
        return [self.folder / CONFIG_NAME, self.tensors.path]


def _load_tensors(folder: Path, allow_pickle: bool) -> AdapterTensors:
    safetensors_path = folder / SAFETENSORS_NAME
    pickle_path = folder / PICKLE_NAME
    if safetensors_path.is_file():
        infos, _ = read_header(safetensors_path)
        return AdapterTensors(safetensors_path, infos=infos)
    if pickle_path.is_file():
        if not allow_pickle:
            raise UnsupportedError(
                f"{pickle_path} is a pickle file; loading pickles can run arbitrary code, so it "
                "is refused",
                "convert it to adapter_model.safetensors, or pass --allow-pickle if you trust "
                "it (it is then loaded with torch.load(weights_only=True))",
            )
        import torch

        try:
            loaded = torch.load(pickle_path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch raises many types for a bad pickle
            raise InvalidInputError(
                f"{pickle_path} could not be loaded as a state dict: {exc}".splitlines()[0],
                "save the adapter again (as safetensors)",
            ) from exc
        if not isinstance(loaded, dict) or not all(
            isinstance(v, torch.Tensor) for v in loaded.values()
        ):
            raise InvalidInputError(
                f"{pickle_path} is not a dictionary of tensors", "save the adapter again"
            )
        return AdapterTensors(pickle_path, loaded=loaded)
    raise InvalidInputError(
        f"{folder} has {CONFIG_NAME} but no {SAFETENSORS_NAME}",
        "copy the adapter weights next to adapter_config.json (PeftModel.save_pretrained "
        "writes both)",
    )


def _scaling(config: Mapping[str, Any], module: str) -> tuple[int, float]:
    """(rank, scaling) of ``module``; the config's values were checked by read_config."""
    rank_pattern = dict(config.get("rank_pattern") or {})
    alpha_pattern = dict(config.get("alpha_pattern") or {})
    r = int(rank_pattern.get(get_pattern_key(list(rank_pattern), module), config["r"]))
    alpha = alpha_pattern.get(get_pattern_key(list(alpha_pattern), module), config["lora_alpha"])
    if config.get("use_rslora"):
        return r, alpha / math.sqrt(r)
    return r, alpha / r


def read_adapter(folder: Path, *, allow_pickle: bool = False) -> Adapter:
    """Parse the adapter in ``folder`` (config checked, tensors indexed, nothing loaded from
    safetensors yet). Raises the errors.py classes for anything unusable."""
    config = read_config(folder)
    tensors = _load_tensors(folder, allow_pickle)
    parts: dict[str, dict[str, str]] = {}
    kinds: dict[str, str] = {}
    replacements: dict[str, str] = {}
    for key in tensors.names():
        name = key.removeprefix(PEFT_PREFIX)
        if "trainable_tokens" in name or ".token_adapter." in name:
            raise UnsupportedError(
                f"{tensors.path}: trainable token deltas ({key}) are not supported",
                "merge it with PEFT's merge_and_unload",
            )
        if m := _LORA_RE.match(name):
            role = m["role"] if m["param"] == "weight" else "bias"
            if role == "bias" and m["role"] != "B":
                raise InvalidInputError(f"{tensors.path}: unexpected tensor {key}", "save it again")
            parts.setdefault(m["module"], {})[role] = key
            kinds.setdefault(m["module"], "linear")
        elif m := _EMBED_RE.match(name):
            parts.setdefault(m["module"], {})[m["role"]] = key
            kinds[m["module"]] = "embedding"
        elif m := _MAGNITUDE_RE.match(name):
            parts.setdefault(m["module"], {})["magnitude"] = key
        elif m := _MODULES_TO_SAVE_RE.match(name):
            replacements[f"{m['module']}.{m['param']}"] = key
        elif ".original_module." in name:
            continue  # the untouched copy PEFT may keep next to modules_to_save
        elif ".lora_" in name:
            raise UnsupportedError(
                f"{tensors.path}: tensor {key} belongs to a LoRA feature this merge does not know",
                "merge it with PEFT's merge_and_unload",
            )
        else:  # a whole tensor: modules_to_save or resized embeddings (save_embedding_layers)
            replacements[name.replace(".base_layer.", ".")] = key
    modules: dict[str, LoraModule] = {}
    for module, found in sorted(parts.items()):
        if "A" not in found or "B" not in found:
            missing = "lora_A" if "A" not in found else "lora_B"
            raise InvalidInputError(
                f"{tensors.path}: module {module} has no {missing} tensor",
                "the adapter file is incomplete: save it again",
            )
        a_shape, b_shape = tensors.shape(found["A"]), tensors.shape(found["B"])
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
            raise UnsupportedError(
                f"{tensors.path}: module {module}: lora_A {list(a_shape)} and lora_B "
                f"{list(b_shape)} are not a rank-r pair of matrices (convolution LoRA is not "
                "supported)",
                "merge it with PEFT's merge_and_unload",
            )
        rank, scaling = _scaling(config, module)
        if a_shape[0] != rank:
            raise InvalidInputError(
                f"{tensors.path}: module {module} has rank {a_shape[0]} but adapter_config.json "
                f"says r={rank}",
                "the adapter's config and weights do not belong together: save it again",
            )
        magnitude = found.get("magnitude")
        if config.get("use_dora") and magnitude is None:
            raise InvalidInputError(
                f"{tensors.path}: use_dora is set but module {module} has no lora_magnitude_vector",
                "the adapter file is incomplete: save it again",
            )
        if magnitude is not None and kinds[module] == "embedding":
            raise UnsupportedError(
                f"{tensors.path}: DoRA on the embedding layer ({module}) is not supported",
                "merge it with PEFT's merge_and_unload",
            )
        modules[module] = LoraModule(
            module=module,
            kind=kinds[module],
            lora_a=found["A"],
            lora_b=found["B"],
            magnitude=magnitude if config.get("use_dora") else None,
            lora_bias=found.get("bias"),
            rank=rank,
            scaling=scaling,
        )
    if not modules and not replacements:
        raise InvalidInputError(f"{tensors.path} holds no LoRA tensors", "save the adapter again")
    check_adapter_targets(
        config, folder / CONFIG_NAME, {m: lm.kind for m, lm in modules.items()}, tensors.path
    )
    return Adapter(
        folder=folder,
        config=config,
        tensors=tensors,
        modules=modules,
        replacements=replacements,
        use_dora=bool(config.get("use_dora")),
        fan_in_fan_out=bool(config.get("fan_in_fan_out")),
    )
