"""Peak memory of a persona-export command, split the way it matters on a small machine.

:func:`run_measured` runs ``persona-export ARGS`` and returns its wall time and:

* ``self``: the peak RSS of the persona-export (Python) process itself (its ``VmHWM``,
  read in the process at exit);
* ``child``: the peak RSS of its largest child (the converter, llama-quantize, pe-logits,
  llama-server; each one's ``VmHWM``, sampled while it runs), which counts the pages of the
  GGUF a llama.cpp tool maps from disk;
* ``tree_anon``: the peak of the anonymous memory of the whole process tree, sampled every
  0.2 s from /proc (``RssAnon``): what cannot be given back to the page cache, i.e. what
  must fit in RAM; file-backed pages (a mapped GGUF) are reclaimable and not in it.

Why not ``getrusage``'s ``ru_maxrss``: Linux carries a process's high-water mark into the
program it starts (``exec`` keeps the larger of the two), so a child started by a process that
once held 5 GiB reports at least 5 GiB whatever it used itself; this inflated a figure of
``bench_verify.py`` (4.94 GiB reported, 3.17 GiB its own) when the benchmark had just built
the model in the starting process. ``VmHWM`` in ``/proc/<pid>/status`` is the peak of the
process's own memory since its ``exec``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

GiB = 2**30
_WRAPPER = """\
import atexit, json, os, sys
def _report():
    with open("/proc/self/status") as status, open(os.environ["PE_BENCH_RSS"], "w") as fh:
        hwm = next(int(l.split()[1]) for l in status if l.startswith("VmHWM:"))
        json.dump({"self": hwm * 1024}, fh)
atexit.register(_report)
sys.argv = ["persona-export", *sys.argv[1:]]
from persona_export.cli import main
main()
"""


@dataclass(frozen=True)
class Measured:
    seconds: float
    exit_code: int
    self_peak: int
    child_peak: int
    tree_anon_peak: int

    def row(self, label: str) -> str:
        return (
            f"{label:<48} {self.seconds:8.1f} {self.self_peak / GiB:9.2f} "
            f"{self.child_peak / GiB:9.2f} {self.tree_anon_peak / GiB:10.2f}"
        )


HEADER = f"{'step':<48} {'wall s':>8} {'RSS GiB':>9} {'child GiB':>9} {'anon GiB':>10}"
LEGEND = (
    "RSS: persona-export's own peak; child: its largest child's (counts the GGUF pages a "
    "llama.cpp tool maps); anon: the whole tree's anonymous memory (what must fit in RAM)"
)


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return found


def status_bytes(field: str, pid: int | str = "self") -> int:
    """A memory figure of ``/proc/<pid>/status`` (``VmHWM``, ``RssAnon``...) in bytes; 0 for a
    process that has gone."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _tree(root: int) -> tuple[int, int]:
    """(the tree's anonymous memory now, the largest peak of a process below ``root``)."""
    total, largest, todo = 0, 0, [root]
    while todo:
        pid = todo.pop()
        total += status_bytes("RssAnon", pid)
        if pid != root:
            largest = max(largest, status_bytes("VmHWM", pid))
        todo += _children(pid)
    return total, largest


def run_measured(args: list[str], env: dict[str, str] | None = None) -> Measured:
    """Run ``persona-export args`` (stdout discarded) and measure it (module docstring)."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
        report = Path(fh.name)
    full_env = {**os.environ, **(env or {}), "PE_BENCH_RSS": str(report)}
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRAPPER, *args], stdout=subprocess.DEVNULL, env=full_env
    )
    peak, child = [0], [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            anon, largest = _tree(proc.pid)
            peak[0], child[0] = max(peak[0], anon), max(child[0], largest)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    seconds = time.monotonic() - started
    done.set()
    sampler.join()
    data = json.loads(report.read_text() or "{}") if report.stat().st_size else {}
    report.unlink(missing_ok=True)
    return Measured(seconds, code, int(data.get("self", 0)), child[0], peak[0])
