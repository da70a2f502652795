"""Sizes for people: the one formatting of byte counts (decimal units, as the Hugging Face
Hub and ``ls -h --si`` show them) used by tables, summaries, progress and cards."""

from __future__ import annotations


def human_size(n: float | None, missing: str = "?") -> str:
    """``538.1 MB``, ``2.4 GB``, ``812 B``; ``missing`` when the size is unknown (None)."""
    if n is None:
        return missing
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"
