"""Every external program runs through this module: an argument list (never a shell), the
command shown when debugging, the exit code checked, and the tail of its output in the error.

Children never outlive us: :func:`run` stops and reaps its child whatever happens while it
reads (an exception in the output callback, Ctrl-C, SIGTERM), and every child is started
with a parent-death signal (Linux ``PR_SET_PDEATHSIG``) so that it is sent SIGTERM when
persona-export dies without a chance to clean up (SIGKILL, a crash).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from persona_export import console
from persona_export.errors import ExternalToolError, ToolMissingError
from persona_export.quiet_libraries import child_env

# Seconds a child has to exit after SIGTERM before it is sent SIGKILL.
STOP_GRACE_S = 5.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class Completed:
    """What a finished program left: its exit code and output lines."""

    args: tuple[str, ...]
    returncode: int
    output: str


def tail(text: str, lines: int = 20) -> str:
    """The last ``lines`` non-empty lines of ``text``."""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


# --------------------------------------------------------------------------------------
# Starting and stopping children
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _prctl() -> Any:
    """libc's prctl on Linux, else None (looked up once, in the parent, never after fork)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def parent_death_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child sent SIGTERM when this process dies; None where
    prctl is unavailable (not Linux).

    The signal fires when the *thread* that started the child exits, so children are started
    from the main thread (as every stage does). The hook runs between fork and exec: it
    imports nothing and makes one libc call, so it is safe beside the hashing threads.
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def hook() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(128 + int(signal.SIGTERM))

    return hook


def start(
    argv: Sequence[str],
    *,
    what: str,
    hint: str = "",
    new_group: bool = False,
    **popen: Any,
) -> subprocess.Popen[Any]:
    """Start ``argv`` (stdin from /dev/null) with the parent-death signal armed; with
    ``new_group`` in a process group of its own (so that :func:`stop` can end everything it
    started, and a Ctrl-C in the terminal reaches us, not it). Raises ToolMissingError when
    the program does not exist."""
    console.command(argv)
    # the environment as the user has it, not as quiet_libraries set it for this process
    popen["env"] = child_env(popen.get("env"))
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            preexec_fn=parent_death_hook(),  # safe with threads: see parent_death_hook
            start_new_session=new_group,
            **popen,
        )
    except FileNotFoundError as exc:
        raise ToolMissingError(f"{what}: program not found: {argv[0]}", hint) from exc


def _signal(proc: subprocess.Popen[Any], sig: int, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group and hasattr(os, "killpg"):
            os.killpg(proc.pid, sig)
        elif proc.returncode is None:
            proc.send_signal(sig)


def stop(proc: subprocess.Popen[Any], *, group: bool = False, grace_s: float | None = None) -> None:
    """End ``proc`` and reap it: SIGTERM, then SIGKILL after ``grace_s`` (STOP_GRACE_S).
    With ``group`` (a child started with ``new_group``) the signals go to its whole process
    group, and what is left of the group after the child exits is killed. An interrupt
    while waiting skips the grace period; the child is still killed and reaped."""
    grace = STOP_GRACE_S if grace_s is None else grace_s
    try:
        if proc.poll() is None:
            _signal(proc, signal.SIGTERM, group)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
    finally:
        if proc.poll() is None:
            _signal(proc, signal.SIGKILL, group)
            proc.wait()
        if group:  # grandchildren that outlived the leader
            _signal(proc, signal.SIGKILL, group)


# --------------------------------------------------------------------------------------
# Logs
# --------------------------------------------------------------------------------------


def _log_temp(path: Path) -> tuple[Path, int]:
    """A new temporary sibling of ``path`` (created exclusively, never through a link)."""
    tmp = path.parent / f".{path.name}.partial-{os.getpid()}-{time.monotonic_ns()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    return tmp, os.open(tmp, flags | getattr(os, "O_CLOEXEC", 0), 0o644)


class _Log:
    """A log written to a new temporary sibling of ``path`` (created exclusively, never
    through a link) and renamed onto ``path`` when the program ends: a link at ``path`` is
    replaced, never written through."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp, fd = _log_temp(path)
        self.file: IO[str] = os.fdopen(fd, "w", encoding="utf-8", errors="replace")

    def write(self, line: str) -> None:
        self.file.write(line)

    def publish(self, *, failing: bool) -> None:
        """Rename the log into place. While an exception propagates, a failed rename only
        removes the temporary file (the first error is the one to report)."""
        self.file.close()
        try:
            os.replace(self.tmp, self.path)
        except OSError:
            self.tmp.unlink(missing_ok=True)
            if not failing:
                raise


@contextlib.contextmanager
def program_log(path: Path) -> Iterator[tuple[IO[bytes], Path]]:
    """A log for a long-running program's output (``stdout=``): yields the open binary file
    and where it is being written (a temporary sibling of ``path``, as :class:`_Log`); when
    the block ends, however it ends, the log is renamed onto ``path``, so a log an error
    message names exists once the command is over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _log_temp(path)
    file = os.fdopen(fd, "wb")
    try:
        yield file, tmp
    finally:
        file.close()
        try:
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------


def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    what: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    on_line: Callable[[str], None] | None = None,
    check: bool = True,
    hint: str = "",
    tail_lines: int = 20,
) -> Completed:
    """Run ``args`` and return its output (stdout and stderr merged).

    ``what`` names the step in errors. With ``log_path`` the output also goes to that file
    (complete, and in place, once ``run`` returns or raises); ``on_line`` sees each line as
    it arrives (for progress and warnings). Whatever ``run`` raises, the child has been
    stopped and reaped. A non-zero exit raises :class:`ExternalToolError` with the last
    ``tail_lines`` lines unless ``check`` is false.
    """
    argv = [os.fspath(a) for a in args]
    full_env = None if env is None else {**os.environ, **env}
    collected: list[str] = []
    log = _Log(log_path) if log_path else None
    failing = True
    try:
        proc = start(
            argv,
            what=what,
            hint=hint,
            cwd=cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
        try:
            _read(proc, collected, log, on_line)
            returncode = proc.wait()
        finally:
            stop(proc)  # a no-op once it has exited; otherwise it is ended and reaped
            assert proc.stdout is not None
            proc.stdout.close()
        failing = False
    finally:
        if log:
            log.publish(failing=failing)
    output = "".join(collected)
    if check and returncode != 0:
        where = f" (full log: {log_path})" if log_path else ""
        raise ExternalToolError(
            f"{what} failed with exit code {returncode}{where}:\n{tail(output, tail_lines)}",
            hint,
        )
    return Completed(tuple(argv), returncode, output)


def _read(
    proc: subprocess.Popen[str],
    collected: list[str],
    log: _Log | None,
    on_line: Callable[[str], None] | None,
) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        collected.append(line)
        if log:
            log.write(line)
        if on_line:
            on_line(line.rstrip("\n"))
