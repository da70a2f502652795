"""adapter_config.json: read it, check every value the merge uses the way PEFT's LoraConfig
needs it, and decide which modules its ``target_modules`` select (PEFT's matching rules).

Values a hand-edited or corrupt config may hold and PEFT would crash on, or silently merge
into a broken model, are refused with one line naming the key: ``r`` that is not a positive
integer (PEFT builds ``nn.Linear(in, r)``), ``lora_alpha`` that is NaN, infinite or not
positive (every merged weight would be NaN/Inf or the adapter a no-op), the same for each
``rank_pattern``/``alpha_pattern`` value, patterns that are not regular expressions, flags that
are not true/false (``"false"`` is truthy), lists that are not lists of names.

Target matching follows ``peft.tuners.tuners_utils.check_target_module_exists`` (peft 0.21):
``exclude_modules`` and ``modules_to_save`` first, then a string ``target_modules`` is a regular
expression matched against the whole module name (``re.fullmatch``), a list matches a module
named exactly as an entry or ending in ``.<entry>``, restricted to ``layers_to_transform``
(layer numbers found as PEFT finds them, optionally after ``layers_pattern``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from persona_export.errors import InvalidInputError, UnsupportedError

CONFIG_NAME = "adapter_config.json"
ALL_LINEAR = "all-linear"  # PEFT's shorthand, expanded before saving; kept for hand-made configs
OUTPUT_LAYERS = ("lm_head", "embed_out")  # what all-linear leaves out, as PEFT does

# LoraConfig fields that turn on a LoRA variant or a structure this merge does not
# reproduce; a truthy value is refused. (use_dora and lora_bias are handled.)
UNSUPPORTED_FIELDS = {
    "alora_invocation_tokens": "aLoRA (activated LoRA)",
    "arrow_config": "Arrow routing",
    "use_bdlora": "block-diagonal LoRA",
    "velora_config": "VeLoRA",
    "monteclora_config": "MonteCLoRA",
    "kasa_config": "KaSA",
    "layer_replication": "layer_replication",
    "target_parameters": "target_parameters (LoRA on raw parameters)",
    "trainable_token_indices": "trainable_token_indices",
    "use_qalora": "QA-LoRA",
}
_FLAGS = ("use_rslora", "use_dora", "fan_in_fan_out", "lora_bias")
_FIX_HINT = (
    "fix that value in adapter_config.json (PeftModel.save_pretrained writes it), or save the "
    "adapter again"
)


def read_config(folder: Path) -> dict[str, Any]:
    """adapter_config.json of ``folder``, checked to describe a LoRA this tool can merge."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise InvalidInputError(
            f"{folder} has no {CONFIG_NAME}: it is not a PEFT adapter folder",
            "point --adapter-dir at the folder holding <persona>_final_adapter/ as saved by "
            "PeftModel.save_pretrained (adapter_config.json + adapter_model.safetensors)",
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise InvalidInputError(
            f"{path} is not valid JSON", "save the adapter again with save_pretrained"
        ) from exc
    if not isinstance(config, dict):
        raise InvalidInputError(f"{path} is not a JSON object", "save the adapter again")
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise UnsupportedError(
            f"{path}: peft_type {config.get('peft_type')!r} is not supported; only LoRA "
            "(including DoRA and rsLoRA) adapters can be merged",
            "merge it with PEFT itself (merge_and_unload) or train a LoRA adapter",
        )
    for key, what in UNSUPPORTED_FIELDS.items():
        if config.get(key):
            raise UnsupportedError(
                f"{path}: {what} ({key}) is not supported by this merge",
                "merge it with PEFT's merge_and_unload, or train without that option",
            )
    if str(config.get("init_lora_weights", "")).lower() == "mica":
        raise UnsupportedError(
            f"{path}: the MiCA LoRA variant is not supported by this merge",
            "merge it with PEFT's merge_and_unload",
        )
    check_values(config, path)
    return config


def _bad(path: Path, key: str, must: str, value: Any) -> InvalidInputError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return InvalidInputError(f"{path}: {key} must be {must}, not {shown}", _FIX_HINT)


