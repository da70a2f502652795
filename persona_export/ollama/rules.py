"""Ollama's rules for what a Modelfile may say: parameter names and types, model names.

From Ollama's api/types.go and types/model/name.go (0.33 line).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from persona_export.errors import UsageError

#: Valid ``PARAMETER`` names and the Python type of their value (``stop`` repeats).
PARAMETER_TYPES: dict[str, type] = {
    "num_ctx": int,
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "use_mmap": bool,
    "num_thread": int,
    "draft_num_predict": int,
    "num_keep": int,
    "seed": int,
    "num_predict": int,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "typical_p": float,
    "repeat_last_n": int,
    "temperature": float,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "stop": str,
}
#: Names Ollama no longer knows: a Modelfile with them fails with "unknown parameter".
REMOVED_PARAMETERS = frozenset({"tfs_z", "numa", "num_gqa", "rope_frequency_base"})
#: Names Ollama accepts but ignores, with a warning.
DEPRECATED_PARAMETERS = frozenset(
    {
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "penalize_newline",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
    }
)
_INT64 = 2**63
# Go's strconv.ParseFloat(s, 32) overflows (an error) beyond float32's range.
_FLOAT32_MAX = 3.4028234663852886e38


def parameter_text(name: str, value: Any) -> str:
    """The text Ollama's parser turns back into ``value`` for parameter ``name``."""
    kind = PARAMETER_TYPES[name]
    if kind is bool:
        return "true" if value else "false"
    if kind is float:
        return repr(float(value))
    return str(value)


def check_parameters(
    params: Mapping[str, Any], *, where: str
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Validate Modelfile parameters against Ollama's names and types.

    Returns ``(checked, stops, warnings)``: the parameters other than ``stop`` (floats as
    floats), the stop strings (``stop`` may be one string or a list), and one warning per
    deprecated parameter (left out of ``checked``). Raises :class:`UsageError` naming
    ``where`` for a removed or unknown name, a wrong type or a value out of range.
    """
    checked: dict[str, Any] = {}
    stops: list[str] = []
    warnings: list[str] = []
    for name, value in params.items():
        if name in REMOVED_PARAMETERS:
            raise UsageError(
                f"{where}: parameter {name!r} was removed from Ollama "
                f"(a Modelfile with it fails with \"unknown parameter '{name}'\")",
                f"delete {name} from {where}",
            )
        if name in DEPRECATED_PARAMETERS:
            warnings.append(f"{where}: parameter {name!r} is deprecated in Ollama and ignored")
            continue
        kind = PARAMETER_TYPES.get(name)
        if kind is None:
            close = [p for p in PARAMETER_TYPES if p.startswith(name[:3])] or sorted(
                PARAMETER_TYPES
            )
            raise UsageError(
                f"{where}: unknown Ollama parameter {name!r}",
                "valid parameters: " + ", ".join(close),
            )
        if name == "stop":
            values = value if isinstance(value, list) else [value]
            for item in values:
                if not isinstance(item, str) or not item:
                    raise UsageError(
                        f"{where}: stop must be a non-empty string or a list of them, not {item!r}",
                        'e.g. stop = ["<|end|>"]',
                    )
                stops.append(item)
            continue
        checked[name] = _check_value(name, kind, value, where)
    return checked, stops, warnings


def _check_value(name: str, kind: type, value: Any, where: str) -> Any:
    type_name = {int: "an integer", float: "a number", bool: "true or false"}[kind]
    wrong = UsageError(
        f"{where}: parameter {name!r} must be {type_name}, not {value!r}",
        f"e.g. {name} = {_EXAMPLES[kind]}",
    )
    if isinstance(value, bool) != (kind is bool):
        raise wrong
    if kind is int:
        if not isinstance(value, int):
            raise wrong
        if not -_INT64 <= value < _INT64:
            raise UsageError(f"{where}: parameter {name!r} is out of range: {value}")
        return value
    if kind is float:
        if not isinstance(value, (int, float)):
            raise wrong
        number = float(value)
        if not math.isfinite(number) or abs(number) > _FLOAT32_MAX:
            raise UsageError(
                f"{where}: parameter {name!r} must be a finite number, not {value!r}",
                f"e.g. {name} = 0.7",
            )
        return number
    return value


_EXAMPLES = {int: "4096", float: "0.7", bool: "true"}

_NAME_PART = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_NAMESPACE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_TAG = re.compile(r"^[a-z0-9_][a-z0-9_.-]*$")
MAX_NAME_LENGTH = 128


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a valid Ollama model name (``[namespace/]model[:tag]``,
    lower-case letters, digits, ``_``, ``-``, ``.``), else raise :class:`UsageError`."""
    hint = "use lower-case letters, digits, '_', '-' and '.', e.g. captain-codebeard:latest"
    if name != name.lower() and is_valid_model_name(name.lower()):
        hint = f"Ollama names are lower case: use {name.lower()!r}"
    if not is_valid_model_name(name):
        raise UsageError(f"invalid Ollama model name {name!r}", hint)
    return name


def is_valid_model_name(name: str) -> bool:
    """Whether ``name`` is a valid Ollama model name (see :func:`check_model_name`)."""
    if not name or len(name) > MAX_NAME_LENGTH or ".." in name:
        return False
    model, _, tag = name.partition(":")
    if ":" in tag or name.endswith(":"):
        return False
    namespace, _, model_part = model.rpartition("/")
    if namespace and not _NAMESPACE.match(namespace):
        return False
    return bool(_NAME_PART.match(model_part)) and (not tag or bool(_TAG.match(tag)))


def default_model_name(persona: str) -> str:
    """The Ollama name a persona gets when its definition names none (lower case)."""
    candidate = re.sub(r"[^a-z0-9_.-]", "-", persona.lower()).strip("-.") or "persona"
    while ".." in candidate:
        candidate = candidate.replace("..", ".")
    return candidate
