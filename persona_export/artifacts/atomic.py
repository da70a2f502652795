"""Writing under a temporary name and renaming into place, and cleaning what an interrupted
run left.

Every temporary the tool makes beside an output is named ``.<output name>.<kind>-<pid>-<n>``
(kind ``partial``: being written; ``old``: being replaced; ``work``: scratch space of a
stage), so that one function recognises them all and removes those whose writer is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

TEMP_KINDS = ("partial", "old", "work")


def temp_sibling(final: Path, kind: str) -> Path:
    """A fresh temporary name beside ``final`` (see the module docstring)."""
    return final.parent / f".{final.name}.{kind}-{os.getpid()}-{time.monotonic_ns()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (the writer of a temporary file)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path, name: str) -> list[Path]:
    """Remove the temporaries of ``folder/name`` whose writer process is gone (this
    process's own are from an earlier, finished call: stale too); a live writer's are left
    alone. Returns what was removed."""
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(name)}\.(?:{'|'.join(TEMP_KINDS)})-(\d+)-\d+$")
    removed = []
    for leftover in folder.iterdir():
        m = pattern.match(leftover.name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and pid_alive(pid):
            continue
        _remove(leftover)
        removed.append(leftover)
    return removed


#: Scratch folders older versions made with ``tempfile.mkdtemp`` beside a persona's outputs
#: (their names carry no pid, or not always): verify's ``.verify-<persona>-XXXXXXXX`` and the
#: gguf stage's tokenizer shadow folders ``.tokfix-[<pid>-]XXXXXXXX``.
LEGACY_VERIFY = r"\.verify-{persona}-[a-z0-9_]{{8}}"
LEGACY_TOKFIX = r"\.tokfix-(?:(?P<pid>\d+)-)?[a-z0-9_]{8}"


def remove_legacy_scratch(folder: Path, pattern: str, lock_file: Path) -> list[Path]:
    """Remove the folders in ``folder`` whose names fully match ``pattern`` (a group named
    ``pid``, when it matched, must name a process that is gone). Without a pid nothing tells
    whether their writer still runs, so this is done only by a process holding the persona
    lock ``lock_file`` (no other persona-export writes the persona meanwhile). Returns what
    was removed."""
    from persona_export.artifacts.lock import holds

    if not holds(lock_file):
        raise RuntimeError(f"remove_legacy_scratch needs the lock {lock_file}")
    if not folder.is_dir():
        return []
    removed = []
    for leftover in folder.iterdir():
        m = re.fullmatch(pattern, leftover.name)
        if m is None or leftover.is_symlink() or not leftover.is_dir():
            continue
        pid = m.groupdict().get("pid")
        if pid is not None and int(pid) != os.getpid() and pid_alive(int(pid)):
            continue
        shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover)
    return removed


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``final``; on success it replaces ``final``.

    On an exception the temporary folder is removed and ``final`` is left as it was. The
    caller decides beforehand whether ``final`` may be replaced (see ``Artifact``).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final, "partial")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists() or final.is_symlink():
        old = temp_sibling(final, "old")
        final.rename(old)
        tmp.rename(final)
        _remove(old)
    else:
        tmp.rename(final)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it is renamed onto ``final`` (a
    rename replaces a link at ``final`` itself, never the file it points to)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final, "partial")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


@contextlib.contextmanager
def work_dir(beside: Path) -> Iterator[Path]:
    """A scratch folder beside ``beside`` (same file system), removed on the way out."""
    beside.parent.mkdir(parents=True, exist_ok=True)
    path = temp_sibling(beside, "work")
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def free_space(target: Path) -> tuple[Path, int]:
    """The nearest existing folder at or above ``target`` and its free bytes."""
    probe = target
    while not probe.exists():
        probe = probe.parent
    return probe, shutil.disk_usage(probe).free


def require_free_space(target: Path, needed: int, *, what: str, hint: str) -> None:
    """Raise :class:`~persona_export.errors.DiskSpaceError` when writing ``needed`` bytes
    under ``target`` would not fit (checked before a stage writes anything)."""
    from persona_export.errors import DiskSpaceError

    probe, free = free_space(target)
    if free < needed:
        raise DiskSpaceError(
            f"not enough disk space for {what}: it needs {size_text(needed)}, {probe} has "
            f"{size_text(free)} free",
            hint,
        )


def size_text(n: int) -> str:
    """A byte count as people read it: ``7.7 GB``, ``12.3 MB``, ``512 kB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
