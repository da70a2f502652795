"""The ladder of quantization types ``quantize --type auto`` climbs: the shipped ladder
(templates/quant_ladder.toml) or the user's, one judged type per :class:`Rung`, and the
sentence that says why a type was chosen."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import tomllib

from persona_export.errors import InputNotFoundError, UsageError
from persona_export.resources import templates_dir

LADDER_FILE = "quant_ladder.toml"


def default_ladder() -> tuple[str, ...]:
    """The shipped ladder (templates/quant_ladder.toml), smallest type first."""
    path = templates_dir() / LADDER_FILE
    try:
        types = tomllib.loads(path.read_text(encoding="utf-8")).get("types")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InputNotFoundError(f"cannot read the ladder {path}: {exc}") from exc
    if not isinstance(types, list) or not types or not all(isinstance(t, str) for t in types):
        raise UsageError(f"{path}: 'types' must be a non-empty list of type names")
    return tuple(t.upper() for t in types)


def parse_ladder(items: Sequence[str]) -> tuple[str, ...]:
    """``--ladder`` values (repeatable, each a comma-separated list) as type names."""
    return tuple(t.strip().upper() for item in items for t in item.split(",") if t.strip())


@dataclass(frozen=True)
class Rung:
    """One type of the ladder: its file's size, its figures (None: not measured, a smaller
    type passed) and the verdict (``chosen``, ``passed``, ``failed: ...`` or ``not
    needed``)."""

    quant_type: str
    size_bytes: int | None
    bits_per_weight: float | None
    figures: Mapping[str, Any] | None
    verdict: str
    cached: bool = False

    @property
    def passed(self) -> bool:
        return self.verdict in ("chosen", "passed")

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.quant_type,
            "size_bytes": self.size_bytes,
            "bits_per_weight": self.bits_per_weight,
            "verdict": self.verdict,
            "cached": self.cached,
            "figures": dict(self.figures) if self.figures is not None else None,
        }


def ladder_reason(rungs: Sequence[Rung], chosen: str | None) -> str:
    """Why ``chosen``: the smallest type that passed, and what the smaller ones failed on
    (or, with nothing chosen, what every type failed on)."""
    failed = [r for r in rungs if r.verdict.startswith("failed")]
    smaller = "; ".join(f"{r.quant_type} {r.verdict.removeprefix('failed: ')}" for r in failed)
    if chosen is None:
        return f"no type of the ladder passed ({smaller})"
    text = f"{chosen} is the smallest type of the ladder that passes"
    return text + (f" ({smaller})" if smaller else " (the first one tried)")
