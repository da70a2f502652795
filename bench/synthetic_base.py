"""The full-size synthetic Phi-4-mini the benchmarks share, built once per machine.

``ensure_phi4mini_synthetic()`` returns ``~/.cache/persona-export/bench/phi4mini-synthetic``
(3.8 B parameters, 7.7 GB of bf16 safetensors, made by tests.modelkit), building it under a
file lock in a temporary sibling that is renamed into place, so concurrent benchmarks build
it once and never see half of it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BENCH_CACHE = Path(
    os.environ.get("PERSONA_EXPORT_BENCH_CACHE", "~/.cache/persona-export/bench")
).expanduser()
SYNTHETIC = BENCH_CACHE / "phi4mini-synthetic"
COMPLETE = ".complete"


def ensure_phi4mini_synthetic(path: Path = SYNTHETIC) -> Path:
    """The synthetic base folder, built first if missing (minutes, 7.7 GB of disk)."""
    if (path / COMPLETE).is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent builder finishes first
        if (path / COMPLETE).is_file():
            return path
        from tests import modelkit as mk

        tmp = path.parent / f".{path.name}.partial-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(path, ignore_errors=True)  # an incomplete leftover
        started = time.monotonic()
        print(f"building {path} (full-size synthetic Phi-4-mini) ...", file=sys.stderr)
        try:
            mk.make_phi4mini_synthetic(tmp)
            (tmp / COMPLETE).write_text("built by bench/synthetic_base.py\n")
            tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        print(f"built in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return path


if __name__ == "__main__":
    print(ensure_phi4mini_synthetic())
