"""Verify's memory preflight: what running the Hugging Face models will need, against what
is available, said before anything is loaded."""

from __future__ import annotations

from pathlib import Path

from persona_export.artifacts import read_json
from persona_export.errors import PersonaExportError


def merged_dtype(merged_dir: Path) -> str:
    """The merged checkpoint's weight dtype, from its config.json (bfloat16 when unsaid)."""
    config = read_json(merged_dir / "config.json") or {}
    value = config.get("dtype") or config.get("torch_dtype") or "bfloat16"
    return str(value)


_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def _available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where there is none)."""
    try:
        meminfo = Path("/proc/meminfo").read_text(encoding="ascii")
    except OSError:
        return None
    for line in meminfo.splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def check_memory(merged_dir: Path, compute_dtype: str, available: int | None = None) -> None:
    """Refuse before loading when the models would not fit in ``available`` bytes (default:
    the memory available now).

    Measured on a full-size Phi-4-mini (3.8 B parameters in bfloat16) computed in float32:
    19.5 GiB peak, about (4 + 0.7 * 2) bytes per parameter: the float32 copy plus the
    memory-mapped checkpoint while it loads.
    """
    available = _available_memory() if available is None else available
    if available is None:
        return
    stored = _BYTES.get(merged_dtype(merged_dir), 2)
    weights = sum(p.stat().st_size for p in merged_dir.glob("*.safetensors"))
    needed = weights / stored * (_BYTES[compute_dtype] + 0.7 * stored) + (1 << 29)
    if needed > available:
        hint = (
            "pass --hf-dtype bfloat16 (half the memory; the figures are then looser, see "
            "--peft-nmse-max and --nmse-max), or free memory"
            if compute_dtype == "float32"
            else "free memory, or verify on a machine with more"
        )
        raise PersonaExportError(
            f"verify needs about {needed / 2**30:.1f} GiB of RAM to run the models in "
            f"{compute_dtype}; {available / 2**30:.1f} GiB is available",
            hint,
        )
