"""The synthetic base models the benchmarks share, built once per machine.

``ensure_phi4mini_synthetic()`` returns ``~/.cache/persona-export/bench/phi4mini-synthetic``
(3.8 B parameters, 7.7 GB of bf16 safetensors, made by tests.modelkit); ``ensure_synthetic``
builds the other shapes: ``phi4mini`` or ``llama3-8b`` (Llama-3-8B-shaped: 32 layers, 4096
hidden, 14336 intermediate, 128256 vocabulary, untied head; 16 GB, no tokenizer), at
``full`` size or ``small`` (the same vocabulary and layout, narrower layers: for checking a
benchmark on a busy machine), with ``layers`` overriding the number of decoder layers. Each
is built under a file lock in a temporary sibling that is renamed into place, so concurrent
benchmarks build it once and never see half of it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BENCH_CACHE = Path(
    os.environ.get("PERSONA_EXPORT_BENCH_CACHE", "~/.cache/persona-export/bench")
).expanduser()
SYNTHETIC = BENCH_CACHE / "phi4mini-synthetic"
COMPLETE = ".complete"

# Builder keyword arguments per model and size (tests/modelkit.py has the full defaults).
SHAPES: dict[str, dict[str, dict[str, Any]]] = {
    "phi4mini": {
        "full": {},
        "small": {
            "num_layers": 4,
            "hidden_size": 1024,
            "intermediate_size": 2816,
            "num_heads": 16,
            "num_kv_heads": 8,
        },
    },
    "llama3-8b": {
        "full": {},
        "small": {
            "num_layers": 4,
            "hidden_size": 1024,
            "intermediate_size": 3584,
            "num_heads": 16,
            "num_kv_heads": 4,
        },
    },
}


def _build_once(path: Path, build: Callable[[Path], Any], what: str) -> Path:
    if (path / COMPLETE).is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent builder finishes first
        if (path / COMPLETE).is_file():
            return path
        tmp = path.parent / f".{path.name}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)  # an incomplete leftover
        started = time.monotonic()
        print(f"building {path} ({what}) ...", file=sys.stderr)
        try:
            build(tmp)
            (tmp / COMPLETE).write_text("built by bench/synthetic_base.py\n")
            tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        print(f"built in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return path


def ensure_phi4mini_synthetic(path: Path = SYNTHETIC) -> Path:
    """The full-size synthetic Phi-4-mini folder, built first if missing (minutes, 7.7 GB)."""
    from tests import modelkit as mk

    return _build_once(path, mk.make_phi4mini_synthetic, "full-size synthetic Phi-4-mini")


def ensure_synthetic(
    model: str = "phi4mini", size: str = "full", layers: int | None = None
) -> Path:
    """The synthetic ``model`` at ``size`` (see the module docstring), built if missing."""
    from tests import modelkit as mk

    options = dict(SHAPES[model][size])
    if layers is not None:
        options["num_layers"] = layers
    if model == "phi4mini" and size == "full" and layers is None:
        return ensure_phi4mini_synthetic()
    builder = mk.make_phi4mini_synthetic if model == "phi4mini" else mk.make_llama3_synthetic
    name = f"{model}-synthetic-{size}" + (f"-L{layers}" if layers is not None else "")

    def build(tmp: Path) -> None:
        builder(tmp, **options)

    return _build_once(BENCH_CACHE / name, build, f"synthetic {model}, {size}")


if __name__ == "__main__":
    print(ensure_phi4mini_synthetic())
