"""The prompts and bounds `verify` uses, read from templates/ (or the user's files)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from persona_export.errors import InputNotFoundError, UsageError
from persona_export.resources import templates_dir

PROMPTS_FILE = "verify_prompts.toml"
BOUNDS_FILE = "verify_bounds.toml"
ROLES = ("user", "assistant")

Turn = Mapping[str, str]


@dataclass(frozen=True)
class Bounds:
    """The figures an export must stay within."""

    peft_nmse_max: float
    peft_top1_min: float
    nmse_max: float
    top1_min: float
    kl_max: Mapping[str, float]
    kl_default: float

    def kl_bound(self, quant_type: str) -> float:
        return self.kl_max.get(quant_type.upper(), self.kl_default)


def _read(path: Path, what: str) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InputNotFoundError(f"{what} file {path} not found", "give an existing file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InputNotFoundError(f"cannot read {what} file {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}", "fix the file's syntax") from exc
    except RecursionError as exc:
        raise UsageError(
            f"{path} is not valid TOML: it is nested too deeply", "fix the file's syntax"
        ) from exc


def prompts_path(user_file: Path | None = None) -> Path:
    return user_file if user_file is not None else templates_dir() / PROMPTS_FILE


def load_conversations(user_file: Path | None = None) -> tuple[tuple[Turn, ...], ...]:
    """The conversations (user/assistant turns, ending with a user turn) to verify with."""
    path = prompts_path(user_file)
    data = _read(path, "prompts")
    hint = f"see {templates_dir() / PROMPTS_FILE} for the shape: [[conversations]] turns = [...]"
    items = data.get("conversations")
    if not isinstance(items, list) or not items:
        raise UsageError(f"{path}: no [[conversations]]", hint)
    conversations: list[tuple[Turn, ...]] = []
    for number, item in enumerate(items, 1):
        turns = item.get("turns") if isinstance(item, dict) else None
        where = f"{path}: conversation {number}"
        if not isinstance(turns, list) or not turns:
            raise UsageError(f"{where} has no turns", hint)
        checked: list[Turn] = []
        for turn in turns:
            if (
                not isinstance(turn, dict)
                or set(turn) != {"role", "content"}
                or turn["role"] not in ROLES
                or not isinstance(turn["content"], str)
                or not turn["content"].strip()
            ):
                raise UsageError(
                    f"{where}: each turn needs exactly a role ({' or '.join(ROLES)}) and a "
                    f"non-empty content, got {turn!r}",
                    hint,
                )
            checked.append({"role": turn["role"], "content": turn["content"]})
        if checked[-1]["role"] != "user":
            raise UsageError(f"{where} must end with a user turn (the model answers it)", hint)
        conversations.append(tuple(checked))
    return tuple(conversations)


def bounds_path() -> Path:
    return templates_dir() / BOUNDS_FILE


def _number(table: Mapping[str, Any], key: str, where: str) -> float:
    value = table.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise UsageError(f"{where}: {key} must be a number >= 0, not {value!r}")
    return float(value)


def check_bound_overrides(
    *,
    peft_nmse_max: float | None = None,
    nmse_max: float | None = None,
    top1_min: float | None = None,
    kl_max: Mapping[str, float] | None = None,
) -> None:
    """Raise :class:`UsageError` for a bound given on the command line that is out of range
    or not a finite number (NaN fails or passes every comparison, infinity checks nothing:
    neither may stand in a report that says what was checked)."""
    overrides = {"peft_nmse_max": peft_nmse_max, "nmse_max": nmse_max, "top1_min": top1_min}
    for key, value in overrides.items():
        if value is None:
            continue
        if not math.isfinite(value) or value < 0 or (key == "top1_min" and value > 1):
            raise UsageError(
                f"--{key.replace('_', '-')} {value} is out of range",
                "give a finite number" + (" between 0 and 1" if key == "top1_min" else " >= 0"),
            )
    for key, value in (kl_max or {}).items():
        if not math.isfinite(value) or value < 0:
            raise UsageError(
                f"--kl-max {key}={value}: the bound must be a finite number >= 0",
                "e.g. --kl-max Q4_K_M=0.2",
            )


def load_bounds(
    *,
    merged_dtype: str = "bfloat16",
    peft_nmse_max: float | None = None,
    nmse_max: float | None = None,
    top1_min: float | None = None,
    kl_max: Mapping[str, float] | None = None,
) -> Bounds:
    """The shipped bounds with the given overrides applied. The merge check's NMSE bound
    depends on the merged checkpoint's dtype (``float32``: exact; 16-bit: rounding)."""
    path = bounds_path()
    data = _read(path, "bounds")
    peft = data.get("peft_vs_merged", {})
    hf = data.get("hf_vs_gguf", {})
    kl_table = data.get("kl_max", {})
    if not all(isinstance(t, dict) for t in (peft, hf, kl_table)):
        raise UsageError(f"{path}: [peft_vs_merged], [hf_vs_gguf] and [kl_max] must be tables")
    kl = {k.upper(): _number(kl_table, k, f"{path} [kl_max]") for k in kl_table if k != "default"}
    kl.update({k.upper(): v for k, v in (kl_max or {}).items()})
    bounds = Bounds(
        peft_nmse_max=_number(
            peft,
            "nmse_max_float32" if merged_dtype == "float32" else "nmse_max",
            f"{path} [peft_vs_merged]",
        ),
        peft_top1_min=_number(peft, "top1_min", f"{path} [peft_vs_merged]"),
        nmse_max=_number(hf, "nmse_max", f"{path} [hf_vs_gguf]"),
        top1_min=_number(hf, "top1_min", f"{path} [hf_vs_gguf]"),
        kl_max=kl,
        kl_default=_number(kl_table, "default", f"{path} [kl_max]"),
    )
    overrides = {"peft_nmse_max": peft_nmse_max, "nmse_max": nmse_max, "top1_min": top1_min}
    values = {k: v for k, v in overrides.items() if v is not None}
    check_bound_overrides(**overrides, kl_max=kl_max)
    if values:
        bounds = Bounds(**{**bounds.__dict__, **values})
    return bounds


def parse_kl_overrides(items: list[str]) -> dict[str, float]:
    """``["Q4_K_M=0.2", ...]`` -> ``{"Q4_K_M": 0.2}`` (for --kl-max TYPE=VALUE)."""
    parsed: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not sep or not name.strip() or not math.isfinite(number) or number < 0:
            raise UsageError(
                f"--kl-max {item!r} is not TYPE=VALUE",
                "e.g. --kl-max Q4_K_M=0.2 --kl-max Q8_0=0.02",
            )
        parsed[name.strip().upper()] = number
    return parsed