def _is_rank(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_alpha(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _check_pattern(path: Path, key: str, pattern: Any, wrap: str = "{}") -> None:
    if not isinstance(pattern, str) or not pattern:
        raise _bad(path, key, "made of non-empty names or patterns", pattern)
    try:
        re.compile(wrap.format(pattern))
    except (re.error, RecursionError, OverflowError) as exc:
        raise InvalidInputError(
            f"{path}: {key} entry {pattern!r} is not a valid regular expression ({exc})",
            _FIX_HINT,
        ) from exc


def _check_names(path: Path, key: str, value: Any, *, regex_string: bool, wrap: str = "{}") -> None:
    """``value`` is absent, a list of names, or (``regex_string``) one regular expression."""
    if value is None:
        return
    if isinstance(value, str) and regex_string:
        _check_pattern(path, key, value)
        return
    if not isinstance(value, list):
        must = "a list of module names" + (" or one regular expression" if regex_string else "")
        raise _bad(path, key, must, value)
    for entry in value:
        _check_pattern(path, key, entry, wrap)


def check_values(config: Mapping[str, Any], path: Path) -> None:
    """Raise :class:`InvalidInputError` for any value the merge uses that PEFT could not
    (see the module docstring)."""
    if not _is_rank(config.get("r")):
        raise _bad(path, "r", "a positive integer", config.get("r"))
    if not _is_alpha(config.get("lora_alpha")):
        raise _bad(path, "lora_alpha", "a positive finite number", config.get("lora_alpha"))
    for key, valid, must in (
        ("rank_pattern", _is_rank, "a positive integer"),
        ("alpha_pattern", _is_alpha, "a positive finite number"),
    ):
        patterns = config.get(key)
        if patterns is None:
            continue
        if not isinstance(patterns, dict):
            raise _bad(path, key, "an object of module pattern -> value", patterns)
        for pattern, value in patterns.items():
            _check_pattern(path, key, pattern, r"(.*\.)?({})$")
            if not valid(value):
                raise _bad(path, f"{key}[{pattern!r}]", must, value)
    for flag in _FLAGS:
        if config.get(flag) is not None and not isinstance(config[flag], bool):
            raise _bad(path, flag, "true or false", config[flag])
    _check_names(path, "target_modules", config.get("target_modules"), regex_string=True)
    _check_names(path, "exclude_modules", config.get("exclude_modules"), regex_string=True)
    _check_names(
        path,
        "modules_to_save",
        config.get("modules_to_save"),
        regex_string=False,
        wrap=r"(^|.*\.){}($|\..*)",
    )
    _check_names(path, "layers_pattern", config.get("layers_pattern"), regex_string=True)
    layers = config.get("layers_to_transform")
    if layers is not None and not (
        _is_layer(layers) or (isinstance(layers, list) and all(_is_layer(n) for n in layers))
    ):
        raise _bad(path, "layers_to_transform", "a layer number or a list of them", layers)
    if isinstance(config.get("target_modules"), str) and layers is not None:
        raise InvalidInputError(
            f"{path}: layers_to_transform cannot be used when target_modules is a regular "
            "expression (PEFT refuses this config too)",
            _FIX_HINT,
        )


def _is_layer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


# --------------------------------------------------------------------------------------------
# Which modules target_modules selects
# --------------------------------------------------------------------------------------------


def _listed(names: Sequence[str], key: str) -> bool:
    return key in names or any(key.endswith(f".{name}") for name in names)


def _layer_index(config: Mapping[str, Any], key: str) -> int | None:
    patterns = config.get("layers_pattern")
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        match = None
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if match is not None:
                break
    return int(match["idx"]) if match else None


def selects(config: Mapping[str, Any], key: str, *, linear: bool = True) -> bool:
    """Whether PEFT would put a LoRA layer on module ``key`` (its name in the model, e.g.
    ``model.layers.0.self_attn.qkv_proj``) for this config; ``linear``: the module is a
    Linear/Conv1D (what ``all-linear`` selects). A config without target_modules selects
    every module (PEFT then uses its per-architecture defaults, which the saved config
    normally spells out)."""
    exclude = config.get("exclude_modules")
    if exclude and (
        re.fullmatch(exclude, key) if isinstance(exclude, str) else _listed(exclude, key)
    ):
        return False
    modules_to_save = config.get("modules_to_save")
    if modules_to_save and any(re.match(rf"(^|.*\.){m}($|\..*)", key) for m in modules_to_save):
        return False
    targets = config.get("target_modules")
    if targets is None:
        return True
    if isinstance(targets, str):
        if targets.lower() == ALL_LINEAR:
            return linear and key.rsplit(".", 1)[-1] not in OUTPUT_LAYERS
        return re.fullmatch(targets, key) is not None
    if key in targets:
        return True
    if not _listed(targets, key):
        return False
    layers = config.get("layers_to_transform")
    if layers is None or layers == []:
        return True
    index = _layer_index(config, key)
    if index is None:
        return False
    return index == layers if isinstance(layers, int) else index in layers


def _some(names: Sequence[str]) -> str:
    return ", ".join(names[:2]) + (f" and {len(names) - 2} more" if names[2:] else "")


def check_adapter_targets(
    config: Mapping[str, Any], path: Path, modules: Mapping[str, str], weights: Path
) -> None:
    """Refuse LoRA weights for modules ``target_modules`` does not select: PEFT loads such an
    adapter without them (its state dict keys are 'unexpected' and dropped without a word),
    so what it merges is not what was trained. ``modules``: module name -> "linear" or
    "embedding"."""
    unselected = sorted(
        name for name, kind in modules.items() if not selects(config, name, linear=kind == "linear")
    )
    if unselected:
        raise InvalidInputError(
            f"{weights.name} has LoRA weights for {_some(unselected)}, which target_modules "
            f"{config.get('target_modules')!r} in {path.name} does not select; PEFT would load "
            "the adapter without them, so neither merge would be the adapter that was trained",
            f"name those modules in target_modules ({path}), or save the adapter again",
        )


def targets_without_weights(
    config: Mapping[str, Any], base_modules: Iterable[str], lora_modules: Iterable[str]
) -> list[str]:
    """Base modules ``target_modules`` selects that the adapter has no LoRA weights for
    (PEFT warns "missing adapter keys" and leaves them as its initialisation makes them:
    unchanged, lora_B being zero). Empty when the config names no targets."""
    if config.get("target_modules") is None:
        return []
    have = set(lora_modules)
    return sorted(m for m in base_modules if m not in have and selects(config, m))
