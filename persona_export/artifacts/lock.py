"""One persona, one writer: an advisory file lock per persona.

Every stage that writes a persona's outputs holds ``<gguf dir>/.<persona>.lock`` (``flock``)
while it runs, so two commands cannot write one persona at once; a second command waits and
says who holds the lock (pid, command, since when). The lock is re-entrant within a process
(``export`` holds it while its stages take it again) and is released when the process ends,
however it ends. The lock file itself stays (removing it would race with a waiter).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: no locking there
    fcntl = None  # type: ignore[assignment]

_held: dict[str, tuple[int, int]] = {}  # resolved lock path -> (fd, depth)


def _holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (OSError, ValueError):
        return "another process"
    if not isinstance(data, dict):
        return "another process"
    return (
        f"pid {data.get('pid', '?')} ({data.get('command', '?')}, since {data.get('since', '?')})"
    )


def holds(lock_file: Path) -> bool:
    """Whether this process holds the lock at ``lock_file`` now."""
    return os.path.realpath(lock_file) in _held


@contextlib.contextmanager
def persona_lock(
    lock_file: Path, *, on_wait: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the lock at ``lock_file`` for the ``with`` block (waiting for it if another
    process holds it; ``on_wait`` hears who that is)."""
    key = os.path.realpath(lock_file)
    if key in _held:
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield
        finally:
            fd, depth = _held[key]
            _held[key] = (fd, depth - 1)
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait(f"waiting for {lock_file}: held by {_holder(fd)}")
                fcntl.flock(fd, fcntl.LOCK_EX)
        info = {
            "pid": os.getpid(),
            "command": " ".join(
                os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv)
            )[:200],
            "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        _held[key] = (fd, 1)
        try:
            yield
        finally:
            del _held[key]
    finally:
        os.close(fd)  # closing the descriptor releases the flock
