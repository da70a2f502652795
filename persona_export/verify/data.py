"""The prompts and bounds `verify` uses, read from templates/ (or the user's files)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from persona_export.errors import UsageError
from persona_export.resources import templates_dir
from persona_export.toml_files import read_toml

PROMPTS_FILE = "verify_prompts.toml"
BOUNDS_FILE = "verify_bounds.toml"
ROLES = ("user", "assistant")

Turn = Mapping[str, str]


@dataclass(frozen=True)
class Bounds:
    """The figures an export must stay within, and how the persona's figures are measured.

    ``retention_min``: least persona retention per quantization type (``retention_default``
    for the others); ``signal_min``: the persona signal (mean KL of the F16 from the base,
    nats) below which retention is not judged; ``answer_tokens``/``prefix_tokens``: the
    length of the greedy answers compared between a quant and the F16, and of the prefix
    that must match."""

    peft_nmse_max: float
    peft_top1_min: float
    nmse_max: float
    top1_min: float
    kl_max: Mapping[str, float]
    kl_default: float
    retention_min: Mapping[str, float] = field(default_factory=dict)
    retention_default: float = 0.9
    signal_min: float = 0.02
    answer_tokens: int = 64
    prefix_tokens: int = 16

    def kl_bound(self, quant_type: str) -> float:
        return self.kl_max.get(quant_type.upper(), self.kl_default)

    def retention_bound(self, quant_type: str) -> float:
        return self.retention_min.get(quant_type.upper(), self.retention_default)

    def for_types(self, quant_types: Sequence[str]) -> dict[str, Any]:
        """The bounds that judge ``quant_types``, as JSON (for reports and manifests)."""
        types = sorted({t.upper() for t in quant_types})
        return {
            "kl_max": {t: self.kl_bound(t) for t in types},
            "retention_min": {t: self.retention_bound(t) for t in types},
            "signal_min": self.signal_min,
            "answer_tokens": self.answer_tokens,
            "prefix_tokens": self.prefix_tokens,
        }


def _read(path: Path, what: str) -> dict[str, Any]:
    return read_toml(path, what)


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
    retention_min: Mapping[str, float] | None = None,
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
    for key, value in (retention_min or {}).items():
        if not math.isfinite(value) or not 0 <= value <= 1:
            raise UsageError(
                f"--retention-min {key}={value}: the bound must be within 0..1",
                "e.g. --retention-min Q4_K_M=0.8",
            )


def load_bounds(
    *,
    merged_dtype: str = "bfloat16",
    peft_nmse_max: float | None = None,
    nmse_max: float | None = None,
    top1_min: float | None = None,
    kl_max: Mapping[str, float] | None = None,
    retention_min: Mapping[str, float] | None = None,
) -> Bounds:
    """The shipped bounds with the given overrides applied. The merge check's NMSE bound
    depends on the merged checkpoint's dtype (``float32``: exact; 16-bit: rounding)."""
    path = bounds_path()
    data = _read(path, "bounds")
    peft = data.get("peft_vs_merged", {})
    hf = data.get("hf_vs_gguf", {})
    kl_table = data.get("kl_max", {})
    keep_table = data.get("retention_min", {})
    persona = data.get("persona", {})
    tables = (peft, hf, kl_table, keep_table, persona)
    if not all(isinstance(t, dict) for t in tables):
        raise UsageError(
            f"{path}: [peft_vs_merged], [hf_vs_gguf], [kl_max], [retention_min] and [persona] "
            "must be tables"
        )
    kl = _per_type(kl_table, f"{path} [kl_max]", kl_max)
    keep = _per_type(keep_table, f"{path} [retention_min]", retention_min)
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
        retention_min=keep,
        retention_default=_number(keep_table, "default", f"{path} [retention_min]"),
        signal_min=_number(persona, "signal_min", f"{path} [persona]"),
        answer_tokens=int(_number(persona, "answer_tokens", f"{path} [persona]")),
        prefix_tokens=int(_number(persona, "prefix_tokens", f"{path} [persona]")),
    )
    overrides = {"peft_nmse_max": peft_nmse_max, "nmse_max": nmse_max, "top1_min": top1_min}
    values = {k: v for k, v in overrides.items() if v is not None}
    check_bound_overrides(**overrides, kl_max=kl_max, retention_min=retention_min)
    if values:
        bounds = Bounds(**{**bounds.__dict__, **values})
    return bounds


def _per_type(
    table: Mapping[str, Any], where: str, overrides: Mapping[str, float] | None
) -> dict[str, float]:
    """A per-type bounds table (``default`` left out), the overrides applied."""
    bounds = {k.upper(): _number(table, k, where) for k in table if k != "default"}
    bounds.update({k.upper(): v for k, v in (overrides or {}).items()})
    return bounds


def parse_type_overrides(items: list[str], option: str, example: str) -> dict[str, float]:
    """``["Q4_K_M=0.2", ...]`` -> ``{"Q4_K_M": 0.2}`` (for ``option`` TYPE=VALUE); an item
    that is not TYPE=number >= 0 is a UsageError whose hint is ``example``."""
    parsed: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = -1.0
        if not sep or not name.strip() or not math.isfinite(number) or number < 0:
            raise UsageError(f"{option} {item!r} is not TYPE=VALUE", example)
        parsed[name.strip().upper()] = number
    return parsed


def parse_kl_overrides(items: list[str]) -> dict[str, float]:
    """``["Q4_K_M=0.2", ...]`` -> ``{"Q4_K_M": 0.2}`` (for --kl-max TYPE=VALUE)."""
    return parse_type_overrides(items, "--kl-max", "e.g. --kl-max Q4_K_M=0.2 --kl-max Q8_0=0.02")


def parse_retention_overrides(items: list[str]) -> dict[str, float]:
    """``["Q4_K_M=0.8", ...]`` -> ``{"Q4_K_M": 0.8}`` (for --retention-min TYPE=VALUE)."""
    return parse_type_overrides(
        items, "--retention-min", "e.g. --retention-min Q4_K_M=0.8 --retention-min Q3_K_M=0.7"
    )


def verify_conversations(
    persona: str, prompts_file: Path | None = None, personas_file: Path | None = None
) -> tuple[tuple[Turn, ...], ...]:
    """The conversations verify asks: those of ``prompts_file`` (default: the shipped
    templates/verify_prompts.toml), then one per question in the persona's own
    ``verify_prompts`` (personas TOML) that is not already asked."""
    from persona_export.personas import find_persona

    conversations = list(load_conversations(prompts_file))
    asked = {c[-1]["content"].strip() for c in conversations if len(c) == 1}
    for question in find_persona(persona, user_file=personas_file).verify_prompts:
        if question.strip() not in asked:
            asked.add(question.strip())
            conversations.append(({"role": "user", "content": question},))
    return tuple(conversations)
