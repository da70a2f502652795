"""Helpers for tests of child processes: is a process gone, and does a child outlive its
killed parent."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Prints its pid, then sleeps a minute (unless stopped).
SLEEPER = "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(60)\n"


def gone(pid: int) -> bool:
    """Whether ``pid`` no longer exists at all: exited *and* reaped (a zombie still does)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def dead(pid: int) -> bool:
    """Whether ``pid`` has exited: gone, or a zombie waiting for a parent that is not us (in
    a container, PID 1 may never reap it)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def wait_dead(pid: int, seconds: float) -> bool:
    """Whether ``pid`` exits within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if dead(pid):
            return True
        time.sleep(0.05)
    return dead(pid)


def kill_leftover(pid: int | None) -> None:
    """SIGKILL ``pid`` if a failed test left it running (and reap it if it is ours)."""
    if pid is not None and not dead(pid):
        os.kill(pid, signal.SIGKILL)
    if pid is not None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def python_env(**extra: str) -> dict[str, str]:
    """This environment with the repository first on PYTHONPATH (for ``python -c``)."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def killed_parent_leaves_no_child(parent_code: str, *, start_timeout_s: float = 60) -> None:
    """Run ``parent_code`` (which prints the pid of a child it started, then waits), SIGKILL
    it once the pid is printed, and assert the child exits within 2 s."""
    parent = subprocess.Popen(
        [sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True, env=python_env()
    )
    child = None
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"the parent printed {line!r}, not a pid"
        child = int(line)
        parent.kill()
        parent.wait(timeout=10)
        assert wait_dead(child, 2.0), f"child {child} outlived its killed parent"
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        kill_leftover(child)
